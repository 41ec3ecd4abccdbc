//! The admin listener: `GET /status` (liveness and readiness, the running config's hash and
//! load time), `GET /metrics` (Prometheus text) and `POST /reload`. Off unless `[admin]` is
//! configured; plaintext HTTP/1.1 on its own address, meant for loopback or a private network.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{ConfigVersion, ReloadHandle};
use crate::metrics::Metrics;

/// Where the gateway is in its life, as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Listeners bound and plugins loaded: ready for traffic. (Before that the admin listener
    /// does not answer.)
    Ready = 0,
    /// Shutting down, in-flight requests finishing: alive, not ready.
    Draining = 1,
}

/// What `/status` reports; shared by the serving gateway and the admin listener.
#[derive(Debug)]
pub struct Health {
    phase: AtomicU8,
    version: ArcSwap<ConfigVersion>,
}

impl Health {
    pub(super) fn new(version: ConfigVersion) -> Health {
        Health {
            phase: AtomicU8::new(Phase::Ready as u8),
            version: ArcSwap::from_pointee(version),
        }
    }

    pub(super) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub(super) fn set_version(&self, version: ConfigVersion) {
        self.version.store(Arc::new(version));
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// The `/status` document and its HTTP status (200 when ready, else 503).
    fn status(&self) -> (StatusCode, String) {
        let phase = self.phase();
        let version = self.version.load();
        let loaded = version
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = serde_json::json!({
            "status": match phase {
                Phase::Ready => "ready",
                Phase::Draining => "draining",
            },
            "live": true,
            "ready": phase == Phase::Ready,
            "config_hash": version.hash,
            "config_loaded_at": loaded,
        });
        let code = if phase == Phase::Ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, format!("{body}\n"))
    }
}

/// What the admin listener serves from.
#[derive(Debug, Clone)]
pub(super) struct Admin {
    pub(super) health: Arc<Health>,
    pub(super) metrics: &'static Metrics,
    pub(super) reloads: Option<ReloadHandle>,
}

/// Serves the admin API on `socket` until `stop`, over TLS with required client certificates
/// when `tls` is given.
pub(super) async fn serve(
    admin: Admin,
    socket: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => return,
            accepted = socket.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    tracing::warn!(%err, "admin: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let stop = stop.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(ADMIN_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => serve_connection(admin, stream, stop).await,
                        Ok(Err(err)) => tracing::debug!(%err, "admin: TLS handshake failed"),
                        Err(_) => tracing::debug!("admin: TLS handshake timed out"),
                    }
                }
                None => serve_connection(admin, tcp, stop).await,
            }
        });
    }
}

/// How long an admin client may take over its TLS handshake.
const ADMIN_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve_connection<I>(admin: Admin, io: I, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.answer(request).await) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

impl Admin {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/status") => {
                let (status, body) = self.health.status();
                reply(status, "application/json", body)
            }
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            (&Method::POST, "/reload") => match &self.reloads {
                Some(reloads) => match reloads.reload().await {
                    Ok(reloaded) => reply(
                        StatusCode::OK,
                        "application/json",
                        format!(
                            "{}\n",
                            serde_json::json!({
                                "reloaded": true,
                                "config_hash": reloaded.version.hash,
                                "listeners_opened": reloaded.opened.iter().map(|(n, a)| format!("{n}={a}")).collect::<Vec<_>>(),
                                "listeners_closed": reloaded.closed,
                            })
                        ),
                    ),
                    Err(problems) => reply(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "application/json",
                        format!(
                            "{}\n",
                            serde_json::json!({
                                "reloaded": false,
                                "problems": problems.lines().collect::<Vec<_>>(),
                            })
                        ),
                    ),
                },
                None => reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "this gateway does not reload\n".to_owned(),
                ),
            },
            (_, "/status" | "/metrics" | "/reload") => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".to_owned(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /status, /metrics, POST /reload\n".to_owned(),
            ),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
