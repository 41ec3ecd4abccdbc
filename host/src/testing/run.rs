//! Drives a scenario through the same pipeline code the gateway uses, without sockets.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_phases::Target;

use super::expect::{check_connection, check_request, not_run};
use super::report::{
    ClientResponse, ConnectionReport, Origin, PluginSummary, RequestReport, ScenarioReport,
    UpstreamRequest,
};
use super::scenario::{
    ConnectionScenario, RequestScenario, Scenario, ScenarioError, default_target,
};
use crate::exchange::{ConnectionFacts, ExchangeState, RequestHead, ResponseHead};
use crate::lifecycle::{self, BodyPiece, BoxError, LogDraft, RequestIo, UpstreamResponse};
use crate::log::{LogEntry, RequestLog, TlsLog};
use crate::pipeline::{Exchange, Recording, run_certificate_phase};
use crate::proxy::upstream::UpstreamError;
use crate::runtime::{LoadError, LoadedPlugin, Runtime, RuntimeError};
use crate::tls::{TlsFacts, TlsPolicy};

/// Why a scenario could not be run at all (a failed expectation is not an error).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The scenario file is unreadable or wrong.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The plugin could not be loaded (file, componentizing, linking, configuration).
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Runs scenarios against plugins. Cheap to clone; one per test process is plenty.
#[derive(Debug, Clone)]
pub struct Harness {
    runtime: Runtime,
}

impl Harness {
    /// A harness on `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Harness { runtime }
    }

    /// The runtime plugins are loaded into.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads the plugin at `plugin` with the scenario's `[plugin]` settings.
    pub async fn load(
        &self,
        plugin: &Path,
        scenario: &Scenario,
    ) -> Result<Arc<LoadedPlugin>, HarnessError> {
        Ok(self.runtime.load(scenario.plugin.spec(plugin)).await?)
    }

    /// Loads the plugin at `plugin` with the scenario's `[plugin]` settings and runs the
    /// scenario against it.
    pub async fn run(
        &self,
        plugin: impl AsRef<Path>,
        scenario: &Scenario,
    ) -> Result<ScenarioReport, HarnessError> {
        let plugin = self.load(plugin.as_ref(), scenario).await?;
        Ok(self.run_plugins(&[plugin], scenario).await)
    }

    /// Runs the scenario against already loaded plugins, in chain order. The scenario's
    /// `[plugin]` settings are not used: loaded plugins carry their own.
    pub async fn run_plugins(
        &self,
        plugins: &[Arc<LoadedPlugin>],
        scenario: &Scenario,
    ) -> ScenarioReport {
        let chain: Arc<[Arc<LoadedPlugin>]> = plugins.iter().cloned().collect();
        let mut connections = Vec::with_capacity(scenario.connections.len());
        for connection in &scenario.connections {
            connections.push(run_connection(&chain, connection).await);
        }
        ScenarioReport {
            scenario: scenario.file.clone(),
            plugins: plugins
                .iter()
                .map(|p| PluginSummary {
                    name: p.name().to_owned(),
                    path: p.path().to_path_buf(),
                    phases: p.phases(),
                })
                .collect(),
            connections,
        }
    }
}

async fn run_connection(
    chain: &Arc<[Arc<LoadedPlugin>]>,
    scenario: &ConnectionScenario,
) -> ConnectionReport {
    let mut report = ConnectionReport {
        sni: scenario.sni.clone(),
        client_addr: scenario.client_addr,
        tls: None,
        presented_certificates: scenario
            .tls
            .as_ref()
            .and_then(|tls| tls.client_chain.as_ref())
            .map_or(0, Vec::len),
        certificate_trace: Vec::new(),
        plugin_errors: Vec::new(),
        handshake_error: None,
        policy: TlsPolicy::default(),
        requests: Vec::new(),
        expectations: Vec::new(),
    };
    let mut context = Default::default();
    if let Some(tls) = &scenario.tls {
        match run_certificate_phase(
            chain,
            scenario.client_addr,
            scenario.sni.clone(),
            Recording::On,
        )
        .await
        {
            Ok(outcome) => {
                report.policy = outcome.policy;
                report.certificate_trace = outcome.trace;
                report.plugin_errors = outcome.skipped_failures;
                context = outcome.context;
            }
            Err((err, trace)) => {
                report.certificate_trace = trace;
                report.plugin_errors.push(err.clone());
                report.handshake_error = Some(err);
            }
        }
        // Exactly what the acceptor does once the handshake is done: the chain and its verify
        // result are computed by the gateway's code from the scenario's certificates. After an
        // abort the policy is the default one, which asks for no certificate.
        report.tls = Some(TlsFacts::negotiated(
            tls.version,
            tls.cipher,
            &report.policy,
            tls.client_chain.as_deref(),
            tls.client_ca.as_ref(),
        ));
    }
    report.expectations = check_connection(&scenario.expect, &report);
    if report.aborted() {
        for (index, request) in scenario.requests.iter().enumerate() {
            let label = format!(
                "request {} ({} {})",
                index + 1,
                request.method,
                request.uri()
            );
            report.expectations.extend(not_run(
                &request.expect,
                &label,
                "the certificate phase aborted the handshake",
            ));
        }
        return report;
    }
    let facts = Arc::new(ConnectionFacts {
        client_addr: scenario.client_addr,
        sni: scenario.sni.clone(),
        tls: report.tls.clone(),
    });
    for request in &scenario.requests {
        let state = ExchangeState::new(facts.clone(), request_head(request), context.clone());
        let mut result = run_request(
            Exchange::new(chain.clone(), state, Recording::On),
            request,
            &facts,
        )
        .await;
        result.expectations = check_request(&request.expect, &result);
        report.requests.push(result);
    }
    report
}

/// The harness's side of the lifecycle: the simulated upstream answers from the scenario, and
/// what the client would get is collected instead of sent.
struct ScenarioIo<'a> {
    request: &'a RequestScenario,
    target: Option<Target>,
    upstream_request: Option<UpstreamRequest>,
    response: Option<ClientResponse>,
    log_tls: Option<TlsLog>,
}

impl RequestIo for ScenarioIo<'_> {
    type UpstreamBody = std::vec::IntoIter<Vec<u8>>;

    fn targets(&self) -> Arc<[Target]> {
        self.request.targets.iter().cloned().collect()
    }

    fn propose_target(&mut self) -> Option<Target> {
        Some(
            self.request
                .targets
                .first()
                .cloned()
                .unwrap_or_else(default_target),
        )
    }

    fn attempts(&self) -> u32 {
        1
    }

    async fn connect(&mut self, target: &Target) -> Result<(), UpstreamError> {
        self.target = Some(target.clone());
        Ok(())
    }

    async fn send(
        &mut self,
        head: &RequestHead,
    ) -> Result<UpstreamResponse<Self::UpstreamBody>, UpstreamError> {
        let uri = match &head.query {
            Some(query) => format!("{}?{query}", head.path),
            None => head.path.clone(),
        };
        self.upstream_request = Some(UpstreamRequest {
            target: self.target.clone().unwrap_or_else(default_target),
            method: head.method.clone(),
            uri: uri.clone(),
            headers: header_pairs(&head.headers),
        });
        let upstream = &self.request.upstream;
        Ok(UpstreamResponse {
            head: ResponseHead {
                status: upstream.status,
                headers: header_map(&upstream.headers),
            },
            body: upstream.body.clone().into_iter(),
            uri,
        })
    }

    async fn next_piece(
        &mut self,
        body: &mut Self::UpstreamBody,
    ) -> Option<Result<BodyPiece, BoxError>> {
        let bytes = Bytes::from(body.next()?);
        Some(Ok(BodyPiece::Data {
            bytes,
            last: body.len() == 0,
        }))
    }

    fn respond(&mut self, head: &ResponseHead, origin: &Origin) {
        self.response = Some(ClientResponse {
            status: head.status,
            headers: header_pairs(&head.headers),
            body: Vec::new(),
            source: origin.clone(),
            truncated: false,
        });
    }

    async fn send_data(&mut self, bytes: Bytes) -> bool {
        if let Some(response) = &mut self.response {
            response.body.extend_from_slice(&bytes);
        }
        true
    }

    async fn send_trailers(&mut self, _trailers: HeaderMap) {}

    async fn abort(&mut self, _reason: BoxError) {
        if let Some(response) = &mut self.response {
            response.truncated = true;
        }
    }

    fn end_response(&mut self) {}

    fn log(&mut self, entry: LogEntry) {
        self.log_tls = entry.request.tls;
    }
}

/// One request through the lifecycle the gateway runs, against the scenario's upstream.
async fn run_request(
    exchange: Exchange,
    request: &RequestScenario,
    connection: &ConnectionFacts,
) -> RequestReport {
    let mut io = ScenarioIo {
        request,
        target: None,
        upstream_request: None,
        response: None,
        log_tls: None,
    };
    let draft = LogDraft::new(
        RequestLog {
            method: request.method.clone(),
            uri: request.uri(),
            url: request.uri(),
            querystring: Default::default(),
            headers: Default::default(),
            size: 0,
            tls: None,
        },
        connection.client_addr.ip().to_string(),
    );
    let finished = lifecycle::run_request(exchange, &mut io, draft).await;
    RequestReport {
        method: request.method.clone(),
        uri: request.uri(),
        trace: finished.trace,
        plugin_errors: finished.failures,
        upstream_request: io.upstream_request,
        response: io.response.unwrap_or_else(|| ClientResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            source: Origin::Gateway,
            truncated: true,
        }),
        log_tls: io.log_tls,
        expectations: Vec::new(),
    }
}

fn request_head(request: &RequestScenario) -> RequestHead {
    RequestHead {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: header_map(&request.headers),
    }
}

/// Header pairs (checked when the scenario was parsed) as a map, repeats kept in order.
fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn header_pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}
