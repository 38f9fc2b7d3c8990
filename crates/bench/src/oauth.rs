//! The token endpoint's cost, in one run on this machine:
//!
//! - `client_credentials` tokens per second at Postern's `POST /<tenant>/oauth/token`
//!   (an RS256 JWT access token for an audience), against the same grant at npm's
//!   `oidc-provider` (JWT access tokens through its resourceIndicators feature, RS256), at
//!   the same concurrency over HTTP/1.1 keep-alive connections; target: at least 2×.
//! - the raw signing rate of the tenant's key algorithm (RS256, 2048 bits, Postern's own
//!   signing code) on every core; target: the endpoint reaches at least 80% of it.
//! - authorization-code logins per second end to end (the hosted page's form post → the
//!   code → its exchange with the PKCE verifier) against the raw Argon2id verify rate;
//!   target: at least 0.85. Each login is a new browser (a cookie jar of its own) on the
//!   load generator's keep-alive connections, as Postern sees browsers behind an ingress.
//!
//! The oidc-provider comparison needs Node.js and the node workspace (`tests/node`,
//! `npm ci`); without them it is skipped with a line saying why.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use postern_authn::tokens::{Algorithm, SigningKey};
use postern_connector_database::password;
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::Suite;
use postern_testkit::node::Node;
use sha2::Digest;

use crate::browser::{Visit, encode_form};
use crate::stats::{Measurement, call, interleaved, measure};

/// An HTTP/1.1 client keeping connections alive, as load generators do.
pub type Http = HttpClient<HttpConnector, Full<Bytes>>;

/// A client with enough idle connections for `concurrency` callers.
pub fn http(concurrency: usize) -> Http {
    HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(concurrency.max(1)).build_http()
}

/// POSTs `form` (already encoded) to `url`: the status and the body.
pub async fn post_form(client: &Http, url: &str, form: String) -> anyhow::Result<(u16, Bytes)> {
    let req = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Whether a token endpoint's answer carries an access token that is a JWT.
pub fn has_jwt_access_token(status: u16, body: &[u8]) -> bool {
    status == 200
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("access_token").and_then(|t| t.as_str()).map(|t| t.split('.').count() == 3))
            .unwrap_or(false)
}

/// The raw RS256 signing rate: Postern's signing code on a fresh 2048-bit key, one signer
/// per core, each signing an access token's claims back to back.
pub async fn raw_signing(seconds: u64) -> anyhow::Result<Measurement> {
    let key = std::sync::Arc::new(SigningKey::generate_async(Algorithm::Rs256, SystemTime::now()).await?);
    let cores = crate::num_cpus();
    let sign = move |w: usize| {
        let key = key.clone();
        async move {
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let claims = serde_json::json!({
                "iss": "http://127.0.0.1:8080/bench-oauth/",
                "sub": "0123456789abcdef0123456789abcdef@clients",
                "aud": "https://api.bench.example/",
                "iat": now,
                "exp": now + 86_400,
                "azp": "0123456789abcdef0123456789abcdef",
                "gty": "client-credentials",
                "jti": format!("{w}-{now}"),
            });
            key.sign(&claims).is_ok()
        }
    };
    Ok(measure(cores, Duration::from_millis(500), Duration::from_secs(seconds), sign).await)
}

/// `client_credentials` at npm's oidc-provider, or why it was skipped.
pub async fn oidc_provider(concurrency: usize, seconds: u64) -> Result<Measurement, String> {
    let node = Node::locate()?;
    let (server, ready) = node
        .serve("op.mjs", &[], &[("NODE_ENV", "production")], Duration::from_secs(60))
        .await
        .map_err(|e| format!("oidc-provider did not start: {e}"))?;
    let field = |k: &str| ready[k].as_str().unwrap_or_default().to_owned();
    let (endpoint, form) = (
        field("token_endpoint"),
        format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&resource={}",
            field("client_id"),
            field("client_secret"),
            urlencode(&field("resource"))
        ),
    );
    let client = http(concurrency);
    // One checked call first: a wrong set-up would otherwise measure errors.
    let (status, body) = post_form(&client, &endpoint, form.clone()).await.map_err(|e| e.to_string())?;
    if !has_jwt_access_token(status, &body) {
        return Err(format!("oidc-provider answered {status}: {}", String::from_utf8_lossy(&body)));
    }
    let call = move |_w: usize| {
        let (client, endpoint, form) = (client.clone(), endpoint.clone(), form.clone());
        async move {
            matches!(post_form(&client, &endpoint, form).await, Ok((status, body)) if has_jwt_access_token(status, &body))
        }
    };
    let m = measure(concurrency, Duration::from_secs(1), Duration::from_secs(seconds), call).await;
    drop(server);
    Ok(m)
}

/// `application/x-www-form-urlencoded` escaping of one value.
pub fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

pub const TENANT: &str = "bench-oauth";
pub const AUDIENCE: &str = "https://api.bench.example/";
const USERS: usize = 32;
const PASSWORD: &str = "Bench-Mark-2026!";
/// Rounds per path of the login comparison: hashing is slow, so more rounds even out the
/// background load.
const ROUNDS: u32 = 12;

/// A suite with a tenant, a machine-to-machine client, and a regular web application whose
/// database connection has [`USERS`] users.
struct Setup {
    suite: Suite,
    m2m: tenant::Client,
    web: tenant::Client,
}

/// Where the application is sent back: nothing listens there; the bench reads the redirect.
const CALLBACK: &str = "http://127.0.0.1:9/callback";

async fn setup() -> anyhow::Result<Setup> {
    let suite = Suite::start_on(&crate::stats::server_runtime(), |_| {}).await?;
    let mut admin = suite.admin().await;
    let (m2m, web) = populate(&mut admin).await?;
    Ok(Setup { suite, m2m, web })
}

/// Fills a fresh suite through `admin`: the tenant, a machine-to-machine client granted the
/// API [`AUDIENCE`] (scope `read:bench`), and a
/// regular web application whose database connection has [`USERS`] users. Answers the two
/// clients (with their secrets).
pub async fn populate(admin: &mut postern_testkit::Clients) -> anyhow::Result<(tenant::Client, tenant::Client)> {
    admin.create_tenant(TENANT).await?;
    let create = |app_type: tenant::AppType, name: &str| tenant::CreateClientRequest {
        tenant: TENANT.into(),
        client: Some(tenant::Client {
            name: name.into(),
            app_type: app_type as i32,
            callbacks: vec![CALLBACK.into()],
            ..Default::default()
        }),
    };
    let client = |r: tonic::Response<tenant::CreateClientResponse>| {
        r.into_inner().client.ok_or_else(|| anyhow::anyhow!("no client in the answer"))
    };
    let m2m = client(admin.clients.create_client(create(tenant::AppType::MachineToMachine, "Worker")).await?)?;
    // The worker gets tokens only for an API it is granted.
    admin.grant_api(TENANT, &m2m.client_id, AUDIENCE, &["read:bench"]).await?;
    let web = client(admin.clients.create_client(create(tenant::AppType::RegularWeb, "Portal")).await?)?;
    let connection = conn::Connection {
        name: "db".into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(conn::DatabaseOptions::default())),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: TENANT.into(), connection: Some(connection) })
        .await?;
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: TENANT.into(),
            connection: "db".into(),
            client_id: web.client_id.clone(),
        })
        .await?;
    for i in 0..USERS {
        admin
            .authn
            .signup(authn::SignupRequest {
                tenant: TENANT.into(),
                client_id: web.client_id.clone(),
                connection: "db".into(),
                email: format!("user{i}@bench.example"),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await?;
    }
    Ok((m2m, web))
}

/// `client_credentials` at Postern's token endpoint.
async fn postern_client_credentials(s: &Setup, concurrency: usize, seconds: u64) -> anyhow::Result<Measurement> {
    let endpoint = format!("http://{}/{TENANT}/oauth/token", s.suite.http);
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&audience={}",
        s.m2m.client_id,
        urlencode(&s.m2m.client_secret),
        urlencode(AUDIENCE)
    );
    let client = http(concurrency);
    let (status, body) = post_form(&client, &endpoint, form.clone()).await?;
    anyhow::ensure!(
        has_jwt_access_token(status, &body),
        "Postern's token endpoint answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let call = move |_w: usize| {
        let (client, endpoint, form) = (client.clone(), endpoint.clone(), form.clone());
        async move {
            matches!(post_form(&client, &endpoint, form).await, Ok((status, body)) if has_jwt_access_token(status, &body))
        }
    };
    Ok(measure(concurrency, Duration::from_secs(1), Duration::from_secs(seconds), call).await)
}

/// One authorization-code login end to end, as a browser and the application's back end
/// do it: `GET /authorize` (PKCE S256), the hosted page's form post, the redirect with the
/// code, and the code's exchange with the verifier for tokens. A fresh cookie jar each time,
/// so that no session skips the password; the requests go over `client`'s keep-alive
/// connections.
pub async fn code_login(
    client: &Http,
    http_addr: std::net::SocketAddr,
    web: &tenant::Client,
    worker: usize,
) -> anyhow::Result<()> {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut authorize = url::Url::parse(&format!("http://{http_addr}/{TENANT}/authorize"))?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &web.client_id)
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("scope", "openid")
        .append_pair("state", &worker.to_string())
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut visit = Visit::new(client);
    let mut page_url = authorize;
    let mut page = visit.send(http::Method::GET, &page_url, None).await?;
    for _ in 0..5 {
        let Some(location) = page.location().filter(|_| (300..400).contains(&page.status)) else { break };
        page_url = page_url.join(location)?;
        page = visit.send(http::Method::GET, &page_url, None).await?;
    }
    let mut form = page
        .forms()
        .into_iter()
        .find(|f| f.name_of("password").is_some() && !f.action.contains("signup"))
        .ok_or_else(|| anyhow::anyhow!("no login form on the hosted page ({})", page.status))?;
    let user = form.name_of("email").or_else(|| form.name_of("text")).unwrap_or("username").to_owned();
    form.set(&user, &format!("user{}@bench.example", worker % USERS)).set("password", PASSWORD);
    anyhow::ensure!(form.method.eq_ignore_ascii_case("post"), "the login form is not a POST");
    let mut answer =
        visit.send(http::Method::POST, &page_url.join(&form.action)?, Some(encode_form(form.fields()))).await?;
    let callback = loop {
        let location = answer.location().ok_or_else(|| anyhow::anyhow!("no redirect ({})", answer.status))?.to_owned();
        if location.starts_with(CALLBACK) {
            break location;
        }
        answer = visit.send(http::Method::GET, &page_url.join(&location)?, None).await?;
    };
    let code = url::Url::parse(&callback)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow::anyhow!("no code in {callback}"))?;
    // The application's back end exchanges the code (on keep-alive connections too).
    let exchange = encode_form([
        ("grant_type", "authorization_code"),
        ("client_id", web.client_id.as_str()),
        ("client_secret", web.client_secret.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", verifier.as_str()),
    ]);
    let (status, body) = post_form(client, &format!("http://{http_addr}/{TENANT}/oauth/token"), exchange).await?;
    anyhow::ensure!(
        status == 200 && String::from_utf8_lossy(&body).contains("id_token"),
        "the exchange answered {status}"
    );
    Ok(())
}

fn ratio(a: &Measurement, b: &Measurement) -> f64 {
    a.throughput / b.throughput.max(1e-9)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Runs the section.
pub async fn run(args: &crate::Args) -> anyhow::Result<()> {
    println!("\n== oauth: client_credentials at the token endpoint vs npm oidc-provider and raw RS256 signing");
    let n = args.concurrency.max(1);
    let s = setup().await?;
    let postern = postern_client_credentials(&s, n, args.seconds).await?;
    let reference = oidc_provider(n, args.seconds).await;
    let raw = raw_signing(args.seconds).await?;
    let tokens = |m: &Measurement| m.line().replace("calls/s", "tokens/s");
    println!("  {n} concurrent callers over HTTP/1.1 keep-alive, {} s each:", args.seconds);
    println!("    Postern /oauth/token (RS256 JWT)      {}   {}", tokens(&postern), postern.cpu_split());
    match &reference {
        Ok(m) => println!("    npm oidc-provider (RS256 JWT)         {}", tokens(m)),
        Err(why) => println!("    npm oidc-provider: SKIPPED: {why}"),
    }
    println!(
        "    raw RS256 signing ({} signers)         {}",
        crate::num_cpus(),
        raw.line().replace("calls/s", "sigs/s  ")
    );
    if let Ok(m) = &reference {
        let r = ratio(&postern, m);
        println!("  Postern = {r:.2}x oidc-provider (target >= 2x: {})", verdict(r >= 2.0));
    }
    let r = ratio(&postern, &raw);
    println!("  Postern = {:.1}% of the raw signing rate (target >= 80%: {})", 100.0 * r, verdict(r >= 0.8));

    println!(
        "\n== oauth: authorization-code logins end to end vs raw Argon2id verify (m={} KiB, t={}, p={})",
        password::ARGON2_M_COST,
        password::ARGON2_T_COST,
        password::ARGON2_P_COST
    );
    let phc = password::hash(PASSWORD)?;
    // The same turns as the server's: one hash per core.
    let hashing = std::sync::Arc::new(password::Hashing::default());
    let verify = move |_w: usize| {
        let (phc, hashing) = (phc.clone(), hashing.clone());
        async move { matches!(hashing.verify(PASSWORD.to_owned(), Some(phc)).await, Ok(true)) }
    };
    // As in the authn section: four callers per core keep every core busy hashing.
    let callers = n.min(4 * crate::num_cpus()).max(1);
    let (addr, web, client) = (s.suite.http, s.web.clone(), http(callers));
    // First one checked login: a broken flow would otherwise measure errors.
    code_login(&client, addr, &s.web, 0).await?;
    let login = move |w: usize| {
        let (web, client) = (web.clone(), client.clone());
        async move { code_login(&client, addr, &web, w).await.is_ok() }
    };
    let seconds = 2 * args.seconds;
    let m = interleaved(callers, Duration::from_secs(seconds), ROUNDS, &[call(verify), call(login)]).await;
    println!("  {callers} concurrent callers, {seconds} s per path ({ROUNDS} rounds, interleaved):");
    println!(
        "    raw Argon2id verify                  {}   {}",
        m[0].line().replace("calls/s", "per s  "),
        m[0].cpu_split()
    );
    println!(
        "    code logins (page → code → tokens)   {}   {}",
        m[1].line().replace("calls/s", "per s  "),
        m[1].cpu_split()
    );
    let r = ratio(&m[1], &m[0]);
    println!("  code logins = {r:.2} of the raw verify rate (target >= 0.85: {})", verdict(r >= 0.85));
    s.suite.stop().await?;
    Ok(())
}
