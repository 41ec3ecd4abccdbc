//! Bad input, answered: plugin files of every broken shape, several load problems in one config,
//! relative file names, and the access log across logrotate. Each promise is tested through the
//! `tollgate` binary as a user runs it: from the config's directory, with bare file names.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;
use tollgate::runtime::{LoadError, PluginSpec};
use tollgate_tests::TestPki;
use tollgate_tests::binary::{Tollgate, tollgate_binary};
use tollgate_tests::{guests, runtime};
use wasm_encoder::{
    CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    Instruction, Module, TypeSection,
};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};

/// What a finished `tollgate` command said.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Fails unless the process exited 1 or 2 (refused the input) without panicking.
    fn assert_refused(&self, what: &str) {
        assert!(
            matches!(self.code, Some(1 | 2)),
            "{what}: expected exit 1 or 2, got {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        // A plugin's own panic message reaches the log as its stderr, tagged with its name.
        assert!(
            !self
                .stderr
                .lines()
                .any(|line| line.contains("panicked") && !line.contains("plugin=")),
            "{what}: panicked:\n{}",
            self.stderr
        );
    }
}

/// Runs `tollgate <args>` in `dir` as a user would; `run` is stopped after `limit` if it serves.
fn tollgate(dir: &Path, args: &[&str], limit: Duration) -> Outcome {
    let mut child = Command::new(tollgate_binary())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate starts");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("wait").is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("output");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn check(dir: &Path) -> Outcome {
    tollgate(
        dir,
        &["check", "--config", "tollgate.toml"],
        Duration::from_secs(60),
    )
}

/// `tollgate run` on a config that must not start: it has 60 s to give up.
fn run_refused(dir: &Path) -> Outcome {
    let outcome = tollgate(
        dir,
        &["run", "--config", "tollgate.toml"],
        Duration::from_secs(60),
    );
    assert!(
        !outcome.stderr.contains("listening"),
        "run must bind nothing when anything fails:\n{}",
        outcome.stderr
    );
    outcome
}

/// A config with one HTTP listener on port 0 and the plugin `plugin.wasm`, named `edge-auth`;
/// the plugin's `path` is on line 9, its value at column 8.
const ONE_PLUGIN: &str = r#"[access_log]
target = "access.log"

[[listeners]]
address = "127.0.0.1:0"

[[plugins]]
name = "edge-auth"
path = "plugin.wasm"
"#;

const SCENARIO: &str = "[connection]\ntls = false\n\n[[requests]]\npath = \"/\"\n";

// ---- plugin fixtures ----

/// A core module exporting `exports` and importing `imports` (module, name), every function
/// `() -> ()`.
fn core_module(imports: &[(&str, &str)], exports: &[&str]) -> Vec<u8> {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    module.section(&types);
    if !imports.is_empty() {
        let mut section = ImportSection::new();
        for (from, name) in imports {
            section.import(from, name, EntityType::Function(0));
        }
        module.section(&section);
    }
    let mut functions = FunctionSection::new();
    let mut export_section = ExportSection::new();
    let mut code = CodeSection::new();
    for (i, name) in exports.iter().enumerate() {
        functions.function(0);
        let index = u32::try_from(imports.len() + i).expect("few functions");
        export_section.export(name, ExportKind::Func, index);
        let mut body = Function::new([]);
        body.instruction(&Instruction::End);
        code.function(&body);
    }
    module.section(&functions);
    module.section(&export_section);
    module.section(&code);
    module.finish()
}

/// A component of the world `world` in the WIT `package`, whose functions take and return
/// nothing, from the core module `module` (which must match the world's mangled names).
fn component(wit: &str, world: &str, mut module: Vec<u8>) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("fixture.wit", wit)
        .expect("fixture WIT parses");
    let world = resolve
        .select_world(&[package], Some(world))
        .expect("the world exists");
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("metadata embeds");
    ComponentEncoder::default()
        .module(&module)
        .expect("module accepted")
        .validate(true)
        .encode()
        .expect("component encodes")
}

/// A real component of another world: it exports a `handler` from the package `acme:plugin`.
fn foreign_world_component() -> Vec<u8> {
    let wit = "package acme:plugin@0.1.0;\n\
               interface handler { handle: func(); }\n\
               world gateway-extension { export handler; }\n";
    let module = core_module(&[], &["acme:plugin/handler@0.1.0#handle"]);
    component(wit, "gateway-extension", module)
}

/// A component built against `tollgate:plugin@9.0.0`, a WIT version from the future.
fn future_wit_component() -> Vec<u8> {
    let wit = "package tollgate:plugin@9.0.0;\n\
               interface log { flush: func(); }\n\
               world plugin { import log; }\n";
    let module = core_module(&[("tollgate:plugin/log@9.0.0", "flush")], &[]);
    component(wit, "plugin", module)
}

/// Deterministic noise (xorshift), so a failure names bytes that can be reproduced.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

fn guest_bytes() -> Vec<u8> {
    std::fs::read(guests::SCRIPTED).expect("the scripted guest is built")
}

/// Every broken shape of plugin file: (label, bytes, what the refusal must say).
fn broken_plugins() -> Vec<(String, Vec<u8>, &'static str)> {
    let guest = guest_bytes();
    let mut shapes = vec![
        ("empty".to_owned(), Vec::new(), "the file is empty"),
        (
            "random bytes".to_owned(),
            noise(4096, 7),
            "not a WebAssembly module or component",
        ),
        (
            "wasm header then random bytes".to_owned(),
            [b"\0asm\x01\0\0\0".as_slice(), &noise(4096, 11)].concat(),
            "invalid WebAssembly module",
        ),
        (
            "core module without the plugin's exports".to_owned(),
            core_module(&[], &["run"]),
            "missing export tollgate:plugin/handler@0.3.0",
        ),
        (
            "component of another world".to_owned(),
            foreign_world_component(),
            "missing export tollgate:plugin/handler@0.3.0",
        ),
        (
            "component of a future WIT version".to_owned(),
            future_wit_component(),
            "built against tollgate:plugin@9.0.0",
        ),
    ];
    for percent in [10, 25, 50, 75] {
        let cut = guest.len() * percent / 100;
        shapes.push((
            format!("plugin truncated at {percent}%"),
            guest[..cut].to_vec(),
            "invalid WebAssembly module (truncated or corrupted?)",
        ));
    }
    shapes
}

// ---- relative paths ----

#[test]
fn check_from_the_config_directory_resolves_bare_file_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    TestPki::new().write(dir.path()).expect("pki written");
    std::fs::copy(guests::SCRIPTED, dir.path().join("plugin.wasm")).expect("plugin copied");
    let config = r#"[access_log]
target = "access.log"

[[listeners]]
address = "127.0.0.1:0"
client_ca = "root.pem"
[[listeners.certificates]]
cert = "server.pem"
key = "server.key"

[[plugins]]
path = "plugin.wasm"
"#;
    std::fs::write(dir.path().join("tollgate.toml"), config).expect("config written");
    let outcome = check(dir.path());
    assert_eq!(outcome.code, Some(0), "{outcome:?}");
    assert!(
        outcome.stdout.contains("tollgate.toml: ok"),
        "{}",
        outcome.stdout
    );
}

// ---- broken plugin files ----

#[test]
fn every_broken_plugin_file_is_refused_by_check_with_field_and_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tollgate.toml"), ONE_PLUGIN).expect("config written");
    let plugin = dir.path().join("plugin.wasm");
    for (label, bytes, reason) in broken_plugins() {
        std::fs::write(&plugin, &bytes).expect("plugin written");
        let outcome = check(dir.path());
        outcome.assert_refused(&label);
        assert_eq!(outcome.code, Some(1), "{label}: {outcome:?}");
        let line = outcome
            .stderr
            .lines()
            .find(|line| line.starts_with("tollgate.toml:9:8: plugins[0].path: "))
            .unwrap_or_else(|| panic!("{label}: no located problem:\n{}", outcome.stderr));
        assert!(
            line.contains(&plugin.display().to_string()),
            "{label}: {line}"
        );
        assert!(
            line.contains(reason),
            "{label}: expected {reason:?} in {line}"
        );
    }
}

#[test]
fn broken_plugin_files_make_run_refuse_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tollgate.toml"), ONE_PLUGIN).expect("config written");
    let plugin = dir.path().join("plugin.wasm");
    for (label, bytes, reason) in broken_plugins() {
        std::fs::write(&plugin, &bytes).expect("plugin written");
        let outcome = run_refused(dir.path());
        outcome.assert_refused(&label);
        assert!(
            outcome
                .stderr
                .contains("tollgate.toml:9:8: plugins[0].path: ")
                && outcome.stderr.contains(reason),
            "{label}: {}",
            outcome.stderr
        );
    }
}

#[test]
fn broken_plugin_files_are_refused_by_tollgate_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("scenario.toml"), SCENARIO).expect("scenario written");
    let plugin = dir.path().join("plugin.wasm");
    for (label, bytes, reason) in broken_plugins() {
        std::fs::write(&plugin, &bytes).expect("plugin written");
        let outcome = tollgate(
            dir.path(),
            &["test", "plugin.wasm", "scenario.toml"],
            Duration::from_secs(60),
        );
        outcome.assert_refused(&label);
        assert!(
            outcome.stderr.contains("plugin.wasm") && outcome.stderr.contains(reason),
            "{label}: {}",
            outcome.stderr
        );
    }
}

#[test]
fn a_plugin_misbehaving_in_configure_is_refused_at_load_naming_the_plugin_and_its_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(guests::MISBEHAVE, dir.path().join("misbehave.wasm")).expect("plugin copied");
    // (mode, time limit, where the problem is placed, what it says). Touching 16 MiB takes tens
    // of milliseconds of page faults on a VM: the memory hog gets time to reach its cap.
    let cases = [
        (
            "loop",
            "100ms",
            "9:14: plugins[0].time_limit",
            "exceeded its time limit of 100ms",
        ),
        // A sleep waits in the host, where no epoch tick reaches it: it ends after the 5 s grace.
        (
            "sleep",
            "100ms",
            "9:14: plugins[0].time_limit",
            "exceeded its time limit of 100ms",
        ),
        (
            "grow",
            "10s",
            "8:16: plugins[0].memory_limit",
            "exceeded its memory limit of 16777216 bytes",
        ),
        (
            "trap",
            "100ms",
            "7:10: plugins[0].config",
            "trapped: wasm trap",
        ),
    ];
    for (mode, time_limit, field, says) in cases {
        let config = format!(
            r#"[[listeners]]
address = "127.0.0.1:0"

[[plugins]]
name = "edge-auth"
path = "misbehave.wasm"
config = {{ phase = "configure", mode = "{mode}" }}
memory_limit = "16MiB"
time_limit = "{time_limit}"
"#
        );
        std::fs::write(dir.path().join("tollgate.toml"), config).expect("config written");
        for (command, outcome) in [
            ("check", check(dir.path())),
            ("run", run_refused(dir.path())),
        ] {
            outcome.assert_refused(&format!("{command} with {mode} in configure"));
            let prefix = format!("tollgate.toml:{field}: ");
            let line = outcome
                .stderr
                .lines()
                .find(|line| line.starts_with(&prefix))
                .unwrap_or_else(|| {
                    panic!("{command}, {mode}: no located problem:\n{}", outcome.stderr)
                });
            assert!(
                line.contains("plugin edge-auth failed in configure: ") && line.contains(says),
                "{command}, {mode}: expected {says:?} in {line}"
            );
        }
    }
}

/// The truncations that once panicked inside wit-component (exit 101), every 5% of the file:
/// each is refused with the file's name, or loads when the cut falls after the last code byte.
#[tokio::test]
async fn truncated_plugins_never_panic_the_loader() {
    let guest = guest_bytes();
    let dir = tempfile::tempdir().expect("temp dir");
    for percent in (0..100).step_by(5) {
        let path = dir.path().join(format!("cut-{percent}.wasm"));
        std::fs::write(&path, &guest[..guest.len() * percent / 100]).expect("plugin written");
        let loaded = runtime().load(PluginSpec::new("cut", &path)).await;
        let err = loaded.expect_err("a truncated plugin does not load");
        assert!(
            matches!(err, LoadError::Invalid { .. } | LoadError::Empty { .. }),
            "{percent}%: {err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}

// ---- several load problems at once ----

#[test]
fn every_load_problem_is_reported_with_line_and_field_in_one_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = TestPki::new().write(dir.path()).expect("pki written");
    let guest = guest_bytes();
    std::fs::write(dir.path().join("cut.wasm"), &guest[..guest.len() / 2]).expect("written");
    std::fs::copy(guests::SCRIPTED, dir.path().join("scripted.wasm")).expect("copied");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").expect("written");
    assert!(files.client_key.is_file());
    let config = r#"[access_log]
target = "access.log"

[[listeners]]
name = "https"
address = "127.0.0.1:0"
client_ca = "junk.pem"
[[listeners.certificates]]
cert = "junk.pem"
key = "server.key"
[[listeners.certificates]]
server_names = ["api.example.com"]
cert = "server.pem"
key = "client.key"

[[services]]
name = "upstream"
targets = ["127.0.0.1:9"]
protocol = "https"
ca = "junk.pem"

[[plugins]]
name = "cut"
path = "cut.wasm"

[[plugins]]
name = "picky"
path = "scripted.wasm"
config = { actions = { access = [{ call = "no-such-call" }] } }
"#;
    std::fs::write(dir.path().join("tollgate.toml"), config).expect("config written");
    let expected = [
        ("tollgate.toml:7:13: listeners[0].client_ca: ", "junk.pem"),
        (
            "tollgate.toml:9:8: listeners[0].certificates[0].cert: ",
            "junk.pem",
        ),
        ("tollgate.toml:20:6: services[0].ca: ", "junk.pem"),
        (
            "tollgate.toml:24:8: plugins[0].path: ",
            "invalid WebAssembly module",
        ),
        (
            "tollgate.toml:29:10: plugins[1].config: ",
            "rejected its configuration",
        ),
    ];
    for (command, outcome) in [
        ("check", check(dir.path())),
        ("run", run_refused(dir.path())),
    ] {
        outcome.assert_refused(command);
        assert_eq!(outcome.code, Some(1), "{command}: {outcome:?}");
        for (prefix, says) in expected {
            assert!(
                outcome
                    .stderr
                    .lines()
                    .any(|line| line.starts_with(prefix) && line.contains(says)),
                "{command}: no {prefix:?}…{says:?} in:\n{}",
                outcome.stderr
            );
        }
    }
    // With the first certificate fixed, the key that does not match the second is found too
    // (it needs every certificate of the listener read), next to the CA file still broken.
    let fixed = config.replace("cert = \"junk.pem\"", "cert = \"server.pem\"");
    std::fs::write(dir.path().join("tollgate.toml"), fixed).expect("config written");
    let outcome = check(dir.path());
    outcome.assert_refused("check");
    assert!(
        outcome
            .stderr
            .lines()
            .any(|line| line.starts_with("tollgate.toml:14:7: listeners[0].certificates[1].key: ")),
        "{}",
        outcome.stderr
    );
}

#[test]
fn run_reports_an_address_in_use_and_binds_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[[listeners]]\nname = \"free\"\naddress = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"taken\"\naddress = \"127.0.0.1:{port}\"\n"
    );
    std::fs::write(dir.path().join("tollgate.toml"), config).expect("config written");
    let outcome = run_refused(dir.path());
    outcome.assert_refused("run");
    assert!(
        outcome
            .stderr
            .lines()
            .any(|line| line
                .starts_with("tollgate.toml:7:11: listeners[1].address: cannot listen on")),
        "{}",
        outcome.stderr
    );
}

// ---- the access log across logrotate ----

/// Sends one plaintext request and reads the answer to the end.
fn request(addr: std::net::SocketAddr, path: &str) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout set");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 "), "no answer to {path}");
}

/// The complete lines of `path` (a line being written is not counted).
fn log_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigusr1_reopens_the_access_log_after_logrotate_moves_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = "[access_log]\ntarget = \"access.log\"\n\n\
                  [[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n";
    let mut gateway = Tollgate::run(dir.path(), config);
    let addr = gateway.addr("http");
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");

    request(addr, "/before");
    wait_for("the first line", || log_lines(&log).len() == 1);
    std::fs::rename(&log, &rotated).expect("rotated");
    // Until the signal, lines still go to the moved file (the descriptor it holds).
    request(addr, "/moved");
    wait_for("the second line", || log_lines(&rotated).len() == 2);

    gateway.signal("USR1");
    wait_for("the reopen", || {
        gateway
            .stderr()
            .iter()
            .any(|line| line.contains("access log reopened"))
    });
    request(addr, "/after");
    wait_for("a line in the fresh file", || log_lines(&log).len() == 1);

    let uri = |line: &String| -> String {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        entry["request"]["uri"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let old: Vec<String> = log_lines(&rotated).iter().map(uri).collect();
    let new: Vec<String> = log_lines(&log).iter().map(uri).collect();
    assert_eq!(old, ["/before", "/moved"]);
    assert_eq!(new, ["/after"]);

    // A second rotation works the same way, and the process is still healthy.
    std::fs::rename(&log, dir.path().join("access.log.2")).expect("rotated");
    gateway.signal("USR1");
    wait_for("the second reopen", || {
        gateway
            .stderr()
            .iter()
            .filter(|line| line.contains("access log reopened"))
            .count()
            == 2
    });
    request(addr, "/again");
    wait_for("a line in the second fresh file", || {
        log_lines(&log).len() == 1
    });
    gateway.signal("TERM");
    let status = gateway
        .wait(Duration::from_secs(30))
        .expect("exits on TERM");
    assert!(status.success(), "{status:?}");
}

// ---- property tests ----

/// One change to a plugin file.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(Index),
    Replace(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Replace(at, byte)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<Index>(), 1..256usize).prop_map(|(at, len)| Edit::Delete(at, len)),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let at = |index: &Index, len: usize| index.index(len + 1);
        match edit {
            Edit::Truncate(index) => bytes.truncate(at(index, bytes.len())),
            Edit::Replace(index, byte) => {
                let i = at(index, bytes.len());
                if i < bytes.len() {
                    bytes[i] = *byte;
                }
            }
            Edit::Insert(index, new) => {
                let i = at(index, bytes.len());
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Delete(index, len) => {
                let i = at(index, bytes.len());
                let end = (i + len).min(bytes.len());
                bytes.drain(i..end);
            }
        }
    }
    bytes
}

/// Loads `bytes` as a plugin through the whole loader (validate, componentize, compile, link,
/// configure): it loads or is refused with the file's name, and never panics.
fn load_never_panics(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mutant.wasm");
    std::fs::write(&path, bytes).expect("written");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let spec = PluginSpec::new("mutant", &path).with_config(json!({}));
    if let Err(err) = tokio.block_on(runtime().load(spec)) {
        let message = err.to_string();
        prop_assert!(message.contains(&path.display().to_string()), "{message}");
    }
    Ok(())
}

/// Cases per property, or `PROPTEST_CASES` for a longer hunt. Mutants mostly fail validation in
/// microseconds; the few that compile take about 50 ms.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(96)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_mutated_plugin_loads_or_is_refused_never_panics(
        edits in prop::collection::vec(edit(), 1..4)
    ) {
        load_never_panics(&mutate(guest_bytes(), &edits))?;
    }

    #[test]
    fn a_mutated_component_loads_or_is_refused_never_panics(
        edits in prop::collection::vec(edit(), 1..4)
    ) {
        load_never_panics(&mutate(future_wit_component(), &edits))?;
    }

    #[test]
    fn random_bytes_behind_a_wasm_header_are_refused(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        component in any::<bool>(),
    ) {
        let header: &[u8] = if component { b"\0asm\x0d\0\x01\0" } else { b"\0asm\x01\0\0\0" };
        load_never_panics(&[header, &body].concat())?;
    }
}
