//! The OpenID provider's gRPC face (`OAuthService`) through the gateway: the token
//! endpoint's twin for `client_credentials` (a JWT verified by an independent
//! implementation against the published key set), client authentication, the grants'
//! errors as RFC 6749 reasons, and the browser steps refused to outside callers.

use std::net::SocketAddr;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use postern_proto::authn::v1 as authn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::{Clients, Suite, http_get, reason};
use tonic::Code;

async fn client(admin: &mut Clients, tenant_name: &str, app_type: tenant::AppType) -> tenant::Client {
    let c = tenant::Client {
        name: format!("{app_type:?} app"),
        app_type: app_type as i32,
        callbacks: vec!["https://app.example.com/callback".into()],
        ..Default::default()
    };
    admin
        .clients
        .create_client(tenant::CreateClientRequest { tenant: tenant_name.into(), client: Some(c) })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client")
}

fn credentials(tenant: &str, c: &tenant::Client, audience: &str) -> authn::ExchangeTokenRequest {
    authn::ExchangeTokenRequest {
        tenant: tenant.into(),
        grant_type: "client_credentials".into(),
        client_id: c.client_id.clone(),
        client_secret: c.client_secret.clone(),
        audience: audience.into(),
        scope: "read:orders write:orders".into(),
        ..Default::default()
    }
}

async fn verify(http: SocketAddr, tenant: &str, token: &str, audience: &str) -> serde_json::Value {
    let (code, _, body) = http_get(http, &format!("/{tenant}/.well-known/jwks.json")).await.expect("get");
    assert_eq!(code, 200, "{body}");
    let set: JwkSet = serde_json::from_str(&body).expect("JWKS");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = set.find(header.kid.as_deref().expect("kid")).expect("the token's key is in the set");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[format!("http://{http}/{tenant}/")]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).expect("key"), &validation)
        .expect("the access token verifies")
        .claims
}

#[tokio::test]
async fn client_credentials_issue_a_jwt_for_the_api() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam").await.expect("tenant");
    let m2m = client(&mut admin, "fabrikam", tenant::AppType::MachineToMachine).await;
    assert!(m2m.confidential);
    // A client gets tokens only for an API it was granted (tests/grants.rs has the rules).
    admin
        .grant_api("fabrikam", &m2m.client_id, "https://api.fabrikam.example", &["read:orders", "write:orders"])
        .await
        .expect("grant");

    let answer = admin
        .oauth
        .exchange_token(credentials("fabrikam", &m2m, "https://api.fabrikam.example"))
        .await
        .expect("client_credentials")
        .into_inner();
    assert_eq!(answer.token_type, "Bearer");
    assert!(answer.id_token.is_empty() && answer.refresh_token.is_empty());
    assert_eq!(answer.scope, "read:orders write:orders");
    assert_eq!(answer.expires_in, 86_400);
    let claims = verify(suite.http, "fabrikam", &answer.access_token, "https://api.fabrikam.example").await;
    assert_eq!(claims["sub"], format!("{}@clients", m2m.client_id));
    assert_eq!(claims["azp"], m2m.client_id.as_str());
    assert_eq!(claims["gty"], "client-credentials");
    assert_eq!(claims["scope"], "read:orders write:orders");
    assert_eq!(claims["aud"], "https://api.fabrikam.example");

    // A wrong secret, another tenant, no secret: INVALID_CLIENT.
    for (tenant_name, secret) in [("fabrikam", "wrong"), ("fabrikam", ""), ("contoso", m2m.client_secret.as_str())] {
        let mut req = credentials(tenant_name, &m2m, "https://api.fabrikam.example");
        req.client_secret = secret.into();
        let err = admin.oauth.exchange_token(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{tenant_name} {secret}: {err:?}");
        assert_eq!(reason(&err).as_deref(), Some("INVALID_CLIENT"));
        assert!(!err.message().contains(&m2m.client_secret));
    }

    // No audience.
    let err = admin.oauth.exchange_token(credentials("fabrikam", &m2m, "")).await.expect_err("no audience");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err).as_deref(), Some("INVALID_REQUEST"));

    // Only machine-to-machine clients.
    let web = client(&mut admin, "fabrikam", tenant::AppType::RegularWeb).await;
    let err = admin.oauth.exchange_token(credentials("fabrikam", &web, "https://api")).await.expect_err("web app");
    assert_eq!(reason(&err).as_deref(), Some("UNAUTHORIZED_CLIENT"));

    // Unknown grant types and codes.
    let mut req = credentials("fabrikam", &m2m, "https://api");
    req.grant_type = "password".into();
    let err = admin.oauth.exchange_token(req).await.expect_err("password grant");
    assert_eq!(reason(&err).as_deref(), Some("UNSUPPORTED_GRANT_TYPE"));
    let req = authn::ExchangeTokenRequest {
        tenant: "fabrikam".into(),
        grant_type: "authorization_code".into(),
        client_id: web.client_id.clone(),
        client_secret: web.client_secret.clone(),
        code: "no-such-code".into(),
        redirect_uri: "https://app.example.com/callback".into(),
        ..Default::default()
    };
    let err = admin.oauth.exchange_token(req).await.expect_err("unknown code");
    assert_eq!(reason(&err).as_deref(), Some("INVALID_GRANT"));
    let req = authn::ExchangeTokenRequest {
        tenant: "fabrikam".into(),
        grant_type: "refresh_token".into(),
        client_id: web.client_id.clone(),
        client_secret: web.client_secret.clone(),
        refresh_token: "no-such-token".into(),
        ..Default::default()
    };
    let err = admin.oauth.exchange_token(req).await.expect_err("unknown refresh token");
    assert_eq!(reason(&err).as_deref(), Some("INVALID_GRANT"));

    // Revoking an unknown token is no error (RFC 7009), but the client must authenticate.
    let revoke = authn::RevokeTokenRequest {
        tenant: "fabrikam".into(),
        client_id: web.client_id.clone(),
        client_secret: web.client_secret.clone(),
        token: "no-such-token".into(),
        ..Default::default()
    };
    admin.oauth.revoke_token(revoke.clone()).await.expect("unknown token revoked");
    let err = admin
        .oauth
        .revoke_token(authn::RevokeTokenRequest { client_secret: "wrong".into(), ..revoke })
        .await
        .expect_err("wrong secret");
    assert_eq!(reason(&err).as_deref(), Some("INVALID_CLIENT"));
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn the_browser_steps_are_internal() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam").await.expect("tenant");
    let web = client(&mut admin, "fabrikam", tenant::AppType::RegularWeb).await;
    let err = admin
        .oauth
        .start_authorization(authn::StartAuthorizationRequest {
            tenant: "fabrikam".into(),
            client_id: web.client_id.clone(),
            redirect_uri: "https://app.example.com/callback".into(),
            response_type: "code".into(),
            scope: "openid".into(),
            ..Default::default()
        })
        .await
        .expect_err("internal");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err).as_deref(), Some("INTERNAL_ONLY"));
    let err = admin
        .oauth
        .submit_login(authn::SubmitLoginRequest { tenant: "fabrikam".into(), ..Default::default() })
        .await
        .expect_err("internal");
    assert_eq!(reason(&err).as_deref(), Some("INTERNAL_ONLY"));
    suite.stop().await.expect("stop");
}
