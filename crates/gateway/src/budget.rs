//! The memory the gateway lets callers' requests take at once.
//!
//! A backend buffers a request's whole message before decoding it, and the decoded message
//! lives as long as its call. Nothing else bounds the sum: the connection limit times 256
//! streams per connection times tonic's 4 MiB message limit is terabytes, and the heap
//! profile of the hostile-input soak (issue 10) showed request buffers as the largest and
//! only caller-driven share of the heap. So every call through the gateway first reserves
//! its message's size (read from the gRPC length prefix, before any of the message is
//! buffered) from one budget per process ([`ConnectionLimits::request_bytes_in_flight`],
//! 64 MiB by default) and gives it back when its answer has been sent. A call that cannot get
//! its share within its deadline (at most [`MAX_WAIT`]) is refused `RESOURCE_EXHAUSTED`,
//! which tells a well-behaved client to back off; nothing partial is ever held while waiting,
//! so calls cannot hold each other up half-admitted.
//!
//! [`ConnectionLimits::request_bytes_in_flight`]: postern_common::connections::ConnectionLimits

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use postern_common::error::status_with_metadata;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::{Code, Status};

/// The unit the budget counts in: a reservation is rounded up to whole KiB.
const UNIT: usize = 1024;

/// tonic's default limit on a decoded message: a larger one is refused by the backend as
/// soon as it reads the length prefix, so no reservation needs to be larger.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The longest a call waits for its share before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The `ErrorInfo.reason` of a call refused for want of request memory.
pub const REQUEST_BUDGET_EXHAUSTED: &str = "REQUEST_BUDGET_EXHAUSTED";

/// The process's budget of request bytes in flight.
#[derive(Clone, Debug)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

/// A call's share of the budget, held until its answer is done (given back on drop).
#[derive(Debug)]
pub struct Share {
    _permit: OwnedSemaphorePermit,
}

impl RequestBudget {
    /// A budget of `bytes` (at least one largest message).
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.max(MAX_MESSAGE + UNIT);
        Self { permits: Arc::new(Semaphore::new(bytes.div_ceil(UNIT))), bytes }
    }

    /// The bytes of the budget not reserved now.
    pub fn available(&self) -> usize {
        self.permits.available_permits() * UNIT
    }

    /// Reads `body` up to the gRPC length prefix of its first message, reserves that many
    /// bytes (waiting at most `wait`), and answers the body (what was read put back in
    /// front) with the share.
    pub async fn admit(&self, mut body: Body, wait: Duration) -> Result<(Body, Share), Status> {
        let mut read: Vec<Result<Frame<Bytes>, Status>> = Vec::new();
        let mut prefix = Vec::with_capacity(5);
        while prefix.len() < 5 {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let mut chunk = data.clone();
                        while prefix.len() < 5 && chunk.has_remaining() {
                            prefix.push(chunk.get_u8());
                        }
                    }
                    read.push(Ok(frame));
                }
                Some(Err(e)) => {
                    read.push(Err(e));
                    break;
                }
            }
        }
        let length = match prefix[..] {
            [_, a, b, c, d] => u32::from_be_bytes([a, b, c, d]) as usize,
            // No complete prefix: the backend answers the malformed request; it holds nothing.
            _ => 0,
        };
        let units = (length + 5).min(MAX_MESSAGE + 5).div_ceil(UNIT);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let permit = match tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(units)).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a timeout is the budget being spent.
            Ok(Err(_)) | Err(_) => {
                postern_common::telemetry::refused(REQUEST_BUDGET_EXHAUSTED);
                tracing::warn!(
                    reason = REQUEST_BUDGET_EXHAUSTED,
                    message_bytes = length,
                    budget_bytes = self.bytes,
                    "call refused: the request memory budget stayed spent"
                );
                return Err(status_with_metadata(
                    Code::ResourceExhausted,
                    REQUEST_BUDGET_EXHAUSTED,
                    format!(
                        "the server holds as many request bytes as it allows at once ({} MiB); retry shortly",
                        self.bytes / (1024 * 1024)
                    ),
                    [("budget_bytes", self.bytes.to_string().as_str())],
                ));
            }
        };
        read.reverse();
        Ok((Body::new(Replayed { read, rest: body }), Share { _permit: permit }))
    }
}

/// A body whose first frames were read already.
struct Replayed {
    /// What was read, last first.
    read: Vec<Result<Frame<Bytes>, Status>>,
    rest: Body,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.read.pop() {
            return Poll::Ready(Some(frame));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.read.is_empty() { self.rest.size_hint() } else { SizeHint::default() }
    }
}

/// An answer's body that holds its call's share until it is done (or dropped).
pub struct Holding {
    inner: Body,
    _share: Share,
}

impl Holding {
    /// `inner`, holding `share`.
    pub fn new(inner: Body, share: Share) -> Self {
        Self { inner, _share: share }
    }
}

impl HttpBody for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Body {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&u32::try_from(len).expect("small").to_be_bytes());
        bytes.extend(std::iter::repeat_n(b'x', len));
        use http_body_util::BodyExt;
        Body::new(http_body_util::Full::new(Bytes::from(bytes)).map_err(|e| match e {}))
    }

    async fn collect(body: Body) -> Vec<u8> {
        use http_body_util::BodyExt;
        body.collect().await.expect("body").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_share_is_the_message_size_and_the_body_is_intact() {
        let budget = RequestBudget::new(8 * 1024 * 1024);
        let all = budget.available();
        let (body, share) = budget.admit(message(100_000), MAX_WAIT).await.expect("admitted");
        assert_eq!(all - budget.available(), 100_005usize.div_ceil(UNIT) * UNIT);
        let bytes = collect(body).await;
        assert_eq!(bytes.len(), 100_005);
        assert!(bytes[5..].iter().all(|b| *b == b'x'));
        drop(share);
        assert_eq!(budget.available(), all);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_refuses_after_the_wait_and_frees_when_answers_finish() {
        let budget = RequestBudget::new(0); // the smallest: one largest message
        let (_body, share) = budget.admit(message(4 * 1024 * 1024), MAX_WAIT).await.expect("first");
        let refused = budget.admit(message(600_000), Duration::from_secs(2)).await.expect_err("spent");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("retry shortly"), "{}", refused.message());
        // A waiting call gets in as soon as the first one's answer is done.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.admit(message(600_000), MAX_WAIT).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(Holding::new(Body::empty(), share));
        waiting.await.expect("task").expect("admitted once freed");
    }

    #[tokio::test]
    async fn bodies_without_a_prefix_pass_and_hold_little() {
        let budget = RequestBudget::new(0);
        let all = budget.available();
        let (body, _share) = budget.admit(Body::empty(), MAX_WAIT).await.expect("empty body");
        assert!(collect(body).await.is_empty());
        assert_eq!(all - budget.available(), UNIT);
    }
}
