//! The real binary as users run it: the generated admin key, restarts and crashes keeping
//! every acknowledged write, SIGTERM, the split mode, and the README's grpcurl walk-through.

use std::path::Path;
use std::time::{Duration, Instant};

use postern_proto::tenant::v1 as pb;
use postern_testkit::{Clients, Process, channel};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_postern-e2e");

fn loopback_args(dir: &Path) -> Vec<String> {
    vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ]
}

fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Process {
    let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    for pair in loopback_args(dir).chunks(2) {
        if !extra.contains(&pair[0].as_str()) {
            args.extend(pair.iter().cloned());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::start(Path::new(BIN), &args, env).expect("postern starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn first_start_prints_the_admin_key_once_and_writes_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start(dir.path(), &[], &[("POSTERN_ADMIN_KEY", "")]);
    let printed = first.stdout.iter().find(|l| l.starts_with("psta_")).cloned().expect("the admin key is printed");
    let file = std::fs::read_to_string(dir.path().join("admin-key")).expect("admin-key file");
    assert_eq!(file.trim(), printed);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin-key")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The database keeps only a hash of it.
    let db = std::fs::read(dir.path().join("tenant.db")).expect("db");
    assert!(!db.windows(printed.len()).any(|w| w == printed.as_bytes()), "the admin key is not stored in clear");

    let mut admin = Clients::new(channel(first.grpc).await, &printed);
    let mut names = Vec::new();
    for i in 0..20 {
        let name = format!("tenant-{i:02}");
        admin.create_tenant(&name).await.expect("create");
        names.push(name);
    }
    let client = admin.create_client("tenant-00", "Fabrikam Employee Timesheets").await.expect("client");
    // SIGKILL right after the last acknowledged write.
    first.crash().expect("crash");

    let second = start(dir.path(), &[], &[("POSTERN_ADMIN_KEY", "")]);
    assert!(!second.stdout.iter().any(|l| l.starts_with("psta_")), "the key is printed only on the first start");
    let mut admin = Clients::new(channel(second.grpc).await, &printed);
    let listed = admin
        .tenants
        .list_tenants(pb::ListTenantsRequest { page_size: 100, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.tenants.iter().map(|t| t.name.clone()).collect::<Vec<_>>(), names);
    admin
        .clients
        .get_client(pb::GetClientRequest { tenant: "tenant-00".into(), client_id: client.client_id })
        .await
        .expect("the client survived");
    // The data directory has one owner: a second server on it stops at once, saying why.
    let mut again = std::process::Command::new(BIN);
    again.arg("serve").args(loopback_args(dir.path())).env("POSTERN_ADMIN_KEY", "");
    let refused = postern_testkit::output_within(&mut again, Duration::from_secs(60)).expect("run postern");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a second owner is refused");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert!(second.terminate().expect("terminate"), "SIGTERM stops postern cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn split_mode_runs_the_tenant_service_and_gateway_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let internal = "a".repeat(64);
    let env = [("POSTERN_INTERNAL_KEY", internal.as_str()), ("POSTERN_ADMIN_KEY", postern_testkit::ADMIN_KEY)];
    let tenant = start(dir.path(), &["tenant"], &env);
    let tenant_url = format!("http://{}", tenant.grpc);
    let gateway = start(dir.path(), &["gateway", "--tenant-url", &tenant_url], &env);

    let mut admin = Clients::new(channel(gateway.grpc).await, postern_testkit::ADMIN_KEY);
    admin.create_tenant("fabrikam-internal").await.expect("create through the split gateway");
    let key = admin.create_api_key("fabrikam-internal").await.expect("key");
    let mut scoped = Clients::new(channel(gateway.grpc).await, &key);
    scoped.create_client("fabrikam-internal", "Fabrikam Employee Timesheets").await.expect("client");

    // The tenant service reached directly trusts no caller: without the gateway's signed
    // principal every call is refused.
    let mut direct = Clients::new(channel(tenant.grpc).await, postern_testkit::ADMIN_KEY);
    let err = direct.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect_err("direct");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ListTenantsRequest::default());
    req.metadata_mut().insert("x-postern-principal", "v1|admin|99999999999|abcd".parse().expect("ascii"));
    let err = direct.tenants.list_tenants(req).await.expect_err("forged");
    assert_eq!(err.code(), Code::Unauthenticated);

    // The gateway's health follows the backend: down means NOT_SERVING and fast UNAVAILABLE.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(gateway.grpc).await);
    let status = |h: tonic_health::pb::HealthCheckResponse| h.status;
    let check = tonic_health::pb::HealthCheckRequest { service: "postern.tenant.v1.TenantService".into() };
    assert_eq!(status(health.check(check.clone()).await.expect("health").into_inner()), ServingStatus::Serving as i32);
    let tenant_addr = tenant.grpc.to_string();
    assert!(tenant.terminate().expect("terminate"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(health.check(check.clone()).await.expect("health").into_inner());
        if s == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not notice the backend went down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let mut fresh = Clients::new(channel(gateway.grpc).await, postern_testkit::ADMIN_KEY);
    let err = fresh.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect_err("backend down");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast, took {:?}", started.elapsed());

    // And comes back when the backend does.
    let tenant = start(dir.path(), &["tenant", "--listen", &tenant_addr], &env);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if fresh.tenants.list_tenants(pb::ListTenantsRequest::default()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tenant);
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_runs_with_grpcurl() {
    if postern_testkit::peers::command("the_readme_walkthrough_runs_with_grpcurl", "grpcurl", "-version").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &[], &[("POSTERN_ADMIN_KEY", "")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/walkthrough.sh");
    let out = postern_testkit::output_within(
        std::process::Command::new("bash")
            .arg(&script)
            .env("POSTERN", server.grpc.to_string())
            .env("POSTERN_ADMIN_KEY", std::fs::read_to_string(dir.path().join("admin-key")).expect("key").trim()),
        std::time::Duration::from_secs(300),
    )
    .expect("run the walk-through");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "walk-through failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("walk-through complete"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fabrikam_script_runs_with_grpcurl() {
    if postern_testkit::peers::command("the_fabrikam_script_runs_with_grpcurl", "grpcurl", "-version").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &[], &[("POSTERN_ADMIN_KEY", ""), ("POSTERN_MASTER_KEY", "")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fabrikam/fabrikam.sh");
    let mut command = std::process::Command::new("bash");
    command
        .arg(&script)
        .env("POSTERN", server.grpc.to_string())
        .env("POSTERN_ADMIN_KEY", std::fs::read_to_string(dir.path().join("admin-key")).expect("key").trim());
    // With the throwaway directory, an employee logs in with Active Directory (`ad`).
    let directory = postern_testkit::slapd::Slapd::shared("the_fabrikam_script_runs_with_grpcurl (ad login)");
    if let Some(d) = directory {
        use postern_testkit::slapd;
        command
            .env("FABRIKAM_AD_URL", &d.ldaps_url)
            .env("FABRIKAM_AD_CA_FILE", d.dir.join("ca.pem"))
            .env("FABRIKAM_AD_BIND_DN", slapd::SERVICE_DN)
            .env("FABRIKAM_AD_BIND_PASSWORD", slapd::SERVICE_PASSWORD)
            .env("FABRIKAM_AD_BASE_DN", slapd::PEOPLE)
            .env("FABRIKAM_AD_USER", "carol")
            .env("FABRIKAM_AD_PASSWORD", slapd::USER_PASSWORD);
    }
    // With node and the workspace's oidc-provider, customers and an employee log in through
    // the loopback stand-ins of Google, Facebook, LinkedIn and Google Apps.
    let standins = match postern_testkit::node::Node::locate() {
        Ok(_) => {
            let http = server.http.expect("the HTTP listener").to_string();
            command.env("FABRIKAM_STANDINS", "1").env("POSTERN_HTTP", http);
            true
        }
        Err(why) => {
            postern_testkit::peers::missing("the_fabrikam_script_runs_with_grpcurl (federated logins)", &why);
            false
        }
    };
    let out = postern_testkit::output_within(&mut command, std::time::Duration::from_secs(300))
        .expect("run the Fabrikam script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fabrikam.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("fabrikam scenario complete"), "{stdout}");
    if directory.is_some() {
        assert!(stdout.contains("logged in: ad|fabrikam-ad|"), "{stdout}");
    }
    if standins {
        for user in ["google-oauth2|dana", "facebook|", "linkedin|dana", "google-apps|erin"] {
            assert!(stdout.contains(&format!("logged in: {user}")), "{user}: {stdout}");
        }
    }
    // The first start generated the master key, readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("master-key")).expect("master-key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(server.terminate().expect("terminate"), "SIGTERM stops postern cleanly");
}

/// Calls `method` of the registry with the internal credential, as the authenticator does.
fn as_service<T>(key: &postern_common::principal::InternalKey, method: &str, msg: T) -> tonic::Request<T> {
    use postern_common::principal::{PRINCIPAL_HEADER, Principal};
    let mut req = tonic::Request::new(msg);
    let value = key.sign(&Principal::Service("authn".into()), method);
    let value = value.to_str().expect("ascii").parse().expect("metadata");
    req.metadata_mut().insert(PRINCIPAL_HEADER, value);
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn split_mode_runs_the_registry_apart_and_it_misses_no_deletion() {
    use postern_proto::connections::v1 as cpb;
    use postern_proto::connections::v1::connection_service_client::ConnectionServiceClient;

    let dir = tempfile::tempdir().expect("tempdir");
    let internal = "b".repeat(64);
    let master = "c".repeat(64);
    let env = [
        ("POSTERN_INTERNAL_KEY", internal.as_str()),
        ("POSTERN_ADMIN_KEY", postern_testkit::ADMIN_KEY),
        ("POSTERN_MASTER_KEY", master.as_str()),
    ];
    let key = postern_common::principal::InternalKey::from_hex(&internal).expect("key");
    let tenant = start(dir.path(), &["tenant"], &env);
    let tenant_url = format!("http://{}", tenant.grpc);
    let registry = start(dir.path(), &["registry", "--tenant-url", &tenant_url], &env);
    let registry_addr = registry.grpc.to_string();
    let registry_url = format!("http://{registry_addr}");
    let gateway = start(dir.path(), &["gateway", "--tenant-url", &tenant_url, "--registry-url", &registry_url], &env);

    let mut admin = Clients::new(channel(gateway.grpc).await, postern_testkit::ADMIN_KEY);
    admin.create_tenant("fabrikam-internal").await.expect("tenant");
    // Postern's own services may watch every tenant at once (the authenticator's cache does).
    const WATCH: &str = "/postern.connections.v1.ConnectionService/WatchConnections";
    let mut watcher = ConnectionServiceClient::new(channel(registry.grpc).await);
    let mut all_tenants = watcher
        .watch_connections(as_service(&key, WATCH, cpb::WatchConnectionsRequest { tenant: String::new() }))
        .await
        .expect("an internal caller watches every tenant")
        .into_inner();
    let leaving = admin.create_client("fabrikam-internal", "Leaving app").await.expect("client").client_id;
    let staying = admin.create_client("fabrikam-internal", "Staying app").await.expect("client").client_id;
    let ad = cpb::Connection {
        name: "fabrikam-ad".into(),
        strategy: "ad".into(),
        options: Some(cpb::connection::Options::Ldap(cpb::LdapOptions {
            url: "ldaps://dc1.fabrikam.example".into(),
            bind_dn: "CN=postern,DC=fabrikam,DC=example".into(),
            bind_password: "split-bind-password".into(),
            base_dn: "DC=fabrikam,DC=example".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(cpb::CreateConnectionRequest { tenant: "fabrikam-internal".into(), connection: Some(ad) })
        .await
        .expect("create through the split gateway");
    let change = tokio::time::timeout(Duration::from_secs(2), all_tenants.message())
        .await
        .expect("delivered within a second or two")
        .expect("stream")
        .expect("open");
    assert_eq!(change.change_type, cpb::ChangeType::Created as i32);
    assert_eq!(
        (change.tenant.as_str(), change.connection.map(|c| c.name)),
        ("fabrikam-internal", Some("fabrikam-ad".into()))
    );
    for client_id in [&leaving, &staying] {
        admin
            .connections
            .enable_client(cpb::EnableClientRequest {
                tenant: "fabrikam-internal".into(),
                connection: "fabrikam-ad".into(),
                client_id: client_id.clone(),
            })
            .await
            .expect("enable: the registry asks the tenant service over the network");
    }

    // Reached directly, the registry trusts no caller; with the internal credential,
    // ResolveConnection answers the decrypted secrets.
    let mut direct = ConnectionServiceClient::new(channel(registry.grpc).await);
    let resolve = cpb::ResolveConnectionRequest {
        tenant: "fabrikam-internal".into(),
        client_id: staying.clone(),
        connection: "fabrikam-ad".into(),
    };
    let err = direct.resolve_connection(resolve.clone()).await.expect_err("no principal");
    assert_eq!(err.code(), Code::Unauthenticated);
    const RESOLVE: &str = "/postern.connections.v1.ConnectionService/ResolveConnection";
    let resolved = direct.resolve_connection(as_service(&key, RESOLVE, resolve.clone())).await.expect("internal");
    let Some(cpb::connection::Options::Ldap(ldap)) = resolved.into_inner().connection.and_then(|c| c.options) else {
        panic!("ldap options expected")
    };
    assert_eq!(ldap.bind_password, "split-bind-password");

    // A client deleted while the registry is down is still removed once it is back.
    assert!(registry.terminate().expect("terminate"), "the registry stops cleanly");
    admin
        .clients
        .delete_client(pb::DeleteClientRequest { tenant: "fabrikam-internal".into(), client_id: leaving.clone() })
        .await
        .expect("delete while the registry is down");
    let registry = start(dir.path(), &["registry", "--tenant-url", &tenant_url, "--listen", &registry_addr], &env);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = admin
            .connections
            .list_connection_clients(cpb::ListConnectionClientsRequest {
                tenant: "fabrikam-internal".into(),
                connection: "fabrikam-ad".into(),
                ..Default::default()
            })
            .await;
        if listed.is_ok_and(|l| l.into_inner().client_ids == [staying.clone()]) {
            break;
        }
        assert!(Instant::now() < deadline, "the deletion made while the registry was down was not applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A split gateway with a stream open through it stops promptly and cleanly: the stream
    // ends with UNAVAILABLE after the shutdown grace instead of holding the drain up until
    // the process gives up (20 s, exit 1, before).
    let mut through_gateway = admin
        .connections
        .watch_connections(cpb::WatchConnectionsRequest { tenant: "fabrikam-internal".into() })
        .await
        .expect("a tenant's watch through the gateway")
        .into_inner();
    let stopping = Instant::now();
    assert!(gateway.terminate().expect("terminate"), "the gateway stops cleanly with a stream open");
    let stopped = stopping.elapsed();
    println!("split gateway with an open stream stopped in {stopped:?}");
    assert!(stopped < Duration::from_secs(8), "the gateway took {stopped:?} to stop");
    // (A change may still arrive first: the deletion applied when the registry came back is
    // published by its change log's follower, which may reach the stream after it opened.)
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match through_gateway.message().await {
                Ok(Some(_change)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ended");
    let Err(end) = end else { panic!("the stream through a stopped gateway should end in an error: {end:?}") };
    // The last frame is written before the connection closes (`connections::WRITE_GRACE`;
    // without it the client could see the connection break instead).
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");

    // Without the tenant service, the registry cannot vouch for a client: UNAVAILABLE.
    assert!(tenant.terminate().expect("terminate"), "the tenant service stops cleanly despite the open stream");
    const ENABLE: &str = "/postern.connections.v1.ConnectionService/EnableClient";
    let enable = cpb::EnableClientRequest {
        tenant: "fabrikam-internal".into(),
        connection: "fabrikam-ad".into(),
        client_id: staying.clone(),
    };
    let mut direct = ConnectionServiceClient::new(channel(registry.grpc).await);
    let err = direct.enable_client(as_service(&key, ENABLE, enable)).await.expect_err("tenant service down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(registry.terminate().expect("terminate"));
}
