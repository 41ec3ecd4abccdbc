//! Support for the example plugins' tests (`tests/tests/examples.rs`, `benches/plugins.rs`): where
//! each example's `.wasm` is (building the C and Python ones with their scripts when missing), its
//! scenario files and certificates, and running those scenarios through the harness library.
//!
//! Scenario layout, per example: `examples/<name>/scenarios/*.toml` run with the example alone
//! (exactly what `tollgate test <plugin.wasm> <scenario.toml>` does); the files in
//! `examples/<name>/scenarios/after-handshake-modifier/` run with `tls-handshake-modifier`
//! (`snis = ["*"]`) first in the chain, for plugins that read a certificate they do not request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use tollgate::runtime::LoadedPlugin;
use tollgate::testing::{Harness, Scenario, ScenarioReport};

use crate::pki::PkiFiles;
use crate::{guests, load, runtime, workspace_dir};

/// The scenarios of this subdirectory run after `tls-handshake-modifier`.
pub const AFTER_HANDSHAKE_MODIFIER: &str = "after-handshake-modifier";

/// The examples, by directory name.
pub const EXAMPLES: [&str; 5] = [
    "tls-handshake-modifier",
    "mtls-auth",
    "tls-metadata-headers",
    "c-min-chain",
    "py-client-cert-header",
];

/// `<workspace>/examples/<example>`.
pub fn example_dir(example: &str) -> PathBuf {
    workspace_dir().join("examples").join(example)
}

/// A file of `examples/<example>/scenarios/certs/`.
pub fn cert(example: &str, file: &str) -> PathBuf {
    example_dir(example).join("scenarios/certs").join(file)
}

/// The example's `.wasm`: the Rust ones from the build script, the C and Python ones from
/// `target/guests/` (built by `scripts/test`; built here with the example's script when missing).
pub fn plugin_path(example: &str) -> PathBuf {
    match example {
        "tls-handshake-modifier" => PathBuf::from(guests::TLS_HANDSHAKE_MODIFIER),
        "mtls-auth" => PathBuf::from(guests::MTLS_AUTH),
        "tls-metadata-headers" => PathBuf::from(guests::TLS_METADATA_HEADERS),
        "c-min-chain" => scripted_guest("c_min_chain.wasm", "scripts/build-c-plugin"),
        "py-client-cert-header" => {
            scripted_guest("py_client_cert_header.wasm", "scripts/build-py-plugin")
        }
        other => panic!("no example named {other}"),
    }
}

/// `<workspace>/target/guests/<file>`, built with `script` first when missing. One build at a
/// time per process.
fn scripted_guest(file: &str, script: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let path = workspace_dir().join("target/guests").join(file);
    let _guard = BUILD.lock().unwrap_or_else(PoisonError::into_inner);
    if !path.is_file() {
        let status = Command::new(workspace_dir().join(script))
            .arg(&path)
            .current_dir(workspace_dir())
            .status()
            .unwrap_or_else(|err| panic!("cannot run {script}: {err}"));
        assert!(
            status.success(),
            "{script} {} failed: {status}",
            path.display()
        );
    }
    path
}

pub use crate::binary::tollgate_binary;

/// The example's scenario files: `(file, after_handshake_modifier)`, sorted.
pub fn scenario_files(example: &str) -> Vec<(PathBuf, bool)> {
    let dir = example_dir(example).join("scenarios");
    let mut files = Vec::new();
    for (sub, chained) in [
        (dir.clone(), false),
        (dir.join(AFTER_HANDSHAKE_MODIFIER), true),
    ] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        found.sort();
        files.extend(found.into_iter().map(|p| (p, chained)));
    }
    files
}

/// A harness on the process's shared runtime.
pub fn harness() -> Harness {
    Harness::new(runtime().clone())
}

/// `tls-handshake-modifier` with `snis = ["*"]`, loaded once per process.
pub async fn handshake_modifier() -> Arc<LoadedPlugin> {
    static PLUGIN: tokio::sync::OnceCell<Arc<LoadedPlugin>> = tokio::sync::OnceCell::const_new();
    PLUGIN
        .get_or_init(|| {
            load(
                "tls-handshake-modifier",
                guests::TLS_HANDSHAKE_MODIFIER,
                serde_json::json!({ "snis": ["*"] }),
            )
        })
        .await
        .clone()
}

/// Runs one scenario file against the example (after `tls-handshake-modifier` when `chained`).
pub async fn run_scenario(example: &str, file: &Path, chained: bool) -> ScenarioReport {
    let scenario = Scenario::from_file(file).unwrap_or_else(|err| panic!("{err}"));
    let harness = harness();
    let plugin = harness
        .load(&plugin_path(example), &scenario)
        .await
        .unwrap_or_else(|err| panic!("{example} does not load for {}: {err}", file.display()));
    if chained {
        harness
            .run_plugins(&[handshake_modifier().await, plugin], &scenario)
            .await
    } else {
        harness.run_plugins(&[plugin], &scenario).await
    }
}

/// Runs every scenario of the example and panics with the full report of each one that failed;
/// returns how many ran.
pub async fn assert_scenarios_pass(example: &str) -> usize {
    let files = scenario_files(example);
    assert!(!files.is_empty(), "{example} has no scenario files");
    let mut failed = Vec::new();
    for (file, chained) in &files {
        let report = run_scenario(example, file, *chained).await;
        if !report.passed() {
            failed.push(format!("{report}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    files.len()
}

/// The gateway PKI's files with the client identity replaced: a client built from the result with
/// `Identity::Chain` presents `chain` (PEM, leaf first) signed with `key`.
pub fn with_client(pki: &PkiFiles, chain: PathBuf, key: PathBuf) -> PkiFiles {
    PkiFiles {
        client_chain: chain,
        client_key: key,
        ..pki.clone()
    }
}

/// The certificates of `examples/mtls-auth/scenarios/certs/` as a client presents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExampleClient {
    /// `alice-chain.pem` (alice, intermediate): email and DNS SANs, verifies to `ca-bundle.pem`.
    Alice,
    /// `alice.pem` alone (no intermediate).
    AliceLeafOnly,
    /// `bob-chain.pem`: verifies, no SAN, no consumer.
    Bob,
    /// `mallory.pem`: from another CA, with alice's email SAN.
    Mallory,
}

/// The chain and key files of `client`.
pub fn client_files(client: ExampleClient) -> (PathBuf, PathBuf) {
    let (chain, key) = match client {
        ExampleClient::Alice => ("alice-chain.pem", "alice.key"),
        ExampleClient::AliceLeafOnly => ("alice.pem", "alice.key"),
        ExampleClient::Bob => ("bob-chain.pem", "bob.key"),
        ExampleClient::Mallory => ("mallory.pem", "mallory.key"),
    };
    (cert("mtls-auth", chain), cert("mtls-auth", key))
}

/// A PEM file's text as a TOML multi-line basic string body (PEM has no `"` or `\`).
pub fn pem_for_toml(path: &Path) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert!(!text.contains('"') && !text.contains('\\'));
    text
}
