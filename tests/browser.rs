//! A real browser (headless Chromium over WebDriver) logs in through a tenant's hosted
//! page: it opens `/authorize`, signs up on the page, and lands on the application's
//! callback (a loopback server in this test) with a code that exchanges for tokens; a
//! second application's `/authorize` then skips the page (single sign-on), and logout ends
//! the session so that the page is shown again. A single-page application's JavaScript gets
//! its tokens across origins (CORS), and a page at an origin the client does not allow is
//! refused. Auth0's own SPA SDK (npm's auth0-spa-js) logs in, authenticates silently in its
//! hidden iframe (`response_mode=web_message`) and logs out against the tenant; over https it
//! does so from another site too.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::browser::{Browser, Launch, Locator};
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
        let task = serve_pages(listener, move |target| {
            if !target.starts_with("/favicon") {
                let _ = tx.send(target.to_owned());
            }
            "<html><body><h1 id=app>The application</h1></body></html>".to_owned()
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

/// Serves `listener` until aborted: each request's target (path and query) is handed to
/// `page`, and its answer is the HTML page sent back.
fn serve_pages(
    listener: tokio::net::TcpListener,
    page: impl Fn(&str) -> String + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let page = std::sync::Arc::new(page);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let page = page.clone();
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
                let body = page(text.split(' ').nth(1).unwrap_or_default());
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    })
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

/// A single-page application of the application at `origin` (its `/callback`, logging out
/// to its `/bye`), with the `customers` connection enabled.
async fn spa(admin: &mut Clients, name: &str, origin: &str) -> tenant::Client {
    let c = tenant::Client {
        name: name.into(),
        app_type: tenant::AppType::Spa as i32,
        callbacks: vec![format!("{origin}/callback")],
        allowed_logout_urls: vec![format!("{origin}/bye")],
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
    let mut admin = customers(&suite).await;
    let mut app = App::start().await;
    let portal = spa(&mut admin, "Fabrikam Customer Portal", &app.url("")).await;
    let shop = spa(&mut admin, "Fabrikam Shop", &app.url("")).await;
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

/// The tenant, with its database connection `customers`; the admin's clients.
async fn customers(suite: &Suite) -> Clients {
    customers_through(suite.admin().await).await
}

/// [`customers`] through `admin`.
async fn customers_through(mut admin: Clients) -> Clients {
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
    admin
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

/// A single-page application's side: a loopback HTTP server whose pages are the
/// application, their JavaScript calling Postern's endpoints from the browser as an OpenID
/// library does (`fetch`, across origins): `/start` makes a PKCE pair, keeps the verifier in
/// `sessionStorage` and goes to `/authorize`; `/callback` reads the discovery document,
/// exchanges the code at the token endpoint and reads `/userinfo` with the access token;
/// `/foreign` posts a made-up code to the token endpoint. Each page writes what it got, as
/// JSON, into `#out` and marks it `data-done`.
struct SpaApp {
    listener: Option<tokio::net::TcpListener>,
    port: u16,
    /// The host of its origin: `127.0.0.1`, the same site as the suite, or `localhost`,
    /// another site.
    host: &'static str,
}

impl SpaApp {
    async fn bind() -> Self {
        Self::bind_as("127.0.0.1").await
    }

    /// An application on loopback whose origin names it `host`.
    async fn bind_as(host: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        Self { listener: Some(listener), port, host }
    }

    /// The application's origin.
    fn origin(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// Serves the pages of `client_id` at the tenant of `issuer`.
    fn serve(&mut self, issuer: &str, client_id: &str) -> tokio::task::JoinHandle<()> {
        let listener = self.listener.take().expect("served once");
        let constants = format!(
            "const ISSUER = {}; const CLIENT_ID = {}; const CALLBACK = {};",
            serde_json::Value::from(issuer),
            serde_json::Value::from(client_id),
            serde_json::Value::from(format!("{}/callback", self.origin())),
        );
        serve_pages(listener, move |target| {
            let script = match target.split('?').next().unwrap_or_default() {
                "/start" => SPA_START,
                "/callback" => SPA_CALLBACK,
                "/foreign" => SPA_FOREIGN,
                _ => "",
            };
            format!(
                "<!doctype html><html><body><pre id=out></pre><script>{constants}\n{SPA_DONE}{script}</script></body></html>"
            )
        })
    }
}

/// Writes `value` as JSON into `#out` and marks it done.
const SPA_DONE: &str = "function done(value) { const out = document.getElementById('out'); \
     out.textContent = JSON.stringify(value); out.dataset.done = '1'; }\n";

const SPA_START: &str = "(async () => {
  const b64 = bytes => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
  const verifier = b64(crypto.getRandomValues(new Uint8Array(32)));
  sessionStorage.setItem('verifier', verifier);
  const challenge = b64(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const url = new URL(ISSUER + 'authorize');
  url.search = new URLSearchParams({
    response_type: 'code', client_id: CLIENT_ID, redirect_uri: CALLBACK, scope: 'openid profile email',
    state: 'spa', nonce: 'n-spa', code_challenge: challenge, code_challenge_method: 'S256',
  });
  location.assign(url);
})();";

const SPA_CALLBACK: &str = "(async () => {
  try {
    const meta = await (await fetch(ISSUER + '.well-known/openid-configuration')).json();
    const code = new URLSearchParams(location.search).get('code');
    const answer = await fetch(meta.token_endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code', client_id: CLIENT_ID, code, redirect_uri: CALLBACK,
        code_verifier: sessionStorage.getItem('verifier'),
      }),
    });
    const tokens = await answer.json();
    const info = await fetch(meta.userinfo_endpoint, { headers: { Authorization: 'Bearer ' + tokens.access_token } });
    done({ status: answer.status, tokens, userinfo: await info.json() });
  } catch (e) {
    done({ blocked: String(e) });
  }
})();";

const SPA_FOREIGN: &str = "(async () => {
  try {
    const answer = await fetch(ISSUER + 'oauth/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code', client_id: CLIENT_ID, code: 'made-up', redirect_uri: CALLBACK,
        code_verifier: 'v'.repeat(43),
      }),
    });
    done({ status: answer.status, body: await answer.json() });
  } catch (e) {
    done({ blocked: String(e) });
  }
})();";

/// What a page of [`SpaApp`] wrote, once it is done.
async fn spa_out(browser: &Browser) -> serde_json::Value {
    let out = browser.find("#out[data-done]").await.expect("the page's script finished");
    let text = out.text().await.expect("text");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_page_application_gets_its_tokens_from_javascript_across_origins() {
    let test = "a_single_page_application_gets_its_tokens_from_javascript_across_origins";
    let Some(browser) = Browser::open(test).await else { return };
    let suite = Suite::start().await.expect("suite");
    let mut admin = customers(&suite).await;
    let mut app = SpaApp::bind().await;
    // The same server under another name is another origin, one the client does not allow.
    let foreign = format!("http://localhost:{}", app.port);

    // Allowed origins are origins: no path, not even "/".
    let mut c = tenant::Client {
        name: "Fabrikam Customer Portal".into(),
        app_type: tenant::AppType::Spa as i32,
        callbacks: vec![format!("{}/callback", app.origin())],
        allowed_origins: vec![format!("{foreign}/")],
        ..Default::default()
    };
    let create = |c: &tenant::Client| tenant::CreateClientRequest { tenant: TENANT.into(), client: Some(c.clone()) };
    let refused = admin.clients.create_client(create(&c)).await.expect_err("a path is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("client.allowed_origins[0]"), "{}", refused.message());
    c.allowed_origins.clear();
    let client = admin.clients.create_client(create(&c)).await.expect("client").into_inner().client.expect("client");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: TENANT.into(),
            connection: "customers".into(),
            client_id: client.client_id.clone(),
        })
        .await
        .expect("enable");
    let issuer = format!("http://{}/{TENANT}/", suite.http);
    let task = app.serve(&issuer, &client.client_id);

    // The application's pages, at the origin of its callback: PKCE made in the browser, the
    // hosted page, and back to the callback, whose script gets the tokens and the profile.
    browser.goto(&format!("{}/start", app.origin())).await.expect("start");
    signup_on_page(&browser).await;
    let got = spa_out(&browser).await;
    assert_eq!(got["status"], 200, "{got}");
    let claims =
        verify_id_token(suite.http, got["tokens"]["id_token"].as_str().expect("id_token"), &client.client_id).await;
    assert_eq!((claims["email"].as_str(), claims["nonce"].as_str()), (Some("new.customer@example.com"), Some("n-spa")));
    assert_eq!(got["userinfo"]["sub"], claims["sub"], "{got}");

    // Another origin's script is refused, and can read why.
    browser.goto(&format!("{foreign}/foreign")).await.expect("foreign page");
    let got = spa_out(&browser).await;
    assert_eq!(got["status"], 400, "{got}");
    assert_eq!(got["body"]["error"], "unauthorized_client", "{got}");
    let why = got["body"]["error_description"].as_str().unwrap_or_default();
    assert!(why.contains(&foreign) && why.contains("allowed_origins"), "{why}");

    // Allowed, the same request reaches the grant (whose made-up code is refused).
    let allow = tenant::UpdateClientRequest {
        tenant: TENANT.into(),
        client: Some(tenant::Client {
            client_id: client.client_id.clone(),
            allowed_origins: vec![foreign.clone()],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["allowed_origins".into()] }),
    };
    let updated = admin.clients.update_client(allow).await.expect("allow the origin").into_inner();
    assert_eq!(updated.client.expect("client").allowed_origins, [foreign.as_str()]);
    // The authenticator forgets the client it remembered when the event log says it changed.
    let deadline = tokio::time::Instant::now() + postern_testkit::browser::WAIT;
    loop {
        browser.goto(&format!("{foreign}/foreign")).await.expect("foreign page");
        let got = spa_out(&browser).await;
        if got["body"]["error"] == "invalid_grant" {
            break;
        }
        assert_eq!(got["body"]["error"], "unauthorized_client", "{got}");
        assert!(tokio::time::Instant::now() < deadline, "the allowed origin still refused: {got}");
    }
    browser.close().await.expect("close");
    task.abort();
    suite.stop().await.expect("stop");
}

/// Auth0's own SDK for single-page applications (npm's `@auth0/auth0-spa-js`), unchanged,
/// pointed at the tenant: its redirect login through the hosted page, its silent
/// authentication (`getTokenSilently`: a hidden iframe on `/authorize` with `prompt=none`
/// and `response_mode=web_message`, whose page posts the code back to the application's
/// window), its popup login (the same page, posting to the window that opened the popup),
/// and its logout. Each page writes what the SDK answered into `#out`.
impl SpaApp {
    /// Serves, instead of [`SpaApp::serve`]'s pages, pages that use the SDK for `client_id`
    /// at `domain` (the tenant's base URL, as the SDK's `domain`), with the SDK's browser
    /// build `sdk` inlined in each.
    fn serve_auth0(&mut self, domain: &str, client_id: &str, sdk: String) -> tokio::task::JoinHandle<()> {
        let listener = self.listener.take().expect("served once");
        let constants = format!(
            "const DOMAIN = {}; const CLIENT_ID = {}; const ORIGIN = {};",
            serde_json::Value::from(domain),
            serde_json::Value::from(client_id),
            serde_json::Value::from(self.origin()),
        );
        serve_pages(listener, move |target| {
            let script = match target.split('?').next().unwrap_or_default() {
                "/login" => "await client.loginWithRedirect();",
                "/callback" => AUTH0_SPA_CALLBACK,
                "/silent" => AUTH0_SPA_SILENT,
                // A user's click opens the popup (browsers block popups without one).
                "/popup" => AUTH0_SPA_POPUP,
                "/logout" => "await client.logout({ logoutParams: { returnTo: ORIGIN + '/bye' } });",
                _ => "done({ page: location.pathname });",
            };
            format!(
                "<!doctype html><html><body><pre id=out></pre><script>{sdk}</script><script>{constants}\n{SPA_DONE}\
                 const client = new auth0.Auth0Client({{ domain: DOMAIN, clientId: CLIENT_ID, \
                 cacheLocation: 'memory', authorizationParams: {{ redirect_uri: ORIGIN + '/callback' }} }});\n\
                 (async () => {{ try {{ {script} }} catch (e) {{ \
                 done({{ error: e.error || String(e), description: e.error_description || e.message }}); }} }})();\
                 </script></body></html>"
            )
        })
    }
}

const AUTH0_SPA_CALLBACK: &str = "await client.handleRedirectCallback();
  const claims = await client.getIdTokenClaims();
  done({ sub: claims.sub, email: claims.email, access_token: !!(await client.getTokenSilently()) });";

const AUTH0_SPA_POPUP: &str = "const button = document.createElement('button');
  button.id = 'popup'; button.textContent = 'Log in';
  button.onclick = async () => { try {
    await client.loginWithPopup();
    const claims = await client.getIdTokenClaims();
    done({ sub: claims.sub, email: claims.email });
  } catch (e) { done({ error: e.error || String(e), description: e.error_description || e.message }); } };
  document.body.appendChild(button);";

const AUTH0_SPA_SILENT: &str =
    "const answer = await client.getTokenSilently({ detailedResponse: true, cacheMode: 'off' });
  const claims = await client.getIdTokenClaims();
  done({ sub: claims.sub, email: claims.email, access_token: !!answer.access_token, id_token: answer.id_token });";

#[tokio::test(flavor = "multi_thread")]
async fn auth0s_spa_sdk_logs_in_authenticates_silently_in_an_iframe_and_logs_out() {
    let test = "auth0s_spa_sdk_logs_in_authenticates_silently_in_an_iframe_and_logs_out";
    let Some(node) = postern_testkit::node::Node::find(test) else { return };
    let sdk_path = node.dir().join("node_modules/@auth0/auth0-spa-js/dist/auth0-spa-js.production.js");
    let sdk = std::fs::read_to_string(&sdk_path).expect("the SDK's browser build (npm ci in tests/node)");
    let Some(browser) = Browser::open(test).await else { return };
    let suite = Suite::start().await.expect("suite");
    let mut admin = customers(&suite).await;
    let mut app = SpaApp::bind().await;
    let client = spa(&mut admin, "Fabrikam Customer Portal", &app.origin()).await;
    let task = app.serve_auth0(&format!("http://{}/{TENANT}", suite.http), &client.client_id, sdk);

    // No session yet: silent authentication answers login_required, through the iframe.
    browser.goto(&format!("{}/silent", app.origin())).await.expect("silent");
    let got = spa_out(&browser).await;
    assert_eq!(got["error"], "login_required", "{got}");

    // The SDK's redirect login: the hosted page, and back to its callback with the tokens,
    // whose ID token the SDK has checked (issuer, audience, nonce, times).
    browser.goto(&format!("{}/login", app.origin())).await.expect("login");
    signup_on_page(&browser).await;
    let got = spa_out(&browser).await;
    assert_eq!(
        (got["email"].as_str(), got["access_token"].as_bool()),
        (Some("new.customer@example.com"), Some(true)),
        "{got}"
    );
    let sub = got["sub"].clone();

    // A fresh page (nothing cached): the session answers the iframe without a page.
    browser.goto(&format!("{}/silent", app.origin())).await.expect("silent");
    let got = spa_out(&browser).await;
    assert_eq!((&got["sub"], got["access_token"].as_bool()), (&sub, Some(true)), "{got}");
    let claims = verify_id_token(suite.http, got["id_token"].as_str().expect("id_token"), &client.client_id).await;
    assert_eq!(claims["sub"], sub);

    // Its popup login: the session answers the popup's /authorize, whose page posts the
    // code to the window that opened it.
    browser.goto(&format!("{}/popup", app.origin())).await.expect("popup page");
    browser.click("#popup").await.expect("click");
    let got = spa_out(&browser).await;
    assert_eq!(got["sub"], sub, "{got}");

    // The SDK's logout ends the session: silent authentication fails again.
    browser.goto(&format!("{}/logout", app.origin())).await.expect("logout");
    browser
        .wait_for_url("the logout's return", |u| u.path() == "/bye")
        .await
        .expect("back at the application after logout");
    browser.goto(&format!("{}/silent", app.origin())).await.expect("silent");
    let got = spa_out(&browser).await;
    assert_eq!(got["error"], "login_required", "{got}");
    browser.close().await.expect("close");
    task.abort();
    suite.stop().await.expect("stop");
}

/// Over https the session cookie is `SameSite=None; Secure`, as Auth0's and Keycloak's are:
/// auth0-spa-js on another site (`http://localhost:<port>`, where the tenant is at
/// `https://127.0.0.1:<port>`) logs in by redirect, and its silent authentication in a hidden
/// iframe, a third-party context, then finds the session, in a browser that sends
/// third-party cookies (Chrome's and Edge's default). With a `SameSite=Lax` session cookie
/// the iframe answers `login_required`.
#[tokio::test(flavor = "multi_thread")]
async fn over_https_silent_authentication_finds_the_session_from_another_site() {
    let test = "over_https_silent_authentication_finds_the_session_from_another_site";
    let Some(node) = postern_testkit::node::Node::find(test) else { return };
    let sdk_path = node.dir().join("node_modules/@auth0/auth0-spa-js/dist/auth0-spa-js.production.js");
    let sdk = std::fs::read_to_string(&sdk_path).expect("the SDK's browser build (npm ci in tests/node)");
    // The suite's certificate is issued by the test's own CA, which the browser is told to
    // let pass; and the browser sends third-party cookies, as Chrome and Edge do by default.
    let launch = Launch { args: &["--ignore-certificate-errors"], third_party_cookies: true };
    let Some(browser) = Browser::open_with(test, &launch).await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = postern_testkit::tls::Ca::new(dir.path(), "public");
    let issued = ca.issue("suite");
    let suite = Suite::start_with(|s| {
        s.tls_cert = Some(issued.cert.clone());
        s.tls_key = Some(issued.key.clone());
    })
    .await
    .expect("suite");
    let trust = postern_common::tls::ClientTls::new(Some(&ca.cert), None).expect("the test CA");
    let channel = postern_common::tls::channel(&format!("https://{}", suite.grpc), Some(&trust), None, |e| e)
        .expect("a channel over TLS");
    let mut admin = customers_through(Clients::new(channel, postern_testkit::ADMIN_KEY)).await;
    let mut app = SpaApp::bind_as("localhost").await;
    let client = spa(&mut admin, "Fabrikam Customer Portal", &app.origin()).await;
    let task = app.serve_auth0(&format!("https://{}/{TENANT}", suite.http), &client.client_id, sdk);

    browser.goto(&format!("{}/login", app.origin())).await.expect("login");
    signup_on_page(&browser).await;
    let got = spa_out(&browser).await;
    assert_eq!(got["email"], "new.customer@example.com", "{got}");
    let sub = got["sub"].clone();

    // A fresh page: only the session, through the iframe on the other site, can answer.
    browser.goto(&format!("{}/silent", app.origin())).await.expect("silent");
    let got = spa_out(&browser).await;
    assert_eq!((&got["sub"], got["access_token"].as_bool()), (&sub, Some(true)), "{got}");
    browser.close().await.expect("close");
    task.abort();
    suite.stop().await.expect("stop");
}
