//! The response body the gateway sends: frames pumped through a channel by a task that runs
//! body_filter on each chunk, counts bytes, and runs the log phase once the body is done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::{mpsc, oneshot};

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
