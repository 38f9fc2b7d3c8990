//! The change stream behind `WatchConnections`: the follower of the change log
//! ([`change_log`](crate::change_log)) publishes each committed change, whichever replica
//! made it, and every open stream receives it.
//!
//! The stream is live only: it starts at "now" and keeps no history, so a consumer that
//! caches connections (the authenticator) subscribes, then lists, and after any break
//! subscribes and lists again. A stream that falls more than [`CAPACITY`] changes behind is
//! ended with ABORTED rather than silently skipping changes. Every replica streams every
//! change, so a consumer may watch any one of them.

use std::sync::Arc;

use postern_proto::connections::v1 as pb;
use tokio::sync::{broadcast, watch};

/// How many changes a slow stream may fall behind before it is ended.
pub const CAPACITY: usize = 4096;

/// One change, as streamed (no secrets).
#[derive(Debug, Clone)]
pub struct Change {
    /// The connection's tenant.
    pub tenant: String,
    /// What happened.
    pub change_type: pb::ChangeType,
    /// The connection (as it is now; as it was for a deletion), without secrets.
    pub connection: pb::Connection,
    /// The client concerned by an enablement change; empty otherwise.
    pub client_id: String,
    /// When, unix microseconds.
    pub time: i64,
}

impl Change {
    /// The message of `WatchConnections`.
    pub fn to_proto(&self) -> pb::WatchConnectionsResponse {
        pb::WatchConnectionsResponse {
            change_type: self.change_type as i32,
            connection: Some(self.connection.clone()),
            client_id: self.client_id.clone(),
            change_time: Some(postern_common::time::to_timestamp(self.time)),
            tenant: self.tenant.clone(),
        }
    }
}

/// The publishing side, shared by the handlers, and the signal that ends every stream at
/// shutdown (so that a graceful stop is not held up by streams that never end).
#[derive(Debug, Clone)]
pub struct Changes {
    tx: broadcast::Sender<Arc<Change>>,
    closing: Arc<watch::Sender<bool>>,
    /// The sequence of the last change-log entry published.
    published: Arc<watch::Sender<i64>>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    /// A channel with no subscribers.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            closing: Arc::new(watch::channel(false).0),
            published: Arc::new(watch::channel(0).0),
        }
    }

    /// Records that every change-log entry up to `sequence` was published.
    pub fn published_up_to(&self, sequence: i64) {
        self.published.send_if_modified(|p| {
            let moved = sequence > *p;
            *p = (*p).max(sequence);
            moved
        });
    }

    /// Waits until the change-log entry `sequence` has been published, for at most
    /// `within`; whether it was.
    pub async fn wait_published(&self, sequence: i64, within: std::time::Duration) -> bool {
        let mut published = self.published.subscribe();
        tokio::time::timeout(within, published.wait_for(|p| *p >= sequence)).await.is_ok_and(|r| r.is_ok())
    }

    /// Publishes a committed change. Nobody listening is fine.
    pub fn publish(&self, change: Change) {
        let _ = self.tx.send(Arc::new(change));
    }

    /// A receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// A receiver that flips to true at shutdown.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every open stream (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// Resolves once `closing` is true (or its sender is gone).
pub async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}
