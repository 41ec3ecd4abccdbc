//! Tollgate: a TLS-terminating HTTP gateway whose behaviour is extended by sandboxed WebAssembly
//! plugins, with Kong's `kong.client.tls` API at its heart.
//!
//! - [`runtime`]: loads plugins from `.wasm` files and runs them in a sandbox.
//! - [`exchange`]: the state plugins read and change: the connection's facts, one request's
//!   head, context and response.
//! - [`pipeline`]: runs one plugin phase over a chain of plugins, and the certificate phase.
//! - [`lifecycle`]: the one request lifecycle, rewrite to log, which the gateway and the harness
//!   both drive.
//! - [`tls`]: the TLS listener and acceptor, the certificate phase's policies, a connection's
//!   [`TlsFacts`](tls::TlsFacts), client chain verification.
//! - [`gateway`]: listeners, connections, the request path, reloads and the admin listener.
//! - [`proxy`]: routing, the upstream client, forwarding headers, the demo upstream.
//! - [`config`] and [`log`]: the config file and the Kong-shaped access log.
//! - [`cores`]: the connection threads, one single-threaded runtime per core.
//! - [`metrics`] and [`alerts`]: Prometheus metrics and rate-limited operator warnings.
//! - [`testing`]: the offline harness behind `tollgate test`.

pub mod alerts;
pub mod config;
pub mod cores;
pub mod exchange;
pub mod gateway;
pub mod lifecycle;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod runtime;
pub mod testing;
pub mod tls;

pub use tollgate_phases::{HostFunction, Phase, PhaseSet};

#[cfg(test)]
mod proptests;
