//! Passwordless logins against real transports on loopback: an SMTP server in this process
//! (mailin-embedded: plain, with STARTTLS, with STARTTLS and authentication) receives what
//! Postern sends and the tests read the code from the delivered mail; an HTTP server speaking
//! Twilio's Messages API shape (and a signed webhook) receives the SMS. The code's semantics
//! are checked exactly, on a manual clock: the attempt after the allowed ones is refused even
//! with the right code, an earlier code is refused after a resend, a code is refused after
//! its lifetime, 20 concurrent verifications of one code let one through, the rate limits
//! hold, a failed delivery leaves no code valid. The token endpoint's passwordless grant, the
//! hosted page's forms and magic links (single use, bound to the browser), and a real browser
//! logging in with an emailed code and with a magic link complete the picture.

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
        let app = axum::Router::new()
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
        ("mail-plain", &plain, email_connection("mail-plain", plain.port, conn::SmtpTls::None, |_| {})),
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
    let (suite, _clock, mut admin, client) = suite().await;
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

    // The code: the page's email form, then its code form.
    let mut browser = Agent::new();
    let (page_url, body) = login_page(&mut browser, suite.http, &client.client_id, "c1").await;
    assert!(body.contains(r#"type="email" autocomplete="email""#), "{body}");
    let forms = postern_testkit::web::forms(&body);
    let mut start = forms
        .iter()
        .find(|f| f.action.ends_with("passwordless/start") && f.value("connection") == Some("email"))
        .expect("the email code form")
        .clone();
    start.set("recipient", "page.user@example.com");
    let sent = browser.submit(&page_url, &start).await.unwrap();
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
