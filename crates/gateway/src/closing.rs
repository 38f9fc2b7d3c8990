//! Answers still streaming when the gateway shuts down.
//!
//! A graceful shutdown waits for every call in flight to finish. A unary answer finishes in
//! moments, but a stream that lives as long as its client wants (`WatchConnections`) would
//! hold the drain up until the process gives up and exits with an error, as would a health
//! `Watch` (what grpc-go's client-side health checking keeps open to every server). So every
//! answer the gateway forwards, and every answer of its own (health, reflection), goes
//! through [`Closable`]: once the gateway is closing, an answer gets
//! [`STREAM_GRACE`] to finish on its own, and one still open then ends with `UNAVAILABLE`
//! ("the gateway is shutting down"), which tells its client to call again, reaching another
//! replica. The backend behind it is not touched: its end of the stream closes when the
//! gateway's connection to it does. The status reaches the client before the connection
//! closes ([`WRITE_GRACE`](postern_common::connections::WRITE_GRACE)).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tonic::Status;

/// How long an answer may go on once the gateway is closing.
pub const STREAM_GRACE: Duration = Duration::from_secs(2);

/// An answer's body that ends with `UNAVAILABLE` [`STREAM_GRACE`] after `closing` turns true,
/// if it has not ended by then.
pub struct Closable<B> {
    inner: B,
    cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    ended: bool,
}

impl<B> Closable<B> {
    /// `inner`, cut short once `closing` has been true for [`STREAM_GRACE`].
    pub fn new(inner: B, closing: watch::Receiver<bool>) -> Self {
        Self::with_grace(inner, closing, STREAM_GRACE)
    }

    fn with_grace(inner: B, mut closing: watch::Receiver<bool>, grace: Duration) -> Self {
        let cut = Box::pin(async move {
            if closing.wait_for(|closing| *closing).await.is_err() {
                // The gateway is gone without closing: nothing will cut this answer.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        });
        Self { inner, cut: Some(cut), ended: false }
    }
}

fn shutting_down() -> Frame<Bytes> {
    let status = Status::unavailable("the gateway is shutting down; call again (another replica will answer)");
    let mut trailers = http::HeaderMap::new();
    // `add_header` fails only for a message that cannot be a header, which this one can.
    let _ = status.add_header(&mut trailers);
    Frame::trailers(trailers)
}

impl<B> HttpBody for Closable<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame.is_none() {
                self.ended = true;
            }
            return Poll::Ready(frame);
        }
        // Waiting for the backend: the moment to cut, between messages, once the grace is over.
        if let Some(cut) = self.cut.as_mut()
            && cut.as_mut().poll(cx).is_ready()
        {
            self.cut = None;
            self.ended = true;
            tracing::info!("an answer still streaming after the shutdown grace ended with UNAVAILABLE");
            return Poll::Ready(Some(Ok(shutting_down())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended { SizeHint::with_exact(0) } else { self.inner.size_hint() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tonic::body::Body;

    /// A body that sends `first`, then nothing until dropped (a watch with no news).
    fn endless(first: &'static [u8]) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(1);
        tx.try_send(Ok(Frame::data(Bytes::from_static(first)))).expect("room for one");
        std::mem::forget(tx);
        Body::new(http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_ends_unavailable_after_the_grace() {
        let (close, closing) = watch::channel(false);
        let mut body = Closable::with_grace(endless(b"hello"), closing, Duration::from_secs(2));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"hello"));
        // Not closing: the stream stays open however long it waits.
        assert!(tokio::time::timeout(Duration::from_secs(3600), body.frame()).await.is_err());
        close.send_replace(true);
        let started = tokio::time::Instant::now();
        let last = body.frame().await.expect("a frame").expect("trailers");
        assert_eq!(started.elapsed(), Duration::from_secs(2), "cut after the grace, not before");
        let trailers = last.into_trailers().expect("trailers");
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("shutting down"), "{}", status.message());
        assert!(body.frame().await.is_none(), "nothing after the status");
        assert!(body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_ends_within_the_grace_is_whole() {
        let (close, closing) = watch::channel(false);
        close.send_replace(true);
        let full = Body::new(http_body_util::Full::new(Bytes::from_static(b"answer")).map_err(|e| match e {}));
        let body = Closable::with_grace(full, closing, Duration::from_secs(2));
        let bytes = body.collect().await.expect("whole").to_bytes();
        assert_eq!(bytes, Bytes::from_static(b"answer"));
    }
}
