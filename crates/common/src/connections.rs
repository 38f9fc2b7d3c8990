//! Bounded connections: what a server port accepts, for how long, and how many at once.
//!
//! A connection that never finishes its handshake, or that stays open with nothing to do,
//! costs a file descriptor and a task for ever unless something closes it; a thousand of them
//! exhaust the usual 1,024 open-file limit, and after that neither a new gRPC caller nor
//! `/healthz` gets in. So every port of a process accepts through one [`Connections`]:
//!
//! - a connection must start its first request within the *handshake timeout* (a TCP
//!   connection that sends nothing, or half an HTTP/2 preface, is closed);
//! - a connection with no request in flight for the *idle timeout* is closed (a long
//!   streaming call is in flight, so it is not idle);
//! - at most *max connections* are open at once across all ports, below the open-file limit
//!   (which [`raise_file_limit`] lifts to its hard maximum at start). At the limit, a new
//!   connection takes the place of the connection that has been idle longest; when every
//!   connection has a call in flight, the one busy longest without a break is closed if it
//!   has been busy for more than the *long-call* time (streams held open, a body that
//!   trickles in, an answer its client never reads); only when every connection is busy and
//!   none for that long is the newcomer turned away. So neither idle connections nor open
//!   streams nor slow clients can lock out a caller with work to do, `/healthz` included;
//! - on shutdown ([`Connections::shutdown`]) idle connections close at once and busy ones
//!   [`WRITE_GRACE`] after their calls finish (hyper writes an answer's last frame after its
//!   body ends: closing at once could cut it), or once they have been busy for the long-call
//!   time: neither an idle client nor one that never reads its answer can hold up a graceful
//!   stop.
//!
//! HTTP/2 keepalive (pings that find dead peers), the number of concurrent streams and the
//! size of a header list per connection are set on the HTTP/2 server from the same
//! [`ConnectionLimits`].
//!
//! Closing is done under hyper: the socket of a closed connection reads as ended and refuses
//! writes, so hyper ends the connection and drops the socket, whatever state its protocol is
//! in (a half-read preface included).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What a process's ports allow each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, across every port of the process.
    pub max_connections: usize,
    /// How long a new connection may take to start its first request.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged to check the peer is alive.
    pub keepalive_interval: Duration,
    /// How long the answer to such a ping may take before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Streams (calls) one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// The largest header list (request metadata) accepted, in bytes.
    pub max_header_list_size: u32,
    /// How long a connection may stay busy without a break before it may be closed to make
    /// room for a newcomer (when every connection is busy) or to finish a shutdown.
    pub long_call: Duration,
    /// The bytes of request messages whose calls may be in flight through the gateway at
    /// once, across every connection (see `postern_gateway::budget`).
    pub request_bytes_in_flight: usize,
}

impl ConnectionLimits {
    /// The limits of a server with `max_connections` (see [`connection_budget`]) and the
    /// house timeouts: 10 s to start a request, 60 s idle, keepalive pings every 30 s answered
    /// within 20 s, 256 streams and 16 KiB of headers per connection, 10 s for a long call,
    /// and 64 MiB of request messages in flight.
    pub fn with_max_connections(max_connections: usize) -> Self {
        Self {
            max_connections: max_connections.max(1),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 256,
            max_header_list_size: 16 * 1024,
            long_call: Duration::from_secs(10),
            request_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

/// Raises the soft limit of open files to the hard limit and answers the limit in force
/// (`None` where the platform has none to tell).
pub fn raise_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some() && limit.current != limit.maximum {
            let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit");
                    return limit.maximum.or(Some(u64::MAX));
                }
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
        }
        Some(limit.current.unwrap_or(u64::MAX))
    }
    #[cfg(not(unix))]
    None
}

/// The connections a process may hold open with `file_limit` open files: the files less
/// what the process needs besides (its databases' files and pools, listeners, backend
/// channels), kept apart as max(160, an eighth), and at most `65_536`.
pub fn connection_budget(file_limit: Option<u64>) -> usize {
    const CAP: u64 = 65_536;
    let Some(files) = file_limit else { return 10_000 };
    let reserve = (files / 8).max(160);
    usize::try_from(files.saturating_sub(reserve).clamp(16, CAP)).unwrap_or(16)
}

/// The connections of one process, shared by all its ports: the limits, the open
/// connections, and the shutdown switch. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Connections {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: ConnectionLimits,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    shutting_down: CancellationToken,
    /// Notified each time a connection leaves the open set, so that a newcomer held back
    /// while evicted connections are still closing is admitted as soon as they are gone.
    gone: tokio::sync::Notify,
}

/// What admission decided for a newly accepted connection.
enum Admission {
    /// Registered: serve it.
    Admitted(LimitedStream),
    /// Every connection is busy, or the server is shutting down: close it.
    Refused,
    /// At the limit with many evicted connections still closing: try again once some are
    /// gone (holding the newcomer back instead of resetting it).
    Wait(TcpStream),
}

/// How long a newcomer is held back waiting for evicted connections to go before it is
/// closed after all.
const ADMISSION_PATIENCE: Duration = Duration::from_secs(5);

/// How long a connection whose last call has just been answered stays open at shutdown before
/// it is closed: time for hyper to write the answer's last frame (sent after the body ends)
/// and for a well-behaved client to close on the server's GOAWAY, which ends it sooner.
pub const WRITE_GRACE: Duration = Duration::from_millis(500);

/// What one open connection is doing.
#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Requests begun since the connection opened.
    started: u64,
    /// Requests not yet answered in full.
    in_flight: usize,
    /// Since when nothing has been in flight (`None` while something is).
    idle_since: Option<Instant>,
    /// Since when something has been in flight without a break (`None` while idle).
    busy_since: Option<Instant>,
}

/// One open connection, as its requests and its timers see it.
#[derive(Debug)]
pub struct Conn {
    activity: watch::Sender<Activity>,
    close: CancellationToken,
}

impl Conn {
    /// Marks a request begun; the guard marks it answered when dropped (with the body of its
    /// answer, once that is sent in full).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.activity.send_modify(|a| {
            a.started += 1;
            a.in_flight += 1;
            a.idle_since = None;
            a.busy_since = a.busy_since.or_else(|| Some(Instant::now()));
        });
        RequestGuard { conn: self.clone() }
    }

    /// Closes the connection (its socket reads as ended and refuses writes).
    fn close(&self) {
        self.close.cancel();
    }
}

/// A request in flight on a connection; answered when dropped.
#[derive(Debug)]
pub struct RequestGuard {
    conn: Arc<Conn>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.activity.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = Some(Instant::now());
                a.busy_since = None;
            }
        });
    }
}

/// What a request learns of its connection: its addresses, and the connection to mark busy.
/// tonic puts it in the request's extensions; see [`TrackLayer`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The addresses, as tonic's plain TCP connections give them.
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// The connection.
    pub conn: Arc<Conn>,
}

impl Connections {
    /// No connections yet, under `limits`.
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                limits,
                open: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                shutting_down: CancellationToken::new(),
                gone: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.shared.limits
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.shared.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Closes every idle connection now and every other one as soon as its calls are
    /// answered. New connections are closed at once.
    pub fn shutdown(&self) {
        self.shared.shutting_down.cancel();
    }

    /// Accepts the next connection on `listener` that may stay, answering it ready to serve.
    /// Failures to accept (out of file descriptors, say) are logged and retried after making
    /// room; they never end the server.
    pub async fn accept(&self, listener: &TcpListener) -> LimitedStream {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(stream) = self.admit_patiently(stream, remote).await {
                        return stream;
                    }
                }
                Err(e) => {
                    // EMFILE and its kind: close the connection idle longest (if any) and
                    // breathe, instead of spinning on the same error.
                    let evicted = self.evict_idlest(self.shared.limits.long_call);
                    tracing::warn!(error = %e, evicted, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(if evicted { 5 } else { 100 })).await;
                }
            }
        }
    }

    /// A stream of accepted connections for tonic's `serve_with_incoming_shutdown`.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl futures_util::Stream<Item = Result<LimitedStream, std::convert::Infallible>> + Send + 'static {
        let connections = self.clone();
        futures_util::stream::unfold((connections, listener), |(connections, listener)| async move {
            let stream = connections.accept(&listener).await;
            Some((Ok(stream), (connections, listener)))
        })
    }

    /// Admits `stream`, holding it back (up to [`ADMISSION_PATIENCE`]) while the
    /// connections evicted to make room are still closing; `None` when it must go.
    async fn admit_patiently(&self, mut stream: TcpStream, remote: SocketAddr) -> Option<LimitedStream> {
        let deadline = tokio::time::Instant::now() + ADMISSION_PATIENCE;
        loop {
            // Registered before admission looks, so that a departure in between is not missed.
            let gone = self.shared.gone.notified();
            match self.admit(stream, remote) {
                Admission::Admitted(s) => return Some(s),
                Admission::Refused => return None,
                Admission::Wait(s) => stream = s,
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                metrics::counter!("postern_connections_refused_total").increment(1);
                tracing::debug!(%remote, "connection refused: evicted connections did not close in time");
                return None;
            }
        }
    }

    /// Registers `stream`, making room when at the limit.
    fn admit(&self, stream: TcpStream, remote: SocketAddr) -> Admission {
        let limits = self.shared.limits;
        if self.shared.shutting_down.is_cancelled() {
            return Admission::Refused;
        }
        let conn = {
            let mut open = self.shared.open.lock().unwrap_or_else(PoisonError::into_inner);
            if open.len() >= limits.max_connections {
                let closing = open.values().filter(|c| c.close.is_cancelled()).count();
                // Room is made by closing the connection idle longest; the ones already
                // closing are counted until they are gone, within a few of the limit. With
                // many still closing, the newcomer waits for them rather than being reset.
                if closing >= 64 {
                    return Admission::Wait(stream);
                }
                if !Self::evict_idlest_in(&open, limits.long_call) {
                    metrics::counter!("postern_connections_refused_total").increment(1);
                    tracing::debug!(%remote, "connection refused: every connection is busy");
                    return Admission::Refused;
                }
            }
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (activity, _) = watch::channel(Activity {
                started: 0,
                in_flight: 0,
                idle_since: Some(Instant::now()),
                busy_since: None,
            });
            let conn = Arc::new(Conn { activity, close: CancellationToken::new() });
            open.insert(id, conn.clone());
            (id, conn)
        };
        let (id, conn) = conn;
        tokio::spawn(watch_idle(conn.clone(), limits, self.shared.shutting_down.clone()));
        let info = ConnInfo {
            tcp: tonic::transport::server::TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(remote),
            },
            conn: conn.clone(),
        };
        let closed = conn.close.clone().cancelled_owned();
        Admission::Admitted(LimitedStream {
            io: stream,
            closed: Box::pin(closed),
            is_closed: false,
            info,
            _registration: Registration { id, conn, shared: self.shared.clone() },
        })
    }

    fn evict_idlest(&self, long_call: Duration) -> bool {
        let open = self.shared.open.lock().unwrap_or_else(PoisonError::into_inner);
        Self::evict_idlest_in(&open, long_call)
    }

    /// Closes the connection idle longest or, when none is idle, the one busy longest
    /// without a break if that is longer than `long_call`; says whether one was closed.
    fn evict_idlest_in(open: &HashMap<u64, Arc<Conn>>, long_call: Duration) -> bool {
        let live = || open.values().filter(|c| !c.close.is_cancelled());
        let idlest =
            live().filter_map(|c| c.activity.borrow().idle_since.map(|since| (since, c))).min_by_key(|(s, _)| *s);
        let (conn, kind) = match idlest {
            Some((_, conn)) => (conn, "idle"),
            None => {
                let busiest = live()
                    .filter_map(|c| c.activity.borrow().busy_since.map(|since| (since, c)))
                    .min_by_key(|(s, _)| *s)
                    .filter(|(since, _)| since.elapsed() >= long_call);
                match busiest {
                    Some((_, conn)) => (conn, "long_call"),
                    None => return false,
                }
            }
        };
        metrics::counter!("postern_connections_evicted_total", "kind" => kind).increment(1);
        conn.close();
        true
    }
}

/// Closes `conn` when it has not started a request within the handshake timeout, when it
/// has had nothing in flight for the idle timeout, or when the server shuts down and it has
/// nothing in flight or has been busy for the long-call time. Ends when the connection goes.
async fn watch_idle(conn: Arc<Conn>, limits: ConnectionLimits, shutting_down: CancellationToken) {
    let mut activity = conn.activity.subscribe();
    let closed = conn.close.clone();
    let stuck = std::pin::pin!(busy_too_long_after(shutting_down.clone(), conn.activity.subscribe(), limits.long_call));
    let mut stuck = stuck;
    loop {
        // Until nothing is in flight (or the connection goes, or is stuck at shutdown).
        let seen = tokio::select! {
            () = closed.cancelled() => return,
            () = &mut stuck => {
                metrics::counter!("postern_connections_timed_out_total", "kind" => "shutdown").increment(1);
                conn.close();
                return;
            }
            a = activity.wait_for(|a| a.in_flight == 0) => match a {
                Ok(a) => a.started,
                Err(_) => return,
            },
        };
        let limit = if seen == 0 { limits.handshake_timeout } else { limits.idle_timeout };
        let timed_out = tokio::select! {
            // A request that begins wins over a timer or shutdown that fires with it.
            biased;
            () = closed.cancelled() => return,
            a = activity.wait_for(|a| a.started != seen) => match a {
                Ok(_) => continue,
                Err(_) => return,
            },
            () = shutting_down.cancelled() => false,
            () = tokio::time::sleep(limit) => true,
        };
        if !timed_out && seen > 0 {
            // Shutting down just after an answer: its last frame may not be written yet.
            tokio::select! {
                () = closed.cancelled() => return,
                () = tokio::time::sleep(WRITE_GRACE) => {}
            }
        }
        // Closed only if still nothing has begun; a request beginning now waits for this.
        let activity = activity.borrow();
        if activity.started != seen {
            continue;
        }
        if timed_out {
            let kind = if seen == 0 { "handshake" } else { "idle" };
            metrics::counter!("postern_connections_timed_out_total", "kind" => kind).increment(1);
        }
        conn.close();
        return;
    }
}

/// Resolves once `shutting_down` is cancelled and the connection has then been busy without a
/// break for `long_call` (counted from when the busy spell began, so a call stuck since long
/// before the shutdown is cut at once).
async fn busy_too_long_after(
    shutting_down: CancellationToken,
    mut activity: watch::Receiver<Activity>,
    long_call: Duration,
) {
    shutting_down.cancelled().await;
    loop {
        let since = activity.borrow_and_update().busy_since;
        match since {
            None => {
                if activity.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
            Some(since) => {
                let at = tokio::time::Instant::from_std(since + long_call);
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {
                        if activity.borrow().busy_since == Some(since) {
                            return;
                        }
                    }
                    changed = activity.changed() => if changed.is_err() {
                        return std::future::pending().await;
                    },
                }
            }
        }
    }
}

/// Removes a connection from the open set when its socket goes.
#[derive(Debug)]
struct Registration {
    id: u64,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Ends the connection's timer task too.
        self.conn.close();
        self.shared.open.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        self.shared.gone.notify_waiters();
    }
}

/// An accepted TCP connection that reads as ended and refuses writes once closed (by a
/// timeout, to make room, or by shutdown).
pub struct LimitedStream {
    io: TcpStream,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    is_closed: bool,
    info: ConnInfo,
    _registration: Registration,
}

impl std::fmt::Debug for LimitedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedStream").field("remote", &self.info.tcp.remote_addr).finish_non_exhaustive()
    }
}

impl LimitedStream {
    /// The connection's addresses and its activity.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Whether the connection has been closed; registers `cx` to be woken when it is.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_closed && self.closed.as_mut().poll(cx).is_ready() {
            self.is_closed = true;
        }
        self.is_closed
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the server (idle, or making room)")
}

impl AsyncRead for LimitedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.poll_closed(cx) {
            // The end of the stream: hyper ends the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.poll_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.poll_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for LimitedStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// Finds a request's connection in its extensions.
pub type FindConn = fn(&http::Extensions) -> Option<ConnInfo>;

/// Marks each request's connection busy until its answer is sent in full, and gives the
/// request tonic's `TcpConnectInfo` (so `remote_addr()` works as over a plain socket).
#[derive(Clone, Copy)]
pub struct TrackLayer {
    find: FindConn,
}

impl std::fmt::Debug for TrackLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackLayer").finish_non_exhaustive()
    }
}

impl TrackLayer {
    /// For tonic servers, which put [`ConnInfo`] in the extensions themselves.
    pub fn tonic() -> Self {
        Self { find: |e| e.get::<ConnInfo>().cloned() }
    }

    /// For servers that put the connection elsewhere, found by `find`.
    pub fn new(find: FindConn) -> Self {
        Self { find }
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Track { inner, find: self.find }
    }
}

/// The service of [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    find: FindConn,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Track<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Track").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Track<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<R>>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use futures_util::FutureExt;
        let guard = (self.find)(req.extensions()).map(|info| {
            req.extensions_mut().insert(info.tcp.clone());
            info.conn.begin()
        });
        let answer = self.inner.call(req);
        async move {
            let response = answer.await?;
            Ok(response.map(|inner| TrackedBody { inner, _guard: guard }))
        }
        .boxed()
    }
}

/// An answer's body that keeps its request in flight until sent in full (or dropped).
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _guard: Option<RequestGuard>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_files_for_the_process() {
        assert_eq!(connection_budget(Some(1024)), 864);
        assert_eq!(connection_budget(Some(512)), 352);
        assert_eq!(connection_budget(Some(100)), 16);
        assert_eq!(connection_budget(Some(1 << 20)), 65_536);
    }

    fn limits(max: usize) -> ConnectionLimits {
        ConnectionLimits {
            handshake_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            ..ConnectionLimits::with_max_connections(max)
        }
    }

    async fn pair(listener: &TcpListener, connections: &Connections) -> (TcpStream, LimitedStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), connections.accept(listener));
        (client.unwrap(), server)
    }

    /// Reads `stream` until it ends; answers how many bytes came.
    async fn read_to_end(stream: &mut LimitedStream) -> usize {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connections = Connections::new(limits(8));
        let (_client, mut server) = pair(&listener, &connections).await;
        let opened = tokio::time::Instant::now();
        assert_eq!(read_to_end(&mut server).await, 0);
        assert!(opened.elapsed() >= Duration::from_millis(300));
        drop(server);
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_stay_and_idle_ones_go_after_the_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connections = Connections::new(limits(8));
        let (_client, mut server) = pair(&listener, &connections).await;
        let request = server.info().conn.begin();
        // Well past both timeouts with a request in flight: still open.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!server.info().conn.close.is_cancelled());
        let idle = tokio::time::Instant::now();
        drop(request);
        assert_eq!(read_to_end(&mut server).await, 0);
        assert!(idle.elapsed() >= Duration::from_millis(600), "the idle timeout, not the handshake's, applies");
    }

    #[tokio::test]
    async fn at_the_limit_the_idlest_connection_makes_room_and_busy_ones_are_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connections = Connections::new(ConnectionLimits {
            handshake_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            ..ConnectionLimits::with_max_connections(2)
        });
        let (_c1, mut idle) = pair(&listener, &connections).await;
        let (_c2, busy) = pair(&listener, &connections).await;
        let _request = busy.info().conn.begin();
        let (_c3, newcomer) = pair(&listener, &connections).await;
        assert_eq!(read_to_end(&mut idle).await, 0, "the idle connection made room");
        assert!(!busy.info().conn.close.is_cancelled());
        drop(idle);
        let _newcomer_request = newcomer.info().conn.begin();
        // Everything busy: a fourth connection is turned away (accept keeps waiting).
        let addr = listener.local_addr().unwrap();
        let _c4 = TcpStream::connect(addr).await.unwrap();
        let turned_away =
            tokio::time::timeout(Duration::from_millis(200), connections.accept(&listener)).await.is_err();
        assert!(turned_away);
        assert_eq!(connections.open(), 2);
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_busy_ones_when_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connections = Connections::new(ConnectionLimits {
            handshake_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            ..ConnectionLimits::with_max_connections(8)
        });
        let (_c1, mut idle) = pair(&listener, &connections).await;
        let (_c2, mut busy) = pair(&listener, &connections).await;
        let request = busy.info().conn.begin();
        connections.shutdown();
        assert_eq!(read_to_end(&mut idle).await, 0);
        tokio::task::yield_now().await;
        assert!(!busy.info().conn.close.is_cancelled(), "a call in flight drains");
        drop(request);
        // Its answer's last frame is still to be written: the connection takes it.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        assert!(!busy.info().conn.close.is_cancelled(), "closed before the answer's last frame could be written");
        use tokio::io::AsyncWriteExt;
        busy.write_all(b"last frame").await.expect("written after the call ended");
        let answered = tokio::time::Instant::now();
        assert_eq!(read_to_end(&mut busy).await, 0);
        assert!(answered.elapsed() < WRITE_GRACE + Duration::from_secs(1), "closed within the grace");
    }
}
