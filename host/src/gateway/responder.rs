//! A request's lifecycle driven by hyper's own polls, on the connection's task: hyper's service
//! future polls it until the response head is known, then the response body polls it for each
//! frame. A request costs no task of its own, no channel and no cross-task wake-up. What is left
//! once hyper no longer polls the body (the log phase's plugins, waiting in
//! [`Outlet::delivered`], or the rest of a request whose client went away) moves to a task of
//! its own, so it neither delays the client nor is lost.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame};
use tokio_util::task::TaskTracker;

use super::body::BoxError;

/// What the lifecycle hands to hyper, one thing at a time.
#[derive(Debug, Default)]
struct Outbox {
    /// The response head, until hyper's service future takes it.
    head: Option<Response<()>>,
    /// One body frame (or the error that aborts the body), until the body takes it.
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    /// Nothing more will be sent: the body ends once `frame` is taken.
    ended: bool,
    /// The body is gone: the client has all it will get (or went away). Sends fail at once, and
    /// what waited for the response to be out of hand goes on, on a task of its own.
    detached: bool,
}

/// The lifecycle's end of the outbox, given to the code that produces the response.
#[derive(Debug, Clone, Default)]
pub struct Outlet(Arc<Mutex<Outbox>>);

impl Outlet {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A panic while the lock was held left nothing half-written worth refusing.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends the response head.
    pub fn respond(&self, head: Response<()>) {
        self.lock().head = Some(head);
    }

    /// Sends one body frame, or an error that aborts the body; `false` when the client went
    /// away. Resolves once the body has taken the frame: the body polls the lifecycle only after
    /// taking it, so waiting needs no waker (and a detached lifecycle sees `detached`).
    pub async fn send(&self, frame: Result<Frame<Bytes>, BoxError>) -> bool {
        {
            let mut outbox = self.lock();
            if outbox.detached {
                return false;
            }
            outbox.frame = Some(frame);
        }
        std::future::poll_fn(|_| {
            let outbox = self.lock();
            if outbox.detached {
                Poll::Ready(false)
            } else if outbox.frame.is_none() {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Nothing more will be sent.
    pub fn end(&self) {
        self.lock().ended = true;
    }

    /// Resolves once hyper is done with the body (the response is out of the lifecycle's hands)
    /// and the lifecycle runs on a task of its own: what follows never delays the client. The
    /// body's drop detaches the lifecycle, and the task's first poll finds it so; no waker.
    pub async fn delivered(&self) {
        std::future::poll_fn(|_| {
            if self.lock().detached {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

type LifecycleFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request's lifecycle future and its outbox. Dropped unfinished (the client went away, or
/// the log phase's plugins wait for the response to be delivered), the rest runs on a task of
/// `tasks`, where shutdown waits for it.
pub struct Lifecycle {
    future: Option<LifecycleFuture>,
    outlet: Outlet,
    tasks: TaskTracker,
    /// Whether the body has had nothing to give once: hyper has flushed the head since.
    flushed: bool,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("running", &self.future.is_some())
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// `future` sends through `outlet`.
    pub fn new(
        future: impl Future<Output = ()> + Send + 'static,
        outlet: Outlet,
        tasks: TaskTracker,
    ) -> Self {
        Lifecycle {
            future: Some(Box::pin(future)),
            outlet,
            tasks,
            flushed: false,
        }
    }

    /// Polls the lifecycle once, if it still runs; a panic ends it.
    fn poll_lifecycle(&mut self, cx: &mut Context<'_>) {
        let Some(future) = self.future.as_mut() else {
            return;
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(())) => self.future = None,
            Err(_) => {
                tracing::error!("a request's lifecycle panicked");
                self.future = None;
                let mut outbox = self.outlet.lock();
                if outbox.frame.is_none() && !outbox.ended {
                    outbox.frame =
                        Some(Err("the gateway failed while sending the response".into()));
                }
                outbox.ended = true;
            }
        }
    }

    /// Runs the lifecycle until the response head is known, and answers with it; the body
    /// runs the rest. A lifecycle that ends without a head (it panicked) is answered 500.
    pub async fn response(mut self) -> Response<ResponseBody> {
        let head = std::future::poll_fn(|cx| {
            self.poll_lifecycle(cx);
            match self.outlet.lock().head.take() {
                Some(head) => Poll::Ready(Some(head)),
                None if self.future.is_none() => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await;
        match head {
            Some(head) => head.map(|()| ResponseBody::Lifecycle(self)),
            None => {
                let (head, body) = crate::lifecycle::kong_error(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "An unexpected error occurred",
                );
                let mut response = Response::new(ResponseBody::whole(body));
                *response.status_mut() = http::StatusCode::from_u16(head.status)
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                *response.headers_mut() = head.headers;
                response
            }
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            {
                let mut outbox = self.outlet.lock();
                if outbox.frame.as_ref().is_some_and(Result::is_err) && !self.flushed {
                    // hyper drops the connection at a body error without writing out what it
                    // holds: first a round with nothing to give, in which it flushes the head.
                    self.flushed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if let Some(frame) = outbox.frame.take() {
                    return Poll::Ready(Some(frame));
                }
                if outbox.ended {
                    drop(outbox);
                    // What is left runs now when it can (the access log line), without a task;
                    // what waits for delivery (log plugins) goes on a task at the drop.
                    self.poll_lifecycle(&mut Context::from_waker(Waker::noop()));
                    return Poll::Ready(None);
                }
            }
            if self.future.is_none() {
                return Poll::Ready(None);
            }
            self.poll_lifecycle(cx);
            let outbox = self.outlet.lock();
            if self.future.is_some() && outbox.frame.is_none() && !outbox.ended {
                self.flushed = true;
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let outbox = self.outlet.lock();
        outbox.frame.is_none() && (outbox.ended || self.future.is_none())
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        {
            let mut outbox = self.outlet.lock();
            outbox.detached = true;
            outbox.frame = None;
        }
        // Past shutdown's wait the tracker still runs it; without a runtime (a test's
        // teardown) there is nothing left to run it on.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(future);
        }
    }
}

/// The response body hyper sends to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Frames produced by the request's lifecycle as hyper asks for them.
    Lifecycle(Lifecycle),
    /// A body the gateway has whole (empty when `None`).
    Whole(Option<Bytes>),
}

impl ResponseBody {
    /// A body without content.
    pub fn empty() -> Self {
        ResponseBody::Whole(None)
    }

    /// `bytes`, whole.
    pub fn whole(bytes: Bytes) -> Self {
        ResponseBody::Whole((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Lifecycle(lifecycle) => lifecycle.poll_frame(cx),
            ResponseBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Lifecycle(lifecycle) => lifecycle.is_end_stream(),
            ResponseBody::Whole(bytes) => bytes.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;

    use super::*;

    fn head(status: u16) -> Response<()> {
        let mut head = Response::new(());
        *head.status_mut() = http::StatusCode::from_u16(status).expect("a status");
        head
    }

    /// A lifecycle that answers `chunks`, then records that its log ran (after the response is
    /// delivered, as with log plugins, when `log_plugins`).
    fn answering(
        chunks: &'static [&'static str],
        log_plugins: bool,
    ) -> (Lifecycle, Arc<AtomicBool>, TaskTracker) {
        let outlet = Outlet::default();
        let logged = Arc::new(AtomicBool::new(false));
        let tasks = TaskTracker::new();
        let future = {
            let (outlet, logged) = (outlet.clone(), logged.clone());
            async move {
                // As the upstream would, the head waits for I/O first.
                tokio::task::yield_now().await;
                outlet.respond(head(200));
                for chunk in chunks {
                    if !outlet
                        .send(Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))
                        .await
                    {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                outlet.end();
                if log_plugins {
                    outlet.delivered().await;
                }
                logged.store(true, Ordering::SeqCst);
            }
        };
        let lifecycle = Lifecycle::new(future, outlet, tasks.clone());
        (lifecycle, logged, tasks)
    }

    #[tokio::test]
    async fn the_body_is_every_frame_sent_and_the_log_runs_before_it_ends() {
        let (lifecycle, logged, _) = answering(&["a", "bc", "def"], false);
        let response = lifecycle.response().await;
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.expect("a body");
        assert_eq!(&body.to_bytes()[..], b"abcdef");
        assert!(logged.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn log_plugins_run_on_a_task_after_the_body_ends() {
        let (lifecycle, logged, tasks) = answering(&["a"], true);
        let body = lifecycle.response().await.into_body();
        let body = body.collect().await.expect("a body");
        assert_eq!(&body.to_bytes()[..], b"a");
        assert!(
            !logged.load(Ordering::SeqCst),
            "not before the body is dropped"
        );
        tasks.close();
        tasks.wait().await;
        assert!(logged.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_response_without_a_body_reaches_hyper_before_log_plugins_run() {
        let (lifecycle, logged, tasks) = answering(&[], true);
        let response = lifecycle.response().await;
        assert!(response.body().is_end_stream());
        assert!(!logged.load(Ordering::SeqCst), "the head first");
        drop(response);
        tasks.close();
        tasks.wait().await;
        assert!(logged.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_mid_body_leaves_the_rest_to_run_on_a_task() {
        let (lifecycle, logged, tasks) = answering(&["a", "b", "c"], false);
        let mut body = lifecycle.response().await.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"a"[..]));
        drop(body);
        tasks.close();
        tasks.wait().await;
        assert!(
            logged.load(Ordering::SeqCst),
            "the log ran once the client left"
        );
    }

    #[tokio::test]
    async fn a_client_that_goes_away_before_the_head_leaves_the_lifecycle_to_a_task() {
        let (lifecycle, logged, tasks) = answering(&["a"], false);
        drop(lifecycle);
        tasks.close();
        tasks.wait().await;
        assert!(logged.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_lifecycle_that_panics_before_its_head_is_answered_500() {
        let lifecycle = Lifecycle::new(
            async { panic!("a bug") },
            Outlet::default(),
            TaskTracker::new(),
        );
        let response = lifecycle.response().await;
        assert_eq!(response.status(), 500);
        let body = response.into_body().collect().await.expect("a body");
        assert!(!body.to_bytes().is_empty());
    }

    #[tokio::test]
    async fn a_lifecycle_that_panics_mid_body_aborts_the_body() {
        let outlet = Outlet::default();
        let future = {
            let outlet = outlet.clone();
            async move {
                outlet.respond(head(200));
                outlet.send(Ok(Frame::data(Bytes::from_static(b"a")))).await;
                panic!("a bug");
            }
        };
        let lifecycle = Lifecycle::new(future, outlet, TaskTracker::new());
        let mut body = lifecycle.response().await.into_body();
        assert!(body.frame().await.expect("a frame").is_ok());
        assert!(body.frame().await.expect("a frame").is_err(), "aborted");
    }
}
