// npm's oidc-provider (a certified OpenID Provider) as the reference for the benchmark: one
// confidential machine-to-machine client, client_credentials issuing JWT access tokens
// (RS256, a fresh 2048-bit key) for one resource through the resourceIndicators feature.
//
//   node op.mjs
//
// Prints one JSON line once it listens on a free loopback port:
//   {issuer, token_endpoint, client_id, client_secret, resource}
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const resource = 'https://api.bench.example/';
const clientId = 'bench';
const clientSecret = randomBytes(24).toString('hex');
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-rs256', alg: 'RS256', use: 'sig' };

function start(port) {
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_post',
      },
    ],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'read',
          audience: resource,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  const server = provider.listen(port, '127.0.0.1', () => {
    const bound = server.address().port;
    process.stdout.write(
      JSON.stringify({
        issuer: `http://127.0.0.1:${bound}`,
        token_endpoint: `http://127.0.0.1:${bound}/token`,
        client_id: clientId,
        client_secret: clientSecret,
        resource,
      }) + '\n',
    );
  });
  return server;
}

// The issuer must name the port, so bind once to learn a free one, then start there.
import { createServer } from 'node:net';
const probe = createServer();
probe.listen(0, '127.0.0.1', () => {
  const { port } = probe.address();
  probe.close(() => start(port));
});
