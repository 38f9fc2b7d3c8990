//! The authenticator's connection cache, measured from outside: a warm login asks the
//! registry nothing (the `postern_authn_connection_resolutions_total` counter on the
//! gateway's `/metrics` stays put), and a change in the registry reaches the cache at once.
//! Alone in its test binary, because the metrics recorder is one per process.

use std::time::Duration;

use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_testkit::{Suite, http_get};
use tonic::Code;

async fn resolutions(suite: &Suite) -> u64 {
    let (code, _, body) = http_get(suite.http, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    body.lines()
        .find(|l| l.starts_with("postern_authn_connection_resolutions_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_warm_login_asks_the_registry_nothing() {
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
        .create_connection(conn::CreateConnectionRequest { tenant: tenant.into(), connection: Some(connection) })
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
    // Warm the cache (the change stream may still be connecting on the very first call).
    for _ in 0..3 {
        admin.authn.login(login.clone()).await.expect("login");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = resolutions(&suite).await;
    assert!(before >= 1, "the cold login asked the registry");
    for _ in 0..20 {
        admin.authn.login(login.clone()).await.expect("login");
    }
    assert_eq!(resolutions(&suite).await, before, "20 warm logins asked the registry nothing");

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
    let mut refused = None;
    for _ in 0..20 {
        match admin.authn.login(login.clone()).await {
            Err(e) => {
                refused = Some(e.code());
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(refused, Some(Code::PermissionDenied), "refused within a second of the change");
    admin.connections.enable_client(enable).await.expect("enable again");
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin.authn.login(login.clone()).await.expect("login after enabling again");
    suite.stop().await.expect("stop");
}
