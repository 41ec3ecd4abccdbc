//! Accepting connections: the TLS handshake with its certificate phase (or plaintext), then
//! HTTP/1.1 or HTTP/2 on the connection, each request through [`super::request::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::request::{ConnectionScope, handle};
use crate::exchange::{ConnectionFacts, Context, TlsSession};
use crate::pipeline::{self, Recording};
use crate::runtime::PluginError;
use crate::tls::{self, ListenerTls};

/// Accepts connections on `socket` until `shutdown`.
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    name: String,
    tls: Option<Arc<ListenerTls>>,
    socket: TcpListener,
    graceful: Arc<GracefulShutdown>,
    shutdown: CancellationToken,
) {
    let local_port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                Some(tls) => serve_tls(shared, &tls, tcp, peer, local_port, watcher).await,
                None => {
                    let facts = ConnectionFacts {
                        client_addr: peer,
                        sni: None,
                        tls: None,
                    };
                    serve_http(shared, tcp, facts, Context::new(), local_port, watcher).await;
                }
            }
        });
    }
}

async fn serve_tls(
    shared: Arc<Shared>,
    listener: &ListenerTls,
    tcp: TcpStream,
    peer: SocketAddr,
    local_port: u16,
    watcher: Watcher,
) {
    let mut context = Context::new();
    let certificate_phase = async |hello: &tls::ClientHelloInfo| {
        let plugins = shared.chains.for_sni(&shared.router, hello.sni.as_deref());
        let outcome =
            pipeline::run_certificate_phase(&plugins, peer, hello.sni.clone(), Recording::Off)
                .await
                .map_err(|(err, _)| err)?;
        context = outcome.context;
        Ok::<_, PluginError>(outcome.policy)
    };
    let (stream, facts) = match tls::accept(listener, tcp, certificate_phase).await {
        Ok(accepted) => accepted,
        Err(err) => {
            tracing::debug!(%peer, %err, "TLS handshake failed");
            return;
        }
    };
    let facts = ConnectionFacts {
        client_addr: peer,
        sni: facts.sni,
        tls: Some(TlsSession {
            version: facts.version.to_owned(),
            cipher: facts.cipher.to_owned(),
            client_chain_pem: facts.client_chain.as_deref().map(tls::encode_chain),
            client_verify: facts.client_verify,
        }),
    };
    serve_http(shared, stream, facts, context, local_port, watcher).await;
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    facts: ConnectionFacts,
    context: Context,
    local_port: u16,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let scope = Arc::new(ConnectionScope {
        facts: Arc::new(facts),
        context,
        local_port,
    });
    let service = service_fn(move |request| {
        let shared = shared.clone();
        let scope = scope.clone();
        async move { Ok::<_, Infallible>(handle(shared, scope, request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%err, "connection ended with an error");
    }
}
