//! Federated logins through the redirect flow, against npm's `oidc-provider` as the
//! upstream (one per test binary, `postern_testkit::upstream`): `/authorize?connection=`, the
//! hosted page's "Continue with …" button and home realm discovery send the browser to the
//! upstream; its login page is filled in; `/login/callback` completes the login and the
//! application gets its code, whose ID token names the federated user
//! (`oidc|<connection>|<sub>`, `google-apps|<sub>`, `waad|<oid>`).
//!
//! Broken upstream answers are refused — wrong `aud`, `iss` or `nonce`, an expired token,
//! `alg: none`, another key, a missing or foreign Workspace domain, another Entra directory
//! — with `error=access_denied` and the application's `state`, and nothing stored; a key
//! rotation is followed by one refetch of the keys; a user who cancels returns as
//! `access_denied`; the three profile-sync modes across logins whose upstream profile
//! changed; a connection's `upstream_params` pass the application's `prompt=login` on (the
//! upstream then asks for the password although its session knows the user) and fixed
//! values, and `connection_scope` adds scopes for one login; a real browser (headless Chromium) clicks "Continue with …" for an `oidc`
//! connection and for GitHub, signs in on oidc-provider's own login and consent pages, and
//! lands at the application with a code whose ID token verifies against the tenant's keys.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::upstream::Upstream;
use postern_testkit::web::{Agent, Answer};
use postern_testkit::{Clients, Suite};
use serde_json::json;

const CALLBACK: &str = "https://app.example.com/callback";
const STATE: &str = "app-state/ä&=?";

fn base(suite: &Suite) -> String {
    format!("http://{}", suite.http)
}

fn callback_of(suite: &Suite, t: &str) -> String {
    format!("{}/{t}/login/callback", base(suite))
}

/// A tenant with a confidential web application.
async fn app(admin: &mut Clients, t: &str) -> tenant::Client {
    admin.create_tenant(t).await.expect("tenant");
    let c = tenant::Client {
        name: "Fabrikam Portal".into(),
        app_type: tenant::AppType::RegularWeb as i32,
        callbacks: vec![CALLBACK.into()],
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

/// Creates `connection` and enables it for `client`.
async fn connect(admin: &mut Clients, t: &str, client: &tenant::Client, connection: conn::Connection) {
    let name = connection.name.clone();
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: t.into(), connection: Some(connection) })
        .await
        .expect("connection");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: t.into(),
            connection: name,
            client_id: client.client_id.clone(),
        })
        .await
        .expect("enable");
}

/// An `oidc` connection named `name` to a fresh client of the upstream, whose ID tokens get
/// `mode` (empty: none) and `claims`.
async fn oidc_connection(
    upstream: &Upstream,
    suite: &Suite,
    t: &str,
    name: &str,
    mode: &str,
    claims: serde_json::Value,
    adjust: impl FnOnce(&mut conn::OidcOptions),
) -> conn::Connection {
    let (id, secret) = upstream.register_client(&callback_of(suite, t), "client_secret_basic").await.expect("register");
    if !mode.is_empty() || !claims.is_null() {
        upstream.set_mode(&id, mode, claims).await.expect("mode");
    }
    let mut o = conn::OidcOptions {
        issuer: upstream.issuer.clone(),
        client_id: id,
        client_secret: secret,
        scopes: vec!["email".into(), "profile".into()],
        ..Default::default()
    };
    adjust(&mut o);
    conn::Connection {
        name: name.into(),
        display_name: format!("Upstream {name}"),
        strategy: "oidc".into(),
        options: Some(conn::connection::Options::Oidc(o)),
        ..Default::default()
    }
}

fn authorize_url(suite: &Suite, t: &str, client_id: &str, extra: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&format!("{}/{t}/authorize", base(suite))).expect("url");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("client_id", client_id)
            .append_pair("redirect_uri", CALLBACK)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid profile email")
            .append_pair("state", STATE)
            .append_pair("nonce", "app-nonce");
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    url.into()
}

/// The query of the redirect to the application.
fn app_query(answer: &Answer) -> HashMap<String, String> {
    assert_eq!(answer.status, 303, "{answer:?}");
    let location = answer.location().expect("location");
    assert!(location.starts_with(&format!("{CALLBACK}?")), "{location}");
    url::Url::parse(location).expect("url").query_pairs().into_owned().collect()
}

/// From a 303 to the upstream: logs `login` in there (or cancels) and follows the browser
/// back to Postern's callback; answers the callback's answer.
async fn through_upstream(
    upstream: &Upstream,
    agent: &mut Agent,
    to_upstream: &Answer,
    login: &str,
    cancel: bool,
) -> Answer {
    assert_eq!(to_upstream.status, 303, "{to_upstream:?}");
    let location = to_upstream.location().expect("to the upstream");
    assert!(location.starts_with(&upstream.issuer), "{location}");
    let binding =
        to_upstream.headers("set-cookie").into_iter().find(|c| c.starts_with("postern_up_")).expect("binding cookie");
    assert!(binding.contains("HttpOnly") && binding.contains("SameSite=Lax"), "{binding}");
    let back = upstream.log_in(agent, location, login, cancel).await.expect("upstream login");
    assert!(back.url().contains("/login/callback"), "{back:?}");
    back.follow(agent).await.expect("callback")
}

/// A whole login through `connection`: `/authorize?connection=` to the application's answer.
async fn federated_login(
    upstream: &Upstream,
    suite: &Suite,
    t: &str,
    client_id: &str,
    connection: &str,
    login: &str,
) -> HashMap<String, String> {
    let mut agent = Agent::new();
    let start = agent
        .get(&authorize_url(suite, t, client_id, &[("connection", connection), ("prompt", "login")]))
        .await
        .expect("authorize");
    let done = through_upstream(upstream, &mut agent, &start, login, false).await;
    app_query(&done)
}

/// The claims of an ID token (the signature is checked by the provider's own tests).
fn claims_of(jwt: &str) -> serde_json::Value {
    let body = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).expect("base64url")).expect("JSON")
}

async fn exchange(suite: &Suite, t: &str, client: &tenant::Client, code: &str) -> serde_json::Value {
    let fields: Vec<(String, String)> = [
        ("grant_type", "authorization_code"),
        ("client_id", client.client_id.as_str()),
        ("client_secret", client.client_secret.as_str()),
        ("code", code),
        ("redirect_uri", CALLBACK),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let answer = Agent::new().post_form(&format!("{}/{t}/oauth/token", base(suite)), &fields).await.expect("token");
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("JSON")
}

async fn user(admin: &mut Clients, t: &str, user_id: &str) -> Option<authn::User> {
    match admin.users.get_user(authn::GetUserRequest { tenant: t.into(), user_id: user_id.into() }).await {
        Ok(r) => r.into_inner().user,
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("GetUser: {s:?}"),
    }
}

async fn user_count(admin: &mut Clients, t: &str) -> usize {
    admin
        .users
        .list_users(authn::ListUsersRequest { tenant: t.into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .users
        .len()
}

#[tokio::test]
async fn an_oidc_login_end_to_end_by_connection_button_and_discovery() {
    let Some(upstream) = Upstream::shared("an_oidc_login_end_to_end_by_connection_button_and_discovery") else {
        return;
    };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let c = oidc_connection(upstream, &suite, t, "fabrikam-op", "", serde_json::Value::Null, |_| {}).await;
    connect(&mut admin, t, &portal, c).await;

    // `connection=`: straight to the upstream, back with a code.
    let mut agent = Agent::new();
    let start = agent
        .get(&authorize_url(&suite, t, &portal.client_id, &[("connection", "fabrikam-op"), ("login_hint", "alice")]))
        .await
        .expect("authorize");
    let to = url::Url::parse(start.location().expect("upstream")).expect("url");
    let q: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["login_hint"], "alice");
    assert!(q["scope"].split(' ').any(|s| s == "openid"), "{q:?}");
    assert_eq!(q["redirect_uri"], callback_of(&suite, t));
    let callback = through_upstream(upstream, &mut agent, &start, "alice", false).await;
    assert!(
        callback.headers("set-cookie").iter().any(|c| c.starts_with("postern_session=") && c.contains("HttpOnly")),
        "an SSO session: {callback:?}"
    );
    let answer = app_query(&callback);
    assert_eq!(answer["state"], STATE, "the application's state, unchanged");
    let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
    let id = claims_of(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(id["sub"], "oidc|fabrikam-op|alice");
    assert_eq!(id["nonce"], "app-nonce");
    assert_eq!(id["email"], "alice@fabrikam.example");
    assert_eq!(id["email_verified"], true, "the upstream asserts it");
    assert_eq!(id["name"], "Jane Doe");
    let alice = user(&mut admin, t, "oidc|fabrikam-op|alice").await.expect("the user is stored");
    assert_eq!(alice.identities.len(), 1);
    assert_eq!(alice.identities[0].connection, "fabrikam-op");

    // The callback again (a replay): the transaction is used up.
    let replay = agent.get(&format!("{}/{t}/login/callback?state=gone&code=x", base(&suite))).await.expect("replay");
    assert_eq!(replay.status, 400, "{replay:?}");

    // SSO: the next /authorize of the application skips everything.
    let sso = agent.get(&authorize_url(&suite, t, &portal.client_id, &[])).await.expect("sso");
    assert!(app_query(&sso).contains_key("code"), "{sso:?}");

    // The hosted page's button, in another browser.
    let mut bob = Agent::new();
    let start = bob.get(&authorize_url(&suite, t, &portal.client_id, &[])).await.expect("authorize");
    let page_url = format!("{}{}", base(&suite), start.location().expect("page"));
    let page = bob.get(&page_url).await.expect("page");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Continue with Upstream fabrikam-op"), "{}", page.body);
    let button = page
        .forms()
        .into_iter()
        .find(|f| f.action.ends_with("/login/upstream") && f.value("connection") == Some("fabrikam-op"))
        .expect("a Continue with … button");
    let mut tampered = button.clone();
    tampered.set("csrf", "forged");
    assert_eq!(bob.submit(&page_url, &tampered).await.expect("forged").status, 403, "the CSRF token is checked");
    let to_upstream = bob.submit(&page_url, &button).await.expect("button");
    let answer = app_query(&through_upstream(upstream, &mut bob, &to_upstream, "bob", false).await);
    let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
    assert_eq!(claims_of(tokens["id_token"].as_str().expect("id_token"))["sub"], "oidc|fabrikam-op|bob");

    // A callback in a browser that did not start the login (no binding cookie): refused.
    let mut carol = Agent::new();
    let start = carol
        .get(&authorize_url(&suite, t, &portal.client_id, &[("connection", "fabrikam-op")]))
        .await
        .expect("authorize");
    let back = upstream.log_in(&mut carol, start.location().expect("upstream"), "carol", false).await.expect("login");
    let mut mallory = Agent::new();
    let refused = app_query(&back.follow(&mut mallory).await.expect("callback"));
    assert_eq!(refused["error"], "access_denied", "{refused:?}");
    assert!(refused["error_description"].contains("browser"), "{refused:?}");
    assert!(user(&mut admin, t, "oidc|fabrikam-op|carol").await.is_none(), "nothing stored");
    // The refusal used the transaction up: the right browser comes back too late.
    let late = back.follow(&mut carol).await.expect("callback");
    assert_eq!(late.status, 400, "{late:?}");
    assert!(user(&mut admin, t, "oidc|fabrikam-op|carol").await.is_none(), "nothing stored");

    // A completed callback replayed with its binding cookie finds nothing: one login stored.
    let mut dave = Agent::new();
    let start = dave
        .get(&authorize_url(&suite, t, &portal.client_id, &[("connection", "fabrikam-op")]))
        .await
        .expect("authorize");
    let back = upstream.log_in(&mut dave, start.location().expect("upstream"), "dave", false).await.expect("login");
    let cookies = dave.cookies.clone();
    assert!(app_query(&back.follow(&mut dave).await.expect("callback")).contains_key("code"));
    dave.cookies = cookies;
    let replayed = back.follow(&mut dave).await.expect("replay");
    assert_eq!(replayed.status, 400, "{replayed:?}");
    assert_eq!(user(&mut admin, t, "oidc|fabrikam-op|dave").await.expect("dave").logins_count, 1);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn broken_upstream_answers_are_refused_and_nothing_is_stored() {
    let Some(upstream) = Upstream::shared("broken_upstream_answers_are_refused_and_nothing_is_stored") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let cases = [
        ("wrong-aud", "wrong_aud", "audience"),
        ("wrong-iss", "wrong_iss", "issuer"),
        ("wrong-nonce", "wrong_nonce", "nonce"),
        ("expired", "expired", "xpired"),
        ("alg-none", "alg_none", "token"),
        ("other-key", "other_key", "signature does not verify"),
    ];
    for (name, mode, hint) in cases {
        let c = oidc_connection(upstream, &suite, t, name, mode, serde_json::Value::Null, |_| {}).await;
        connect(&mut admin, t, &portal, c).await;
        let answer = federated_login(upstream, &suite, t, &portal.client_id, name, &format!("user-{name}")).await;
        assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{mode}: {answer:?}");
        assert_eq!(answer["state"], STATE, "{mode}");
        assert!(!answer.contains_key("code"), "{mode}");
        assert!(answer["error_description"].contains(hint), "{mode}: {answer:?}");
        assert!(answer["error_description"].contains(name), "{mode}: names the connection: {answer:?}");
    }

    // Google Workspace: only the connection's domains, by the hd claim.
    for (name, claims, ok) in [
        ("workspace", json!({"hd": "fabrikam.example"}), true),
        ("workspace-other", json!({"hd": "contoso.example"}), false),
        ("workspace-personal", serde_json::Value::Null, false),
    ] {
        let (id, secret) = upstream.register_client(&callback_of(&suite, t), "client_secret_basic").await.expect("reg");
        upstream.set_mode(&id, "claims", claims).await.expect("mode");
        let c = conn::Connection {
            name: name.into(),
            strategy: "google-apps".into(),
            options: Some(conn::connection::Options::GoogleApps(conn::GoogleAppsOptions {
                domain: "fabrikam.example".into(),
                client_id: id,
                client_secret: secret,
                issuer: upstream.issuer.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        connect(&mut admin, t, &portal, c).await;
        let login = format!("user-{name}");
        let answer = federated_login(upstream, &suite, t, &portal.client_id, name, &login).await;
        if ok {
            let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
            assert_eq!(claims_of(tokens["id_token"].as_str().expect("id"))["sub"], format!("google-apps|{login}"));
        } else {
            assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{name}: {answer:?}");
            assert!(answer["error_description"].contains("Workspace"), "{name}: {answer:?}");
        }
    }

    // Entra ID: the directory's tid, and the object id as the user's id.
    let tid = "5a8f1c1e-0000-4000-8000-00000000aaaa";
    for (name, claims, ok) in [
        ("entra", json!({"tid": tid, "oid": "object-1"}), true),
        ("entra-other", json!({"tid": "5a8f1c1e-0000-4000-8000-00000000bbbb", "oid": "object-2"}), false),
    ] {
        let (id, secret) = upstream.register_client(&callback_of(&suite, t), "client_secret_basic").await.expect("reg");
        upstream.set_mode(&id, "claims", claims).await.expect("mode");
        let c = conn::Connection {
            name: name.into(),
            strategy: "waad".into(),
            options: Some(conn::connection::Options::AzureAd(conn::AzureAdOptions {
                domain: "fabrikam.onmicrosoft.com".into(),
                tenant_id: tid.into(),
                client_id: id,
                client_secret: secret,
                discovery_url: format!("{}/.well-known/openid-configuration", upstream.issuer),
                ..Default::default()
            })),
            ..Default::default()
        };
        connect(&mut admin, t, &portal, c).await;
        let answer = federated_login(upstream, &suite, t, &portal.client_id, name, &format!("user-{name}")).await;
        if ok {
            let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
            let id = claims_of(tokens["id_token"].as_str().expect("id"));
            assert_eq!(id["sub"], "waad|object-1", "the object id");
            assert_eq!(id["email_verified"], false, "Entra ID asserts no verified email");
        } else {
            assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{name}: {answer:?}");
            assert!(answer["error_description"].contains("directory"), "{name}: {answer:?}");
        }
    }

    assert_eq!(
        user_count(&mut admin, t).await,
        2,
        "only the Workspace and Entra ID users of the allowed domain and directory"
    );
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_key_rotation_is_followed_by_one_refetch_of_the_keys() {
    let Some(upstream) = Upstream::shared("a_key_rotation_is_followed_by_one_refetch_of_the_keys") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let jwks = format!("{}/__test/jwks", upstream.issuer);
    let c = oidc_connection(upstream, &suite, t, "rotating", "rotated", serde_json::Value::Null, |o| {
        o.jwks_uri = jwks.clone();
    })
    .await;
    connect(&mut admin, t, &portal, c).await;
    let fetches = || async { upstream.stats().await.expect("stats")["jwks_fetches"].as_u64().expect("count") };
    let before = fetches().await;
    let first = federated_login(upstream, &suite, t, &portal.client_id, "rotating", "rita").await;
    assert!(first.contains_key("code"), "{first:?}");
    assert_eq!(fetches().await, before + 1, "the keys fetched once");
    let second = federated_login(upstream, &suite, t, &portal.client_id, "rotating", "rita").await;
    assert!(second.contains_key("code"), "{second:?}");
    assert_eq!(fetches().await, before + 1, "cached for their HTTP lifetime (max-age=300)");
    upstream.rotate().await.expect("rotate");
    let third = federated_login(upstream, &suite, t, &portal.client_id, "rotating", "rita").await;
    assert!(third.contains_key("code"), "a token of the new key is accepted after one refetch: {third:?}");
    assert_eq!(fetches().await, before + 2, "one refetch for the unknown kid");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn a_cancelled_upstream_login_returns_access_denied() {
    let Some(upstream) = Upstream::shared("a_cancelled_upstream_login_returns_access_denied") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let c = oidc_connection(upstream, &suite, t, "cancelled", "", serde_json::Value::Null, |_| {}).await;
    connect(&mut admin, t, &portal, c).await;
    let mut agent = Agent::new();
    let start = agent
        .get(&authorize_url(
            &suite,
            t,
            &portal.client_id,
            &[("connection", "cancelled"), ("response_mode", "form_post")],
        ))
        .await
        .expect("authorize");
    let done = through_upstream(upstream, &mut agent, &start, "dave", true).await;
    // form_post: a page whose form posts the error to the application.
    assert_eq!(done.status, 200, "{done:?}");
    let form = done.forms().into_iter().find(|f| f.action == CALLBACK).expect("the form to the application");
    assert_eq!(form.value("error"), Some("access_denied"));
    assert_eq!(form.value("state"), Some(STATE));
    assert!(form.value("error_description").is_some_and(|d| d.contains("aborted")), "the upstream's words: {form:?}");
    assert_eq!(user_count(&mut admin, t).await, 0);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn profile_sync_modes_across_logins_whose_upstream_profile_changed() {
    let Some(upstream) = Upstream::shared("profile_sync_modes_across_logins_whose_upstream_profile_changed") else {
        return;
    };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    // Per mode: the name after the first login; whether the application may then change it
    // (UpdateUser); the name after a second login whose upstream profile changed.
    for (name, sync, after_first, app_may_change, after_second) in [
        ("sync-each", conn::UserProfileSync::OnEachLogin, "First Name", false, "Second Name"),
        ("sync-first", conn::UserProfileSync::OnFirstLogin, "First Name", true, "Set By The App"),
        ("sync-never", conn::UserProfileSync::NeverOnLogin, "", true, "Set By The App"),
    ] {
        let mut c = oidc_connection(upstream, &suite, t, name, "", serde_json::Value::Null, |_| {}).await;
        c.user_profile_sync = sync as i32;
        connect(&mut admin, t, &portal, c).await;
        let login = format!("erin-{name}");
        upstream.set_account(&login, json!({"name": "First Name"})).await.expect("account");
        let first = federated_login(upstream, &suite, t, &portal.client_id, name, &login).await;
        let tokens = exchange(&suite, t, &portal, &first["code"]).await;
        let id_token = claims_of(tokens["id_token"].as_str().expect("id_token"));
        let id = format!("oidc|{name}|{login}");
        assert_eq!(id_token["sub"], id.as_str());
        assert_eq!(id_token["name"].as_str().unwrap_or_default(), after_first, "{name}: the first login's ID token");
        let u = user(&mut admin, t, &id).await.expect("user");
        assert_eq!(u.name, after_first, "{name}, first login");

        // The application changes the name: refused where every login would overwrite it.
        let change = admin
            .users
            .update_user(authn::UpdateUserRequest {
                tenant: t.into(),
                user: Some(authn::User { user_id: id.clone(), name: "Set By The App".into(), ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
            })
            .await;
        match (app_may_change, change) {
            (true, Ok(_)) => {}
            (false, Err(s)) => {
                assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{name}: {s:?}");
                assert_eq!(postern_testkit::reason(&s).as_deref(), Some("PROFILE_SYNCED_ON_EACH_LOGIN"), "{s:?}");
            }
            (may, answer) => panic!("{name}: the application may change the name: {may}; UpdateUser: {answer:?}"),
        }

        upstream.set_account(&login, json!({"name": "Second Name"})).await.expect("account");
        let second = federated_login(upstream, &suite, t, &portal.client_id, name, &login).await;
        let tokens = exchange(&suite, t, &portal, &second["code"]).await;
        let id_token = claims_of(tokens["id_token"].as_str().expect("id_token"));
        assert_eq!(id_token["name"].as_str().unwrap_or_default(), after_second, "{name}: the second login's ID token");
        let u = user(&mut admin, t, &id).await.expect("user");
        assert_eq!(u.name, after_second, "{name}, second login");
        assert_eq!(u.email, format!("{login}@fabrikam.example"), "{name}: the email identifies the user");
        // Whatever the mode, the identity keeps what the upstream said last.
        let data = u.identities[0].profile_data.as_ref().expect("profile data");
        let upstream_name = data.fields.get("name").and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
        assert_eq!(upstream_name, Some("Second Name"), "{name}: the identity's profile data");
    }
    suite.stop().await.expect("stop");
}

/// A loopback application that answers every request with a small page.
async fn loopback_app() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = stream.read(&mut buf).await;
                let page = "<html><body><h1 id=app>The application</h1></body></html>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// Verifies `token` against the tenant's published keys (`/.well-known/jwks.json`): its
/// signature, issuer and audience; answers its claims.
async fn verify_id_token(suite: &Suite, t: &str, token: &str, audience: &str) -> serde_json::Value {
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
    let answer = Agent::new().get(&format!("{}/{t}/.well-known/jwks.json", base(suite))).await.expect("jwks");
    assert_eq!(answer.status, 200, "{answer:?}");
    let set: JwkSet = serde_json::from_str(&answer.body).expect("JWKS");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = set.find(header.kid.as_deref().expect("kid")).expect("the token's key is the tenant's");
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[format!("{}/{t}/", base(suite))]);
    v.set_audience(&[audience]);
    jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).expect("key"), &v)
        .expect("the ID token verifies against the tenant's JWKS")
        .claims
}

/// The browser at the application's `/authorize` of `t` with a fresh state: clicks "Continue
/// with …" for `connection`, signs in as `login` on oidc-provider's own login page (and, with
/// `consent`, grants on its consent page), lands back at the application at `callback`, whose
/// code is exchanged: the ID token's claims, verified against the tenant's keys.
async fn browser_login(
    browser: &postern_testkit::browser::Browser,
    suite: &Suite,
    t: &str,
    (portal, callback): (&tenant::Client, &str),
    connection: &str,
    login: &str,
    consent: bool,
) -> serde_json::Value {
    let state = format!("browser-state-{connection}");
    let mut url = url::Url::parse(&format!("{}/{t}/authorize", base(suite))).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", &portal.client_id)
        .append_pair("redirect_uri", callback)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email")
        .append_pair("state", &state)
        .append_pair("nonce", "browser-nonce");
    browser.goto(url.as_str()).await.expect("authorize");
    browser.click(&format!("button[data-connection={connection}]")).await.expect("Continue with …");
    // oidc-provider's own pages (its development interactions): sign in, then consent.
    browser.fill("input[name=login]", login).await.expect("the upstream's login page");
    browser.fill("input[name=password]", "any password").await.expect("password");
    browser.click("button[type=submit]").await.expect("sign in");
    if consent {
        browser.find("input[name=prompt][value=consent]").await.expect("the upstream's consent page");
        let page = browser.source().await.expect("page");
        assert!(page.contains("Continue"), "{page}");
        browser.click("button[type=submit]").await.expect("consent");
    }
    let app = url::Url::parse(callback).expect("callback");
    let landed = browser
        .wait_for_url("the application", |u| u.host_str() == app.host_str() && u.port() == app.port())
        .await
        .expect("back at the application");
    assert_eq!(landed.path(), app.path(), "{landed}");
    let q: HashMap<String, String> = landed.query_pairs().into_owned().collect();
    assert_eq!(q.get("state"), Some(&state), "{landed}");
    let code = q.get("code").unwrap_or_else(|| panic!("no code: {landed}"));
    let fields: Vec<(String, String)> = [
        ("grant_type", "authorization_code"),
        ("client_id", portal.client_id.as_str()),
        ("client_secret", portal.client_secret.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", callback),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let answer = Agent::new().post_form(&format!("{}/{t}/oauth/token", base(suite)), &fields).await.expect("token");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let tokens: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    let claims = verify_id_token(suite, t, tokens["id_token"].as_str().expect("id_token"), &portal.client_id).await;
    assert_eq!(claims["nonce"], "browser-nonce");
    claims
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_continues_with_the_upstream_and_lands_at_the_application() {
    let test = "a_browser_continues_with_the_upstream_and_lands_at_the_application";
    let Some(upstream) = Upstream::shared(test) else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let (app_addr, app_task) = loopback_app().await;
    let callback = format!("http://{app_addr}/callback");
    admin.create_tenant(t).await.expect("tenant");
    let portal = admin
        .clients
        .create_client(tenant::CreateClientRequest {
            tenant: t.into(),
            client: Some(tenant::Client {
                name: "Fabrikam Customer Portal".into(),
                app_type: tenant::AppType::RegularWeb as i32,
                callbacks: vec![callback.clone()],
                ..Default::default()
            }),
        })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    // An `oidc` connection whose users see the upstream's consent page.
    let c = oidc_connection(upstream, &suite, t, "fabrikam-op", "consent", serde_json::Value::Null, |_| {}).await;
    connect(&mut admin, t, &portal, c).await;
    // GitHub: its OAuth 2.0 exchange at the upstream (the secret in the body, as GitHub takes
    // it), its REST API the upstream's stand-in (`/github/user`, `/github/user/emails`).
    let (id, secret) = upstream.register_client(&callback_of(&suite, t), "client_secret_post").await.expect("register");
    let github = conn::Connection {
        name: "github".into(),
        display_name: "GitHub".into(),
        strategy: "github".into(),
        options: Some(conn::connection::Options::Oauth2(conn::OAuth2Options {
            client_id: id,
            client_secret: secret,
            authorization_endpoint: format!("{}/auth", upstream.issuer),
            token_endpoint: format!("{}/token", upstream.issuer),
            userinfo_endpoint: format!("{}/github/user", upstream.issuer),
            emails_endpoint: format!("{}/github/user/emails", upstream.issuer),
            // GitHub's own scopes (`read:user user:email`), which the upstream grants as
            // plain OAuth 2.0.
            ..Default::default()
        })),
        ..Default::default()
    };
    connect(&mut admin, t, &portal, github).await;

    // Each login in a browser of its own: no session at Postern or at the upstream.
    let Some(browser) = postern_testkit::browser::Browser::open(test).await else { return };
    let id = browser_login(&browser, &suite, t, (&portal, &callback), "fabrikam-op", "frank", true).await;
    assert_eq!(id["sub"], "oidc|fabrikam-op|frank");
    assert_eq!((id["email"].as_str(), id["email_verified"].as_bool()), (Some("frank@fabrikam.example"), Some(true)));
    assert_eq!(id["name"], "Jane Doe");
    browser.close().await.expect("close");

    let Some(browser) = postern_testkit::browser::Browser::open(test).await else { return };
    let id = browser_login(&browser, &suite, t, (&portal, &callback), "github", "gina", false).await;
    let sub = id["sub"].as_str().expect("sub");
    let number = sub.strip_prefix("github|").unwrap_or_else(|| panic!("a github user: {sub}"));
    assert!(!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()), "GitHub's numeric id: {sub}");
    assert_eq!((id["email"].as_str(), id["email_verified"].as_bool()), (Some("gina@fabrikam.example"), Some(true)));
    assert_eq!(id["nickname"], "gina");
    let stored = user(&mut admin, t, sub).await.expect("stored");
    assert_eq!((stored.identities[0].connection.as_str(), stored.identities[0].is_social), ("github", true));
    browser.close().await.expect("close");
    app_task.abort();
    suite.stop().await.expect("stop");
}

/// A P-256 key made for this test only: the "Sign in with Apple" key of the connection.
const APPLE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgzjGef1p6d0ONrBXM
ZwvQA1leXukGBh+rD3WLyUs1qNShRANCAATw8AeqG7RSNo++7Qc9s9uguOgos/J/
o7Gr6dgbivR05F2MqfXS0bfC0EGUgC6+VqyVxFZkZ9C0YL89euP30zq/
-----END PRIVATE KEY-----
";
const APPLE_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8PAHqhu0UjaPvu0HPbPboLjoKLPy
f6Oxq+nYG4r0dORdjKn10tG3wtBBlIAuvlaslcRWZGfQtGC/PXrj99M6vw==
-----END PUBLIC KEY-----
";

#[tokio::test]
async fn sign_in_with_apple_posts_back_and_authenticates_with_a_client_secret_jwt() {
    let Some(upstream) = Upstream::shared("sign_in_with_apple_posts_back_and_authenticates_with_a_client_secret_jwt")
    else {
        return;
    };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let (id, secret) = upstream.register_client(&callback_of(&suite, t), "client_secret_post").await.expect("register");
    let apple =
        json!({"secret": secret, "public_key": APPLE_PUBLIC_KEY, "team_id": "TEAM123456", "key_id": "KEY1234567"});
    upstream.set_mode(&id, "apple", apple).await.expect("mode");
    let c = conn::Connection {
        name: "apple".into(),
        display_name: "Apple".into(),
        strategy: "apple".into(),
        options: Some(conn::connection::Options::Oauth2(conn::OAuth2Options {
            client_id: id,
            client_secret: APPLE_KEY.into(),
            issuer: upstream.issuer.clone(),
            apple_team_id: "TEAM123456".into(),
            apple_key_id: "KEY1234567".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    // The same client under another key id: Apple refuses the client secret JWT.
    let mut other_key = c.clone();
    other_key.name = "apple-other-key".into();
    if let Some(conn::connection::Options::Oauth2(o)) = &mut other_key.options {
        o.apple_key_id = "OTHERKEY00".into();
    }
    connect(&mut admin, t, &portal, c).await;
    connect(&mut admin, t, &portal, other_key).await;
    // TestConnection tries the client secret JWT at the token endpoint, as a login sends it.
    let test = |connection: &str| authn::TestConnectionRequest { tenant: t.into(), connection: connection.into() };
    let tried = admin.authn.test_connection(test("apple")).await.expect("test").into_inner();
    assert!(tried.ok, "{tried:?}");
    assert_eq!(tried.steps.last().map(|s| s.name.as_str()), Some("client_authentication"), "{tried:?}");
    let refused = admin.authn.test_connection(test("apple-other-key")).await.expect("test").into_inner();
    let step = refused.steps.last().expect("a step");
    assert!(!refused.ok && step.name == "client_authentication", "{refused:?}");
    assert!(step.detail.contains("team_id, key_id and private key"), "{step:?}");
    assert!(!format!("{refused:?}").contains("PRIVATE KEY"), "no secret: {refused:?}");
    let before = upstream.stats().await.expect("stats")["apple_refusals"].as_u64().unwrap_or(0);
    let mut agent = Agent::new();
    let start =
        agent.get(&authorize_url(&suite, t, &portal.client_id, &[("connection", "apple")])).await.expect("authorize");
    let to = url::Url::parse(start.location().expect("to Apple")).expect("url");
    assert!(to.query_pairs().any(|(k, v)| k == "response_mode" && v == "form_post"), "{to}");
    let back = upstream.log_in(&mut agent, to.as_str(), "grace", false).await.expect("login");
    assert!(matches!(back, postern_testkit::upstream::Back::FormPost { .. }), "Apple posts its answer: {back:?}");
    let answer = app_query(&back.follow(&mut agent).await.expect("callback"));
    assert!(answer.contains_key("code"), "{answer:?}");
    assert_eq!(
        upstream.stats().await.expect("stats")["apple_refusals"].as_u64().unwrap_or(0),
        before,
        "the client secret JWT was accepted"
    );
    let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
    assert_eq!(claims_of(tokens["id_token"].as_str().expect("id_token"))["sub"], "apple|grace");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn the_front_channel_logs_in_with_the_id_token_the_browser_posts_back() {
    let test = "the_front_channel_logs_in_with_the_id_token_the_browser_posts_back";
    let Some(upstream) = Upstream::shared(test) else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-front";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let id = upstream.register_implicit_client(&callback_of(&suite, t)).await.expect("register");
    let front = conn::Connection {
        name: "front".into(),
        display_name: "Fabrikam (front channel)".into(),
        strategy: "oidc".into(),
        options: Some(conn::connection::Options::Oidc(conn::OidcOptions {
            issuer: upstream.issuer.clone(),
            client_id: id,
            channel: conn::OidcChannel::Front as i32,
            scopes: vec!["email".into(), "profile".into()],
            ..Default::default()
        })),
        ..Default::default()
    };
    connect(&mut admin, t, &portal, front).await;

    // TestConnection: no client to authenticate; the provider answers ID tokens by form post.
    let test = authn::TestConnectionRequest { tenant: t.into(), connection: "front".into() };
    let tried = admin.authn.test_connection(test).await.expect("test").into_inner();
    assert!(tried.ok, "{tried:?}");
    let names: Vec<&str> = tried.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["discovery", "keys", "front_channel"], "{tried:?}");

    // The request asks for the ID token by form post: no code, no PKCE.
    let login = || async {
        let mut agent = Agent::new();
        let url = authorize_url(&suite, t, &portal.client_id, &[("connection", "front"), ("prompt", "login")]);
        let start = agent.get(&url).await.expect("authorize");
        let to = url::Url::parse(start.location().expect("to the provider")).expect("url");
        let back = upstream.log_in(&mut agent, to.as_str(), "frank", false).await.expect("login");
        (agent, to, back)
    };
    let (mut agent, to, back) = login().await;
    let q: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!((q["response_type"].as_str(), q["response_mode"].as_str()), ("id_token", "form_post"), "{to}");
    assert!(!q.contains_key("code_challenge"), "{to}");
    let postern_testkit::upstream::Back::FormPost { action, fields } = back else { panic!("posted back: {back:?}") };
    let first_token = fields.iter().find(|(k, _)| k == "id_token").map(|(_, v)| v.clone()).expect("an ID token");
    assert!(!fields.iter().any(|(k, _)| k == "code"), "{fields:?}");
    let answer = app_query(&agent.post_form(&action, &fields).await.expect("callback"));
    let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
    let claims = claims_of(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(claims["sub"], "oidc|front|frank");
    assert_eq!(claims["email"], "frank@fabrikam.example");

    // Refused, nothing stored: another login's ID token (its nonce is that login's), and an ID
    // token whose signature was tampered with.
    let swap = |fields: &[(String, String)], token: &str| -> Vec<(String, String)> {
        fields.iter().map(|(k, v)| (k.clone(), if k == "id_token" { token.to_owned() } else { v.clone() })).collect()
    };
    let (mut agent, _, back) = login().await;
    let postern_testkit::upstream::Back::FormPost { action, fields } = back else { panic!("{back:?}") };
    let answer = app_query(&agent.post_form(&action, &swap(&fields, &first_token)).await.expect("callback"));
    assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{answer:?}");
    assert!(answer["error_description"].contains("nonce"), "{answer:?}");
    let (mut agent, _, back) = login().await;
    let postern_testkit::upstream::Back::FormPost { action, fields } = back else { panic!("{back:?}") };
    let token = fields.iter().find(|(k, _)| k == "id_token").map(|(_, v)| v.clone()).expect("an ID token");
    let (head, signature) = token.rsplit_once('.').expect("a JWT");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{head}.{flipped}{}", &signature[1..]);
    let answer = app_query(&agent.post_form(&action, &swap(&fields, &forged)).await.expect("callback"));
    assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{answer:?}");
    assert!(answer["error_description"].contains("signature"), "{answer:?}");
    assert_eq!(user_count(&mut admin, t).await, 1, "the first login's user only");
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn private_key_jwt_authenticates_the_code_exchange_without_a_shared_secret() {
    let test = "private_key_jwt_authenticates_the_code_exchange_without_a_shared_secret";
    let Some(upstream) = Upstream::shared(test) else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-key-jwt";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    // The provider holds the public half of an EC P-256 key under the kid "postern-1".
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let point = key.public_key_raw();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "postern-1",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let id = upstream.register_key_client(&callback_of(&suite, t), jwk).await.expect("register");
    let connection = |name: &str, pem: String| conn::Connection {
        name: name.into(),
        strategy: "oidc".into(),
        options: Some(conn::connection::Options::Oidc(conn::OidcOptions {
            issuer: upstream.issuer.clone(),
            client_id: id.clone(),
            client_auth: conn::OidcClientAuth::PrivateKeyJwt as i32,
            client_assertion_key: pem,
            client_assertion_key_id: "postern-1".into(),
            scopes: vec!["email".into()],
            ..Default::default()
        })),
        ..Default::default()
    };
    connect(&mut admin, t, &portal, connection("key-jwt", key.serialize_pem())).await;
    // The same client with a key the provider does not hold.
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    connect(&mut admin, t, &portal, connection("another-key", stranger.serialize_pem())).await;

    // A read says the key is set and never shows it.
    let read = admin
        .connections
        .get_connection(conn::GetConnectionRequest { tenant: t.into(), connection: "key-jwt".into() })
        .await
        .expect("get")
        .into_inner();
    let Some(conn::connection::Options::Oidc(o)) = read.connection.and_then(|c| c.options) else { panic!("oidc") };
    assert!(o.client_assertion_key.is_empty() && o.client_assertion_key_set && !o.client_secret_set, "{o:?}");

    // TestConnection signs an assertion as a login does: the provider takes it, or not.
    let test = |c: &str| authn::TestConnectionRequest { tenant: t.into(), connection: c.into() };
    let tried = admin.authn.test_connection(test("key-jwt")).await.expect("test").into_inner();
    assert!(tried.ok, "{tried:?}");
    assert_eq!(tried.steps.last().map(|s| s.name.as_str()), Some("client_authentication"), "{tried:?}");
    let refused = admin.authn.test_connection(test("another-key")).await.expect("test").into_inner();
    let step = refused.steps.last().expect("a step");
    assert!(!refused.ok && step.name == "client_authentication", "{refused:?}");
    assert!(step.detail.contains("invalid_client") && step.detail.contains("client_assertion_key"), "{step:?}");
    assert!(!format!("{tried:?}{refused:?}").contains("PRIVATE KEY"), "never the key");

    // A login: the code exchanged with the assertion.
    let answer = federated_login(upstream, &suite, t, &portal.client_id, "key-jwt", "kim").await;
    let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
    assert_eq!(claims_of(tokens["id_token"].as_str().expect("id_token"))["sub"], "oidc|key-jwt|kim");
    // Signed by a key the provider does not hold: the exchange is refused, nothing stored.
    let answer = federated_login(upstream, &suite, t, &portal.client_id, "another-key", "lee").await;
    assert_eq!(answer.get("error").map(String::as_str), Some("access_denied"), "{answer:?}");
    assert!(answer["error_description"].contains("invalid_client"), "{answer:?}");
    assert_eq!(user_count(&mut admin, t).await, 1);
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn the_social_openid_profiles_log_in_with_their_strategy_ids() {
    let Some(upstream) = Upstream::shared("the_social_openid_profiles_log_in_with_their_strategy_ids") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-public";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    for strategy in ["google-oauth2", "linkedin", "windowslive"] {
        let (id, secret) = upstream.register_client(&callback_of(&suite, t), "client_secret_basic").await.expect("reg");
        let c = conn::Connection {
            name: strategy.into(),
            strategy: strategy.into(),
            options: Some(conn::connection::Options::Oauth2(conn::OAuth2Options {
                client_id: id,
                client_secret: secret,
                // The provider's own issuer by default; here the loopback stand-in's.
                issuer: upstream.issuer.clone(),
                store_tokens: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        connect(&mut admin, t, &portal, c).await;
        let login = format!("henry-{strategy}");
        let answer = federated_login(upstream, &suite, t, &portal.client_id, strategy, &login).await;
        let tokens = exchange(&suite, t, &portal, &answer["code"]).await;
        let id = claims_of(tokens["id_token"].as_str().expect("id_token"));
        assert_eq!(id["sub"], format!("{strategy}|{login}"), "{strategy}");
        // Microsoft asserts no verified email; Google and LinkedIn do.
        assert_eq!(id["email_verified"], strategy != "windowslive", "{strategy}");
        let user = user(&mut admin, t, &format!("{strategy}|{login}")).await.expect("user");
        assert!(user.identities[0].is_social, "{strategy} is a social connection");
    }
    suite.stop().await.expect("stop");
}

#[tokio::test]
async fn test_connection_fetches_the_discovery_document_and_the_keys() {
    let Some(upstream) = Upstream::shared("test_connection_fetches_the_discovery_document_and_the_keys") else {
        return;
    };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-tried";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let good = oidc_connection(upstream, &suite, t, "tried", "", serde_json::Value::Null, |_| {}).await;
    connect(&mut admin, t, &portal, good).await;
    // Nothing listens on the discard port: the discovery document cannot be fetched.
    let down = oidc_connection(upstream, &suite, t, "tried-down", "", serde_json::Value::Null, |o| {
        o.issuer = "http://127.0.0.1:9".into();
    })
    .await;
    connect(&mut admin, t, &portal, down).await;
    // A client secret the provider does not know.
    let mut secret = String::new();
    let wrong = oidc_connection(upstream, &suite, t, "tried-secret", "", serde_json::Value::Null, |o| {
        secret = std::mem::replace(&mut o.client_secret, "not-the-secret".into());
    })
    .await;
    connect(&mut admin, t, &portal, wrong).await;
    let test = |connection: &str| authn::TestConnectionRequest { tenant: t.into(), connection: connection.into() };

    let good = admin.authn.test_connection(test("tried")).await.expect("test").into_inner();
    assert!(good.ok, "{good:?}");
    assert_eq!(good.strategy, "oidc");
    let names: Vec<&str> = good.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["discovery", "keys", "client_authentication"]);
    assert!(good.steps[0].detail.contains(&upstream.issuer), "{good:?}");
    assert!(good.steps[1].detail.contains("signing key"), "{good:?}");
    assert!(
        good.steps[2].detail.contains("accepted client") && good.steps[2].detail.contains("invalid_grant"),
        "{good:?}"
    );
    assert!(!format!("{good:?}").contains("client_secret"), "no secret: {good:?}");

    let wrong = admin.authn.test_connection(test("tried-secret")).await.expect("test").into_inner();
    assert!(!wrong.ok, "{wrong:?}");
    let failed = wrong.steps.last().expect("steps");
    assert_eq!((failed.name.as_str(), failed.ok), ("client_authentication", false), "{wrong:?}");
    assert!(failed.detail.contains("invalid_client") && failed.detail.contains("check the connection's client_id"));
    let all = format!("{wrong:?}");
    assert!(!all.contains("not-the-secret") && !all.contains(&secret), "no secret: {all}");

    let down = admin.authn.test_connection(test("tried-down")).await.expect("test").into_inner();
    assert!(!down.ok, "{down:?}");
    let names: Vec<&str> = down.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["discovery"], "stops at the first failure: {down:?}");
    assert!(!down.steps[0].ok && down.steps[0].detail.contains("127.0.0.1:9"), "{down:?}");
    assert!(down.steps[0].detail.contains("Connection refused"), "says why: {down:?}");
    suite.stop().await.expect("stop");
}

/// A loopback listener that reports the peer of each connection it accepts, in order (and
/// closes it).
async fn reporting_listener() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<std::net::SocketAddr>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            drop(stream);
            if tx.send(peer).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// The next peer `listener` accepted, waited for (a few seconds at most).
async fn next_peer(rx: &mut tokio::sync::mpsc::UnboundedReceiver<std::net::SocketAddr>) -> std::net::SocketAddr {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("a connection within 10 s")
        .expect("the listener runs")
}

/// An `oidc` connection whose issuer is `issuer` (nothing real answers there).
fn oidc_at(name: &str, issuer: &str) -> conn::Connection {
    conn::Connection {
        name: name.into(),
        strategy: "oidc".into(),
        options: Some(conn::connection::Options::Oidc(conn::OidcOptions {
            issuer: issuer.into(),
            client_id: "postern".into(),
            client_secret: "a-secret".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_egress_policy_keeps_a_tenants_connections_off_refused_addresses() {
    // The built-in policy: the cloud metadata address is refused before anything is sent.
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-egress";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    connect(&mut admin, t, &portal, oidc_at("metadata", "http://169.254.169.254/latest")).await;
    let test = |connection: &str| authn::TestConnectionRequest { tenant: t.into(), connection: connection.into() };
    let tried = admin.authn.test_connection(test("metadata")).await.expect("test").into_inner();
    let step = tried.steps.first().expect("a step");
    assert!(!tried.ok && step.name == "discovery" && !step.ok, "{tried:?}");
    assert!(step.detail.contains("169.254.169.254 is an address this server's egress policy refuses"), "{step:?}");
    // The same address written as a number, as URL parsers (and the HTTP client) read it.
    connect(&mut admin, t, &portal, oidc_at("disguised", "http://2852039166/latest")).await;
    let tried = admin.authn.test_connection(test("disguised")).await.expect("test").into_inner();
    assert!(tried.steps.first().is_some_and(|s| !s.ok && s.detail.contains("egress policy refuses")), "{tried:?}");
    let mut agent = Agent::new();
    let answer = agent
        .get(&authorize_url(&suite, t, &portal.client_id, &[("connection", "metadata")]))
        .await
        .expect("authorize");
    assert!(answer.location().is_some_and(|l| l.starts_with(CALLBACK)), "back to the application: {answer:?}");
    let q = app_query(&answer);
    assert_eq!(q.get("state").map(String::as_str), Some(STATE), "{q:?}");
    assert!(q.get("error_description").is_some_and(|d| d.contains("egress policy")), "{q:?}");
    drop(suite);

    // The operator refuses loopback: a name resolving there is refused, and nothing connects.
    let (addr, mut accepted) = reporting_listener().await;
    let strict = Suite::start_with(|s| s.egress_deny = vec!["127.0.0.0/8".into(), "::1".into()]).await.expect("suite");
    let mut admin = strict.admin().await;
    let portal = app(&mut admin, t).await;
    connect(&mut admin, t, &portal, oidc_at("local", &format!("http://localhost:{}", addr.port()))).await;
    let tried = admin.authn.test_connection(test("local")).await.expect("test").into_inner();
    let step = tried.steps.first().expect("a step");
    assert!(!step.ok && step.detail.contains("localhost resolves to"), "{tried:?}");
    // Connections are accepted in the order they came: the first is this probe's, so Postern
    // made none before it.
    let probe = tokio::net::TcpStream::connect(addr).await.expect("probe");
    assert_eq!(next_peer(&mut accepted).await, probe.local_addr().expect("addr"), "nothing reached the listener");
    drop(strict);

    // Allowed over the operator's deny list: the discovery request reaches the listener (which
    // answers nothing, so the step fails for that reason instead).
    let allowing = Suite::start_with(|s| {
        s.egress_deny = vec!["127.0.0.0/8".into()];
        s.egress_allow = vec![addr.ip().to_string()];
    })
    .await
    .expect("suite");
    let mut admin = allowing.admin().await;
    let portal = app(&mut admin, t).await;
    connect(&mut admin, t, &portal, oidc_at("allowed", &format!("http://{addr}"))).await;
    let tried = admin.authn.test_connection(test("allowed")).await.expect("test").into_inner();
    let step = tried.steps.first().expect("a step");
    assert!(!step.ok && !step.detail.contains("egress"), "{tried:?}");
    next_peer(&mut accepted).await;
}

#[tokio::test]
async fn every_connector_checks_its_addresses_under_the_egress_policy() {
    use conn::connection::Options;
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-egress-all";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let metadata = "169.254.169.254";
    let connection = |name: &str, strategy: &str, options: Options| conn::Connection {
        name: name.into(),
        strategy: strategy.into(),
        options: Some(options),
        ..Default::default()
    };
    let connections = [
        connection(
            "directory",
            "ldap",
            Options::Ldap(conn::LdapOptions {
                url: format!("ldap://{metadata}:389"),
                allow_plaintext: true,
                bind_dn: "cn=postern,dc=fabrikam,dc=example".into(),
                bind_password: "a-password".into(),
                base_dn: "dc=fabrikam,dc=example".into(),
                ..Default::default()
            }),
        ),
        connection(
            "legacy",
            "auth0",
            Options::Database(conn::DatabaseOptions {
                custom_database: Some(conn::CustomDatabase {
                    endpoint: format!("http://{metadata}:50051"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        connection(
            "mail",
            "email",
            Options::Email(conn::EmailOptions {
                from: "Fabrikam <no-reply@fabrikam.example>".into(),
                smtp_host: metadata.into(),
                smtp_port: 25,
                smtp_tls: conn::SmtpTls::None as i32,
                ..Default::default()
            }),
        ),
        connection(
            "texts",
            "sms",
            Options::Sms(conn::SmsOptions {
                from: "+15550001111".into(),
                provider_url: format!("http://{metadata}/2010-04-01"),
                account: "AC0123".into(),
                token: "a-token".into(),
                ..Default::default()
            }),
        ),
        connection(
            "hub",
            "github",
            Options::Oauth2(conn::OAuth2Options {
                client_id: "postern".into(),
                client_secret: "a-secret".into(),
                authorization_endpoint: format!("http://{metadata}/login/oauth/authorize"),
                token_endpoint: format!("http://{metadata}/login/oauth/access_token"),
                userinfo_endpoint: format!("http://{metadata}/user"),
                ..Default::default()
            }),
        ),
    ];
    let names: Vec<String> = connections.iter().map(|c| c.name.clone()).collect();
    for c in connections {
        connect(&mut admin, t, &portal, c).await;
    }
    for name in &names {
        let tried = admin
            .authn
            .test_connection(authn::TestConnectionRequest { tenant: t.into(), connection: name.clone() })
            .await
            .expect("test")
            .into_inner();
        assert!(!tried.ok, "{name}: {tried:?}");
        assert!(
            tried.steps.iter().any(|s| !s.ok && s.detail.contains("egress policy refuses")),
            "{name}: the refusal is a step's reason: {tried:?}"
        );
    }
    // A login through the directory: FAILED_PRECONDITION naming the reason, not an outage.
    let refused = admin
        .authn
        .login(authn::LoginRequest {
            tenant: t.into(),
            client_id: portal.client_id.clone(),
            client_secret: portal.client_secret.clone(),
            connection: "directory".into(),
            username: "alice".into(),
            password: "a-password".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("egress policy refuses"), "{refused:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&refused).expect("error info");
    assert_eq!(info.reason, "EGRESS_REFUSED");
}

/// Where `/authorize?connection=` sends `agent` at the upstream: straight back to Postern's
/// callback when the upstream still has the user's session, to its login page otherwise.
async fn upstream_remembers(upstream: &Upstream, agent: &mut Agent, suite: &Suite, t: &str, client_id: &str) -> bool {
    let start = agent.get(&authorize_url(suite, t, client_id, &[("connection", "corp")])).await.expect("authorize");
    let to_upstream = start.location().expect("to the upstream").to_owned();
    assert!(to_upstream.starts_with(&upstream.issuer), "Postern's own session is gone: {to_upstream}");
    let mut url = to_upstream;
    loop {
        let answer = agent.get(&url).await.expect("upstream");
        let Some(next) = answer.location() else { return false };
        let next = url::Url::parse(&url).expect("url").join(next).expect("url").to_string();
        if next.contains("/login/callback") {
            // Completed, so that no transaction is left behind.
            app_query(&agent.get(&next).await.expect("callback"));
            return true;
        }
        if !next.starts_with(&upstream.issuer) || next.contains("/interaction/") {
            return false;
        }
        url = next;
    }
}

#[tokio::test]
async fn a_federated_logout_ends_the_session_at_the_upstream_too() {
    let Some(upstream) = Upstream::shared("a_federated_logout_ends_the_session_at_the_upstream_too") else { return };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-internal";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    const BYE: &str = "https://app.example.com/bye";
    admin.allow_logout_urls(t, &portal.client_id, &[BYE]).await.expect("logout URL");
    let (id, secret) = upstream.register_logout_client(&callback_of(&suite, t), BYE).await.expect("register");
    let c = oidc_connection(upstream, &suite, t, "corp", "", serde_json::Value::Null, |o| {
        o.client_id = id;
        o.client_secret = secret;
    })
    .await;
    connect(&mut admin, t, &portal, c).await;
    let logout = |federated: bool| {
        let mut url = url::Url::parse(&format!("{}/{t}/v2/logout", base(&suite))).expect("url");
        if federated {
            url.query_pairs_mut().append_key_only("federated");
        }
        url.query_pairs_mut()
            .append_pair("client_id", &portal.client_id)
            .append_pair("returnTo", BYE)
            .append_pair("state", "bye-state");
        url.to_string()
    };

    let mut agent = Agent::new();
    let start =
        agent.get(&authorize_url(&suite, t, &portal.client_id, &[("connection", "corp")])).await.expect("authorize");
    let done = through_upstream(upstream, &mut agent, &start, "erin", false).await;
    assert!(app_query(&done).contains_key("code"));

    // A plain logout ends Postern's session alone: the upstream still knows the user.
    let out = agent.get(&logout(false)).await.expect("logout");
    assert_eq!((out.status, out.location()), (303, Some(format!("{BYE}?state=bye-state").as_str())), "{out:?}");
    assert!(
        upstream_remembers(upstream, &mut agent, &suite, t, &portal.client_id).await,
        "the upstream's session lives"
    );

    // A federated logout goes on to the upstream's end_session_endpoint, which ends its
    // session and sends the browser to the application's logout URL with its state.
    let out = agent.get(&logout(true)).await.expect("logout");
    assert_eq!(out.status, 303, "{out:?}");
    let to = url::Url::parse(out.location().expect("to the upstream")).expect("url");
    assert!(to.as_str().starts_with(&upstream.issuer), "{to}");
    let q: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q.get("post_logout_redirect_uri").map(String::as_str), Some(BYE), "{to}");
    assert_eq!(q.get("state").map(String::as_str), Some("bye-state"), "{to}");
    // The login's own ID token, kept sealed on the session, as the hint (Okta requires one).
    let hint = claims_of(q.get("id_token_hint").expect("id_token_hint"));
    assert_eq!((hint["iss"].as_str(), hint["sub"].as_str()), (Some(upstream.issuer.as_str()), Some("erin")), "{hint}");
    assert!(out.headers("set-cookie").iter().any(|c| c.starts_with("postern_session=;")), "{out:?}");
    let back = upstream.log_out(&mut agent, to.as_str()).await.expect("upstream logout");
    assert_eq!(back, format!("{BYE}?state=bye-state"));
    assert!(
        !upstream_remembers(upstream, &mut agent, &suite, t, &portal.client_id).await,
        "the upstream's session ended"
    );
    suite.stop().await.expect("stop");
}

/// Follows the browser at the upstream from `url` while it redirects: `Some` the callback
/// URL when the upstream answers at once (its session signs the user in silently), `None`
/// when it shows a page of its own (its login).
async fn silently_back(upstream: &Upstream, agent: &mut Agent, url: &str) -> Option<String> {
    let mut url = url.to_owned();
    loop {
        let answer = agent.get(&url).await.expect("upstream");
        let next = url::Url::parse(&url).expect("url").join(answer.location()?).expect("url").to_string();
        if next.contains("/login/callback") {
            return Some(next);
        }
        if !next.starts_with(&upstream.issuer) || next.contains("/interaction/") {
            return None;
        }
        url = next;
    }
}

#[tokio::test]
async fn upstream_params_pass_the_applications_prompt_and_fixed_values_to_the_provider() {
    let Some(upstream) =
        Upstream::shared("upstream_params_pass_the_applications_prompt_and_fixed_values_to_the_provider")
    else {
        return;
    };
    let suite = Suite::start().await.expect("suite");
    let t = "fabrikam-upstream-params";
    let mut admin = suite.admin().await;
    let portal = app(&mut admin, t).await;
    let param = |source| conn::UpstreamParam { source: Some(source) };
    use conn::upstream_param::Source;
    // Auth0's shape: the application's prompt passed on, its display under another name,
    // and a fixed value with every login.
    let corp = oidc_connection(upstream, &suite, t, "corp", "", serde_json::Value::Null, |o| {
        o.upstream_params = HashMap::from([
            ("prompt".to_owned(), param(Source::Alias("prompt".into()))),
            ("screen_hint".to_owned(), param(Source::Alias("display".into()))),
            ("ui_locales".to_owned(), param(Source::Value("fr-CA".into()))),
        ]);
    })
    .await;
    connect(&mut admin, t, &portal, corp).await;
    let plain = oidc_connection(upstream, &suite, t, "plain", "", serde_json::Value::Null, |_| {}).await;
    connect(&mut admin, t, &portal, plain).await;
    let query_of = |answer: &Answer| -> HashMap<String, String> {
        assert_eq!(answer.status, 303, "{answer:?}");
        let location = answer.location().expect("to the upstream");
        assert!(location.starts_with(&upstream.issuer), "{location}");
        url::Url::parse(location).expect("url").query_pairs().into_owned().collect()
    };

    // The first login: the fixed value goes; the application gave no prompt or display, so
    // neither does.
    // Auth0's connection_scope adds scopes for this login, once each.
    let mut agent = Agent::new();
    let extra = [("connection", "corp"), ("connection_scope", "email,read:calendar")];
    let start = agent.get(&authorize_url(&suite, t, &portal.client_id, &extra)).await.expect("authorize");
    let q = query_of(&start);
    assert_eq!(q.get("scope").map(String::as_str), Some("openid email profile read:calendar"), "{q:?}");
    assert_eq!(q.get("ui_locales").map(String::as_str), Some("fr-CA"), "{q:?}");
    assert!(!q.contains_key("prompt") && !q.contains_key("screen_hint"), "{q:?}");
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"), "the protocol's own parameters stay");
    let done = through_upstream(upstream, &mut agent, &start, "erin", false).await;
    assert!(app_query(&done).contains_key("code"));

    // prompt=login at Postern: passed on by `corp`, so the upstream asks for the password
    // again although its session knows the user.
    let extra = [("connection", "corp"), ("prompt", "login"), ("display", "popup")];
    let start = agent.get(&authorize_url(&suite, t, &portal.client_id, &extra)).await.expect("authorize");
    let q = query_of(&start);
    assert_eq!(q.get("prompt").map(String::as_str), Some("login"), "{q:?}");
    assert_eq!(q.get("screen_hint").map(String::as_str), Some("popup"), "{q:?}");
    assert!(!q.contains_key("display"), "passed on under the connection's name only: {q:?}");
    let location = start.location().expect("to the upstream").to_owned();
    assert_eq!(silently_back(upstream, &mut agent, &location).await, None, "the upstream asks again");

    // The same request through `plain`, which passes nothing on: the upstream's session signs
    // the user in without a page.
    let extra = [("connection", "plain"), ("prompt", "login")];
    let start = agent.get(&authorize_url(&suite, t, &portal.client_id, &extra)).await.expect("authorize");
    let q = query_of(&start);
    assert!(!q.contains_key("prompt") && !q.contains_key("ui_locales"), "{q:?}");
    let location = start.location().expect("to the upstream").to_owned();
    let back = silently_back(upstream, &mut agent, &location).await.expect("signed in by the upstream's session");
    assert!(app_query(&agent.get(&back).await.expect("callback")).contains_key("code"));

    // A value longer than the contract allows goes back to the application.
    let long = "x".repeat(4097);
    let extra = [("connection", "corp"), ("ui_locales", long.as_str())];
    let refused = agent.get(&authorize_url(&suite, t, &portal.client_id, &extra)).await.expect("authorize");
    let q = app_query(&refused);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"), "{q:?}");
    assert!(q["error_description"].contains("4096"), "{q:?}");
    let scopes = vec!["s"; 51].join(",");
    let extra = [("connection", "corp"), ("connection_scope", scopes.as_str())];
    let refused = agent.get(&authorize_url(&suite, t, &portal.client_id, &extra)).await.expect("authorize");
    let q = app_query(&refused);
    assert_eq!(q.get("error").map(String::as_str), Some("invalid_request"), "{q:?}");
    assert!(q["error_description"].contains("connection_scope"), "{q:?}");
    suite.stop().await.expect("stop");
}
