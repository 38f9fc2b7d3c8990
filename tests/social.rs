//! The social connectors (`facebook`, `github`, `oauth2`) with the OAuth 2.0 exchange itself
//! run against npm's `oidc-provider` (a certified provider; `tests/node/social-op.mjs`): its
//! login and consent pages, its code bound to the PKCE challenge, its client authentication
//! (HTTP Basic for `oauth2`, the secret in the body for Facebook and GitHub), its refusals.
//! Facebook's Graph API and GitHub's REST API are loopback stand-ins that follow their
//! documented shapes (`me` with `appsecret_proof`; `/user` and `/user/emails`) and learn
//! whose token they were given from the provider's userinfo endpoint, as the real APIs know
//! their own tokens.
//!
//! The provider is started once per test binary and stops when the binary exits.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use postern_connection::{Connection, NewConnection, Resolved};
use postern_connector::{ConnectorError, ExternalProfile, RedirectConnector, RedirectTransaction, UpstreamRequest};
use postern_connector_social::{Provider, SocialConnector};
use postern_proto::connections::v1 as pb;
use postern_testkit::web::Agent;
use serde_json::{Value, json};

const TENANT: &str = "fabrikam-public";

/// The provider of this test binary.
struct Upstream {
    issuer: String,
    _child: Mutex<Child>,
    /// Its shell stops node when this pipe closes, which happens however the binary ends.
    _lifeline: Mutex<ChildStdin>,
}

static UPSTREAM: OnceLock<Result<Upstream, String>> = OnceLock::new();

fn start_upstream() -> Result<Upstream, String> {
    postern_testkit::node::Node::locate()?;
    let dir = postern_testkit::node::workspace_dir();
    let script =
        r#"node social-op.mjs "$@" 2>/dev/null & pid=$!; cat >/dev/null; kill -TERM $pid 2>/dev/null; wait $pid"#;
    let mut child = Command::new("sh")
        .args(["-c", script, "sh", TENANT])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start node: {e}"))?;
    let lifeline = child.stdin.take().ok_or("no pipe to node's shell")?;
    let stdout = child.stdout.take().ok_or("no output of node")?;
    let mut first = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut first).map_err(|e| e.to_string())?;
    // Keep reading, so node never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    let ready: Value = serde_json::from_str(&first).map_err(|e| format!("social-op.mjs printed {first:?}: {e}"))?;
    let issuer = ready["issuer"].as_str().ok_or("no issuer")?.to_owned();
    Ok(Upstream { issuer, _child: Mutex::new(child), _lifeline: Mutex::new(lifeline) })
}

/// The provider's issuer, or `None` (after reporting why) when node or its packages are
/// missing.
fn upstream(test: &str) -> Option<&'static str> {
    match UPSTREAM.get_or_init(start_upstream) {
        Ok(u) => Some(&u.issuer),
        Err(why) => {
            postern_testkit::peers::missing(test, why);
            None
        }
    }
}

fn addr_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).expect("url");
    format!("{}:{}", u.host_str().expect("host"), u.port_or_known_default().expect("port")).parse().expect("addr")
}

/// The claims of the provider's userinfo for `token`, as the real APIs know their tokens.
async fn claims(issuer: &str, token: &str) -> Option<Value> {
    let bearer = format!("Bearer {token}");
    let (status, _, body) =
        postern_testkit::http_request(addr_of(issuer), "GET", "/me", &[("authorization", bearer.as_str())])
            .await
            .ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

fn token_of(headers: &HeaderMap) -> Option<String> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_owned)
}

/// A GitHub user id for a login name: GitHub's are numbers.
fn github_id(login: &str) -> u64 {
    login.bytes().fold(1_469_598_103u64, |h, b| (h ^ u64::from(b)).wrapping_mul(1_099_511_628_211) % 1_000_000_007)
}

/// GitHub's `/user`.
async fn github_user(State(issuer): State<String>, headers: HeaderMap) -> Response {
    let Some(c) = claims(&issuer, &token_of(&headers).unwrap_or_default()).await else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    };
    let login = c["sub"].as_str().unwrap_or_default().to_owned();
    Json(json!({
        "login": login,
        "id": github_id(&login),
        "avatar_url": c["picture"],
        "html_url": format!("https://github.com/{login}"),
        "name": c["name"],
        "email": null,
    }))
    .into_response()
}

/// GitHub's `/user/emails`: the account's address, verified as the provider says.
async fn github_emails(State(issuer): State<String>, headers: HeaderMap) -> Response {
    let Some(c) = claims(&issuer, &token_of(&headers).unwrap_or_default()).await else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    };
    Json(json!([
        {"email": "noreply@users.github.example", "primary": false, "verified": true, "visibility": null},
        {"email": c["email"], "primary": true, "verified": c["email_verified"], "visibility": "private"},
    ]))
    .into_response()
}

/// Graph API `me`, with the `appsecret_proof` of the `facebook` client checked.
async fn facebook_me(
    State(issuer): State<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use hmac::Mac as _;
    let refuse = |message: &str, code: u32| {
        (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": message, "type": "OAuthException", "code": code}})))
            .into_response()
    };
    let token = token_of(&headers).unwrap_or_default();
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"facebook-secret").expect("key");
    mac.update(token.as_bytes());
    if q.get("appsecret_proof") != Some(&hex::encode(mac.finalize().into_bytes())) {
        return refuse("Invalid appsecret_proof provided in the API argument", 100);
    }
    let Some(c) = claims(&issuer, &token).await else { return refuse("Invalid OAuth access token.", 190) };
    let me = json!({
        "id": format!("10{}", github_id(c["sub"].as_str().unwrap_or_default())),
        "name": c["name"],
        "first_name": c["given_name"],
        "last_name": c["family_name"],
        "email": c["email"],
        "picture": {"data": {"url": c["picture"], "is_silhouette": false}},
    });
    let fields = q.get("fields").cloned().unwrap_or_default();
    let picked: serde_json::Map<String, Value> =
        fields.split(',').filter_map(|f| me.get(f).map(|v| (f.to_owned(), v.clone()))).collect();
    Json(Value::Object(picked)).into_response()
}

/// The stand-ins of the two APIs, on a free loopback port.
async fn apis(issuer: &str) -> String {
    let app = Router::new()
        .route("/user", get(github_user))
        .route("/user/emails", get(github_emails))
        .route("/me", get(facebook_me))
        // An API in trouble.
        .route("/down", get(|| async { (StatusCode::BAD_GATEWAY, "upstream trouble") }))
        .with_state(issuer.to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A connection of `strategy` against the provider (and the stand-in APIs at `apis`).
fn connection(strategy: &str, issuer: &str, apis: &str, adjust: impl FnOnce(&mut pb::OAuth2Options)) -> Resolved {
    let client = match strategy {
        "oauth2" => "generic",
        other => other,
    };
    let mut o = pb::OAuth2Options {
        client_id: client.into(),
        client_secret: format!("{client}-secret"),
        authorization_endpoint: format!("{issuer}/auth"),
        token_endpoint: format!("{issuer}/token"),
        // The provider's userinfo (behind the stand-in APIs too) needs `openid` in the grant,
        // and `email` and `profile` for those claims.
        scopes: vec!["openid".into(), "email".into(), "profile".into()],
        ..Default::default()
    };
    match strategy {
        "github" => {
            o.userinfo_endpoint = format!("{apis}/user");
            o.emails_endpoint = format!("{apis}/user/emails");
        }
        "facebook" => o.userinfo_endpoint = format!("{apis}/me"),
        _ => {
            o.userinfo_endpoint = format!("{issuer}/me");
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
        connection: Connection { id: "con_social".into(), spec: new.spec, create_time: 0, update_time: 0 },
        secrets: new.secrets,
    }
}

/// Where the provider sends the browser back: a loopback callback of the tenant (the
/// provider's native clients take any port).
const CALLBACK: &str = "http://127.0.0.1:9/fabrikam-public/login/callback";

fn transaction(n: u32) -> RedirectTransaction {
    RedirectTransaction {
        state: format!("state-{n}-{}", rand::random::<u64>()),
        nonce: String::new(),
        code_verifier: format!("verifier-{n}-{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>()),
        callback_url: CALLBACK.into(),
        login_hint: String::new(),
        upstream_params: Vec::new(),
        extra_scopes: Vec::new(),
        data: Value::Null,
    }
}

/// Walks the provider's pages with `agent` as a browser would, from `start`, logging in as
/// `login` and consenting, until the provider sends the browser to `callback`: that URL.
async fn walk(agent: &mut Agent, start: &str, login: &str, callback: &str) -> String {
    let mut url = start.to_owned();
    for _ in 0..12 {
        let mut answer = agent.get(&url).await.expect("provider page");
        if answer.status == 200 {
            let mut forms = answer.forms();
            assert!(!forms.is_empty(), "a page without a form at {url}: {}", answer.body);
            let form = &mut forms[0];
            if form.has("login") {
                form.set("login", login).set("password", "any");
            }
            answer = agent.submit(&url, form).await.expect("submit");
        }
        let location = answer.location().unwrap_or_else(|| panic!("no redirect from {url}: {answer:?}")).to_owned();
        let next = url::Url::parse(&url).expect("url").join(&location).expect("location");
        if next.as_str().starts_with(callback) {
            return next.into();
        }
        url = next.into();
    }
    panic!("the provider never sent the browser back");
}

/// The callback's parameters after a login of `login` at the provider from `start`.
async fn at_provider(start: &str, login: &str) -> HashMap<String, String> {
    let back = walk(&mut Agent::new(), start, login, CALLBACK).await;
    url::Url::parse(&back).expect("url").query_pairs().into_owned().collect()
}

/// A whole login through `connector` as `login`.
async fn log_in(connector: &SocialConnector, conn: &Resolved, login: &str) -> Result<ExternalProfile, ConnectorError> {
    let tx = transaction(1);
    let url = begin(connector, conn, &tx).await;
    let params = at_provider(&url, login).await;
    connector.complete(TENANT, conn, &params, &tx).await.map(|c| c.profile)
}

/// The URL `begin` sends the browser to.
async fn begin(connector: &SocialConnector, conn: &Resolved, tx: &RedirectTransaction) -> String {
    match connector.begin(TENANT, conn, tx).await.expect("begin").request {
        UpstreamRequest::Redirect(url) => url,
        other => panic!("a redirect, not {other:?}"),
    }
}

#[tokio::test]
async fn github_logs_in_with_the_code_exchanged_at_oidc_provider() {
    let Some(issuer) = upstream("github_logs_in_with_the_code_exchanged_at_oidc_provider") else { return };
    let apis = apis(issuer).await;
    let connector = SocialConnector::new(Provider::Github);
    let conn = connection("github", issuer, &apis, |_| {});
    let alice = log_in(&connector, &conn, "alice").await.expect("login");
    assert_eq!(alice.source_id, github_id("alice").to_string());
    let p = &alice.profile;
    assert_eq!((p.email.as_str(), p.email_verified), ("alice@fabrikam.example", true));
    assert_eq!((p.nickname.as_str(), p.name.as_str()), ("alice", "Alice Doe"));
    assert_eq!(alice.raw["html_url"], "https://github.com/alice");

    // The provider has not verified this account's address: neither does the login.
    let bob = log_in(&connector, &conn, "unverified-bob").await.expect("login");
    assert_eq!((bob.profile.email.as_str(), bob.profile.email_verified), ("unverified-bob@fabrikam.example", false));
}

#[tokio::test]
async fn facebook_logs_in_with_the_code_exchanged_at_oidc_provider() {
    let Some(issuer) = upstream("facebook_logs_in_with_the_code_exchanged_at_oidc_provider") else { return };
    let apis = apis(issuer).await;
    let connector = SocialConnector::new(Provider::Facebook);
    let conn = connection("facebook", issuer, &apis, |_| {});
    let carol = log_in(&connector, &conn, "carol").await.expect("login");
    assert_eq!(carol.source_id, format!("10{}", github_id("carol")));
    let p = &carol.profile;
    assert_eq!(
        (p.email.as_str(), p.given_name.as_str(), p.family_name.as_str()),
        ("carol@fabrikam.example", "Carol", "Doe")
    );
    assert!(!p.email_verified, "Facebook's `me` does not assert verification");
    assert_eq!(p.picture, "https://pictures.fabrikam.example/carol.png");

    // The Graph API checks the appsecret_proof: one made with another secret is refused.
    let wrong = connection("facebook", issuer, &apis, |o| o.client_secret = "another-secret".into());
    let e = log_in(&connector, &wrong, "carol").await.expect_err("refused");
    assert!(e.to_string().contains("invalid_client"), "the provider refuses the client first: {e}");
}

#[tokio::test]
async fn a_generic_provider_logs_in_with_basic_client_authentication() {
    let Some(issuer) = upstream("a_generic_provider_logs_in_with_basic_client_authentication") else { return };
    let connector = SocialConnector::new(Provider::Generic);
    let conn = connection("oauth2", issuer, "", |_| {});
    let dave = log_in(&connector, &conn, "dave").await.expect("login");
    assert_eq!(dave.source_id, "dave");
    let p = &dave.profile;
    assert_eq!((p.email.as_str(), p.email_verified, p.name.as_str()), ("dave@fabrikam.example", true, "Dave Doe"));

    // A mapping that names other members.
    let mapped = connection("oauth2", issuer, "", |o| {
        o.profile_mapping = Some(pb::ProfileMapping {
            user_id: "email".into(),
            nickname: "given_name".into(),
            email_verified: "no.such.member".into(),
            ..Default::default()
        })
    });
    let dave = log_in(&connector, &mapped, "dave").await.expect("login");
    assert_eq!((dave.source_id.as_str(), dave.profile.nickname.as_str()), ("dave@fabrikam.example", "Dave"));
    assert!(!dave.profile.email_verified);
}

#[tokio::test]
async fn test_connection_reaches_every_endpoint_and_tries_the_client_credentials() {
    use postern_connector::TestReport;
    let Some(issuer) = upstream("test_connection_reaches_every_endpoint_and_tries_the_client_credentials") else {
        return;
    };
    let apis = apis(issuer).await;
    // Nothing listens on the discard port.
    let nobody = "http://127.0.0.1:9/token".to_owned();
    let test = |strategy: &str, adjust: fn(&mut pb::OAuth2Options, &str)| {
        let nobody = nobody.clone();
        let conn = connection(strategy, issuer, &apis, |o| adjust(o, &nobody));
        let provider = Provider::of(conn.connection.spec.strategy).expect("a social strategy");
        async move { SocialConnector::new(provider).test("t", &conn).await.expect("a report") }
    };
    let names = |r: &TestReport| r.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let last = |r: &TestReport| r.steps.last().expect("a step").clone();

    // Working connections: every step, each endpoint reached, the client accepted.
    let github = test("github", |_, _| {}).await;
    assert!(github.ok, "{github:?}");
    assert_eq!(
        names(&github),
        ["configuration", "authorization_endpoint", "client_authentication", "userinfo_endpoint", "emails_endpoint"]
    );
    assert!(github.steps[2].detail.contains("accepted client \"github\""), "{github:?}");
    assert!(github.steps[3].detail.contains("refused a call without a token (HTTP 401)"), "{github:?}");
    let generic = test("oauth2", |_, _| {}).await;
    assert!(generic.ok, "{generic:?}");
    assert_eq!(
        names(&generic),
        ["configuration", "authorization_endpoint", "client_authentication", "userinfo_endpoint"]
    );
    let facebook = test("facebook", |_, _| {}).await;
    assert!(facebook.ok, "{facebook:?}");
    assert!(facebook.steps[2].detail.contains("issued an app access token"), "{facebook:?}");

    // A wrong secret: the provider refuses the client, and the test stops there.
    for strategy in ["github", "oauth2", "facebook"] {
        let wrong = test(strategy, |o, _| o.client_secret = "not-the-secret".into()).await;
        assert!(!wrong.ok, "{strategy}: {wrong:?}");
        assert_eq!(names(&wrong), ["configuration", "authorization_endpoint", "client_authentication"], "{strategy}");
        let step = last(&wrong);
        assert!(
            step.detail.contains("invalid_client") && step.detail.contains("check the connection's client_id"),
            "{strategy}: {step:?}"
        );
    }

    // Endpoints that are not there.
    let no_page =
        test("oauth2", |o, _| o.authorization_endpoint = o.token_endpoint.replace("/token", "/no-page")).await;
    assert_eq!(last(&no_page).name, "authorization_endpoint");
    assert!(!no_page.ok && last(&no_page).detail.contains("HTTP 404"), "{no_page:?}");
    let down = test("github", |o, nobody| o.token_endpoint = nobody.into()).await;
    assert_eq!((down.ok, last(&down).name.as_str()), (false, "client_authentication"), "{down:?}");
    // With its cause: reqwest's own message names only the URL.
    assert!(
        last(&down).detail.contains("could not be reached") && last(&down).detail.contains("Connection refused"),
        "{down:?}"
    );
    let not_the_api = test("github", |o, _| o.emails_endpoint = o.token_endpoint.replace("/token", "/no-api")).await;
    assert_eq!((not_the_api.ok, last(&not_the_api).name.as_str()), (false, "emails_endpoint"), "{not_the_api:?}");
    assert!(last(&not_the_api).detail.contains("check emails_endpoint"), "{not_the_api:?}");
    let outage = test("facebook", |o, _| o.userinfo_endpoint = o.userinfo_endpoint.replace("/me", "/down")).await;
    assert_eq!((outage.ok, last(&outage).name.as_str()), (false, "userinfo_endpoint"), "{outage:?}");
    assert!(last(&outage).detail.contains("HTTP 502"), "{outage:?}");
    assert!(!last(&outage).detail.contains("retry"), "a test is not a login to retry: {outage:?}");

    for report in [&github, &generic, &facebook, &no_page, &down, &not_the_api, &outage] {
        let all = format!("{report:?}");
        for secret in ["github-secret", "generic-secret", "facebook-secret", "not-the-secret"] {
            assert!(!all.contains(secret), "a secret in the report: {all}");
        }
    }
}

#[tokio::test]
async fn the_providers_refusals_fail_the_login() {
    let Some(issuer) = upstream("the_providers_refusals_fail_the_login") else { return };
    let connector = SocialConnector::new(Provider::Generic);
    let conn = connection("oauth2", issuer, "", |_| {});
    let tx = transaction(2);
    let url = begin(&connector, &conn, &tx).await;
    let params = at_provider(&url, "erin").await;

    // Another verifier than the challenge's: the provider refuses the code.
    let mut other = tx.clone();
    other.code_verifier = format!("{}x", tx.code_verifier);
    let e = connector.complete(TENANT, &conn, &params, &other).await.expect_err("PKCE");
    assert!(e.to_string().contains("connection \"oauth2-login\"") && e.to_string().contains("invalid_grant"), "{e}");
    // The right verifier redeems it, once: a replay is refused.
    connector.complete(TENANT, &conn, &params, &tx).await.expect("the code with its verifier");
    let e = connector.complete(TENANT, &conn, &params, &tx).await.expect_err("replay");
    assert!(e.to_string().contains("invalid_grant"), "{e}");

    // A wrong client secret.
    let wrong = connection("oauth2", issuer, "", |o| o.client_secret = "not-the-secret".into());
    let e = log_in(&connector, &wrong, "erin").await.expect_err("client");
    assert!(e.to_string().contains("invalid_client") && e.to_string().contains("client_secret"), "{e}");
    assert!(!e.to_string().contains("not-the-secret"), "no secret in a message: {e}");
}

// ---- End to end: the hosted flow (`/authorize?connection=` → provider → `/login/callback`). ----

mod flow {
    use super::*;
    use base64::Engine as _;
    use postern_proto::authn::v1 as authn;
    use postern_proto::tenant::v1 as tenant;
    use postern_testkit::{Clients, Suite};

    /// The application's own callback (never fetched: its query is read off the redirect).
    pub const APP: &str = "https://portal.fabrikam.example/callback";
    pub const STATE: &str = "portal-state";

    pub fn base(suite: &Suite) -> String {
        format!("http://{}", suite.http)
    }

    /// The tenant with the Fabrikam Customer Portal, and its connection of `strategy`.
    pub async fn portal(suite: &Suite, strategy: &str, issuer: &str, apis: &str) -> (Clients, tenant::Client) {
        let mut admin = suite.admin().await;
        admin.create_tenant(TENANT).await.expect("tenant");
        let c = tenant::Client {
            name: "Fabrikam Customer Portal".into(),
            app_type: tenant::AppType::RegularWeb as i32,
            callbacks: vec![APP.into()],
            ..Default::default()
        };
        let client = admin
            .clients
            .create_client(tenant::CreateClientRequest { tenant: TENANT.into(), client: Some(c) })
            .await
            .expect("client")
            .into_inner()
            .client
            .expect("client");
        add_connection(&mut admin, &client, strategy, issuer, apis, |_| {}).await;
        (admin, client)
    }

    /// Creates the connection of `strategy` (named after it) and enables it for `client`.
    pub async fn add_connection(
        admin: &mut Clients,
        client: &tenant::Client,
        strategy: &str,
        issuer: &str,
        apis: &str,
        adjust: impl FnOnce(&mut pb::OAuth2Options),
    ) {
        let resolved = connection(strategy, issuer, apis, |_| {});
        let mut options = match resolved.connection.spec.options.to_proto(&resolved.secrets, true) {
            pb::connection::Options::Oauth2(o) => o,
            other => panic!("{other:?}"),
        };
        adjust(&mut options);
        let c = pb::Connection {
            name: strategy.into(),
            strategy: strategy.into(),
            options: Some(pb::connection::Options::Oauth2(options)),
            ..Default::default()
        };
        admin
            .connections
            .create_connection(pb::CreateConnectionRequest { tenant: TENANT.into(), connection: Some(c) })
            .await
            .expect("connection");
        admin
            .connections
            .enable_client(pb::EnableClientRequest {
                tenant: TENANT.into(),
                connection: strategy.into(),
                client_id: client.client_id.clone(),
            })
            .await
            .expect("enable");
    }

    /// A login of `login` through `connection`, as a browser does it: the application's query
    /// at its callback (a code, or an error).
    pub async fn log_in(
        suite: &Suite,
        client: &tenant::Client,
        connection: &str,
        login: &str,
    ) -> HashMap<String, String> {
        let mut agent = Agent::new();
        let mut url = url::Url::parse(&format!("{}/{TENANT}/authorize", base(suite))).expect("url");
        url.query_pairs_mut()
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", APP)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid profile email")
            .append_pair("state", STATE)
            .append_pair("nonce", "portal-nonce")
            .append_pair("connection", connection);
        let start = agent.get(url.as_str()).await.expect("authorize");
        assert_eq!(start.status, 303, "{start:?}");
        let upstream = start.location().expect("to the provider").to_owned();
        let callback = format!("{}/{TENANT}/login/callback", base(suite));
        let back = super::walk(&mut agent, &upstream, login, &callback).await;
        let done = agent.get(&back).await.expect("callback");
        assert_eq!(done.status, 303, "{done:?}");
        let location = done.location().expect("to the application");
        assert!(location.starts_with(APP), "{location}");
        url::Url::parse(location).expect("url").query_pairs().into_owned().collect()
    }

    /// The claims of the ID token the code of `answer` is exchanged for.
    pub async fn id_token(suite: &Suite, client: &tenant::Client, answer: &HashMap<String, String>) -> Value {
        assert_eq!(answer.get("state").map(String::as_str), Some(STATE), "{answer:?}");
        let code = answer.get("code").unwrap_or_else(|| panic!("no code: {answer:?}"));
        let fields: Vec<(String, String)> = [
            ("grant_type", "authorization_code"),
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", APP),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let answer =
            Agent::new().post_form(&format!("{}/{TENANT}/oauth/token", base(suite)), &fields).await.expect("token");
        assert_eq!(answer.status, 200, "{}", answer.body);
        let tokens: Value = serde_json::from_str(&answer.body).expect("JSON");
        let jwt = tokens["id_token"].as_str().expect("id_token");
        let body = jwt.split('.').nth(1).expect("JWT");
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).expect("b64"))
            .expect("JSON")
    }

    pub async fn user(admin: &mut Clients, user_id: &str) -> Option<authn::User> {
        match admin.users.get_user(authn::GetUserRequest { tenant: TENANT.into(), user_id: user_id.into() }).await {
            Ok(r) => r.into_inner().user,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("GetUser: {s:?}"),
        }
    }
}

#[tokio::test]
async fn github_and_facebook_log_users_in_through_the_callback() {
    let Some(issuer) = upstream("github_and_facebook_log_users_in_through_the_callback") else { return };
    let apis = apis(issuer).await;
    let suite = postern_testkit::Suite::start().await.expect("suite");
    let (mut admin, portal) = flow::portal(&suite, "github", issuer, &apis).await;
    flow::add_connection(&mut admin, &portal, "facebook", issuer, &apis, |_| {}).await;

    let answer = flow::log_in(&suite, &portal, "github", "alice").await;
    let id = flow::id_token(&suite, &portal, &answer).await;
    let github_user = format!("github|{}", github_id("alice"));
    assert_eq!(id["sub"], github_user.as_str());
    assert_eq!((id["email"].as_str(), id["email_verified"].as_bool()), (Some("alice@fabrikam.example"), Some(true)));
    let stored = flow::user(&mut admin, &github_user).await.expect("stored");
    let identity = &stored.identities[0];
    assert_eq!(
        (identity.strategy.as_str(), identity.connection.as_str(), identity.is_social),
        ("github", "github", true)
    );
    let data = identity.profile_data.as_ref().expect("profile data");
    assert!(data.fields.contains_key("html_url"), "GitHub's own profile is kept on the identity: {data:?}");

    let answer = flow::log_in(&suite, &portal, "facebook", "carol").await;
    let id = flow::id_token(&suite, &portal, &answer).await;
    assert_eq!(id["sub"], format!("facebook|10{}", github_id("carol")).as_str());
    assert_eq!(id["email_verified"], false, "Facebook does not assert it");

    // A GitHub account whose address the provider has not verified: stored unverified.
    let answer = flow::log_in(&suite, &portal, "github", "unverified-bob").await;
    let id = flow::id_token(&suite, &portal, &answer).await;
    assert_eq!(
        (id["email"].as_str(), id["email_verified"].as_bool()),
        (Some("unverified-bob@fabrikam.example"), Some(false))
    );
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_failing_profile_endpoint_or_a_refused_code_stores_nothing() {
    let Some(issuer) = upstream("a_failing_profile_endpoint_or_a_refused_code_stores_nothing") else { return };
    let apis = apis(issuer).await;
    let suite = postern_testkit::Suite::start().await.expect("suite");
    let (mut admin, portal) = flow::portal(&suite, "github", issuer, &apis).await;
    // The Graph API answering 502, and a connection whose client secret the provider
    // refuses.
    let broken = |o: &mut pb::OAuth2Options| o.userinfo_endpoint = format!("{apis}/down");
    flow::add_connection(&mut admin, &portal, "facebook", issuer, &apis, broken).await;
    flow::add_connection(&mut admin, &portal, "oauth2", issuer, "", |o| o.client_secret = "not-the-secret".into())
        .await;

    let answer = flow::log_in(&suite, &portal, "facebook", "dave").await;
    assert_eq!(answer.get("error").map(String::as_str), Some("temporarily_unavailable"), "{answer:?}");
    let description = &answer["error_description"];
    assert!(description.contains("facebook") && description.contains("502"), "names the connection: {description}");
    assert_eq!(answer["state"], flow::STATE);

    let answer = flow::log_in(&suite, &portal, "oauth2", "dave").await;
    assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{answer:?}");
    assert!(answer["error_description"].contains("invalid_client"), "{answer:?}");
    assert!(!answer["error_description"].contains("not-the-secret"));

    let listed = admin
        .users
        .list_users(postern_proto::authn::v1::ListUsersRequest { tenant: TENANT.into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.users.is_empty(), "nothing stored: {:?}", listed.users);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_github_user_linked_to_a_database_user_logs_in_as_it() {
    use postern_proto::authn::v1 as authn;
    let Some(issuer) = upstream("a_github_user_linked_to_a_database_user_logs_in_as_it") else { return };
    let apis = apis(issuer).await;
    let suite = postern_testkit::Suite::start().await.expect("suite");
    let (mut admin, portal) = flow::portal(&suite, "github", issuer, &apis).await;
    admin.create_database_connection(TENANT, "customers", &portal.client_id).await.expect("database");
    let jane = admin
        .authn
        .signup(authn::SignupRequest {
            tenant: TENANT.into(),
            client_id: portal.client_id.clone(),
            connection: "customers".into(),
            email: "alice@fabrikam.example".into(),
            password: "Wonder-Land-42!".into(),
            ..Default::default()
        })
        .await
        .expect("signup")
        .into_inner()
        .user
        .expect("user");
    let answer = flow::log_in(&suite, &portal, "github", "alice").await;
    let github_user = flow::id_token(&suite, &portal, &answer).await["sub"].as_str().expect("sub").to_owned();

    let link = |check: authn::LinkCheck| authn::LinkUserAccountRequest {
        tenant: TENANT.into(),
        user_id: jane.user_id.clone(),
        secondary_user_id: github_user.clone(),
        check: check as i32,
    };
    // The database user's address is not verified: no link on it.
    let refused = admin.users.link_user_account(link(authn::LinkCheck::VerifiedEmail)).await.expect_err("unverified");
    assert_eq!(postern_testkit::reason(&refused).as_deref(), Some("EMAIL_NOT_VERIFIED"));
    admin
        .users
        .update_user(authn::UpdateUserRequest {
            tenant: TENANT.into(),
            user: Some(authn::User { user_id: jane.user_id.clone(), email_verified: true, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["email_verified".into()] }),
        })
        .await
        .expect("verify");
    let linked = admin.users.link_user_account(link(authn::LinkCheck::VerifiedEmail)).await.expect("link").into_inner();
    assert_eq!(linked.user.expect("user").identities.len(), 2);

    // GitHub now logs the database user in.
    let answer = flow::log_in(&suite, &portal, "github", "alice").await;
    assert_eq!(flow::id_token(&suite, &portal, &answer).await["sub"], jane.user_id.as_str());
    assert!(flow::user(&mut admin, &github_user).await.is_none());
    suite.stop().await.expect("stop");
}
