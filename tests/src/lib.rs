//! Support code for Tollgate's integration tests: the guest fixtures (built from source by this
//! crate's build script), a test PKI written to PEM files, and helpers to load plugins and run a
//! request through their phases.
//!
//! ```no_run
//! # async fn demo() {
//! use tollgate_tests::{guests, load};
//!
//! let plugin = load("deny", guests::SCRIPTED, serde_json::json!({
//!     "actions": {"access": [{"call": "exit", "status": 403}]}
//! })).await;
//! assert!(plugin.handles(tollgate::Phase::Access));
//! # }
//! ```

pub mod binary;
pub mod clients;
pub mod examples_support;
pub mod gateway;
pub mod pki;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tollgate::Phase;
use tollgate::exchange::{ConnectionFacts, ExchangeState, RequestHead, ResponseHead};
use tollgate::pipeline::{Exchange, Recording, TraceEntry};
use tollgate::runtime::{HostCall, LoadedPlugin, PluginError, PluginSpec, Runtime};
use tollgate::tls::{ClientChain, ClientVerify, TlsFacts};

pub use pki::{PkiFiles, TestPki};

/// The guest fixtures, as absolute paths to `.wasm` files (wasm32-wasip1 core modules).
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The built-in echo upstream on a loopback port of its own, served until the test ends.
pub async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo address");
    tokio::spawn(tollgate::proxy::echo::serve_echo(
        listener,
        std::future::pending(),
    ));
    addr
}

/// The workspace root (`/work/main` in this checkout).
pub fn workspace_dir() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The process's plugin runtime, shared by every test of a binary: one engine (and one reserved
/// instance pool), and each guest file compiled once.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        for (name, path) in guests::ALL {
            // The build script does not watch its own outputs (that would rerun it every build).
            assert!(
                std::path::Path::new(path).is_file(),
                "guest {name} is missing at {path}: run `touch tests/build.rs` and build again"
            );
        }
        Runtime::new().expect("the plugin runtime starts")
    })
}

/// A spec for `path` with `config` and default limits.
pub fn spec(name: &str, path: &str, config: serde_json::Value) -> PluginSpec {
    PluginSpec::new(name, path).with_config(config)
}

/// Loads `path` as plugin `name` with `config`; panics with the load error's message.
pub async fn load(name: &str, path: &str, config: serde_json::Value) -> Arc<LoadedPlugin> {
    load_spec(spec(name, path, config)).await
}

/// Loads a plugin from a full spec; panics with the load error's message.
pub async fn load_spec(spec: PluginSpec) -> Arc<LoadedPlugin> {
    let name = spec.name.clone();
    match runtime().load(spec).await {
        Ok(plugin) => plugin,
        Err(err) => panic!("plugin {name} does not load: {err}"),
    }
}

/// A client address for tests.
pub fn client_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50_000))
}

/// A TLS 1.3 connection that presented `chain` (contract PEM, or `None`) and was verified as
/// `verify`.
pub fn tls_connection(chain: Option<String>, verify: ClientVerify) -> Arc<ConnectionFacts> {
    Arc::new(ConnectionFacts {
        client_addr: client_addr(),
        sni: Some("localhost".to_string()),
        tls: Some(TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            alpn: None,
            client_chain: chain.map(|pem| ClientChain::from_pem(&pem).expect("a readable chain")),
            client_verify: verify,
        }),
    })
}

/// A plaintext connection.
pub fn plaintext_connection() -> Arc<ConnectionFacts> {
    Arc::new(ConnectionFacts {
        client_addr: client_addr(),
        sni: None,
        tls: None,
    })
}

/// `GET path` with the given headers.
pub fn get(path: &str, headers: &[(&str, &str)]) -> RequestHead {
    let mut head = RequestHead {
        method: "GET".to_string(),
        path: path.to_string(),
        ..RequestHead::default()
    };
    for (name, value) in headers {
        head.headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            http::HeaderValue::from_str(value).expect("valid header value"),
        );
    }
    head
}

/// A request through `plugins` on `connection`, recording host calls.
pub fn exchange(
    plugins: &[Arc<LoadedPlugin>],
    connection: Arc<ConnectionFacts>,
    request: RequestHead,
) -> Exchange {
    let state = ExchangeState::new(connection, request, Default::default());
    Exchange::new(plugins.to_vec().into(), state, Recording::On)
}

/// What each request phase returned, in order.
pub type PhaseResults = Vec<(Phase, Result<(), PluginError>)>;

/// Runs every request phase once, as the gateway would for a request the upstream answers `200`
/// with one body chunk `body`, carrying on after failures so every phase is seen.
pub async fn run_request_phases(exchange: &mut Exchange, body: &str) -> PhaseResults {
    let mut results = vec![
        (Phase::Rewrite, exchange.rewrite().await),
        (Phase::Access, exchange.access().await),
    ];
    let target = tollgate::testing::default_target();
    let balancer = exchange
        .balancer(vec![target.clone()].into(), target, 1)
        .await;
    results.push((Phase::Balancer, balancer.map(drop)));
    let head = ResponseHead {
        status: 200,
        ..ResponseHead::default()
    };
    let header_filter = exchange.header_filter(head).await;
    results.push((Phase::HeaderFilter, header_filter.map(drop)));
    let body_filter = exchange
        .body_filter(bytes::Bytes::from(body.to_string()), true)
        .await;
    results.push((Phase::BodyFilter, body_filter.map(drop)));
    exchange.log().await;
    results.push((Phase::Log, Ok(())));
    results
}

/// Every host call of `trace`, in order.
pub fn calls(trace: &[TraceEntry]) -> Vec<&HostCall> {
    trace.iter().flat_map(|entry| &entry.calls).collect()
}
