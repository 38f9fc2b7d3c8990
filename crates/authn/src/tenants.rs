//! Following the tenant service's event log (`WatchTenantEvents`, internal), so that a
//! deleted tenant leaves nothing behind in the authenticator: users, identities, password
//! history, brute-force counters, signing keys, SSO sessions, codes and refresh tokens go
//! with it (and a deleted client's codes and refresh tokens). A tenant created later under
//! the same name starts empty and cannot inherit the old tenant's keys (which would make the
//! old tenant's tokens verify for the new one). The same log retires the client checks the
//! authenticator remembers ([`clients`](crate::clients)) when a client changes or goes, the
//! APIs it remembers when the tenant's APIs change, and the tenant's display name and logo
//! when the tenant is updated.
//!
//! As in the registry, each event is applied with the cursor (the last sequence applied) in
//! one transaction, and every (re)connection asks for the events after the cursor: nothing is
//! missed across restarts of either service.

use std::sync::{Arc, Weak};
use std::time::Duration;

use postern_proto::tenant::v1 as pb;
use tokio_stream::StreamExt;

use crate::Peer;
use crate::clients::ClientChecks;
use crate::keys::KeyRing;
use crate::store::Store;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows the log for as long as `alive` can be upgraded (the service exists).
pub(crate) async fn follow(store: Store, keys: Weak<KeyRing>, clients: Arc<ClientChecks>, tenant: Peer) {
    let mut backoff = MIN_BACKOFF;
    let mut client = pb::tenant_service_client::TenantServiceClient::new(tenant);
    loop {
        if keys.strong_count() == 0 {
            return;
        }
        let followed = follow_once(&store, &keys, &clients, &mut client, &mut backoff).await;
        // Not following, the log could say something this process does not hear.
        clients.set_live(false);
        match followed {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "cannot follow the tenant service's event log yet; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(
    store: &Store,
    keys: &Weak<KeyRing>,
    clients: &ClientChecks,
    client: &mut pb::tenant_service_client::TenantServiceClient<Peer>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let after = store.tenant_events_cursor().await.map_err(|e| e.to_string())?;
    let mut stream = client
        .watch_tenant_events(pb::WatchTenantEventsRequest { after_sequence: after, from_end: false })
        .await
        .map_err(|s| postern_common::error::status_with_causes(&s))?
        .into_inner();
    *backoff = MIN_BACKOFF;
    clients.set_live(true);
    while let Some(item) = stream.next().await {
        let event = item.map_err(|s| postern_common::error::status_with_causes(&s))?;
        let Some(ring) = keys.upgrade() else { return Ok(()) };
        match pb::TenantEventType::try_from(event.event_type) {
            Ok(pb::TenantEventType::ClientChanged) => clients.forget_client(&event.tenant, &event.client_id),
            Ok(pb::TenantEventType::ResourceServersChanged) => clients.forget_apis(&event.tenant),
            Ok(pb::TenantEventType::TenantUpdated) => clients.forget_tenant_fields(&event.tenant),
            Ok(pb::TenantEventType::ClientDeleted) => {
                clients.forget_client(&event.tenant, &event.client_id);
                // A deleted client's codes and refresh tokens stop working (idempotent, so
                // applying it again after a restart is harmless).
                store.delete_client_grants(&event.tenant, &event.client_id).await.map_err(|e| e.to_string())?;
            }
            Ok(pb::TenantEventType::TenantDeleted) => {
                clients.forget_tenant(&event.tenant);
                // At once, before the (longer) removal of its rows below.
                ring.tenant_deleting(&event.tenant);
            }
            _ => {}
        }
        // What the deleted tenant made is older than its deletion; a later namesake's is not.
        let when = event.event_time.as_ref().and_then(postern_common::time::from_timestamp).unwrap_or(i64::MAX);
        let deleted =
            (event.event_type == pb::TenantEventType::TenantDeleted as i32).then_some((event.tenant.as_str(), when));
        let applied = store.apply_tenant_event(event.sequence, deleted).await;
        if deleted.is_some() && applied.is_ok() {
            ring.tenant_deleted(&event.tenant);
        }
        match applied {
            Ok(true) => {
                tracing::info!(tenant = %event.tenant, "tenant deleted: removed its users, identities and signing keys");
            }
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the tenant event stream ended".into())
}
