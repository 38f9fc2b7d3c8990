//! Email over SMTP with `lettre`. Transport security follows the connection's `smtp_tls`:
//! implicit TLS (port 465), required STARTTLS (the default, and the only choice besides
//! implicit TLS once a user name is set, so a password never crosses in plaintext),
//! opportunistic STARTTLS or none for a credential-less local relay. The server's certificate
//! must chain to the system's roots, or to the connection's `smtp_ca_certificate`. Each
//! connection has one pooled transport, kept while its settings stay the same.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::commands::{Mail, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use postern_connection::secret::names;
use postern_connection::{EmailOptions, Options, Resolved, SmtpTls};
use postern_connector::egress::{Egress, EgressError};
use postern_connector::{
    Channel, CodeConnector, CodeMessage, CodeSecret, CodeSettings, ConnectorError, TestReport, TestStep, async_trait,
};
use sha2::{Digest, Sha256};

use crate::template::{self, Vars};
use crate::{delivery_failed, echo, misconfigured, wrong_family};

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// How long an SMTP exchange may take, from the connection to the end of the message: lettre
/// bounds only the TCP connect, so a server that accepts and then stalls (in the TLS
/// handshake, the greeting, AUTH or DATA) would hold the start until the caller's deadline;
/// past this the delivery fails, naming the connection.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

/// The connector of `email` connections.
#[derive(Default)]
pub struct EmailConnector {
    /// One pooled transport per connection id.
    transports: Mutex<HashMap<String, Kept>>,
    /// Where the connector may connect: the SMTP server's name is resolved and checked
    /// before each delivery and each test.
    egress: Egress,
}

impl std::fmt::Debug for EmailConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConnector").finish_non_exhaustive()
    }
}

impl EmailConnector {
    /// A connector with no transport open yet, under the built-in egress policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connector with no transport open yet, connecting only where `egress` allows.
    pub fn with_egress(egress: &Egress) -> Self {
        Self { transports: Mutex::default(), egress: egress.clone() }
    }

    /// The pooled transport of `conn`, to one of `addresses` (those the policy admitted for
    /// the server's name, in the resolver's order): the transport kept for the connection
    /// while its settings stay the same and its address is still among them; otherwise a new
    /// one to the first address that accepts a TCP connection.
    async fn transport(
        &self,
        conn: &Resolved,
        o: &EmailOptions,
        addresses: &[SocketAddr],
    ) -> Result<Arc<Transport>, ConnectorError> {
        let password = conn.secret(names::SMTP_PASSWORD).map(|s| s.expose().to_owned()).unwrap_or_default();
        let mut digest = Sha256::new();
        digest.update(serde_json::to_vec(o).unwrap_or_default());
        digest.update([0]);
        digest.update(password.as_bytes());
        let fingerprint = hex::encode(digest.finalize());
        let id = &conn.connection.id;
        {
            let transports = self.transports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(kept) = transports.get(id)
                && kept.fingerprint == fingerprint
                && addresses.iter().any(|a| a.ip() == kept.address)
            {
                return Ok(kept.transport.clone());
            }
        }
        let address = match tokio::time::timeout(SMTP_TIMEOUT, tokio::net::TcpStream::connect(addresses)).await {
            Ok(Ok(probe)) => probe.peer_addr().map_err(|e| delivery_failed(conn, &e))?.ip(),
            Ok(Err(e)) => return Err(delivery_failed(conn, &format!("{}: {e}", o.smtp_host))),
            Err(_) => {
                let late =
                    format!("{} did not accept a connection within {} seconds", o.smtp_host, SMTP_TIMEOUT.as_secs());
                return Err(delivery_failed(conn, &late));
            }
        };
        let transport = Arc::new(build_transport(conn, o, address, &password)?);
        let kept = Kept { fingerprint, address, transport: transport.clone() };
        self.transports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.clone(), kept);
        Ok(transport)
    }
}

/// The transport kept for a connection.
struct Kept {
    /// The digest of the settings it was built from (a change of settings builds a new one).
    fingerprint: String,
    /// The address it connects to.
    address: IpAddr,
    transport: Arc<Transport>,
}

/// The TLS parameters of the connection's server: its host name, and the connection's CA
/// certificate besides the system's roots.
fn tls_parameters(conn: &Resolved, o: &EmailOptions) -> Result<TlsParameters, ConnectorError> {
    let mut b = TlsParameters::builder(o.smtp_host.clone());
    if !o.smtp_ca_certificate.is_empty() {
        let cert = Certificate::from_pem(o.smtp_ca_certificate.as_bytes())
            .map_err(|e| misconfigured(conn, "smtp_ca_certificate", &e))?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls().map_err(|e| misconfigured(conn, "smtp_ca_certificate", &e))
}

/// A pooled transport that connects to `address` (lettre would resolve a name again, after
/// the policy's check, and a name whose records changed in between would lead it elsewhere),
/// and checks the server's certificate against the host name of the options.
fn build_transport(
    conn: &Resolved,
    o: &EmailOptions,
    address: IpAddr,
    password: &str,
) -> Result<Transport, ConnectorError> {
    let tls = match o.smtp_tls {
        SmtpTls::Starttls => Tls::Required(tls_parameters(conn, o)?),
        SmtpTls::Implicit => Tls::Wrapper(tls_parameters(conn, o)?),
        SmtpTls::Opportunistic => Tls::Opportunistic(tls_parameters(conn, o)?),
        SmtpTls::None => Tls::None,
    };
    let mut builder = Transport::builder_dangerous(address.to_string())
        .port(o.effective_smtp_port())
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT))
        .pool_config(PoolConfig::new().max_size(4).idle_timeout(Duration::from_secs(60)));
    if !o.smtp_username.is_empty() {
        // The options refuse a user name without TLS (required STARTTLS or implicit).
        builder = builder.credentials(Credentials::new(o.smtp_username.clone(), password.to_owned()));
    }
    Ok(builder.build())
}

fn options(conn: &Resolved) -> Result<&EmailOptions, ConnectorError> {
    match &conn.connection.spec.options {
        Options::Email(o) => Ok(o),
        _ => Err(wrong_family(conn)),
    }
}

/// Renders the message of `m` under the connection's templates.
pub fn render(conn: &Resolved, o: &EmailOptions, m: &CodeMessage<'_>) -> Result<Message, ConnectorError> {
    let vars = Vars::of(m);
    let (body_field, body) = match m.secret {
        CodeSecret::Code(_) => ("code_template", &o.code_template),
        CodeSecret::Link { .. } => ("link_template", &o.link_template),
    };
    let subject = template::subject(&o.subject, &vars).map_err(|e| misconfigured(conn, "subject", &e))?;
    let text = template::text(body, &vars).map_err(|e| misconfigured(conn, body_field, &e))?;
    let html = template::html(body, &vars).map_err(|e| misconfigured(conn, body_field, &e))?;
    let from: Mailbox = o.from.parse().map_err(|e| misconfigured(conn, "from", &e))?;
    let to: Mailbox = m.recipient.parse().map_err(|_| ConnectorError::Refused {
        field: "email",
        message: "is not an address this server can send to".into(),
    })?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| misconfigured(conn, "from", &e))
}

#[async_trait]
impl CodeConnector for EmailConnector {
    fn settings(&self, conn: &Resolved) -> CodeSettings {
        let (length, lifetime_seconds, max_attempts, signup, link, same) = match &conn.connection.spec.options {
            Options::Email(o) => (
                o.code_length,
                o.code_lifetime_seconds,
                o.max_attempts,
                !o.disable_signup,
                o.magic_link,
                o.magic_link_same_browser,
            ),
            _ => (6, 180, 3, false, false, false),
        };
        CodeSettings {
            channel: Channel::Email,
            length,
            lifetime_seconds,
            max_attempts,
            signup,
            link_by_default: link,
            link_same_browser: same,
        }
    }

    async fn deliver(&self, _tenant: &str, conn: &Resolved, m: &CodeMessage<'_>) -> Result<(), ConnectorError> {
        let o = options(conn)?;
        let message = render(conn, o, m)?;
        // The name is resolved once, through the policy, and the transport connects to an
        // address checked, never to a second lookup.
        let addresses = match self.egress.check(&o.smtp_host, o.effective_smtp_port()).await {
            Ok(addresses) => addresses,
            Err(EgressError::Refused(refused)) => {
                let cannot = format!("connection {:?}: the SMTP server cannot be reached", conn.connection.spec.name);
                return Err(refused.connector_error(cannot));
            }
            Err(e) => return Err(delivery_failed(conn, &e)),
        };
        let transport = self.transport(conn, o, &addresses).await?;
        let failure = match tokio::time::timeout(SMTP_TIMEOUT, transport.send(message)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the SMTP server did not finish the exchange within {} seconds", SMTP_TIMEOUT.as_secs()),
        };
        // A broken pooled connection is not retried here: the caller sees the failure, and no
        // code stays valid. Forget the transport so the next send starts anew.
        self.transports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&conn.connection.id);
        Err(delivery_failed(conn, &failure))
    }

    /// Tries the connection without sending anything: `templates` (every message renders),
    /// then the SMTP session a delivery opens, step by step: `connect` (the greeting and
    /// what the server offers), `start_tls` (under STARTTLS, required or opportunistic),
    /// `authenticate` (when a user name is set), `sender` (MAIL FROM with the connection's
    /// `from`, then RSET before any recipient); then QUIT.
    async fn test(&self, _tenant: &str, conn: &Resolved) -> Result<TestReport, ConnectorError> {
        let o = options(conn)?;
        let started = Instant::now();
        let sender = check_templates(conn, o);
        let rendered = sender
            .as_ref()
            .map(|_| format!("the subject, the code and the link messages render; they come from {}", o.from));
        let mut steps = vec![TestStep::of("templates", started, rendered.map_err(String::clone))];
        if let Ok(sender) = sender {
            check_smtp(conn, o, &sender, &self.egress, &mut steps).await;
        }
        Ok(TestReport::of(steps))
    }
}

/// A sample message, to render the connection's templates without sending anything.
fn sample<'a>(o: &EmailOptions, secret: CodeSecret<'a>) -> CodeMessage<'a> {
    CodeMessage {
        recipient: "someone@example.com",
        secret,
        application: "Test application",
        tenant_name: "Test tenant",
        lifetime_seconds: o.code_lifetime_seconds,
    }
}

/// The `templates` step: the subject, the code and link bodies and the sender, rendered;
/// answers the sender's address.
fn check_templates(conn: &Resolved, o: &EmailOptions) -> Result<Address, String> {
    let code = CodeSecret::Code("123456");
    let link = CodeSecret::Link { link: "https://postern.example/passwordless/verify?code=123456", code: "123456" };
    let mut sender = None;
    for secret in [code, link] {
        let message = render(conn, o, &sample(o, secret)).map_err(|e| e.to_string())?;
        sender = message.envelope().from().cloned();
    }
    sender.ok_or_else(|| "from names no address".to_owned())
}

/// The `connect`, `start_tls`, `authenticate` and `sender` steps: the SMTP session a delivery
/// would open, up to the point where a recipient would be named, then RSET and QUIT.
async fn check_smtp(conn: &Resolved, o: &EmailOptions, sender: &Address, egress: &Egress, steps: &mut Vec<TestStep>) {
    let server = format!("{}:{}", o.smtp_host, o.effective_smtp_port());
    // The addresses checked are the ones connected to.
    let addresses = match egress.check(&o.smtp_host, o.effective_smtp_port()).await {
        Ok(a) => a,
        Err(e) => {
            steps.push(TestStep::of("connect", Instant::now(), Err(format!("{server} cannot be reached: {e}"))));
            return;
        }
    };
    let hello = ClientId::default();
    let limit = |what: &str| format!("{server} did not finish the {what} within {} seconds", SMTP_TIMEOUT.as_secs());
    let tls = match o.smtp_tls {
        SmtpTls::None => None,
        _ => match tls_parameters(conn, o) {
            Ok(p) => Some(p),
            Err(e) => {
                steps.push(TestStep::of("connect", Instant::now(), Err(e.to_string())));
                return;
            }
        },
    };

    let started = Instant::now();
    let implicit = if o.smtp_tls == SmtpTls::Implicit { tls.clone() } else { None };
    let connecting =
        AsyncSmtpConnection::connect_tokio1(addresses.as_slice(), Some(SMTP_TIMEOUT), &hello, implicit, None);
    let mut session = match tokio::time::timeout(SMTP_TIMEOUT, connecting).await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            steps.push(TestStep::of("connect", started, Err(format!("{server}: {e}"))));
            return;
        }
        Err(_) => {
            steps.push(TestStep::of("connect", started, Err(limit("greeting"))));
            return;
        }
    };
    let info = session.server_info();
    let mechanisms: Vec<String> = [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
        .into_iter()
        .filter(|m| info.supports_auth_mechanism(*m))
        .map(|m| m.to_string())
        .collect();
    let offers = format!(
        "STARTTLS {}, AUTH {}",
        if info.supports_feature(Extension::StartTls) { "offered" } else { "not offered" },
        if mechanisms.is_empty() { "not offered".to_owned() } else { mechanisms.join(" ") }
    );
    let how = if o.smtp_tls == SmtpTls::Implicit { "over TLS from the first byte" } else { "in plaintext" };
    steps.push(TestStep::of(
        "connect",
        started,
        Ok(format!("{server} greeted {how} as {:?}; {offers}", echo(info.name()))),
    ));

    let starttls = match o.smtp_tls {
        SmtpTls::Starttls | SmtpTls::Opportunistic => tls,
        SmtpTls::Implicit | SmtpTls::None => None,
    };
    if let Some(parameters) = starttls {
        let started = Instant::now();
        let result = if !session.can_starttls() {
            if o.smtp_tls == SmtpTls::Starttls {
                Err(format!("{server} does not offer STARTTLS, which the connection's smtp_tls requires"))
            } else {
                Ok(format!(
                    "{server} does not offer STARTTLS; messages go in plaintext, as smtp_tls opportunistic allows"
                ))
            }
        } else {
            match tokio::time::timeout(SMTP_TIMEOUT, session.starttls(parameters, &hello)).await {
                Ok(Ok(())) => Ok(format!("encrypted, the certificate of {} verified", o.smtp_host)),
                Ok(Err(e)) => Err(format!("{server}: STARTTLS failed: {e}")),
                Err(_) => Err(limit("TLS handshake")),
            }
        };
        if !TestStep::record(steps, "start_tls", started, result) {
            // Dropped, not aborted: after a failed handshake lettre's stream is gone, and
            // its abort would panic writing QUIT into it.
            return;
        }
    }

    if !o.smtp_username.is_empty() {
        let started = Instant::now();
        let password = conn.secret(names::SMTP_PASSWORD).map(|s| s.expose().to_owned()).unwrap_or_default();
        let credentials = Credentials::new(o.smtp_username.clone(), password);
        let result = if session.server_info().get_auth_mechanism(DEFAULT_MECHANISMS).is_none() {
            Err(format!("{server} offers neither AUTH PLAIN nor AUTH LOGIN, and the connection has a user name"))
        } else {
            match tokio::time::timeout(SMTP_TIMEOUT, session.auth(DEFAULT_MECHANISMS, &credentials)).await {
                Ok(Ok(_)) => Ok(format!("{server} accepted the user name {:?} and its password", o.smtp_username)),
                Ok(Err(e)) => Err(format!(
                    "{server} refused the user name {:?} and its password: {e} (check smtp_username and smtp_password)",
                    o.smtp_username
                )),
                Err(_) => Err(limit("authentication")),
            }
        };
        if !TestStep::record(steps, "authenticate", started, result) {
            session.abort().await;
            return;
        }
    }

    // The sender, as a delivery gives it; reset before any recipient, so nothing is sent.
    let started = Instant::now();
    let result =
        match tokio::time::timeout(SMTP_TIMEOUT, session.command(Mail::new(Some(sender.clone()), vec![]))).await {
            Ok(Ok(_)) => {
                let _ = tokio::time::timeout(SMTP_TIMEOUT, session.command(Rset)).await;
                Ok(format!("{server} accepts mail from {sender} (reset before any recipient: nothing was sent)"))
            }
            Ok(Err(e)) => {
                let hint = if o.smtp_username.is_empty()
                    && session.server_info().get_auth_mechanism(DEFAULT_MECHANISMS).is_some()
                {
                    " (the server offers AUTH and the connection sends no smtp_username)"
                } else {
                    ""
                };
                Err(format!("{server} refused the sender {sender}: {e}{hint}"))
            }
            Err(_) => Err(limit("MAIL FROM")),
        };
    if TestStep::record(steps, "sender", started, result) {
        // The session ends here; a server that drops it first has answered all that was asked.
        let _ = tokio::time::timeout(SMTP_TIMEOUT, session.quit()).await;
    } else {
        session.abort().await;
    }
}
