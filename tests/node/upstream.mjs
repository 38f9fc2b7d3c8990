// npm's oidc-provider (a certified OpenID Provider) as the upstream of Postern's federated
// logins (tests/federation.rs): the `oidc` strategy and the OpenID Connect profiles (Google,
// Workspace, Entra ID, LinkedIn, Microsoft accounts) point their issuer at it.
//
//   node upstream.mjs
//
// Prints one JSON line once it listens on a free loopback port: {issuer}.
//
// - Clients register themselves (dynamic registration, `POST /reg`), one per test, with the
//   callback of that test's Postern; its login form (development interactions) takes any
//   login name: the account id. Consent is granted without a page, except for the clients
//   put in `mode: "consent"`, which get the provider's own consent page.
// - Accounts: `sub` is the login name; claims are `<login>@fabrikam.example`, verified, and
//   a name, unless `POST /__test/account {id, claims}` set others (a profile that changes
//   between logins).
// - Broken answers, per client (`POST /__test/mode {client_id, mode, claims}`): the ID token
//   of the token endpoint is rewritten and signed again with the provider's own key (so only
//   the named defect is wrong): `wrong_aud`, `wrong_iss`, `wrong_nonce`, `expired`, `alg_none`
//   (unsigned), `other_key` (signed by another key under the same kid), `claims` (extra
//   claims merged, such as `hd` or `tid`), `rotated` (signed by a second key, published only
//   at `/__test/jwks` after `POST /__test/rotate`).
// - Sign in with Apple's client authentication (`mode: "apple"`, `claims: {secret, public_key,
//   team_id, key_id}`): the token request's `client_secret` must be an ES256 JWT of the team,
//   for the client, signed by that key; it is then swapped for the client's real secret.
// - `/__test/jwks` serves the keys with `Cache-Control: max-age=300` and counts its fetches
//   (`GET /__test/stats`).
// - `GET /__test/stats` also tells how long the provider spent serving requests, measured
//   here from a request's arrival to its answer: `busy_ms` (every request) and `token_ms`
//   (the token endpoint only), so that a benchmark can subtract the upstream's own time.
// - Facebook's Graph API stand-in, `GET /graph/me?fields=…&appsecret_proof=…` with the
//   access token as a bearer: the documented shape of `me` (`id`, `name`, `first_name`,
//   `last_name`, `email`, `picture.data.url`, only the fields asked), the token looked up in
//   the provider itself, and `appsecret_proof` (HMAC-SHA256 of the token under the client's
//   secret) required, as an app that enforces it gets from Facebook.
// - GitHub's REST API stand-in, `GET /github/user` and `GET /github/user/emails` with the
//   access token as a bearer: the documented shapes (`login`, numeric `id`, `name`,
//   `html_url`; the addresses with `primary` and `verified`, the account's verified as the
//   account says), the token looked up in the provider itself.
// - Accounts may carry Google's `hd` (`POST /__test/account {id, claims: {hd}}`): it is
//   released with the `email` scope, as Google does for Workspace accounts.
import { createHmac, generateKeyPairSync, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:net';
import { createServer as createHttpServer } from 'node:http';
import * as querystring from 'node:querystring';
import * as jose from 'jose';
import Provider from 'oidc-provider';

function rsaJwk(kid) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

const signing = rsaJwk('upstream-1');
const rotatedKey = rsaJwk('upstream-2');
const impostor = { ...rsaJwk('upstream-1') };
const publicOf = ({ kty, n, e, kid, alg, use }) => ({ kty, n, e, kid, alg, use });

const accounts = new Map();
const modes = new Map();
const stats = { jwks_fetches: 0, token_requests: 0, busy_ms: 0, token_ms: 0 };
let rotated = false;

function claimsOf(id) {
  return {
    sub: id,
    email: `${id}@fabrikam.example`,
    email_verified: true,
    name: 'Jane Doe',
    given_name: 'Jane',
    family_name: 'Doe',
    ...(accounts.get(id) ?? {}),
  };
}

async function sign(payload, jwk) {
  const key = await jose.importJWK(jwk, 'RS256');
  return new jose.SignJWT(payload).setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'JWT' }).sign(key);
}

async function rewrite(idToken, { mode, claims }) {
  const payload = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  switch (mode) {
    case 'wrong_aud': payload.aud = 'another-client'; break;
    case 'wrong_iss': payload.iss = 'https://impostor.example'; break;
    case 'wrong_nonce': payload.nonce = 'not-the-nonce-that-was-sent'; break;
    case 'expired': payload.iat = now - 600; payload.exp = now - 300; break;
    case 'alg_none': {
      const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
      return `${enc({ alg: 'none', typ: 'JWT' })}.${enc(payload)}.`;
    }
    case 'other_key': return sign(payload, impostor);
    case 'rotated': return sign(payload, rotated ? rotatedKey : signing);
    default: break;
  }
  Object.assign(payload, claims ?? {});
  return sign(payload, signing);
}

async function body(ctx) {
  const chunks = [];
  for await (const c of ctx.req) chunks.push(c);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
}

// A number for an account, as Facebook's and GitHub's ids are.
function numericId(what, sub) {
  return BigInt(`0x${createHmac('sha256', what).update(sub).digest('hex').slice(0, 12)}`).toString();
}

// The account behind a bearer access token of this provider, or undefined.
async function accountOfToken(provider, ctx) {
  const token = (ctx.get('authorization').match(/^Bearer (.+)$/) ?? [])[1] ?? '';
  const at = token ? await provider.AccessToken.find(token) : undefined;
  return at ? { token, at, claims: claimsOf(at.accountId) } : undefined;
}

// GitHub's `/user` and `/user/emails`.
async function github(provider, ctx) {
  const found = await accountOfToken(provider, ctx);
  if (!found) {
    ctx.status = 401;
    ctx.body = { message: 'Bad credentials', documentation_url: 'https://docs.github.com/rest' };
    return;
  }
  const c = found.claims;
  if (ctx.path === '/github/user') {
    ctx.body = {
      login: c.sub,
      id: Number(numericId('github', c.sub)),
      name: c.name,
      avatar_url: `https://avatars.github.example/u/${c.sub}`,
      html_url: `https://github.com/${c.sub}`,
      email: null,
    };
  } else {
    ctx.body = [
      { email: `${c.sub}@users.noreply.github.example`, primary: false, verified: true, visibility: null },
      { email: c.email, primary: true, verified: c.email_verified === true, visibility: 'private' },
    ];
  }
}

// Facebook's Graph API `me`: the token is the provider's own access token.
async function graphMe(provider, ctx) {
  const refuse = (message, code) => {
    ctx.status = 400;
    ctx.body = { error: { message, type: 'OAuthException', code } };
  };
  const found = await accountOfToken(provider, ctx);
  if (!found) return refuse('Invalid OAuth access token.', 190);
  const { token, at, claims: c } = found;
  const client = await provider.Client.find(at.clientId);
  const proof = createHmac('sha256', client?.clientSecret ?? '').update(token).digest('hex');
  const given = Buffer.from(String(ctx.query.appsecret_proof ?? ''));
  if (given.length !== proof.length || !timingSafeEqual(given, Buffer.from(proof))) {
    return refuse('Invalid appsecret_proof provided in the API argument', 100);
  }
  const id = numericId('graph', c.sub);
  const me = {
    id,
    name: c.name,
    first_name: c.given_name,
    last_name: c.family_name,
    email: c.email,
    picture: { data: { url: `https://graph.facebook.example/${id}/picture`, is_silhouette: false } },
  };
  const fields = String(ctx.query.fields ?? 'id,name').split(',');
  ctx.body = Object.fromEntries(fields.filter((f) => f in me).map((f) => [f, me[f]]));
}

function start(port) {
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [signing] },
    features: {
      devInteractions: { enabled: true },
      // Client ids are GUIDs, as Entra ID's are (its connections require them).
      registration: { enabled: true, idFactory: () => randomUUID() },
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified', 'hd'],
      profile: ['name', 'given_name', 'family_name', 'nickname', 'picture'],
      // Sign in with Apple's scope.
      name: ['name', 'given_name', 'family_name'],
    },
    // GitHub's and Facebook's own scopes, for the stand-ins of their APIs.
    scopes: ['openid', 'offline_access', 'read:user', 'user:email', 'public_profile'],
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    findAccount: async (ctx, id) => ({ accountId: id, claims: async () => claimsOf(id) }),
    // Consent is granted without a page: every scope and claim the client asks.
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      // These clients' users see the consent page and grant it there.
      if (modes.get(ctx.oidc.client.clientId)?.mode === 'consent') return undefined;
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid email profile name offline_access read:user user:email public_profile');
      await grant.save();
      return grant;
    },
    ttl: { Session: 60, Interaction: 600, Grant: 600 },
  });
  provider.use(async (ctx, next) => {
    if (ctx.path === '/graph/me' && ctx.method === 'GET') {
      await graphMe(provider, ctx);
      return;
    }
    if ((ctx.path === '/github/user' || ctx.path === '/github/user/emails') && ctx.method === 'GET') {
      await github(provider, ctx);
      return;
    }
    if (ctx.path === '/__test/account' && ctx.method === 'POST') {
      const { id, claims } = await body(ctx);
      accounts.set(id, claims);
      ctx.body = { ok: true };
      return;
    }
    if (ctx.path === '/__test/mode' && ctx.method === 'POST') {
      const { client_id: clientId, mode, claims } = await body(ctx);
      modes.set(clientId, { mode, claims });
      ctx.body = { ok: true };
      return;
    }
    if (ctx.path === '/__test/rotate' && ctx.method === 'POST') {
      rotated = true;
      ctx.body = { ok: true };
      return;
    }
    if (ctx.path === '/__test/jwks' && ctx.method === 'GET') {
      stats.jwks_fetches += 1;
      ctx.set('cache-control', 'public, max-age=300');
      ctx.body = { keys: rotated ? [publicOf(signing), publicOf(rotatedKey)] : [publicOf(signing)] };
      return;
    }
    if (ctx.path === '/__test/stats' && ctx.method === 'GET') {
      ctx.body = stats;
      return;
    }
    if (ctx.path === '/token' && ctx.method === 'POST') {
      const chunks = [];
      for await (const c of ctx.req) chunks.push(c);
      const form = querystring.parse(Buffer.concat(chunks).toString('utf8'));
      const apple = modes.get(form.client_id);
      if (apple?.mode === 'apple') {
        const { secret, public_key: publicKey, team_id: team, key_id: keyId } = apple.claims;
        try {
          const { protectedHeader } = await jose.jwtVerify(form.client_secret, await jose.importSPKI(publicKey, 'ES256'), {
            issuer: team, audience: issuer, subject: form.client_id, algorithms: ['ES256'],
          });
          if (protectedHeader.kid !== keyId) throw new Error(`kid ${protectedHeader.kid}`);
          form.client_secret = secret;
        } catch (e) {
          stats.apple_refusals = (stats.apple_refusals ?? 0) + 1;
          form.client_secret = 'refused';
        }
      }
      ctx.request.body = form;
    }
    await next();
    if (ctx.path === '/token' && ctx.method === 'POST') {
      stats.token_requests += 1;
      if (ctx.status === 200 && ctx.body?.id_token) {
        const aud = jose.decodeJwt(ctx.body.id_token).aud;
        const settings = modes.get(Array.isArray(aud) ? aud[0] : aud);
        if (settings && settings.mode !== 'apple') {
          ctx.body = { ...ctx.body, id_token: await rewrite(ctx.body.id_token, settings) };
        }
      }
    }
  });
  // How long each request takes here, from its arrival (its head parsed) to its answer
  // handed to the operating system (the response's `finish`), the body's serializing and
  // writing included.
  const handle = provider.callback();
  const server = createHttpServer((req, res) => {
    const started = process.hrtime.bigint();
    const path = req.url.split('?')[0];
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      stats.busy_ms += ms;
      if (path === '/token') stats.token_ms += ms;
    });
    handle(req, res);
  });
  server.listen(port, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ issuer })}\n`);
  });
  return server;
}

// The test binary holds this process's standard input open and never writes to it: when the
// binary ends, however it ends, the input closes and the provider stops with it.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));

// The issuer must name the port, so bind once to learn a free one, then start there.
const probe = createServer();
probe.listen(0, '127.0.0.1', () => {
  const { port } = probe.address();
  probe.close(() => start(port));
});
