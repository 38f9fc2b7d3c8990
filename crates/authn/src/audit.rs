//! The authenticator's audit events: logins (with the failure's `ErrorInfo` reason),
//! signups, password changes, blocks and unblocks, deleted and updated users, tokens issued
//! by the token endpoint, passwordless starts. Each goes to this service's outbox
//! ([`postern_common::audit::Outbox`]), whose relay delivers it to the tenant service's
//! audit log. A change of this service's data writes its event in the change's transaction
//! ([`crate::store::Store::auditing`]: signups, user updates, blocks and unblocks, deletions,
//! password changes); what changes nothing here, or changes it in the many transactions of
//! the login paths (logins, refused or not; tokens; passwordless starts), is written in a
//! small transaction of its own once the outcome is known. An event names the tenant, client, connection and user, the address and the
//! reason; never the password, code, secret or token that was presented.

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
