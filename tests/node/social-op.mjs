// npm's oidc-provider as the OAuth 2.0 server behind the social connectors' tests: the
// authorization code exchange (PKCE S256, client authentication) of `facebook`, `github`
// and `oauth2` connections runs against it, and its userinfo endpoint tells the loopback
// stand-ins of the Graph API and GitHub's REST API whose token they were given.
//
//   node social-op.mjs TENANT...
//
// Clients (each secret `<client_id>-secret`): `generic` authenticates with HTTP Basic
// (client_secret_basic, as the generic strategy does), `github` and `facebook` with the
// secret in the body (client_secret_post, as those providers take it). Each accepts the
// redirect URI `http://127.0.0.1/<TENANT>/login/callback` of every TENANT on any port
// (loopback redirect URIs of native clients, RFC 8252 §7.3), since every test's suite binds
// its own port. Development interactions: any login name logs in; the account's email is
// `<name>@fabrikam.example`, verified unless the name starts with `unverified`.
//
// Prints one JSON line once it listens on a free loopback port: {issuer}.
import Provider from 'oidc-provider';
import { createServer } from 'node:net';

const tenants = process.argv.slice(2);
const redirectUris = tenants.map((t) => `http://127.0.0.1/${t}/login/callback`);
const client = (id, method, grants = []) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  application_type: 'native',
  redirect_uris: redirectUris,
  grant_types: ['authorization_code', ...grants],
  response_types: ['code'],
  token_endpoint_auth_method: method,
});

function start(port) {
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [
      client('generic', 'client_secret_basic'),
      client('github', 'client_secret_post'),
      // Facebook's app access token (the client credentials grant) is what TestConnection
      // asks to try the app secret.
      client('facebook', 'client_secret_post', ['client_credentials']),
    ],
    // The social strategies' own scopes, besides OpenID Connect's.
    scopes: ['openid', 'email', 'profile', 'read:user', 'user:email', 'public_profile'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'given_name', 'family_name', 'picture'] },
    features: { devInteractions: { enabled: true }, clientCredentials: { enabled: true } },
    pkce: { required: () => true },
    findAccount: async (ctx, id) => ({
      accountId: id,
      claims: async () => ({
        sub: id,
        email: `${id}@fabrikam.example`,
        email_verified: !id.startsWith('unverified'),
        name: `${id[0].toUpperCase()}${id.slice(1)} Doe`,
        given_name: `${id[0].toUpperCase()}${id.slice(1)}`,
        family_name: 'Doe',
        picture: `https://pictures.fabrikam.example/${id}.png`,
      }),
    }),
  });
  provider.listen(port, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ issuer }) + '\n');
  });
}

// The issuer must name the port, so bind once to learn a free one, then start there.
const probe = createServer();
probe.listen(0, '127.0.0.1', () => {
  const { port } = probe.address();
  probe.close(() => start(port));
});
