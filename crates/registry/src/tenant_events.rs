//! Following the tenant service's deletions, so that no connection keeps a deleted client
//! enabled and no deleted tenant keeps connections.
//!
//! The tenant service writes each deletion into a durable log in the same transaction as
//! the deletion, and streams it (`WatchTenantEvents`, internal). The registry applies each
//! event and moves its cursor (the last sequence applied, kept in its own database) in one
//! transaction, and on every (re)connection asks for the events after its cursor. So a
//! deletion is applied exactly once even when either service restarts or the stream breaks;
//! while the tenant service is down the follower retries with a capped backoff.

use std::time::Duration;

use postern_proto::tenant::v1 as tenant_pb;
use tokio::sync::watch;

use crate::api::RegistryApi;

/// The first retry delay after the stream breaks; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// The longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows the tenant service's event log until `closing` turns true.
pub(crate) async fn follow(api: RegistryApi, tenant: crate::api::TenantChannel, mut closing: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    loop {
        if *closing.borrow() {
            return;
        }
        match follow_once(&api, tenant.clone(), &mut closing, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                if warned {
                    tracing::debug!(error = %e, "still cannot follow the tenant service's deletions; retrying");
                } else {
                    tracing::warn!(error = %e, "cannot follow the tenant service's deletions; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = crate::watch::closed(&mut closing) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection to the log: `Ok` when closing, `Err` when the stream broke.
async fn follow_once(
    api: &RegistryApi,
    tenant: crate::api::TenantChannel,
    closing: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let after = api.store.tenant_events_cursor().await.map_err(|e| e.to_string())?;
    let mut client = tenant_pb::tenant_service_client::TenantServiceClient::new(tenant);
    let call =
        client.watch_tenant_events(tenant_pb::WatchTenantEventsRequest { after_sequence: after, from_end: false });
    let mut stream = tokio::select! {
        r = call => r.map_err(|s| postern_common::error::status_with_causes(&s))?.into_inner(),
        () = crate::watch::closed(closing) => return Ok(()),
    };
    tracing::info!(after_sequence = after, "following the tenant service's deletions");
    loop {
        let event = tokio::select! {
            m = stream.message() => m.map_err(|s| postern_common::error::status_with_causes(&s))?,
            () = crate::watch::closed(closing) => return Ok(()),
        };
        let Some(event) = event else {
            return Err("the tenant service ended the stream".into());
        };
        apply(api, event).await.map_err(|e| format!("applying a tenant event failed: {e}"))?;
        *backoff = MIN_BACKOFF;
    }
}

async fn apply(api: &RegistryApi, event: tenant_pb::WatchTenantEventsResponse) -> Result<(), crate::store::StoreError> {
    // The store logs each connection the event changes, and the change log's follower
    // streams them.
    match tenant_pb::TenantEventType::try_from(event.event_type) {
        Ok(tenant_pb::TenantEventType::ClientDeleted) => {
            let left = api.store.apply_client_deleted(event.sequence, &event.tenant, &event.client_id).await?;
            if !left.is_empty() {
                tracing::info!(
                    tenant = %event.tenant, client_id = %event.client_id, connections = left.len(),
                    "deleted client removed from its connections"
                );
            }
        }
        Ok(tenant_pb::TenantEventType::TenantDeleted) => {
            let tenant_create_time =
                event.tenant_create_time.and_then(|t| postern_common::time::from_timestamp(&t)).unwrap_or(0);
            let deleted = api.store.apply_tenant_deleted(event.sequence, &event.tenant, tenant_create_time).await?;
            tracing::info!(tenant = %event.tenant, connections = deleted.len(), "deleted tenant's connections removed");
        }
        // The registry keeps nothing about a client beyond its enablements, nor about keys,
        // APIs or the tenant's own fields.
        Ok(
            tenant_pb::TenantEventType::ClientChanged
            | tenant_pb::TenantEventType::ApiKeyRevoked
            | tenant_pb::TenantEventType::ResourceServersChanged
            | tenant_pb::TenantEventType::TenantUpdated,
        ) => api.store.skip_tenant_event(event.sequence).await?,
        _ => {
            tracing::warn!(sequence = event.sequence, kind = event.event_type, "skipping an unknown tenant event");
            api.store.skip_tenant_event(event.sequence).await?;
        }
    }
    Ok(())
}
