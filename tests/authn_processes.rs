//! The authenticator as users run it: `postern serve authn` apart from the tenant service,
//! the registry and the gateway (with `--public-url`), and the README's login and
//! passwordless walk-throughs with grpcurl against `postern serve`.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use postern_proto::authn::v1 as authn;
use postern_testkit::{Clients, Process, channel, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_postern-e2e");

fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut all: Vec<&str> = args.to_vec();
    let data = dir.display().to_string();
    all.extend(["--listen", "127.0.0.1:0", "--data-dir"]);
    all.push(&data);
    if !args.iter().any(|a| ["tenant", "registry", "authn"].contains(a)) {
        all.extend(["--http-listen", "127.0.0.1:0"]);
    }
    Process::start(Path::new(BIN), &all, env).expect("postern starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn split_mode_runs_the_authenticator_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let internal = "d".repeat(64);
    let master = "e".repeat(64);
    let env = [
        ("POSTERN_INTERNAL_KEY", internal.as_str()),
        ("POSTERN_ADMIN_KEY", postern_testkit::ADMIN_KEY),
        ("POSTERN_MASTER_KEY", master.as_str()),
    ];
    let tenant = start(dir.path(), &["tenant"], &env);
    let tenant_url = format!("http://{}", tenant.grpc);
    let registry = start(dir.path(), &["registry", "--tenant-url", &tenant_url], &env);
    let registry_url = format!("http://{}", registry.grpc);
    let authn = start(
        dir.path(),
        &[
            "authn",
            "--tenant-url",
            &tenant_url,
            "--registry-url",
            &registry_url,
            "--public-url",
            "https://id.fabrikam.example",
        ],
        &env,
    );
    let authn_url = format!("http://{}", authn.grpc);
    let gateway = start(
        dir.path(),
        &["gateway", "--tenant-url", &tenant_url, "--registry-url", &registry_url, "--authn-url", &authn_url],
        &env,
    );

    let mut admin = Clients::new(channel(gateway.grpc).await, postern_testkit::ADMIN_KEY);
    admin.create_tenant("fabrikam-public").await.expect("tenant");
    let client = admin.create_client("fabrikam-public", "Portal").await.expect("client");
    admin.create_database_connection("fabrikam-public", "customers", &client.client_id).await.expect("connection");
    admin
        .authn
        .signup(authn::SignupRequest {
            tenant: "fabrikam-public".into(),
            client_id: client.client_id.clone(),
            connection: "customers".into(),
            email: "alice@fabrikam.example".into(),
            password: "Wonder-Land-42!".into(),
            ..Default::default()
        })
        .await
        .expect("signup through the split gateway");
    let login = admin
        .authn
        .login(authn::LoginRequest {
            tenant: "fabrikam-public".into(),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone(),
            connection: "customers".into(),
            username: "alice@fabrikam.example".into(),
            password: "Wonder-Land-42!".into(),
            ..Default::default()
        })
        .await
        .expect("login: the authenticator asks the tenant service and the registry over the network")
        .into_inner();

    let http = gateway.http.expect("the gateway's HTTP port");
    let (code, _, body) = http_get(http, "/fabrikam-public/.well-known/jwks.json").await.expect("jwks");
    assert_eq!(code, 200, "{body}");
    let set: JwkSet = serde_json::from_str(&body).expect("JWKS");
    let header = jsonwebtoken::decode_header(&login.id_token).expect("header");
    let key = jsonwebtoken::DecodingKey::from_jwk(set.find(&header.kid.expect("kid")).expect("key")).expect("key");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&["https://id.fabrikam.example/fabrikam-public/"]);
    validation.set_audience(&[client.client_id.as_str()]);
    jsonwebtoken::decode::<serde_json::Value>(&login.id_token, &key, &validation).expect("verifies");
    let (_, _, body) = http_get(http, "/fabrikam-public/.well-known/openid-configuration").await.expect("discovery");
    assert!(body.contains("\"issuer\":\"https://id.fabrikam.example/fabrikam-public/\""), "{body}");

    for p in [gateway, authn, registry, tenant] {
        assert!(p.terminate().expect("terminate"), "stops cleanly on SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_login_walkthrough_runs_with_grpcurl() {
    if postern_testkit::peers::command("the_readme_login_walkthrough_runs_with_grpcurl", "grpcurl", "-version")
        .is_none()
    {
        return;
    }
    if postern_testkit::peers::command("the_readme_login_walkthrough_runs_with_grpcurl", "curl", "--version").is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &[], &[("POSTERN_ADMIN_KEY", ""), ("POSTERN_MASTER_KEY", "")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/authn/walkthrough.sh");
    let out = postern_testkit::output_within(
        std::process::Command::new("bash")
            .arg(&script)
            .env("POSTERN", server.grpc.to_string())
            .env("POSTERN_HTTP", server.http.expect("http").to_string())
            .env("POSTERN_ADMIN_KEY", std::fs::read_to_string(dir.path().join("admin-key")).expect("key").trim()),
        std::time::Duration::from_secs(300),
    )
    .expect("run the walk-through");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "walk-through failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ID token verified"), "{stdout}");
    assert!(stdout.contains("login walk-through complete"), "{stdout}");
    assert!(server.terminate().expect("terminate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_passwordless_walkthrough_runs_against_loopback_sinks() {
    let test = "the_readme_passwordless_walkthrough_runs_against_loopback_sinks";
    if postern_testkit::peers::command(test, "grpcurl", "-version").is_none()
        || postern_testkit::peers::command(test, "curl", "--version").is_none()
    {
        return;
    }
    let aiosmtpd = std::process::Command::new("python3").args(["-c", "import aiosmtpd"]).output();
    if !aiosmtpd.is_ok_and(|o| o.status.success()) {
        postern_testkit::peers::missing(test, "python3 with aiosmtpd is not installed (pip install aiosmtpd)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &[], &[("POSTERN_ADMIN_KEY", ""), ("POSTERN_MASTER_KEY", "")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/passwordless/walkthrough.sh");
    let out = postern_testkit::output_within(
        std::process::Command::new("bash")
            .arg(&script)
            .env("POSTERN", server.grpc.to_string())
            .env("POSTERN_HTTP", server.http.expect("http").to_string())
            .env("POSTERN_ADMIN_KEY", std::fs::read_to_string(dir.path().join("admin-key")).expect("key").trim()),
        std::time::Duration::from_secs(300),
    )
    .expect("run the walk-through");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "walk-through failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("'email': 'alice@contoso.example', 'email_verified': True"), "{stdout}");
    assert!(stdout.contains("'phone_number': '+14155550123', 'phone_number_verified': True"), "{stdout}");
    assert!(stdout.contains("passwordless walk-through complete"), "{stdout}");
    assert!(server.terminate().expect("terminate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_authenticator_alone_refuses_another_master_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_owned();
    let first = "a".repeat(64);
    // A suite that has signed with a key sealed under the first master key.
    let suite = postern_testkit::Suite::start_with(|s| {
        s.data_dir = data.clone();
        s.master_key = Some(first.clone());
    })
    .await
    .expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam-public").await.expect("tenant");
    admin
        .signing_keys
        .rotate_signing_key(postern_proto::authn::v1::RotateSigningKeyRequest {
            tenant: "fabrikam-public".into(),
            ..Default::default()
        })
        .await
        .expect("a signing key");
    suite.stop().await.expect("stop");

    // `postern serve authn` on that data with another master key stops at once, saying why.
    let out = postern_testkit::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_postern-e2e"))
            .args(["serve", "authn", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(["--tenant-url", "http://127.0.0.1:9", "--registry-url", "http://127.0.0.1:9"])
            .env("POSTERN_MASTER_KEY", "b".repeat(64))
            .env("POSTERN_INTERNAL_KEY", "c".repeat(64)),
        std::time::Duration::from_secs(60),
    )
    .expect("run postern");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("master key does not match"), "{stderr}");
    assert!(!stderr.contains(&"b".repeat(64)), "the key is not echoed");
}
