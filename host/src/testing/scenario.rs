//! What a scenario says: the plugin's settings, the connections, requests and expectations.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tollgate_phases::{ClientVerify, Phase, Target};

use crate::runtime::{DEFAULT_MEMORY_LIMIT, DEFAULT_TIME_LIMIT, PluginSpec};
use crate::tls::TrustAnchors;

/// The client address when a connection does not give one.
pub const DEFAULT_CLIENT_ADDRESS: &str = "127.0.0.1:50000";
/// The negotiated protocol version when a TLS connection does not give one.
pub const DEFAULT_TLS_VERSION: &str = "TLSv1.3";
/// The negotiated cipher suite when a TLS connection does not give one.
pub const DEFAULT_CIPHER: &str = "TLS_AES_256_GCM_SHA384";
/// The service's targets when a request does not give any.
pub const DEFAULT_TARGET: &str = "127.0.0.1:8080";

/// [`DEFAULT_TARGET`] as a target.
pub fn default_target() -> Target {
    const PORT: NonZeroU16 = match NonZeroU16::new(8080) {
        Some(port) => port,
        None => panic!("8080 is not 0"),
    };
    Target::from_ip(Ipv4Addr::LOCALHOST.into(), PORT)
}
/// The simulated upstream's status when a request does not give one.
pub const DEFAULT_UPSTREAM_STATUS: u16 = 200;
/// Name shown for a scenario parsed from a string without a file.
pub const INLINE_SCENARIO: &str = "<inline scenario>";

/// A whole scenario: how to configure the plugin, and the connections to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The scenario file ([`INLINE_SCENARIO`] when parsed from a string).
    pub file: PathBuf,
    /// The plugin's configuration and limits (`[plugin]`).
    pub plugin: PluginSettings,
    /// The connections, in order (`[connection]` with `[[requests]]`, or `[[connections]]`).
    pub connections: Vec<ConnectionScenario>,
}

/// The `[plugin]` table: applied when the harness loads the plugin from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSettings {
    /// Instance name in reports; default: the file's stem.
    pub name: Option<String>,
    /// The configuration handed to `configure`, as JSON (from the TOML table `config`).
    pub config: serde_json::Value,
    /// Cap on each instance's memory.
    pub memory_limit: usize,
    /// CPU deadline of each call.
    pub time_limit: Duration,
    /// Whether a failure of the plugin is recorded and skipped instead of failing the request.
    pub fail_open: bool,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            name: None,
            config: serde_json::Value::Object(Default::default()),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            time_limit: DEFAULT_TIME_LIMIT,
            fail_open: false,
        }
    }
}

impl PluginSettings {
    /// The runtime's load spec for the plugin at `path` with these settings.
    pub fn spec(&self, path: &Path) -> PluginSpec {
        let name = self.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned())
        });
        PluginSpec {
            name,
            path: path.to_path_buf(),
            config: self.config.clone(),
            memory_limit: self.memory_limit,
            time_limit: self.time_limit,
            fail_open: self.fail_open,
        }
    }
}

/// One simulated client connection.
#[derive(Debug, Clone)]
pub struct ConnectionScenario {
    /// The server name the client asks for.
    pub sni: Option<String>,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The TLS side; `None` for a plaintext connection.
    pub tls: Option<TlsScenario>,
    /// The requests on the connection, in order.
    pub requests: Vec<RequestScenario>,
    /// What must hold for the connection.
    pub expect: ConnectionExpect,
}

/// The TLS side of a simulated connection.
#[derive(Debug, Clone)]
pub struct TlsScenario {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// OpenSSL's name of the cipher suite.
    pub cipher: &'static str,
    /// What the client presents when asked for a certificate (leaf first); `None` for nothing.
    pub client_chain: Option<Vec<CertificateDer<'static>>>,
    /// The listener's client CA bundle.
    pub client_ca: Option<TrustAnchors>,
}

/// One simulated request and the simulated upstream's answer.
#[derive(Debug, Clone)]
pub struct RequestScenario {
    /// Upper-case method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query, without `?`.
    pub query: Option<String>,
    /// Request headers in order, names lower case.
    pub headers: Vec<(String, String)>,
    /// The service's targets, in order; the first is proposed to the balancer.
    pub targets: Vec<Target>,
    /// What the upstream answers.
    pub upstream: UpstreamScenario,
    /// What must hold for the request.
    pub expect: RequestExpect,
}

impl RequestScenario {
    /// The path and query as the client sent them.
    pub fn uri(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// The simulated upstream response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamScenario {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower case.
    pub headers: Vec<(String, String)>,
    /// Body chunks, in order; the last is flagged end-of-stream.
    pub body: Vec<Vec<u8>>,
}

impl Default for UpstreamScenario {
    fn default() -> Self {
        UpstreamScenario {
            status: DEFAULT_UPSTREAM_STATUS,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// What a header expectation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderExpectation {
    /// The header has exactly this value (a repeated header's values joined by `, `).
    Value(String),
    /// The header is present, with any value (`true` in the file).
    Present,
    /// The header is absent (`false` in the file).
    Absent,
}

/// What a `client_verify` expectation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyExpectation {
    /// Exactly this value (`SUCCESS`, `NONE`, `FAILED:<reason>`).
    Value(ClientVerify),
    /// The connection is plaintext: no `request.tls` (`false` in the file).
    Plaintext,
}

/// A host call that must appear: `"[<phase>:] <function> [-> <result prefix>]"`.
///
/// `function` matches `interface.function` as in the WIT (`client-tls.set-client-verify`) or the
/// bare function name (`set-client-verify`); `_` and `-` are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPattern {
    /// Only calls in this phase match.
    pub phase: Option<Phase>,
    /// The function, normalized to WIT spelling (`-`).
    pub function: String,
    /// The call's result (`ok`, `ok: <value>`, `error: <message>`) must start with this.
    pub result_prefix: Option<String>,
}

impl CallPattern {
    /// Parses a pattern; errors name what is wrong.
    pub fn parse(text: &str) -> Result<CallPattern, String> {
        let (head, result_prefix) = match text.split_once("->") {
            Some((head, result)) => (head, Some(result.trim().to_owned())),
            None => (text, None),
        };
        let (phase, function) = match head.split_once(':') {
            Some((phase, function)) => {
                let name = phase.trim();
                let phase = Phase::from_name(name).ok_or_else(|| {
                    format!(
                        "unknown phase `{name}` in call pattern `{text}` (phases: {})",
                        Phase::ALL.map(|p| p.name()).join(", ")
                    )
                })?;
                (Some(phase), function)
            }
            None => (None, head),
        };
        let function = function.trim().replace('_', "-");
        if function.is_empty() || function.contains(char::is_whitespace) {
            return Err(format!(
                "call pattern `{text}` must be \"<function>\" or \"<function> -> <result prefix>\""
            ));
        }
        Ok(CallPattern {
            phase,
            function,
            result_prefix,
        })
    }

    /// Whether `call` matches.
    pub fn matches(&self, call: &crate::runtime::HostCall) -> bool {
        let function_matches = call.function == self.function
            || call
                .function
                .split_once('.')
                .is_some_and(|(_, bare)| bare == self.function);
        function_matches
            && self.phase.is_none_or(|phase| phase == call.phase)
            && self
                .result_prefix
                .as_ref()
                .is_none_or(|prefix| call.result.starts_with(prefix.as_str()))
    }
}

impl fmt::Display for CallPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(phase) = self.phase {
            write!(f, "{phase}: ")?;
        }
        f.write_str(&self.function)?;
        if let Some(prefix) = &self.result_prefix {
            write!(f, " -> {prefix}")?;
        }
        Ok(())
    }
}

/// What must hold for a connection (`[connection.expect]`). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionExpect {
    /// Whether the certificate phase requested a client certificate.
    pub client_certificate_requested: Option<bool>,
    /// Whether the certificate phase disabled session reuse.
    pub session_reuse_disabled: Option<bool>,
    /// The acceptable CA names sent, in order (empty: none sent).
    pub ca_names: Option<Vec<String>>,
    /// Whether the connection reports a client chain.
    pub client_chain: Option<bool>,
    /// The connection's `client_verify` before any override.
    pub client_verify: Option<VerifyExpectation>,
    /// Host calls that must appear in the certificate phase.
    pub calls: Vec<CallPattern>,
    /// No plugin failed in the certificate phase.
    pub no_plugin_errors: bool,
    /// A plugin failure in the certificate phase contains this text.
    pub plugin_error: Option<String>,
}

/// What must hold for a request (`[requests.expect]`). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestExpect {
    /// The status the client gets.
    pub status: Option<u16>,
    /// Response headers the client gets, by lower-case name.
    pub headers: BTreeMap<String, HeaderExpectation>,
    /// Headers of the request the upstream gets, by lower-case name.
    pub upstream_headers: BTreeMap<String, HeaderExpectation>,
    /// The exact response body the client gets.
    pub body: Option<String>,
    /// The log entry's `request.tls.client_verify`.
    pub client_verify: Option<VerifyExpectation>,
    /// The upstream target chosen for the first attempt.
    pub target: Option<Target>,
    /// Host calls that must appear in the request's phases.
    pub calls: Vec<CallPattern>,
    /// No plugin failed in any request phase.
    pub no_plugin_errors: bool,
    /// A plugin failure of the request contains this text.
    pub plugin_error: Option<String>,
}

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{}: cannot read scenario: {source}", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file has a mistake.
    #[error("{}:{line}:{column}: {}{message}", file.display(), field_prefix(field))]
    Invalid {
        /// The scenario file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Path of the field, e.g. `requests[0].expect.status`; empty for syntax errors.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl Scenario {
    /// Reads and checks the scenario file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// Checks `text` as the contents of the file at `path`: messages name `path`, and relative
    /// paths resolve against its directory. The file itself is not read.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        super::parse::parse(text, path, &crate::config::base_dir(path))
    }

    /// Checks `text`, resolving relative paths against `base_dir`; messages name
    /// [`INLINE_SCENARIO`].
    pub fn from_toml_str(
        text: &str,
        base_dir: impl AsRef<Path>,
    ) -> Result<Scenario, ScenarioError> {
        super::parse::parse(text, Path::new(INLINE_SCENARIO), base_dir.as_ref())
    }
}
