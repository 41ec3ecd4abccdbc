//! The bodies that cross the gateway: the response body it sends (frames pumped through a
//! channel by a task that runs body_filter on each chunk, counts bytes, and runs the log phase
//! once the body is done), and the client's request body on its way upstream, bounded in size
//! and in the time it may pause.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::{mpsc, oneshot};

pub use crate::lifecycle::RequestBodyError;

/// A boxed error, as hyper accepts in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Frames in flight between the pump task and hyper; small, so a slow client slows the upstream
/// read (back-pressure) instead of buffering the body.
pub const PUMP_DEPTH: usize = 4;

/// The response body hyper sends to the client.
#[derive(Debug)]
pub struct PumpedBody {
    frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    /// Told when hyper first asks for a frame: by then the response head is written.
    first_poll: Option<oneshot::Sender<()>>,
}

impl PumpedBody {
    /// A body fed by `frames`; a sent error aborts the response.
    pub fn new(frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> Self {
        PumpedBody {
            frames,
            first_poll: None,
        }
    }

    /// Like [`PumpedBody::new`], and tells `first_poll` when hyper first asks for a frame. An
    /// error sent before that would make hyper drop the connection without the response head;
    /// after it, the client gets the head and then sees the body cut off.
    pub fn signalling(
        frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
        first_poll: oneshot::Sender<()>,
    ) -> Self {
        PumpedBody {
            frames,
            first_poll: Some(first_poll),
        }
    }

    /// A body without content.
    pub fn empty() -> Self {
        PumpedBody::new(mpsc::channel(1).1)
    }
}

impl Body for PumpedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first_poll) = self.first_poll.take() {
            let _ = first_poll.send(());
        }
        self.frames.poll_recv(cx)
    }
}

/// A client's request body on its way upstream, cut off past `max_body_size` (0: no limit) or
/// after `body_timeout` without data.
#[derive(Debug)]
pub struct RequestBody<B> {
    inner: B,
    limit: u64,
    received: u64,
    idle: std::time::Duration,
    stall: super::watchdog::StallTimer,
}

impl<B> RequestBody<B> {
    /// Bounds `inner`.
    pub fn new(inner: B, limit: u64, idle: std::time::Duration) -> Self {
        RequestBody {
            inner,
            limit,
            received: 0,
            idle,
            stall: super::watchdog::StallTimer::new(idle),
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progress();
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    if this.limit > 0 && this.received > this.limit {
                        let limit = this.limit;
                        return Poll::Ready(Some(Err(Box::new(RequestBodyError::TooLarge {
                            limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.stall.stalled(cx) => {
                Poll::Ready(Some(Err(Box::new(RequestBodyError::Stalled(this.idle)))))
            }
            Poll::Pending => Poll::Pending,
        }
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
    use std::collections::VecDeque;
    use std::time::Duration;

    use http_body_util::BodyExt;

    use super::*;

    /// Data chunks, then either the end or a wait that never ends.
    struct Chunks {
        left: VecDeque<usize>,
        then_stall: bool,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.left.pop_front() {
                Some(n) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n]))))),
                None if self.then_stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn chunks(sizes: &[usize], then_stall: bool) -> Chunks {
        Chunks {
            left: sizes.iter().copied().collect(),
            then_stall,
        }
    }

    #[tokio::test]
    async fn a_body_within_the_limit_passes_whole() {
        let body = RequestBody::new(chunks(&[4, 4, 2], false), 10, Duration::from_secs(1));
        let bytes = body.collect().await.map(|b| b.to_bytes());
        assert_eq!(bytes.ok().map(|b| b.len()), Some(10));
    }

    #[tokio::test]
    async fn no_limit_when_zero() {
        let body = RequestBody::new(chunks(&[4096; 8], false), 0, Duration::from_secs(1));
        assert!(body.collect().await.is_ok());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_fails_as_too_large() {
        let body = RequestBody::new(chunks(&[4, 4, 4], false), 10, Duration::from_secs(1));
        let err = body.collect().await.expect_err("too large");
        assert!(matches!(
            RequestBodyError::find(&*err),
            Some(RequestBodyError::TooLarge { limit: 10 })
        ));
    }

    #[tokio::test]
    async fn a_body_that_stops_fails_after_the_idle_timeout() {
        let started = tokio::time::Instant::now();
        let idle = Duration::from_millis(300);
        let body = RequestBody::new(chunks(&[4], true), 10, idle);
        let err = body.collect().await.expect_err("stalled");
        assert!(matches!(
            RequestBodyError::find(&*err),
            Some(RequestBodyError::Stalled(_))
        ));
        let elapsed = started.elapsed();
        assert!(elapsed >= idle && elapsed < idle * 2, "{elapsed:?}");
    }

    #[test]
    fn find_walks_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] RequestBodyError);
        let err = Outer(RequestBodyError::Stalled(Duration::from_secs(1)));
        assert!(RequestBodyError::find(&err).is_some());
        assert!(RequestBodyError::find(&std::fmt::Error).is_none());
    }
}
