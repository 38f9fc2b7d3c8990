//! The authenticator's audit events: logins (with the failure's `ErrorInfo` reason),
//! signups, password changes, blocks and unblocks (by an administrator, or by brute-force
//! protection), deleted and updated users, tokens issued by the token endpoint, passwordless
//! starts. Each goes to this service's outbox ([`postern_common::audit::Outbox`]), whose relay
//! delivers it to the tenant service's audit log.
//!
//! An event is written in the transaction of the change it records, so that it is durable
//! exactly when the change is and costs no commit of its own ([`crate::store::Store::auditing`]):
//! signups, user updates, blocks and unblocks, deletions, password changes; a successful
//! login with the login's record (the user or identity upsert, its counters and the
//! brute-force count it clears); a failed password login with the failure it counts (on
//! SQLite, where that count is written once the outcome is known), together with the
//! `USER_BLOCKED` event of the failure that blocks; a passwordless start with the code's
//! delivery mark. What writes nothing once its outcome is known is written in a small
//! transaction of its own ([`LoginAudit::finish`], [`AuthnApi::audit`]): a login refused
//! before or without any write (bad input, an unknown connection, a refused client secret,
//! TOO_MANY_ATTEMPTS, a wrong one-time code, an upstream's refusal), a wrong password on
//! PostgreSQL (whose count was written in advance, before the check), and the tokens of the
//! token endpoint. An event names the tenant, client, connection and user, the address and
//! the reason; never the password, code, secret or token that was presented.

use std::sync::{Mutex, PoisonError};

use postern_common::error::reason;
use postern_proto::tenant::v1 as pb;
use tonic::Status;

use crate::api::AuthnApi;

pub(crate) use pb::AuditEventType as Type;

/// The end user `user_id` (empty when not known, as in a failed login) as an event's actor.
pub(crate) fn user(user_id: &str) -> pb::AuditActor {
    pb::AuditActor { r#type: pb::AuditActorType::User as i32, id: user_id.to_owned() }
}

/// The address of the end caller of `req`, as the gateway vouched for it (empty if none).
pub(crate) fn caller_ip<T>(req: &tonic::Request<T>) -> String {
    postern_common::principal::peer_addr(req).map(|ip| ip.to_canonical().to_string()).unwrap_or_default()
}

/// The caller of a management RPC as an event's actor.
pub(crate) fn caller(p: &postern_common::principal::Principal) -> pb::AuditActor {
    postern_common::audit::actor(p)
}

/// The facts of an event besides its type and outcome.
#[derive(Debug, Default, Clone)]
pub(crate) struct Facts<'a> {
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub connection: &'a str,
    pub user_id: &'a str,
    /// The end user's address as the login counted it (`unknown` when none).
    pub address: &'a str,
}

impl AuthnApi {
    /// Records an event of `kind` with `facts`, succeeded or failed with `result` (a failure
    /// records the status's `ErrorInfo` reason, else its code), by `actor`, with `details`,
    /// in a transaction of its own: for what changes nothing here (a refused login, a token
    /// issued). A failed write is logged, never the caller's answer.
    pub(crate) async fn audit<T>(
        &self,
        kind: Type,
        facts: &Facts<'_>,
        result: &Result<T, Status>,
        actor: pb::AuditActor,
        details: &[(&str, &str)],
    ) {
        if let Some(event) = event(kind, facts, result.as_ref().err(), actor, details) {
            self.outbox.record_or_log(event).await;
        }
    }
}

/// The audit of one login, from its start to its answer: its facts, the events that go with
/// its outcome, and whether they were written already, in one of the login's own writes.
/// Whoever writes the login's outcome takes the events ([`success`](Self::success),
/// [`failure`](Self::failure)) into that write's transaction and calls
/// [`written`](Self::written) once it committed; [`finish`](Self::finish) writes them in a
/// transaction of their own only if no write did.
#[derive(Debug)]
pub(crate) struct LoginAudit {
    method: &'static str,
    state: Mutex<LoginState>,
}

#[derive(Debug, Default)]
struct LoginState {
    tenant: String,
    client_id: String,
    connection: String,
    address: String,
    /// The name typed, recorded with a failure (it tells what the attempt aimed at).
    username: String,
    written: bool,
    /// Events that go with the login's own (the `USER_BLOCKED` of the failure that blocks).
    with: Vec<pb::AuditEvent>,
}

impl LoginState {
    fn facts<'a>(&'a self, user_id: &'a str) -> Facts<'a> {
        Facts {
            tenant: &self.tenant,
            client_id: &self.client_id,
            connection: &self.connection,
            user_id,
            address: &self.address,
        }
    }
}

impl LoginAudit {
    /// The audit of a login by `method` (`password`, `passwordless`, `redirect`, …) at
    /// `connection` (by name) for `client_id` of `tenant`, from `address`.
    pub(crate) fn new(method: &'static str, tenant: &str, client_id: &str, connection: &str, address: &str) -> Self {
        let state = LoginState {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            connection: connection.to_owned(),
            address: address.to_owned(),
            ..LoginState::default()
        };
        Self { method, state: Mutex::new(state) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LoginState> {
        // Every update is a single assignment or push: a poisoned lock holds no half-state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `username` (the name typed) with a failure.
    pub(crate) fn with_username(self, username: &str) -> Self {
        self.state().username = username.to_owned();
        self
    }

    /// The client and connection, once known (a magic link names them).
    pub(crate) fn target(&self, client_id: &str, connection: &str) {
        let mut s = self.state();
        s.client_id = client_id.to_owned();
        s.connection = connection.to_owned();
    }

    fn login_event(&self, failure: Option<&Status>, user_id: &str) -> Option<pb::AuditEvent> {
        let s = self.state();
        let facts = s.facts(user_id);
        let details: &[(&str, &str)] = if failure.is_some() {
            &[("method", self.method), ("username", &s.username)]
        } else {
            &[("method", self.method)]
        };
        event(Type::Login, &facts, failure, user(user_id), details)
    }

    /// The login's event and the events that go with it.
    fn events(&self, failure: Option<&Status>, user_id: &str) -> Vec<pb::AuditEvent> {
        let mut events: Vec<_> = self.login_event(failure, user_id).into_iter().collect();
        events.extend(self.state().with.iter().cloned());
        events
    }

    /// The events of a successful login of `user_id`, for the transaction that records it.
    pub(crate) fn success(&self, user_id: &str) -> Vec<pb::AuditEvent> {
        self.events(None, user_id)
    }

    /// The events of a login refused with `failure`, for the transaction that counts it.
    pub(crate) fn failure(&self, failure: &Status) -> Vec<pb::AuditEvent> {
        self.events(Some(failure), "")
    }

    /// The event of brute-force protection blocking the user (`user_id`, empty when the name
    /// typed is no user's) from this login's address: by the system, not by the user.
    pub(crate) fn blocked(&self, user_id: &str, max_failures: u32) -> Option<pb::AuditEvent> {
        let s = self.state();
        let facts = s.facts(user_id);
        let actor = pb::AuditActor { r#type: pb::AuditActorType::System as i32, id: SERVICE.to_owned() };
        let max = max_failures.to_string();
        let details = [
            ("blocked_by", "brute_force_protection"),
            ("consecutive_failures", max.as_str()),
            ("username", s.username.as_str()),
        ];
        event(Type::UserBlocked, &facts, None, actor, &details)
    }

    /// Adds an event that goes with the login's own (written with it, or with its fallback).
    pub(crate) fn with(&self, event: pb::AuditEvent) {
        self.state().with.push(event);
    }

    /// The login's events were committed with one of its writes.
    pub(crate) fn written(&self) {
        self.state().written = true;
    }

    /// Writes the login's events for `result` (the user id of a success) in a transaction
    /// of their own, unless one of the login's writes did. A failed write is logged, never
    /// the caller's answer.
    pub(crate) async fn finish(&self, outbox: &postern_common::audit::Outbox, result: Result<&str, &Status>) {
        if self.state().written {
            return;
        }
        let events = match result {
            Ok(user_id) => self.success(user_id),
            Err(s) => self.failure(s),
        };
        if events.is_empty() {
            return;
        }
        if let Err(e) = outbox.record(&events).await {
            tracing::error!(error = %e, "cannot write a login's audit events to the outbox");
        }
    }
}

/// The name this service goes by as an event's system actor.
pub(crate) const SERVICE: &str = "authn";

/// An event of `kind` with `facts`, failed with `failure` (its `ErrorInfo` reason, else its
/// code) or succeeded, by `actor`, with `details` (empty values left out). `None` for a
/// tenant name that is not one (bad input: no tenant's log could hold it).
pub(crate) fn event(
    kind: Type,
    facts: &Facts<'_>,
    failure: Option<&Status>,
    actor: pb::AuditActor,
    details: &[(&str, &str)],
) -> Option<pb::AuditEvent> {
    postern_common::validate::tenant_name(facts.tenant).ok()?;
    let outcome = if failure.is_none() { pb::AuditOutcome::Success } else { pb::AuditOutcome::Failure };
    let mut event = postern_common::audit::event(facts.tenant, kind, outcome);
    if let Some(status) = failure {
        event.reason = reason(status).unwrap_or_else(|| code_name(status.code()));
    }
    event.actor = Some(actor);
    event.source_ip =
        facts.address.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical().to_string()).unwrap_or_default();
    event.client_id = bounded(facts.client_id);
    event.connection = bounded(facts.connection);
    event.user_id = bounded(facts.user_id);
    event.details = details.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| ((*k).to_owned(), bounded(v))).collect();
    Some(event)
}

/// A text cut to what the audit log accepts (512 bytes), on a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A gRPC code's name as in the protocol (`INVALID_ARGUMENT`), for a failure without a reason.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}
