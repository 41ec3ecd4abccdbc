//! The client side of the proxy: one [`Upstream`] per service, with its targets, timeouts,
//! TLS settings and a pool of keep-alive HTTP/1.1 connections per target.
//!
//! # Retry safety
//!
//! A request body is a stream that can be sent only once, so a request may be retried on
//! another target only if nothing of it was sent. That is what [`UpstreamError::Connect`]
//! means, and the API makes it hold by construction: a connection is checked out first
//! ([`Upstream::connect`]: pooled, or TCP connect + TLS handshake + HTTP/1.1 handshake, all
//! under the connect timeout) and only then is the request handed over
//! ([`UpstreamConnection::send`]). `connect` never sees the request, so a caller that retries
//! keeps its request (and unread body) until a connection exists:
//!
//! ```no_run
//! # use tollgate::proxy::upstream::{Upstream, UpstreamError};
//! # async fn forward(upstream: &Upstream, req: http::Request<String>)
//! #     -> Result<http::Response<tollgate::proxy::upstream::UpstreamBody>, UpstreamError> {
//! let mut attempt = 0;
//! let connection = loop {
//!     let target = upstream.targets()[upstream.next_target()].to_string();
//!     match upstream.connect(&target).await {
//!         Ok(connection) => break connection,
//!         Err(err) if err.is_retryable() && attempt < upstream.retries() => attempt += 1,
//!         Err(err) => return Err(err),
//!     }
//! };
//! connection.send(req).await // never a Connect error
//! # }
//! ```
//!
//! [`Upstream::send`] is the one-call form (connect, then send); when it fails with `Connect`
//! the request was dropped without its body ever being polled.
//!
//! The pool is hand-written on `hyper::client::conn::http1` because hyper-util's legacy client
//! only accepts a custom (TLS) connector through `tower_service::Service`, which is not a
//! dependency of this crate.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tollgate_phases::Target;

/// The boxed error type request bodies are converted to.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection may sit idle in the pool before it is discarded.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most idle connections kept per target and connection thread; more are closed when they
/// become idle.
pub const MAX_IDLE_PER_TARGET: usize = 32;

/// The body type on pooled connections: any request body, boxed.
type PoolBody = UnsyncBoxBody<Bytes, BoxError>;

/// What [`Upstream::new`] needs for one service.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `host:port` targets (IPv6 as `[addr]:port`); at least one.
    pub targets: Vec<String>,
    /// Whether to speak TLS to the targets.
    pub https: bool,
    /// Limit on TCP connect plus TLS and HTTP handshakes for a new connection.
    pub connect_timeout: Duration,
    /// Limit from handing the request over to receiving the response head.
    pub read_timeout: Duration,
    /// Longest pause between two frames of a response body (applied by whoever reads it, see
    /// [`Upstream::body_timeout`]).
    pub body_timeout: Duration,
    /// How many further targets the caller may try after a [`UpstreamError::Connect`].
    pub retries: u32,
    /// Verify the target's certificate (web PKI roots plus `extra_ca`, name = target host).
    /// `false` accepts any certificate: only for test and demo upstreams.
    pub tls_verify: bool,
    /// CA certificates trusted in addition to the web PKI roots.
    pub extra_ca: Vec<CertificateDer<'static>>,
}

/// A configuration [`Upstream::new`] refuses.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    /// The target list is empty.
    #[error("an upstream needs at least one target")]
    NoTargets,
    /// A target is not `host:port`.
    #[error("upstream target {target:?} is not host:port")]
    InvalidTarget {
        /// The rejected target.
        target: String,
    },
    /// An extra CA certificate could not be added to the trust store.
    #[error("extra CA certificate #{index} is not usable: {source}")]
    InvalidCa {
        /// Its position in `extra_ca`.
        index: usize,
        /// Why rustls rejected it.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the client configuration.
    #[error("cannot build the upstream TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

/// Why an upstream exchange failed, and whose fault that is.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS, TLS handshake or certificate
    /// failure, connect timeout, invalid target). Nothing of the request was sent: safe to
    /// retry on another target.
    #[error("cannot connect to upstream {target}: {source}")]
    Connect {
        /// The target tried.
        target: String,
        /// The cause; `ErrorKind::TimedOut` for a connect timeout.
        #[source]
        source: io::Error,
    },
    /// The request was sent but no response head arrived within the read timeout.
    #[error("upstream {target} sent no response head within {after:?}")]
    Timeout {
        /// The target tried.
        target: String,
        /// The read timeout that expired.
        after: Duration,
    },
    /// The exchange failed after the request was handed over (connection reset, malformed
    /// response, request body error). Part of the request may have been sent: not retryable.
    #[error("upstream {target} failed: {source}")]
    Other {
        /// The target tried.
        target: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl UpstreamError {
    /// The status the client gets: 504 for timeouts (connect or read), 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Connect { source, .. } if source.kind() == io::ErrorKind::TimedOut => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect { .. } | UpstreamError::Other { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the request is untouched, so another target may be tried (only `Connect`).
    pub fn is_retryable(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    /// The target the failed attempt went to.
    pub fn target(&self) -> &str {
        match self {
            UpstreamError::Connect { target, .. }
            | UpstreamError::Timeout { target, .. }
            | UpstreamError::Other { target, .. } => target,
        }
    }
}

/// A parsed target: where to connect and which name to present and verify.
#[derive(Debug, Clone)]
struct Endpoint {
    authority: String,
    server_name: ServerName<'static>,
}

impl Endpoint {
    /// Parses `target` by the contract's rule for targets.
    fn parse(target: &str) -> Option<Endpoint> {
        Endpoint::new(&Target::parse(target).ok()?)
    }

    fn new(target: &Target) -> Option<Endpoint> {
        let server_name = ServerName::try_from(target.host().to_owned()).ok()?;
        Some(Endpoint {
            authority: target.to_string(),
            server_name,
        })
    }
}

/// One service's upstream: targets, timeouts, TLS and the connection pool. Cheap to share
/// behind an `Arc`; all methods take `&self`.
pub struct Upstream {
    targets: Vec<Target>,
    endpoints: Vec<Endpoint>,
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    read_timeout: Duration,
    body_timeout: Duration,
    retries: u32,
    next: AtomicUsize,
    pool: Arc<Pool>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("targets", &self.targets)
            .field("https", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Validates the settings and builds the upstream (and its TLS client config).
    pub fn new(settings: UpstreamSettings) -> Result<Upstream, UpstreamConfigError> {
        if settings.targets.is_empty() {
            return Err(UpstreamConfigError::NoTargets);
        }
        let invalid = |target: &String| UpstreamConfigError::InvalidTarget {
            target: target.clone(),
        };
        let targets = settings
            .targets
            .iter()
            .map(|target| Target::parse(target).map_err(|_| invalid(target)))
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints = targets
            .iter()
            .zip(&settings.targets)
            .map(|(target, text)| Endpoint::new(target).ok_or_else(|| invalid(text)))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if settings.https {
            Some(tls_connector(settings.tls_verify, &settings.extra_ca)?)
        } else {
            None
        };
        Ok(Upstream {
            targets,
            endpoints,
            tls,
            connect_timeout: settings.connect_timeout,
            read_timeout: settings.read_timeout,
            body_timeout: settings.body_timeout,
            retries: settings.retries,
            next: AtomicUsize::new(0),
            pool: Arc::new(Pool::default()),
        })
    }

    /// The configured targets, in configuration order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The index (into [`Upstream::targets`]) of the next target, round-robin.
    pub fn next_target(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len()
    }

    /// How many further targets the caller may try after a `Connect` error.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Whether targets are spoken to over TLS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The read timeout (request handed over → response head).
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The longest pause allowed between two frames of a response body. The body is the
    /// caller's to read, so the caller applies it (the gateway aborts the client's response
    /// past it, which also closes that upstream connection).
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    /// Checks out a connection to `target`: an idle pooled one if there is one, else a new one
    /// (TCP connect, TLS handshake when https, HTTP/1.1 handshake), all under the connect
    /// timeout. `target` need not be configured (a balancer plugin may choose another), but
    /// must be `host:port`.
    ///
    /// Only ever fails with [`UpstreamError::Connect`].
    pub async fn connect(&self, target: &str) -> Result<UpstreamConnection<'_>, UpstreamError> {
        let endpoint = self.endpoint(target)?;
        if let Some(sender) = self.pool.checkout(&endpoint.authority) {
            return Ok(UpstreamConnection {
                upstream: self,
                endpoint,
                sender,
                reused: true,
            });
        }
        let sender = self.open(&endpoint).await?;
        Ok(UpstreamConnection {
            upstream: self,
            endpoint,
            sender,
            reused: false,
        })
    }

    /// Connects to `target` and sends `req` ([`Upstream::connect`] then
    /// [`UpstreamConnection::send`]). On [`UpstreamError::Connect`] the request was dropped
    /// without its body being polled; callers that want to retry it use the two calls.
    pub async fn send<B>(
        &self,
        target: &str,
        req: Request<B>,
    ) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.connect(target).await?.send(req).await
    }

    fn endpoint(&self, target: &str) -> Result<Endpoint, UpstreamError> {
        if let Some(endpoint) = self.endpoints.iter().find(|e| e.authority == target) {
            return Ok(endpoint.clone());
        }
        Endpoint::parse(target).ok_or_else(|| UpstreamError::Connect {
            target: target.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "target is not host:port"),
        })
    }

    /// Opens a new connection under the connect timeout.
    async fn open(&self, endpoint: &Endpoint) -> Result<SendRequest<PoolBody>, UpstreamError> {
        let connect = async {
            let tcp = TcpStream::connect(endpoint.authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                Some(tls) => {
                    let stream = tls.connect(endpoint.server_name.clone(), tcp).await?;
                    handshake(stream, &endpoint.authority).await
                }
                None => handshake(tcp, &endpoint.authority).await,
            }
        };
        let result = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", self.connect_timeout),
            )),
        };
        result.map_err(|source| UpstreamError::Connect {
            target: endpoint.authority.clone(),
            source,
        })
    }
}

/// HTTP/1.1 handshake on an established stream; the connection is driven by its own task.
async fn handshake<S>(stream: S, target: &str) -> io::Result<SendRequest<PoolBody>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let target = target.to_owned();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(upstream = %target, error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A checked-out connection to one target, ready for one request. Dropping it unused
/// closes it.
pub struct UpstreamConnection<'a> {
    upstream: &'a Upstream,
    endpoint: Endpoint,
    sender: SendRequest<PoolBody>,
    reused: bool,
}

impl fmt::Debug for UpstreamConnection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConnection")
            .field("target", &self.endpoint.authority)
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnection<'_> {
    /// The target this connection goes to.
    pub fn target(&self) -> &str {
        &self.endpoint.authority
    }

    /// Whether this connection came from the pool.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// Sends the request and waits for the response head, at most the read timeout (which so
    /// also bounds writing the request body: a client uploading slower than that gets a 504).
    /// The response body streams afterwards under [`Upstream::body_timeout`], applied by its
    /// reader; the connection goes back to the pool once that body has been read to the end
    /// (see [`UpstreamBody`]).
    ///
    /// The request goes out as HTTP/1.1 in origin-form (`/path?query`, whatever the URI's
    /// form); a missing `Host` is set from the URI's authority, else the target. Hop-by-hop
    /// headers are the caller's business (see [`super::forwarding::strip_hop_by_hop`]).
    ///
    /// Fails with [`UpstreamError::Timeout`] or [`UpstreamError::Other`], never `Connect`.
    /// If a pooled connection turns out to be closed before the request was written, the
    /// request is sent once more on a new connection (as hyper-util's client does); should that
    /// connection fail, the result is `Other`, since the request is gone.
    pub async fn send<B>(self, req: Request<B>) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let UpstreamConnection {
            upstream,
            endpoint,
            mut sender,
            reused,
        } = self;
        let req = prepare(req, &endpoint.authority);
        let target = endpoint.authority.clone();
        let exchange = async move {
            match sender.try_send_request(req).await {
                Ok(response) => Ok((response, sender)),
                Err(mut err) => match err.take_message() {
                    Some(req) if reused => {
                        tracing::debug!(upstream = %endpoint.authority, "pooled connection was closed; resending on a new one");
                        let mut fresh = upstream
                            .open(&endpoint)
                            .await
                            .map_err(|e| -> BoxError { Box::new(e) })?;
                        let response = fresh.send_request(req).await?;
                        Ok((response, fresh))
                    }
                    _ => Err(BoxError::from(err.into_error())),
                },
            }
        };
        match tokio::time::timeout(upstream.read_timeout, exchange).await {
            Ok(Ok((response, sender))) => {
                let lease = Lease {
                    pool: upstream.pool.clone(),
                    target,
                    sender,
                };
                Ok(response.map(|body| UpstreamBody {
                    body,
                    lease: Some(lease),
                }))
            }
            Ok(Err(source)) => Err(UpstreamError::Other { target, source }),
            // Dropping the in-flight exchange makes hyper close that connection.
            Err(_) => Err(UpstreamError::Timeout {
                target,
                after: upstream.read_timeout,
            }),
        }
    }
}

/// An upstream response body. Its connection goes back to the pool when the body has been read
/// to its end: at once when hyper already counts the connection idle (the usual case: the
/// connection's task reads the body's end and readies the connection in one go), else once
/// it does, or never if it closes. A body dropped before its end leaves its connection to close.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
}

/// A connection checked out of the pool, with where it goes back to.
struct Lease {
    pool: Arc<Pool>,
    target: String,
    sender: SendRequest<PoolBody>,
}

impl UpstreamBody {
    fn release(&mut self) {
        let Some(Lease {
            pool,
            target,
            sender,
        }) = self.lease.take()
        else {
            return;
        };
        if sender.is_ready() {
            pool.put(target, sender);
        } else if tokio::runtime::Handle::try_current().is_ok() {
            pool.return_when_idle(target, sender);
        }
    }
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("body", &self.body)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => self.body.is_end_stream(),
            Some(Err(_)) => false,
        };
        if ended {
            self.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body without content (a 204, a HEAD) is at its end before anyone reads it.
        if http_body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}

/// Puts a request in the shape HTTP/1.1 upstreams expect; boxes its body for the pool.
fn prepare<B>(req: Request<B>, target: &str) -> Request<PoolBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(HOST) {
        let host = parts
            .uri
            .authority()
            .map_or(target, Authority::as_str)
            .to_owned();
        if let Ok(host) = HeaderValue::from_str(&host) {
            parts.headers.insert(HOST, host);
        }
    }
    let origin_form = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(origin_form);
    // HTTP/2 requests arrive marked HTTP/2; the upstream hop is HTTP/1.1.
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// Idle keep-alive connections, per target. Each belongs to the [connection thread](crate::cores)
/// its task runs on, and only requests on that thread take it: a request on another would wake
/// that thread for each of its reads and writes.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, Vec<IdleConnection>>>,
}

struct IdleConnection {
    sender: SendRequest<PoolBody>,
    since: Instant,
    /// The connection thread its task runs on (`None` off them).
    home: Option<usize>,
}

impl IdleConnection {
    /// Whether it can still take a request at `now` (one clock read serves a whole list).
    fn usable_at(&self, now: Instant) -> bool {
        now.duration_since(self.since) < IDLE_TIMEOUT && self.sender.is_ready()
    }
}

impl Pool {
    /// The most recently idled usable connection of this thread; stale ones met on the way are
    /// dropped.
    fn checkout(&self, target: &str) -> Option<SendRequest<PoolBody>> {
        let home = crate::cores::current();
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(target)?;
        while let Some(at) = list.iter().rposition(|idle| idle.home == home) {
            let connection = list.remove(at);
            if connection.usable_at(now) {
                return Some(connection.sender);
            }
        }
        None
    }

    /// Keeps `sender` for this thread's requests, up to [`MAX_IDLE_PER_TARGET`] per thread. A
    /// connection is put back by the thread that used it, which is the one its task runs on.
    fn put(&self, target: String, sender: SendRequest<PoolBody>) {
        let home = crate::cores::current();
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(target).or_default();
        list.retain(|idle| idle.usable_at(now));
        if list.iter().filter(|idle| idle.home == home).count() < MAX_IDLE_PER_TARGET {
            list.push(IdleConnection {
                sender,
                since: now,
                home,
            });
        }
    }

    /// Returns the connection to the pool once hyper reports it ready (its response body read to
    /// the end); a connection that closes instead is simply dropped.
    fn return_when_idle(self: &Arc<Self>, target: String, mut sender: SendRequest<PoolBody>) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(target, sender);
            }
        });
    }
}

fn tls_connector(
    verify: bool,
    extra_ca: &[CertificateDer<'static>],
) -> Result<TlsConnector, UpstreamConfigError> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(UpstreamConfigError::Tls)?;
    let mut config = if verify {
        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for (index, ca) in extra_ca.iter().enumerate() {
            roots
                .add(ca.clone())
                .map_err(|source| UpstreamConfigError::InvalidCa { index, source })?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(&provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `tls_verify = false`: any certificate is accepted for any name. Handshake signatures are
/// still checked (it costs nothing), but without a trusted chain that proves nothing: this
/// gives encryption against passive observers only.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyServerCert {
    fn new(provider: &CryptoProvider) -> Self {
        AcceptAnyServerCert {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
