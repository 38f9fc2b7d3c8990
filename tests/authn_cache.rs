//! The authenticator's caches, measured from outside: a warm login asks the registry nothing
//! (the `postern_authn_connection_resolutions_total` counter on the management port's `/metrics`
//! stays put) and the tenant service nothing (`postern_authn_client_checks_total`), and a
//! change in the registry or to the client reaches the authenticator at once. One test, alone
//! in its binary, because the metrics recorder is one per process.

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tpb;
use postern_testkit::web::Agent;
use postern_testkit::{Suite, eventually, http_get};
use tonic::Code;

async fn counter(suite: &Suite, name: &str) -> u64 {
    let (code, _, body) = http_get(suite.management, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn resolutions(suite: &Suite) -> u64 {
    counter(suite, "postern_authn_connection_resolutions_total").await
}

async fn client_checks(suite: &Suite) -> u64 {
    counter(suite, "postern_authn_client_checks_total").await
}

/// The page's cache misses: the client's connections listed, the tenant read.
async fn views(suite: &Suite) -> (u64, u64) {
    (
        counter(suite, "postern_authn_connection_listings_total").await,
        counter(suite, "postern_authn_tenant_reads_total").await,
    )
}

/// The hosted login page of `client_id` (redirect URI the test kit's client's), as a new
/// browser sees it.
async fn page(suite: &Suite, tenant: &str, client_id: &str) -> String {
    let base = format!("http://{}", suite.http);
    let mut authorize = url::Url::parse(&format!("{base}/{tenant}/authorize")).expect("url");
    authorize
        .query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", "https://app.example.com/callback")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("state", "s");
    let mut agent = Agent::new();
    let start = agent.get(authorize.as_str()).await.expect("authorize");
    assert_eq!(start.status, 303, "{start:?}");
    let location = start.location().expect("to the login page").to_owned();
    let page = agent.get(&format!("{base}{location}")).await.expect("page");
    assert_eq!(page.status, 200, "{}", page.body);
    page.body
}

/// The code of the first refusal of `login`: a change that reaches the authenticator through
/// the registry's change stream or the tenant event log refuses the login once it arrived.
/// Fails the test if no refusal comes within 20 s.
async fn refused(admin: &postern_testkit::Clients, login: &authn::LoginRequest) -> Code {
    let code = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually("a refusal", || {
        let (mut authn, login, code) = (admin.authn.clone(), login.clone(), code.clone());
        async move {
            let Err(e) = authn.login(login).await else { return false };
            *code.lock().expect("lock") = Some(e.code());
            true
        }
    })
    .await;
    code.lock().expect("lock").take().expect("a code")
}

/// Waits until `login` succeeds (a change that allows it has reached the authenticator).
async fn accepted(admin: &postern_testkit::Clients, login: &authn::LoginRequest, what: &str) {
    eventually(what, || {
        let (mut authn, login) = (admin.authn.clone(), login.clone());
        async move { authn.login(login).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn a_warm_login_asks_the_registry_and_the_tenant_service_nothing() {
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    let tenant = "cached";
    admin.create_tenant(tenant).await.expect("tenant");
    let client = admin.create_client(tenant, "Portal").await.expect("client");
    let connection = conn::Connection {
        name: "db".into(),
        strategy: "auth0".into(),
        options: Some(conn::connection::Options::Database(conn::DatabaseOptions {
            password_policy: conn::PasswordPolicy::None as i32,
            ..Default::default()
        })),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest {
            tenant: tenant.into(),
            connection: Some(connection.clone()),
        })
        .await
        .expect("connection");
    let enable = conn::EnableClientRequest {
        tenant: tenant.into(),
        connection: "db".into(),
        client_id: client.client_id.clone(),
    };
    admin.connections.enable_client(enable.clone()).await.expect("enable");
    admin
        .authn
        .signup(authn::SignupRequest {
            tenant: tenant.into(),
            client_id: client.client_id.clone(),
            connection: "db".into(),
            email: "warm@example.com".into(),
            password: "pw".into(),
            ..Default::default()
        })
        .await
        .expect("signup");
    let login = authn::LoginRequest {
        tenant: tenant.into(),
        client_id: client.client_id.clone(),
        client_secret: client.client_secret.clone(),
        connection: "db".into(),
        username: "warm@example.com".into(),
        password: "pw".into(),
        ..Default::default()
    };
    // Warm the cache: the change stream may still be connecting on the first calls, and the
    // cache answers only once it is up. Warm is when a login asks the registry nothing.
    eventually("a login answered from the cache", || {
        let (mut authn, login, suite) = (admin.authn.clone(), login.clone(), &suite);
        async move {
            authn.login(login.clone()).await.expect("login");
            let before = resolutions(suite).await;
            authn.login(login).await.expect("login");
            resolutions(suite).await == before
        }
    })
    .await;
    let before = resolutions(&suite).await;
    let checks = client_checks(&suite).await;
    assert!(before >= 1, "the cold login asked the registry");
    assert!(checks >= 1, "the cold login asked the tenant service");
    for _ in 0..20 {
        admin.authn.login(login.clone()).await.expect("login");
    }
    assert_eq!(resolutions(&suite).await, before, "20 warm logins asked the registry nothing");
    assert_eq!(client_checks(&suite).await, checks, "20 warm logins asked the tenant service nothing");
    let wrong = authn::LoginRequest { client_secret: "not-the-secret".into(), ..login.clone() };
    for _ in 0..2 {
        let e = admin.authn.login(wrong.clone()).await.expect_err("a wrong secret");
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert_eq!(client_checks(&suite).await, checks + 2, "a refusal is asked again each time");

    // Disabling the connection for the client reaches the cache through the change stream.
    admin
        .connections
        .disable_client(conn::DisableClientRequest {
            tenant: tenant.into(),
            connection: "db".into(),
            client_id: client.client_id.clone(),
        })
        .await
        .expect("disable");
    assert_eq!(refused(&admin, &login).await, Code::PermissionDenied, "refused once the change arrives");
    admin.connections.enable_client(enable.clone()).await.expect("enable again");
    accepted(&admin, &login, "a login after enabling again").await;

    // A rotated secret stops working at once; the new one works.
    let rotated = admin
        .clients
        .rotate_client_secret(tpb::RotateClientSecretRequest {
            tenant: tenant.into(),
            client_id: client.client_id.clone(),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(refused(&admin, &login).await, Code::Unauthenticated, "the old secret is refused");
    let login = authn::LoginRequest { client_secret: rotated.client.expect("the client").client_secret, ..login };
    admin.authn.login(login.clone()).await.expect("the new secret");

    // A client that turns from public to confidential needs its secret again at once.
    let set_type = |app_type: tpb::AppType| tpb::UpdateClientRequest {
        tenant: tenant.into(),
        client: Some(tpb::Client {
            client_id: client.client_id.clone(),
            app_type: app_type as i32,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["app_type".into()] }),
    };
    admin.clients.update_client(set_type(tpb::AppType::Spa)).await.expect("public");
    let public = authn::LoginRequest { client_secret: String::new(), ..login.clone() };
    accepted(&admin, &public, "a public client logging in without a secret").await;
    admin.authn.login(public.clone()).await.expect("remembered");
    admin.clients.update_client(set_type(tpb::AppType::RegularWeb)).await.expect("confidential");
    assert_eq!(refused(&admin, &public).await, Code::Unauthenticated, "the secret is required again");

    // The hosted login page: a warm view asks neither the registry (the client's
    // connections) nor the tenant service (the tenant's name and logo) anything, and a change
    // of either reaches the page through the change stream or the event log.
    let id = client.client_id.clone();
    eventually("a page view answered from the caches", || {
        let (suite, id) = (&suite, id.clone());
        async move {
            page(suite, tenant, &id).await;
            let before = views(suite).await;
            page(suite, tenant, &id).await;
            views(suite).await == before
        }
    })
    .await;
    let before = views(&suite).await;
    assert!(before.0 >= 1 && before.1 >= 1, "the cold view asked both: {before:?}");
    for _ in 0..5 {
        page(&suite, tenant, &id).await;
    }
    assert_eq!(views(&suite).await, before, "5 warm page views asked neither service anything");
    admin
        .tenants
        .update_tenant(tpb::UpdateTenantRequest {
            tenant: Some(tpb::Tenant { name: tenant.into(), display_name: "Cached & Co".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
        })
        .await
        .expect("renamed");
    eventually("the new name on the page", || async { page(&suite, tenant, &id).await.contains("Cached &amp; Co") })
        .await;
    let other = conn::Connection { name: "staff-db".into(), ..connection.clone() };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: tenant.into(), connection: Some(other) })
        .await
        .expect("another connection");
    let enable_other = conn::EnableClientRequest { connection: "staff-db".into(), ..enable.clone() };
    admin.connections.enable_client(enable_other).await.expect("enabled");
    eventually("the new connection on the page", || async {
        page(&suite, tenant, &id).await.contains("value=\"staff-db\"")
    })
    .await;

    // A deleted client is refused at once.
    admin.authn.login(login.clone()).await.expect("login");
    admin
        .clients
        .delete_client(tpb::DeleteClientRequest { tenant: tenant.into(), client_id: client.client_id.clone() })
        .await
        .expect("delete");
    refused(&admin, &login).await;
    suite.stop().await.expect("stop");
}
