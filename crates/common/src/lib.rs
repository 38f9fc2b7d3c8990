//! The plumbing every Postern service shares, so that each service crate holds only its own
//! domain: storage on SQLite or PostgreSQL, the house way of building errors, the caller's
//! identity as the gateway vouches for it, paging, validation rules, ids and time, and the
//! pieces of a gRPC server (reflection, health, tracing, shutdown).
//!
//! # Layout
//! - [`audit`]: audit events from a principal, the outbox and its relay to the audit log.
//! - [`coherence`]: caches of tenant data retired by the tenant event log.
//! - [`connections`]: bounded connections (timeouts, a limit below the open-file limit).
//! - [`db`]: one sqlx pool for both backends, migrations, write transactions.
//! - [`error`]: `tonic::Status` with `ErrorInfo` and `BadRequest` field violations.
//! - [`files`]: the data directory 0700 and its files 0600 whatever the umask; key files.
//! - [`principal`]: the signed caller identity and the layers that sign and verify it.
//! - [`scope`]: API key scopes and what each method needs of them.
//! - [`paging`]: page sizes and opaque keyset page tokens.
//! - [`validate`]: names, display texts, URLs.
//! - [`mask`]: update masks.
//! - [`ids`], [`time`]: identifiers, secret hashes, timestamps.
//! - [`seal`]: encryption at rest under the master key.
//! - [`server`]: boxed backends, reflection, health, per-RPC spans, shutdown.
//! - [`tls`]: rustls on the ports and the service-to-service channels, certificates reloaded.
//! - [`telemetry`]: per-method RPC metrics with gRPC code names, process and pool gauges.
//! - [`trace`]: W3C trace context between processes, for spans exported over OTLP.
//! - `testing` (feature `testing`): real-peer rules and fresh PostgreSQL databases for tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod coherence;
pub mod connections;
pub mod db;
pub mod error;
pub mod files;
pub mod ids;
pub mod json;
pub mod mask;
pub mod paging;
pub mod principal;
pub mod scope;
pub mod seal;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod tls;
pub mod trace;
pub mod validate;
