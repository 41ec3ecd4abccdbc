//! The plugin runtime's costs: turning a wasm32-wasip1 module into a compiled component, making
//! the fresh instance each request gets, and one phase call that makes a host call.
//!
//! `cargo bench -p tollgate-tests --bench runtime`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::Phase;
use tollgate::exchange::ExchangeState;
use tollgate::runtime::{LoadedPlugin, PhaseCall, componentize};
use tollgate::tls::ClientVerify;
use tollgate_tests::{TestPki, get, guests, load, runtime, tls_connection};

fn block_on<F: std::future::Future>(rt: &tokio::runtime::Runtime, future: F) -> F::Output {
    rt.block_on(future)
}

fn chain_reader(rt: &tokio::runtime::Runtime) -> Arc<LoadedPlugin> {
    block_on(
        rt,
        load(
            "chain-reader",
            guests::SCRIPTED,
            serde_json::json!({
                "actions": { "access": [{ "call": "get_full_client_certificate_chain" }] }
            }),
        ),
    )
}

fn componentize_and_compile(c: &mut Criterion) {
    let module = std::fs::read(guests::SCRIPTED).expect("guest built");
    let engine = runtime().engine().clone();
    let path = std::path::Path::new(guests::SCRIPTED);
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("componentize", |b| {
        b.iter(|| componentize(black_box(&module), path).expect("componentizes"))
    });
    let component = componentize(&module, path).expect("componentizes");
    group.bench_function("compile_component", |b| {
        b.iter(|| {
            wasmtime::component::Component::new(&engine, black_box(&component)).expect("compiles")
        })
    });
    group.finish();
}

fn instantiate(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let plugin = chain_reader(&rt);
    c.bench_function("instantiate_and_configure", |b| {
        b.iter(|| block_on(&rt, plugin.instantiate(false)).expect("instantiates"))
    });
}

fn phase_call(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let plugin = chain_reader(&rt);
    let chain = TestPki::new().client_chain_pem();
    let connection = tls_connection(Some(chain), ClientVerify::Success);
    let mut instance = block_on(&rt, plugin.instantiate(false)).expect("instantiates");
    let mut state = ExchangeState::new(connection, get("/", &[]), Default::default());
    c.bench_function("access_call_reading_the_chain", |b| {
        b.iter(|| {
            block_on(
                &rt,
                instance.call_exchange(PhaseCall::Plain(Phase::Access), &mut state),
            )
            .expect("phase runs");
        })
    });
}

criterion_group!(benches, componentize_and_compile, instantiate, phase_call);
criterion_main!(benches);
