//! What a scenario run produced: structured results for Rust tests, and the plain-text report
//! `tollgate test` prints (its [`Display`](fmt::Display)).

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use tollgate_phases::{Phase, PhaseSet, Target};

use crate::log::TlsLog;
use crate::pipeline::TraceEntry;
use crate::runtime::{HostCall, PluginError};
use crate::tls::{ClientChain, ClientVerify, TlsFacts, TlsPolicy};

/// Longest part of a response body the text report shows.
pub const MAX_BODY_SHOWN: usize = 512;

/// The result of running a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The scenario file.
    pub scenario: PathBuf,
    /// The plugins, in chain order.
    pub plugins: Vec<PluginSummary>,
    /// One report per connection, in scenario order.
    pub connections: Vec<ConnectionReport>,
}

/// A plugin of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSummary {
    /// Instance name.
    pub name: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The phases it handles.
    pub phases: PhaseSet,
}

/// What happened on one connection.
#[derive(Debug, Clone)]
pub struct ConnectionReport {
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The connection's TLS facts as the request phases see them (the scenario's version and
    /// cipher; the client's chain and `client_verify` before any override, as the acceptor
    /// computes them); `None` on plaintext. After an aborted handshake they hold no chain, and
    /// [`client_verify`](Self::client_verify) is `None`.
    pub tls: Option<TlsFacts>,
    /// How many certificates the client would present if asked (0: none).
    pub presented_certificates: usize,
    /// The certificate phase's plugin calls (empty on plaintext).
    pub certificate_trace: Vec<TraceEntry>,
    /// Every plugin failure in the certificate phase, skipped fail-open ones included.
    pub plugin_errors: Vec<PluginError>,
    /// The fail-closed failure that aborted the handshake; the requests did not run.
    pub handshake_error: Option<PluginError>,
    /// What the certificate phase decided (the default on plaintext or after an abort).
    pub policy: TlsPolicy,
    /// The requests, in order (empty when the handshake was aborted).
    pub requests: Vec<RequestReport>,
    /// The connection's checked expectations (header expectations by name), then one failure per
    /// request that did not run.
    pub expectations: Vec<Expectation>,
}

impl ConnectionReport {
    /// Whether a plugin's failure aborted the handshake.
    pub fn aborted(&self) -> bool {
        self.handshake_error.is_some()
    }

    /// The client's chain, as the requests see it; `None` on plaintext, after an aborted
    /// handshake, or when none was requested or sent.
    pub fn client_chain(&self) -> Option<&ClientChain> {
        self.tls.as_ref()?.client_chain.as_ref()
    }

    /// The connection's `client_verify` before any override; `None` on plaintext and after an
    /// aborted handshake.
    pub fn client_verify(&self) -> Option<&ClientVerify> {
        let tls = self.tls.as_ref().filter(|_| !self.aborted())?;
        Some(&tls.client_verify)
    }

    /// The acceptable CA names sent in the CertificateRequest, in order.
    pub fn ca_names(&self) -> Vec<String> {
        self.policy
            .ca_certs
            .as_ref()
            .map(|anchors| anchors.subject_names())
            .unwrap_or_default()
    }

    /// Every host call of the certificate phase, in order.
    pub fn certificate_calls(&self) -> Vec<&HostCall> {
        self.certificate_trace
            .iter()
            .flat_map(|e| &e.calls)
            .collect()
    }

    /// The expectations of the connection and of all its requests.
    pub fn all_expectations(&self) -> impl Iterator<Item = &Expectation> {
        self.expectations
            .iter()
            .chain(self.requests.iter().flat_map(|r| &r.expectations))
    }
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct RequestReport {
    /// The method.
    pub method: String,
    /// Path and query as sent by the client.
    pub uri: String,
    /// Every plugin phase call, in order (body_filter once per chunk).
    pub trace: Vec<TraceEntry>,
    /// Every plugin failure, skipped fail-open ones included.
    pub plugin_errors: Vec<PluginError>,
    /// The request the upstream would get; `None` when the upstream was not contacted.
    pub upstream_request: Option<UpstreamRequest>,
    /// The response the client would get.
    pub response: ClientResponse,
    /// The log entry's `request.tls`; `None` on plaintext.
    pub log_tls: Option<TlsLog>,
    /// The request's checked expectations (header expectations by name).
    pub expectations: Vec<Expectation>,
}

impl RequestReport {
    /// Every host call made in `phase`, in order.
    pub fn calls(&self, phase: Phase) -> Vec<&HostCall> {
        self.trace
            .iter()
            .filter(|e| e.phase == phase)
            .flat_map(|e| &e.calls)
            .collect()
    }

    /// The results (`ok`, `ok: <value>`, `error: <message>`) of the calls of `function`
    /// (`interface.function`, as in the WIT) made in `phase`, in order.
    pub fn call_results(&self, phase: Phase, function: &str) -> Vec<&str> {
        self.calls(phase)
            .into_iter()
            .filter(|c| c.function == function)
            .map(|c| c.result.as_str())
            .collect()
    }

    /// The log entry's `request.tls.client_verify`; `None` on plaintext.
    pub fn client_verify(&self) -> Option<&str> {
        self.log_tls.as_ref().map(|t| t.client_verify.as_str())
    }
}

/// The request as it leaves for the upstream, after rewrite, access and balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// `host:port` chosen for the first attempt.
    pub target: Target,
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers in order, names lower case.
    pub headers: Vec<(String, String)>,
}

impl UpstreamRequest {
    /// The header's value (repeated values joined by `, `).
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }
}

pub use crate::lifecycle::Origin;

/// The response the client would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower case.
    pub headers: Vec<(String, String)>,
    /// The whole body as sent.
    pub body: Vec<u8>,
    /// Where it came from.
    pub source: Origin,
    /// A body_filter failure cut the body short after what is in `body`.
    pub truncated: bool,
}

impl ClientResponse {
    /// The header's value (repeated values joined by `, `).
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let values: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// One checked expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// What was expected, e.g. `status = 200`.
    pub description: String,
    /// Whether it held.
    pub passed: bool,
    /// What was found instead, when it failed.
    pub actual: Option<String>,
}

impl ScenarioReport {
    /// Every expectation, connection by connection.
    pub fn expectations(&self) -> impl Iterator<Item = &Expectation> {
        self.connections
            .iter()
            .flat_map(ConnectionReport::all_expectations)
    }

    /// Whether every expectation held (true when there are none).
    pub fn passed(&self) -> bool {
        self.expectations().all(|e| e.passed)
    }

    /// The expectations that failed.
    pub fn failures(&self) -> Vec<&Expectation> {
        self.expectations().filter(|e| !e.passed).collect()
    }
}

// ---- the text report ----

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario {}", self.scenario.display())?;
        for plugin in &self.plugins {
            writeln!(
                f,
                "plugin {} ({}), phases: {}",
                plugin.name,
                plugin.path.display(),
                plugin.phases
            )?;
        }
        for (index, connection) in self.connections.iter().enumerate() {
            writeln!(f)?;
            write_connection(f, index + 1, connection)?;
        }
        let total = self.expectations().count();
        let failed = self.failures().len();
        writeln!(f)?;
        writeln!(
            f,
            "summary: {total} expectation{}, {} passed, {failed} failed: {}",
            if total == 1 { "" } else { "s" },
            total - failed,
            if failed == 0 { "PASS" } else { "FAIL" }
        )
    }
}

fn write_connection(
    f: &mut fmt::Formatter<'_>,
    number: usize,
    c: &ConnectionReport,
) -> fmt::Result {
    let kind = match &c.tls {
        Some(tls) => format!("TLS ({}, {})", tls.version, tls.cipher),
        None => "plaintext".to_owned(),
    };
    let sni = c
        .sni
        .as_deref()
        .map_or("none".to_owned(), |s| format!("\"{s}\""));
    writeln!(
        f,
        "connection {number}: {kind}, sni {sni}, client {}",
        c.client_addr
    )?;
    if c.tls.is_some() {
        let presented = match c.presented_certificates {
            0 => "none".to_owned(),
            1 => "1 certificate".to_owned(),
            n => format!("{n} certificates"),
        };
        writeln!(f, "  client presents: {presented}")?;
        writeln!(f, "  certificate phase:")?;
        write_trace(f, &c.certificate_trace, false)?;
        if let Some(err) = &c.handshake_error {
            writeln!(f, "  handshake aborted: {err}")?;
        } else {
            let names = c.ca_names();
            let names = if names.is_empty() {
                "none".to_owned()
            } else {
                names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                f,
                "  policy: certificate requested: {}; CA names: {names}; session reuse: {}",
                yes_no(c.policy.request_client_certificate),
                if c.policy.disable_session_reuse {
                    "off"
                } else {
                    "on"
                }
            )?;
            writeln!(f, "  client chain: {}", describe_chain(c.client_chain()))?;
        }
    }
    if let Some(verify) = c.client_verify() {
        writeln!(f, "  client_verify: {verify}")?;
    }
    write_expectations(f, "  ", &c.expectations)?;
    for (index, request) in c.requests.iter().enumerate() {
        write_request(f, index + 1, request)?;
    }
    Ok(())
}

fn write_request(f: &mut fmt::Formatter<'_>, number: usize, r: &RequestReport) -> fmt::Result {
    writeln!(f, "  request {number}: {} {}", r.method, r.uri)?;
    write_trace(f, &r.trace, true)?;
    match &r.upstream_request {
        Some(up) => {
            writeln!(
                f,
                "    upstream request to {}: {} {}",
                up.target, up.method, up.uri
            )?;
            write_headers(f, "      ", &up.headers)?;
        }
        None => writeln!(f, "    upstream: not contacted")?,
    }
    let response = &r.response;
    let source = match &response.source {
        Origin::Upstream => "from upstream".to_owned(),
        Origin::PluginExit => "from a plugin's response.exit".to_owned(),
        Origin::PluginFailure(Some(phase)) => format!("plugin failure in {phase}"),
        Origin::PluginFailure(None) => {
            "no plugin instance available: gateway at capacity".to_owned()
        }
        Origin::Gateway => "from the gateway".to_owned(),
    };
    writeln!(f, "    response: {} ({source})", response.status)?;
    write_headers(f, "      ", &response.headers)?;
    let truncated = if response.truncated {
        ", truncated by a body_filter failure"
    } else {
        ""
    };
    writeln!(
        f,
        "      body ({} bytes{truncated}): {}",
        response.body.len(),
        show_body(&response.body)
    )?;
    match &r.log_tls {
        Some(tls) => writeln!(
            f,
            "    log request.tls: version {}, cipher {}, client_verify {}",
            tls.version, tls.cipher, tls.client_verify
        )?,
        None => writeln!(f, "    log request.tls: absent (plaintext)")?,
    }
    write_expectations(f, "    ", &r.expectations)
}

fn write_trace(f: &mut fmt::Formatter<'_>, trace: &[TraceEntry], request: bool) -> fmt::Result {
    let indent = "    ";
    if trace.is_empty() {
        return writeln!(f, "{indent}(no plugin ran)");
    }
    for entry in trace {
        if request {
            writeln!(f, "{indent}{} / {}:", entry.phase, entry.plugin)?;
        } else {
            writeln!(f, "{indent}{}:", entry.plugin)?;
        }
        if entry.calls.is_empty() && entry.error.is_none() {
            writeln!(f, "{indent}  (no host calls)")?;
        }
        for call in &entry.calls {
            writeln!(f, "{indent}  {call}")?;
        }
        if let Some(err) = &entry.error {
            writeln!(f, "{indent}  FAILED in {}: {}", err.stage, err.fault)?;
        }
    }
    Ok(())
}

fn write_headers(
    f: &mut fmt::Formatter<'_>,
    indent: &str,
    headers: &[(String, String)],
) -> fmt::Result {
    for (name, value) in headers {
        writeln!(f, "{indent}{name}: {value}")?;
    }
    Ok(())
}

fn write_expectations(
    f: &mut fmt::Formatter<'_>,
    indent: &str,
    list: &[Expectation],
) -> fmt::Result {
    for e in list {
        match (&e.actual, e.passed) {
            (_, true) => writeln!(f, "{indent}PASS {}", e.description)?,
            (Some(actual), false) => writeln!(f, "{indent}FAIL {} (got {actual})", e.description)?,
            (None, false) => writeln!(f, "{indent}FAIL {}", e.description)?,
        }
    }
    Ok(())
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// A chain's length and subjects, leaf first.
fn describe_chain(chain: Option<&ClientChain>) -> String {
    let Some(chain) = chain else {
        return "none".to_owned();
    };
    let subjects: Vec<String> = chain
        .certificates()
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .map(|(_, cert)| cert.subject().to_string())
                .unwrap_or_else(|_| "?".to_owned())
        })
        .collect();
    format!(
        "{} certificate{} ({} bytes of PEM): {}",
        subjects.len(),
        if subjects.len() == 1 { "" } else { "s" },
        chain.pem().len(),
        subjects
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The body as a quoted string, cut at [`MAX_BODY_SHOWN`] bytes.
pub(crate) fn show_body(body: &[u8]) -> String {
    let shown = &body[..body.len().min(MAX_BODY_SHOWN)];
    let text = String::from_utf8_lossy(shown);
    let mut out = String::new();
    let _ = write!(out, "{:?}", text.as_ref());
    if body.len() > MAX_BODY_SHOWN {
        let _ = write!(out, "… ({} more bytes)", body.len() - MAX_BODY_SHOWN);
    }
    out
}
