//! The state plugins read and change: the connection, and one request on it.
//!
//! The pipeline owns these values and lends them to a plugin's store for the length of one call,
//! so host functions work on plain data without locks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::tls::{ClientVerify, TlsFacts, TlsPolicy};
use tollgate_phases::Target;

/// What is known about the client's connection once the handshake is done.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The server name the client asked for.
    pub sni: Option<String>,
    /// What the TLS handshake established; `None` on a plaintext connection.
    pub tls: Option<TlsFacts>,
}

/// Key/value pairs shared between phases and plugins.
pub type Context = BTreeMap<String, String>;

pub use tollgate_phases::{MAX_CONTEXT_ENTRIES, MAX_CONTEXT_VALUE};

/// The certificate phase's state: one connection's ClientHello and what plugins decide about it.
#[derive(Debug, Clone)]
pub struct HandshakeState {
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The server name from the ClientHello.
    pub sni: Option<String>,
    /// The connection policy plugins are building.
    pub policy: TlsPolicy,
    /// The connection's context, which seeds every request's.
    pub context: Context,
}

/// A request as plugins see and change it.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// Upper-case method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string, without `?`.
    pub query: Option<String>,
    /// Headers, including plugin changes; what is sent upstream.
    pub headers: HeaderMap,
}

/// A response head as plugins see and change it.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Headers sent to the client.
    pub headers: HeaderMap,
}

/// A response a plugin gave in rewrite or access instead of the upstream's.
#[derive(Debug, Clone, Default)]
pub struct EarlyResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

/// The balancer phase's view of one attempt.
#[derive(Debug, Clone, Default)]
pub struct BalancerState {
    /// The service's targets.
    pub targets: Arc<[Target]>,
    /// The target this attempt goes to (round-robin, or a plugin's choice).
    pub target: Option<Target>,
    /// 1 for the first try.
    pub attempt: u32,
}

/// One request's state across its phases.
#[derive(Debug, Clone)]
pub struct ExchangeState {
    /// The connection the request came on.
    pub connection: Arc<ConnectionFacts>,
    /// The request, with plugin changes.
    pub request: RequestHead,
    /// A response given by a plugin, if any.
    pub exit: Option<EarlyResponse>,
    /// The last `set-client-verify` value.
    pub client_verify_override: Option<ClientVerify>,
    /// The request's context.
    pub context: Context,
    /// The current balancer attempt.
    pub balancer: BalancerState,
    /// The response head, once known.
    pub response: Option<ResponseHead>,
    /// A replacement for the body chunk being filtered.
    pub body_chunk: Option<Vec<u8>>,
}

impl ExchangeState {
    /// A fresh request state on `connection`.
    pub fn new(connection: Arc<ConnectionFacts>, request: RequestHead, context: Context) -> Self {
        ExchangeState {
            connection,
            request,
            exit: None,
            client_verify_override: None,
            context,
            balancer: BalancerState::default(),
            response: None,
            body_chunk: None,
        }
    }

    /// The value for the log's `request.tls.client_verify`: the last override, else the
    /// handshake's result. `None` on plaintext.
    pub fn logged_client_verify(&self) -> Option<ClientVerify> {
        let tls = self.connection.tls.as_ref()?;
        Some(
            self.client_verify_override
                .clone()
                .unwrap_or_else(|| tls.client_verify.clone()),
        )
    }
}
