//! What a process tells its operators in numbers: per-method RPC counts and latency
//! histograms with the status as its gRPC code name, the process's own figures from `/proc`,
//! and database pool gauges. The metric names follow grpc-ecosystem's go-grpc-prometheus
//! (`grpc_server_handled_total{grpc_service,grpc_method,grpc_code}`,
//! `grpc_server_handling_seconds`) with Postern's prefix, and the Prometheus client
//! libraries' `process_*` names; the recorder that renders them is installed by the binary.
//!
//! A call is observed until its answer's body ends: the status of an answer that fails at
//! once is in its headers (a trailers-only answer), that of any other in its trailers, and
//! an answer dropped before its trailers (the caller went away) counts as `CANCELLED`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Frame;

/// Metric names (so that tests and dashboards name them once).
pub mod names {
    /// Calls a backend served, by `grpc_service`, `grpc_method` and `grpc_code`.
    pub const SERVER_HANDLED: &str = "postern_grpc_server_handled_total";
    /// Seconds from a backend receiving a call to the end of its answer (a histogram), by
    /// `grpc_service` and `grpc_method`.
    pub const SERVER_SECONDS: &str = "postern_grpc_server_handling_seconds";
    /// Calls the gateway answered, by `grpc_service`, `grpc_method` and `grpc_code`: the
    /// callers' view, including the calls it refused itself (authentication, rate limit).
    pub const GATEWAY_HANDLED: &str = "postern_gateway_handled_total";
    /// Seconds from the gateway receiving a call to the end of its answer (a histogram).
    pub const GATEWAY_SECONDS: &str = "postern_gateway_handling_seconds";
    /// Calls refused before any service looked at them, by `reason` (`RATE_LIMITED`,
    /// `REQUEST_BUDGET_EXHAUSTED`, `PRINCIPAL_INVALID`, …).
    pub const REFUSALS: &str = "postern_refusals_total";
}

/// The name of a gRPC status code as the gRPC specification writes it (`OK`,
/// `NOT_FOUND`, …); `UNKNOWN` for a number outside the specification.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Which side of the suite observes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A backend service handling a call (from the gateway or from another service).
    Server,
    /// The gateway answering a caller.
    Gateway,
}

/// One call being observed, from its arrival to the end of its answer.
#[derive(Debug)]
pub struct Call {
    side: Side,
    service: String,
    method: String,
    started: Instant,
}

impl Call {
    /// Starts observing a call to `path` (`/package.Service/Method`).
    pub fn start(side: Side, path: &str) -> Self {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or("").to_owned();
        let method = parts.next().unwrap_or("").to_owned();
        Self { side, service, method, started: Instant::now() }
    }

    /// Observes `response` until its body ends, and answers it with the body boxed.
    pub fn observe<B>(self, response: http::Response<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        B::Error: Into<crate::server::BoxError>,
    {
        // A trailers-only answer (every error a handler returns) carries its status in the
        // headers, and its body is empty.
        match grpc_status(response.headers()) {
            Some(code) => {
                self.finish(code);
                response.map(tonic::body::Body::new)
            }
            None => response.map(|inner| tonic::body::Body::new(Observed { inner: Box::pin(inner), call: Some(self) })),
        }
    }

    fn finish(self, code: i32) {
        // A method the server does not have is the caller's invention: counting it under its
        // own name would let any caller grow the metric set without bound.
        let (service, method) = if code == tonic::Code::Unimplemented as i32 {
            ("unknown".to_owned(), "unknown".to_owned())
        } else {
            (self.service, self.method)
        };
        let (handled, seconds) = match self.side {
            Side::Server => (names::SERVER_HANDLED, names::SERVER_SECONDS),
            Side::Gateway => (names::GATEWAY_HANDLED, names::GATEWAY_SECONDS),
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        metrics::counter!(handled, "grpc_service" => service.clone(), "grpc_method" => method.clone(), "grpc_code" => code_name(code))
            .increment(1);
        metrics::histogram!(seconds, "grpc_service" => service, "grpc_method" => method).record(elapsed);
    }
}

/// The `grpc-status` of a header or trailer map.
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// An answer's body, watched for its trailers.
struct Observed<B> {
    inner: Pin<Box<B>>,
    call: Option<Call>,
}

impl<B: http_body::Body> http_body::Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(2)),
            // A body that fails or ends without trailers gave the caller no status.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Some(tonic::Code::Unknown as i32),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(call) = self.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(tonic::Code::Cancelled as i32);
        }
    }
}

/// Counts a call refused before any service looked at it, by its stable `reason`; the
/// refusing code logs it beside.
pub fn refused(reason: &'static str) {
    metrics::counter!(names::REFUSALS, "reason" => reason).increment(1);
}

/// Sets the gauges of a database pool: its open connections in use and idle, and its
/// maximum, labelled with `service` and `pool` (`shared`, or on SQLite `read` and `write`).
pub fn pool_gauges(service: &'static str, pool: &'static str, open: u32, idle: usize, max: u32) {
    let idle = idle.min(open as usize) as f64;
    let in_use = f64::from(open) - idle;
    metrics::gauge!("postern_db_pool_connections", "service" => service, "pool" => pool, "state" => "idle").set(idle);
    metrics::gauge!("postern_db_pool_connections", "service" => service, "pool" => pool, "state" => "in_use")
        .set(in_use);
    metrics::gauge!("postern_db_pool_max_connections", "service" => service, "pool" => pool).set(f64::from(max));
}

/// The commits of write transactions on `service`'s SQLite database, and the writes they held
/// (transactions, and single statements that joined one): writes over commits is how many share
/// a commit, and so an fsync, under the load at hand.
pub fn commit_counters(service: &'static str, commits: u64, writes: u64) {
    // Counters set to the figures read (they are accumulated by the database handle).
    metrics::counter!("postern_db_commits_total", "service" => service).absolute(commits);
    metrics::counter!("postern_db_committed_writes_total", "service" => service).absolute(writes);
}

/// The process's own figures, read from `/proc` on Linux (nothing elsewhere), under the
/// names the Prometheus client libraries use: `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`,
/// `process_max_fds`, `process_start_time_seconds`.
pub fn process_gauges() {
    #[cfg(target_os = "linux")]
    if let Some(p) = linux::read() {
        metrics::gauge!("process_resident_memory_bytes").set(p.resident_bytes as f64);
        metrics::gauge!("process_virtual_memory_bytes").set(p.virtual_bytes as f64);
        // A gauge under a counter's name: the figure is read, not accumulated here.
        metrics::gauge!("process_cpu_seconds_total").set(p.cpu_seconds);
        metrics::gauge!("process_open_fds").set(p.open_fds as f64);
        metrics::gauge!("process_max_fds").set(p.max_fds as f64);
        metrics::gauge!("process_start_time_seconds").set(p.start_time_seconds);
    }
}

#[cfg(target_os = "linux")]
mod linux {
    /// A reading of `/proc/self`.
    pub(super) struct Process {
        pub resident_bytes: u64,
        pub virtual_bytes: u64,
        pub cpu_seconds: f64,
        pub open_fds: usize,
        pub max_fds: u64,
        pub start_time_seconds: f64,
    }

    pub(super) fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime), 22 (starttime), 23 (vsize), 24 (rss), numbered
        // from 1 as proc(5) does; `fields[0]` is field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok()))?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        Some(Process {
            resident_bytes: field(24)? * rustix::param::page_size() as u64,
            virtual_bytes: field(23)?,
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            open_fds,
            max_fds,
            start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let p = linux::read().expect("/proc/self");
        assert!(p.resident_bytes > 1024 * 1024, "{}", p.resident_bytes);
        assert!(p.open_fds >= 3);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 3600.0, "{}", p.start_time_seconds);
    }
}
