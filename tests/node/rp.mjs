// An independent OpenID relying party: npm's openid-client (a certified RP library) in front
// of a Postern tenant. Each step is one run, so a Rust test can drive the login in between:
//
//   node rp.mjs <step> '<json input>'
//
// Common input: issuer, client_id, client_secret (empty for a public client).
//   discover            → the discovery document as openid-client validated it
//   authorize           {redirect_uri, scope, extra?} → {url, verifier, state, nonce}
//   exchange            {callback_url, verifier, state, nonce, redirect_uri?} → tokens and ID token claims
//   refresh             {refresh_token} → tokens (and ID token claims when one came)
//   client_credentials  {audience?, scope?} → tokens
//   revoke              {token, hint?} → {revoked: true}
//   userinfo            {access_token, sub} → the claims
//   end_session         {id_token_hint?, post_logout_redirect_uri?, state?} → {url}
// The answer is one JSON line on standard output. A refusal by the provider is an answer
// too, {error, error_description, status}, so that tests can check attacks; anything else
// (a wrong ID token, a network failure) makes the run fail.
import * as oidc from 'openid-client';

const [step, raw] = process.argv.slice(2);
const input = JSON.parse(raw ?? '{}');

function answer(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

async function configuration() {
  const secret = input.client_secret || undefined;
  const auth = secret ? oidc.ClientSecretBasic(secret) : oidc.None();
  // Loopback tests speak plain http, which openid-client refuses unless told.
  return oidc.discovery(new URL(input.issuer), input.client_id, secret ? { client_secret: secret } : {}, auth, {
    execute: [oidc.allowInsecureRequests],
  });
}

function tokens(t) {
  const out = { ...t };
  const claims = t.claims?.();
  if (claims) out.id_token_claims = claims;
  return out;
}

async function run() {
  const config = await configuration();
  switch (step) {
    case 'discover':
      return config.serverMetadata();
    case 'authorize': {
      const verifier = oidc.randomPKCECodeVerifier();
      const state = oidc.randomState();
      const nonce = oidc.randomNonce();
      const url = oidc.buildAuthorizationUrl(config, {
        redirect_uri: input.redirect_uri,
        scope: input.scope ?? 'openid profile email',
        code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
        code_challenge_method: 'S256',
        state,
        nonce,
        ...(input.extra ?? {}),
      });
      return { url: url.href, verifier, state, nonce };
    }
    case 'exchange': {
      const t = await oidc.authorizationCodeGrant(config, new URL(input.callback_url), {
        pkceCodeVerifier: input.verifier,
        expectedState: input.state,
        expectedNonce: input.nonce,
        idTokenExpected: true,
      });
      return tokens(t);
    }
    case 'refresh':
      return tokens(await oidc.refreshTokenGrant(config, input.refresh_token));
    case 'client_credentials': {
      const params = {};
      if (input.audience) params.audience = input.audience;
      if (input.scope) params.scope = input.scope;
      return tokens(await oidc.clientCredentialsGrant(config, params));
    }
    case 'revoke':
      await oidc.tokenRevocation(config, input.token, input.hint ? { token_type_hint: input.hint } : {});
      return { revoked: true };
    case 'userinfo':
      return oidc.fetchUserInfo(config, input.access_token, input.sub);
    case 'end_session': {
      const params = {};
      for (const k of ['id_token_hint', 'post_logout_redirect_uri', 'state']) if (input[k]) params[k] = input[k];
      return { url: oidc.buildEndSessionUrl(config, params).href };
    }
    default:
      throw new Error(`unknown step ${step}`);
  }
}

try {
  answer(await run());
} catch (e) {
  if (e instanceof oidc.ResponseBodyError || e instanceof oidc.AuthorizationResponseError) {
    answer({ error: e.error, error_description: e.error_description ?? null, status: e.status ?? null });
  } else {
    console.error(e);
    process.exit(1);
  }
}
