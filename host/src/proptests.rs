//! Property tests: mutated and truncated config and scenario files never panic the parsers,
//! and every problem they report points inside the text. The loader's counterpart, which needs
//! a real plugin, lives in the integration tests (`tests/tests/inputs.rs`).
//!
//! Bounded for CI: a fixed number of cases each (`PROPTEST_CASES` raises it for a longer local
//! run). Inputs that once failed are kept in `host/proptest-regressions/` and replayed first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::{Index, select};

use crate::config::Config;
use crate::testing::{Scenario, ScenarioError};

/// Cases per property; each parse takes microseconds, so this runs in well under a second.
const CASES: u32 = 1000;

/// [`CASES`], or `PROPTEST_CASES` for a longer hunt.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES)
}

/// Pieces of TOML syntax worth splicing in: they reach deeper than random bytes.
const FRAGMENTS: &[&str] = &[
    "[[listeners]]\n",
    "[[plugins]]\n",
    "[[listeners.certificates]]\n",
    "[access_log]\n",
    "[connection.expect]\n",
    "[[requests]]\n",
    "= ",
    "\"",
    "\"\"\"",
    "'''",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "\n",
    "#",
    "\\u0000",
    "\\",
    "0",
    "-1",
    "1e999",
    "nan",
    "9223372036854775807",
    "18446744073709551616",
    "\"0ms\"",
    "\"99999999999h\"",
    "\"1GiB\"",
    "\"\"",
    "\"/\"",
    "\"../..\"",
    "\"*.\"",
    "\"[::1]:0\"",
    "true",
    "1979-05-27T07:32:00Z",
    "é",
    "\u{1F600}",
];

/// One change to a file.
#[derive(Debug, Clone)]
enum Edit {
    /// Cut the file here.
    Truncate(Index),
    /// Replace one byte.
    Replace(Index, u8),
    /// Insert a piece of syntax.
    Insert(Index, &'static str),
    /// Remove up to this many bytes.
    Delete(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Replace(at, byte)),
        (any::<Index>(), select(FRAGMENTS)).prop_map(|(at, text)| Edit::Insert(at, text)),
        (any::<Index>(), 1..64usize).prop_map(|(at, len)| Edit::Delete(at, len)),
    ]
}

/// `base` with `edits` applied in order, as text (invalid UTF-8 replaced, as a reader would
/// refuse it before the parser sees it).
fn mutate(base: &str, edits: &[Edit]) -> String {
    let mut bytes = base.as_bytes().to_vec();
    for edit in edits {
        // One past the end is a valid place to insert or cut.
        let at = |index: &Index| index.index(bytes.len() + 1);
        match edit {
            Edit::Truncate(index) => bytes.truncate(at(index)),
            Edit::Replace(index, byte) => {
                let i = at(index);
                if i < bytes.len() {
                    bytes[i] = *byte;
                }
            }
            Edit::Insert(index, text) => {
                let i = at(index);
                bytes.splice(i..i, text.bytes());
            }
            Edit::Delete(index, len) => {
                let i = at(index);
                let end = (i + len).min(bytes.len());
                bytes.drain(i..end);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A directory with the files the sample config and scenario name: one fixed place, rewritten
/// by each run (atomically, so parallel runs never see half a file), so runs leave no litter.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("tollgate-proptests-fixture");
        let pki = crate::tls::test_pki::Pki::new();
        let files = [
            ("certs/server.pem", pki.server.pem()),
            ("certs/server.key", pki.server_key.serialize_pem()),
            ("certs/ca.pem", pki.root.pem()),
            (
                "certs/chain.pem",
                format!("{}{}", pki.leaf.pem(), pki.intermediate.pem()),
            ),
            ("plugins/auth.wasm", "\0asm".to_owned()),
        ];
        for (name, contents) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("fixture dir");
            let partial = path.with_extension(format!("{}.partial", std::process::id()));
            std::fs::write(&partial, contents).expect("fixture file");
            std::fs::rename(&partial, &path).expect("fixture file");
        }
        std::fs::create_dir_all(dir.join("logs")).expect("fixture dir");
        dir
    })
}

const CONFIG: &str = r#"[access_log]
target = "logs/access.log"

[[listeners]]
name = "https"
address = "127.0.0.1:8443"
handshake_timeout = "250ms"
client_ca = "certs/ca.pem"
[[listeners.certificates]]
cert = "certs/server.pem"
key = "certs/server.key"
server_names = ["api.example.com", "*.example.com"]

[[listeners]]
address = "[::1]:8080"

[[services]]
name = "echo"
targets = ["127.0.0.1:9000", "backend.internal:9001"]
connect_timeout = "2s"
retries = 1

[[routes]]
name = "api"
hosts = ["api.example.com"]
paths = ["/api"]
methods = ["GET"]
service = "echo"

[[plugins]]
name = "auth"
path = "plugins/auth.wasm"
config = { snis = ["*"], nested = { depth = 2, ratio = 0.5 } }
route = "api"
order = 10
memory_limit = "16MiB"
time_limit = "250ms"
"#;

const SCENARIO: &str = r#"[plugin]
name = "auth"
config = { snis = ["*"] }
memory_limit = "16MiB"
time_limit = "250ms"

[connection]
sni = "api.example.com"
client_address = "10.0.0.7:40000"
client_chain = "certs/chain.pem"
client_ca = "certs/ca.pem"
tls_version = "TLSv1.2"
cipher = "ECDHE-RSA-AES128-GCM-SHA256"

[connection.expect]
client_certificate_requested = true
ca_names = ["CN=Root"]
client_verify = "SUCCESS"
calls = ["certificate: request-client-certificate -> ok"]

[[requests]]
method = "POST"
path = "/hello?x=1"
headers = [["authorization", "Bearer x"], ["x-a", "1"]]
targets = ["10.0.0.1:8080"]
upstream = { status = 201, headers = { "content-type" = "text/plain" }, body = ["hello ", "world"] }

[requests.expect]
status = 201
headers = { "content-type" = "text/plain", "x-debug" = false }
body = "hello world"
client_verify = false
calls = ["access: get_full_client_certificate_chain -> ok"]
plugin_error = "no certificate"
"#;

/// Whether a reported position lies in `text` (a column may sit one past the line's end).
fn inside(text: &str, line: usize, column: usize) -> bool {
    let Some(found) = text.split('\n').nth(line.wrapping_sub(1)) else {
        return false;
    };
    column >= 1 && column <= found.chars().count() + 1
}

#[test]
fn the_samples_are_valid() {
    let dir = fixture();
    Config::parse(CONFIG, &dir.join("tollgate.toml")).expect("the sample config is valid");
    Scenario::parse(SCENARIO, dir.join("scenario.toml")).expect("the sample scenario is valid");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_mutated_config_is_answered_with_problems_inside_the_text(
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        let text = mutate(CONFIG, &edits);
        if let Err(error) = Config::parse(&text, &fixture().join("tollgate.toml")) {
            prop_assert!(!error.problems().is_empty(), "no problem listed: {error}");
            for problem in error.problems() {
                prop_assert!(inside(&text, problem.line, problem.column), "{problem} outside");
                prop_assert!(!problem.message.is_empty() && !problem.message.contains('\n'));
            }
        }
    }

    #[test]
    fn a_mutated_scenario_is_answered_with_a_position_inside_the_text(
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        let text = mutate(SCENARIO, &edits);
        match Scenario::parse(&text, fixture().join("scenario.toml")) {
            Ok(_) => {}
            Err(ScenarioError::Invalid { line, column, message, .. }) => {
                prop_assert!(inside(&text, line, column), "{line}:{column} outside");
                prop_assert!(!message.is_empty() && !message.contains('\n'));
            }
            Err(other) => prop_assert!(false, "unexpected error: {other}"),
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_parsers(text in "\\PC{0,400}") {
        let dir = fixture();
        let _ = Config::parse(&text, &dir.join("tollgate.toml"));
        let _ = Scenario::parse(&text, dir.join("scenario.toml"));
    }
}
