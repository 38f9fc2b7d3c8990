//! Passwordless logins (the one-time-code family: `email`, `sms`): the code's state machine,
//! kept in this service's store so that any replica can verify what another sent. The
//! connector ([`CodeConnector`]) only says how the connection's codes work and delivers the
//! message; drawing, storing, counting and checking codes happens here.
//!
//! - A start draws a code of the connection's length from the system's CSPRNG (and, for a
//!   magic link, a 256-bit token), stores the code as HMAC-SHA256 under a key derived from the
//!   master key (a 6-digit code's plain hash would fall to a dictionary of a million) and the
//!   token as its SHA-256, replacing the recipient's previous code, then delivers it; the code
//!   is accepted only once delivered, and a failed delivery forgets it.
//! - A verification takes one of the code's attempts atomically, compares in constant time,
//!   and uses the code once ([`crate::store::passwordless`]).
//! - Starts are rate-limited per recipient ([`PER_RECIPIENT`]) and per address
//!   ([`PER_ADDRESS`]); a start answers the same whether the recipient has a user or not.
//! - The first verification creates the user (`email|<id>`, `sms|<id>`) unless the
//!   connection disables signup, with the email or phone number verified; later ones apply
//!   the connection's profile-sync rule.

use crate::audit::{self, Facts, LoginAudit, Type};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use postern_common::error::{
    Violations, failed_precondition, invalid_field, permission_denied, status, unauthenticated,
};
use postern_common::ids::constant_time_eq;
use postern_connection::Resolved;
use postern_connector::{Channel, CodeConnector, CodeMessage, CodeSecret, CodeSettings, ExternalProfile, Profile};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use crate::api::AuthnApi;
use crate::domain::{self, User};
use crate::status::connector_status;
use crate::store::oauth::secret_digest;
use crate::store::passwordless::NewCode;
use crate::validate::{check_email, check_tenant, required};

/// A rate limit: at most `max` starts in each window of `window`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Starts allowed per window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

/// Starts allowed per recipient (email address or phone number) and connection: 5 in 10
/// minutes.
pub const PER_RECIPIENT: Limit = Limit { max: 5, window: Duration::from_secs(600) };
/// Starts allowed per end-user address (whatever the recipient): 30 in an hour.
pub const PER_ADDRESS: Limit = Limit { max: 30, window: Duration::from_secs(3600) };

/// The longest code a verification may present (longer is malformed, not wrong).
const MAX_CODE_CHARS: usize = 64;

/// Where a request names the recipient.
#[derive(Debug, Clone, Copy)]
pub enum RecipientInput<'a> {
    /// The gRPC contract's two fields: `email` for an email connection, `phone_number` for an
    /// SMS one.
    Split {
        /// The `email` field.
        email: &'a str,
        /// The `phone_number` field.
        phone_number: &'a str,
    },
    /// One field holding either (the hosted page's, the token endpoint's `username`).
    One {
        /// The field's name, for violations.
        field: &'static str,
        /// Its value.
        value: &'a str,
    },
}

/// What a start sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// The connection's default (a link for an email connection with `magic_link`).
    Default,
    /// A code.
    Code,
    /// A magic link.
    Link,
}

/// The login transaction a magic link completes.
#[derive(Debug, Clone, Copy)]
pub struct LinkTarget<'a> {
    /// The digest of the transaction id.
    pub transaction_hash: &'a str,
    /// The digest of its CSRF token (the browser binding).
    pub csrf_hash: &'a str,
}

/// Where a magic link of a start may lead.
#[derive(Debug, Clone, Copy)]
pub enum Links<'a> {
    /// Nowhere: a gRPC start without `auth_params` sends codes only.
    None,
    /// The hosted page's login transaction, in the browser that asked.
    Page(LinkTarget<'a>),
    /// The authorization request an application described over gRPC (`auth_params`), made
    /// into a transaction once a link is to be sent; no browser asked, so no browser binding.
    Described,
}

/// A passwordless start.
#[derive(Debug, Clone, Copy)]
pub struct CodeStart<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The client (already checked by the caller).
    pub client_id: &'a str,
    /// The passwordless connection; it must be enabled for the client.
    pub connection: &'a str,
    /// The recipient, as the request gives it.
    pub recipient: RecipientInput<'a>,
    /// What to send.
    pub send: SendKind,
    /// Where a link leads back to.
    pub links: Links<'a>,
    /// The end user's address (the rate limit per address).
    pub address: &'a str,
}

/// A start whose input and connection passed the checks, not yet counted nor sent
/// ([`AuthnApi::plan_start`]).
pub struct StartPlan {
    conn: Arc<Resolved>,
    connector: Arc<dyn CodeConnector>,
    settings: CodeSettings,
    recipient: String,
    /// Whether it sends a magic link (else a code).
    pub link: bool,
}

impl std::fmt::Debug for StartPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartPlan")
            .field("connection", &self.conn.connection.spec.name)
            .field("link", &self.link)
            .finish()
    }
}

impl StartPlan {
    /// The normalized email address or phone number.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// How long the code or link will stay valid.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(u64::from(self.settings.lifetime_seconds))
    }
}

/// A passwordless verification.
#[derive(Debug, Clone, Copy)]
pub struct CodeLogin<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The client (already checked by the caller); it must be the one that asked for the code.
    pub client_id: &'a str,
    /// The passwordless connection.
    pub connection: &'a str,
    /// The recipient the code went to.
    pub recipient: RecipientInput<'a>,
    /// The code typed in.
    pub code: &'a str,
    /// The end user's address.
    pub address: &'a str,
}

/// A magic link that logged its user in: the user and the login transaction it completes.
#[derive(Debug, Clone)]
pub struct LinkLogin {
    /// The user.
    pub user: User,
    /// The digest of the login transaction the link completes.
    pub transaction_hash: String,
}

/// The one refusal of every failed verification.
pub(crate) fn invalid_code() -> Status {
    unauthenticated(
        "INVALID_CODE",
        "wrong, expired or used-up verification code; check it, or ask for a new one (only the latest code counts)",
    )
}

fn invalid_link() -> Status {
    unauthenticated(
        "INVALID_LINK",
        "this login link is not valid: it was used, it expired, a newer one was sent, or it was opened in another \
         browser than the one that asked for it; ask for a new one",
    )
}

/// Checks and normalizes the recipient of a connection of `channel`.
fn recipient(channel: Channel, input: RecipientInput<'_>) -> Result<String, Status> {
    let mut v = Violations::new();
    let (field, value) = match (channel, input) {
        (Channel::Email, RecipientInput::Split { email, phone_number }) => {
            if !phone_number.is_empty() {
                v.add("phone_number", "must be empty for an email connection; give email");
            }
            ("email", email)
        }
        (Channel::Sms, RecipientInput::Split { email, phone_number }) => {
            if !email.is_empty() {
                v.add("email", "must be empty for an sms connection; give phone_number");
            }
            ("phone_number", phone_number)
        }
        (_, RecipientInput::One { field, value }) => (field, value),
    };
    let value = value.trim();
    let normalized = match channel {
        Channel::Email => {
            check_email(&mut v, field, value);
            value.to_lowercase()
        }
        Channel::Sms => {
            let compact: String = value.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.')).collect();
            if !is_e164(&compact) {
                v.add(
                    field,
                    "must be a phone number in E.164 form: + then the country code and number, 8 to 15 digits \
                     (+14155550123)",
                );
            }
            compact
        }
    };
    v.into_result()?;
    Ok(normalized)
}

/// Whether `s` is an E.164 number: `+`, then 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else { return false };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// A code of `length` decimal digits, uniformly drawn from the system's CSPRNG.
fn draw_code(length: u32) -> Result<String, Status> {
    let mut out = String::with_capacity(length as usize);
    let mut buf = [0u8; 32];
    while out.len() < length as usize {
        aws_lc_rs::rand::fill(&mut buf).map_err(|_| postern_common::error::internal(&"the system CSPRNG failed"))?;
        // 250 is the largest multiple of 10 under 256: rejecting the rest keeps digits uniform.
        for b in buf.iter().filter(|b| **b < 250) {
            if out.len() == length as usize {
                break;
            }
            out.push(char::from(b'0' + b % 10));
        }
    }
    Ok(out)
}

/// A 256-bit magic link token, base64url.
fn draw_token() -> Result<String, Status> {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| postern_common::error::internal(&"the system CSPRNG failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

impl AuthnApi {
    /// The keyed digest a code is stored as: HMAC-SHA256 under a key derived from the master
    /// key, over the tenant, connection, recipient and code (a stolen table row names no code).
    fn code_digest(&self, tenant: &str, connection_id: &str, recipient: &str, code: &str) -> String {
        let key = Sha256::new()
            .chain_update(b"postern passwordless code v1\0")
            .chain_update(self.config.master_key.to_base64().as_bytes())
            .finalize();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
        for part in [tenant, connection_id, recipient, code] {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn code_connector(&self, conn: &Resolved) -> Result<Arc<dyn CodeConnector>, Status> {
        let spec = &conn.connection.spec;
        self.connectors.code(spec.strategy).cloned().ok_or_else(|| {
            failed_precondition(
                "NOT_A_PASSWORDLESS_CONNECTION",
                format!(
                    "connection {:?} uses strategy {:?}; codes are sent only by passwordless connections (strategies \
                     `email` and `sms`)",
                    spec.name,
                    spec.strategy.as_str()
                ),
            )
        })
    }

    /// The names a message shows: the application's and the tenant's.
    async fn message_names(&self, tenant: &str, client_id: &str) -> Result<(String, String), Status> {
        let client = self
            .resolve_client(tenant, client_id)
            .await
            .map_err(|s| crate::status::client_refusal(tenant, client_id, &s))?;
        let t = self.tenant(tenant).await?;
        let tenant_name = if t.display_name.is_empty() { tenant.to_owned() } else { t.display_name.clone() };
        Ok((client.name.clone(), tenant_name))
    }

    /// Counts a start against both rate limits.
    async fn count_start(
        &self,
        tenant: &str,
        connection_id: &str,
        recipient: &str,
        address: &str,
    ) -> Result<(), Status> {
        let now = self.config.clock.now_micros();
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let per_recipient = self
            .store
            .count_in_window(
                tenant,
                &format!("recipient:{connection_id}:{recipient}"),
                now,
                micros(PER_RECIPIENT.window),
            )
            .await?;
        let per_address =
            self.store.count_in_window(tenant, &format!("address:{address}"), now, micros(PER_ADDRESS.window)).await?;
        let limited = |what: &str, l: Limit| {
            status(
                Code::ResourceExhausted,
                "PASSWORDLESS_RATE_LIMITED",
                format!(
                    "too many codes asked {what}: at most {} in {} minutes; wait and try again",
                    l.max,
                    l.window.as_secs() / 60
                ),
            )
        };
        let refused = |by: &str| {
            postern_common::telemetry::refused("PASSWORDLESS_RATE_LIMITED");
            tracing::warn!(reason = "PASSWORDLESS_RATE_LIMITED", tenant, by, address, "passwordless code refused");
        };
        if per_recipient > PER_RECIPIENT.max {
            refused("recipient");
            return Err(limited("for this recipient", PER_RECIPIENT));
        }
        if per_address > PER_ADDRESS.max {
            refused("address");
            return Err(limited("from this address", PER_ADDRESS));
        }
        Ok(())
    }

    /// Starts a passwordless login: sends a fresh code (or magic link) through the
    /// connection, replacing the recipient's previous one. Answers how many seconds it stays
    /// valid. The same answer whether the recipient has a user or not (with signup disabled,
    /// an unknown recipient is sent nothing). A link leads to the page's transaction
    /// ([`Links::Page`]); a start whose links are [`Links::Described`] goes through
    /// [`AuthnApi::plan_start`] and [`AuthnApi::send_planned`] instead, making the
    /// transaction in between.
    pub async fn send_code(&self, s: &CodeStart<'_>) -> Result<u32, Status> {
        let plan = self.plan_start(s).await?;
        let target = match s.links {
            Links::Page(t) => Some(t),
            Links::None | Links::Described => None,
        };
        self.send_planned(s, plan, target).await
    }

    /// Checks a start and resolves its connection, and decides between a code and a link
    /// (the request's `send`; unset, a link when the connection sends links by default and
    /// the start has somewhere for it to lead). Counts nothing and sends nothing.
    pub async fn plan_start(&self, s: &CodeStart<'_>) -> Result<StartPlan, Status> {
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", s.tenant);
        required(&mut v, "client_id", s.client_id);
        required(&mut v, "connection", s.connection);
        v.into_result()?;
        let conn = self.cache.resolve(s.tenant, s.client_id, s.connection).await?;
        let connector = self.code_connector(&conn)?;
        let settings: CodeSettings = connector.settings(&conn);
        let recipient = recipient(settings.channel, s.recipient)?;
        let link = match s.send {
            SendKind::Code => false,
            SendKind::Link => true,
            SendKind::Default => settings.link_by_default && !matches!(s.links, Links::None),
        };
        if link && settings.channel != Channel::Email {
            return Err(invalid_field("send", "links are sent by email connections only; send a code"));
        }
        if link {
            match s.links {
                Links::Page(_) => {}
                Links::None => {
                    return Err(invalid_field(
                        "auth_params",
                        "is required to send a magic link: the authorization request the link completes \
                         (redirect_uri, scope, state, nonce, PKCE challenge, audience), as the application would \
                         send it to /authorize; or send a code",
                    ));
                }
                Links::Described if settings.link_same_browser => {
                    return Err(failed_precondition(
                        "MAGIC_LINK_BOUND_TO_BROWSER",
                        format!(
                            "connection {:?} binds magic links to the browser that asked for them \
                             (magic_link_same_browser), so its links are sent from the hosted login page \
                             (/authorize) only; send a code, or turn magic_link_same_browser off",
                            conn.connection.spec.name
                        ),
                    ));
                }
                Links::Described => {}
            }
        }
        Ok(StartPlan { conn, connector, settings, recipient, link })
    }

    /// Counts and sends a planned start; a link leads to `target` (required for a link).
    pub async fn send_planned(
        &self,
        s: &CodeStart<'_>,
        plan: StartPlan,
        target: Option<LinkTarget<'_>>,
    ) -> Result<u32, Status> {
        let connection = plan.conn.connection.spec.name.clone();
        let method = if plan.link { "link" } else { "code" };
        let facts = Facts {
            tenant: s.tenant,
            client_id: s.client_id,
            connection: &connection,
            address: s.address,
            ..Facts::default()
        };
        let started = audit::event(Type::PasswordlessStarted, &facts, None, audit::user(""), &[("send", method)]);
        let result = self.send_plan(s, plan, target, started).await;
        // A start that sent its code wrote its event with the code's delivery mark.
        if !matches!(result, Ok((_, true))) {
            let result = result.as_ref().map(|(lifetime, _)| *lifetime).map_err(Status::clone);
            self.audit(Type::PasswordlessStarted, &facts, &result, audit::user(""), &[("send", method)]).await;
        }
        result.map(|(lifetime, _)| lifetime)
    }

    /// Counts and sends a planned start: the code's lifetime, and whether `started` (its
    /// audit event) was written, with the code's delivery mark.
    async fn send_plan(
        &self,
        s: &CodeStart<'_>,
        plan: StartPlan,
        target: Option<LinkTarget<'_>>,
        started: Option<postern_proto::tenant::v1::AuditEvent>,
    ) -> Result<(u32, bool), Status> {
        let StartPlan { conn, connector, settings, recipient, link } = plan;
        let target = match (link, target) {
            (true, Some(t)) => Some(t),
            (true, None) => {
                return Err(postern_common::error::internal(&"a magic link was planned without its transaction"));
            }
            (false, _) => None,
        };
        let conn_id = &conn.connection.id;
        self.count_start(s.tenant, conn_id, &recipient, s.address).await?;
        if !settings.signup && self.store.find_login_from(s.tenant, conn_id, &recipient, s.address).await?.is_none() {
            // Nothing is sent to an unknown recipient, and the answer says nothing about it.
            tracing::info!(tenant = %s.tenant, connection = %conn.connection.spec.name, "passwordless start for an unknown recipient with signup disabled: nothing sent");
            return Ok((settings.lifetime_seconds, false));
        }
        let (application, tenant_name) = self.message_names(s.tenant, s.client_id).await?;
        let code = draw_code(settings.length)?;
        let code_hash = self.code_digest(s.tenant, conn_id, &recipient, &code);
        let token = if target.is_some() { Some(draw_token()?) } else { None };
        let link_hash = token.as_deref().map(secret_digest);
        let now = self.config.clock.now_micros();
        let lifetime = i64::from(settings.lifetime_seconds) * 1_000_000;
        self.store
            .put_code(&NewCode {
                tenant: s.tenant,
                connection_id: conn_id,
                recipient: &recipient,
                client_id: s.client_id,
                code_hash: &code_hash,
                link_hash: link_hash.as_deref(),
                transaction_hash: target.map(|t| t.transaction_hash),
                csrf_hash: target.map(|t| t.csrf_hash),
                max_attempts: settings.max_attempts,
                now,
                expire_time: now.saturating_add(lifetime),
            })
            .await?;
        let url = token.as_deref().map(|t| format!("{}passwordless/verify_redirect?token={t}", self.issuer(s.tenant)));
        let secret = match &url {
            Some(link) => CodeSecret::Link { link, code: &code },
            None => CodeSecret::Code(&code),
        };
        let message = CodeMessage {
            recipient: &recipient,
            secret,
            application: &application,
            tenant_name: &tenant_name,
            lifetime_seconds: settings.lifetime_seconds,
        };
        if let Err(e) = connector.deliver(s.tenant, &conn, &message).await {
            // Never delivered: never valid.
            self.store.drop_code(s.tenant, conn_id, &recipient, &code_hash).await?;
            return Err(connector_status(e));
        }
        let audited = started.is_some();
        self.store
            .auditing(started.into_iter().collect())
            .code_delivered(s.tenant, conn_id, &recipient, &code_hash)
            .await?;
        tracing::info!(tenant = %s.tenant, connection = %conn.connection.spec.name, link, "passwordless code sent");
        Ok((settings.lifetime_seconds, audited))
    }

    /// Logs a user in with the code it received: the user, created on its first login (unless
    /// the connection disables signup) or updated under the profile-sync rule. Every refusal is
    /// [`invalid_code`]. The caller issues the tokens.
    ///
    /// Audited as a login by the method `passwordless`, in the user's upsert when it
    /// succeeds; a refusal writes its event on its own.
    pub async fn code_login(&self, l: &CodeLogin<'_>) -> Result<User, Status> {
        let audit = LoginAudit::new("passwordless", l.tenant, l.client_id, l.connection, l.address);
        let result = self.check_code_login(l, &audit).await;
        audit.finish(&self.outbox, result.as_ref().map(|u| u.user_id.as_str())).await;
        result
    }

    async fn check_code_login(&self, l: &CodeLogin<'_>, audit: &LoginAudit) -> Result<User, Status> {
        let mut v = Violations::new();
        check_tenant(&mut v, "tenant", l.tenant);
        required(&mut v, "client_id", l.client_id);
        required(&mut v, "connection", l.connection);
        let code_field =
            if matches!(l.recipient, RecipientInput::One { field: "username", .. }) { "otp" } else { "code" };
        required(&mut v, code_field, l.code);
        if l.code.chars().count() > MAX_CODE_CHARS {
            v.add(code_field, format!("must be at most {MAX_CODE_CHARS} characters"));
        }
        v.into_result()?;
        let conn = self.cache.resolve(l.tenant, l.client_id, l.connection).await?;
        let connector = self.code_connector(&conn)?;
        let settings = connector.settings(&conn);
        let recipient = recipient(settings.channel, l.recipient)?;
        let conn_id = &conn.connection.id;
        let now = self.config.clock.now_micros();
        let Some(attempt) = self.store.attempt_code(l.tenant, conn_id, &recipient, now).await? else {
            return Err(invalid_code());
        };
        let presented = self.code_digest(l.tenant, conn_id, &recipient, l.code.trim());
        let right = constant_time_eq(presented.as_bytes(), attempt.code_hash.as_bytes());
        if !right || attempt.client_id != l.client_id {
            return Err(invalid_code());
        }
        if !self.store.use_code(l.tenant, conn_id, &recipient, &attempt.code_hash, now).await? {
            return Err(invalid_code());
        }
        self.passwordless_user(l.tenant, &conn, settings, &recipient, l.address, audit).await
    }

    /// Logs in the user of a magic link: uses the link once (refusing it when the connection
    /// binds links to the browser and none of `csrf_cookies` is the asking page's) and answers the user
    /// with the login transaction it completes.
    pub async fn link_login(
        &self,
        tenant: &str,
        token: &str,
        csrf_cookies: &[String],
        address: &str,
    ) -> Result<LinkLogin, Status> {
        // The client and the connection are the link's, once it is found.
        let audit = LoginAudit::new("magic_link", tenant, "", "", address);
        let result = self.check_link_login(tenant, token, csrf_cookies, address, &audit).await;
        audit.finish(&self.outbox, result.as_ref().map(|l| l.user.user_id.as_str())).await;
        result
    }

    /// A magic link's login.
    async fn check_link_login(
        &self,
        tenant: &str,
        token: &str,
        csrf_cookies: &[String],
        address: &str,
        audit: &LoginAudit,
    ) -> Result<LinkLogin, Status> {
        if token.is_empty() || token.len() > 128 || postern_common::validate::tenant_name(tenant).is_err() {
            return Err(invalid_link());
        }
        let now = self.config.clock.now_micros();
        let link = self.store.live_link(tenant, &secret_digest(token), now).await?.ok_or_else(invalid_link)?;
        audit.target(&link.client_id, "");
        let conn = self.cache.resolve(tenant, &link.client_id, &link.connection_id).await;
        let conn = match conn {
            Ok(c) => c,
            // The connection went, or was disabled for the client: the link is no good.
            Err(s) if matches!(s.code(), Code::NotFound | Code::PermissionDenied) => return Err(invalid_link()),
            Err(s) => return Err(s),
        };
        audit.target(&link.client_id, &conn.connection.spec.name);
        let connector = self.code_connector(&conn)?;
        let settings = connector.settings(&conn);
        if settings.link_same_browser {
            let same = csrf_cookies
                .iter()
                .take(32)
                .any(|c| constant_time_eq(secret_digest(c).as_bytes(), link.csrf_hash.as_bytes()));
            if !same {
                return Err(invalid_link());
            }
        }
        if !self.store.use_code(tenant, &link.connection_id, &link.recipient, &link.code_hash, now).await? {
            return Err(invalid_link());
        }
        let user = self.passwordless_user(tenant, &conn, settings, &link.recipient, address, audit).await?;
        Ok(LinkLogin { user, transaction_hash: link.transaction_hash })
    }

    /// The user of a verified recipient: found by its email or phone number at the
    /// connection, else created (when signup is allowed).
    async fn passwordless_user(
        &self,
        tenant: &str,
        conn: &Resolved,
        settings: CodeSettings,
        recipient: &str,
        address: &str,
        audit: &LoginAudit,
    ) -> Result<User, Status> {
        let known = self.store.find_login_from(tenant, &conn.connection.id, recipient, address).await?;
        let source_id = match known {
            Some(found) => found.identity.source_id,
            None if !settings.signup => {
                return Err(permission_denied(
                    "SIGNUP_DISABLED",
                    format!("connection {:?} does not allow signups", conn.connection.spec.name),
                ));
            }
            None => postern_common::ids::new_id().replace('-', ""),
        };
        let profile = match settings.channel {
            Channel::Email => Profile {
                email: recipient.to_owned(),
                email_verified: true,
                nickname: domain::default_nickname(recipient),
                ..Profile::default()
            },
            Channel::Sms => Profile {
                phone_number: recipient.to_owned(),
                phone_verified: true,
                name: recipient.to_owned(),
                nickname: recipient.to_owned(),
                ..Profile::default()
            },
        };
        let raw = profile.to_json();
        let source = ExternalProfile {
            source_id,
            profile,
            raw,
            user_metadata: serde_json::Map::new(),
            app_metadata: serde_json::Map::new(),
        };
        self.upsert_external_user(tenant, conn, &source, None, address, None, audit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_length_and_only_digits() {
        for n in [4, 6, 10] {
            let c = draw_code(n).unwrap();
            assert_eq!(c.len(), n as usize);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
        // 200 six-digit codes from a real generator are not all the same.
        let codes: std::collections::HashSet<String> = (0..200).map(|_| draw_code(6).unwrap()).collect();
        assert!(codes.len() > 190);
    }

    #[test]
    fn e164() {
        for ok in ["+14155550123", "+33612345678", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in ["14155550123", "+0123456789", "+1234567", "+1234567890123456", "+1415555O123", ""] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[track_caller]
    fn check(channel: Channel, input: RecipientInput<'_>, expected: Result<&str, &str>) {
        match (recipient(channel, input), expected) {
            (Ok(r), Ok(e)) => assert_eq!(r, e),
            (Err(s), Err(field)) => {
                assert_eq!(s.code(), Code::InvalidArgument);
                assert!(s.message().contains(field), "{}", s.message());
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn recipients() {
        let split = |email, phone_number| RecipientInput::Split { email, phone_number };
        check(Channel::Email, split(" Alice@Example.COM ", ""), Ok("alice@example.com"));
        check(Channel::Email, split("alice", ""), Err("email"));
        check(Channel::Email, split("a@example.com", "+14155550123"), Err("phone_number"));
        check(Channel::Sms, split("", "+1 (415) 555-0123"), Ok("+14155550123"));
        check(Channel::Sms, split("", "4155550123"), Err("phone_number"));
        check(Channel::Sms, RecipientInput::One { field: "username", value: "nope" }, Err("username"));
    }
}
