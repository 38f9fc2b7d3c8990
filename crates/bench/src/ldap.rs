//! The directory connector's cost: LDAP logins per second end to end (through the gateway:
//! client check, connection, brute-force bookkeeping, service bind, search, user bind,
//! user record, tokens) against the raw rate of the same directory measured the same way
//! with the `ldap3` crate alone: simple binds as the user, and the login's own directory
//! work (service bind, search, user bind) with nothing else (target: logins reach at least
//! 80% of the raw bind rate).
//!
//! All on loopback: the test kit's throwaway `slapd` (StartTLS with its test CA, for the
//! logins and the raw paths alike) and `postern serve` in this process.
//!
//! Each raw caller has a directory connection of its own, as each login has one from the
//! connector's pool while it runs: a bind changes the identity of its connection, so two
//! callers must never interleave binds on one (RFC 4511 §4.2.1; that is what the raw paths
//! once did, measuring a protocol violation, and they hung at 32 callers). Between the raw
//! sequence and the logins, the connector alone (`LdapConnector::verify`, its pool and
//! checks, nothing of the authenticator) tells what the directory work costs inside
//! Postern and what the rest of a login (gRPC, client check, brute-force count, user
//! record, audit event, tokens) costs.

use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope};
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_testkit::slapd::{self, Slapd};
use postern_testkit::{Clients, Suite};

use crate::stats::{call, interleaved};

const TENANT: &str = "bench-ldap";
const USERS: [&str; 2] = ["alice", "bob"];
const ROUNDS: u32 = 6;

fn tls_config(ca_pem: &str) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// `n` connections to the directory with StartTLS, as the connector opens them: one per
/// caller, which uses it alone.
async fn connections(dir: &Slapd, n: usize) -> anyhow::Result<Vec<Ldap>> {
    let config = tls_config(&dir.ca_pem)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let settings = LdapConnSettings::new().set_starttls(true).set_config(config.clone());
        let (driver, ldap) = LdapConnAsync::with_settings(settings, &dir.ldap_url).await?;
        tokio::spawn(async move { driver.drive().await });
        out.push(ldap);
    }
    Ok(out)
}

/// Runs the section.
pub async fn run(args: &crate::Args) -> anyhow::Result<()> {
    println!("\n== ldap: logins through the gateway vs the directory's raw rate (ldap3 alone)");
    let Some(dir) = Slapd::shared("bench ldap") else { return Ok(()) };
    let suite = Suite::start_on(&crate::stats::server_runtime(), |_| {}).await?;
    let mut admin: Clients = suite.admin().await;
    admin.create_tenant(TENANT).await?;
    let client = admin.create_client(TENANT, "Bench").await?;
    let connection = conn::Connection {
        name: "corp".into(),
        strategy: "ldap".into(),
        options: Some(conn::connection::Options::Ldap(conn::LdapOptions {
            url: dir.ldap_url.clone(),
            start_tls: true,
            bind_dn: slapd::SERVICE_DN.into(),
            bind_password: slapd::SERVICE_PASSWORD.into(),
            base_dn: slapd::PEOPLE.into(),
            ca_certificates: dir.ca_pem.clone(),
            ..Default::default()
        })),
        ..Default::default()
    };
    admin
        .connections
        .create_connection(conn::CreateConnectionRequest {
            tenant: TENANT.into(),
            connection: Some(connection.clone()),
        })
        .await?;
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: TENANT.into(),
            connection: "corp".into(),
            client_id: client.client_id.clone(),
        })
        .await?;
    let n = args.concurrency.max(1);
    let requests: Vec<authn::LoginRequest> = (0..n)
        .map(|w| authn::LoginRequest {
            tenant: TENANT.into(),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone(),
            connection: "corp".into(),
            username: USERS[w % USERS.len()].into(),
            password: slapd::USER_PASSWORD.into(),
            ip: format!("198.51.100.{}", w % 250),
            ..Default::default()
        })
        .collect();
    // The first login makes the users; the measured ones update them.
    for r in &requests[..USERS.len().min(n)] {
        admin.authn.login(r.clone()).await?;
    }
    let grpc = admin.authn.clone();
    let login = move |w: usize| {
        let mut grpc = grpc.clone();
        let req = requests[w % requests.len()].clone();
        async move { grpc.login(req).await.is_ok() }
    };
    // One directory connection per caller: caller `w` runs its calls one after another on
    // connection `w`, which no other caller touches.
    let raw_conns = connections(dir, n).await?;
    let binds = raw_conns.clone();
    let bind = move |w: usize| {
        let mut ldap = binds[w].clone();
        let dn = format!("uid={},{}", USERS[w % USERS.len()], slapd::PEOPLE);
        async move { ldap.simple_bind(&dn, slapd::USER_PASSWORD).await.is_ok_and(|r| r.rc == 0) }
    };
    let sequences = raw_conns.clone();
    let sequence = move |w: usize| {
        let ldap = sequences[w].clone();
        let user = USERS[w % USERS.len()];
        async move {
            let mut ldap = ldap;
            let Ok(r) = ldap.simple_bind(slapd::SERVICE_DN, slapd::SERVICE_PASSWORD).await else { return false };
            if r.rc != 0 {
                return false;
            }
            let filter = format!("(&(objectClass=person)(uid={user}))");
            let Ok(found) = ldap.search(slapd::PEOPLE, Scope::Subtree, &filter, vec!["mail", "cn", "uid"]).await else {
                return false;
            };
            let Some(entry) = found.0.into_iter().next() else { return false };
            let dn = ldap3::SearchEntry::construct(entry).dn;
            ldap.simple_bind(&dn, slapd::USER_PASSWORD).await.is_ok_and(|r| r.rc == 0)
        }
    };
    // The connector alone, on the same connection (the bind password as the registry
    // answers it to the authenticator, opened), with its own pool, as the authenticator
    // calls it.
    let resolved = postern_connection::Resolved::try_from(conn::Connection { id: "con_bench".into(), ..connection })?;
    let resolved = std::sync::Arc::new(resolved);
    let connector =
        std::sync::Arc::new(postern_connector_ldap::LdapConnector::new(postern_common::time::Clock::system()));
    let verify = move |w: usize| {
        let (connector, resolved) = (connector.clone(), resolved.clone());
        async move {
            use postern_connector::PasswordConnector;
            connector.verify(TENANT, &resolved, USERS[w % USERS.len()], slapd::USER_PASSWORD, None).await.is_ok()
        }
    };
    let paths = [call(bind), call(sequence), call(verify), call(login)];
    let names = [
        "raw user bind (ldap3 alone)                    ",
        "raw service bind + search + user bind (ldap3)  ",
        "the connector alone (LdapConnector::verify)    ",
        "LDAP logins through the gateway                ",
    ];
    println!("  {n} concurrent callers, {} s per path ({ROUNDS} rounds, interleaved):", args.seconds);
    let m = interleaved(n, Duration::from_secs(args.seconds), ROUNDS, &paths).await;
    for (name, m) in names.iter().zip(&m) {
        println!("    {name} {}   {}", m.line().replace("calls/s", "per s  "), m.cpu_split());
    }
    println!(
        "  logins = {:.1}% of the raw bind rate (target >= 80%), {:.1}% of the raw login sequence, {:.1}% of the \
         connector alone",
        100.0 * m[3].throughput / m[0].throughput.max(1e-9),
        100.0 * m[3].throughput / m[1].throughput.max(1e-9),
        100.0 * m[3].throughput / m[2].throughput.max(1e-9)
    );
    suite.stop().await?;
    Ok(())
}
