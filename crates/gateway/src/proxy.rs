//! The forwarding path of every call that is not health or reflection, in the order it runs:
//! request id and trace context, the tracing span, authentication, the rate limit, routing,
//! the request memory budget ([`crate::budget`]), the deadline, and the call to the backend,
//! whose body streams through undecoded (and is ended at shutdown: [`crate::closing`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use postern_common::telemetry;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Request, Response};
use postern_common::error::{permission_denied, status, status_with_metadata};
use postern_common::principal::{InternalKey, PEER_HEADER, PRINCIPAL_HEADER, Principal};
use postern_common::server::{REQUEST_ID_HEADER, TRACEPARENT_HEADER, trace_id};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::ServiceExt;
use tracing::Instrument;

use crate::auth::KeyAuthenticator;
use crate::budget::{self, RequestBudget};
use crate::closing::Closable;
use crate::routing::RouteTable;

/// The forwarding service.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    routes: RouteTable,
    auth: KeyAuthenticator,
    internal_key: InternalKey,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    default_deadline: Duration,
    budget: RequestBudget,
    closing: tokio::sync::watch::Receiver<bool>,
}

/// Rate limit settings: sustained calls per second per key, and the burst above it.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Calls per second per key (or per address for unauthenticated callers); 0 disables.
    pub per_second: u32,
    /// Calls allowed at once above the sustained rate.
    pub burst: u32,
}

impl Proxy {
    /// A proxy over `routes`, authenticating with `auth`; the answers it forwards end once
    /// `closing` has been true for [`STREAM_GRACE`](crate::closing::STREAM_GRACE).
    pub fn new(
        routes: RouteTable,
        auth: KeyAuthenticator,
        internal_key: InternalKey,
        rate: RateLimit,
        default_deadline: Duration,
        request_bytes_in_flight: usize,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let limiter = NonZeroU32::new(rate.per_second).map(|per| {
            let burst = NonZeroU32::new(rate.burst.max(rate.per_second)).unwrap_or(per);
            RateLimiter::keyed(Quota::per_second(per).allow_burst(burst))
        });
        let budget = RequestBudget::new(request_bytes_in_flight);
        Self { inner: Arc::new(Inner { routes, auth, internal_key, limiter, default_deadline, budget, closing }) }
    }
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let request_id = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_owned)
            .unwrap_or_else(postern_common::ids::new_id);
        let incoming = req.headers().get(TRACEPARENT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!(
            "gateway",
            method = %path,
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            principal = tracing::field::Empty,
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
        );
        // Exported over OTLP, the span is the caller's child and the backend's parent;
        // otherwise the caller's trace goes on with a span id of the gateway's own.
        if let Some(incoming) = &incoming {
            postern_common::trace::adopt(&span, incoming);
        }
        let (trace, traceparent) = match postern_common::trace::traceparent_of(&span) {
            Some(own) => (own.get(3..35).unwrap_or_default().to_owned(), own),
            None => continue_trace(incoming.as_deref()),
        };
        span.record("trace_id", trace.as_str());
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            req.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            req.headers_mut().insert(TRACEPARENT_HEADER, v);
        }
        async move {
            let call = telemetry::Call::start(telemetry::Side::Gateway, &path);
            let service = path.trim_start_matches('/').split('/').next().unwrap_or("").to_owned();
            let response = match inner.forward(req, &path, &service).await {
                Ok(r) => r,
                Err(s) => s.into_http(),
            };
            // A status in the headers is an answer without a body (every refusal); the
            // status of any other comes in its trailers, which the observer reads.
            let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
            if let Some(code) = code.filter(|c| *c != 0) {
                tracing::info!(code = telemetry::code_name(code), "call refused or failed");
            }
            let mut response = call.observe(response);
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            Ok(response)
        }
        .instrument(span)
        .boxed()
    }
}

impl Inner {
    async fn forward(&self, mut req: Request<Body>, path: &str, service: &str) -> Result<Response<Body>, Status> {
        let backend = self.routes.get(service).ok_or_else(|| {
            status(
                Code::Unimplemented,
                "UNKNOWN_SERVICE",
                format!("no service {service:?} behind this gateway; list them with server reflection"),
            )
        })?;
        if self.routes.is_internal(path) {
            return Err(permission_denied(
                "INTERNAL_ONLY",
                format!("{path} is internal to Postern and is not served to callers"),
            ));
        }

        // A caller never speaks for Postern: drop any principal it sent, and its key after use.
        req.headers_mut().remove(PRINCIPAL_HEADER);
        req.headers_mut().remove(PEER_HEADER);
        let authorization = req.headers_mut().remove(http::header::AUTHORIZATION);
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|c| c.remote_addr)
            .map(|a| a.ip());
        let by_address = format!("addr:{}", peer.map_or_else(|| "unknown".into(), |ip: IpAddr| ip.to_string()));
        let principal = if authorization.is_none() && self.routes.is_public(path) {
            // A public method called without a key: the caller is anonymous, limited by address.
            Principal::Anonymous
        } else {
            match self.auth.authenticate(authorization.as_ref().and_then(|v| v.to_str().ok())).await {
                Ok(p) => p,
                Err(s) => {
                    // Failed attempts count against the caller's address, so guessing keys is slow.
                    self.check_rate(&by_address)?;
                    return Err(s);
                }
            }
        };
        tracing::Span::current().record("principal", tracing::field::display(&principal));
        self.check_rate(&rate_key(&principal).unwrap_or(by_address))?;

        let endpoint = backend
            .pick()
            .ok_or_else(|| {
                status_with_metadata(
                    Code::Unavailable,
                    "SERVICE_UNAVAILABLE",
                    format!("{service} is unavailable: no backend is up; retry later"),
                    [("service", service)],
                )
            })?
            .clone();
        req.headers_mut().insert(PRINCIPAL_HEADER, self.internal_key.sign(&principal, path));
        // Backends reached over a socket see the gateway's address; tell them the caller's.
        if let Some(v) = peer.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
            req.headers_mut().insert(PEER_HEADER, v);
        }

        let deadline = requested_deadline(&req).map_or(self.default_deadline, |d| d.min(self.default_deadline));
        // The message's size reserved from the request budget until the answer is sent
        // (crate::budget); the wait for it counts against the deadline.
        let admitted = Instant::now();
        let (parts, body) = req.into_parts();
        let (body, share) = self.budget.admit(body, deadline.min(budget::MAX_WAIT)).await?;
        let mut req = Request::from_parts(parts, body);
        let deadline = deadline.saturating_sub(admitted.elapsed()).max(Duration::from_millis(1));
        if let Ok(v) = HeaderValue::from_str(&format!("{}m", deadline.as_millis().max(1))) {
            req.headers_mut().insert("grpc-timeout", v);
        }
        match tokio::time::timeout(deadline, endpoint.service().oneshot(req)).await {
            Err(_) => Err(status_with_metadata(
                Code::DeadlineExceeded,
                "SERVICE_DEADLINE_EXCEEDED",
                format!("{service} did not answer within {} ms", deadline.as_millis()),
                [("service", service)],
            )),
            Ok(Ok(response)) => {
                Ok(response
                    .map(|body| Body::new(Closable::new(budget::Holding::new(body, share), self.closing.clone()))))
            }
            Ok(Err(e)) => {
                endpoint.mark_down();
                tracing::warn!(address = %endpoint.address, error = %e, "backend call failed");
                Err(status_with_metadata(
                    Code::Unavailable,
                    "SERVICE_UNAVAILABLE",
                    format!("{service} is unavailable; retry later"),
                    [("service", service)],
                ))
            }
        }
    }

    /// Counts a call against `key` (`admin`, `key:<key id>`, `service:<name>` or
    /// `addr:<address>`; never a secret), refusing it `RATE_LIMITED` over the limit.
    fn check_rate(&self, key: &str) -> Result<(), Status> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            telemetry::refused("RATE_LIMITED");
            tracing::warn!(
                reason = "RATE_LIMITED",
                counted_by = key,
                retry_after_ms = wait.as_millis() as u64,
                "call refused: over the rate limit of its key or address (POSTERN_RATE_LIMIT, POSTERN_RATE_BURST)"
            );
            let mut details = tonic_types::ErrorDetails::new();
            details.set_retry_info(Some(wait));
            details.set_error_info(
                "RATE_LIMITED",
                postern_common::error::ERROR_DOMAIN,
                std::collections::HashMap::<String, String>::new(),
            );
            <Status as tonic_types::StatusExt>::with_error_details(
                Code::ResourceExhausted,
                format!("rate limit exceeded for this key; retry in {} ms", wait.as_millis().max(1)),
                details,
            )
        })
    }
}

/// What a caller's calls are counted by: its key, or (`None`) its address when it has none.
fn rate_key(p: &Principal) -> Option<String> {
    match p {
        Principal::Admin => Some("admin".into()),
        Principal::Tenant { key_id, .. } => Some(format!("key:{key_id}")),
        Principal::Service(s) => Some(format!("service:{s}")),
        Principal::Anonymous => None,
    }
}

/// The trace id to log and the `traceparent` to send on: the caller's trace continued with
/// a new span id, or a new trace.
fn continue_trace(incoming: Option<&str>) -> (String, String) {
    let span_id = hex::encode(rand::random::<[u8; 8]>());
    match incoming.and_then(trace_id) {
        Some(trace) => {
            let flags = incoming.and_then(|t| t.rsplit('-').next()).filter(|f| f.len() == 2).unwrap_or("01");
            (trace.to_owned(), format!("00-{trace}-{span_id}-{flags}"))
        }
        None => {
            let trace = hex::encode(rand::random::<[u8; 16]>());
            (trace.clone(), format!("00-{trace}-{span_id}-01"))
        }
    }
}

/// The deadline a caller asked for in `grpc-timeout` (`100m`, `5S`, …).
fn requested_deadline<B>(req: &Request<B>) -> Option<Duration> {
    let v = req.headers().get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let req = |v: &str| Request::builder().header("grpc-timeout", v).body(()).expect("request");
        assert_eq!(requested_deadline(&req("100m")), Some(Duration::from_millis(100)));
        assert_eq!(requested_deadline(&req("2S")), Some(Duration::from_secs(2)));
        assert_eq!(requested_deadline(&req("x")), None);
        assert_eq!(requested_deadline(&req("5Q")), None);
    }

    #[test]
    fn traces() {
        let (t, p) = continue_trace(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(t, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!p.contains("00f067aa0ba902b7"));
        let (t, p) = continue_trace(None);
        assert_eq!(trace_id(&p), Some(t.as_str()));
    }
}
