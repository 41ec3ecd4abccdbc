//! Per-request cost of the example plugins: one realistic request (a TLS 1.3 connection whose
//! client sent leaf + intermediate, verified) driven through every request phase with
//! [`tollgate::pipeline::Exchange`], fresh instance creation included, as the gateway runs it; and
//! the certificate phase of the plugins that have one; each from the plugin's configured snapshot
//! (`configure` ran once at load) and, under `unsnapshotted/`, with `configure` run in every
//! instance as before snapshots. Under `instance/`, a fresh instance made and dropped with no call
//! into it: the floor every request pays before the plugin runs, so that `request/` minus
//! `instance/` is the plugin's own work. Under `request-cold/`, the same request after a sweep
//! over 16 MiB of other memory, not timed, as the gateway's own work between two plugin calls
//! evicts the plugin's code and data: its figures are what the gateway pays per request, about
//! twice `request/` (docs/benchmarks.md). Also prints the resident memory each live instance adds.
//!
//! `cargo bench -p tollgate-tests --bench plugins -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tollgate::exchange::{ConnectionFacts, RequestHead};
use tollgate::pipeline::{Recording, run_certificate_phase};
use tollgate::runtime::{LoadedPlugin, PluginSpec, Runtime, RuntimeLimits, Snapshots, StartImage};
use tollgate::tls::{ClientChain, ClientVerify, TlsFacts};
use tollgate_tests::examples_support::{cert, pem_for_toml, plugin_path};
use tollgate_tests::{client_addr, exchange, get, run_request_phases};

/// The allocator the `tollgate` binary runs with, so these figures are what the gateway pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the upstream answers (the body goes through body_filter).
const BODY: &str = r#"{"orders":[{"id":1,"total":"12.50"},{"id":2,"total":"7.00"}]}"#;

fn spec(example: &str, config: serde_json::Value) -> PluginSpec {
    let mut spec = PluginSpec::new(example, plugin_path(example)).with_config(config);
    if example == "py-client-cert-header" {
        spec.memory_limit = 48 << 20;
        spec.time_limit = std::time::Duration::from_secs(1);
    }
    spec
}

/// The plugins benched, with realistic configurations, with or without snapshots.
fn plugins(
    rt: &tokio::runtime::Runtime,
    snapshots: Snapshots,
) -> Vec<(&'static str, Arc<LoadedPlugin>)> {
    let runtime = match snapshots {
        Snapshots::On => tollgate_tests::runtime().clone(),
        Snapshots::Off => Runtime::with_options(RuntimeLimits::default(), Snapshots::Off)
            .expect("runtime without snapshots"),
    };
    let ca = pem_for_toml(&cert("mtls-auth", "ca-bundle.pem"));
    let specs = [
        (
            "tls-handshake-modifier",
            serde_json::json!({ "snis": ["api.example.com", "*.internal.example"] }),
        ),
        (
            "mtls-auth",
            serde_json::json!({
                "ca_certificates": ca,
                "send_ca_dn": true,
                "consumers": { "alice@example.com": "alice", "bob@example.com": "bob" },
            }),
        ),
        ("tls-metadata-headers", serde_json::json!({})),
        ("c-min-chain", serde_json::json!({ "min_chain_length": 2 })),
        ("py-client-cert-header", serde_json::json!({})),
    ];
    specs
        .into_iter()
        .map(|(name, config)| {
            let plugin = rt
                .block_on(runtime.load(spec(name, config)))
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            (name, plugin)
        })
        .collect()
}

/// A verified TLS 1.3 connection from alice (leaf + intermediate).
fn connection() -> Arc<ConnectionFacts> {
    let chain = std::fs::read_to_string(cert("mtls-auth", "alice-chain.pem")).expect("chain");
    Arc::new(ConnectionFacts {
        client_addr: client_addr(),
        sni: Some("api.example.com".to_owned()),
        tls: Some(TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            alpn: None,
            client_chain: Some(ClientChain::from_pem(&chain).expect("a readable chain")),
            client_verify: ClientVerify::Success,
        }),
    })
}

fn request() -> RequestHead {
    get(
        "/orders",
        &[
            ("host", "api.example.com"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "application/json"),
            ("x-request-id", "5b0a3c2e-8f51-4c1a-9a55-0c3e1f7d2b11"),
        ],
    )
}

fn request_phases(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    for (snapshots, prefix) in [(Snapshots::On, ""), (Snapshots::Off, "unsnapshotted/")] {
        let plugins = plugins(&rt, snapshots);
        for (name, plugin) in &plugins {
            println!("{prefix}{name}: starts from {:?}", plugin.start_image());
            if snapshots == Snapshots::On && *name != "py-client-cert-header" {
                assert_eq!(plugin.start_image(), &StartImage::Configured, "{name}");
            }
        }
        bench_plugins(c, &rt, &plugins, prefix);
        if snapshots == Snapshots::On {
            instance_memory(&rt, &plugins);
        }
    }
}

fn bench_plugins(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    plugins: &[(&'static str, Arc<LoadedPlugin>)],
    prefix: &str,
) {
    let connection = connection();
    let mut group = c.benchmark_group(format!("{prefix}request"));
    for (name, plugin) in plugins {
        let chain = [plugin.clone()];
        // Once, checked: the plugin really did its job without failing.
        let mut first = exchange(&chain, connection.clone(), request());
        let results = rt.block_on(run_request_phases(&mut first, BODY));
        for (phase, result) in &results {
            assert!(result.is_ok(), "{name} {phase}: {result:?}");
        }
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut exchange = unrecorded_exchange(&chain, &connection);
                black_box(rt.block_on(run_request_phases(&mut exchange, BODY)));
            })
        });
    }
    group.finish();

    if prefix.is_empty() {
        bench_cold_requests(c, rt, plugins, &connection);
    }

    let mut group = c.benchmark_group(format!("{prefix}instance"));
    for (name, plugin) in plugins {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let instance = rt
                    .block_on(plugin.instantiate(false))
                    .expect("instantiates");
                drop(black_box(instance));
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("{prefix}certificate"));
    for (name, plugin) in plugins
        .iter()
        .filter(|(_, p)| p.handles(tollgate::Phase::Certificate))
    {
        let chain = [plugin.clone()];
        let outcome = rt
            .block_on(run_certificate_phase(
                &chain,
                client_addr(),
                Some("api.example.com".to_owned()),
                Recording::Off,
            ))
            .unwrap_or_else(|(err, _)| panic!("{name}: {err}"));
        assert!(outcome.policy.request_client_certificate, "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| {
                black_box(rt.block_on(run_certificate_phase(
                    &chain,
                    client_addr(),
                    Some("api.example.com".to_owned()),
                    Recording::Off,
                )))
            })
        });
    }
    group.finish();
}

/// A fresh exchange of `request()` through `chain`, host calls not recorded, as the gateway runs
/// it.
fn unrecorded_exchange(
    chain: &[Arc<LoadedPlugin>],
    connection: &Arc<ConnectionFacts>,
) -> tollgate::pipeline::Exchange {
    tollgate::pipeline::Exchange::new(
        chain.to_vec().into(),
        tollgate::exchange::ExchangeState::new(connection.clone(), request(), Default::default()),
        Recording::Off,
    )
}

/// Bytes swept before each cold request: more than this VM's caches hold for one core, about
/// what the gateway's TLS and HTTP work between two plugin calls leaves of them.
const CACHE_SWEEP: usize = 16 << 20;

/// `request/` with cold caches: each request follows a sweep over [`CACHE_SWEEP`] bytes of other
/// memory, outside the timing.
fn bench_cold_requests(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    plugins: &[(&'static str, Arc<LoadedPlugin>)],
    connection: &Arc<ConnectionFacts>,
) {
    let mut sweep = vec![0u8; CACHE_SWEEP];
    let mut group = c.benchmark_group("request-cold");
    for (name, plugin) in plugins {
        let chain = [plugin.clone()];
        group.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    // One write per cache line.
                    for byte in sweep.iter_mut().step_by(64) {
                        *byte = byte.wrapping_add(1);
                    }
                    unrecorded_exchange(&chain, connection)
                },
                |mut exchange| black_box(rt.block_on(run_request_phases(&mut exchange, BODY))),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Resident memory added per live instance (RSS delta over 16 instances held at once).
fn instance_memory(rt: &tokio::runtime::Runtime, plugins: &[(&'static str, Arc<LoadedPlugin>)]) {
    const HELD: usize = 16;
    for (name, plugin) in plugins {
        // One first, so one-time costs (lazy initialization, page tables) are not counted.
        drop(
            rt.block_on(plugin.instantiate(false))
                .expect("instantiates"),
        );
        let before = rss_bytes();
        let held: Vec<_> = (0..HELD)
            .map(|_| {
                rt.block_on(plugin.instantiate(false))
                    .expect("instantiates")
            })
            .collect();
        let after = rss_bytes();
        drop(held);
        println!(
            "memory/{name}: {:.1} KiB resident per live instance",
            after.saturating_sub(before) as f64 / HELD as f64 / 1024.0
        );
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

criterion_group!(benches, request_phases);
criterion_main!(benches);
