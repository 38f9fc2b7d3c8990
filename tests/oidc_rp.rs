//! Postern as a tenant's OpenID provider, driven by an independent relying party: npm's
//! `openid-client` (a certified RP library, `tests/node/rp.mjs`) discovers the tenant,
//! builds the authorization request (PKCE, state, nonce), exchanges the code and validates
//! the ID token, refreshes with rotation, gets machine-to-machine tokens and revokes. The
//! hosted login page in between is walked over HTTP as a browser without JavaScript does
//! (`postern_testkit::web`). Then the attacks a provider must refuse.

use std::time::Duration;

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::node::Node;
use postern_testkit::web::{Agent, Answer, Form};
use postern_testkit::{Clients, Suite};
use serde_json::{Value, json};

const PASSWORD: &str = "Correct-Horse-7";
/// Where the applications of these tests are sent back: nothing listens there, the tests
/// read the redirect's `Location`.
const CALLBACK: &str = "http://127.0.0.1:9/callback";

/// The relying party of one client.
struct Rp {
    node: Node,
    issuer: String,
    client_id: String,
    client_secret: String,
}

impl Rp {
    async fn step(&self, step: &str, input: Value) -> Value {
        let mut input = input;
        input["issuer"] = json!(self.issuer);
        input["client_id"] = json!(self.client_id);
        input["client_secret"] = json!(self.client_secret);
        let arg = input.to_string();
        self.node.run("rp.mjs", &[step, &arg], &[], Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A tenant with a database connection, a user, and a regular web application.
struct World {
    suite: Suite,
    admin: Clients,
    tenant: String,
    web: tenant::Client,
}

async fn client(admin: &mut Clients, tenant_name: &str, app_type: tenant::AppType, name: &str) -> tenant::Client {
    let c = tenant::Client {
        name: name.into(),
        app_type: app_type as i32,
        callbacks: vec![CALLBACK.into()],
        allowed_logout_urls: vec!["http://127.0.0.1:9/bye".into()],
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

async fn world(tenant_name: &str) -> World {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(tenant_name).await.expect("tenant");
    let web = client(&mut admin, tenant_name, tenant::AppType::RegularWeb, "Portal").await;
    let connection = conn::Connection {
        name: "users".into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(conn::DatabaseOptions::default())),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: tenant_name.into(), connection: Some(connection) })
        .await
        .expect("connection");
    enable(&mut admin, tenant_name, &web.client_id).await;
    admin
        .authn
        .signup(authn::SignupRequest {
            tenant: tenant_name.into(),
            client_id: web.client_id.clone(),
            connection: "users".into(),
            email: "jane@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("signup");
    World { suite, admin, tenant: tenant_name.into(), web }
}

async fn enable(admin: &mut Clients, tenant_name: &str, client_id: &str) {
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: tenant_name.into(),
            connection: "users".into(),
            client_id: client_id.into(),
        })
        .await
        .expect("enable");
}

impl World {
    fn issuer(&self) -> String {
        format!("http://{}/{}/", self.suite.http, self.tenant)
    }

    fn rp(&self, node: &Node, c: &tenant::Client) -> Rp {
        Rp {
            node: node.clone(),
            issuer: self.issuer(),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
        }
    }
}

/// The hosted page's login form: the form with a password field and no signup marker.
fn login_form(page: &Answer) -> Form {
    let forms = page.forms();
    let with_password: Vec<&Form> = forms.iter().filter(|f| f.name_of("password").is_some()).collect();
    with_password
        .iter()
        .find(|f| !f.action.contains("signup"))
        .or(with_password.first())
        .map(|f| (*f).clone())
        .unwrap_or_else(|| panic!("no login form on the page ({}): {}", page.status, page.body))
}

/// Follows redirects on Postern's host from `answer` until one leaves for the application
/// (its `Location` starts with `callback`) and answers that `Location`.
async fn follow_to(agent: &mut Agent, base: &str, mut answer: Answer, callback: &str) -> String {
    for _ in 0..10 {
        let Some(location) = answer.location().map(str::to_owned) else {
            panic!("expected a redirect to {callback}, got {}: {}", answer.status, answer.body)
        };
        if location.starts_with(callback) {
            return location;
        }
        let next = url::Url::parse(base).expect("base").join(&location).expect("location");
        answer = agent.get(next.as_str()).await.expect("follow");
    }
    panic!("too many redirects")
}

/// Opens `authorize_url`, logs in on the hosted page as `email`, and answers the callback
/// URL the browser is sent back to.
async fn log_in(agent: &mut Agent, authorize_url: &str, email: &str, password: &str) -> String {
    let (page_url, page) = open(agent, authorize_url).await;
    assert_eq!(page.status, 200, "the hosted page: {}", page.body);
    let mut form = login_form(&page);
    let user_field = form.name_of("email").or_else(|| form.name_of("text")).expect("a username field").to_owned();
    form.set(&user_field, email).set("password", password);
    let answer = agent.submit(&page_url, &form).await.expect("post the form");
    follow_to(agent, &page_url, answer, CALLBACK).await
}

/// GETs `url` and follows redirects on the same host: the final URL and its answer.
async fn open(agent: &mut Agent, url: &str) -> (String, Answer) {
    let mut url = url::Url::parse(url).expect("url");
    for _ in 0..10 {
        let answer = agent.get(url.as_str()).await.expect("get");
        match answer.location() {
            Some(location) if (300..400).contains(&answer.status) => {
                let next = url.join(location).expect("location");
                if next.host() != url.host() || next.port() != url.port() {
                    return (url.into(), answer);
                }
                url = next;
            }
            _ => return (url.into(), answer),
        }
    }
    panic!("too many redirects from {url}")
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url).expect("url").query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

#[tokio::test]
async fn openid_client_logs_in_refreshes_and_revokes() {
    let Some(node) = Node::find("openid_client_logs_in_refreshes_and_revokes") else { return };
    let mut w = world("acme").await;
    let rp = w.rp(&node, &w.web);

    let doc = rp.step("discover", json!({})).await;
    assert_eq!(doc["issuer"], w.issuer());
    for endpoint in ["authorization_endpoint", "token_endpoint", "revocation_endpoint", "end_session_endpoint"] {
        assert!(doc[endpoint].as_str().is_some_and(|u| u.starts_with(&w.issuer())), "{endpoint}: {doc}");
    }
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]), "{doc}");
    for grant in ["authorization_code", "refresh_token", "client_credentials"] {
        assert!(doc["grant_types_supported"].as_array().is_some_and(|g| g.contains(&json!(grant))), "{doc}");
    }

    // The authorization code flow with PKCE, state and nonce; openid-client checks the ID
    // token (signature against the key set, issuer, audience, nonce, expiry).
    let start =
        rp.step("authorize", json!({ "redirect_uri": CALLBACK, "scope": "openid profile email offline_access" })).await;
    let mut agent = Agent::new();
    let callback = log_in(&mut agent, start["url"].as_str().expect("url"), "jane@example.com", PASSWORD).await;
    assert_eq!(query(&callback).get("state").map(String::as_str), start["state"].as_str(), "state unchanged");
    let tokens = rp.step("exchange", json!({ "callback_url": callback, "verifier": start["verifier"], "state": start["state"], "nonce": start["nonce"] })).await;
    assert!(tokens.get("error").is_none(), "{tokens}");
    let claims = &tokens["id_token_claims"];
    assert_eq!(claims["email"], "jane@example.com", "{claims}");
    assert_eq!(claims["nonce"], start["nonce"]);
    let sub = claims["sub"].as_str().expect("sub").to_owned();
    assert!(sub.starts_with("auth0|"), "{sub}");
    let first_refresh = tokens["refresh_token"].as_str().expect("a refresh token (offline_access)").to_owned();

    // Userinfo with the access token answers the same subject.
    let info = rp.step("userinfo", json!({ "access_token": tokens["access_token"], "sub": sub })).await;
    assert_eq!(info["sub"], sub.as_str(), "{info}");

    // Refresh rotates: a new refresh token, and the used one is spent.
    let refreshed = rp.step("refresh", json!({ "refresh_token": first_refresh })).await;
    let second_refresh = refreshed["refresh_token"].as_str().expect("a rotated refresh token").to_owned();
    assert_ne!(second_refresh, first_refresh);
    assert!(refreshed["access_token"].as_str().is_some(), "{refreshed}");

    // Revocation (RFC 7009): the refresh token stops working.
    let revoked = rp.step("revoke", json!({ "token": second_refresh, "hint": "refresh_token" })).await;
    assert_eq!(revoked["revoked"], true, "{revoked}");
    let after = rp.step("refresh", json!({ "refresh_token": second_refresh })).await;
    assert_eq!(after["error"], "invalid_grant", "{after}");

    // A machine-to-machine client gets an access token for an API.
    let m2m = client(&mut w.admin, "acme", tenant::AppType::MachineToMachine, "Worker").await;
    w.admin.grant_api("acme", &m2m.client_id, "https://api.acme.example", &["read:reports"]).await.expect("grant");
    let cc = w.rp(&node, &m2m).step("client_credentials", json!({ "audience": "https://api.acme.example" })).await;
    let access = cc["access_token"].as_str().unwrap_or_else(|| panic!("{cc}"));
    assert_eq!(access.split('.').count(), 3, "a JWT: {cc}");
    assert_eq!(cc["token_type"].as_str().map(str::to_ascii_lowercase).as_deref(), Some("bearer"));
    w.suite.stop().await.expect("stop");
}

/// The code of a callback URL, or the `error` it carries.
fn code_of(callback: &str) -> String {
    let q = query(callback);
    q.get("code").cloned().unwrap_or_else(|| panic!("no code in {callback}"))
}

/// POSTs `fields` to the tenant's token endpoint (client authentication in the body, as
/// `client_secret_post`): the status and the JSON answer.
async fn token(w: &World, tenant_name: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let url = format!("http://{}/{tenant_name}/oauth/token", w.suite.http);
    let answer = Agent::new().post_form(&url, &fields).await.expect("token endpoint");
    (answer.status, serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("JSON: {}", answer.body)))
}

/// Runs the authorization request of `rp` with `extra` parameters and logs in: the
/// authorization's PKCE verifier, state and nonce, and the callback URL.
async fn authorized(rp: &Rp, agent: &mut Agent, scope: &str) -> (Value, String) {
    let start = rp.step("authorize", json!({ "redirect_uri": CALLBACK, "scope": scope })).await;
    let callback = log_in(agent, start["url"].as_str().expect("url"), "jane@example.com", PASSWORD).await;
    (start, callback)
}

#[tokio::test]
async fn a_provider_refuses_what_an_attacker_tries() {
    let Some(node) = Node::find("a_provider_refuses_what_an_attacker_tries") else { return };
    let mut w = world("acme").await;
    let rp = w.rp(&node, &w.web);
    let base = format!("http://{}/acme/authorize", w.suite.http);

    // Unregistered and look-alike redirect URIs get an error page, never a redirect.
    for bad in [
        "http://127.0.0.1:9/callback/evil",
        "http://127.0.0.1:9/callbackx",
        "http://127.0.0.1:9/callback?x=1",
        "http://127.0.0.1:9@evil.example/callback",
        "http://evil.example@127.0.0.1:9/callback",
        "http://127.0.0.1:9/other/../callback",
        "http://127.0.0.1:9/callback/..",
        "https://127.0.0.1:9/callback",
        "http://127.0.0.1:10/callback",
        "http://127.0.0.1/callback",
        "http://localhost:9/callback",
        "HTTP://127.0.0.1:9/callback",
        "http://127.0.0.1:9/Callback",
        "",
    ] {
        let mut url = url::Url::parse(&base).expect("url");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &w.web.client_id)
            .append_pair("redirect_uri", bad)
            .append_pair("scope", "openid")
            .append_pair("state", "s");
        let answer = Agent::new().get(url.as_str()).await.expect("authorize");
        assert!(answer.location().is_none(), "{bad:?} was redirected to {:?}", answer.location());
        assert!((400..500).contains(&answer.status), "{bad:?}: {} {}", answer.status, answer.body);
    }

    // `state` comes back unchanged, however odd.
    let odd = "a b&c=d/é?#%20+~";
    let start =
        rp.step("authorize", json!({ "redirect_uri": CALLBACK, "scope": "openid", "extra": { "state": odd } })).await;
    let mut agent = Agent::new();
    let callback = log_in(&mut agent, start["url"].as_str().expect("url"), "jane@example.com", PASSWORD).await;
    assert_eq!(query(&callback).get("state").map(String::as_str), Some(odd), "{callback}");

    // A form post without its CSRF token (or with another transaction's) gives no code.
    let start = rp.step("authorize", json!({ "redirect_uri": CALLBACK, "scope": "openid" })).await;
    let mut agent = Agent::new();
    let (url, page) = open(&mut agent, start["url"].as_str().expect("url")).await;
    let url = url.as_str();
    let mut form = login_form(&page);
    let user_field = form.name_of("email").or_else(|| form.name_of("text")).expect("username field").to_owned();
    form.set(&user_field, "jane@example.com").set("password", PASSWORD);
    let csrf: Vec<String> = form
        .controls
        .iter()
        .filter(|c| c.kind == "hidden" && c.name.contains("csrf"))
        .map(|c| c.name.clone())
        .collect();
    assert!(!csrf.is_empty(), "the login form carries a CSRF token: {:?}", form.controls);
    let mut without = form.clone();
    for name in &csrf {
        without.remove(name);
    }
    let answer = agent.submit(url, &without).await.expect("post");
    assert!(
        !answer.location().is_some_and(|l| l.starts_with(CALLBACK)),
        "no code without the CSRF token: {:?}",
        answer.location()
    );
    assert!((400..500).contains(&answer.status) || answer.status == 200, "{}", answer.status);
    // A fresh agent (no CSRF cookie) posting the page's form is refused too.
    let answer = Agent::new().submit(url, &form).await.expect("post");
    assert!(!answer.location().is_some_and(|l| l.starts_with(CALLBACK)), "no code without the cookie");

    // The code: bound to the PKCE verifier, single use, and a replay revokes what it gave.
    let mut agent = Agent::new();
    let (start, callback) = authorized(&rp, &mut agent, "openid offline_access").await;
    let code = code_of(&callback);
    let secret = w.web.client_secret.clone();
    let exchange = |verifier: Option<&'static str>| {
        let mut f = vec![
            ("grant_type", "authorization_code"),
            ("client_id", w.web.client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
        ];
        if let Some(v) = verifier {
            f.push(("code_verifier", v));
        }
        f
    };
    let (status, body) = token(&w, "acme", &exchange(None)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "no verifier: {body}");
    let (status, body) = token(&w, "acme", &exchange(Some("wrong-verifier-wrong-verifier-wrong-verifier-0"))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "wrong verifier: {body}");
    // Whether a wrong verifier spends the code is the provider's choice (refusing it is
    // safer); either way the right verifier then works at most once.
    let tokens = rp
        .step(
            "exchange",
            json!({ "callback_url": callback, "verifier": start["verifier"], "state": start["state"], "nonce": start["nonce"] }),
        )
        .await;
    if let Some(refresh) = tokens["refresh_token"].as_str() {
        // The code was still good: replaying it is refused and revokes the tokens it gave.
        let replay = rp
            .step(
                "exchange",
                json!({ "callback_url": callback, "verifier": start["verifier"], "state": start["state"], "nonce": start["nonce"] }),
            )
            .await;
        assert_eq!(replay["error"], "invalid_grant", "{replay}");
        let after = rp.step("refresh", json!({ "refresh_token": refresh })).await;
        assert_eq!(after["error"], "invalid_grant", "the replay revoked the refresh token: {after}");
    } else {
        assert_eq!(tokens["error"], "invalid_grant", "a code tried with a wrong verifier is spent: {tokens}");
    }

    // Refresh-token reuse revokes the whole family.
    let mut agent = Agent::new();
    let (start, callback) = authorized(&rp, &mut agent, "openid offline_access").await;
    let tokens = rp
        .step(
            "exchange",
            json!({ "callback_url": callback, "verifier": start["verifier"], "state": start["state"], "nonce": start["nonce"] }),
        )
        .await;
    let first = tokens["refresh_token"].as_str().unwrap_or_else(|| panic!("{tokens}")).to_owned();
    let second = rp.step("refresh", json!({ "refresh_token": first })).await;
    let second = second["refresh_token"].as_str().unwrap_or_else(|| panic!("{second}")).to_owned();
    let reuse = rp.step("refresh", json!({ "refresh_token": first })).await;
    assert_eq!(reuse["error"], "invalid_grant", "reuse refused: {reuse}");
    let family = rp.step("refresh", json!({ "refresh_token": second })).await;
    assert_eq!(family["error"], "invalid_grant", "the reuse revoked the newest token too: {family}");

    // A client of tenant A at tenant B's endpoints.
    w.admin.create_tenant("other").await.expect("tenant");
    let mut url = url::Url::parse(&format!("http://{}/other/authorize", w.suite.http)).expect("url");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &w.web.client_id)
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("scope", "openid")
        .append_pair("state", "s");
    let answer = Agent::new().get(url.as_str()).await.expect("authorize");
    assert!(answer.location().is_none(), "no redirect for another tenant's client: {:?}", answer.location());
    assert!((400..500).contains(&answer.status), "{}", answer.status);
    let mut agent = Agent::new();
    let (start, callback) = authorized(&rp, &mut agent, "openid").await;
    let verifier = start["verifier"].as_str().expect("verifier").to_owned();
    let code = code_of(&callback);
    let fields = [
        ("grant_type", "authorization_code"),
        ("client_id", w.web.client_id.as_str()),
        ("client_secret", w.web.client_secret.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, body) = token(&w, "other", &fields).await;
    assert!(matches!(status, 400 | 401), "{status} {body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    let m2m = client(&mut w.admin, "acme", tenant::AppType::MachineToMachine, "Worker").await;
    let cc = [
        ("grant_type", "client_credentials"),
        ("client_id", m2m.client_id.as_str()),
        ("client_secret", m2m.client_secret.as_str()),
        ("audience", "https://api.acme.example"),
    ];
    let (status, body) = token(&w, "other", &cc).await;
    assert!(matches!(status, 400 | 401), "{status} {body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    // The code is still good at its own tenant: the refusal spent nothing.
    let (status, body) = token(&w, "acme", &fields).await;
    assert_eq!(status, 200, "{body}");
    w.suite.stop().await.expect("stop");
}
