//! The plugin runtime through real wasm guests: the phase table of the client-TLS contract (spec
//! §2, §6.1), `set_client_verify` values (§3, §6.8), the chain format (§3, §6.2–6.4, §6.7), the
//! sandbox's limits, load errors, componentizing, the WIT's phase documentation, and
//! `tollgate test` on a plugin crate that lives outside the repository.
//!
//! The guests are built from `tests/guests/*` by this crate's build script; see `tests/build.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::pipeline::{Recording, run_certificate_phase};
use tollgate::runtime::{
    HostCall, LoadError, PluginFault, PluginSpec, Runtime, RuntimeLimits, Snapshots, StartImage,
    WIT_VERSION, WasmKind, componentize, wasm_kind,
};
use tollgate::tls::{ClientVerify, TlsPolicy, client_identity, encode_chain, parse_certificates};
use tollgate::{HostFunction, Phase, PhaseSet};
use tollgate_tests::{
    TestPki, calls, client_addr, exchange, get, guests, load, load_spec, plaintext_connection,
    run_request_phases, runtime, spec, tls_connection, workspace_dir,
};

/// The contract's phase names, in canonical order (spec §1), written out rather than taken from
/// the code under test.
const PHASE_NAMES: [&str; 7] = [
    "certificate",
    "rewrite",
    "access",
    "balancer",
    "header_filter",
    "body_filter",
    "log",
];

/// Spec §2, the table of the four functions: WIT name, and "yes" per phase in canonical order.
const CLIENT_TLS_TABLE: [(&str, [bool; 7]); 4] = [
    (
        "client-tls.request-client-certificate",
        [true, false, false, false, false, false, false],
    ),
    (
        "client-tls.disable-session-reuse",
        [true, false, false, false, false, false, false],
    ),
    (
        "client-tls.get-full-client-certificate-chain",
        [false, true, true, true, true, true, true],
    ),
    (
        "client-tls.set-client-verify",
        [false, true, true, true, false, false, false],
    ),
];

fn phase_at(index: usize) -> Phase {
    Phase::ALL[index]
}

/// The wrong-phase message of spec §2, built from the spec's own table.
fn wrong_phase_message(phase: usize, allowed: &[bool; 7]) -> String {
    let only_in: Vec<&str> = (0..7)
        .filter(|&i| allowed[i])
        .map(|i| PHASE_NAMES[i])
        .collect();
    format!(
        "function cannot be called in {} phase (only in: {})",
        PHASE_NAMES[phase],
        only_in.join(", ")
    )
}

/// The exact rejection message of spec §3 for a `set_client_verify` value.
fn invalid_verify_message(value: &str) -> String {
    format!(
        "unknown client verify value: {value} accepted values are: \"SUCCESS\", \"NONE\" or \"FAILED:<reason>\""
    )
}

/// The same steps in every phase.
fn in_every_phase(steps: Value) -> Value {
    let actions: serde_json::Map<String, Value> = PHASE_NAMES
        .iter()
        .map(|name| (name.to_string(), steps.clone()))
        .collect();
    json!({ "actions": actions })
}

fn results_of<'a>(calls: &[&'a HostCall], function: &str) -> Vec<&'a str> {
    calls
        .iter()
        .filter(|call| call.function == function)
        .map(|call| call.result.as_str())
        .collect()
}

fn assert_all_ok(results: &tollgate_tests::PhaseResults) {
    for (phase, result) in results {
        assert!(
            result.is_ok(),
            "{phase} failed: {:?}",
            result.as_ref().err()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Spec §2 / §6.1: the phase table, all 28 cells, through a real wasm plugin.

#[tokio::test]
async fn client_tls_phase_matrix_every_cell_of_spec_6_1_through_a_wasm_guest() {
    let plugin = load(
        "matrix",
        guests::SCRIPTED,
        in_every_phase(json!([{ "call": "client_tls_all" }])),
    )
    .await;
    let plugins = vec![plugin];

    let certificate = run_certificate_phase(
        &plugins,
        client_addr(),
        Some("localhost".into()),
        Recording::On,
    )
    .await
    .map_err(|(err, _)| err)
    .unwrap();
    let pki = TestPki::new();
    let connection = tls_connection(
        Some(pki.client_chain_pem()),
        ClientVerify::Failed("unable to get local issuer certificate".into()),
    );
    let mut exchange = exchange(&plugins, connection, get("/", &[]));
    assert_all_ok(&run_request_phases(&mut exchange, "body").await);
    let (_, trace, failures) = exchange.finish();
    assert!(failures.is_empty(), "{failures:?}");

    let mut all = calls(&certificate.trace);
    all.extend(calls(&trace));
    let mut cells = 0;
    for (phase, name) in PHASE_NAMES.iter().enumerate() {
        for (function, allowed) in &CLIENT_TLS_TABLE {
            let results: Vec<&str> = all
                .iter()
                .filter(|call| call.phase == phase_at(phase) && call.function == *function)
                .map(|call| call.result.as_str())
                .collect();
            assert_eq!(results.len(), 1, "{function} in {name}: {results:?}");
            let result = results[0];
            if allowed[phase] {
                assert!(
                    result == "ok" || result.starts_with("ok: "),
                    "{function} is allowed in {name} but returned {result:?}"
                );
            } else {
                assert_eq!(
                    result,
                    format!("error: {}", wrong_phase_message(phase, allowed)),
                    "{function} in {name}"
                );
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 28);
    // The certificate phase's allowed calls took effect.
    assert!(certificate.policy.request_client_certificate);
    assert!(certificate.policy.disable_session_reuse);
}

#[tokio::test]
async fn wrong_phase_reaches_the_guest_as_an_error_it_can_return() {
    let plugin = load(
        "propagating",
        guests::SCRIPTED,
        json!({ "actions": { "access": [
            { "call": "request_client_certificate", "propagate": true }
        ] } }),
    )
    .await;
    let mut exchange = exchange(&[plugin], plaintext_connection(), get("/", &[]));
    exchange.rewrite().await.unwrap();
    let err = exchange.access().await.unwrap_err();
    assert_eq!(
        err.fault,
        PluginFault::Failed(
            "function cannot be called in access phase (only in: certificate)".into()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Spec §3 / §6.8: set_client_verify values, and the last call wins.

#[tokio::test]
async fn set_client_verify_accepts_success_none_and_failed_prefix_and_rejects_others_exactly() {
    let values = [
        "SUCCESS", "NONE", "FAILED:", "success", "FAILED", " SUCCESS", "NONE ",
    ];
    let steps: Vec<Value> = values
        .iter()
        .map(|value| json!({ "call": "set_client_verify", "value": value }))
        .collect();
    let plugin = load(
        "verify-values",
        guests::SCRIPTED,
        json!({ "actions": { "access": steps } }),
    )
    .await;
    let connection = tls_connection(None, ClientVerify::None);
    let mut exchange = exchange(&[plugin], connection, get("/", &[]));
    assert_all_ok(&run_request_phases(&mut exchange, "").await);

    let trace = exchange.trace().to_vec();
    let results = results_of(&calls(&trace), "client-tls.set-client-verify");
    assert_eq!(results.len(), values.len());
    for (value, result) in values.iter().zip(&results) {
        let accepted = matches!(*value, "SUCCESS" | "NONE" | "FAILED:");
        if accepted {
            assert_eq!(*result, "ok", "{value:?}");
        } else {
            assert_eq!(
                *result,
                format!("error: {}", invalid_verify_message(value)),
                "{value:?}"
            );
        }
    }
    // `FAILED:` alone was the last accepted value; the rejected ones changed nothing.
    assert_eq!(
        exchange.client_verify(),
        Some(ClientVerify::Failed(String::new()))
    );
}

#[tokio::test]
async fn set_client_verify_rejection_reaches_the_guest_with_the_exact_message() {
    let plugin = load(
        "verify-propagate",
        guests::SCRIPTED,
        json!({ "actions": { "access": [
            { "call": "set_client_verify", "value": "success", "propagate": true }
        ] } }),
    )
    .await;
    let connection = tls_connection(None, ClientVerify::None);
    let mut exchange = exchange(&[plugin], connection, get("/", &[]));
    let err = exchange.access().await.unwrap_err();
    assert_eq!(
        err.fault,
        PluginFault::Failed(invalid_verify_message("success"))
    );
}

#[tokio::test]
async fn set_client_verify_last_call_wins_across_phases_and_connection_verify_is_untouched() {
    let handshake_verify = ClientVerify::Failed("unable to get local issuer certificate".into());
    let plugin = load(
        "verify-last",
        guests::SCRIPTED,
        json!({ "actions": {
            "rewrite": [{ "call": "set_client_verify", "value": "SUCCESS" }],
            "access": [{ "call": "set_client_verify", "value": "FAILED:revoked by policy" }],
            "balancer": [
                { "call": "set_client_verify", "value": "NONE" },
                { "call": "set_client_verify", "value": "SUCCESS" }
            ]
        } }),
    )
    .await;
    let connection = tls_connection(None, handshake_verify.clone());
    let mut exchange = exchange(&[plugin], connection, get("/", &[]));

    assert_eq!(exchange.client_verify(), Some(handshake_verify.clone()));
    exchange.rewrite().await.unwrap();
    assert_eq!(exchange.client_verify(), Some(ClientVerify::Success));
    exchange.access().await.unwrap();
    assert_eq!(
        exchange.client_verify(),
        Some(ClientVerify::Failed("revoked by policy".into()))
    );
    assert_all_ok(&run_request_phases(&mut exchange, "").await);
    assert_eq!(exchange.client_verify(), Some(ClientVerify::Success));
    let tls = exchange.state().connection.tls.clone().unwrap();
    assert_eq!(tls.client_verify, handshake_verify);
}

// ---------------------------------------------------------------------------------------------
// Spec §3 / §6.2–6.4 / §6.7: the chain a guest gets.

#[tokio::test]
async fn client_bundle_comes_back_from_the_guest_byte_for_byte() {
    let pki = TestPki::new();
    let bundle = pki.client_chain_pem();
    let presented = parse_certificates(&bundle).unwrap();
    assert_eq!(presented.len(), 2);
    let policy = TlsPolicy {
        request_client_certificate: true,
        ..TlsPolicy::default()
    };
    // Spec §6.3: requested, leaf + intermediate sent, no trust anchors.
    let (chain, verify) = client_identity(&policy, Some(presented.as_slice()), None);
    assert_eq!(
        verify,
        ClientVerify::Failed("unable to get local issuer certificate".into())
    );
    let chain_pem = encode_chain(&chain.unwrap());
    assert_eq!(chain_pem, bundle);

    let plugin = load(
        "chain",
        guests::SCRIPTED,
        json!({ "actions": { "access": [{
            "call": "get_full_client_certificate_chain",
            "to_header": "x-client-chain",
            "to_context": "client-chain"
        }] } }),
    )
    .await;
    let mut exchange = exchange(
        &[plugin],
        tls_connection(Some(chain_pem), verify),
        get("/", &[]),
    );
    assert_all_ok(&run_request_phases(&mut exchange, "").await);
    let (state, _, _) = exchange.finish();

    assert_eq!(state.context.get("client-chain"), Some(&bundle));
    let header = state.request.headers["x-client-chain"].to_str().unwrap();
    let decoded = percent_encoding::percent_decode_str(header)
        .decode_utf8()
        .unwrap();
    assert_eq!(decoded, bundle);
}

#[test]
fn test_pki_client_bundle_is_in_the_contract_chain_format() {
    let pki = TestPki::new();
    let (_dir, files) = pki.write_temp().unwrap();
    let bundle = std::fs::read_to_string(&files.client_chain).unwrap();
    assert!(bundle.ends_with("-----END CERTIFICATE-----\n"));
    assert!(!bundle.contains('\r') && !bundle.contains("\n\n"));
    assert_eq!(bundle.matches("-----BEGIN CERTIFICATE-----\n").count(), 2);
    for block in bundle.split_terminator("-----END CERTIFICATE-----\n") {
        let body: Vec<&str> = block.lines().skip(1).collect();
        let (last, full) = body.split_last().unwrap();
        assert!(full.iter().all(|line| line.len() == 64), "{block}");
        assert!(!last.is_empty() && last.len() <= 64, "{block}");
    }
}

#[tokio::test]
async fn chain_is_none_when_not_requested_and_not_tls_on_plaintext() {
    let pki = TestPki::new();
    let presented = pki.client_chain_der();
    // Spec §6.2: not requested, the client offers one anyway.
    let (chain, verify) = client_identity(&TlsPolicy::default(), Some(presented.as_slice()), None);
    assert_eq!((chain.as_ref(), &verify), (None, &ClientVerify::None));

    let plugin = load(
        "chain-none",
        guests::SCRIPTED,
        json!({ "actions": { "access": [{
            "call": "get_full_client_certificate_chain", "to_context": "chain"
        }] } }),
    )
    .await;
    let mut tls = exchange(
        std::slice::from_ref(&plugin),
        tls_connection(None, verify),
        get("/", &[]),
    );
    tls.access().await.unwrap();
    let results = results_of(
        &calls(tls.trace()),
        "client-tls.get-full-client-certificate-chain",
    );
    assert_eq!(results, ["ok: None"]);
    assert!(!tls.state().context.contains_key("chain"));

    // Spec §6.7: plaintext.
    let mut plain = exchange(&[plugin], plaintext_connection(), get("/", &[]));
    plain.access().await.unwrap();
    let results = results_of(
        &calls(plain.trace()),
        "client-tls.get-full-client-certificate-chain",
    );
    assert_eq!(results, ["error: connection is not TLS"]);
    assert_eq!(plain.client_verify(), None);
}

#[tokio::test]
async fn ca_certs_from_the_guest_become_trust_anchors_and_the_chain_verifies() {
    // Spec §6.4: requested with ca_certs = [intermediate, root] → SUCCESS.
    let pki = TestPki::new();
    let plugin = load(
        "ca-certs",
        guests::SCRIPTED,
        json!({ "actions": { "certificate": [{
            "call": "request_client_certificate", "ca_certs": pki.ca_bundle_pem()
        }] } }),
    )
    .await;
    let outcome = run_certificate_phase(&[plugin], client_addr(), None, Recording::On)
        .await
        .map_err(|(err, _)| err)
        .unwrap();
    let anchors = outcome.policy.ca_certs.clone().expect("ca_certs recorded");
    assert_eq!(anchors.certificates().len(), 2);
    let (chain, verify) = client_identity(
        &outcome.policy,
        Some(pki.client_chain_der().as_slice()),
        None,
    );
    assert_eq!(verify, ClientVerify::Success);
    assert_eq!(encode_chain(&chain.unwrap()), pki.client_chain_pem());

    for (leaf, reason) in [
        (&pki.expired_leaf, "certificate has expired"),
        (&pki.self_signed_leaf, "self-signed certificate"),
    ] {
        let (_, verify) = client_identity(&outcome.policy, Some(&[leaf.der().clone()][..]), None);
        assert_eq!(verify, ClientVerify::Failed(reason.into()));
    }
}

// ---------------------------------------------------------------------------------------------
// The sandbox: a misbehaving guest fails its own call, and nothing else.

const TIME_LIMIT: Duration = Duration::from_millis(50);
const MEMORY_LIMIT: usize = 16 << 20;
/// Touching 16 MiB is long-running work, which the runtime's slow lane paces: time enough for
/// the growing guest to reach its memory cap, which is what its test is about.
const GROWTH_TIME_LIMIT: Duration = Duration::from_secs(10);
const TRIGGER: (&str, &str) = ("x-misbehave", "1");

fn misbehave(name: &str, mode: &str, fail_open: bool) -> PluginSpec {
    let mut spec = spec(
        name,
        guests::MISBEHAVE,
        json!({ "phase": "access", "mode": mode, "when_header": TRIGGER.0 }),
    );
    spec.time_limit = if mode == "grow" {
        GROWTH_TIME_LIMIT
    } else {
        TIME_LIMIT
    };
    spec.memory_limit = MEMORY_LIMIT;
    spec.fail_open = fail_open;
    spec
}

/// Runs `mode` through the checks every misbehaviour must pass, and returns its fault.
async fn misbehaviour_is_contained(mode: &str) -> PluginFault {
    let name = format!("misbehave-{mode}");
    let bad = load_spec(misbehave(&name, mode, false)).await;

    // The failing call names the plugin and the phase.
    let mut first = exchange(
        std::slice::from_ref(&bad),
        plaintext_connection(),
        get("/", &[TRIGGER]),
    );
    first.rewrite().await.unwrap();
    let err = first.access().await.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::Access));
    let message = err.to_string();
    assert!(
        message.contains(&format!("plugin {name}")) && message.contains("access phase"),
        "{message}"
    );
    // The same request's next phase gets a fresh instance, which works.
    let proposed = tollgate::config::Target::parse("10.0.0.1:80").unwrap();
    let target = first
        .balancer(vec![proposed.clone()].into(), proposed.clone(), 1)
        .await
        .unwrap();
    assert_eq!(target, proposed);

    // The next request on the same plugin works.
    let mut next = exchange(
        std::slice::from_ref(&bad),
        plaintext_connection(),
        get("/", &[]),
    );
    assert_all_ok(&run_request_phases(&mut next, "").await);

    // A fail-open copy in a chain: the other plugin is unaffected.
    let bad_open = load_spec(misbehave(&format!("{name}-open"), mode, true)).await;
    let good = load(
        &format!("neighbour-of-{mode}"),
        guests::SCRIPTED,
        json!({ "actions": { "access": [
            { "call": "set_request_header", "name": "x-neighbour", "value": "ran" }
        ] } }),
    )
    .await;
    let mut chain = exchange(
        &[bad_open, good],
        plaintext_connection(),
        get("/", &[TRIGGER]),
    );
    assert_all_ok(&run_request_phases(&mut chain, "").await);
    assert_eq!(chain.failures().len(), 1, "{:?}", chain.failures());
    assert_eq!(chain.failures()[0].fault, err.fault);
    assert_eq!(chain.state().request.headers["x-neighbour"], "ran");

    err.fault
}

#[tokio::test]
async fn infinite_loop_is_stopped_by_the_time_limit_and_named_a_timeout() {
    let fault = misbehaviour_is_contained("loop").await;
    assert_eq!(fault, PluginFault::Timeout(TIME_LIMIT));
    assert_eq!(fault.to_string(), "exceeded its time limit of 50ms");
}

/// A loop is long-running by the CPU it uses, so the slow lane paces it: over its whole time
/// limit it gets a few epoch ticks of CPU, not the limit's worth. (A call the OS merely left
/// waiting uses no CPU meanwhile and is not paced: the host's `call_cpu` tests.)
#[tokio::test]
async fn a_looping_call_is_paced_by_the_slow_lane_and_uses_a_fraction_of_its_limit_in_cpu() {
    use rustix::time::{ClockId, clock_gettime};
    let thread_cpu = || {
        let now = clock_gettime(ClockId::ThreadCPUTime);
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    };
    let limit = Duration::from_millis(400);
    let mut spec = misbehave("paced-loop", "loop", false);
    spec.time_limit = limit;
    let looping = load_spec(spec).await;
    let mut call = exchange(&[looping], plaintext_connection(), get("/", &[TRIGGER]));
    call.rewrite().await.unwrap();
    // A current-thread runtime: the call runs on this thread, whose CPU clock is read.
    let (cpu, wall) = (thread_cpu(), std::time::Instant::now());
    let err = call.access().await.unwrap_err();
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    eprintln!("a looping call used {cpu:?} of CPU in {wall:?}");
    assert_eq!(err.fault, PluginFault::Timeout(limit));
    assert!(wall >= limit, "ended before its limit: {wall:?}");
    // Its first 10 ms or so at full speed, then a tick (1 ms) per tick + rest (40 ms): about
    // 20 ms in 400 ms.
    assert!(
        cpu < limit / 4,
        "a loop used {cpu:?} of CPU in {wall:?}: not paced by the slow lane"
    );
}

/// A healthy call that the machine kept waiting past its time limit (here the runtime's only
/// thread was blocked by another task at the call's first epoch tick, as a loaded machine keeps
/// a thread off its core) is not failed: its limit counts the CPU it used, and its wall time
/// only ends it at the limit plus `WAIT_GRACE` (500 ms).
#[tokio::test]
async fn a_call_kept_waiting_past_its_time_limit_by_the_machine_still_succeeds() {
    let mut spec = spec(
        "kept-waiting",
        guests::MISBEHAVE,
        // A few milliseconds of CPU: it meets epoch ticks, far below the slow lane's 10 ms.
        json!({ "phase": "access", "mode": "work", "iterations": 4_000_000 }),
    );
    spec.time_limit = TIME_LIMIT;
    let working = load_spec(spec).await;
    let mut call = exchange(&[working], plaintext_connection(), get("/", &[]));
    call.rewrite().await.unwrap();
    let blocked = Duration::from_millis(300);
    let blocker = tokio::spawn(async move { std::thread::sleep(blocked) });
    let started = std::time::Instant::now();
    let outcome = call.access().await;
    let took = started.elapsed();
    blocker.await.unwrap();
    eprintln!("the call took {took:?} in wall time");
    assert!(
        took >= blocked,
        "the call ended before its first tick ({took:?}), so nothing kept it waiting: give it \
         more iterations"
    );
    assert!(
        outcome.is_ok(),
        "a call kept waiting {took:?} (time limit {TIME_LIMIT:?}) failed: {outcome:?}"
    );
}

/// After calls of a phase time out in a row, its calls start in the slow lane instead of running
/// first; a call that then ends in time (the plugin works again for this request) still gets its
/// turn and succeeds, and the plugin's next call runs first again.
#[tokio::test]
async fn a_phase_that_keeps_timing_out_starts_its_calls_in_the_lane_until_one_ends_in_time() {
    let looping = load_spec(misbehave("lane-first", "loop", false)).await;
    for _ in 0..tollgate::runtime::STRAIGHT_TO_LANE_AFTER {
        let mut call = exchange(
            std::slice::from_ref(&looping),
            plaintext_connection(),
            get("/", &[TRIGGER]),
        );
        call.rewrite().await.unwrap();
        assert_eq!(
            call.access().await.unwrap_err().fault,
            PluginFault::Timeout(TIME_LIMIT)
        );
    }
    for _ in 0..2 {
        let mut well = exchange(
            std::slice::from_ref(&looping),
            plaintext_connection(),
            get("/", &[]),
        );
        assert_all_ok(&run_request_phases(&mut well, "").await);
    }
}

#[tokio::test]
async fn endless_memory_growth_is_stopped_by_the_memory_limit() {
    let fault = misbehaviour_is_contained("grow").await;
    assert_eq!(fault, PluginFault::MemoryLimit(MEMORY_LIMIT));
}

#[tokio::test]
async fn guest_panic_is_a_trap_that_fails_only_its_call() {
    let fault = misbehaviour_is_contained("trap").await;
    assert!(matches!(fault, PluginFault::Trap(_)), "{fault:?}");
}

// ---------------------------------------------------------------------------------------------
// Loading: errors name the file and say what is wrong; core modules are componentized.

async fn load_error(path: &Path, config: Value) -> LoadError {
    let spec = PluginSpec::new("broken", path).with_config(config);
    runtime().load(spec).await.unwrap_err()
}

#[tokio::test]
async fn load_error_missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.wasm");
    let err = load_error(&path, json!({})).await;
    assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("cannot read file"),
        "{message}"
    );
}

#[tokio::test]
async fn load_error_text_file_is_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.wasm");
    std::fs::write(&path, "#!/bin/sh\necho not a plugin\n").unwrap();
    let err = load_error(&path, json!({})).await;
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "plugin {}: not a WebAssembly module or component",
            path.display()
        )
    );
}

#[tokio::test]
async fn load_error_core_module_without_component_type_says_how_to_build_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.wasm");
    // The smallest valid core module: magic and version, no sections, so no component-type
    // section (no wit-bindgen metadata) and no handler export.
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let err = load_error(&path, json!({})).await;
    let message = err.to_string();
    // It componentizes (there is nothing to adapt) into a component that exports nothing.
    assert!(matches!(err, LoadError::MissingExport { .. }), "{err:?}");
    assert_eq!(
        message,
        format!(
            "plugin {}: missing export tollgate:plugin/handler@0.3.0 \
             (is the plugin's impl marked #[tollgate_sdk::plugin]?)",
            path.display()
        )
    );
}

/// The scripted guest as a component whose `tollgate:plugin` imports and exports all say
/// `@<version>`: a plugin built against another version of the WIT package. The version strings
/// have the same length, so swapping them keeps the binary well-formed.
fn component_with_wit_version(version: &str) -> Vec<u8> {
    let module = std::fs::read(guests::SCRIPTED).unwrap();
    let mut component = componentize(&module, Path::new(guests::SCRIPTED)).unwrap();
    let interfaces = [
        "types",
        "client-tls",
        "connection",
        "request",
        "response",
        "balancer",
        "context",
        "log",
        "handler",
    ];
    let mut replaced = 0;
    for interface in interfaces {
        let from = format!("tollgate:plugin/{interface}@{WIT_VERSION}");
        let to = format!("tollgate:plugin/{interface}@{version}");
        assert_eq!(from.len(), to.len());
        let mut at = 0;
        while let Some(offset) = find(&component[at..], from.as_bytes()) {
            let start = at + offset;
            component[start..start + to.len()].copy_from_slice(to.as_bytes());
            at = start + to.len();
            replaced += 1;
        }
    }
    assert!(replaced > 0, "no tollgate:plugin names found");
    component
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[tokio::test]
async fn load_error_component_built_against_another_wit_version_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old-sdk.wasm");
    // Neither this version nor an older one this gateway still loads (0.1.0).
    let component = component_with_wit_version("0.9.0");
    assert_eq!(wasm_kind(&component), Some(WasmKind::Component));
    std::fs::write(&path, component).unwrap();
    let err = load_error(&path, json!({})).await;
    assert!(matches!(err, LoadError::WitVersion { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string())
            && message.contains("tollgate:plugin@0.9.0")
            && message.contains(&format!("tollgate:plugin@{WIT_VERSION}")),
        "{message}"
    );
}

#[tokio::test]
async fn load_error_rejected_configuration_shows_the_guests_message() {
    let err = load_error(
        Path::new(guests::SCRIPTED),
        json!({ "actions": { "access": [{ "call": "no_such_call" }] } }),
    )
    .await;
    let LoadError::Setup { name, source, .. } = &err else {
        panic!("expected a setup error, got {err:?}");
    };
    assert_eq!(name, "broken");
    let PluginFault::ConfigRejected(reason) = &source.fault else {
        panic!("expected a rejected configuration, got {source:?}");
    };
    assert!(reason.starts_with("invalid scripted config: "), "{reason}");
    assert!(reason.contains("no_such_call"), "{reason}");
    let message = err.to_string();
    assert!(
        message.contains(guests::SCRIPTED)
            && message.contains("rejected its configuration: invalid scripted config"),
        "{message}"
    );
}

#[tokio::test]
async fn core_module_from_cargo_is_componentized_and_one_file_loads_with_two_configs() {
    let module = std::fs::read(guests::SCRIPTED).unwrap();
    assert_eq!(wasm_kind(&module), Some(WasmKind::CoreModule));

    let say = |who: &str| {
        json!({ "actions": { "access": [
            { "call": "set_request_header", "name": "x-who", "value": who }
        ] } })
    };
    let first = load("first", guests::SCRIPTED, say("first")).await;
    let second = load("second", guests::SCRIPTED, say("second")).await;
    assert_eq!(first.phases(), PhaseSet::ALL);
    assert_eq!(first.path(), second.path());

    for (plugins, expected) in [
        (vec![first.clone()], "first"),
        (vec![second.clone()], "second"),
        (vec![first, second], "second"),
    ] {
        let mut exchange = exchange(&plugins, plaintext_connection(), get("/", &[]));
        exchange.access().await.unwrap();
        assert_eq!(exchange.state().request.headers["x-who"], expected);
    }
}

#[tokio::test]
async fn guest_declared_phases_decide_where_it_is_instantiated() {
    let plugin = load_spec(misbehave("declared", "ok", false)).await;
    assert_eq!(plugin.phases(), PhaseSet::REQUEST);
    assert!(!plugin.handles(Phase::Certificate));
    let outcome = run_certificate_phase(&[plugin], client_addr(), None, Recording::On)
        .await
        .map_err(|(err, _)| err)
        .unwrap();
    assert!(outcome.trace.is_empty(), "{:?}", outcome.trace);
}

// ---------------------------------------------------------------------------------------------
// The WIT package documents the same phase table the host enforces.

/// `interface.function` → the phases on its `Phases:` doc line, for every function the `plugin`
/// world imports.
fn wit_documented_phases() -> BTreeMap<String, Vec<String>> {
    let path = workspace_dir().join("wit/plugin.wit");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str(&path, &text).unwrap();
    let world = resolve.select_world(&[package], Some("plugin")).unwrap();
    let mut documented = BTreeMap::new();
    for item in resolve.worlds[world].imports.values() {
        let wit_parser::WorldItem::Interface { id, .. } = item else {
            continue;
        };
        let interface = &resolve.interfaces[*id];
        let interface_name = interface.name.clone().unwrap();
        for (function_name, function) in &interface.functions {
            let docs = function.docs.contents.clone().unwrap_or_default();
            let phases_line = docs
                .lines()
                .find_map(|line| line.trim().strip_prefix("Phases:"))
                .unwrap_or_else(|| panic!("{interface_name}.{function_name} has no Phases: line"));
            let phases = phases_line
                .split(',')
                .map(|phase| phase.trim().to_string())
                .collect();
            documented.insert(format!("{interface_name}.{function_name}"), phases);
        }
    }
    documented
}

#[test]
fn wit_phase_docs_agree_with_the_phase_table() {
    let documented = wit_documented_phases();
    for function in HostFunction::ALL {
        let name = function.wit_name();
        let phases = documented
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not a function of the WIT world"));
        let enforced: Vec<String> = function
            .allowed_phases()
            .iter()
            .map(|phase| phase.name().to_string())
            .collect();
        assert_eq!(phases, &enforced, "{name}: WIT docs vs the phase table");
    }
}

#[test]
fn every_wit_import_function_has_a_host_function() {
    let documented: BTreeSet<String> = wit_documented_phases().into_keys().collect();
    let known: BTreeSet<String> = HostFunction::ALL
        .iter()
        .map(|function| function.wit_name().to_string())
        .collect();
    assert_eq!(documented, known);
}

// ---------------------------------------------------------------------------------------------
// `tollgate test` on a plugin crate that is not in this repository. Slowest test: it builds a
// fresh crate for wasm32-wasip1 (its own target directory) and runs the release binary, which the
// test command must have built first: `cargo build --release -p tollgate`.

const OUTSIDE_PLUGIN: &str = r#"
use tollgate_sdk::{client_tls, request, PhaseResult, Plugin};

/// Asks for a client certificate and forwards how many certificates the client sent.
struct CountCerts;

#[tollgate_sdk::plugin]
impl Plugin for CountCerts {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(CountCerts)
    }

    fn certificate(&mut self) -> PhaseResult {
        client_tls::request_client_certificate(None)?;
        Ok(())
    }

    fn access(&mut self) -> PhaseResult {
        let count = client_tls::get_full_client_certificate_chain()?
            .map_or(0, |pem| pem.matches("-----BEGIN CERTIFICATE-----").count());
        request::set_header("x-client-certs", &count.to_string())?;
        Ok(())
    }
}
"#;

const OUTSIDE_SCENARIO: &str = r#"
[connection]
tls = true
sni = "localhost"
client_chain = "client-chain.pem"

[connection.expect]
client_certificate_requested = true
client_chain = true
client_verify = "FAILED:unable to get local issuer certificate"
no_plugin_errors = true

[[requests]]
path = "/hello"

[requests.expect]
status = 200
upstream_headers = { "x-client-certs" = "2" }
calls = ["access: get_full_client_certificate_chain -> ok"]
no_plugin_errors = true
"#;

/// The release `tollgate` binary, brought up to date first. Cargo releases its lock on
/// `target/release` once the test binaries are built, so this nested build does not wait on the
/// `cargo test` that runs it, and it is a no-op when the binary is already current.
fn tollgate_binary() -> PathBuf {
    let status = user_cargo()
        .args(["build", "--release", "-p", "tollgate", "--manifest-path"])
        .arg(workspace_dir().join("Cargo.toml"))
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --release -p tollgate failed");
    tollgate_tests::binary::tollgate_binary()
}

/// A cargo command that builds like a user's terminal would, not like this test's parent cargo.
fn user_cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for key in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(key);
    }
    command
}

#[test]
fn tollgate_test_runs_a_plugin_crate_from_outside_the_repository() {
    let binary = tollgate_binary();
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("count-certs");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let sdk = workspace_dir().join("guest-sdk").canonicalize().unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"count-certs\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\ntollgate-sdk = {{ path = {:?} }}\n\n\
             [profile.release]\nopt-level = \"s\"\nstrip = true\n\n[workspace]\n",
            sdk.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(krate.join("src/lib.rs"), OUTSIDE_PLUGIN).unwrap();
    // Reuse the repository's lock file so the fresh crate resolves to the versions already
    // fetched (no network needed).
    std::fs::copy(workspace_dir().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    let target_dir = workspace_dir().join("target/outside-plugin");
    let status = user_cargo()
        .current_dir(&krate)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--offline",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap();
    assert!(status.success(), "building the outside plugin failed");
    let wasm = target_dir.join("wasm32-wasip1/release/count_certs.wasm");
    assert!(wasm.is_file(), "{} missing", wasm.display());

    let pki = TestPki::new();
    let files = pki.write(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&files.client_chain).unwrap(),
        pki.client_chain_pem()
    );
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(&scenario, OUTSIDE_SCENARIO).unwrap();

    let output = Command::new(&binary)
        .arg("test")
        .arg(&wasm)
        .arg(&scenario)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tollgate test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // A failing expectation makes it exit 1.
    let failing = dir.path().join("failing.toml");
    std::fs::write(
        &failing,
        OUTSIDE_SCENARIO.replace("\"x-client-certs\" = \"2\"", "\"x-client-certs\" = \"3\""),
    )
    .unwrap();
    let output = Command::new(&binary)
        .arg("test")
        .arg(&wasm)
        .arg(&failing)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// Configured snapshots

/// A scripted plugin that stamps `x-config: <tag>` on the request in access.
fn tagger(tag: &str) -> Value {
    json!({ "actions": { "access": [
        { "call": "set_request_header", "name": "x-config", "value": tag }
    ] } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_with_two_configurations_gives_two_configured_snapshots() {
    let first = load("tag-a", guests::SCRIPTED, tagger("a")).await;
    let second = load("tag-b", guests::SCRIPTED, tagger("b")).await;
    for (plugin, tag) in [(&first, "a"), (&second, "b")] {
        assert_eq!(plugin.start_image(), &StartImage::Configured, "{tag}");
        // Several requests: each fresh instance starts from its own configuration's image.
        for _ in 0..3 {
            let mut exchange = exchange(
                std::slice::from_ref(plugin),
                plaintext_connection(),
                get("/", &[]),
            );
            assert_all_ok(&run_request_phases(&mut exchange, "").await);
            assert_eq!(exchange.state().request.headers["x-config"], tag);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_leaves_a_wasi_stream_open_in_configure_configures_every_instance() {
    let config = json!({ "mode": "scribble", "stdout_at_configure": true });
    let plugin = load("prints-at-configure", guests::MISBEHAVE, config).await;
    let StartImage::Unconfigured(reason) = plugin.start_image() else {
        panic!("a live stdout stream cannot be snapshotted");
    };
    assert!(reason.contains("WASI resources"), "{reason}");
    // It still works: configure runs in each instance.
    for _ in 0..2 {
        let mut exchange = exchange(
            std::slice::from_ref(&plugin),
            plaintext_connection(),
            get("/", &[]),
        );
        exchange.access().await.expect("access");
        let exit = exchange.early_response().expect("scribble answers");
        assert_eq!((exit.status, &exit.body[..]), (200, &b"initial image"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_snapshots_off_every_instance_runs_configure_and_behaves_the_same() {
    let runtime = Runtime::with_options(RuntimeLimits::default(), Snapshots::Off).unwrap();
    let plugin = runtime
        .load(spec("tag-off", guests::SCRIPTED, tagger("off")))
        .await
        .unwrap();
    assert!(matches!(plugin.start_image(), StartImage::Unconfigured(_)));
    let mut exchange = exchange(
        std::slice::from_ref(&plugin),
        plaintext_connection(),
        get("/", &[]),
    );
    assert_all_ok(&run_request_phases(&mut exchange, "").await);
    assert_eq!(exchange.state().request.headers["x-config"], "off");
}
