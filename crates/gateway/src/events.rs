//! Following the tenant service's event log (`WatchTenantEvents`, internal) so that what
//! this process caches of tenant data — principals of API keys, the provider's documents —
//! is retired the moment the log says it changed ([`Coherence`]).
//!
//! The follower starts at the end of the log (the caches start empty, so older events say
//! nothing to them) and marks the caches live only once the stream is open; when the stream
//! breaks it marks them not live, which retires everything cached, and reconnects with a
//! backoff.

use std::time::Duration;

use postern_common::coherence::Coherence;
use postern_common::principal::{InternalKey, Principal, SignLayer};
use postern_common::server::HttpService;
use postern_proto::tenant::v1 as pb;
use tokio_stream::StreamExt;
use tower::Layer;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Follows the log through `tenant_service` until the task is dropped.
pub async fn follow(tenant_service: HttpService, internal_key: InternalKey, coherence: Coherence) {
    let svc = SignLayer::new(internal_key, Principal::Service("gateway".into())).layer(tenant_service);
    let mut client = pb::tenant_service_client::TenantServiceClient::new(svc);
    let mut backoff = MIN_BACKOFF;
    loop {
        let followed = async {
            let mut stream = client
                .watch_tenant_events(pb::WatchTenantEventsRequest { after_sequence: 0, from_end: true })
                .await?
                .into_inner();
            coherence.set_live(true);
            backoff = MIN_BACKOFF;
            while let Some(event) = stream.next().await {
                // Every kind of event (a deleted tenant, client or key, a changed client)
                // retires what is cached about its tenant.
                coherence.tenant_changed(&event?.tenant);
            }
            Ok::<(), tonic::Status>(())
        }
        .await;
        coherence.set_live(false);
        match followed {
            Ok(()) => tracing::debug!("the tenant event stream ended; following it again"),
            Err(s) => {
                tracing::debug!(code = ?s.code(), message = s.message(), "cannot follow the tenant event log yet; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
