//! The audit log's gRPC face (`AuditService`): listing a tenant's events newest first with
//! filters, following them as they are recorded, and the internal `AppendAuditEvents` through
//! which the authenticator's and the registry's outbox relays deliver theirs. Conversions
//! between the contract and [`crate::store::AuditEvent`] live here, and so does the check
//! that an event appended from elsewhere carries no secret-looking detail.

use std::collections::BTreeMap;

use postern_common::error::{Violations, invalid_field};
use postern_common::paging::{decode_token, next_page_token, page_size};
use postern_common::principal::principal;
use postern_common::time::{from_timestamp, to_timestamp};
use postern_proto::tenant::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::TenantApi;
use crate::domain::check_tenant_name;
use crate::store::{AuditEvent, AuditFilter, Store};

const TYPE_PREFIX: &str = "AUDIT_EVENT_TYPE_";
const OUTCOME_PREFIX: &str = "AUDIT_OUTCOME_";
const ACTOR_PREFIX: &str = "AUDIT_ACTOR_TYPE_";

/// The most events one `AppendAuditEvents` call may carry.
pub const MAX_APPEND: usize = 1000;
/// The most details an event may carry.
const MAX_DETAILS: usize = 32;
/// The longest detail key, reason, id or name an event may carry.
const MAX_TEXT: usize = 512;
/// Words that a detail's key may not contain: an event never holds a secret.
const SECRET_WORDS: &[&str] = &["password", "secret", "token", "hash", "otp", "credential"];

/// `full` without `prefix` (`AUDIT_OUTCOME_SUCCESS` → `SUCCESS`).
pub fn short_name<'a>(full: &'a str, prefix: &str) -> &'a str {
    full.strip_prefix(prefix).unwrap_or(full)
}

fn type_name(value: i32) -> Option<&'static str> {
    match pb::AuditEventType::try_from(value).ok()? {
        pb::AuditEventType::Unspecified => None,
        t => Some(short_name(t.as_str_name(), TYPE_PREFIX)),
    }
}

fn outcome_name(value: i32) -> Option<&'static str> {
    match pb::AuditOutcome::try_from(value).ok()? {
        pb::AuditOutcome::Unspecified => None,
        o => Some(short_name(o.as_str_name(), OUTCOME_PREFIX)),
    }
}

fn actor_name(value: i32) -> Option<&'static str> {
    match pb::AuditActorType::try_from(value).ok()? {
        pb::AuditActorType::Unspecified => None,
        a => Some(short_name(a.as_str_name(), ACTOR_PREFIX)),
    }
}

/// An event in the contract's terms.
pub fn to_pb(e: AuditEvent) -> pb::AuditEvent {
    let named = |prefix: &str, name: &str| format!("{prefix}{name}");
    pb::AuditEvent {
        id: e.id,
        sequence: e.sequence,
        tenant: e.tenant,
        event_time: Some(to_timestamp(e.event_time)),
        r#type: pb::AuditEventType::from_str_name(&named(TYPE_PREFIX, &e.event_type)).map_or(0, |t| t as i32),
        outcome: pb::AuditOutcome::from_str_name(&named(OUTCOME_PREFIX, &e.outcome)).map_or(0, |o| o as i32),
        reason: e.reason,
        actor: Some(pb::AuditActor {
            r#type: pb::AuditActorType::from_str_name(&named(ACTOR_PREFIX, &e.actor_type)).map_or(0, |a| a as i32),
            id: e.actor_id,
        }),
        source_ip: e.source_ip,
        connection: e.connection,
        client_id: e.client_id,
        user_id: e.user_id,
        details: e.details.into_iter().collect(),
    }
}

/// Checks an event appended by another service, field `field` of the request, into the
/// store's terms.
fn from_pb(v: &mut Violations, field: &str, e: pb::AuditEvent) -> Option<AuditEvent> {
    let start = v.as_slice().len();
    if uuid::Uuid::parse_str(&e.id).is_err() {
        v.add(format!("{field}.id"), "must be a UUID");
    }
    check_tenant_name(v, &format!("{field}.tenant"), &e.tenant);
    let event_time = e.event_time.as_ref().and_then(from_timestamp);
    if event_time.is_none() {
        v.add(format!("{field}.event_time"), "is required and must be a valid time");
    }
    let event_type = type_name(e.r#type);
    if event_type.is_none() {
        v.add(format!("{field}.type"), "must be an AUDIT_EVENT_TYPE other than UNSPECIFIED");
    }
    let outcome = outcome_name(e.outcome);
    if outcome.is_none() {
        v.add(format!("{field}.outcome"), "must be AUDIT_OUTCOME_SUCCESS or AUDIT_OUTCOME_FAILURE");
    }
    let actor = e.actor.unwrap_or_default();
    let actor_type = actor_name(actor.r#type);
    if actor_type.is_none() {
        v.add(format!("{field}.actor.type"), "must be an AUDIT_ACTOR_TYPE other than UNSPECIFIED");
    }
    if !e.source_ip.is_empty() && e.source_ip.parse::<std::net::IpAddr>().is_err() {
        v.add(format!("{field}.source_ip"), "must be an IP address or empty");
    }
    let texts = [
        ("reason", &e.reason),
        ("actor.id", &actor.id),
        ("connection", &e.connection),
        ("client_id", &e.client_id),
        ("user_id", &e.user_id),
    ];
    for (name, value) in texts {
        if value.len() > MAX_TEXT {
            v.add(format!("{field}.{name}"), format!("must be at most {MAX_TEXT} bytes"));
        }
    }
    if e.details.len() > MAX_DETAILS {
        v.add(format!("{field}.details"), format!("must have at most {MAX_DETAILS} entries"));
    }
    for (key, value) in &e.details {
        let lower = key.to_ascii_lowercase();
        if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
            v.add(format!("{field}.details"), format!("key {key:?} names a secret, which an audit event never holds"));
        }
        if key.is_empty() || key.len() > MAX_TEXT || value.len() > MAX_TEXT {
            v.add(format!("{field}.details"), format!("keys must be 1 to {MAX_TEXT} bytes, values at most {MAX_TEXT}"));
        }
    }
    if v.as_slice().len() != start {
        return None;
    }
    Some(AuditEvent {
        id: e.id,
        sequence: 0,
        tenant: e.tenant,
        event_time: event_time?,
        event_type: event_type?.to_owned(),
        outcome: outcome?.to_owned(),
        reason: e.reason,
        actor_type: actor_type?.to_owned(),
        actor_id: actor.id,
        source_ip: e.source_ip,
        connection: e.connection,
        client_id: e.client_id,
        user_id: e.user_id,
        details: e.details.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

/// The filter of a list request, checked.
fn filter(v: &mut Violations, req: &pb::ListAuditEventsRequest) -> AuditFilter {
    let mut types = Vec::new();
    for (i, t) in req.types.iter().enumerate() {
        match type_name(*t) {
            Some(name) => types.push(name.to_owned()),
            None => v.add(format!("types[{i}]"), "must be an AUDIT_EVENT_TYPE other than UNSPECIFIED"),
        }
    }
    types.sort();
    types.dedup();
    let outcome = match req.outcome {
        0 => None,
        o => {
            let name = outcome_name(o);
            if name.is_none() {
                v.add("outcome", "must be AUDIT_OUTCOME_SUCCESS, AUDIT_OUTCOME_FAILURE or unset");
            }
            name.map(str::to_owned)
        }
    };
    let mut time = |field: &str, ts: &Option<prost_types::Timestamp>| match ts {
        None => None,
        Some(ts) => {
            let t = from_timestamp(ts);
            if t.is_none() {
                v.add(field, "must be a valid time");
            }
            t
        }
    };
    let start_time = time("start_time", &req.start_time);
    let end_time = time("end_time", &req.end_time);
    if let (Some(start), Some(end)) = (start_time, end_time)
        && end <= start
    {
        v.add("end_time", "must be after start_time");
    }
    for (name, value) in [("user_id", &req.user_id), ("connection", &req.connection), ("client_id", &req.client_id)] {
        if value.len() > MAX_TEXT {
            v.add(name, format!("must be at most {MAX_TEXT} bytes"));
        }
    }
    AuditFilter {
        types,
        user_id: req.user_id.clone(),
        connection: req.connection.clone(),
        client_id: req.client_id.clone(),
        outcome,
        start_time,
        end_time,
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for TenantApi {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        let filter = filter(&mut v, &req);
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let limit = page_size(req.page_size)?;
        // The token is bound to the tenant and the filters, so it cannot page another list.
        let scope = format!("audit|{}|{filter:?}", req.tenant);
        let before = match decode_token(&scope, &req.page_token)? {
            None => None,
            Some(key) => Some(key.parse::<i64>().map_err(|_| {
                invalid_field("page_token", "is not a token returned by this list; pass next_page_token unchanged")
            })?),
        };
        let mut events = self.store().list_audit(&req.tenant, &filter, before, limit + 1).await?;
        let next_page_token = next_page_token(&mut events, limit, &scope, |e| e.sequence.to_string());
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    type WatchAuditEventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchAuditEventsResponse, Status>>;

    async fn watch_audit_events(
        &self,
        req: Request<pb::WatchAuditEventsRequest>,
    ) -> Result<Response<Self::WatchAuditEventsStream>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut v = Violations::new();
        check_tenant_name(&mut v, "tenant", &req.tenant);
        if req.after_sequence < 0 {
            v.add("after_sequence", "must be 0 or the sequence of an event");
        }
        v.into_result()?;
        p.require_tenant(&req.tenant)?;
        let store = self.store().clone();
        let after = if req.from_end { store.last_audit_sequence().await? } else { req.after_sequence };
        let (tx, rx) = tokio::sync::mpsc::channel(BATCH);
        tokio::spawn(follow(store, req.tenant, after, tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn append_audit_events(
        &self,
        req: Request<pb::AppendAuditEventsRequest>,
    ) -> Result<Response<pb::AppendAuditEventsResponse>, Status> {
        principal(&req)?.require_internal()?;
        let req = req.into_inner();
        if req.events.len() > MAX_APPEND {
            return Err(invalid_field("events", format!("must hold at most {MAX_APPEND} events")));
        }
        let mut v = Violations::new();
        let events: Vec<AuditEvent> = req
            .events
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| from_pb(&mut v, &format!("events[{i}]"), e))
            .collect();
        v.into_result()?;
        let appended = self.store().append_audit(&events).await?;
        Ok(Response::new(pb::AppendAuditEventsResponse { appended: appended as i32 }))
    }
}

/// How many events are read and buffered at a time.
const BATCH: usize = 256;
/// How often the log is read when nothing in this process signalled a new event (events
/// recorded by another replica over a shared database).
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends every event of `tenant` after `after`, then each new one, until the receiver goes
/// away or the server stops.
async fn follow(
    store: Store,
    tenant: String,
    mut after: i64,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchAuditEventsResponse, Status>>,
) {
    let mut changed = store.subscribe_audit();
    let mut closing = store.closing();
    loop {
        if *closing.borrow() {
            return;
        }
        changed.borrow_and_update();
        let events = match store.audit_after(&tenant, after, BATCH).await {
            Ok(events) => events,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let full = events.len() == BATCH;
        for e in events {
            after = e.sequence;
            if tx.send(Ok(pb::WatchAuditEventsResponse { event: Some(to_pb(e)) })).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep(POLL) => {}
            () = tx.closed() => return,
            () = async { let _ = closing.changed().await; } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::AuditEvent {
        let mut e =
            postern_common::audit::event("fabrikam-internal", pb::AuditEventType::Login, pb::AuditOutcome::Failure);
        e.actor = Some(pb::AuditActor { r#type: pb::AuditActorType::User as i32, id: String::new() });
        e
    }

    #[track_caller]
    fn check(change: impl FnOnce(&mut pb::AuditEvent), expected_field: Option<&str>) {
        let mut e = valid();
        change(&mut e);
        let mut v = Violations::new();
        let out = from_pb(&mut v, "events[0]", e);
        match expected_field {
            None => assert!(out.is_some() && v.is_empty(), "{:?}", v.as_slice()),
            Some(field) => {
                assert!(out.is_none());
                assert!(v.as_slice().iter().any(|f| f.field == field), "{field} not in {:?}", v.as_slice());
            }
        }
    }

    #[test]
    fn appended_events_are_checked_field_by_field() {
        check(|_| {}, None);
        check(|e| e.id = "1".into(), Some("events[0].id"));
        check(|e| e.tenant = "Not A Name".into(), Some("events[0].tenant"));
        check(|e| e.event_time = None, Some("events[0].event_time"));
        check(|e| e.r#type = 0, Some("events[0].type"));
        check(|e| e.r#type = 999, Some("events[0].type"));
        check(|e| e.outcome = 0, Some("events[0].outcome"));
        check(|e| e.actor = None, Some("events[0].actor.type"));
        check(|e| e.source_ip = "somewhere".into(), Some("events[0].source_ip"));
        check(|e| e.source_ip = "2001:db8::1".into(), None);
        check(|e| e.reason = "x".repeat(MAX_TEXT + 1), Some("events[0].reason"));
        check(|e| drop(e.details.insert("grant_type".into(), "password".into())), None);
        for key in ["password", "client_secret", "refresh_token", "password_hash", "otp"] {
            check(|e| drop(e.details.insert(key.into(), "x".into())), Some("events[0].details"));
        }
    }

    #[test]
    fn names_round_trip_through_the_store_terms() {
        let mut v = Violations::new();
        let e = valid();
        let stored = from_pb(&mut v, "e", e.clone()).unwrap();
        assert_eq!(
            (stored.event_type.as_str(), stored.outcome.as_str(), stored.actor_type.as_str()),
            ("LOGIN", "FAILURE", "USER")
        );
        let back = to_pb(stored);
        assert_eq!((back.r#type, back.outcome, back.actor), (e.r#type, e.outcome, e.actor));
    }
}
