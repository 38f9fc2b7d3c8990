//! TLS as operators turn it on: the public gRPC and HTTP ports over TLS (and mTLS) with
//! grpcurl and curl, a renewed certificate served without a restart, split services talking
//! https with mTLS (and a peer without a client certificate refused), and plaintext as the
//! loopback default. Every certificate is made by the test kit's throwaway CA.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_proto::authn::v1 as authn;
use postern_testkit::tls::{Ca, Issued};
use postern_testkit::{ADMIN_KEY, Clients, MASTER_KEY, Process, output_within};

const BIN: &str = env!("CARGO_BIN_EXE_postern-e2e");

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `postern serve <args>` on free loopback ports with the kit's keys.
fn serve(dir: &Path, args: &[String], internal_key: &str) -> Process {
    let mut all: Vec<String> = args.to_vec();
    all.extend(["--listen".into(), "127.0.0.1:0".into(), "--data-dir".into(), path(dir)]);
    if !args.iter().any(|a| ["tenant", "registry", "authn"].contains(&a.as_str())) {
        all.extend(["--http-listen".into(), "127.0.0.1:0".into()]);
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let env =
        [("POSTERN_ADMIN_KEY", ADMIN_KEY), ("POSTERN_MASTER_KEY", MASTER_KEY), ("POSTERN_INTERNAL_KEY", internal_key)];
    Process::start(Path::new(BIN), &all, &env).expect("postern starts")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs a peer (grpcurl, curl, postern health) to its end: `(success, stdout, stderr)`.
fn run(program: &str, args: &[String]) -> (bool, String, String) {
    let mut cmd = Command::new(program);
    if program == "grpcurl" {
        // A refused connection is retried until this; a refused handshake fails at once.
        cmd.args(["-connect-timeout", "5"]);
    }
    let out = output_within(cmd.args(args), Duration::from_secs(60)).expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn peers_present(test: &str) -> bool {
    postern_testkit::peers::command(test, "grpcurl", "-version").is_some()
        && postern_testkit::peers::command(test, "curl", "--version").is_some()
}

/// The certificate a TLS server at `addr` presents, as DER, verified against `ca` (a fresh
/// handshake each time, as a new client makes).
async fn served_certificate(addr: std::net::SocketAddr, ca: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots.add(der.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let certs = tls.get_ref().1.peer_certificates().ok_or("no certificate")?;
    Ok(certs.first().ok_or("no certificate")?.to_vec())
}

/// Writes `line` past libtest's capture (a figure the report quotes).
fn announce(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(format!("{line}\n").as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_and_curl_reach_the_public_ports_over_tls_and_mtls() {
    if !peers_present("grpcurl_and_curl_reach_the_public_ports_over_tls_and_mtls") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "public");
    let server_cert = ca.issue("server");
    let stranger = Ca::new(dir.path(), "stranger");
    let internal = "1".repeat(64);
    let tls_args = ["--tls-cert".to_owned(), path(&server_cert.cert), "--tls-key".to_owned(), path(&server_cert.key)];
    let data = dir.path().join("one");
    let server = serve(&data, &tls_args, &internal);
    let (grpc, http) = (server.grpc.to_string(), server.http.expect("HTTP port").to_string());
    let cacert = path(&ca.cert);

    // gRPC over TLS: reflection, and a real call with the admin key.
    let (ok, out, err) = run("grpcurl", &strings(&["-cacert", &cacert, &grpc, "list"]));
    assert!(ok && out.contains("postern.tenant.v1.TenantService"), "grpcurl list over TLS: {out}{err}");
    let create = r#"{"tenant":{"name":"fabrikam-internal","display_name":"Fabrikam-Internal"}}"#;
    let bearer = format!("authorization: Bearer {ADMIN_KEY}");
    let (ok, out, err) = run(
        "grpcurl",
        &strings(&[
            "-cacert",
            &cacert,
            "-H",
            &bearer,
            "-d",
            create,
            &grpc,
            "postern.tenant.v1.TenantService/CreateTenant",
        ]),
    );
    assert!(ok && out.contains("fabrikam-internal"), "CreateTenant over TLS: {out}{err}");
    // Plaintext and a certificate from another CA are refused.
    let (ok, _, err) = run("grpcurl", &strings(&["-plaintext", &grpc, "list"]));
    assert!(!ok, "plaintext gRPC to a TLS port must fail: {err}");
    let (ok, _, err) = run("grpcurl", &strings(&["-cacert", &path(&stranger.cert), &grpc, "list"]));
    assert!(!ok && err.contains("certificate"), "another CA's clients do not trust the server: {err}");

    // HTTP over TLS: HTTP/2 by ALPN, HTTP/1.1 for clients that ask for it; the issuer is https.
    let discovery = format!("https://{http}/fabrikam-internal/.well-known/openid-configuration");
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out, err) =
            run("curl", &strings(&["-sS", "--fail", flag, "--cacert", &cacert, "-w", "\n%{http_version}", &discovery]));
        assert!(ok, "curl {flag}: {err}");
        let (body, got) = out.rsplit_once('\n').expect("the version line");
        assert_eq!(got, version, "curl {flag} speaks HTTP/{version}");
        assert!(body.contains(&format!("\"issuer\":\"https://{http}/fabrikam-internal/\"")), "{body}");
    }
    let (ok, _, _) = run("curl", &strings(&["-sS", "--fail", &format!("http://{http}/healthz")]));
    assert!(!ok, "plaintext HTTP to a TLS port must fail");

    // The container's health check speaks TLS when told to.
    let (ok, out, err) = run(BIN, &strings(&["health", "--address", &grpc, "--ca-cert", &cacert]));
    assert!(ok && out.contains("SERVING"), "postern health over TLS: {out}{err}");
    let (ok, out, _) = run(BIN, &strings(&["health", "--address", &grpc]));
    assert!(!ok, "postern health in plaintext against a TLS port fails: {out}");

    // mTLS on the public ports: a client certificate from the client CA is required.
    let clients = Ca::new(dir.path(), "clients");
    let alice = clients.issue("alice");
    let other = stranger.issue("mallory");
    let mut mtls_args = tls_args.to_vec();
    mtls_args.extend(["--tls-client-ca".to_owned(), path(&clients.cert)]);
    let mtls = serve(&dir.path().join("two"), &mtls_args, &internal);
    let (grpc, http) = (mtls.grpc.to_string(), mtls.http.expect("HTTP port").to_string());
    let cert_args = |who: &Issued| strings(&["-cert", &path(&who.cert), "-key", &path(&who.key)]);
    let mut args = strings(&["-cacert", &cacert]);
    args.extend(cert_args(&alice));
    args.extend(strings(&[&grpc, "list"]));
    let (ok, out, err) = run("grpcurl", &args);
    assert!(ok && out.contains("postern.tenant.v1.TenantService"), "grpcurl with a client certificate: {out}{err}");
    let (ok, _, err) = run("grpcurl", &strings(&["-cacert", &cacert, &grpc, "list"]));
    assert!(!ok, "grpcurl without a client certificate is refused: {err}");
    let mut args = strings(&["-cacert", &cacert]);
    args.extend(cert_args(&other));
    args.extend(strings(&[&grpc, "list"]));
    let (ok, _, err) = run("grpcurl", &args);
    assert!(!ok, "a client certificate from another CA is refused: {err}");
    let healthz = format!("https://{http}/healthz");
    let (ok, out, err) = run(
        "curl",
        &strings(&[
            "-sS",
            "--fail",
            "--cacert",
            &cacert,
            "--cert",
            &path(&alice.cert),
            "--key",
            &path(&alice.key),
            &healthz,
        ]),
    );
    assert!(ok && out.contains("SERVING"), "curl with a client certificate: {out}{err}");
    let (ok, _, err) = run("curl", &strings(&["-sS", "--fail", "--cacert", &cacert, &healthz]));
    assert!(!ok, "curl without a client certificate is refused: {err}");
    let (ok, out, err) = run(
        BIN,
        &strings(&[
            "health",
            "--address",
            &grpc,
            "--ca-cert",
            &cacert,
            "--client-cert",
            &path(&alice.cert),
            "--client-key",
            &path(&alice.key),
        ]),
    );
    assert!(ok, "postern health with a client certificate: {out}{err}");

    assert!(mtls.terminate().expect("terminate"), "stops cleanly");
    assert!(server.terminate().expect("terminate"), "stops cleanly");
}

/// Points `dir/tls.crt` and `dir/tls.key` at a new pair at once, as Kubernetes updates a
/// mounted Secret: the pair is written into a directory of its own and the `..data` link
/// swapped by one rename.
fn publish(dir: &Path, version: &str, cert: &str, key: &str) {
    let target = dir.join(version);
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("tls.crt"), cert).expect("write");
    std::fs::write(target.join("tls.key"), key).expect("write");
    let link = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &link).expect("symlink");
    std::fs::rename(&link, dir.join("..data")).expect("swap ..data");
    for file in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(file)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file)).expect("symlink");
        }
    }
}

/// The value of the metric line starting with `prefix` on a management port, if present.
async fn metric(management: std::net::SocketAddr, prefix: &str) -> Option<f64> {
    let (_, _, body) = postern_testkit::http_get(management, "/metrics").await.ok()?;
    body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "public");
    let mounted = dir.path().join("secret");
    std::fs::create_dir(&mounted).expect("mkdir");
    let first = ca.issue("first");
    let pem = |p: &Path| std::fs::read_to_string(p).expect("read");
    publish(&mounted, "v0", &pem(&first.cert), &pem(&first.key));
    let args = [
        "--tls-cert".to_owned(),
        path(&mounted.join("tls.crt")),
        "--tls-key".to_owned(),
        path(&mounted.join("tls.key")),
    ];
    // The default check interval (`--tls-reload-ms`, 2 s).
    let server = serve(&dir.path().join("data"), &args, &"2".repeat(64));
    let http = server.http.expect("HTTP port");
    assert_eq!(served_certificate(server.grpc, &ca.cert).await.expect("handshake"), first.der);

    let mut times = Vec::new();
    let mut current = first;
    for round in 1..=5 {
        let next = ca.issue(&format!("renewed-{round}"));
        publish(&mounted, &format!("v{round}"), &pem(&next.cert), &pem(&next.key));
        let changed = Instant::now();
        loop {
            // Both ports share the certificate.
            let (grpc, web) =
                (served_certificate(server.grpc, &ca.cert).await, served_certificate(http, &ca.cert).await);
            if grpc.as_ref() == Ok(&next.der) && web.as_ref() == Ok(&next.der) {
                break;
            }
            assert!(
                grpc.as_ref().is_ok_and(|d| *d == current.der || *d == next.der),
                "every handshake serves the old or the new certificate: {grpc:?}"
            );
            assert!(changed.elapsed() < Duration::from_secs(30), "the renewed certificate was not served within 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(changed.elapsed());
        current = next;
    }
    let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
    announce(&format!(
        "TLS reload: file change to the new certificate served, 5 renewals at the default 2 s check: {ms:?} ms"
    ));

    // A key that does not fit its certificate is refused, logged and counted; the last good
    // pair stays.
    let stray = ca.issue("stray");
    let renewed = ca.issue("bad");
    publish(&mounted, "bad", &pem(&renewed.cert), &pem(&stray.key));
    let failed = "postern_tls_certificate_reloads_total{identity=\"public\",result=\"failed\"}";
    postern_testkit::eventually("the bad pair is reported", || async {
        metric(server.management, failed).await == Some(1.0)
    })
    .await;
    assert_eq!(served_certificate(server.grpc, &ca.cert).await.expect("handshake"), current.der);
    assert_eq!(served_certificate(http, &ca.cert).await.expect("handshake"), current.der);
    let loaded = "postern_tls_certificate_reloads_total{identity=\"public\",result=\"loaded\"}";
    assert_eq!(metric(server.management, loaded).await, Some(5.0));

    // Fixed: served again.
    let fixed = ca.issue("fixed");
    publish(&mounted, "fixed", &pem(&fixed.cert), &pem(&fixed.key));
    postern_testkit::eventually("the fixed pair is served", || async {
        served_certificate(server.grpc, &ca.cert).await.as_ref() == Ok(&fixed.der)
    })
    .await;
    assert!(server.terminate().expect("terminate"), "stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn split_services_talk_https_with_mtls_and_refuse_a_peer_without_a_certificate() {
    if !peers_present("split_services_talk_https_with_mtls_and_refuse_a_peer_without_a_certificate") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let internal_ca = Ca::new(dir.path(), "internal");
    let public_ca = Ca::new(dir.path(), "public");
    let internal_key = "3".repeat(64);
    let mtls = |who: &str| {
        let issued = internal_ca.issue(who);
        strings(&[
            "--internal-ca",
            &path(&internal_ca.cert),
            "--internal-cert",
            &path(&issued.cert),
            "--internal-cert-key",
            &path(&issued.key),
        ])
    };
    let data = dir.path().join("data");
    let with = |mut head: Vec<String>, tail: Vec<String>| {
        head.extend(tail);
        head
    };
    let tenant = serve(&data, &with(strings(&["tenant"]), mtls("tenant")), &internal_key);
    let tenant_url = format!("https://{}", tenant.grpc);
    let registry =
        serve(&data, &with(strings(&["registry", "--tenant-url", &tenant_url]), mtls("registry")), &internal_key);
    let registry_url = format!("https://{}", registry.grpc);
    let authn = serve(
        &data,
        &with(
            strings(&[
                "authn",
                "--tenant-url",
                &tenant_url,
                "--registry-url",
                &registry_url,
                "--public-url",
                "https://id.fabrikam.example",
            ]),
            mtls("authn"),
        ),
        &internal_key,
    );
    let authn_url = format!("https://{}", authn.grpc);
    let public = public_ca.issue("gateway-public");
    let backends =
        strings(&["gateway", "--tenant-url", &tenant_url, "--registry-url", &registry_url, "--authn-url", &authn_url]);
    let gateway_args = with(
        with(backends.clone(), mtls("gateway")),
        strings(&["--tls-cert", &path(&public.cert), "--tls-key", &path(&public.key)]),
    );
    let gateway = serve(&data, &gateway_args, &internal_key);

    // A login through the gateway's TLS port crosses every internal link: gateway → tenant,
    // registry, authn; registry → tenant; authn → tenant and registry.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&public_ca.cert).expect("read")))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", gateway.grpc))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over TLS");
    let mut admin = Clients::new(channel, ADMIN_KEY);
    admin.create_tenant("fabrikam-public").await.expect("tenant");
    let client = admin.create_client("fabrikam-public", "Fabrikam Customer Portal").await.expect("client");
    admin.create_database_connection("fabrikam-public", "customers", &client.client_id).await.expect("connection");
    let (email, password) = ("alice@fabrikam.example", "Wonder-Land-42!");
    admin
        .authn
        .signup(authn::SignupRequest {
            tenant: "fabrikam-public".into(),
            client_id: client.client_id.clone(),
            connection: "customers".into(),
            email: email.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .expect("signup over mTLS links");
    let login = admin
        .authn
        .login(authn::LoginRequest {
            tenant: "fabrikam-public".into(),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone(),
            connection: "customers".into(),
            username: email.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .expect("login over mTLS links")
        .into_inner();
    assert!(!login.id_token.is_empty());
    // grpcurl through the gateway's public TLS port too.
    let bearer = format!("authorization: Bearer {ADMIN_KEY}");
    let (ok, out, err) = run(
        "grpcurl",
        &strings(&[
            "-cacert",
            &path(&public_ca.cert),
            "-H",
            &bearer,
            "-d",
            r#"{"tenant":"fabrikam-public"}"#,
            &gateway.grpc.to_string(),
            "postern.connections.v1.ConnectionService/ListConnections",
        ]),
    );
    assert!(ok && out.contains("customers"), "grpcurl through the gateway: {out}{err}");

    // The tenant service's port: a peer with the internal CA's certificate gets in; one
    // without a certificate, one with another CA's, and plaintext are refused.
    let tenant_addr = tenant.grpc.to_string();
    let cacert = path(&internal_ca.cert);
    let probe = internal_ca.issue("probe");
    let (ok, out, err) = run(
        "grpcurl",
        &strings(&["-cacert", &cacert, "-cert", &path(&probe.cert), "-key", &path(&probe.key), &tenant_addr, "list"]),
    );
    assert!(ok && out.contains("postern.tenant.v1.TenantService"), "a peer with a certificate: {out}{err}");
    let (ok, _, err) = run("grpcurl", &strings(&["-cacert", &cacert, &tenant_addr, "list"]));
    assert!(!ok, "a peer without a client certificate is refused: {err}");
    let outsider = public_ca.issue("outsider");
    let (ok, _, err) = run(
        "grpcurl",
        &strings(&[
            "-cacert",
            &cacert,
            "-cert",
            &path(&outsider.cert),
            "-key",
            &path(&outsider.key),
            &tenant_addr,
            "list",
        ]),
    );
    assert!(!ok, "a certificate from another CA is refused: {err}");
    let (ok, _, err) = run("grpcurl", &strings(&["-plaintext", &tenant_addr, "list"]));
    assert!(!ok, "plaintext is refused: {err}");
    let health = |client: Option<&Issued>| {
        let mut args = strings(&["health", "--address", &tenant_url, "--ca-cert", &cacert]);
        if let Some(c) = client {
            args.extend(strings(&["--client-cert", &path(&c.cert), "--client-key", &path(&c.key)]));
        }
        run(BIN, &args)
    };
    let (ok, out, err) = health(Some(&probe));
    assert!(ok, "postern health with the service's certificate: {out}{err}");
    let (ok, out, _) = health(None);
    assert!(!ok, "postern health without a certificate is refused: {out}");

    // A gateway that trusts the services but has no certificate to show is refused by them:
    // its calls fail as the backend being unavailable.
    let bare = with(backends, strings(&["--internal-ca", &path(&internal_ca.cert)]));
    let stranger = serve(&dir.path().join("stranger"), &bare, &internal_key);
    let mut refused = Clients::new(postern_testkit::channel(stranger.grpc).await, ADMIN_KEY);
    let err = refused.create_tenant("fabrikam-internal").await.expect_err("refused by the tenant service");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    for p in [stranger, gateway, authn, registry, tenant] {
        assert!(p.terminate().expect("terminate"), "stops cleanly on SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_on_loopback_stays_the_default() {
    use clap::Parser;
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        settings: postern::Settings,
    }
    let defaults = Serve::try_parse_from(["serve"]).expect("parse").settings;
    assert!(defaults.listen.ip().is_loopback() && defaults.http_listen.ip().is_loopback());
    assert!(defaults.management_listen.ip().is_loopback());
    assert!(defaults.tls_cert.is_none() && defaults.tls_key.is_none() && defaults.tls_client_ca.is_none());
    assert!(defaults.internal_cert.is_none() && defaults.internal_ca.is_none());

    if !peers_present("plaintext_on_loopback_stays_the_default") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &[], &"4".repeat(64));
    let (grpc, http) = (server.grpc.to_string(), server.http.expect("HTTP port").to_string());
    let (ok, out, err) = run("grpcurl", &strings(&["-plaintext", &grpc, "list"]));
    assert!(ok && out.contains("postern.tenant.v1.TenantService"), "{out}{err}");
    let (ok, out, err) = run("curl", &strings(&["-sS", "--fail", &format!("http://{http}/healthz")]));
    assert!(ok && out.contains("SERVING"), "{out}{err}");
    // No TLS is spoken: handshakes fail on both ports.
    let (ok, _, _) = run("grpcurl", &strings(&["-insecure", &grpc, "list"]));
    assert!(!ok, "a TLS client gets no handshake on the plaintext gRPC port");
    let (ok, _, _) = run("curl", &strings(&["-sS", "--fail", "-k", &format!("https://{http}/healthz")]));
    assert!(!ok, "a TLS client gets no handshake on the plaintext HTTP port");
    let (ok, out, err) = run(BIN, &strings(&["health", "--address", &grpc]));
    assert!(ok && out.contains("SERVING"), "{out}{err}");
    assert!(server.terminate().expect("terminate"), "stops cleanly");
}
