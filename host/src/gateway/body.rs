//! The response body the gateway sends: frames pumped through a channel by a task that runs
//! body_filter on each chunk, counts bytes, and runs the log phase once the body is done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

/// A boxed error, as hyper accepts in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Frames in flight between the pump task and hyper; small, so a slow client slows the upstream
/// read (back-pressure) instead of buffering the body.
pub const PUMP_DEPTH: usize = 4;

/// The response body hyper sends to the client.
#[derive(Debug)]
pub struct PumpedBody {
    frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl PumpedBody {
    /// A body fed by `frames`; a sent error aborts the response.
    pub fn new(frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> Self {
        PumpedBody { frames }
    }
}

impl Body for PumpedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.frames.poll_recv(cx)
    }
}
