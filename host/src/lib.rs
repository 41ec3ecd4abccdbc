//! Tollgate: a TLS-terminating HTTP gateway whose behaviour is extended by sandboxed WebAssembly
//! plugins, with Kong's `kong.client.tls` API at its heart.
//!
//! - [`runtime`]: loads plugins from `.wasm` files and runs them in a sandbox.
//! - [`pipeline`]: runs the plugin phases over a connection and its requests.
//! - [`tls`]: the TLS listener, the certificate phase's policies, client chain verification.
//! - [`proxy`]: the HTTP server, routing and the upstream side.
//! - [`config`] and [`log`]: the config file and the Kong-shaped access log.
//! - [`testing`]: the offline harness behind `tollgate test`.

pub mod alerts;
pub mod config;
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
