//! Passwordless logins against real transports on loopback: an SMTP server in this process
//! (mailin-embedded: plain, with STARTTLS, with STARTTLS and authentication) and one of another
//! implementation in a process of its own (Python's aiosmtpd: implicit TLS and required
//! STARTTLS with authentication, an opportunistic relay) receive what Postern sends and the
//! tests read the code from the delivered mail; an HTTP server speaking
//! Twilio's Messages API shape (and a signed webhook) receives the SMS. The code's semantics
//! are checked exactly, on a manual clock: the attempt after the allowed ones is refused even
//! with the right code, an earlier code is refused after a resend, a code is refused after
//! its lifetime, 20 concurrent verifications of one code let one through, the rate limits
//! hold, a failed delivery leaves no code valid. The token endpoint's passwordless grant, the
//! hosted page's forms and magic links (single use, bound to the browser), magic links started
//! over gRPC for the authorization request the application describes, profile sync of what a
//! passwordless login proves (and the `phone` scope), and a real browser logging in with an
//! emailed code and with a magic link complete the picture.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_common::time::Clock;
use postern_proto::authn::v1 as authn;
use postern_proto::connections::v1 as conn;
use postern_proto::tenant::v1 as tenant;
use postern_testkit::browser::Browser;
use postern_testkit::smtp::{Listener, SmtpPeer};
use postern_testkit::web::Agent;
use postern_testkit::{Clients, Suite, reason};
use tonic::Code;

const TENANT: &str = "fabrikam-public";
const WAIT: Duration = Duration::from_secs(20);

// ---- the SMTP server ----

/// A message the SMTP server received.
#[derive(Debug, Clone)]
struct Mail {
    to: Vec<String>,
    /// The message as sent, quoted-printable soft breaks and escapes undone.
    text: String,
}

#[derive(Clone, Default)]
struct Inbox {
    mails: Arc<Mutex<Vec<Mail>>>,
    notify: Arc<tokio::sync::Notify>,
    logins: Arc<Mutex<Vec<(String, String)>>>,
}

#[derive(Clone)]
struct SmtpHandler {
    inbox: Inbox,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin_embedded::Handler for SmtpHandler {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> mailin_embedded::Response {
        self.to = to.to_vec();
        self.data.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let mail = Mail { to: self.to.clone(), text: unquote(&String::from_utf8_lossy(&self.data)) };
        self.inbox.mails.lock().unwrap().push(mail);
        self.inbox.notify.notify_waiters();
        mailin_embedded::response::OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> mailin_embedded::Response {
        self.inbox.logins.lock().unwrap().push((user.to_owned(), password.to_owned()));
        if user == "mailer" && password == "smtp-secret" {
            mailin_embedded::response::AUTH_OK
        } else {
            mailin_embedded::response::INVALID_CREDENTIALS
        }
    }
}

/// Undoes quoted-printable: soft line breaks and `=XX` escapes.
fn unquote(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An SMTP server on a free loopback port: `tls` offers STARTTLS with a certificate for
/// 127.0.0.1 (its CA is `SmtpServer::ca`), `auth` requires AUTH PLAIN (`mailer`,
/// `smtp-secret`), which the server only offers after STARTTLS.
struct SmtpServer {
    port: u16,
    inbox: Inbox,
    ca: String,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    fn start(tls: bool, auth: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates();
        let inbox = Inbox::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = mailin_embedded::Server::new(SmtpHandler { inbox: inbox.clone(), to: vec![], data: vec![] });
        server.with_name("sink.test").with_tcp_listener(listener).with_num_threads(4);
        if tls {
            let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            server
                .with_ssl(mailin_embedded::SslConfig::SelfSigned {
                    cert_path: cert_path.to_string_lossy().into_owned(),
                    key_path: key_path.to_string_lossy().into_owned(),
                })
                .unwrap();
        }
        if auth {
            server.with_auth(mailin_embedded::AuthMechanism::Plain);
        }
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self { port, inbox, ca, _dir: dir }
    }

    /// The next message to `to` after the `seen` first ones, waiting for it.
    async fn mail_to(&self, to: &str, seen: usize) -> Mail {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.inbox.notify.notified();
                if let Some(m) =
                    self.inbox.mails.lock().unwrap().iter().filter(|m| m.to.iter().any(|t| t.contains(to))).nth(seen)
                {
                    return m.clone();
                }
                notified.await;
            }
        })
        .await
        .expect("the mail arrived in time")
    }

    fn count_to(&self, to: &str) -> usize {
        self.inbox.mails.lock().unwrap().iter().filter(|m| m.to.iter().any(|t| t.contains(to))).count()
    }
}

/// A throwaway CA and a certificate for 127.0.0.1 it signed: (CA PEM, certificate PEM, key PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Throwaway SMTP test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// The code of a mail (or SMS) written with the default template.
fn code_in(text: &str) -> String {
    let at = text.find("verification code is ").expect("the default template's words") + "verification code is ".len();
    text[at..].chars().take_while(char::is_ascii_digit).collect()
}

/// The magic link of a mail.
fn link_in(text: &str) -> String {
    let at = text.find("http://").expect("a link");
    text[at..].chars().take_while(|c| !c.is_whitespace() && *c != '<' && *c != '"').collect()
}

// ---- the SMS API ----

/// An SMS the API received.
#[derive(Debug, Clone)]
struct Sms {
    to: String,
    from: String,
    body: String,
}

/// A loopback HTTP server speaking Twilio's Messages API shape
/// (`POST /2010-04-01/Accounts/{sid}/Messages.json`, Basic auth, form body) and a signed
/// webhook (`POST /hook`); `failing` makes it answer 500 (after recording the message).
#[derive(Clone)]
struct SmsApi {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Sms>>>,
    notify: Arc<tokio::sync::Notify>,
    failing: Arc<AtomicBool>,
}

const SID: &str = "AC0123456789abcdef";
const SMS_TOKEN: &str = "twilio-auth-token";

impl SmsApi {
    async fn start() -> Self {
        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = SmsApi {
            addr: listener.local_addr().unwrap(),
            messages: Arc::default(),
            notify: Arc::default(),
            failing: Arc::default(),
        };
        async fn messages(
            State(api): State<SmsApi>,
            Path(sid): Path<String>,
            headers: HeaderMap,
            axum::Form(form): axum::Form<HashMap<String, String>>,
        ) -> (StatusCode, String) {
            use base64::Engine;
            let expected =
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{SMS_TOKEN}")));
            let sid = sid.trim_end_matches(".json").to_owned();
            if sid != SID || headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                return (StatusCode::UNAUTHORIZED, r#"{"code":20003,"message":"Authenticate"}"#.into());
            }
            api.record(Sms { to: form["To"].clone(), from: form["From"].clone(), body: form["Body"].clone() })
        }
        async fn hook(State(api): State<SmsApi>, headers: HeaderMap, body: axum::body::Bytes) -> (StatusCode, String) {
            let signature = headers.get("x-postern-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let t = signature.split(',').find_map(|p| p.strip_prefix("t=")).unwrap_or_default();
            let expected = postern_connector_passwordless::sms::signature(SMS_TOKEN, t.parse().unwrap_or(0), &body);
            if signature != expected {
                return (StatusCode::UNAUTHORIZED, "bad signature".into());
            }
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            api.record(Sms {
                to: json["to"].as_str().unwrap().into(),
                from: json["from"].as_str().unwrap().into(),
                body: json["body"].as_str().unwrap().into(),
            })
        }
        // Twilio's Account resource, which TestConnection reads.
        async fn account(Path(sid): Path<String>, headers: HeaderMap) -> (StatusCode, String) {
            use base64::Engine;
            let expected =
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{SMS_TOKEN}")));
            if sid != format!("{SID}.json") {
                return (StatusCode::NOT_FOUND, r#"{"code":20404,"message":"not found"}"#.into());
            }
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                return (StatusCode::UNAUTHORIZED, r#"{"code":20003,"message":"Authenticate"}"#.into());
            }
            (StatusCode::OK, format!(r#"{{"sid":"{SID}","friendly_name":"Fabrikam SMS","status":"active"}}"#))
        }
        let app = axum::Router::new()
            .route("/2010-04-01/Accounts/{sid}", axum::routing::get(account))
            .route("/2010-04-01/Accounts/{sid}/Messages.json", axum::routing::post(messages))
            .route("/hook", axum::routing::post(hook))
            .with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        api
    }

    fn record(&self, sms: Sms) -> (axum::http::StatusCode, String) {
        self.messages.lock().unwrap().push(sms);
        self.notify.notify_waiters();
        if self.failing.load(Ordering::SeqCst) {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "the carrier is down".into());
        }
        (axum::http::StatusCode::CREATED, r#"{"sid":"SM1","status":"queued"}"#.into())
    }

    /// The `seen`-th message (from 0) to `to`, waiting for it.
    async fn sms_to(&self, to: &str, seen: usize) -> Sms {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.notify.notified();
                if let Some(m) = self.messages.lock().unwrap().iter().filter(|m| m.to == to).nth(seen) {
                    return m.clone();
                }
                notified.await;
            }
        })
        .await
        .expect("the SMS arrived in time")
    }

    fn count_to(&self, to: &str) -> usize {
        self.messages.lock().unwrap().iter().filter(|m| m.to == to).count()
    }
}

// ---- set-up ----

/// A suite on a manual clock (starting now), with a tenant and a regular web client.
async fn suite() -> (Suite, Clock, Clients, tenant::Client) {
    let clock = Clock::manual(postern_common::time::now_micros());
    let c = clock.clone();
    let suite = Suite::start_with(|s| s.clock = Some(c)).await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant(TENANT).await.expect("tenant");
    let client = admin.create_client(TENANT, "Fabrikam <Portal>").await.expect("client");
    (suite, clock, admin, client)
}

async fn create(admin: &mut Clients, client_id: &str, c: conn::Connection) -> conn::Connection {
    let name = c.name.clone();
    let created = admin
        .connections
        .create_connection(conn::CreateConnectionRequest { tenant: TENANT.into(), connection: Some(c) })
        .await
        .expect("connection")
        .into_inner()
        .connection
        .expect("connection");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: TENANT.into(),
            connection: name,
            client_id: client_id.into(),
        })
        .await
        .expect("enable");
    created
}

fn email_connection(
    name: &str,
    port: u16,
    tls: conn::SmtpTls,
    edit: impl FnOnce(&mut conn::EmailOptions),
) -> conn::Connection {
    let mut o = conn::EmailOptions {
        from: "Fabrikam <no-reply@fabrikam.example>".into(),
        smtp_host: "127.0.0.1".into(),
        smtp_port: i32::from(port),
        smtp_tls: tls as i32,
        ..Default::default()
    };
    edit(&mut o);
    conn::Connection {
        name: name.into(),
        strategy: "email".into(),
        options: Some(conn::connection::Options::Email(o)),
        ..Default::default()
    }
}

fn sms_connection(name: &str, api: &SmsApi, edit: impl FnOnce(&mut conn::SmsOptions)) -> conn::Connection {
    let mut o = conn::SmsOptions {
        from: "+15550001111".into(),
        provider_url: format!("http://{}/2010-04-01", api.addr),
        account: SID.into(),
        token: SMS_TOKEN.into(),
        ..Default::default()
    };
    edit(&mut o);
    conn::Connection {
        name: name.into(),
        strategy: "sms".into(),
        options: Some(conn::connection::Options::Sms(o)),
        ..Default::default()
    }
}

/// Without an API key: the application calls as itself.
async fn app(
    suite: &Suite,
) -> authn::authentication_service_client::AuthenticationServiceClient<tonic::transport::Channel> {
    authn::authentication_service_client::AuthenticationServiceClient::new(suite.channel().await)
}

struct Who<'a> {
    client: &'a tenant::Client,
    connection: &'a str,
    email: &'a str,
    phone: &'a str,
    ip: &'a str,
}

impl Who<'_> {
    fn start(&self) -> authn::StartPasswordlessRequest {
        authn::StartPasswordlessRequest {
            tenant: TENANT.into(),
            client_id: self.client.client_id.clone(),
            client_secret: self.client.client_secret.clone(),
            connection: self.connection.into(),
            email: self.email.into(),
            phone_number: self.phone.into(),
            send: authn::PasswordlessSend::Code as i32,
            ip: self.ip.into(),
            auth_params: None,
        }
    }

    fn verify(&self, code: &str) -> authn::VerifyPasswordlessRequest {
        authn::VerifyPasswordlessRequest {
            tenant: TENANT.into(),
            client_id: self.client.client_id.clone(),
            client_secret: self.client.client_secret.clone(),
            connection: self.connection.into(),
            email: self.email.into(),
            phone_number: self.phone.into(),
            code: code.into(),
            ip: self.ip.into(),
            ..Default::default()
        }
    }
}

#[track_caller]
fn refused_as(r: Result<tonic::Response<authn::VerifyPasswordlessResponse>, tonic::Status>, what: &str) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}");
    assert_eq!(reason(&s).as_deref(), Some("INVALID_CODE"), "{what}: {s:?}");
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread")]
async fn email_codes_over_plain_starttls_and_authenticated_smtp() {
    let (suite, _clock, mut admin, client) = suite().await;
    let mut app = app(&suite).await;
    let plain = SmtpServer::start(false, false);
    let tls = SmtpServer::start(true, false);
    let tls_auth = SmtpServer::start(true, true);

    // A credential-less relay without TLS; one offering STARTTLS, taken opportunistically;
    // one requiring authentication, reached with required STARTTLS.
    let cases = [
        (
            "mail-plain",
            &plain,
            // By name: resolved once, checked, and connected to at the address checked.
            email_connection("mail-plain", plain.port, conn::SmtpTls::None, |o| o.smtp_host = "localhost".into()),
        ),
        (
            "mail-opportunistic",
            &tls,
            email_connection("mail-opportunistic", tls.port, conn::SmtpTls::Opportunistic, |o| {
                o.smtp_ca_certificate = tls.ca.clone();
            }),
        ),
        (
            "mail-auth",
            &tls_auth,
            email_connection("mail-auth", tls_auth.port, conn::SmtpTls::Starttls, |o| {
                o.smtp_ca_certificate = tls_auth.ca.clone();
                o.smtp_username = "mailer".into();
                o.smtp_password = "smtp-secret".into();
                o.code_template = "{{ application }} at {{ tenant }}: your verification code is {{ code }}.".into();
            }),
        ),
    ];
    for (i, (name, server, connection)) in cases.into_iter().enumerate() {
        let created = create(&mut admin, &client.client_id, connection).await;
        let email = format!("user{i}@example.com");
        let who = Who { client: &client, connection: name, email: &email, phone: "", ip: "" };
        let started = app.start_passwordless(who.start()).await.unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(started.into_inner().expires_in, 180, "Auth0's default lifetime");
        let mail = server.mail_to(&email, 0).await;
        assert!(mail.text.contains("From: Fabrikam <no-reply@fabrikam.example>"), "{name}: {}", mail.text);
        let code = code_in(&mail.text);
        assert_eq!(code.len(), 6, "{name}: a 6-digit code in {}", mail.text);
        let logged_in = app.verify_passwordless(who.verify(&code)).await.unwrap_or_else(|s| panic!("{name}: {s:?}"));
        let logged_in = logged_in.into_inner();
        let user = logged_in.user.expect("user");
        assert!(user.user_id.starts_with("email|"), "{}", user.user_id);
        assert_eq!(user.email, email);
        assert!(user.email_verified, "the email is verified by the code");
        assert!(!logged_in.id_token.is_empty());
        if name == "mail-auth" {
            // Authenticated after STARTTLS; the password sealed, never read back.
            assert_eq!(tls_auth.inbox.logins.lock().unwrap().as_slice(), [("mailer".into(), "smtp-secret".into())]);
            let Some(conn::connection::Options::Email(o)) = created.options else { panic!("email options") };
            assert!(o.smtp_password.is_empty() && o.smtp_password_set, "{o:?}");
            // The template, with the names: escaped in the HTML part only.
            assert!(
                mail.text.contains("Fabrikam <Portal> at fabrikam-public: your verification code"),
                "{}",
                mail.text
            );
            assert!(mail.text.contains("Fabrikam &lt;Portal&gt; at fabrikam-public"), "{}", mail.text);
        }
        // A second login is the same user.
        app.start_passwordless(who.start()).await.expect("again");
        let code = code_in(&server.mail_to(&email, 1).await.text);
        let again = app.verify_passwordless(who.verify(&code)).await.expect("again").into_inner();
        assert_eq!(again.user.expect("user").user_id, user.user_id);
    }

    // Required STARTTLS against a server that offers none: not delivered, UNAVAILABLE naming
    // the connection; and a user name without TLS is refused at creation.
    create(&mut admin, &client.client_id, email_connection("mail-strict", plain.port, conn::SmtpTls::Starttls, |_| {}))
        .await;
    let who = Who { client: &client, connection: "mail-strict", email: "strict@example.com", phone: "", ip: "" };
    let s = app.start_passwordless(who.start()).await.expect_err("no STARTTLS offered");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(reason(&s).as_deref(), Some("PASSWORDLESS_DELIVERY_FAILED"));
    assert!(s.message().contains("mail-strict"), "{}", s.message());
    assert_eq!(plain.count_to("strict@example.com"), 0);
    let s = admin
        .connections
        .create_connection(conn::CreateConnectionRequest {
            tenant: TENANT.into(),
            connection: Some(email_connection("mail-leaky", plain.port, conn::SmtpTls::None, |o| {
                o.smtp_username = "mailer".into();
                o.smtp_password = "smtp-secret".into();
            })),
        })
        .await
        .expect_err("a password in plaintext");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(postern_testkit::violated_fields(&s).iter().any(|f| f.ends_with("smtp_tls")), "{s:?}");

    // A server that takes the connection and never answers: the start fails in bounded time,
    // UNAVAILABLE naming the connection (not the caller's deadline).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().flatten() {
            holder.lock().unwrap().push(stream);
        }
    });
    create(&mut admin, &client.client_id, email_connection("mail-silent", silent_port, conn::SmtpTls::None, |_| {}))
        .await;
    let who = Who { client: &client, connection: "mail-silent", email: "silent@example.com", phone: "", ip: "" };
    let began = std::time::Instant::now();
    let s = app.start_passwordless(who.start()).await.expect_err("a server that never answers");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(reason(&s).as_deref(), Some("PASSWORDLESS_DELIVERY_FAILED"), "{s:?}");
    assert!(s.message().contains("mail-silent"), "{}", s.message());
    assert!(began.elapsed() < Duration::from_secs(25), "{:?}", began.elapsed());
    assert!(!held.lock().unwrap().is_empty(), "it was reached");

    // Bad input names the field.
    let who = Who { client: &client, connection: "mail-plain", email: "not-an-address", phone: "", ip: "" };
    let s = app.start_passwordless(who.start()).await.expect_err("bad email");
    assert_eq!(postern_testkit::violated_fields(&s), ["email"], "{s:?}");
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn code_semantics_attempts_resend_expiry_concurrency_limits_and_failures() {
    let (suite, clock, mut admin, client) = suite().await;
    let mut app = app(&suite).await;
    let api = SmsApi::start().await;
    create(&mut admin, &client.client_id, sms_connection("sms", &api, |_| {})).await;
    let sms_code = |m: &Sms| code_in(&m.body);

    // A new user: created by the first verification, its phone number verified.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550100", ip: "203.0.113.1" };
    app.start_passwordless(who.start()).await.expect("start");
    let sms = api.sms_to("+14155550100", 0).await;
    assert_eq!(sms.from, "+15550001111");
    let user = app.verify_passwordless(who.verify(&sms_code(&sms))).await.expect("verify").into_inner().user.unwrap();
    assert!(user.user_id.starts_with("sms|"), "{}", user.user_id);
    assert_eq!((user.phone_number.as_str(), user.phone_verified), ("+14155550100", true));
    // Used once only.
    refused_as(app.verify_passwordless(who.verify(&sms_code(&sms))).await, "a used code");

    // The 4th attempt is refused even with the right code.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550101", ip: "203.0.113.2" };
    app.start_passwordless(who.start()).await.expect("start");
    let code = sms_code(&api.sms_to("+14155550101", 0).await);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for n in 1..=3 {
        refused_as(app.verify_passwordless(who.verify(wrong)).await, &format!("wrong code {n}"));
    }
    refused_as(app.verify_passwordless(who.verify(&code)).await, "the right code after 3 failures");

    // An earlier code is refused after a resend; the latest works.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550102", ip: "203.0.113.3" };
    app.start_passwordless(who.start()).await.expect("start");
    let first = sms_code(&api.sms_to("+14155550102", 0).await);
    app.start_passwordless(who.start()).await.expect("resend");
    let second = sms_code(&api.sms_to("+14155550102", 1).await);
    if first != second {
        refused_as(app.verify_passwordless(who.verify(&first)).await, "the replaced code");
    }
    app.verify_passwordless(who.verify(&second)).await.expect("the latest code");

    // Refused after its lifetime (180 s), on the suite's clock.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550103", ip: "203.0.113.4" };
    app.start_passwordless(who.start()).await.expect("start");
    let code = sms_code(&api.sms_to("+14155550103", 0).await);
    clock.advance(Duration::from_secs(181));
    refused_as(app.verify_passwordless(who.verify(&code)).await, "an expired code");
    app.start_passwordless(who.start()).await.expect("start again");
    let code = sms_code(&api.sms_to("+14155550103", 1).await);
    clock.advance(Duration::from_secs(179));
    app.verify_passwordless(who.verify(&code)).await.expect("within its lifetime");

    // 20 concurrent verifications of one code: one login.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550104", ip: "203.0.113.5" };
    app.start_passwordless(who.start()).await.expect("start");
    let code = sms_code(&api.sms_to("+14155550104", 0).await);
    let tries = (0..20).map(|_| {
        let mut app = app.clone();
        let req = who.verify(&code);
        tokio::spawn(async move { app.verify_passwordless(req).await })
    });
    let answers = futures_util::future::join_all(tries).await;
    let passed = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
    assert_eq!(passed, 1, "one code, one login: {answers:?}");
    // And 20 concurrent wrong guesses use up the attempts: the right code is then void.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550105", ip: "203.0.113.6" };
    app.start_passwordless(who.start()).await.expect("start");
    let code = sms_code(&api.sms_to("+14155550105", 0).await);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let tries = (0..20).map(|_| {
        let mut app = app.clone();
        let req = who.verify(wrong);
        tokio::spawn(async move { app.verify_passwordless(req).await })
    });
    for a in futures_util::future::join_all(tries).await {
        assert!(a.expect("task").is_err());
    }
    refused_as(app.verify_passwordless(who.verify(&code)).await, "the right code after 20 concurrent guesses");

    // Rate limits: 5 starts per recipient in 10 minutes, then RESOURCE_EXHAUSTED until the
    // window passes; 30 per address in an hour.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550106", ip: "203.0.113.7" };
    for n in 1..=5 {
        app.start_passwordless(who.start()).await.unwrap_or_else(|s| panic!("start {n}: {s:?}"));
    }
    let s = app.start_passwordless(who.start()).await.expect_err("the 6th start");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(reason(&s).as_deref(), Some("PASSWORDLESS_RATE_LIMITED"));
    assert_eq!(api.count_to("+14155550106"), 5, "nothing sent past the limit");
    clock.advance(Duration::from_secs(601));
    app.start_passwordless(who.start()).await.expect("a new window");
    for n in 0..30 {
        let phone = format!("+1415555{:04}", 2000 + n);
        let who = Who { client: &client, connection: "sms", email: "", phone: &phone, ip: "198.51.100.9" };
        app.start_passwordless(who.start()).await.unwrap_or_else(|s| panic!("address start {n}: {s:?}"));
    }
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155553000", ip: "198.51.100.9" };
    let s = app.start_passwordless(who.start()).await.expect_err("the 31st start from one address");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    // A call without the client's secret (a public client's, which anyone may make) reporting
    // an address would let anyone step around the limit per address: refused, and its calls
    // count against their own address.
    let spa = tenant::Client {
        name: "Fabrikam SPA".into(),
        app_type: tenant::AppType::Spa as i32,
        callbacks: vec![CALLBACK.into()],
        ..Default::default()
    };
    let spa = admin
        .clients
        .create_client(tenant::CreateClientRequest { tenant: TENANT.into(), client: Some(spa) })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    admin
        .connections
        .enable_client(conn::EnableClientRequest {
            tenant: TENANT.into(),
            connection: "sms".into(),
            client_id: spa.client_id.clone(),
        })
        .await
        .expect("enable");
    let public = tenant::Client { client_secret: String::new(), ..spa.clone() };
    let who = Who { client: &public, connection: "sms", email: "", phone: "+14155553001", ip: "198.51.100.10" };
    let s = app.start_passwordless(who.start()).await.expect_err("a reported address without the secret");
    assert_eq!(postern_testkit::violated_fields(&s), ["ip"], "{s:?}");
    let s = app.verify_passwordless(who.verify("123456")).await.expect_err("the same at verification");
    assert_eq!(postern_testkit::violated_fields(&s), ["ip"], "{s:?}");
    assert_eq!(api.count_to("+14155553001"), 0);
    let who = Who { client: &public, connection: "sms", email: "", phone: "+14155553001", ip: "" };
    app.start_passwordless(who.start()).await.expect("counted against the caller's own address");
    let code = sms_code(&api.sms_to("+14155553001", 0).await);
    app.verify_passwordless(who.verify(&code)).await.expect("a public client logs its user in");
    // With the secret, the application's backend may report its user's address.
    let who = Who { client: &spa, connection: "sms", email: "", phone: "+14155553002", ip: "198.51.100.10" };
    app.start_passwordless(who.start()).await.expect("the backend of a public client, with its secret");

    // A failed delivery: UNAVAILABLE naming the connection, and no code valid (neither the
    // undelivered one nor the one it replaced).
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550107", ip: "203.0.113.8" };
    app.start_passwordless(who.start()).await.expect("start");
    let delivered = sms_code(&api.sms_to("+14155550107", 0).await);
    api.failing.store(true, Ordering::SeqCst);
    let s = app.start_passwordless(who.start()).await.expect_err("the provider fails");
    api.failing.store(false, Ordering::SeqCst);
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("\"sms\""), "names the connection: {}", s.message());
    let undelivered = sms_code(&api.sms_to("+14155550107", 1).await);
    refused_as(app.verify_passwordless(who.verify(&undelivered)).await, "the undelivered code");
    refused_as(app.verify_passwordless(who.verify(&delivered)).await, "the replaced code");

    // Signup disabled: a start for an unknown number answers the same and sends nothing; a
    // known user still logs in.
    create(&mut admin, &client.client_id, sms_connection("sms-closed", &api, |o| o.disable_signup = true)).await;
    let who = Who { client: &client, connection: "sms-closed", email: "", phone: "+14155550108", ip: "203.0.113.9" };
    let answer = app.start_passwordless(who.start()).await.expect("same answer").into_inner();
    assert_eq!(answer.expires_in, 180);
    assert_eq!(api.count_to("+14155550108"), 0, "nothing sent to an unknown recipient");
    refused_as(app.verify_passwordless(who.verify("123456")).await, "no code was sent");

    // E.164 only; a wrong client secret is refused before anything is sent.
    let who = Who { client: &client, connection: "sms", email: "", phone: "4155550109", ip: "" };
    let s = app.start_passwordless(who.start()).await.expect_err("not E.164");
    assert_eq!(postern_testkit::violated_fields(&s), ["phone_number"], "{s:?}");
    let mut req = Who { client: &client, connection: "sms", email: "", phone: "+14155550109", ip: "" }.start();
    req.client_secret = "wrong".into();
    let s = app.start_passwordless(req).await.expect_err("wrong secret");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(api.count_to("+14155550109"), 0);
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_sms_is_signed_and_the_token_endpoint_takes_the_otp_grant() {
    let (suite, _clock, mut admin, client) = suite().await;
    let mut app = app(&suite).await;
    let api = SmsApi::start().await;
    create(
        &mut admin,
        &client.client_id,
        sms_connection("sms-hook", &api, |o| {
            o.provider = conn::SmsProvider::Webhook as i32;
            o.provider_url = format!("http://{}/hook", api.addr);
            o.account.clear();
            o.template = "{{ code }} is your {{ application }} code".into();
        }),
    )
    .await;
    let who = Who { client: &client, connection: "sms-hook", email: "", phone: "+33612345678", ip: "" };
    app.start_passwordless(who.start()).await.expect("start");
    let sms = api.sms_to("+33612345678", 0).await;
    assert!(sms.body.ends_with(" is your Fabrikam <Portal> code"), "plain text, unescaped: {}", sms.body);
    let code: String = sms.body.chars().take_while(char::is_ascii_digit).collect();

    // The token endpoint: Auth0's passwordless grant, advertised in discovery.
    let (status, _, doc) =
        postern_testkit::http_get(suite.http, &format!("/{TENANT}/.well-known/openid-configuration")).await.unwrap();
    assert_eq!(status, 200);
    assert!(doc.contains("http://auth0.com/oauth/grant-type/passwordless/otp"), "{doc}");
    let token_url = format!("http://{}/{TENANT}/oauth/token", suite.http);
    let form = |otp: &str| -> Vec<(String, String)> {
        [
            ("grant_type", "http://auth0.com/oauth/grant-type/passwordless/otp"),
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.as_str()),
            ("realm", "sms-hook"),
            ("username", "+33612345678"),
            ("otp", otp),
            ("scope", "openid profile"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused = Agent::new().post_form(&token_url, &form(wrong)).await.unwrap();
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("invalid_grant"), "{}", refused.body);
    let answer = Agent::new().post_form(&token_url, &form(&code)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert!(json["id_token"].as_str().is_some_and(|t| t.split('.').count() == 3), "{json}");
    let replay = Agent::new().post_form(&token_url, &form(&code)).await.unwrap();
    assert_eq!(replay.status, 400, "a code is used once: {}", replay.body);
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_connection_opens_the_smtp_session_and_reads_the_sms_account_without_sending() {
    let (suite, _clock, mut admin, client) = suite().await;
    let plain = SmtpServer::start(false, false);
    let tls_auth = SmtpServer::start(true, true);
    let other_ca = SmtpServer::start(true, false).ca.clone();
    let api = SmsApi::start().await;
    // Nothing listens on the discard port (a port found free and let go could be taken by
    // another test's server meanwhile).
    let closed_port = 9;
    let authenticated = |name: &str, ca: &str, password: &str| {
        email_connection(name, tls_auth.port, conn::SmtpTls::Starttls, |o| {
            o.smtp_ca_certificate = ca.into();
            o.smtp_username = "mailer".into();
            o.smtp_password = password.into();
        })
    };
    let connections = [
        email_connection("mail-plain", plain.port, conn::SmtpTls::None, |_| {}),
        email_connection("mail-opportunistic", plain.port, conn::SmtpTls::Opportunistic, |_| {}),
        authenticated("mail-auth", &tls_auth.ca, "smtp-secret"),
        authenticated("mail-wrong-password", &tls_auth.ca, "not-the-secret"),
        authenticated("mail-wrong-ca", &other_ca, "smtp-secret"),
        email_connection("mail-strict", plain.port, conn::SmtpTls::Starttls, |_| {}),
        // The server requires AUTH; the connection sends none.
        email_connection("mail-no-credentials", tls_auth.port, conn::SmtpTls::Starttls, |o| {
            o.smtp_ca_certificate = tls_auth.ca.clone();
        }),
        email_connection("mail-down", closed_port, conn::SmtpTls::None, |_| {}),
        sms_connection("sms-twilio", &api, |_| {}),
        sms_connection("sms-wrong-token", &api, |o| o.token = "not-the-token".into()),
        sms_connection("sms-no-account", &api, |o| o.account = "AC0000000000000000".into()),
        sms_connection("sms-hook", &api, |o| {
            o.provider = conn::SmsProvider::Webhook as i32;
            o.provider_url = format!("http://{}/hook", api.addr);
            o.account.clear();
        }),
        sms_connection("sms-hook-down", &api, |o| {
            o.provider = conn::SmsProvider::Webhook as i32;
            o.provider_url = format!("http://127.0.0.1:{closed_port}/hook");
            o.account.clear();
        }),
    ];
    for c in connections {
        create(&mut admin, &client.client_id, c).await;
    }

    // (connection, the steps in order, the step that fails if one does, what its detail says).
    let cases: [(&str, &[&str], Option<&str>, &str); 13] = [
        ("mail-plain", &["templates", "connect", "sender"], None, "accepts mail from no-reply@fabrikam.example"),
        ("mail-opportunistic", &["templates", "connect", "start_tls", "sender"], None, "nothing was sent"),
        ("mail-auth", &["templates", "connect", "start_tls", "authenticate", "sender"], None, "accepts mail from"),
        (
            "mail-no-credentials",
            &["templates", "connect", "start_tls", "sender"],
            Some("sender"),
            "the server offers AUTH and the connection sends no smtp_username",
        ),
        (
            "mail-wrong-password",
            &["templates", "connect", "start_tls", "authenticate"],
            Some("authenticate"),
            "check smtp_username and smtp_password",
        ),
        ("mail-wrong-ca", &["templates", "connect", "start_tls"], Some("start_tls"), "STARTTLS failed"),
        ("mail-strict", &["templates", "connect", "start_tls"], Some("start_tls"), "smtp_tls requires"),
        ("mail-down", &["templates", "connect"], Some("connect"), &format!("127.0.0.1:{closed_port}")),
        ("sms-twilio", &["template", "account"], None, "(Fabrikam SMS) answered with the token"),
        ("sms-wrong-token", &["template", "account"], Some("account"), "check account and token"),
        ("sms-no-account", &["template", "account"], Some("account"), "no such account"),
        ("sms-hook", &["template", "webhook"], None, "a signed message is not tried"),
        ("sms-hook-down", &["template", "webhook"], Some("webhook"), "Connection refused"),
    ];
    for (name, expected, failing, said) in cases {
        let tested = admin
            .authn
            .test_connection(authn::TestConnectionRequest { tenant: TENANT.into(), connection: name.into() })
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"))
            .into_inner();
        let names: Vec<&str> = tested.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, expected, "{name}: {tested:?}");
        assert_eq!(tested.ok, failing.is_none(), "{name}: {tested:?}");
        let failed: Vec<&str> = tested.steps.iter().filter(|s| !s.ok).map(|s| s.name.as_str()).collect();
        assert_eq!(failed, failing.into_iter().collect::<Vec<_>>(), "{name}: {tested:?}");
        let last = tested.steps.last().expect("a step");
        assert!(last.detail.contains(said), "{name}: {:?} should say {said:?}", last.detail);
        let all = format!("{tested:?}");
        for secret in ["smtp-secret", "not-the-secret", SMS_TOKEN, "not-the-token"] {
            assert!(!all.contains(secret), "{name}: a secret in the answer: {all}");
        }
    }
    // The server saw the login, and nothing was sent anywhere.
    assert!(tls_auth.inbox.logins.lock().unwrap().contains(&("mailer".into(), "smtp-secret".into())));
    assert!(plain.inbox.mails.lock().unwrap().is_empty() && tls_auth.inbox.mails.lock().unwrap().is_empty());
    assert!(api.messages.lock().unwrap().is_empty(), "no SMS was sent");
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_connection_over_implicit_tls_and_starttls_at_aiosmtpd() {
    let Some(smtp) = SmtpPeer::shared("test_connection_over_implicit_tls_and_starttls_at_aiosmtpd") else {
        return;
    };
    let (suite, _clock, mut admin, client) = suite().await;
    let cases = [
        ("tried-smtps", Listener::Implicit, conn::SmtpTls::Implicit, postern_testkit::smtp::PASSWORD),
        ("tried-submission", Listener::Starttls, conn::SmtpTls::Starttls, postern_testkit::smtp::PASSWORD),
        ("tried-smtps-wrong", Listener::Implicit, conn::SmtpTls::Implicit, "not-the-password"),
    ];
    for (name, listener, tls, password) in cases {
        let connection = email_connection(name, smtp.port(listener), tls, |o| {
            o.smtp_ca_certificate = smtp.ca.clone();
            o.smtp_username = postern_testkit::smtp::USER.into();
            o.smtp_password = password.into();
        });
        create(&mut admin, &client.client_id, connection).await;
    }
    let test = |name: &str| authn::TestConnectionRequest { tenant: TENANT.into(), connection: name.into() };
    let names = |r: &authn::TestConnectionResponse| r.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();

    let smtps = admin.authn.test_connection(test("tried-smtps")).await.expect("test").into_inner();
    assert!(smtps.ok, "{smtps:?}");
    assert_eq!(names(&smtps), ["templates", "connect", "authenticate", "sender"], "no STARTTLS under implicit TLS");
    assert!(smtps.steps[1].detail.contains("over TLS from the first byte"), "{smtps:?}");
    let submission = admin.authn.test_connection(test("tried-submission")).await.expect("test").into_inner();
    assert!(submission.ok, "{submission:?}");
    assert_eq!(names(&submission), ["templates", "connect", "start_tls", "authenticate", "sender"]);
    let wrong = admin.authn.test_connection(test("tried-smtps-wrong")).await.expect("test").into_inner();
    assert!(!wrong.ok, "{wrong:?}");
    assert_eq!(names(&wrong), ["templates", "connect", "authenticate"], "stops at the refusal");
    assert!(!format!("{wrong:?}").contains("not-the-password"), "no secret: {wrong:?}");
    // The server saw each login, the right one and the refused one.
    let auths = smtp.auths(Listener::Implicit);
    assert!(auths.iter().any(|a| a.user == postern_testkit::smtp::USER && a.ok), "{auths:?}");
    assert!(auths.iter().any(|a| a.user == postern_testkit::smtp::USER && !a.ok), "{auths:?}");
    suite.stop().await.expect("stop");
}

/// The application's redirect URI in these tests (never contacted by the agent).
const CALLBACK: &str = "https://app.example.com/callback";

fn authorize_url(http: SocketAddr, client_id: &str, state: &str) -> String {
    let mut url = url::Url::parse(&format!("http://{http}/{TENANT}/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("scope", "openid email")
        .append_pair("state", state);
    url.into()
}

/// Opens `/authorize` with `agent` and answers the login page's URL and body.
async fn login_page(agent: &mut Agent, http: SocketAddr, client_id: &str, state: &str) -> (String, String) {
    let answer = agent.get(&authorize_url(http, client_id, state)).await.unwrap();
    assert_eq!(answer.status, 303, "{}", answer.body);
    let page_url = format!("http://{http}{}", answer.location().unwrap());
    let page = agent.get(&page_url).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    (page_url, page.body)
}

#[tokio::test(flavor = "multi_thread")]
async fn hosted_page_codes_and_magic_links_single_use_and_bound_to_the_browser() {
    let (suite, clock, mut admin, client) = suite().await;
    let smtp = SmtpServer::start(false, false);
    create(&mut admin, &client.client_id, email_connection("email", smtp.port, conn::SmtpTls::None, |_| {})).await;
    create(
        &mut admin,
        &client.client_id,
        email_connection("email-link", smtp.port, conn::SmtpTls::None, |o| {
            o.magic_link = true;
            o.magic_link_same_browser = true;
        }),
    )
    .await;
    let api = SmsApi::start().await;
    create(&mut admin, &client.client_id, sms_connection("sms", &api, |_| {})).await;

    // The code: the page's email form, then its code form. The forms post to one address
    // each, the tenant's absolute path, wherever the page is shown.
    let mut browser = Agent::new();
    let (page_url, body) = login_page(&mut browser, suite.http, &client.client_id, "c1").await;
    assert!(body.contains(r#"type="email" autocomplete="email""#), "{body}");
    assert!(body.contains(r#"type="tel" autocomplete="tel""#), "{body}");
    let forms = postern_testkit::web::forms(&body);
    let mut start = forms
        .iter()
        .find(|f| f.action == format!("/{TENANT}/passwordless/start") && f.value("connection") == Some("email"))
        .expect("the email code form")
        .clone();
    // A refused address: the page again, at the form's address, whose forms still work.
    start.set("recipient", "not-an-address");
    let refused = browser.submit(&page_url, &start).await.unwrap();
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("recipient"), "says which field: {}", refused.body);
    let refused_url = format!("http://{}/{TENANT}/passwordless/start", suite.http);
    let mut start = refused
        .forms()
        .into_iter()
        .find(|f| f.action == format!("/{TENANT}/passwordless/start") && f.value("connection") == Some("email"))
        .expect("the email code form again");
    assert!(
        refused.forms().iter().all(|f| f.action.starts_with(&format!("/{TENANT}/"))),
        "every form posts to the tenant's absolute path: {}",
        refused.body
    );
    start.set("recipient", "page.user@example.com");
    let sent = browser.submit(&refused_url, &start).await.unwrap();
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert!(sent.body.contains(r#"autocomplete="one-time-code" inputmode="numeric""#), "{}", sent.body);
    let code = code_in(&smtp.mail_to("page.user@example.com", 0).await.text);
    let mut verify = sent.forms().into_iter().find(|f| f.action.ends_with("passwordless/verify")).expect("code form");
    verify.set("code", "000000x");
    let wrong = browser.submit(&page_url, &verify).await.unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("wrong, expired or used-up"), "{}", wrong.body);
    verify.set("code", &code);
    let done = browser.submit(&page_url, &verify).await.unwrap();
    assert_eq!(done.status, 303, "{}", done.body);
    let back = done.location().unwrap();
    assert!(back.starts_with(CALLBACK) && back.contains("code=") && back.contains("state=c1"), "{back}");

    // The magic link: single use, and only in the browser that asked for it.
    let mut asking = Agent::new();
    let (page_url, body) = login_page(&mut asking, suite.http, &client.client_id, "l1").await;
    let mut start = postern_testkit::web::forms(&body)
        .into_iter()
        .find(|f| f.action.ends_with("passwordless/start") && f.value("connection") == Some("email-link"))
        .expect("the link form");
    assert_eq!(start.value("send"), Some("link"));
    start.set("recipient", "link.user@example.com");
    let sent = asking.submit(&page_url, &start).await.unwrap();
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert!(sent.body.contains("Check your email"), "{}", sent.body);
    let link = link_in(&smtp.mail_to("link.user@example.com", 0).await.text);
    assert!(link.contains("/passwordless/verify_redirect?token="), "{link}");
    let elsewhere = Agent::new().get(&link).await.unwrap();
    assert_eq!(elsewhere.status, 400, "another browser: {}", elsewhere.body);
    let used = asking.get(&link).await.unwrap();
    assert_eq!(used.status, 303, "{}", used.body);
    let back = used.location().unwrap();
    assert!(back.starts_with(CALLBACK) && back.contains("state=l1"), "the original authorization completes: {back}");
    let twice = asking.get(&link).await.unwrap();
    assert_eq!(twice.status, 400, "a link is used once: {}", twice.body);

    // A link living longer than the page's transaction (10 minutes) works all its life, in
    // the browser that asked, whose CSRF cookie lives as long.
    create(
        &mut admin,
        &client.client_id,
        email_connection("email-slow", smtp.port, conn::SmtpTls::None, |o| {
            o.magic_link = true;
            o.magic_link_same_browser = true;
            o.code_lifetime_seconds = 1800;
        }),
    )
    .await;
    let mut asking = Agent::new();
    let (page_url, body) = login_page(&mut asking, suite.http, &client.client_id, "slow").await;
    let mut start = postern_testkit::web::forms(&body)
        .into_iter()
        .find(|f| f.action.ends_with("passwordless/start") && f.value("connection") == Some("email-slow"))
        .expect("the slow link form");
    start.set("recipient", "slow.user@example.com");
    let sent = asking.submit(&page_url, &start).await.unwrap();
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert!(sent.body.contains("expires in 30 minutes"), "{}", sent.body);
    let cookie = sent.headers.iter().find(|(k, v)| k == "set-cookie" && v.starts_with("postern_csrf_"));
    let max_age: i64 = cookie
        .and_then(|(_, v)| v.split("; ").find_map(|p| p.strip_prefix("Max-Age=")))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("the CSRF cookie again, for as long as the link: {:?}", sent.headers));
    assert!((1790..=1800).contains(&max_age), "{max_age}");
    let link = link_in(&smtp.mail_to("slow.user@example.com", 0).await.text);
    clock.advance(Duration::from_secs(25 * 60));
    let used = asking.get(&link).await.unwrap();
    assert_eq!(used.status, 303, "after 25 minutes: {}", used.body);
    assert!(used.location().unwrap().contains("state=slow"), "{:?}", used.location());
    suite.stop().await.expect("stop");
}

/// The application's side for the real browser: a loopback HTTP server that answers every
/// request with a small page and reports each request's target.
async fn loopback_app() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/callback", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let target = String::from_utf8_lossy(&got).split(' ').nth(1).unwrap_or_default().to_owned();
                let page = "<html><body><h1 id=app>The application</h1></body></html>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                if !target.starts_with("/favicon") {
                    let _ = tx.send(target);
                }
            });
        }
    });
    (url, rx)
}

async fn next_request(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, browser: &Browser) -> String {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(target)) => target,
        _ => panic!(
            "the browser did not reach the application; it is at {:?} showing {}",
            browser.url().await.map(|u| u.to_string()),
            browser.source().await.unwrap_or_default()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_logs_in_with_an_emailed_code_and_with_a_magic_link() {
    let Some(browser) = Browser::open("a_browser_logs_in_with_an_emailed_code_and_with_a_magic_link").await else {
        return;
    };
    let (suite, _clock, mut admin, _) = suite().await;
    let (callback, mut requests) = loopback_app().await;
    let client = tenant::Client {
        name: "Fabrikam Customer Portal".into(),
        app_type: tenant::AppType::RegularWeb as i32,
        callbacks: vec![callback.clone()],
        ..Default::default()
    };
    let client = admin
        .clients
        .create_client(tenant::CreateClientRequest { tenant: TENANT.into(), client: Some(client) })
        .await
        .expect("client")
        .into_inner()
        .client
        .expect("client");
    let smtp = SmtpServer::start(false, false);
    create(&mut admin, &client.client_id, email_connection("email", smtp.port, conn::SmtpTls::None, |_| {})).await;
    let link_connection = email_connection("email-link", smtp.port, conn::SmtpTls::None, |o| o.magic_link = true);
    create(&mut admin, &client.client_id, link_connection).await;
    let authorize = |state: &str| {
        let mut url = url::Url::parse(&format!("http://{}/{TENANT}/authorize", suite.http)).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &callback)
            .append_pair("scope", "openid email")
            .append_pair("state", state);
        String::from(url)
    };

    // An emailed code ("email" is the first passwordless connection on the page).
    browser.goto(&authorize("b1")).await.expect("authorize");
    browser.fill("#passwordless-email-1", "browser.user@example.com").await.expect("email");
    browser.click("form:has(#passwordless-email-1) [type=submit]").await.expect("send");
    let code = code_in(&smtp.mail_to("browser.user@example.com", 0).await.text);
    browser.fill("input[autocomplete=one-time-code]", &code).await.expect("code");
    browser.click("form[action*=verify] [type=submit]").await.expect("continue");
    let target = next_request(&mut requests, &browser).await;
    assert!(target.contains("state=b1") && target.contains("code="), "{target}");

    // A magic link, in the same browser after logging out.
    browser.goto(&format!("http://{}/{TENANT}/v2/logout", suite.http)).await.expect("logout");
    browser.goto(&authorize("b2")).await.expect("authorize");
    browser.fill("#passwordless-email-2", "browser.user@example.com").await.expect("email");
    browser.click("form:has(#passwordless-email-2) [type=submit]").await.expect("send");
    browser.find("#sent").await.expect("check your email");
    let link = link_in(&smtp.mail_to("browser.user@example.com", 1).await.text);
    browser.goto(&link).await.expect("open the link");
    let target = next_request(&mut requests, &browser).await;
    assert!(target.contains("state=b2") && target.contains("code="), "{target}");
    browser.close().await.expect("close");
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn email_over_implicit_tls_required_starttls_and_an_opportunistic_relay_at_aiosmtpd() {
    let Some(smtp) =
        SmtpPeer::shared("email_over_implicit_tls_required_starttls_and_an_opportunistic_relay_at_aiosmtpd")
    else {
        return;
    };
    let (suite, _clock, mut admin, client) = suite().await;
    let mut app = app(&suite).await;

    // Each transport mode of the issue against an SMTP server of another implementation:
    // SMTPS (TLS from the first byte) with authentication, required STARTTLS with
    // authentication, and a credential-less relay taking STARTTLS when offered.
    let cases = [
        ("mail-smtps", Listener::Implicit, conn::SmtpTls::Implicit, true),
        ("mail-submission", Listener::Starttls, conn::SmtpTls::Starttls, true),
        ("mail-relay", Listener::Opportunistic, conn::SmtpTls::Opportunistic, false),
    ];
    for (name, listener, tls, auth) in cases {
        let connection = email_connection(name, smtp.port(listener), tls, |o| {
            o.smtp_ca_certificate = smtp.ca.clone();
            if auth {
                o.smtp_username = postern_testkit::smtp::USER.into();
                o.smtp_password = postern_testkit::smtp::PASSWORD.into();
            }
        });
        create(&mut admin, &client.client_id, connection).await;
        let email = format!("{name}@aiosmtpd.example");
        let who = Who { client: &client, connection: name, email: &email, phone: "", ip: "" };
        app.start_passwordless(who.start()).await.unwrap_or_else(|s| panic!("{name}: {s:?}"));
        let mail = smtp.mail_to(&email, 0, WAIT).await.unwrap_or_else(|| panic!("{name}: no mail"));
        assert_eq!(mail.listener, format!("{listener:?}").to_lowercase(), "{name}");
        assert!(mail.tls, "{name}: the session was encrypted");
        assert_eq!(mail.login.as_deref(), auth.then_some(postern_testkit::smtp::USER), "{name}");
        assert_eq!(mail.from, "no-reply@fabrikam.example", "{name}");
        assert_eq!(mail.subject, "Your verification code", "{name}");
        let code = code_in(&mail.text);
        assert_eq!(code.len(), 6, "{name}: {}", mail.text);
        assert!(mail.html.contains(&code), "{name}: the HTML part too: {}", mail.html);
        let user = app.verify_passwordless(who.verify(&code)).await.unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(user.into_inner().user.expect("user").email, email, "{name}");
    }

    // A server whose certificate chains to no trusted root (no smtp_ca_certificate): refused
    // before anything is sent, over implicit TLS and STARTTLS alike.
    for (name, listener, tls) in [
        ("mail-untrusted-smtps", Listener::Implicit, conn::SmtpTls::Implicit),
        ("mail-untrusted-submission", Listener::Starttls, conn::SmtpTls::Starttls),
    ] {
        let connection = email_connection(name, smtp.port(listener), tls, |o| {
            o.smtp_username = postern_testkit::smtp::USER.into();
            o.smtp_password = postern_testkit::smtp::PASSWORD.into();
        });
        create(&mut admin, &client.client_id, connection).await;
        let email = format!("{name}@aiosmtpd.example");
        let who = Who { client: &client, connection: name, email: &email, phone: "", ip: "" };
        let s = app.start_passwordless(who.start()).await.expect_err("an untrusted server");
        assert_eq!(s.code(), Code::Unavailable, "{name}: {s:?}");
        assert_eq!(reason(&s).as_deref(), Some("PASSWORDLESS_DELIVERY_FAILED"), "{name}");
        assert_eq!(smtp.count_to(&email), 0, "{name}");
    }

    // A wrong password: the server says so, nothing is delivered, no code is valid.
    let auths_before = smtp.auths(Listener::Implicit).len();
    let connection =
        email_connection("mail-wrong-password", smtp.port(Listener::Implicit), conn::SmtpTls::Implicit, |o| {
            o.smtp_ca_certificate = smtp.ca.clone();
            o.smtp_username = postern_testkit::smtp::USER.into();
            o.smtp_password = "not-the-password".into();
        });
    create(&mut admin, &client.client_id, connection).await;
    let who = Who {
        client: &client,
        connection: "mail-wrong-password",
        email: "wrong-password@aiosmtpd.example",
        phone: "",
        ip: "",
    };
    let s = app.start_passwordless(who.start()).await.expect_err("a wrong SMTP password");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("mail-wrong-password"), "{}", s.message());
    assert!(!s.message().contains("not-the-password"), "never the secret: {}", s.message());
    let tried = smtp.auths(Listener::Implicit);
    assert!(tried[auths_before..].iter().any(|a| a.user == "mailer" && !a.ok), "{tried:?}");
    assert_eq!(smtp.count_to("wrong-password@aiosmtpd.example"), 0);
    suite.stop().await.expect("stop");
}

/// An application's PKCE verifier in the gRPC magic link test, and its S256 challenge.
const LINK_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const LINK_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The claims of a JWT, unverified (its signature is checked elsewhere).
fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let body = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).expect("base64url"))
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_magic_link_started_over_grpc_completes_the_authorization_request_it_describes() {
    let (suite, clock, mut admin, client) = suite().await;
    let mut app = app(&suite).await;
    let smtp = SmtpServer::start(false, false);
    let links = |o: &mut conn::EmailOptions| o.magic_link = true;
    create(&mut admin, &client.client_id, email_connection("email-link", smtp.port, conn::SmtpTls::None, links)).await;
    let params = |state: &str| authn::PasswordlessAuthParams {
        redirect_uri: CALLBACK.into(),
        scope: "openid email".into(),
        state: state.into(),
        nonce: format!("nonce-{state}"),
        code_challenge: LINK_CHALLENGE.into(),
        code_challenge_method: "S256".into(),
        ..Default::default()
    };
    let start = |email: &str, send: authn::PasswordlessSend, auth_params: Option<authn::PasswordlessAuthParams>| {
        let mut r = Who { client: &client, connection: "email-link", email, phone: "", ip: "" }.start();
        r.send = send as i32;
        r.auth_params = auth_params;
        r
    };

    // A link needs the authorization request it completes, validated as /authorize does;
    // nothing is sent for a refused one.
    let to = "grpc.link@example.com";
    let s = app.start_passwordless(start(to, authn::PasswordlessSend::Link, None)).await.expect_err("no auth_params");
    assert_eq!(postern_testkit::violated_fields(&s), ["auth_params"], "{s:?}");
    // Unset, a magic_link connection sends a link when the request describes one, else a code.
    let unset = "grpc.unset@example.com";
    app.start_passwordless(start(unset, authn::PasswordlessSend::Unspecified, None)).await.expect("a code");
    let mail = smtp.mail_to(unset, 0).await;
    assert!(!mail.text.contains("verify_redirect") && code_in(&mail.text).len() == 6, "{}", mail.text);
    app.start_passwordless(start(unset, authn::PasswordlessSend::Unspecified, Some(params("u")))).await.expect("link");
    assert!(link_in(&smtp.mail_to(unset, 1).await.text).contains("verify_redirect"));
    type Edit = fn(&mut authn::PasswordlessAuthParams);
    let refusals: [(Edit, &str); 7] = [
        (|p| p.redirect_uri = "https://evil.example/callback".into(), "auth_params.redirect_uri"),
        (|p| p.redirect_uri.clear(), "auth_params.redirect_uri"),
        (|p| p.scope = "email".into(), "auth_params.scope"),
        (|p| p.response_type = "token".into(), "auth_params.response_type"),
        (|p| p.code_challenge_method = "plain".into(), "auth_params.code_challenge_method"),
        (|p| p.response_mode = "fragment".into(), "auth_params.response_mode"),
        (|p| p.response_mode = "web_message".into(), "auth_params.response_mode"),
    ];
    for (edit, field) in refusals {
        let mut p = params("bad");
        edit(&mut p);
        let s = app.start_passwordless(start(to, authn::PasswordlessSend::Link, Some(p))).await.expect_err(field);
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert_eq!(postern_testkit::violated_fields(&s), [field], "{s:?}");
    }
    let mut p = params("api");
    p.audience = "https://no-such-api.example".into();
    let s = app.start_passwordless(start(to, authn::PasswordlessSend::Link, Some(p))).await.expect_err("audience");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert_eq!(reason(&s).as_deref(), Some("ACCESS_DENIED"), "{s:?}");
    assert_eq!(smtp.count_to(to), 0, "nothing sent for a refused request");

    // The link: opened in any browser (no browser asked), it logs the user in and sends the
    // browser to the application with a code for the request described, once.
    app.start_passwordless(start(to, authn::PasswordlessSend::Link, Some(params("g1")))).await.expect("a link");
    let mail = smtp.mail_to(to, 0).await;
    assert!(
        mail.text.contains("Subject: Your login link\r\n"),
        "the default subject says what it holds: {}",
        mail.text
    );
    let link = link_in(&mail.text);
    assert!(link.contains("/passwordless/verify_redirect?token="), "{link}");
    let mut browser = Agent::new();
    let opened = browser.get(&link).await.unwrap();
    assert_eq!(opened.status, 303, "{}", opened.body);
    let back = url::Url::parse(opened.location().unwrap()).unwrap();
    assert!(back.as_str().starts_with(CALLBACK), "{back}");
    let query: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(query.get("state").map(String::as_str), Some("g1"), "{back}");
    let twice = Agent::new().get(&link).await.unwrap();
    assert_eq!(twice.status, 400, "a link is used once: {}", twice.body);

    // The application exchanges the code as after any browser login: PKCE and the nonce hold.
    let token_url = format!("http://{}/{TENANT}/oauth/token", suite.http);
    let exchange = |verifier: &str| -> Vec<(String, String)> {
        [
            ("grant_type", "authorization_code"),
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.as_str()),
            ("code", query["code"].as_str()),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    };
    let wrong = Agent::new().post_form(&token_url, &exchange(&"x".repeat(43))).await.unwrap();
    assert_eq!(wrong.status, 400, "another verifier: {}", wrong.body);
    // The code is redeemed before its verifier is checked, so the right verifier goes with a
    // fresh link.
    app.start_passwordless(start(to, authn::PasswordlessSend::Link, Some(params("g2")))).await.expect("a link");
    let link = link_in(&smtp.mail_to(to, 1).await.text);
    let opened = Agent::new().get(&link).await.unwrap();
    assert_eq!(opened.status, 303, "{}", opened.body);
    let back = url::Url::parse(opened.location().unwrap()).unwrap();
    let query: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(query.get("state").map(String::as_str), Some("g2"), "{back}");
    let exchange = [
        ("grant_type", "authorization_code"),
        ("client_id", client.client_id.as_str()),
        ("client_secret", client.client_secret.as_str()),
        ("code", query["code"].as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", LINK_VERIFIER),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect::<Vec<_>>();
    let tokens = Agent::new().post_form(&token_url, &exchange).await.unwrap();
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let tokens: serde_json::Value = serde_json::from_str(&tokens.body).unwrap();
    let id = claims(tokens["id_token"].as_str().expect("an ID token"));
    assert_eq!(id["nonce"], "nonce-g2", "{id}");
    assert_eq!(id["email"], to, "{id}");
    assert_eq!(id["email_verified"], true, "{id}");
    assert!(id["sub"].as_str().is_some_and(|s| s.starts_with("email|")), "{id}");

    // A code is still a code, and the request's parameters are not needed for one.
    app.start_passwordless(start("grpc.code@example.com", authn::PasswordlessSend::Code, Some(params("c"))))
        .await
        .expect("a code");
    let mail = smtp.mail_to("grpc.code@example.com", 0).await;
    assert!(!mail.text.contains("verify_redirect"), "{}", mail.text);
    assert_eq!(code_in(&mail.text).len(), 6);

    // A connection binding links to the browser that asked cannot send one over gRPC.
    let bound = |o: &mut conn::EmailOptions| {
        o.magic_link = true;
        o.magic_link_same_browser = true;
    };
    create(&mut admin, &client.client_id, email_connection("email-bound", smtp.port, conn::SmtpTls::None, bound)).await;
    let mut r = start("bound@example.com", authn::PasswordlessSend::Link, Some(params("b")));
    r.connection = "email-bound".into();
    let s = app.start_passwordless(r).await.expect_err("bound to a browser");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(reason(&s).as_deref(), Some("MAGIC_LINK_BOUND_TO_BROWSER"), "{s:?}");
    assert_eq!(smtp.count_to("bound@example.com"), 0);

    // A link living longer than a page's transaction (10 minutes) works all its life.
    let slow = |o: &mut conn::EmailOptions| {
        o.magic_link = true;
        o.code_lifetime_seconds = 3600;
    };
    create(&mut admin, &client.client_id, email_connection("email-slow", smtp.port, conn::SmtpTls::None, slow)).await;
    let mut r = start("slow@example.com", authn::PasswordlessSend::Link, Some(params("slow")));
    r.connection = "email-slow".into();
    assert_eq!(app.start_passwordless(r).await.expect("a link").into_inner().expires_in, 3600);
    let link = link_in(&smtp.mail_to("slow@example.com", 0).await.text);
    clock.advance(Duration::from_secs(50 * 60));
    let opened = Agent::new().get(&link).await.unwrap();
    assert_eq!(opened.status, 303, "after 50 minutes: {}", opened.body);
    assert!(opened.location().unwrap().contains("state=slow"), "{:?}", opened.location());
    suite.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passwordless_login_writes_only_what_it_proves_and_the_phone_scope_shows_the_number() {
    let (suite, _clock, mut admin, client) = suite().await;
    let mut app = app(&suite).await;
    let smtp = SmtpServer::start(false, false);
    let api = SmsApi::start().await;
    create(&mut admin, &client.client_id, email_connection("email", smtp.port, conn::SmtpTls::None, |_| {})).await;
    create(&mut admin, &client.client_id, sms_connection("sms", &api, |_| {})).await;
    let update = |user_id: &str, name: &str, path: &str| authn::UpdateUserRequest {
        tenant: TENANT.into(),
        user: Some(authn::User {
            user_id: user_id.into(),
            name: name.into(),
            email: "changed@example.com".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec![path.into()] }),
    };

    // Email: the first login creates the user; the application names it; the next login
    // (profile sync on each login, the default) proves the email again and leaves the name.
    let who = Who { client: &client, connection: "email", email: "alice@example.com", phone: "", ip: "" };
    app.start_passwordless(who.start()).await.expect("start");
    let code = code_in(&smtp.mail_to("alice@example.com", 0).await.text);
    let user = app.verify_passwordless(who.verify(&code)).await.expect("verify").into_inner().user.unwrap();
    assert_eq!((user.email.as_str(), user.nickname.as_str()), ("alice@example.com", "alice"));
    let named = admin.users.update_user(update(&user.user_id, "Alice Liddell", "name")).await.expect("a name");
    assert_eq!(named.into_inner().user.unwrap().name, "Alice Liddell");
    // The email is the source's: changing it would be undone by the next login.
    let s = admin.users.update_user(update(&user.user_id, "", "email")).await.expect_err("the proven email");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(reason(&s).as_deref(), Some("PROFILE_SYNCED_ON_EACH_LOGIN"), "{s:?}");
    app.start_passwordless(who.start()).await.expect("start");
    let code = code_in(&smtp.mail_to("alice@example.com", 1).await.text);
    let again = app.verify_passwordless(who.verify(&code)).await.expect("verify").into_inner();
    let after = again.user.unwrap();
    assert_eq!((after.user_id.as_str(), after.name.as_str()), (user.user_id.as_str(), "Alice Liddell"));
    assert_eq!(
        (after.email.as_str(), after.email_verified, after.nickname.as_str()),
        ("alice@example.com", true, "alice")
    );
    let stored = admin
        .users
        .get_user(authn::GetUserRequest { tenant: TENANT.into(), user_id: user.user_id.clone() })
        .await
        .expect("get")
        .into_inner()
        .user
        .unwrap();
    assert_eq!(stored.name, "Alice Liddell", "as stored");

    // SMS: the same, and the phone scope puts the number in the ID token and at userinfo.
    let who = Who { client: &client, connection: "sms", email: "", phone: "+14155550199", ip: "" };
    app.start_passwordless(who.start()).await.expect("start");
    let code = code_in(&api.sms_to("+14155550199", 0).await.body);
    let first = app.verify_passwordless(who.verify(&code)).await.expect("verify").into_inner();
    let user = first.user.unwrap();
    assert_eq!(user.name, "+14155550199", "named after the number until the application says otherwise");
    admin.users.update_user(update(&user.user_id, "Bob", "name")).await.expect("a name");
    app.start_passwordless(who.start()).await.expect("start");
    let code = code_in(&api.sms_to("+14155550199", 1).await.body);
    let mut req = who.verify(&code);
    req.scope = "openid phone".into();
    let login = app.verify_passwordless(req).await.expect("verify").into_inner();
    let user = login.user.unwrap();
    assert_eq!((user.name.as_str(), user.phone_number.as_str(), user.phone_verified), ("Bob", "+14155550199", true));
    let id = claims(&login.id_token);
    assert_eq!(id["phone_number"], "+14155550199", "{id}");
    assert_eq!(id["phone_number_verified"], true, "{id}");
    assert!(id.get("name").is_none(), "profile was not asked: {id}");
    let (status, _, info) = postern_testkit::http_request(
        suite.http,
        "GET",
        &format!("/{TENANT}/userinfo"),
        &[("authorization", &format!("Bearer {}", login.access_token))],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (info["phone_number"].as_str(), info["phone_number_verified"].as_bool()),
        (Some("+14155550199"), Some(true))
    );
    // Without the phone scope, no number.
    app.start_passwordless(who.start()).await.expect("start");
    let code = code_in(&api.sms_to("+14155550199", 2).await.body);
    let mut req = who.verify(&code);
    req.scope = "openid profile".into();
    let login = app.verify_passwordless(req).await.expect("verify").into_inner();
    let id = claims(&login.id_token);
    assert!(id.get("phone_number").is_none(), "{id}");
    assert_eq!(id["name"], "Bob", "{id}");
    let (_, _, doc) =
        postern_testkit::http_get(suite.http, &format!("/{TENANT}/.well-known/openid-configuration")).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["scopes_supported"].as_array().unwrap().iter().any(|s| s == "phone"), "{doc}");
    assert!(doc["claims_supported"].as_array().unwrap().iter().any(|s| s == "phone_number_verified"), "{doc}");
    suite.stop().await.expect("stop");
}
