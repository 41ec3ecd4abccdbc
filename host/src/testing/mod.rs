//! The offline harness behind `tollgate test <plugin.wasm> <scenario.toml>`: runs a plugin
//! through simulated connections and requests, without sockets, through the same pipeline code
//! as the gateway ([`Runtime::load`](crate::runtime::Runtime::load),
//! [`run_certificate_phase`](crate::pipeline::run_certificate_phase),
//! [`Exchange`](crate::pipeline::Exchange) with [`Recording::On`](crate::pipeline::Recording)),
//! and checks expectations.
//!
//! # What a run does
//!
//! Per connection: the certificate phase (TLS connections only) decides the
//! [`TlsPolicy`](crate::tls::TlsPolicy); a fail-closed failure there aborts the handshake and the
//! connection's requests do not run. Then the connection's [`TlsFacts`](crate::tls::TlsFacts),
//! its chain and initial `client_verify` included, come from
//! [`TlsFacts::negotiated`](crate::tls::TlsFacts::negotiated), exactly as in the acceptor. Per request:
//! rewrite, access (when a plugin answers with `response.exit`, that answer is the response and
//! balancer and the upstream are skipped), balancer (attempt 1, proposing the first target), the
//! simulated upstream response, header_filter, body_filter once per body chunk (the last flagged
//! end-of-stream; one empty end-of-stream call when there is no body), then log.
//!
//! A fail-closed plugin failure in rewrite, access, balancer or header_filter makes the response
//! the gateway's 500 ([`crate::pipeline::PLUGIN_FAILURE`]); header_filter and body_filter do not
//! run on it, log does. A body_filter failure truncates the body after the chunks already sent.
//! A log failure is only reported. Fail-open plugins' failures are reported and skipped.
//!
//! # The scenario file
//!
//! Paths resolve against the scenario file's directory. Everything but `requests[].path` is
//! optional. A complete example:
//!
//! ```toml
//! [plugin]                          # applies to the plugin given on the command line
//! name = "mtls"                     # default: the file's stem
//! config = { snis = ["*"], header = "x-consumer-username" }   # TOML table → JSON for configure
//! memory_limit = "64MiB"            # default 64MiB
//! time_limit = "100ms"              # default 100ms
//! fail_open = false                 # default false
//!
//! [connection]
//! tls = true                        # default true; false = plaintext
//! sni = "api.example.com"           # default: no SNI
//! client_address = "10.0.0.7:40000" # default 127.0.0.1:50000
//! client_chain = "certs/client-chain.pem" # what the client presents if asked; omit for none
//! client_ca = "certs/ca.pem"        # the listener's client CA bundle; omit for none
//! tls_version = "TLSv1.3"           # default TLSv1.3 (or TLSv1.2)
//! cipher = "TLS_AES_256_GCM_SHA384" # default for TLSv1.3; OpenSSL names
//!
//! [connection.expect]
//! client_certificate_requested = true
//! session_reuse_disabled = false
//! ca_names = ["CN=Demo Root CA, O=Tollgate"]   # ordered; [] = none sent
//! client_chain = true               # the connection reports a chain
//! client_verify = "SUCCESS"         # before any override; false = plaintext
//! calls = ["request-client-certificate -> ok"]
//! no_plugin_errors = true
//!
//! [[requests]]
//! method = "GET"                    # default GET
//! path = "/hello?x=1"               # required; the query follows `?`
//! headers = { authorization = "Bearer x" }   # or [["name", "value"], ...] to keep order
//! targets = ["10.0.0.1:8080"]       # the service's targets; default ["127.0.0.1:8080"]
//! upstream = { status = 200, headers = { "content-type" = "text/plain" }, body = ["hello ", "world"] }
//!
//! [requests.expect]
//! status = 200
//! headers = { "content-type" = "text/plain", "x-debug" = false }  # false = absent, true = present
//! upstream_headers = { "x-consumer-username" = "demo client", "authorization" = false }
//! body = "hello world"
//! client_verify = "SUCCESS"         # the log's request.tls.client_verify; false = plaintext
//! target = "10.0.0.1:8080"
//! calls = ["access: get_full_client_certificate_chain -> ok", "connection.client-verify"]
//! no_plugin_errors = true
//! # plugin_error = "returned an error: no certificate"   # a failure containing this text
//! ```
//!
//! Several connections: `[[connections]]` tables instead of `[connection]`, each with its own
//! `[[connections.requests]]` and `[connections.expect]`.
//!
//! A call pattern is `"[<phase>:] <function> [-> <result prefix>]"`: the function as
//! `interface.function` or just `function` (`_` or `-`), the result as the report prints it
//! (`ok`, `ok: <value>`, `error: <message>`).
//!
//! # From Rust
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::runtime::Runtime;
//! use tollgate::testing::{Harness, Scenario};
//! use tollgate::Phase;
//!
//! let scenario = Scenario::from_file("tests/scenarios/mtls.toml")?;
//! let harness = Harness::new(Runtime::new()?);
//! let report = harness.run("plugins/mtls.wasm", &scenario).await?;
//! let request = &report.connections[0].requests[0];
//! assert_eq!(
//!     request.call_results(Phase::Access, "client-tls.request-client-certificate"),
//!     ["error: function cannot be called in access phase (only in: certificate)"]
//! );
//! assert!(report.passed(), "{report}");
//! # Ok(()) }
//! ```

mod expect;
mod parse;
mod report;
mod run;
mod scenario;

use std::path::Path;

pub use self::report::{
    ClientResponse, ConnectionReport, Expectation, MAX_BODY_SHOWN, Origin, PluginSummary,
    RequestReport, ScenarioReport, UpstreamRequest,
};
pub use self::run::{Harness, HarnessError};
pub use self::scenario::{
    CallPattern, ConnectionExpect, ConnectionScenario, DEFAULT_CIPHER, DEFAULT_CLIENT_ADDRESS,
    DEFAULT_TARGET, DEFAULT_TLS_VERSION, DEFAULT_UPSTREAM_STATUS, HeaderExpectation,
    INLINE_SCENARIO, PluginSettings, RequestExpect, RequestScenario, Scenario, ScenarioError,
    TlsScenario, UpstreamScenario, VerifyExpectation, default_target,
};

use crate::runtime::Runtime;

/// Runs `tollgate test`: loads the scenario and the plugin, runs, prints the report to stdout.
/// `Ok(false)` when an expectation failed.
pub async fn run_command(plugin: &Path, scenario: &Path) -> anyhow::Result<bool> {
    let scenario = Scenario::from_file(scenario)?;
    let harness = Harness::new(Runtime::new()?);
    let report = harness.run(plugin, &scenario).await?;
    print!("{report}");
    Ok(report.passed())
}

#[cfg(test)]
mod tests;
