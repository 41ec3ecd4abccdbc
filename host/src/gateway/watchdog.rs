//! The deadlines of one client connection, whatever its protocol, and the count of its HTTP/2
//! streams reset early.
//!
//! A connection is *active* while a request is in flight (from its complete head until the last
//! byte of its response); hyper, the request path and the timeouts on bodies and the upstream
//! govern it then. While no request is in flight, the [`Watchdog`] gives it one deadline:
//!
//! - a new connection must complete its first request head within `header_timeout` (nginx
//!   `client_header_timeout`; this also closes a connection that sends nothing);
//! - a later HTTP/1.1 request head must complete within `header_timeout` of its first byte;
//! - otherwise the connection may stay idle for `keepalive_timeout` (HTTP/1.1 keep-alive, and
//!   HTTP/2 without open streams, as nginx's `keepalive_timeout` since 1.19.7).
//!
//! Writes to the client go through [`GuardedIo`], which fails a write that makes no progress for
//! `send_timeout` (nginx `send_timeout`): a client that stops reading loses its connection
//! instead of holding a task and its buffers forever.
//!
//! HTTP/2 streams that the client resets before their response is complete are counted; past
//! `http2_max_resets` within [`RESET_WINDOW`] the connection is told GOAWAY (the "rapid reset"
//! attack, CVE-2023-44487, makes a server start work for streams it is never asked to finish).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::config::ClientLimits;

/// The window over which early stream resets are counted against `http2_max_resets`.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No request head completed within `header_timeout` of the connection's start.
    NoRequest,
    /// A request head started but did not complete within `header_timeout`.
    HeadIncomplete,
    /// No request for `keepalive_timeout`.
    Idle,
    /// The client reset more than `http2_max_resets` streams within [`RESET_WINDOW`].
    TooManyResets,
}

impl Expiry {
    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            Expiry::NoRequest => "no request head within header_timeout",
            Expiry::HeadIncomplete => "request head incomplete after header_timeout",
            Expiry::Idle => "idle for keepalive_timeout",
            Expiry::TooManyResets => "too many streams reset by the client (http2_max_resets)",
        }
    }
}

#[derive(Debug)]
struct State {
    /// Requests in flight.
    active: usize,
    /// Requests begun so far.
    requests: u64,
    /// Whether the connection speaks HTTP/2 (known from its first request).
    http2: bool,
    /// The connection's start, or when its last request finished.
    idle_since: Instant,
    /// When the first byte of the next HTTP/1.1 request head arrived.
    head_started: Option<Instant>,
    /// Early resets in the window starting at `window_start`.
    resets: u32,
    window_start: Instant,
    abusive: bool,
}

/// One connection's deadlines; shared by its service, its I/O and its driver.
#[derive(Debug)]
pub struct Watchdog {
    header_timeout: Duration,
    keepalive_timeout: Duration,
    max_resets: u32,
    state: Mutex<State>,
    /// Set while a read should mark the start of a request head (saves a lock per read).
    watching_head: AtomicBool,
    changed: Notify,
}

enum Next {
    Now(Expiry),
    At(Instant),
    Never,
}

impl Watchdog {
    /// A watchdog for a connection that starts now.
    pub fn new(limits: &ClientLimits) -> Arc<Watchdog> {
        let now = Instant::now();
        Arc::new(Watchdog {
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            max_resets: limits.http2_max_resets,
            state: Mutex::new(State {
                active: 0,
                requests: 0,
                http2: false,
                idle_since: now,
                head_started: None,
                resets: 0,
                window_start: now,
                abusive: false,
            }),
            watching_head: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's head is complete: the connection is active until the guard is dropped.
    pub fn begin(self: &Arc<Self>, version: Version) -> RequestGuard {
        let http2 = version == Version::HTTP_2;
        {
            let mut state = self.state();
            state.active += 1;
            state.requests += 1;
            state.http2 |= http2;
            state.head_started = None;
        }
        self.watching_head.store(false, Ordering::Relaxed);
        RequestGuard {
            watchdog: self.clone(),
            http2,
            finished: false,
        }
    }

    fn end(&self, reset: bool) {
        let now = Instant::now();
        let mut state = self.state();
        state.active = state.active.saturating_sub(1);
        if state.active == 0 {
            state.idle_since = now;
            state.head_started = None;
            self.watching_head.store(!state.http2, Ordering::Relaxed);
        }
        if reset {
            if now.duration_since(state.window_start) > RESET_WINDOW {
                state.window_start = now;
                state.resets = 0;
            }
            state.resets = state.resets.saturating_add(1);
            state.abusive |= state.resets > self.max_resets;
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Whether the client reset too many streams: the connection is being closed, and its
    /// remaining requests are refused without running anything.
    pub fn is_abusive(&self) -> bool {
        self.state().abusive
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        if !self.watching_head.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut state = self.state();
        if state.active == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
        }
        drop(state);
        self.changed.notify_one();
    }

    fn next(&self) -> Next {
        let state = self.state();
        let (at, why) = if state.abusive {
            return Next::Now(Expiry::TooManyResets);
        } else if state.active > 0 {
            return Next::Never;
        } else if state.requests == 0 {
            (state.idle_since + self.header_timeout, Expiry::NoRequest)
        } else if let Some(started) = state.head_started {
            (started + self.header_timeout, Expiry::HeadIncomplete)
        } else {
            (state.idle_since + self.keepalive_timeout, Expiry::Idle)
        };
        if at <= Instant::now() {
            Next::Now(why)
        } else {
            Next::At(at)
        }
    }

    /// Completes when the connection should be closed, and says why.
    pub async fn expired(&self) -> Expiry {
        loop {
            // Created before the state is read: a change in between leaves a permit.
            let changed = self.changed.notified();
            match self.next() {
                Next::Now(why) => return why,
                Next::At(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
                Next::Never => changed.await,
            }
        }
    }
}

/// A request in flight. Dropped before [`RequestGuard::finish`], an HTTP/2 request counts as
/// reset by the client (hyper drops a stream's service future and response body when the client
/// resets it).
#[derive(Debug)]
pub struct RequestGuard {
    watchdog: Arc<Watchdog>,
    http2: bool,
    finished: bool,
}

impl RequestGuard {
    /// Whether the request came over HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// The response was sent to its end.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.watchdog.end(self.http2 && !self.finished);
    }
}

/// A response body that ends its request (see [`RequestGuard`]) when its last frame is out or
/// when hyper drops it.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    guard: Option<RequestGuard>,
}

impl<B> TrackedBody<B> {
    /// `inner`, ending `guard`'s request with it.
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        TrackedBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none()
            && let Some(mut guard) = self.guard.take()
        {
            guard.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A deadline that is armed when an operation starts waiting and disarmed when it progresses;
/// the timer is allocated once and reset after that.
#[derive(Debug)]
pub struct StallTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl StallTimer {
    /// A timer that fires after `limit` without progress.
    pub fn new(limit: Duration) -> Self {
        StallTimer {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// The operation progressed.
    pub fn progress(&mut self) {
        self.armed = false;
    }

    /// The operation is waiting: `true` once it has waited `limit` since it last progressed.
    pub fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The client's stream, with writes bounded by `send_timeout` and reads reported to the
/// [`Watchdog`].
#[derive(Debug)]
pub struct GuardedIo<I> {
    inner: I,
    watchdog: Arc<Watchdog>,
    write: StallTimer,
}

impl<I> GuardedIo<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, watchdog: Arc<Watchdog>, send_timeout: Duration) -> Self {
        GuardedIo {
            inner,
            watchdog,
            write: StallTimer::new(send_timeout),
        }
    }

    fn bound<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.write.progress();
                Poll::Ready(result)
            }
            Poll::Pending if self.write.stalled(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watchdog.read();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for GuardedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_millis(500);

    fn limits() -> ClientLimits {
        ClientLimits {
            header_timeout: HEAD,
            keepalive_timeout: IDLE,
            http2_max_resets: 3,
            ..ClientLimits::default()
        }
    }

    /// Waits for the watchdog; asserts it fired `after` from now (within 150 ms late).
    async fn assert_fires(watchdog: &Watchdog, after: Duration, expected: Expiry) {
        let start = Instant::now();
        let why = watchdog.expired().await;
        let elapsed = start.elapsed();
        assert_eq!(why, expected);
        assert!(
            elapsed + Duration::from_millis(5) >= after
                && elapsed <= after + Duration::from_millis(150),
            "{why:?} after {elapsed:?}, expected {after:?}"
        );
    }

    fn has_no_deadline(watchdog: &Watchdog) -> bool {
        matches!(watchdog.next(), Next::Never)
    }

    #[tokio::test]
    async fn a_silent_connection_gets_header_timeout() {
        let watchdog = Watchdog::new(&limits());
        assert_fires(&watchdog, HEAD, Expiry::NoRequest).await;
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_gets_keepalive_timeout() {
        let watchdog = Watchdog::new(&limits());
        drop(watchdog.begin(Version::HTTP_11));
        assert_fires(&watchdog, IDLE, Expiry::Idle).await;
    }

    #[tokio::test]
    async fn a_started_head_gets_header_timeout_from_its_first_byte() {
        let watchdog = Watchdog::new(&limits());
        drop(watchdog.begin(Version::HTTP_11));
        tokio::time::sleep(Duration::from_millis(100)).await;
        watchdog.read();
        watchdog.read();
        assert_fires(&watchdog, HEAD, Expiry::HeadIncomplete).await;
    }

    #[tokio::test]
    async fn http2_frames_between_requests_do_not_start_a_head() {
        let watchdog = Watchdog::new(&limits());
        drop(watchdog.begin(Version::HTTP_2));
        watchdog.read();
        assert_fires(&watchdog, IDLE, Expiry::Idle).await;
    }

    #[tokio::test]
    async fn no_deadline_while_a_request_is_in_flight() {
        let watchdog = Watchdog::new(&limits());
        let mut guard = watchdog.begin(Version::HTTP_11);
        let waiting = tokio::spawn({
            let watchdog = watchdog.clone();
            async move { watchdog.expired().await }
        });
        tokio::time::sleep(IDLE * 2).await;
        assert!(!waiting.is_finished());
        guard.finish();
        drop(guard);
        // The keep-alive deadline counts from the end of the request.
        let start = Instant::now();
        assert_eq!(waiting.await.ok(), Some(Expiry::Idle));
        assert!(start.elapsed() + Duration::from_millis(5) >= IDLE);
    }

    #[tokio::test]
    async fn early_http2_resets_past_the_limit_end_the_connection() {
        let watchdog = Watchdog::new(&limits());
        let _open = watchdog.begin(Version::HTTP_2);
        for _ in 0..3 {
            drop(watchdog.begin(Version::HTTP_2));
        }
        let mut finished = watchdog.begin(Version::HTTP_2);
        finished.finish();
        drop(finished);
        assert!(has_no_deadline(&watchdog), "3 resets are allowed");
        drop(watchdog.begin(Version::HTTP_2));
        assert_fires(&watchdog, Duration::ZERO, Expiry::TooManyResets).await;
    }

    #[tokio::test]
    async fn resets_are_counted_per_window() {
        let watchdog = Watchdog::new(&limits());
        let _open = watchdog.begin(Version::HTTP_2);
        for _ in 0..10 {
            drop(watchdog.begin(Version::HTTP_2));
            drop(watchdog.begin(Version::HTTP_2));
            // As if the window had passed.
            let mut state = watchdog.state();
            let passed = Instant::now().checked_sub(RESET_WINDOW + Duration::from_millis(1));
            state.window_start = passed.unwrap_or(state.window_start);
        }
        assert!(has_no_deadline(&watchdog));
    }

    #[tokio::test]
    async fn http1_requests_never_count_as_resets() {
        let watchdog = Watchdog::new(&limits());
        let _open = watchdog.begin(Version::HTTP_11);
        for _ in 0..10 {
            drop(watchdog.begin(Version::HTTP_11));
        }
        assert!(has_no_deadline(&watchdog));
    }

    #[tokio::test]
    async fn a_tracked_body_finishes_its_request_at_its_end() {
        let watchdog = Watchdog::new(&limits());
        let _open = watchdog.begin(Version::HTTP_2);
        for _ in 0..10 {
            let body = http_body_util::Full::new(Bytes::from_static(b"x"));
            let mut tracked = TrackedBody::new(body, watchdog.begin(Version::HTTP_2));
            while let Some(frame) = http_body_util::BodyExt::frame(&mut tracked).await {
                assert!(frame.is_ok());
            }
        }
        assert!(has_no_deadline(&watchdog), "no resets counted");
    }

    #[tokio::test]
    async fn a_write_that_stalls_for_send_timeout_fails() {
        // A pipe whose reader never reads: writes stall once its buffer is full.
        let (client, server) = tokio::io::duplex(16);
        let watchdog = Watchdog::new(&limits());
        let send_timeout = Duration::from_millis(300);
        let mut io = GuardedIo::new(server, watchdog, send_timeout);
        let start = Instant::now();
        let written = tokio::io::AsyncWriteExt::write_all(&mut io, &[0; 64]).await;
        let err = written.expect_err("the write times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= send_timeout && elapsed < send_timeout * 2,
            "{elapsed:?}"
        );
        drop(client);
    }

    #[tokio::test]
    async fn a_write_that_progresses_does_not_time_out() {
        let (mut client, server) = tokio::io::duplex(16);
        let watchdog = Watchdog::new(&limits());
        let mut io = GuardedIo::new(server, watchdog, Duration::from_millis(300));
        // The reader takes 16 bytes every 100 ms: each wait is shorter than send_timeout.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 128 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                total += tokio::io::AsyncReadExt::read(&mut client, &mut buf)
                    .await
                    .unwrap_or(0);
            }
        });
        let written = tokio::io::AsyncWriteExt::write_all(&mut io, &[0; 128]).await;
        assert!(written.is_ok(), "{written:?}");
        assert!(reader.await.is_ok());
    }
}
