//! Following the registry's own change log, so that every replica's `WatchConnections`
//! streams carry every change, whichever replica made it.
//!
//! Each write logs its change in its own transaction ([`Store`](crate::store::Store)). One
//! follower per process reads the log in order from where it stood when the process started
//! and publishes each entry to the process's streams ([`Changes`]). It looks when this
//! process commits a change, when PostgreSQL notifies that another replica did, and every
//! [`POLL`] in case a notification was lost with the listener's connection. A write is
//! acknowledged only once the follower has published it (or after [`PUBLISH_WAIT`]), so a
//! caller that sees the answer knows every stream of this replica has the change.

use std::time::Duration;

use postern_common::time::now_micros;
use postern_proto::connections::v1 as pb;
use tokio::sync::watch;

use crate::api::RegistryApi;
use crate::domain::{ConnectionRef, Secrets};
use crate::store::{ChangeKind, LoggedChange};
use crate::watch::Change;

/// How many entries are read at a time.
const BATCH: usize = 256;
/// How often the log is read when nothing signalled a change.
const POLL: Duration = Duration::from_secs(1);
/// The longest a write waits for the follower to publish its change before answering.
pub(crate) const PUBLISH_WAIT: Duration = Duration::from_secs(2);
/// How long entries are kept (streams are live; a follower is never this far behind).
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Publishes every change logged after `after`, then each new one, until `closing` turns
/// true. A failed read is retried (logged once per outage); nothing is skipped.
pub(crate) async fn follow(api: RegistryApi, mut after: i64, mut closing: watch::Receiver<bool>) {
    let mut changed = api.store.subscribe_changes();
    let mut failing = false;
    let mut last_prune = tokio::time::Instant::now();
    loop {
        if *closing.borrow() {
            return;
        }
        changed.borrow_and_update();
        match api.store.changes_after(after, BATCH).await {
            Ok(entries) => {
                if failing {
                    tracing::info!("reading the connection change log again");
                    failing = false;
                }
                let full = entries.len() == BATCH;
                for entry in entries {
                    after = entry.sequence;
                    api.changes.publish(change(&api, entry).await);
                }
                api.changes.published_up_to(after);
                if full {
                    continue;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the connection change log; retrying");
                    failing = true;
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            let before = now_micros() - KEEP.as_micros() as i64;
            match api.store.prune_changes(before).await {
                Ok(n) if n > 0 => tracing::debug!(entries = n, "pruned the connection change log"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune the connection change log"),
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep(POLL) => {}
            () = crate::watch::closed(&mut closing) => return,
        }
    }
}

/// A log entry as streamed: the connection as it is now when it still exists (with its
/// `_set` flags), otherwise as the entry recorded it.
async fn change(api: &RegistryApi, entry: LoggedChange) -> Change {
    let change_type = match entry.kind {
        ChangeKind::Created => pb::ChangeType::Created,
        ChangeKind::Updated => pb::ChangeType::Updated,
        ChangeKind::Deleted => pb::ChangeType::Deleted,
        ChangeKind::ClientEnabled => pb::ChangeType::ClientEnabled,
        ChangeKind::ClientDisabled => pb::ChangeType::ClientDisabled,
    };
    let current = match entry.kind {
        ChangeKind::Deleted => None,
        _ => api.store.get(&entry.tenant, &ConnectionRef::Id(entry.connection.id.clone())).await.ok().flatten(),
    };
    let connection = match current {
        Some(stored) => api.view_or_bare(&entry.tenant, &stored),
        None => entry.connection.to_proto(&Secrets::new()),
    };
    Change { tenant: entry.tenant, change_type, connection, client_id: entry.client_id, time: entry.time }
}
