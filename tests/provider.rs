//! The OpenID provider over HTTP, walked as a browser without JavaScript walks it (the test
//! kit's user agent with a cookie jar, no redirect followed by itself): `/authorize`, the
//! hosted page's signup and login, the code exchanged with PKCE, refresh-token rotation,
//! single sign-on across clients, `prompt` and `max_age`, logout; and the attacks the issue
//! lists: look-alike redirect URIs, missing or wrong PKCE verifiers, code replay,
//! refresh-token reuse, forms without their CSRF token, another tenant's client.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::web::{Agent, Answer};
use postern_testkit::{Clients, Suite};
use sha2::Digest;

const CALLBACK: &str = "https://app.example.com/callback";
const LOGGED_OUT: &str = "https://app.example.com/logged-out";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const STRONG: &str = "Wonder-Land-42!";

/// The `at_hash` of an RS256 ID token for `access_token` (OpenID Connect Core 3.1.3.6).
fn at_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(access_token.as_bytes())[..16])
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

async fn client(admin: &mut Clients, t: &str, app_type: tenant::AppType) -> tenant::Client {
    let c = tenant::Client {
        name: format!("{app_type:?} app"),
        app_type: app_type as i32,
        callbacks: vec![CALLBACK.into()],
        allowed_logout_urls: vec![LOGGED_OUT.into()],
        ..Default::default()
    };
    admin
        .clients
        .create_client(tenant::CreateClientRequest { tenant: t.into(), client: Some(c) })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client")
}

/// A tenant with a single-page app (public) and a regular web app (confidential), both
/// enabled for database connection `users`.
async fn setup(suite: &Suite, t: &str) -> (tenant::Client, tenant::Client) {
    let mut admin = suite.admin().await;
    admin.create_tenant(t).await.expect("tenant");
    let spa = client(&mut admin, t, tenant::AppType::Spa).await;
    let web = client(&mut admin, t, tenant::AppType::RegularWeb).await;
    let connection = conn::Connection {
        name: "users".into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(conn::DatabaseOptions::default())),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: t.into(), connection: Some(connection) })
        .await
        .expect("connection");
    for c in [&spa, &web] {
        enable(&mut admin, t, &c.client_id).await;
    }
    (spa, web)
}

/// Enables the `users` connection of [`setup`] for the client `client_id`.
async fn enable(admin: &mut Clients, t: &str, client_id: &str) {
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: t.into(),
            connection: "users".into(),
            client_id: client_id.into(),
        })
        .await
        .expect("enable");
}

fn base(suite: &Suite) -> String {
    format!("http://{}", suite.http)
}

fn authorize_url(suite: &Suite, t: &str, client_id: &str, extra: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&format!("{}/{t}/authorize", base(suite))).expect("url");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("client_id", client_id)
            .append_pair("redirect_uri", CALLBACK)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid profile email offline_access")
            .append_pair("state", "st/ä&=?")
            .append_pair("nonce", "n-0S6_WzA2Mj");
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    url.into()
}

/// The query of a redirect to the application's callback.
fn callback_query(answer: &Answer) -> std::collections::HashMap<String, String> {
    assert_eq!(answer.status, 303, "{answer:?}");
    let location = answer.location().expect("location");
    assert!(location.starts_with(&format!("{CALLBACK}?")), "{location}");
    url::Url::parse(location).expect("url").query_pairs().into_owned().collect()
}

/// Follows `/authorize` to the login page: answers its URL and the page.
async fn login_page(agent: &mut Agent, suite: &Suite, authorize: &str) -> (String, Answer) {
    let start = agent.get(authorize).await.expect("authorize");
    assert_eq!(start.status, 303, "{start:?}");
    let location = start.location().expect("to the login page");
    assert!(location.contains("/login?tx="), "{location}");
    let csrf = start.headers("set-cookie").into_iter().find(|c| c.starts_with("postern_csrf_")).expect("CSRF cookie");
    assert!(csrf.contains("HttpOnly") && csrf.contains("SameSite=Lax"), "{csrf}");
    let url = format!("{}{location}", base(suite));
    let page = agent.get(&url).await.expect("page");
    assert_eq!(page.status, 200, "{}", page.body);
    for (name, value) in
        [("x-frame-options", "DENY"), ("referrer-policy", "no-referrer"), ("cache-control", "no-store")]
    {
        assert_eq!(page.header(name), Some(value), "{name}");
    }
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("frame-ancestors 'none'")));
    (url, page)
}

async fn token(
    agent: &mut Agent,
    suite: &Suite,
    t: &str,
    fields: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, serde_json::Value, Answer) {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    let auth = basic.map(|(id, secret)| format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))));
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let answer =
        agent.send("POST", &format!("{}/{t}/oauth/token", base(suite)), &headers, Some(&body)).await.expect("token");
    let json = serde_json::from_str(&answer.body).unwrap_or(serde_json::Value::Null);
    (answer.status, json, answer)
}

async fn verify_id_token(suite: &Suite, t: &str, token: &str, audience: &str) -> serde_json::Value {
    let answer = Agent::new().get(&format!("{}/{t}/.well-known/jwks.json", base(suite))).await.expect("jwks");
    let set: JwkSet = serde_json::from_str(&answer.body).expect("JWKS");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = set.find(header.kid.as_deref().expect("kid")).expect("key");
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[format!("{}/{t}/", base(suite))]);
    v.set_audience(&[audience]);
    jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).expect("key"), &v)
        .expect("verifies")
        .claims
}

#[tokio::test]
async fn code_flow_with_pkce_refresh_sso_and_logout() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam";
    let (spa, web) = setup(&suite, t).await;
    let mut agent = Agent::new();
    let c = challenge(VERIFIER);
    let authorize =
        authorize_url(&suite, t, &spa.client_id, &[("code_challenge", &c), ("code_challenge_method", "S256")]);
    let (page_url, page) = login_page(&mut agent, &suite, &authorize).await;
    assert!(page.body.contains("At least 8 characters"), "the password policy is shown");
    let forms = page.forms();
    let mut signup = forms.iter().find(|f| f.action.ends_with("/signup")).expect("signup form").clone();
    assert!(forms.iter().any(|f| f.action.ends_with("/login")), "a login form");

    // A weak password: the page again, the violation next to the field.
    signup.set("email", "alice@example.com").set("password", "short");
    let weak = agent.submit(&page_url, &signup).await.expect("signup");
    assert_eq!(weak.status, 400, "{}", weak.body);
    assert!(weak.body.contains("aria-invalid=\"true\"") && weak.body.contains("at least 8"), "{}", weak.body);

    signup.set("password", STRONG);
    let done = agent.submit(&page_url, &signup).await.expect("signup");
    let session = done.headers("set-cookie").into_iter().find(|c| c.starts_with("postern_session=")).expect("session");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax") && session.contains("Path=/fabrikam/"));
    let q = callback_query(&done);
    assert_eq!(q["state"], "st/ä&=?", "state echoed unchanged");
    let code = q["code"].clone();

    // The code, with the verifier, by the public client alone.
    let exchange = [
        ("grant_type", "authorization_code"),
        ("client_id", spa.client_id.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", VERIFIER),
    ];
    let (status, tokens, answer) = token(&mut agent, &suite, t, &exchange, None).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let claims = verify_id_token(&suite, t, tokens["id_token"].as_str().expect("id_token"), &spa.client_id).await;
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims["auth_time"].as_u64().is_some_and(|a| a > 1_700_000_000), "{claims}");
    assert_eq!(tokens["token_type"], "Bearer");
    // at_hash: the left half of the access token's SHA-256 (RS256), base64url.
    let access_token = tokens["access_token"].as_str().expect("access_token");
    assert_eq!(claims["at_hash"], at_hash(access_token), "{claims}");
    // sid: the SSO session's id, not its cookie.
    let sid = claims["sid"].as_str().expect("sid").to_owned();
    let cookie = session.trim_start_matches("postern_session=").split(';').next().expect("value");
    assert!(sid.len() >= 16 && !cookie.contains(&sid) && !sid.contains(cookie), "{sid} vs the cookie");
    let userinfo = agent
        .send(
            "GET",
            &format!("{}/{t}/userinfo", base(&suite)),
            &[("authorization", &format!("Bearer {}", tokens["access_token"].as_str().expect("at")))],
            None,
        )
        .await
        .expect("userinfo");
    assert_eq!(userinfo.status, 200, "{}", userinfo.body);

    // Rotation: the refresh token works once; its reuse revokes the family.
    let r1 = tokens["refresh_token"].as_str().expect("refresh_token (offline_access)").to_owned();
    let f1 = [("grant_type", "refresh_token"), ("client_id", spa.client_id.as_str()), ("refresh_token", r1.as_str())];
    let (status, rotated, _) = token(&mut agent, &suite, t, &f1, None).await;
    assert_eq!(status, 200, "{rotated}");
    let refreshed = verify_id_token(&suite, t, rotated["id_token"].as_str().expect("id_token"), &spa.client_id).await;
    assert_eq!(refreshed["sid"], sid.as_str(), "a refresh keeps the session's sid");
    assert_eq!(refreshed["at_hash"], at_hash(rotated["access_token"].as_str().expect("at")));
    let r2 = rotated["refresh_token"].as_str().expect("a new refresh token").to_owned();
    assert_ne!(r1, r2);
    let (status, reuse, _) = token(&mut agent, &suite, t, &f1, None).await;
    assert_eq!((status, reuse["error"].as_str()), (400, Some("invalid_grant")), "{reuse}");
    let f2 = [("grant_type", "refresh_token"), ("client_id", spa.client_id.as_str()), ("refresh_token", r2.as_str())];
    let (status, dead, _) = token(&mut agent, &suite, t, &f2, None).await;
    assert_eq!(
        (status, dead["error"].as_str()),
        (400, Some("invalid_grant")),
        "the family went with the reuse: {dead}"
    );

    // Replay of the code: refused.
    let (status, replay, _) = token(&mut agent, &suite, t, &exchange, None).await;
    assert_eq!((status, replay["error"].as_str()), (400, Some("invalid_grant")), "{replay}");

    // Single sign-on: the regular web app gets a code without a page; it authenticates
    // with client_secret_basic and needs no PKCE.
    let sso = agent.get(&authorize_url(&suite, t, &web.client_id, &[])).await.expect("sso");
    let code = callback_query(&sso)["code"].clone();
    let fields = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", CALLBACK)];
    let (status, web_tokens, _) =
        token(&mut agent, &suite, t, &fields, Some((&web.client_id, &web.client_secret))).await;
    assert_eq!(status, 200, "{web_tokens}");
    let web_claims = verify_id_token(&suite, t, web_tokens["id_token"].as_str().expect("id"), &web.client_id).await;
    assert_eq!(web_claims["sub"], claims["sub"]);
    assert_eq!(web_claims["auth_time"], claims["auth_time"], "the session's authentication time");
    assert_eq!(web_claims["sid"], sid.as_str(), "one session, one sid, whichever client");

    // RFC 7009: another client's refresh token is refused (and stays valid); the owner's
    // own revocation works, and an unknown token is no error.
    let web_refresh = web_tokens["refresh_token"].as_str().expect("refresh_token").to_owned();
    let revoke = |client_id: &str, token: &str| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("client_id", client_id), ("token", token), ("token_type_hint", "refresh_token")])
            .finish()
    };
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let revoke_url = format!("{}/{t}/oauth/revoke", base(&suite));
    let refused =
        agent.send("POST", &revoke_url, &form, Some(&revoke(&spa.client_id, &web_refresh))).await.expect("revoke");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("unauthorized_client"), "{}", refused.body);
    let f = [("grant_type", "refresh_token"), ("refresh_token", web_refresh.as_str())];
    let (status, kept, _) = token(&mut agent, &suite, t, &f, Some((&web.client_id, &web.client_secret))).await;
    assert_eq!(status, 200, "the refused revocation revoked nothing: {kept}");
    let web_refresh = kept["refresh_token"].as_str().expect("rotated").to_owned();
    let basic = format!("Basic {}", STANDARD.encode(format!("{}:{}", web.client_id, web.client_secret)));
    let own = [form[0], ("authorization", basic.as_str())];
    let body = url::form_urlencoded::Serializer::new(String::new()).append_pair("token", &web_refresh).finish();
    let revoked = agent.send("POST", &revoke_url, &own, Some(&body)).await.expect("revoke");
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let f = [("grant_type", "refresh_token"), ("refresh_token", web_refresh.as_str())];
    let (status, gone, _) = token(&mut agent, &suite, t, &f, Some((&web.client_id, &web.client_secret))).await;
    assert_eq!((status, gone["error"].as_str()), (400, Some("invalid_grant")), "{gone}");
    let unknown = agent.send("POST", &revoke_url, &own, Some(&body)).await.expect("revoke");
    assert_eq!(unknown.status, 200, "an unknown token: 200 (RFC 7009 2.2)");

    // prompt=none or consent with the session: a code; prompt=login, select_account (alone
    // or with consent) and max_age=0: the page again; none with another value: refused.
    for prompt in ["none", "consent"] {
        let silent = agent.get(&authorize_url(&suite, t, &web.client_id, &[("prompt", prompt)])).await.expect("none");
        assert!(callback_query(&silent).contains_key("code"), "{prompt}: {silent:?}");
    }
    for extra in [("prompt", "login"), ("prompt", "select_account"), ("prompt", "login consent"), ("max_age", "0")] {
        let again = agent.get(&authorize_url(&suite, t, &web.client_id, &[extra])).await.expect("again");
        assert!(again.location().is_some_and(|l| l.contains("/login?tx=")), "{extra:?}: {again:?}");
    }
    let mixed = agent.get(&authorize_url(&suite, t, &web.client_id, &[("prompt", "none login")])).await.expect("mixed");
    let q = callback_query(&mixed);
    assert_eq!((q["error"].as_str(), q["state"].as_str()), ("invalid_request", "st/ä&=?"), "{q:?}");
    assert!(q["error_description"].contains("prompt none cannot be combined"), "{q:?}");

    // Logout to an unregistered URL is refused without ending anything; to a registered one
    // it ends the session.
    let bad = agent
        .get(&format!("{}/{t}/v2/logout?client_id={}&returnTo=https://evil.example/", base(&suite), web.client_id))
        .await
        .expect("logout");
    assert_eq!(bad.status, 400);
    assert!(bad.location().is_none());
    let still = agent.get(&authorize_url(&suite, t, &web.client_id, &[("prompt", "none")])).await.expect("none");
    assert!(callback_query(&still).contains_key("code"), "the session survived a refused logout");
    let out = agent
        .get(&format!("{}/{t}/v2/logout?client_id={}&returnTo={}", base(&suite), web.client_id, LOGGED_OUT))
        .await
        .expect("logout");
    assert_eq!((out.status, out.location()), (303, Some(LOGGED_OUT)), "{out:?}");
    let none = agent.get(&authorize_url(&suite, t, &web.client_id, &[("prompt", "none")])).await.expect("none");
    let q = callback_query(&none);
    assert_eq!(q["error"], "login_required");
    assert_eq!(q["state"], "st/ä&=?");

    // The password form logs the user in again.
    let (page_url, page) = login_page(&mut agent, &suite, &authorize_url(&suite, t, &web.client_id, &[])).await;
    let mut login = page.forms().into_iter().find(|f| f.action.ends_with("/login")).expect("login form");
    login.set("username", "alice@example.com").set("password", "wrong-password");
    let wrong = agent.submit(&page_url, &login).await.expect("wrong");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("wrong email, username or password"), "{}", wrong.body);
    login.set("password", STRONG);
    let back = agent.submit(&page_url, &login).await.expect("login");
    let code = callback_query(&back)["code"].clone();
    let fields = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", CALLBACK)];
    let (status, again, _) = token(&mut agent, &suite, t, &fields, Some((&web.client_id, &web.client_secret))).await;
    assert_eq!(status, 200, "{again}");
    let again = verify_id_token(&suite, t, again["id_token"].as_str().expect("id"), &web.client_id).await;
    assert!(again["sid"].as_str().is_some_and(|s| s != sid), "a new session, a new sid");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn attacks_are_refused() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam";
    let (spa, web) = setup(&suite, t).await;
    let mut admin = suite.admin().await;
    admin.create_tenant("contoso").await.expect("tenant B");
    let c = challenge(VERIFIER);
    let pkce = [("code_challenge", c.as_str()), ("code_challenge_method", "S256")];

    // Unregistered and look-alike redirect URIs: an error page, never a redirect.
    for uri in [
        "https://app.example.com/callback/../admin",
        "https://app.example.com/callback/",
        "https://app.example.com/callbackx",
        "https://app.example.com.evil.example/callback",
        "https://app.example.com@evil.example/callback",
        "http://app.example.com/callback",
        "https://app.example.com:8443/callback",
        "https://evil.example/callback",
    ] {
        let mut url = url::Url::parse(&authorize_url(&suite, t, &web.client_id, &[])).expect("url");
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .into_owned()
            .map(|(k, v)| if k == "redirect_uri" { (k, uri.to_owned()) } else { (k, v) })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        let answer = Agent::new().get(url.as_str()).await.expect("authorize");
        assert_eq!(answer.status, 400, "{uri}: {answer:?}");
        assert!(answer.location().is_none(), "{uri}");
        assert!(answer.body.contains("callback"), "{uri}: {}", answer.body);
    }
    // An unknown client, and a client of tenant A at tenant B: an error page.
    for (tenant_name, client_id) in [(t, "no-such-client"), ("contoso", web.client_id.as_str())] {
        let answer = Agent::new().get(&authorize_url(&suite, tenant_name, client_id, &[])).await.expect("authorize");
        assert_eq!(answer.status, 400, "{tenant_name}");
        assert!(answer.location().is_none());
    }
    // A public client without PKCE: the error goes back to the application.
    let no_pkce = Agent::new().get(&authorize_url(&suite, t, &spa.client_id, &[])).await.expect("authorize");
    let q = callback_query(&no_pkce);
    assert_eq!(q["error"], "invalid_request");
    assert_eq!(q["state"], "st/ä&=?");

    // Forms without their CSRF token, or with another: refused before any check.
    let mut agent = Agent::new();
    let (page_url, page) = login_page(&mut agent, &suite, &authorize_url(&suite, t, &spa.client_id, &pkce)).await;
    let mut signup = page.forms().into_iter().find(|f| f.action.ends_with("/signup")).expect("signup");
    signup.set("email", "bob@example.com").set("password", STRONG);
    let mut no_csrf = signup.clone();
    no_csrf.remove("csrf");
    let answer = agent.submit(&page_url, &no_csrf).await.expect("post");
    assert_eq!(answer.status, 403, "{}", answer.body);
    let mut other = signup.clone();
    other.set("csrf", "forged-token-of-another-transaction-000000");
    assert_eq!(agent.submit(&page_url, &other).await.expect("post").status, 403);
    // The same form from another browser (no cookie): refused.
    assert_eq!(Agent::new().submit(&page_url, &signup).await.expect("post").status, 403);
    let done = agent.submit(&page_url, &signup).await.expect("signup");
    let code = callback_query(&done)["code"].clone();
    // A page is used once: the same form again, or the login form of one page sent twice at
    // once (two tabs), logs in once; the other is refused and gets neither session nor code.
    let resent = agent.submit(&page_url, &signup).await.expect("post");
    assert!((400..500).contains(&resent.status) && resent.location().is_none(), "{resent:?}");
    let forced = authorize_url(&suite, t, &spa.client_id, &[pkce[0], pkce[1], ("prompt", "login")]);
    let (page_url, page) = login_page(&mut agent, &suite, &forced).await;
    let mut login = page.forms().into_iter().find(|f| f.action.ends_with("/login")).expect("login form");
    login.set("username", "bob@example.com").set("password", STRONG);
    let (mut tab1, mut tab2) = (agent.clone(), agent.clone());
    let (one, two) = tokio::join!(tab1.submit(&page_url, &login), tab2.submit(&page_url, &login));
    let answers = [one.expect("tab 1"), two.expect("tab 2")];
    let logged_in: Vec<&Answer> = answers.iter().filter(|a| a.status == 303).collect();
    assert_eq!(logged_in.len(), 1, "one of two tabs logs in: {answers:?}");
    let refused = answers.iter().find(|a| a.status != 303).expect("the other tab");
    assert!((400..500).contains(&refused.status), "{refused:?}");
    assert!(refused.headers("set-cookie").iter().all(|c| !c.starts_with("postern_session")), "{refused:?}");

    // A wrong verifier, or none, fails; the code is then spent.
    let exchange = |verifier: &'static str| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("client_id", spa.client_id.clone()),
            ("code", code.clone()),
            ("redirect_uri", CALLBACK.to_owned()),
            ("code_verifier", verifier.to_owned()),
        ]
    };
    let fields = exchange("");
    let f: Vec<(&str, &str)> = fields.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let (status, body, _) = token(&mut agent, &suite, t, &f, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let fields = exchange(VERIFIER);
    let f: Vec<(&str, &str)> = fields.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let (status, body, _) = token(&mut agent, &suite, t, &f, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "single use, even after a failure: {body}"
    );

    let again = agent.get(&authorize_url(&suite, t, &spa.client_id, &pkce)).await.expect("sso");
    let code = callback_query(&again)["code"].clone();
    let wrong_verifier = "x".repeat(43);
    let fields = [
        ("grant_type", "authorization_code"),
        ("client_id", spa.client_id.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", wrong_verifier.as_str()),
    ];
    let (status, body, _) = token(&mut agent, &suite, t, &fields, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    // form_post: a page that posts the code to the callback.
    let posted = agent
        .get(&authorize_url(&suite, t, &spa.client_id, &[pkce[0], pkce[1], ("response_mode", "form_post")]))
        .await
        .expect("form_post");
    assert_eq!(posted.status, 200, "{posted:?}");
    let form = posted.forms().into_iter().next().expect("form");
    assert_eq!(form.action, CALLBACK);
    assert!(form.value("code").is_some_and(|c| !c.is_empty()));
    assert_eq!(form.value("state"), Some("st/ä&=?"));

    // web_message (auth0-spa-js's silent authentication): a page posting the answer to its
    // parent or opener at the callback's origin, which alone may frame it.
    let web_message = |prompt: &'static str| {
        authorize_url(
            &suite,
            t,
            &spa.client_id,
            &[pkce[0], pkce[1], ("response_mode", "web_message"), ("prompt", prompt)],
        )
    };
    let silent = agent.get(&web_message("none")).await.expect("web_message");
    assert_eq!(silent.status, 200, "{silent:?}");
    let csp = silent.header("content-security-policy").expect("CSP");
    assert!(csp.contains("frame-ancestors https://app.example.com;"), "{csp}");
    assert!(silent.header("x-frame-options").is_none(), "{silent:?}");
    let posted = |answer: &Answer| -> (serde_json::Value, String) {
        let element = postern_testkit::web::element_by_id(&answer.body, "response").expect("the answer's element");
        let message = serde_json::from_str(&element["data-message"]).expect("JSON");
        (message, element["data-origin"].clone())
    };
    let (message, origin) = posted(&silent);
    assert_eq!(origin, "https://app.example.com");
    assert_eq!(message["type"], "authorization_response", "{message}");
    assert!(message["response"]["code"].as_str().is_some_and(|c| !c.is_empty()), "{message}");
    assert_eq!(message["response"]["state"], "st/ä&=?", "{message}");
    // Without a session, prompt=none's login_required goes the same way.
    let (message, _) = posted(&Agent::new().get(&web_message("none")).await.expect("no session"));
    assert_eq!(message["response"]["error"], "login_required", "{message}");
    assert_eq!(message["response"]["state"], "st/ä&=?", "{message}");
    // Any other page stays unframeable.
    login_page(&mut Agent::new(), &suite, &web_message("login")).await;

    // The token endpoint: wrong secrets are 401 with WWW-Authenticate; a client of tenant A
    // is unknown at tenant B.
    let fields = [("grant_type", "client_credentials"), ("audience", "https://api")];
    let (status, body, answer) = token(&mut agent, &suite, t, &fields, Some((&web.client_id, "wrong"))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    assert!(answer.header("www-authenticate").is_some_and(|h| h.starts_with("Basic")));
    let (status, body, _) =
        token(&mut agent, &suite, "contoso", &fields, Some((&web.client_id, &web.client_secret))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let (status, body, _) = token(&mut agent, &suite, t, &fields, Some((&web.client_id, &web.client_secret))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")), "not a machine-to-machine client");
    let m2m = client(&mut admin, t, tenant::AppType::MachineToMachine).await;
    admin.grant_api(t, &m2m.client_id, "https://api", &[]).await.expect("grant");
    let post = [
        ("grant_type", "client_credentials"),
        ("audience", "https://api"),
        ("client_id", m2m.client_id.as_str()),
        ("client_secret", m2m.client_secret.as_str()),
    ];
    let (status, body, _) = token(&mut agent, &suite, t, &post, None).await;
    assert_eq!(status, 200, "client_secret_post: {body}");
    assert!(body.get("id_token").is_none() && body.get("refresh_token").is_none());

    // A JSON body, as Auth0 also takes (its machine-to-machine example sends this one).
    let endpoint = format!("http://{}/{t}/oauth/token", suite.http);
    let json = serde_json::json!({
        "client_id": m2m.client_id, "client_secret": m2m.client_secret,
        "audience": "https://api", "grant_type": "client_credentials",
    });
    let send = |content_type: &'static str, body: String| {
        let endpoint = endpoint.clone();
        async move {
            let answer = Agent::new()
                .send("POST", &endpoint, &[("content-type", content_type)], Some(&body))
                .await
                .expect("token endpoint");
            let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
            (answer.status, json, answer.body)
        }
    };
    let (status, body, raw) = send("application/json", json.to_string()).await;
    assert_eq!(status, 200, "{raw}");
    assert!(body["access_token"].as_str().is_some_and(|a| a.split('.').count() == 3), "{raw}");
    // Anything else is an RFC 6749 error, as JSON, naming what is taken.
    let (status, body, raw) = send("application/xml", "<grant_type/>".into()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{raw}");
    assert!(raw.contains("application/json"), "{raw}");
    let nested = serde_json::json!({ "grant_type": "client_credentials", "audience": ["https://api"] });
    let (status, body, raw) = send("application/json", nested.to_string()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{raw}");
    assert!(raw.contains("audience"), "{raw}");
    let (status, body, raw) = send("application/json", "{not json".into()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{raw}");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn discovery_lists_only_what_is_served() {
    let suite = Suite::start().await.expect("suite");
    setup(&suite, "fabrikam").await;
    let mut agent = Agent::new();
    let doc = agent.get(&format!("{}/fabrikam/.well-known/openid-configuration", base(&suite))).await.expect("doc");
    let doc: serde_json::Value = serde_json::from_str(&doc.body).expect("json");
    assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(doc["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    for (key, method) in [
        ("authorization_endpoint", "GET"),
        ("token_endpoint", "POST"),
        ("revocation_endpoint", "POST"),
        ("end_session_endpoint", "GET"),
        ("userinfo_endpoint", "GET"),
        ("jwks_uri", "GET"),
    ] {
        let url = doc[key].as_str().unwrap_or_else(|| panic!("{key}"));
        let answer = agent
            .send(
                method,
                url,
                &[("content-type", "application/x-www-form-urlencoded")],
                (method == "POST").then_some(""),
            )
            .await
            .expect("endpoint");
        assert_ne!(answer.status, 404, "{key} {url}");
        assert_ne!(answer.status, 405, "{key} {url}");
    }
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn home_realm_discovery_names_the_organization() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam";
    let (_, web) = setup(&suite, t).await;
    let mut admin = suite.admin().await;
    let workspace = conn::Connection {
        name: "fabrikam-workspace".into(),
        display_name: "Fabrikam Workspace".into(),
        strategy: "google-apps".into(),
        options: Some(conn::connection::Options::GoogleApps(conn::GoogleAppsOptions {
            domain: "fabrikam.example".into(),
            client_id: "gid".into(),
            client_secret: "gsecret".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: t.into(), connection: Some(workspace) })
        .await
        .expect("connection");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: t.into(),
            connection: "fabrikam-workspace".into(),
            client_id: web.client_id.clone(),
        })
        .await
        .expect("enable");

    let mut agent = Agent::new();
    let (page_url, page) = login_page(&mut agent, &suite, &authorize_url(&suite, t, &web.client_id, &[])).await;
    assert!(
        page.forms()
            .iter()
            .any(|f| f.action.ends_with("/login/upstream") && f.value("connection") == Some("fabrikam-workspace")),
        "a button: {}",
        page.body
    );
    let mut hrd = page.forms().into_iter().find(|f| f.has("email") && !f.has("password")).expect("the email box");
    hrd.set("email", "bob@fabrikam.example");
    let found = agent.submit(&page_url, &hrd).await.expect("discover");
    assert_eq!(found.status, 200, "{}", found.body);
    assert!(found.body.contains("bob@fabrikam.example logs in with Fabrikam Workspace"), "{}", found.body);
    hrd.set("email", "carol@elsewhere.example");
    let none = agent.submit(&page_url, &hrd).await.expect("discover");
    assert!(none.body.contains("No organization logs in carol@elsewhere.example"), "{}", none.body);
    let login =
        none.forms().into_iter().find(|f| f.action.ends_with("/login") && f.has("password")).expect("login form");
    assert_eq!(login.value("username"), Some("carol@elsewhere.example"), "the email fills the login form");
    suite.stop().await.expect("stop");
}

/// `url` with its query parameter `key` set to `value` (replacing any).
fn with_param(url: &str, key: &str, value: &str) -> String {
    let mut url = url::Url::parse(url).expect("url");
    let kept: Vec<(String, String)> = url.query_pairs().into_owned().filter(|(k, _)| k != key).collect();
    url.query_pairs_mut().clear().extend_pairs(kept).append_pair(key, value);
    url.into()
}

/// The claims of a JWT access token, its signature checked against the tenant's keys.
async fn access_claims(suite: &Suite, t: &str, tokens: &serde_json::Value, api: &str) -> serde_json::Value {
    verify_id_token(suite, t, tokens["access_token"].as_str().expect("access_token"), api).await
}

/// Auth0's rule for user logins with an `audience`: it must be one of the tenant's APIs
/// ("Service not found" otherwise, back to the application as `access_denied`); the access
/// token carries the scopes asked that are OpenID Connect's or the API's; every issue
/// (code, refresh) checks the API as it is now.
#[tokio::test]
async fn the_audience_must_be_one_of_the_tenants_apis() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam";
    let (_spa, web) = setup(&suite, t).await;
    let mut admin = suite.admin().await;
    admin
        .authn
        .signup(postern_proto::authn::v1::SignupRequest {
            tenant: t.into(),
            client_id: web.client_id.clone(),
            connection: "users".into(),
            email: "alice@example.com".into(),
            password: STRONG.into(),
            ..Default::default()
        })
        .await
        .expect("signup");
    let api = "https://api.fabrikam.example/";
    let mut agent = Agent::new();
    let authorize = with_param(
        &authorize_url(&suite, t, &web.client_id, &[("audience", api)]),
        "scope",
        "openid email offline_access read:timesheets write:payroll",
    );

    // No such API: straight back to the application, no page, no session.
    let q = callback_query(&agent.get(&authorize).await.expect("authorize"));
    assert_eq!(q["error"], "access_denied", "{q:?}");
    assert!(q["error_description"].starts_with(&format!("Service not found: {api}")), "{q:?}");
    assert_eq!(q["state"], "st/ä&=?");
    assert!(!q.contains_key("code"));

    // The API created: the page, then a JWT for it with the scopes it defines.
    let mut scopes = vec![tenant::ResourceServerScope { value: "read:timesheets".into(), ..Default::default() }];
    let resource_server = |scopes: &[tenant::ResourceServerScope]| tenant::ResourceServer {
        identifier: api.into(),
        name: "Fabrikam API".into(),
        scopes: scopes.to_vec(),
        ..Default::default()
    };
    admin
        .apis
        .create_resource_server(tenant::CreateResourceServerRequest {
            tenant: t.into(),
            resource_server: Some(resource_server(&scopes)),
        })
        .await
        .expect("API");
    let (page_url, page) = login_page(&mut agent, &suite, &authorize).await;
    let mut login = page.forms().into_iter().find(|f| f.action.ends_with("/login")).expect("login form");
    login.set("username", "alice@example.com").set("password", STRONG);
    let code = callback_query(&agent.submit(&page_url, &login).await.expect("login"))["code"].clone();
    let (status, tokens) = exchange(&mut agent, &suite, t, &web, &code).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["scope"], "openid email offline_access read:timesheets", "{tokens}");
    let claims = access_claims(&suite, t, &tokens, api).await;
    assert_eq!(claims["aud"], serde_json::json!([api, format!("{}/{t}/userinfo", base(&suite))]));
    assert_eq!(claims["scope"], "openid email offline_access read:timesheets");

    // The API's scopes change: a refresh gets what it defines now (once the authenticator
    // hears of it through the tenant event log).
    scopes[0].value = "write:payroll".into();
    admin
        .apis
        .update_resource_server(tenant::UpdateResourceServerRequest {
            tenant: t.into(),
            resource_server: Some(resource_server(&scopes)),
            update_mask: Some(prost_types::FieldMask { paths: vec!["scopes".into()] }),
        })
        .await
        .expect("update");
    let mut refresh_token = tokens["refresh_token"].as_str().expect("refresh_token").to_owned();
    // Polled until the tenant event log has told the authenticator (milliseconds), with a
    // deadline; each refresh rotates the token.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, rotated) = refresh(&mut agent, &suite, t, &web, &refresh_token).await;
        assert_eq!(status, 200, "{rotated}");
        refresh_token = rotated["refresh_token"].as_str().expect("rotated").to_owned();
        if rotated["scope"] == "openid email offline_access write:payroll" {
            assert_eq!(access_claims(&suite, t, &rotated, api).await["scope"], rotated["scope"]);
            break;
        }
        assert_eq!(rotated["scope"], "openid email offline_access read:timesheets", "{rotated}");
        assert!(std::time::Instant::now() < deadline, "the API's new scopes not in force within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The API deleted: its refresh tokens get no more tokens for it, and /authorize sends
    // the application back again.
    admin
        .apis
        .delete_resource_server(tenant::DeleteResourceServerRequest { tenant: t.into(), identifier: api.into() })
        .await
        .expect("delete");
    loop {
        let (status, answer) = refresh(&mut agent, &suite, t, &web, &refresh_token).await;
        if status != 200 {
            assert_eq!((status, answer["error"].as_str()), (403, Some("access_denied")), "{answer}");
            assert!(answer["error_description"].as_str().is_some_and(|d| d.starts_with("Service not found")));
            break;
        }
        refresh_token = answer["refresh_token"].as_str().expect("rotated").to_owned();
        assert!(std::time::Instant::now() < deadline, "a deleted API still served within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = callback_query(&agent.get(&authorize).await.expect("authorize"));
    assert_eq!(again["error"], "access_denied", "{again:?}");
    suite.stop().await.expect("stop");
}

/// The tokens of a code, exchanged by the regular web application.
async fn exchange(
    agent: &mut Agent,
    suite: &Suite,
    t: &str,
    web: &tenant::Client,
    code: &str,
) -> (u16, serde_json::Value) {
    let fields = [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", CALLBACK)];
    let (status, body, _) = token(agent, suite, t, &fields, Some((&web.client_id, &web.client_secret))).await;
    (status, body)
}

/// A refresh token's rotation by the regular web application.
async fn refresh(agent: &mut Agent, suite: &Suite, t: &str, web: &tenant::Client, r: &str) -> (u16, serde_json::Value) {
    let fields = [("grant_type", "refresh_token"), ("refresh_token", r)];
    let (status, body, _) = token(agent, suite, t, &fields, Some((&web.client_id, &web.client_secret))).await;
    (status, body)
}

/// A code for the regular web application without a page (`prompt=none`), or the error.
async fn silent(agent: &mut Agent, suite: &Suite, t: &str, web: &tenant::Client) -> Result<String, String> {
    let answer = agent.get(&authorize_url(suite, t, &web.client_id, &[("prompt", "none")])).await.expect("authorize");
    let q = callback_query(&answer);
    q.get("code").cloned().ok_or_else(|| q["error"].clone())
}

/// Logs alice in on the hosted page: the code.
async fn password_login(agent: &mut Agent, suite: &Suite, t: &str, web: &tenant::Client) -> String {
    let (page_url, page) = login_page(agent, suite, &authorize_url(suite, t, &web.client_id, &[])).await;
    let mut login = page.forms().into_iter().find(|f| f.action.ends_with("/login")).expect("login form");
    login.set("username", "alice@example.com").set("password", STRONG);
    let done = agent.submit(&page_url, &login).await.expect("login");
    callback_query(&done)["code"].clone()
}

/// Every expiry of the provider, end to end on a clock the test moves (`Settings::clock`):
/// the login transaction (10 minutes), the code (60 seconds), the SSO session (3 days
/// idle, 7 days at most) and refresh tokens (15 days idle, 30 days at most), each just
/// before and at its end.
#[tokio::test]
async fn expiries_follow_the_clock() {
    use std::time::Duration;
    const SEC: Duration = Duration::from_secs(1);
    const DAY: Duration = Duration::from_secs(86_400);
    let clock = postern_common::time::Clock::manual(postern_common::time::now_micros());
    let suite = Suite::start_with(|s| s.clock = Some(clock.clone())).await.expect("suite");
    let t = "fabrikam";
    let (_, web) = setup(&suite, t).await;
    let mut agent = Agent::new();

    // The login transaction: the page works until its tenth minute, not at it.
    let (page_url, page) = login_page(&mut agent, &suite, &authorize_url(&suite, t, &web.client_id, &[])).await;
    let mut signup = page.forms().into_iter().find(|f| f.action.ends_with("/signup")).expect("signup form");
    signup.set("email", "alice@example.com").set("password", STRONG);
    clock.advance(600 * SEC - SEC);
    assert_eq!(agent.get(&page_url).await.expect("page").status, 200, "still open at 9:59");
    clock.advance(SEC);
    let late = agent.submit(&page_url, &signup).await.expect("signup");
    assert!(late.location().is_none() && late.body.contains("expired"), "{late:?}");
    let (page_url, page) = login_page(&mut agent, &suite, &authorize_url(&suite, t, &web.client_id, &[])).await;
    let mut signup = page.forms().into_iter().find(|f| f.action.ends_with("/signup")).expect("signup form");
    signup.set("email", "alice@example.com").set("password", STRONG);
    let done = agent.submit(&page_url, &signup).await.expect("signup");
    let first = callback_query(&done)["code"].clone();

    // Codes: good for 59 seconds, not 60.
    let (second, third) = (silent(&mut agent, &suite, t, &web).await, silent(&mut agent, &suite, t, &web).await);
    let (second, third) = (second.expect("SSO"), third.expect("SSO"));
    clock.advance(59 * SEC);
    let (status, r) = exchange(&mut agent, &suite, t, &web, &second).await;
    assert_eq!(status, 200, "at 59 s: {r}");
    let (status, q) = exchange(&mut agent, &suite, t, &web, &third).await;
    assert_eq!(status, 200, "at 59 s: {q}");
    clock.advance(SEC);
    let (status, late) = exchange(&mut agent, &suite, t, &web, &first).await;
    assert_eq!((status, late["error"].as_str()), (400, Some("invalid_grant")), "at 60 s: {late}");

    // Refresh tokens: 15 days without use, 30 days for the family whatever its use.
    let (r, q) =
        (r["refresh_token"].as_str().expect("r").to_owned(), q["refresh_token"].as_str().expect("q").to_owned());
    // They were issued a second before the clock's present (the code's 60th second).
    clock.advance(15 * DAY - 2 * SEC);
    let (status, r) = refresh(&mut agent, &suite, t, &web, &r).await;
    assert_eq!(status, 200, "unused for 15 days less a second: {r}");
    clock.advance(SEC);
    let (status, idle) = refresh(&mut agent, &suite, t, &web, &q).await;
    assert_eq!((status, idle["error"].as_str()), (400, Some("invalid_grant")), "unused for 15 days: {idle}");
    clock.advance(15 * DAY - 2 * SEC);
    let (status, r) = refresh(&mut agent, &suite, t, &web, r["refresh_token"].as_str().expect("rotated")).await;
    assert_eq!(status, 200, "{r}");
    clock.advance(SEC);
    let (status, r) = refresh(&mut agent, &suite, t, &web, r["refresh_token"].as_str().expect("rotated")).await;
    assert_eq!(status, 200, "the family's last second: {r}");
    clock.advance(SEC);
    let (status, ended) = refresh(&mut agent, &suite, t, &web, r["refresh_token"].as_str().expect("rotated")).await;
    assert_eq!((status, ended["error"].as_str()), (400, Some("invalid_grant")), "30 days at most: {ended}");

    // The SSO session: each use keeps it 3 more days, never past its 7th.
    assert_eq!(silent(&mut agent, &suite, t, &web).await, Err("login_required".into()), "long idle");
    let code = password_login(&mut agent, &suite, t, &web).await;
    assert_eq!(exchange(&mut agent, &suite, t, &web, &code).await.0, 200);
    for _ in 0..2 {
        clock.advance(3 * DAY - SEC);
        assert!(silent(&mut agent, &suite, t, &web).await.is_ok(), "used within 3 days");
    }
    clock.advance(DAY + SEC);
    assert!(silent(&mut agent, &suite, t, &web).await.is_ok(), "the 7th day's last second");
    clock.advance(SEC);
    assert_eq!(silent(&mut agent, &suite, t, &web).await, Err("login_required".into()), "7 days at most");
    password_login(&mut agent, &suite, t, &web).await;
    clock.advance(3 * DAY);
    assert_eq!(silent(&mut agent, &suite, t, &web).await, Err("login_required".into()), "3 days idle");
    suite.stop().await.expect("stop");
}

/// The tenant's logo: an https URL only, checked by the tenant service (the field named in
/// the answer), shown on the hosted page, and removed by naming it with no value.
#[tokio::test]
async fn the_tenant_logo_is_shown_on_the_hosted_page() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam";
    let (_, web) = setup(&suite, t).await;
    let mut admin = suite.admin().await;
    let update = |logo: &str| tenant::UpdateTenantRequest {
        tenant: Some(tenant::Tenant { name: t.into(), logo_url: logo.into(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["logo_url".into()] }),
    };
    for bad in [
        "http://cdn.fabrikam.example/logo.png",
        "javascript:alert(1)",
        "data:image/svg+xml,<svg/>",
        "https://user:pw@cdn.fabrikam.example/logo.png",
        "/logo.png",
    ] {
        let err = admin.tenants.update_tenant(update(bad)).await.expect_err(bad);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("tenant.logo_url"), "{bad}: {}", err.message());
        assert!(!bad.starts_with("http:") || err.message().contains("only https"), "{}", err.message());
    }
    let logo = "https://cdn.fabrikam.example/logo.png?v=\"2\"";
    let updated = admin.tenants.update_tenant(update(logo)).await.expect("https logo").into_inner();
    assert_eq!(updated.tenant.expect("tenant").logo_url, logo);

    let mut agent = Agent::new();
    let (_, page) = login_page(&mut agent, &suite, &authorize_url(&suite, t, &web.client_id, &[])).await;
    assert!(
        page.body.contains(
            "<img class=\"logo\" src=\"https:&#x2f;&#x2f;cdn.fabrikam.example&#x2f;logo.png?v=&quot;2&quot;\""
        ) || page.body.contains("<img class=\"logo\" src=\"https://cdn.fabrikam.example/logo.png?v=&quot;2&quot;\""),
        "the logo, escaped: {}",
        page.body
    );

    // Named with no value, the logo goes (the authenticator remembers the tenant's branding
    // until the tenant event log says it changed: milliseconds); a tenant created with one
    // keeps it.
    admin.tenants.update_tenant(update("")).await.expect("removed");
    postern_testkit::eventually("the page without the logo", || {
        let (mut agent, authorize) = (agent.clone(), authorize_url(&suite, t, &web.client_id, &[]));
        let suite = &suite;
        async move { !login_page(&mut agent, suite, &authorize).await.1.body.contains("class=\"logo\"") }
    })
    .await;
    let created = admin
        .tenants
        .create_tenant(tenant::CreateTenantRequest {
            tenant: Some(tenant::Tenant {
                name: "contoso".into(),
                logo_url: "https://contoso.example/logo.svg".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("created with a logo")
        .into_inner();
    assert_eq!(created.tenant.expect("tenant").logo_url, "https://contoso.example/logo.svg");
    let err = admin
        .tenants
        .create_tenant(tenant::CreateTenantRequest {
            tenant: Some(tenant::Tenant {
                name: "woodgrove".into(),
                logo_url: "http://x".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("http logo");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    suite.stop().await.expect("stop");
}

/// Every token request is audited with the user its grant names (the code's, the refresh
/// token's), whether tokens were issued or not: a replayed code names its user too.
#[tokio::test]
async fn token_requests_are_audited_with_their_user() {
    use postern_proto::authn::v1 as authn;
    use tenant::{AuditEventType, AuditOutcome};

    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam";
    let (_spa, web) = setup(&suite, t).await;
    let mut admin = suite.admin().await;
    let alice = admin
        .authn
        .signup(authn::SignupRequest {
            tenant: t.into(),
            client_id: web.client_id.clone(),
            connection: "users".into(),
            email: "alice@example.com".into(),
            password: STRONG.into(),
            ..Default::default()
        })
        .await
        .expect("signup")
        .into_inner()
        .user
        .expect("user");
    let mut agent = Agent::new();
    let code = password_login(&mut agent, &suite, t, &web).await;
    let (status, tokens) = exchange(&mut agent, &suite, t, &web, &code).await;
    assert_eq!(status, 200, "{tokens}");
    let (status, refreshed) = refresh(&mut agent, &suite, t, &web, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{refreshed}");
    let (status, _) = exchange(&mut agent, &suite, t, &web, &code).await;
    assert_eq!(status, 400, "a replayed code");
    let (status, _) = exchange(&mut agent, &suite, t, &web, "no-such-code").await;
    assert_eq!(status, 400, "an unknown code");

    // The four requests, as the log records them (watched until all are there).
    let mut stream = admin
        .audit
        .watch_audit_events(tenant::WatchAuditEventsRequest { tenant: t.into(), ..Default::default() })
        .await
        .expect("watch")
        .into_inner();
    let mut exchanges = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while exchanges.len() < 4 {
            let event = stream.message().await.expect("event").expect("the stream stays open").event.unwrap();
            if event.r#type == AuditEventType::TokenExchange as i32 {
                exchanges.push(event);
            }
        }
    })
    .await
    .expect("four token requests in the log within 20 s");
    let seen: Vec<(&str, i32, &str)> = exchanges
        .iter()
        .map(|e| (e.details.get("grant_type").map_or("", String::as_str), e.outcome, e.user_id.as_str()))
        .collect();
    let (ok, failed) = (AuditOutcome::Success as i32, AuditOutcome::Failure as i32);
    let user = alice.user_id.as_str();
    assert_eq!(
        seen,
        [
            ("authorization_code", ok, user),
            ("refresh_token", ok, user),
            ("authorization_code", failed, user),
            ("authorization_code", failed, ""),
        ],
        "{exchanges:#?}"
    );
    assert!(exchanges.iter().all(|e| e.client_id == web.client_id));
    suite.stop().await.expect("stop");
}

/// A loopback receiver of back-channel logout tokens: each POST to `/<who>` hands the test
/// `who`, the content type and the body; it answers 200.
struct LogoutReceiver {
    addr: std::net::SocketAddr,
    received: tokio::sync::mpsc::UnboundedReceiver<(String, String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl LogoutReceiver {
    async fn start() -> Self {
        use axum::extract::Path;
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/{who}",
            axum::routing::post(move |Path(who): Path<String>, headers: axum::http::HeaderMap, body: String| {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let _ = tx.send((who, kind, body));
                async { axum::http::StatusCode::OK }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, received, task }
    }

    fn url(&self, who: &str) -> String {
        format!("http://{}/{who}", self.addr)
    }

    /// The next delivery: who it went to, and its logout token.
    async fn next(&mut self) -> (String, String) {
        let (who, kind, body) = tokio::time::timeout(std::time::Duration::from_secs(30), self.received.recv())
            .await
            .expect("a logout token within 30 s")
            .expect("the receiver runs");
        assert_eq!(kind, "application/x-www-form-urlencoded", "to {who}");
        let token = url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no logout_token in {body:?}"));
        (who, token)
    }
}

/// OpenID Connect Back-Channel Logout (Auth0's and Keycloak's): a logout sends each client
/// that got a code in the session, and has a back-channel logout URI, a logout token signed
/// by the tenant's key (`typ: logout+jwt`) naming the user and the session's `sid` (the
/// `sid` of its ID tokens); a client with a URI that got no code in the session, and one in
/// the session without a URI, are sent nothing. Deleting the user tells the clients of its
/// sessions the same way. A URI that is not an http(s) URL is refused.
#[tokio::test]
async fn a_logout_posts_a_logout_token_to_each_client_of_the_session() {
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam";
    let (spa, web) = setup(&suite, t).await;
    let mut receiver = LogoutReceiver::start().await;
    let mut admin = suite.admin().await;

    // The contract: a URI set by update (masked), another at creation; a bad one refused.
    let update = tenant::UpdateClientRequest {
        tenant: t.into(),
        client: Some(tenant::Client {
            client_id: web.client_id.clone(),
            backchannel_logout_uri: receiver.url("web"),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["backchannel_logout_uri".into()] }),
    };
    let updated = admin.clients.update_client(update).await.expect("update").into_inner().client.expect("client");
    assert_eq!(updated.backchannel_logout_uri, receiver.url("web"));
    let with_uri = |name: &str, uri: String| tenant::Client {
        name: name.into(),
        app_type: tenant::AppType::RegularWeb as i32,
        callbacks: vec![CALLBACK.into()],
        backchannel_logout_uri: uri,
        ..Default::default()
    };
    let bad = admin
        .clients
        .create_client(tenant::CreateClientRequest {
            tenant: t.into(),
            client: Some(with_uri("Bad", "ftp://app.example.com/logout".into())),
        })
        .await
        .expect_err("an ftp URI");
    assert_eq!(postern_testkit::violated_fields(&bad), ["client.backchannel_logout_uri"], "{bad:?}");
    let mut others = Vec::new();
    for name in ["other", "outsider"] {
        let c = admin
            .clients
            .create_client(tenant::CreateClientRequest {
                tenant: t.into(),
                client: Some(with_uri(name, receiver.url(name))),
            })
            .await
            .expect("client")
            .into_inner()
            .client
            .expect("client");
        enable(&mut admin, t, &c.client_id).await;
        others.push(c);
    }
    let (other, outsider) = (&others[0], &others[1]);

    // alice signs up through the web application; the other application and the SPA (no
    // URI) get codes from the session; the outsider gets none.
    let mut agent = Agent::new();
    let (page_url, page) = login_page(&mut agent, &suite, &authorize_url(&suite, t, &web.client_id, &[])).await;
    let mut signup = page.forms().into_iter().find(|f| f.action.ends_with("/signup")).expect("signup form");
    signup.set("email", "alice@example.com").set("password", STRONG);
    let done = agent.submit(&page_url, &signup).await.expect("signup");
    let (status, tokens) = exchange(&mut agent, &suite, t, &web, &callback_query(&done)["code"]).await;
    assert_eq!(status, 200, "{tokens}");
    let id = verify_id_token(&suite, t, tokens["id_token"].as_str().expect("id_token"), &web.client_id).await;
    let sid = id["sid"].as_str().expect("the ID token's sid").to_owned();
    assert!(silent(&mut agent, &suite, t, other).await.is_ok());
    let c = challenge(VERIFIER);
    let pkce = [("code_challenge", c.as_str()), ("code_challenge_method", "S256"), ("prompt", "none")];
    let spa_code = agent.get(&authorize_url(&suite, t, &spa.client_id, &pkce)).await.expect("spa");
    assert!(callback_query(&spa_code).contains_key("code"));

    // The logout: one token to each of web and other, in either order.
    let out = agent
        .get(&format!("{}/{t}/v2/logout?client_id={}&returnTo={LOGGED_OUT}", base(&suite), web.client_id))
        .await
        .expect("logout");
    assert_eq!(out.status, 303, "{out:?}");
    let mut got = [receiver.next().await, receiver.next().await];
    got.sort();
    assert_eq!(got.iter().map(|(who, _)| who.as_str()).collect::<Vec<_>>(), ["other", "web"]);
    for ((who, token), client) in got.iter().zip([other, &web]) {
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(header.typ.as_deref(), Some("logout+jwt"), "to {who}");
        let claims = verify_id_token(&suite, t, token, &client.client_id).await;
        assert_eq!((&claims["sub"], claims["sid"].as_str()), (&id["sub"], Some(sid.as_str())), "to {who}: {claims}");
        assert!(claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object(), "{claims}");
        assert!(claims.get("nonce").is_none() && claims["jti"].as_str().is_some_and(|j| j.len() >= 20), "{claims}");
        assert_eq!(claims["exp"].as_u64().zip(claims["iat"].as_u64()).map(|(e, i)| e - i), Some(120), "{claims}");
    }

    // The outsider and the SPA were sent nothing: the next delivery is the next logout's,
    // of a session in which only web got a code.
    let code = password_login(&mut agent, &suite, t, &web).await;
    assert!(!code.is_empty());
    let out = agent
        .get(&format!("{}/{t}/v2/logout?client_id={}&returnTo={LOGGED_OUT}", base(&suite), web.client_id))
        .await
        .expect("logout");
    assert_eq!(out.status, 303, "{out:?}");
    let (who, _) = receiver.next().await;
    assert_eq!(who, "web", "the outsider ({}) got no code in the first session", outsider.client_id);

    // Deleting the user ends its session, and its clients are told too (Auth0's "account
    // deleted"), with the new session's sid.
    assert!(!password_login(&mut agent, &suite, t, &web).await.is_empty());
    assert!(silent(&mut agent, &suite, t, other).await.is_ok());
    let sub = id["sub"].as_str().expect("sub").to_owned();
    let delete = postern_proto::authn::v1::DeleteUserRequest { tenant: t.into(), user_id: sub.clone() };
    admin.users.delete_user(delete).await.expect("delete the user");
    let mut got = [receiver.next().await, receiver.next().await];
    got.sort();
    assert_eq!(got.iter().map(|(who, _)| who.as_str()).collect::<Vec<_>>(), ["other", "web"]);
    let mut sids = Vec::new();
    for ((who, token), client) in got.iter().zip([other, &web]) {
        let claims = verify_id_token(&suite, t, token, &client.client_id).await;
        assert_eq!(claims["sub"], sub, "to {who}: {claims}");
        sids.push(claims["sid"].as_str().expect("sid").to_owned());
    }
    assert!(sids[0] == sids[1] && sids[0] != sid, "one new session: {sids:?}, the first was {sid}");
    receiver.task.abort();
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_subdomain_wildcard_origin_admits_origins_one_label_deeper_only() {
    let suite = Suite::start().await.expect("suite");
    let t = "preview-apps";
    let mut admin = suite.admin().await;
    admin.create_tenant(t).await.expect("tenant");
    let spa = |allowed: &str| tenant::Client {
        name: "Preview SPA".into(),
        app_type: tenant::AppType::Spa as i32,
        callbacks: vec![CALLBACK.into()],
        allowed_origins: vec![allowed.into()],
        ..Default::default()
    };
    let create = |client: tenant::Client| {
        let mut clients = admin.clients.clone();
        async move { clients.create_client(tenant::CreateClientRequest { tenant: t.into(), client: Some(client) }).await }
    };
    // A wildcard anywhere but the first label of an https origin of two labels or more is no
    // pattern.
    for bad in ["https://*.com", "https://a.*.example.com", "http://*.preview.example.com", "https://*.Example.com"] {
        let refused = create(spa(bad)).await.expect_err(bad);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad}: {refused:?}");
        assert!(refused.message().contains("client.allowed_origins[0]"), "{bad}: {}", refused.message());
    }
    let client =
        create(spa("https://*.preview.example.com")).await.expect("client").into_inner().client.expect("client");
    assert_eq!(client.allowed_origins, ["https://*.preview.example.com"], "read back as written");

    // A made-up code from each origin: an admitted one reaches the grant (`invalid_grant`),
    // another is refused for its origin before that.
    let mut agent = Agent::new();
    for (origin, admitted) in [
        ("https://pr-42.preview.example.com", true),
        ("https://app.example.com", true), // the callback's own origin
        ("https://preview.example.com", false),
        ("https://a.b.preview.example.com", false),
        ("http://pr-42.preview.example.com", false),
        ("https://pr-42.preview.example.com.evil.example", false),
    ] {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "authorization_code"),
                ("client_id", client.client_id.as_str()),
                ("code", "made-up"),
                ("redirect_uri", CALLBACK),
                ("code_verifier", VERIFIER),
            ])
            .finish();
        let headers = [("content-type", "application/x-www-form-urlencoded"), ("origin", origin)];
        let answer = agent
            .send("POST", &format!("{}/{t}/oauth/token", base(&suite)), &headers, Some(&body))
            .await
            .expect("token");
        let json: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        assert_eq!(answer.status, 400, "{origin}: {answer:?}");
        let expected = if admitted { "invalid_grant" } else { "unauthorized_client" };
        assert_eq!(json["error"], expected, "{origin}: {json}");
        if !admitted {
            assert!(json["error_description"].as_str().unwrap_or_default().contains(origin), "{json}");
        }
    }
    suite.stop().await.expect("stop");
}
