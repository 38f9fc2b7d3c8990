//! The social connectors against loopback servers that follow each provider's documented
//! API: Facebook's dialog, token endpoint and Graph API `me` (with `appsecret_proof`),
//! GitHub's OAuth app endpoints, `/user` and `/user/emails`, and a generic provider whose
//! profile is nested JSON. Each server issues a code bound to the PKCE challenge and the
//! redirect URI of the authorization request the connector built, and checks the client's
//! credentials where the provider takes them; the tests then run the callback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use postern_connection::{Connection, NewConnection, Resolved};
use postern_connector::{ConnectorError, RedirectConnector, RedirectTransaction, UpstreamRequest};
use postern_connector_social::{Provider, SocialConnector};
use postern_proto::connections::v1 as pb;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "fabrikam-app";
const CLIENT_SECRET: &str = "s3cret-of-the-app";
const CALLBACK: &str = "https://id.fabrikam.example/fabrikam-public/login/callback";

/// What a fake provider answers, and what it saw.
#[derive(Default)]
struct Fake {
    /// Codes issued: code → (PKCE challenge, redirect URI).
    codes: HashMap<String, (String, String)>,
    /// Access tokens issued.
    tokens: Vec<String>,
    /// Whether the token endpoint refuses every code.
    refuse_codes: bool,
    /// The profile endpoint's status, when not 200.
    profile_status: Option<u16>,
    /// Whether the profile endpoint never answers.
    profile_hangs: bool,
    /// GitHub's email list.
    emails: Value,
    /// The generic provider's profile.
    profile: Value,
    /// The `fields` Facebook was asked for.
    fields_asked: Vec<String>,
    /// How the client authenticated at the token endpoint (`basic` or `body`).
    client_auth: Vec<&'static str>,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Fake> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The token endpoint of all three providers: a code redeemed once, for its challenge and
/// redirect URI, by the registered client.
async fn token(State(s): State<Shared>, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Response {
    let mut fake = lock(&s);
    let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "));
    let (id, secret) = match basic {
        Some(b) => {
            fake.client_auth.push("basic");
            let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap();
            let (i, s) = decoded.split_once(':').unwrap();
            (i.to_owned(), s.to_owned())
        }
        None => {
            fake.client_auth.push("body");
            (f.get("client_id").cloned().unwrap_or_default(), f.get("client_secret").cloned().unwrap_or_default())
        }
    };
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    let code = f.get("code").cloned().unwrap_or_default();
    let issued = fake.codes.remove(&code);
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let ok = !fake.refuse_codes
        && issued.as_ref().is_some_and(|(challenge, redirect)| {
            *challenge == s256(&verifier) && Some(redirect) == f.get("redirect_uri")
        });
    if !ok {
        // GitHub's way: 200 with an error.
        return Json(
            json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}),
        )
        .into_response();
    }
    let access_token = format!("at-{}", fake.tokens.len() + 1);
    fake.tokens.push(access_token.clone());
    Json(json!({"access_token": access_token, "token_type": "bearer", "scope": "read:user,user:email"})).into_response()
}

/// The bearer token of a request, if the fake issued it.
fn bearer(s: &Shared, headers: &HeaderMap) -> Option<String> {
    let t = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?.to_owned();
    lock(s).tokens.contains(&t).then_some(t)
}

/// What the profile endpoints do before answering: fail or hang when told to.
async fn profile_gate(s: &Shared) -> Option<Response> {
    let (hangs, status) = {
        let f = lock(s);
        (f.profile_hangs, f.profile_status)
    };
    if hangs {
        std::future::pending::<()>().await;
    }
    status.map(|code| (StatusCode::from_u16(code).unwrap(), "upstream trouble").into_response())
}

/// Graph API `me`: the asked fields of the user, with the `appsecret_proof` checked.
async fn facebook_me(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = profile_gate(&s).await {
        return r;
    }
    let graph_error = |message: &str, code: u32| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "A1b2"}})),
        )
            .into_response()
    };
    let Some(token) = bearer(&s, &headers) else { return graph_error("Invalid OAuth access token.", 190) };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(CLIENT_SECRET.as_bytes()).unwrap();
    mac.update(token.as_bytes());
    if q.get("appsecret_proof") != Some(&hex::encode(mac.finalize().into_bytes())) {
        return graph_error("Invalid appsecret_proof provided in the API argument", 100);
    }
    let fields: Vec<String> = q.get("fields").map(|f| f.split(',').map(str::to_owned).collect()).unwrap_or_default();
    lock(&s).fields_asked = fields.clone();
    let user = json!({
        "id": "10215839468281234",
        "name": "Jane Doe",
        "first_name": "Jane",
        "last_name": "Doe",
        "email": "jane@fabrikam.example",
        "picture": {"data": {"height": 50, "is_silhouette": false, "url": "https://platform-lookaside.fbsbx.com/p/jane.jpg", "width": 50}},
        "birthday": "01/31/1990"
    });
    let picked: serde_json::Map<String, Value> =
        fields.iter().filter_map(|f| user.get(f.as_str()).map(|v| (f.clone(), v.clone()))).collect();
    Json(Value::Object(picked)).into_response()
}

/// GitHub's `/user`.
async fn github_user(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = profile_gate(&s).await {
        return r;
    }
    if bearer(&s, &headers).is_none() {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials", "status": "401"})))
            .into_response();
    }
    assert_eq!(headers.get("accept").and_then(|v| v.to_str().ok()), Some("application/vnd.github+json"));
    assert!(headers.get("user-agent").is_some(), "GitHub refuses requests without a User-Agent");
    Json(json!({
        "login": "octocat",
        "id": 583231,
        "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
        "html_url": "https://github.com/octocat",
        "type": "User",
        "name": "The Octocat",
        "email": "octocat@public.example",
    }))
    .into_response()
}

/// GitHub's `/user/emails`.
async fn github_emails(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if bearer(&s, &headers).is_none() {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    let emails = lock(&s).emails.clone();
    if emails.is_null() {
        // What GitHub answers a token without the `user:email` scope.
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    }
    Json(emails).into_response()
}

/// A generic provider's profile endpoint.
async fn generic_profile(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = profile_gate(&s).await {
        return r;
    }
    if bearer(&s, &headers).is_none() {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_token"}))).into_response();
    }
    Json(lock(&s).profile.clone()).into_response()
}

/// A provider on a free loopback port.
struct Server {
    base: String,
    state: Shared,
}

async fn server() -> Server {
    let state: Shared = Arc::new(Mutex::new(Fake::default()));
    let app = Router::new()
        .route("/oauth/access_token", post(token))
        .route("/login/oauth/access_token", post(token))
        .route("/token", post(token))
        .route("/me", get(facebook_me))
        .route("/user", get(github_user))
        .route("/user/emails", get(github_emails))
        .route("/userinfo", get(generic_profile))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { base, state }
}

impl Server {
    /// A connection of `strategy` whose endpoints are this server's.
    fn connection(&self, strategy: &str, adjust: impl FnOnce(&mut pb::OAuth2Options)) -> Resolved {
        let b = &self.base;
        let mut o = pb::OAuth2Options {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            authorization_endpoint: format!("{b}/dialog/oauth"),
            ..Default::default()
        };
        match strategy {
            "facebook" => {
                o.token_endpoint = format!("{b}/oauth/access_token");
                o.userinfo_endpoint = format!("{b}/me");
            }
            "github" => {
                o.token_endpoint = format!("{b}/login/oauth/access_token");
                o.userinfo_endpoint = format!("{b}/user");
                o.emails_endpoint = format!("{b}/user/emails");
            }
            _ => {
                o.token_endpoint = format!("{b}/token");
                o.userinfo_endpoint = format!("{b}/userinfo");
            }
        }
        adjust(&mut o);
        let c = pb::Connection {
            name: format!("{strategy}-login"),
            strategy: strategy.into(),
            options: Some(pb::connection::Options::Oauth2(o)),
            ..Default::default()
        };
        let new = NewConnection::try_from(c).expect("valid connection");
        Resolved {
            connection: Connection { id: "con_test".into(), spec: new.spec, create_time: 0, update_time: 0 },
            secrets: new.secrets,
        }
    }

    /// Plays the provider's login page: reads the authorization request the connector
    /// built, issues a code bound to it, and answers the callback's parameters.
    fn authorize(&self, url: &str) -> HashMap<String, String> {
        let url = url::Url::parse(url).expect("authorization URL");
        assert!(url.as_str().starts_with(&self.base), "{url}");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!((q["response_type"].as_str(), q["client_id"].as_str()), ("code", CLIENT_ID));
        assert_eq!(q["code_challenge_method"], "S256");
        let mut fake = lock(&self.state);
        let code = format!("code-{}", fake.codes.len() + fake.tokens.len() + 1);
        fake.codes.insert(code.clone(), (q["code_challenge"].clone(), q["redirect_uri"].clone()));
        HashMap::from([("code".to_owned(), code), ("state".to_owned(), q["state"].clone())])
    }
}

fn transaction(n: u32) -> RedirectTransaction {
    RedirectTransaction {
        state: format!("state-{n}"),
        nonce: format!("nonce-{n}"),
        code_verifier: format!("verifier-{n}-0123456789abcdefghijklmnopqrstuvwxyz0123456"),
        callback_url: CALLBACK.into(),
        login_hint: String::new(),
        upstream_params: Vec::new(),
        extra_scopes: Vec::new(),
        data: Value::Null,
    }
}

/// A whole login through `connector`: begin, the provider's page, complete.
async fn login(
    connector: &SocialConnector,
    server: &Server,
    conn: &Resolved,
) -> Result<postern_connector::ExternalProfile, ConnectorError> {
    let tx = transaction(1);
    let url = begin(connector, conn, &tx).await;
    let params = server.authorize(&url);
    connector.complete("fabrikam-public", conn, &params, &tx).await.map(|c| c.profile)
}

/// The URL `begin` sends the browser to.
async fn begin(connector: &SocialConnector, conn: &Resolved, tx: &RedirectTransaction) -> String {
    match connector.begin("fabrikam-public", conn, tx).await.expect("begin").request {
        UpstreamRequest::Redirect(url) => url,
        other => panic!("a redirect, not {other:?}"),
    }
}

#[track_caller]
fn reason_of(e: &ConnectorError) -> &'static str {
    match e {
        ConnectorError::Unavailable { reason, .. } | ConnectorError::Rejected { reason, .. } => reason,
        ConnectorError::Denied { .. } => "DENIED",
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn facebook_reads_the_configured_fields_with_the_appsecret_proof() {
    let fb = server().await;
    let connector = SocialConnector::new(Provider::Facebook);
    let conn = fb.connection("facebook", |o| o.profile_fields = vec!["name".into(), "email".into(), "picture".into()]);
    let url = begin(&connector, &conn, &transaction(1)).await;
    let q: HashMap<String, String> = url::Url::parse(&url).unwrap().query_pairs().into_owned().collect();
    assert_eq!(q["scope"], "email public_profile", "Facebook's default permissions");

    let user = login(&connector, &fb, &conn).await.expect("login");
    assert_eq!(user.source_id, "10215839468281234");
    assert_eq!(fb.state.lock().unwrap().fields_asked, ["id", "name", "email", "picture"]);
    assert_eq!(fb.state.lock().unwrap().client_auth, ["body"], "Facebook takes the app secret in the body");
    let p = &user.profile;
    assert_eq!((p.email.as_str(), p.name.as_str()), ("jane@fabrikam.example", "Jane Doe"));
    assert!(!p.email_verified, "Facebook's `me` does not assert verification");
    assert_eq!(p.picture, "https://platform-lookaside.fbsbx.com/p/jane.jpg");
    assert_eq!(p.given_name, "", "first_name was not asked");
    assert!(user.raw.get("birthday").is_none());

    // The default fields; and a wrong app secret is refused by the Graph API itself.
    let conn = fb.connection("facebook", |_| {});
    let user = login(&connector, &fb, &conn).await.expect("login");
    assert_eq!((user.profile.given_name.as_str(), user.profile.family_name.as_str()), ("Jane", "Doe"));
    assert_eq!(fb.state.lock().unwrap().fields_asked, ["id", "name", "email", "first_name", "last_name", "picture"]);
}

#[tokio::test]
async fn github_takes_the_primary_verified_address_only() {
    let gh = server().await;
    let connector = SocialConnector::new(Provider::Github);
    let conn = gh.connection("github", |_| {});
    gh.state.lock().unwrap().emails = json!([
        {"email": "octocat@other.example", "verified": true, "primary": false, "visibility": null},
        {"email": "octocat@fabrikam.example", "verified": true, "primary": true, "visibility": "private"}
    ]);
    let user = login(&connector, &gh, &conn).await.expect("login");
    assert_eq!(user.source_id, "583231");
    let p = &user.profile;
    assert_eq!((p.email.as_str(), p.email_verified), ("octocat@fabrikam.example", true));
    assert_eq!((p.nickname.as_str(), p.name.as_str()), ("octocat", "The Octocat"));
    assert_eq!(user.raw["html_url"], "https://github.com/octocat");
    assert_eq!(user.raw["email"], "octocat@fabrikam.example", "the normalized address over /user's public one");

    // A primary address GitHub has not verified: kept, never called verified.
    gh.state.lock().unwrap().emails = json!([
        {"email": "octocat@other.example", "verified": true, "primary": false},
        {"email": "octocat@fabrikam.example", "verified": false, "primary": true}
    ]);
    let user = login(&connector, &gh, &conn).await.expect("login");
    assert_eq!((user.profile.email.as_str(), user.profile.email_verified), ("octocat@fabrikam.example", false));
    assert_eq!(user.raw["email_verified"], false);

    // No `user:email` scope: the list is refused, the public address is kept unverified.
    gh.state.lock().unwrap().emails = Value::Null;
    let user = login(&connector, &gh, &conn).await.expect("login");
    assert_eq!((user.profile.email.as_str(), user.profile.email_verified), ("octocat@public.example", false));
    assert_eq!(gh.state.lock().unwrap().client_auth, ["body", "body", "body"]);
}

#[tokio::test]
async fn a_generic_provider_is_read_through_its_mapping() {
    let idp = server().await;
    let connector = SocialConnector::new(Provider::Generic);
    idp.state.lock().unwrap().profile = json!({
        "data": {
            "uid": 4711,
            "attributes": {"mail": "jane@fabrikam.example", "mail_confirmed": true, "display": "Jane Doe"},
            "photos": [{"href": "https://cdn.example/jane.png"}]
        }
    });
    let conn = idp.connection("oauth2", |o| {
        o.scopes = vec!["profile".into()];
        o.profile_mapping = Some(pb::ProfileMapping {
            user_id: "data.uid".into(),
            email: "data.attributes.mail".into(),
            email_verified: "data.attributes.mail_confirmed".into(),
            name: "data.attributes.display".into(),
            picture: "data.photos.0.href".into(),
            ..Default::default()
        });
    });
    let user = login(&connector, &idp, &conn).await.expect("login");
    assert_eq!(user.source_id, "4711");
    let p = &user.profile;
    assert_eq!((p.email.as_str(), p.email_verified, p.name.as_str()), ("jane@fabrikam.example", true, "Jane Doe"));
    assert_eq!(p.picture, "https://cdn.example/jane.png");
    assert_eq!(idp.state.lock().unwrap().client_auth, ["basic"], "RFC 6749 §2.3.1: HTTP Basic");

    // Without a mapping: the OpenID Connect claim names; a non-boolean is not verification.
    idp.state.lock().unwrap().profile =
        json!({"sub": "u-1", "email": "jane@fabrikam.example", "email_verified": "yes"});
    let conn = idp.connection("oauth2", |_| {});
    let user = login(&connector, &idp, &conn).await.expect("login");
    assert_eq!((user.source_id.as_str(), user.profile.email_verified), ("u-1", false));

    // No user id: refused, nothing to store.
    idp.state.lock().unwrap().profile = json!({"email": "jane@fabrikam.example"});
    let e = login(&connector, &idp, &conn).await.expect_err("no id");
    assert_eq!(reason_of(&e), "PROFILE_INVALID", "{e:?}");
}

#[tokio::test]
async fn refusals_and_outages_name_the_connection() {
    let idp = server().await;
    let conn = idp.connection("github", |_| {});
    let connector = SocialConnector::with_timeout(Provider::Github, Duration::from_millis(300));

    // The user cancelled at the provider.
    let tx = transaction(1);
    let cancel = HashMap::from([
        ("error".to_owned(), "access_denied".to_owned()),
        ("error_description".to_owned(), "The user has denied your application access.".to_owned()),
        ("state".to_owned(), tx.state.clone()),
    ]);
    let e = connector.complete("t", &conn, &cancel, &tx).await.expect_err("cancelled");
    assert_eq!(reason_of(&e), "DENIED");
    assert!(e.to_string().contains("github-login") && e.to_string().contains("access_denied"), "{e}");

    // A callback of another login.
    let url = begin(&connector, &conn, &tx).await;
    let mut params = idp.authorize(&url);
    params.insert("state".into(), "state-of-another-login".into());
    let e = connector.complete("t", &conn, &params, &tx).await.expect_err("state");
    assert_eq!(reason_of(&e), "STATE_MISMATCH");

    // The token endpoint refuses the code; and a wrong PKCE verifier is refused too.
    idp.state.lock().unwrap().refuse_codes = true;
    let e = login(&connector, &idp, &conn).await.expect_err("refused");
    assert_eq!(reason_of(&e), "DENIED");
    assert!(
        e.to_string().contains("connection \"github-login\"") && e.to_string().contains("bad_verification_code"),
        "{e}"
    );
    idp.state.lock().unwrap().refuse_codes = false;
    let url = begin(&connector, &conn, &tx).await;
    let params = idp.authorize(&url);
    let mut other = tx.clone();
    other.code_verifier = "another-verifier-0123456789abcdefghijklmnopqrstuvwxyz".into();
    let e = connector.complete("t", &conn, &params, &other).await.expect_err("pkce");
    assert_eq!(reason_of(&e), "DENIED");

    // A wrong client secret.
    let wrong = idp.connection("github", |o| o.client_secret = "not-the-secret".into());
    let e = login(&connector, &idp, &wrong).await.expect_err("client");
    assert!(e.to_string().contains("invalid_client") && e.to_string().contains("client_secret"), "{e}");

    // The profile endpoint fails, then hangs: UNAVAILABLE, naming the connection.
    idp.state.lock().unwrap().profile_status = Some(502);
    let e = login(&connector, &idp, &conn).await.expect_err("502");
    assert!(matches!(e, ConnectorError::Unavailable { reason: "UPSTREAM_UNAVAILABLE", .. }), "{e:?}");
    assert!(e.to_string().contains("connection \"github-login\"") && e.to_string().contains("502"), "{e}");
    idp.state.lock().unwrap().profile_status = None;
    idp.state.lock().unwrap().profile_hangs = true;
    let e = login(&connector, &idp, &conn).await.expect_err("timeout");
    assert!(matches!(e, ConnectorError::Unavailable { .. }), "{e:?}");
    assert!(e.to_string().contains("connection \"github-login\"") && e.to_string().contains("did not answer"), "{e}");

    // A provider that cannot be reached at all.
    let gone = idp.connection("github", |o| o.token_endpoint = "http://127.0.0.1:9/login/oauth/access_token".into());
    let e = login(&connector, &idp, &gone).await.expect_err("unreachable");
    assert!(matches!(e, ConnectorError::Unavailable { .. }), "{e:?}");
    // No message carries a secret or a token.
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(CLIENT_SECRET) && !shown.contains("at-"), "{shown}");
}

#[test]
fn options_are_checked_per_strategy() {
    let check = |strategy: &str, o: pb::OAuth2Options| {
        let c = pb::Connection {
            name: "c".into(),
            strategy: strategy.into(),
            options: Some(pb::connection::Options::Oauth2(pb::OAuth2Options {
                client_id: "id".into(),
                client_secret: "secret".into(),
                ..o
            })),
            ..Default::default()
        };
        match NewConnection::try_from(c) {
            Ok(_) => Vec::new(),
            Err(v) => v.as_slice().iter().map(|f| f.field.clone()).collect::<Vec<_>>(),
        }
    };
    let at = |f: &str| format!("connection.options.oauth2.{f}");
    assert_eq!(
        check("github", pb::OAuth2Options { profile_fields: vec!["name".into()], ..Default::default() }),
        [at("profile_fields")]
    );
    assert_eq!(
        check(
            "facebook",
            pb::OAuth2Options {
                profile_fields: vec!["picture.type(large)".into(), "a b".into()],
                ..Default::default()
            }
        ),
        [at("profile_fields[1]")]
    );
    assert_eq!(
        check("facebook", pb::OAuth2Options { emails_endpoint: "https://x.example/e".into(), ..Default::default() }),
        [at("emails_endpoint")]
    );
    assert_eq!(
        check("github", pb::OAuth2Options { emails_endpoint: "ftp://x.example/e".into(), ..Default::default() }),
        [at("emails_endpoint")]
    );
    let endpoints = |m: Option<pb::ProfileMapping>| pb::OAuth2Options {
        authorization_endpoint: "https://idp.example/a".into(),
        token_endpoint: "https://idp.example/t".into(),
        userinfo_endpoint: "https://idp.example/u".into(),
        profile_mapping: m,
        ..Default::default()
    };
    assert!(
        check("oauth2", endpoints(Some(pb::ProfileMapping { user_id: "data.id".into(), ..Default::default() })))
            .is_empty()
    );
    assert_eq!(
        check("oauth2", endpoints(Some(pb::ProfileMapping { email: "data..mail".into(), ..Default::default() }))),
        [at("profile_mapping.email")]
    );
    assert_eq!(
        check("github", pb::OAuth2Options { profile_mapping: Some(Default::default()), ..Default::default() }),
        [at("profile_mapping")]
    );
}
