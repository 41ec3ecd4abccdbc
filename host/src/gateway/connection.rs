//! Accepting connections: the listener's connection cap, the TLS handshake with its certificate
//! phase (or plaintext), then HTTP/1.1 or HTTP/2 on the connection under its [`Watchdog`], each
//! request through [`super::request::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::body::PumpedBody;
use super::request::{EstablishedConnection, handle};
use super::watchdog::{Expiry, GuardedIo, TrackedBody, Watchdog};
use crate::config::ClientLimits;
use crate::cores::Cores;
use crate::exchange::{ConnectionFacts, Context};
use crate::pipeline::{self, Recording};
use crate::runtime::{LoadedPlugin, PluginError};
use crate::tls::{self, ListenerTls};

/// How long a connection the watchdog ends may take to close gracefully (HTTP/2 GOAWAY and the
/// streams still open) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The least time between two warnings that a listener is refusing connections.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What every connection of one listener shares. A reload that keeps the listener's socket
/// installs a new one; connections keep the one they were accepted with.
pub(super) struct ListenerShared {
    pub(super) name: String,
    tls: Option<Arc<ListenerTls>>,
    limits: Arc<ClientLimits>,
    http: auto::Builder<TokioExecutor>,
    local_port: u16,
    /// One per open connection, up to `max_connections`.
    permits: Arc<Semaphore>,
    /// How long a connection may take to finish its requests once told to close.
    drain_timeout: Duration,
    /// The listener's open-connections gauge, when metrics are on.
    open_connections: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl ListenerShared {
    pub(super) fn new(
        name: String,
        tls: Option<Arc<ListenerTls>>,
        limits: ClientLimits,
        local_port: u16,
        drain_timeout: Duration,
    ) -> ListenerShared {
        ListenerShared {
            tls,
            http: http_builder(&limits),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits: Arc::new(limits),
            local_port,
            drain_timeout,
            open_connections: crate::metrics::get().map(|m| m.open_connections(&name)),
            name,
        }
    }

    /// `self` with its settings replaced by a reload, keeping the count of open connections:
    /// connections opened before the reload hold permits of this listener's semaphore, so the
    /// new generation shares it, resized to the new `max_connections`. Permits a lowered cap
    /// takes away are withheld as the connections holding them close.
    pub(super) fn reloaded(
        &self,
        name: String,
        tls: Option<Arc<ListenerTls>>,
        limits: ClientLimits,
        drain_timeout: Duration,
    ) -> ListenerShared {
        let (old, new) = (self.limits.max_connections, limits.max_connections);
        let permits = self.permits.clone();
        if new > old {
            permits.add_permits(new - old);
        } else if new < old {
            let withheld = u32::try_from(old - new).unwrap_or(u32::MAX);
            let semaphore = permits.clone();
            tokio::spawn(async move {
                if let Ok(taken) = semaphore.acquire_many_owned(withheld).await {
                    taken.forget();
                }
            });
        }
        ListenerShared {
            permits,
            ..ListenerShared::new(name, tls, limits, self.local_port, drain_timeout)
        }
    }
}

/// The HTTP/1.1 and HTTP/2 server settings of a listener.
fn http_builder(limits: &ClientLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        // The watchdog keeps the head deadline: hyper's would also cut idle keep-alive
        // connections at header_timeout.
        .header_read_timeout(None)
        // A request head that does not fit the read buffer is answered 431.
        .max_buf_size(limits.max_header_size.max(8192));
    if limits.max_headers != 100 {
        // Set only when it differs from hyper's default: setting it moves the parsed headers
        // from the stack to the heap.
        http1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(usize::try_from(limits.http2_max_resets).ok())
        .keep_alive_interval(limits.http2_ping_interval)
        .keep_alive_timeout(limits.http2_ping_timeout);
    builder
}

/// Accepts connections on `socket` until `stop`, each served on a task of `connections`, on the
/// connection thread with the fewest open ones, with the listener settings and gateway state
/// current when it is accepted.
pub(super) async fn accept_loop(
    current: Arc<ArcSwap<Shared>>,
    socket: TcpListener,
    listener: Arc<ArcSwap<ListenerShared>>,
    connections: TaskTracker,
    cores: Arc<Cores>,
    stop: CancellationToken,
) {
    let mut refused = 0u64;
    let mut warned: Option<Instant> = None;
    let mut failed_accepts = 0u64;
    let mut failure_warned: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning, and
                    // say so once per interval, not once per attempt.
                    failed_accepts += 1;
                    if failure_warned.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_INTERVAL) {
                        tracing::warn!(
                            listener = %listener.load().name,
                            %err,
                            failed = failed_accepts,
                            "accept failed"
                        );
                        failure_warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let scope = listener.load_full();
        let Ok(permit) = scope.permits.clone().try_acquire_owned() else {
            // Over the cap: closed at once, so the connections being served keep their
            // descriptors, buffers and tasks.
            drop(tcp);
            refused += 1;
            if warned.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_INTERVAL) {
                tracing::warn!(
                    listener = %scope.name,
                    max_connections = scope.limits.max_connections,
                    refused,
                    "connection cap reached: closing new connections"
                );
                warned = Some(Instant::now());
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // The socket leaves this runtime's reactor for the connection thread's.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(err) => {
                tracing::debug!(%peer, %err, "cannot hand the connection over");
                continue;
            }
        };
        let current = current.clone();
        let stop = stop.clone();
        let (thread, placement) = cores.place();
        let connection = async move {
            let _placement = placement;
            let _permit = permit;
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(err) => {
                    tracing::debug!(%peer, %err, "cannot register the connection");
                    return;
                }
            };
            let _open = scope.open_connections.as_ref().map(OpenConnection::new);
            match &scope.tls {
                Some(tls) => serve_tls(current, &scope, tls, tcp, peer, &stop).await,
                None => {
                    let facts = ConnectionFacts {
                        client_addr: peer,
                        sni: None,
                        tls: None,
                    };
                    let connection = Connection {
                        facts,
                        context: Context::new(),
                        certificate_plugins: Vec::new(),
                    };
                    serve_http(current, &scope, tcp, connection, &stop).await;
                }
            }
        };
        connections.spawn_on(connection, thread);
    }
}

/// Counts a connection in its listener's gauge while it lives.
struct OpenConnection<'g>(&'g prometheus_client::metrics::gauge::Gauge);

impl<'g> OpenConnection<'g> {
    fn new(gauge: &'g prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a connection knows once its handshake (if any) is done.
struct Connection {
    facts: ConnectionFacts,
    context: Context,
    certificate_plugins: Vec<Arc<LoadedPlugin>>,
}

async fn serve_tls(
    current: Arc<ArcSwap<Shared>>,
    scope: &ListenerShared,
    listener: &ListenerTls,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) {
    let shared = current.load_full();
    let mut context = Context::new();
    let mut certificate_plugins = Vec::new();
    let mut sni = None;
    let certificate_phase = async |hello: &tls::ClientHelloInfo| {
        let plugins = shared.chains.for_sni(&shared.router, hello.sni.as_deref());
        let outcome =
            pipeline::run_certificate_phase(&plugins, peer, hello.sni.clone(), Recording::Off)
                .await
                .map_err(|(err, _)| err)?;
        context = outcome.context;
        certificate_plugins = plugins;
        // The server name that chose the plugins is the one the connection reports.
        sni = hello.sni.clone();
        Ok::<_, PluginError>(outcome.policy)
    };
    let (stream, facts) = match tls::accept(listener, tcp, certificate_phase).await {
        Ok(accepted) => accepted,
        Err(err) => {
            tracing::debug!(%peer, %err, "TLS handshake failed");
            if let Some(metrics) = crate::metrics::get() {
                metrics.handshake_failure(&scope.name, handshake_failure_cause(&err));
            }
            return;
        }
    };
    if let Some(metrics) = crate::metrics::get() {
        let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let verify = match facts.client_verify {
            tls::ClientVerify::None => "NONE",
            tls::ClientVerify::Success => "SUCCESS",
            tls::ClientVerify::Failed(_) => "FAILED",
        };
        metrics.handshake(&scope.name, facts.version, resumed, verify);
    }
    let facts = ConnectionFacts {
        client_addr: peer,
        sni,
        tls: Some(facts),
    };
    let connection = Connection {
        facts,
        context,
        certificate_plugins,
    };
    serve_http(current, scope, stream, connection, shutdown).await;
}

/// The `cause` label of a failed handshake.
fn handshake_failure_cause(err: &tls::HandshakeError) -> &'static str {
    use rustls::Error;
    match err {
        tls::HandshakeError::Timeout => "timeout",
        tls::HandshakeError::Io(_) => "io",
        tls::HandshakeError::CertificatePhase(_) => "certificate_phase",
        tls::HandshakeError::Tls(err) => match err {
            Error::AlertReceived(_) => "alert_received",
            Error::PeerIncompatible(_) => "peer_incompatible",
            Error::InvalidCertificate(_) | Error::NoCertificatesPresented => "client_certificate",
            _ => "protocol",
        },
    }
}

async fn serve_http<I>(
    current: Arc<ArcSwap<Shared>>,
    listener: &ListenerShared,
    io: I,
    connection: Connection,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = connection.facts.client_addr;
    let watchdog = Watchdog::new(&listener.limits);
    let scope = Arc::new(EstablishedConnection {
        facts: Arc::new(connection.facts),
        context: connection.context,
        local_port: listener.local_port,
        certificate_plugins: connection.certificate_plugins,
        limits: listener.limits.clone(),
    });
    let service = service_fn({
        let watchdog = watchdog.clone();
        move |request: http::Request<hyper::body::Incoming>| {
            let guard = watchdog.begin(request.version());
            // Each request runs on the gateway state current when it arrives, to its end.
            let shared = current.load_full();
            let scope = scope.clone();
            let watchdog = watchdog.clone();
            async move {
                if guard.is_http2() {
                    // hyper polls a stream's service before it checks for a reset: yielding once
                    // lets it drop a stream the client already reset before any plugin runs.
                    tokio::task::yield_now().await;
                    if watchdog.is_abusive() {
                        // GOAWAY is on its way; streams still arriving get no work.
                        let mut refused = http::Response::new(PumpedBody::empty());
                        *refused.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        return Ok(refused.map(|body| TrackedBody::new(body, guard)));
                    }
                }
                let response = handle(shared, scope, request).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, guard)))
            }
        }
    });
    let io = GuardedIo::new(io, watchdog.clone(), listener.limits.send_timeout);
    let connection = listener.http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let expired = tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => None,
        why = watchdog.expired() => Some(why),
    };
    let Some(why) = expired else {
        // Draining (shutdown, or the listener removed by a reload): requests in flight finish.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(listener.drain_timeout, connection).await;
        return;
    };
    let (listener, reason) = (&listener.name, why.describe());
    match why {
        // Nothing in flight and no request to finish: dropped, which closes the socket. (hyper's
        // graceful shutdown would wait for a request head it has started to read.)
        Expiry::NoRequest | Expiry::HeadIncomplete => {
            tracing::debug!(%listener, %peer, "closing connection: {reason}");
        }
        // Idle: an HTTP/1.1 connection closes at once, an HTTP/2 one gets GOAWAY first.
        Expiry::Idle => {
            tracing::debug!(%listener, %peer, "closing connection: {reason}");
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
        Expiry::TooManyResets => {
            tracing::warn!(%listener, %peer, "closing connection: {reason}");
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
}
