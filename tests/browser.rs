//! A real browser (headless Chromium over WebDriver) logs in through a tenant's hosted
//! page: it opens `/authorize`, signs up on the page, and lands on the application's
//! callback (a loopback server in this test) with a code that exchanges for tokens; a
//! second application's `/authorize` then skips the page (single sign-on), and logout ends
//! the session so that the page is shown again.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::browser::{Browser, Locator};
use postern_testkit::web::Agent;
use postern_testkit::{Clients, Suite, http_get};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TENANT: &str = "fabrikam-public";
const PASSWORD: &str = "Browser-Pass-42!";

/// The application's side: a loopback HTTP server that answers every request with a small
/// page and hands the test each request's path and query.
struct App {
    addr: SocketAddr,
    requests: tokio::sync::mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut got = Vec::new();
                    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&got).into_owned();
                    let target = text.split(' ').nth(1).unwrap_or_default().to_owned();
                    let page = "<html><body><h1 id=app>The application</h1></body></html>";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    if !target.starts_with("/favicon") {
                        let _ = tx.send(target);
                    }
                });
            }
        });
        Self { addr, requests, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request the browser made to the application (after any others).
    async fn next_request(&mut self) -> String {
        tokio::time::timeout(postern_testkit::browser::WAIT, self.requests.recv())
            .await
            .expect("the browser reached the application in time")
            .expect("the application is running")
    }
}

fn query_of(target: &str) -> HashMap<String, String> {
    let url = url::Url::parse(&format!("http://x{target}")).expect("target");
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn authorize_url(http: SocketAddr, client_id: &str, redirect_uri: &str, challenge: &str, state: &str) -> String {
    let mut url = url::Url::parse(&format!("http://{http}/{TENANT}/authorize")).expect("url");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid profile email")
        .append_pair("state", state)
        .append_pair("nonce", &format!("n-{state}"))
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    url.into()
}

async fn spa(admin: &mut Clients, name: &str, app: &App) -> tenant::Client {
    let c = tenant::Client {
        name: name.into(),
        app_type: tenant::AppType::Spa as i32,
        callbacks: vec![app.url("/callback")],
        allowed_logout_urls: vec![app.url("/bye")],
        ..Default::default()
    };
    let c = admin
        .clients
        .create_client(tenant::CreateClientRequest { tenant: TENANT.into(), client: Some(c) })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: TENANT.into(),
            connection: "customers".into(),
            client_id: c.client_id.clone(),
        })
        .await
        .expect("enable");
    c
}

/// Exchanges `code` at the token endpoint as a public client with its PKCE verifier.
async fn exchange(
    http: SocketAddr,
    client_id: &str,
    redirect_uri: &str,
    code: &str,
    verifier: &str,
) -> serde_json::Value {
    let fields: Vec<(String, String)> = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let answer =
        Agent::new().post_form(&format!("http://{http}/{TENANT}/oauth/token"), &fields).await.expect("token endpoint");
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("JSON")
}

async fn verify_id_token(http: SocketAddr, token: &str, audience: &str) -> serde_json::Value {
    let (code, _, body) = http_get(http, &format!("/{TENANT}/.well-known/jwks.json")).await.expect("jwks");
    assert_eq!(code, 200, "{body}");
    let set: JwkSet = serde_json::from_str(&body).expect("JWKS");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = set.find(header.kid.as_deref().expect("kid")).expect("the token's key is published");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[format!("http://{http}/{TENANT}/")]);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).expect("key"), &validation)
        .expect("the ID token verifies")
        .claims
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_signs_up_logs_in_with_sso_and_logs_out() {
    let Some(browser) = Browser::open("a_browser_signs_up_logs_in_with_sso_and_logs_out").await else { return };
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(TENANT).await.expect("tenant");
    let connection = conn::Connection {
        name: "customers".into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(conn::DatabaseOptions::default())),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: TENANT.into(), connection: Some(connection) })
        .await
        .expect("connection");
    let mut app = App::start().await;
    let portal = spa(&mut admin, "Fabrikam Customer Portal", &app).await;
    let shop = spa(&mut admin, "Fabrikam Shop", &app).await;
    let callback = app.url("/callback");

    // The first application: the hosted page, where the user signs up.
    let (verifier, challenge) = pkce();
    browser.goto(&authorize_url(suite.http, &portal.client_id, &callback, &challenge, "s1")).await.expect("authorize");
    let page = browser.source().await.expect("page");
    assert!(
        page.contains("Fabrikam Customer Portal") || page.contains(TENANT),
        "the hosted page names the app or tenant"
    );
    signup_on_page(&browser).await;
    let target = app.next_request().await;
    assert!(target.starts_with("/callback?"), "{target}");
    let q = query_of(&target);
    assert_eq!(q.get("state").map(String::as_str), Some("s1"));
    let tokens = exchange(suite.http, &portal.client_id, &callback, &q["code"], &verifier).await;
    let claims = verify_id_token(suite.http, tokens["id_token"].as_str().expect("id_token"), &portal.client_id).await;
    assert_eq!(claims["email"], "new.customer@example.com");
    assert_eq!(claims["nonce"], "n-s1");

    // The second application: the session skips the page.
    let (verifier2, challenge2) = pkce();
    browser.goto(&authorize_url(suite.http, &shop.client_id, &callback, &challenge2, "s2")).await.expect("authorize");
    let target = app.next_request().await;
    let q = query_of(&target);
    assert_eq!(q.get("state").map(String::as_str), Some("s2"), "straight back with a code: {target}");
    let tokens = exchange(suite.http, &shop.client_id, &callback, &q["code"], &verifier2).await;
    let claims2 = verify_id_token(suite.http, tokens["id_token"].as_str().expect("id_token"), &shop.client_id).await;
    assert_eq!(claims2["sub"], claims["sub"], "the same user");

    // Logout ends the session; the page is shown again.
    let mut logout = url::Url::parse(&format!("http://{}/{TENANT}/v2/logout", suite.http)).expect("url");
    logout.query_pairs_mut().append_pair("client_id", &shop.client_id).append_pair("returnTo", &app.url("/bye"));
    browser.goto(logout.as_str()).await.expect("logout");
    let target = app.next_request().await;
    assert!(target.starts_with("/bye"), "{target}");
    let (_, challenge3) = pkce();
    browser.goto(&authorize_url(suite.http, &shop.client_id, &callback, &challenge3, "s3")).await.expect("authorize");
    browser.find("input[type=password]").await.expect("the login page again");
    assert!(browser.url().await.expect("url").as_str().starts_with(&format!("http://{}/", suite.http)));

    // And the password works on the login form.
    login_on_page(&browser, "new.customer@example.com", PASSWORD).await;
    let target = app.next_request().await;
    assert_eq!(query_of(&target).get("state").map(String::as_str), Some("s3"), "{target}");
    browser.close().await.expect("close");
    app.task.abort();
    suite.stop().await.expect("stop");
}

/// Signs `new.customer@example.com` up on the hosted page shown now.
async fn signup_on_page(browser: &Browser) {
    // The signup form is on the page, or behind a link to it.
    if browser.client().find(Locator::Css("form[action*=signup] input[type=password]")).await.is_err() {
        browser.click("a[href*=signup]").await.expect("a link to the signup form");
    }
    browser.fill("form[action*=signup] input[type=email]", "new.customer@example.com").await.expect("email");
    browser.fill("form[action*=signup] input[type=password]", PASSWORD).await.expect("password");
    browser.click("form[action*=signup] [type=submit]").await.expect("submit");
}

/// Logs in on the hosted page shown now.
async fn login_on_page(browser: &Browser, email: &str, password: &str) {
    let form = "form:not([action*=signup])";
    browser.fill(&format!("{form} input[type=email], {form} input[name=username]"), email).await.expect("email");
    browser.fill(&format!("{form} input[type=password]"), password).await.expect("password");
    browser.click(&format!("{form} [type=submit]")).await.expect("submit");
}
