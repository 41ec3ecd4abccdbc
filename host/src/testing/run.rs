//! Drives a scenario through the same pipeline code the gateway uses, without sockets.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_phases::{Phase, Target};

use super::expect::{check_connection, check_request, not_run};
use super::report::{
    ClientResponse, ConnectionReport, NegotiatedTls, PluginSummary, RequestReport, ResponseSource,
    ScenarioReport, UpstreamRequest,
};
use super::scenario::{
    ConnectionScenario, RequestScenario, Scenario, ScenarioError, default_target,
};
use crate::exchange::{ConnectionFacts, ExchangeState, RequestHead, ResponseHead, TlsSession};
use crate::log::TlsLog;
use crate::pipeline::{
    Decision, Exchange, Recording, plugin_failure_response, run_certificate_phase,
};
use crate::runtime::{LoadError, Plugin, PluginError, Runtime, RuntimeError};
use crate::tls::{TlsPolicy, client_identity, encode_chain};

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
    ) -> Result<Arc<Plugin>, HarnessError> {
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
        plugins: &[Arc<Plugin>],
        scenario: &Scenario,
    ) -> ScenarioReport {
        let chain: Arc<[Arc<Plugin>]> = plugins.iter().cloned().collect();
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
    chain: &Arc<[Arc<Plugin>]>,
    scenario: &ConnectionScenario,
) -> ConnectionReport {
    let mut report = ConnectionReport {
        sni: scenario.sni.clone(),
        client_addr: scenario.client_addr,
        tls: scenario.tls.as_ref().map(|tls| NegotiatedTls {
            version: tls.version.clone(),
            cipher: tls.cipher.clone(),
        }),
        presented_certificates: scenario
            .tls
            .as_ref()
            .and_then(|tls| tls.client_chain.as_ref())
            .map_or(0, Vec::len),
        certificate_trace: Vec::new(),
        plugin_errors: Vec::new(),
        handshake_error: None,
        policy: TlsPolicy::default(),
        client_chain_pem: None,
        client_verify: None,
        requests: Vec::new(),
        expectations: Vec::new(),
    };
    let mut context = Default::default();
    let mut session = None;
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
        if !report.aborted() {
            // Exactly what the acceptor does once the handshake is done.
            let (chain_der, verify) = client_identity(
                &report.policy,
                tls.client_chain.as_deref(),
                tls.client_ca.as_ref(),
            );
            report.client_chain_pem = chain_der.as_deref().map(encode_chain);
            report.client_verify = Some(verify.clone());
            session = Some(TlsSession {
                version: tls.version.clone(),
                cipher: tls.cipher.clone(),
                client_chain_pem: report.client_chain_pem.clone(),
                client_verify: verify,
            });
        }
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
        tls: session,
    });
    for request in &scenario.requests {
        let state = ExchangeState::new(facts.clone(), request_head(request), context.clone());
        let mut result =
            run_request(Exchange::new(chain.clone(), state, Recording::On), request).await;
        result.expectations = check_request(&request.expect, &result);
        report.requests.push(result);
    }
    report
}

/// A response head and body chunks on their way through header_filter and body_filter.
type Pending = (ResponseHead, Vec<Vec<u8>>, ResponseSource);

/// One request through the phases, as the gateway will run it.
async fn run_request(mut exchange: Exchange, request: &RequestScenario) -> RequestReport {
    let mut upstream_request = None;
    let response = match up_to_upstream(&mut exchange, request, &mut upstream_request).await {
        Ok((head, chunks, source)) => match exchange.response_head(head).await {
            Ok(head) => filter_body(&mut exchange, head, chunks, source).await,
            Err(err) => failure_response(&mut exchange, &err),
        },
        Err(err) => failure_response(&mut exchange, &err),
    };
    exchange.log().await;
    let log_tls = exchange.client_verify().and_then(|verify| {
        let tls = exchange.state().connection.tls.as_ref()?;
        Some(TlsLog {
            version: tls.version.clone(),
            cipher: tls.cipher.clone(),
            client_verify: verify.to_string(),
        })
    });
    let (_, trace, plugin_errors) = exchange.finish();
    RequestReport {
        method: request.method.clone(),
        uri: request.uri(),
        trace,
        plugin_errors,
        upstream_request,
        response,
        log_tls,
        expectations: Vec::new(),
    }
}

/// Runs body_filter over each chunk (an empty end-of-stream call when there is none); a failure
/// truncates the body after what was already sent.
async fn filter_body(
    exchange: &mut Exchange,
    head: ResponseHead,
    chunks: Vec<Vec<u8>>,
    source: ResponseSource,
) -> ClientResponse {
    let chunks = if chunks.is_empty() {
        vec![Vec::new()]
    } else {
        chunks
    };
    let last = chunks.len() - 1;
    let mut body = Vec::new();
    let mut truncated = false;
    for (index, chunk) in chunks.into_iter().enumerate() {
        match exchange
            .body_filter(Bytes::from(chunk), index == last)
            .await
        {
            Ok(out) => body.extend_from_slice(&out),
            Err(_) => {
                truncated = true;
                break;
            }
        }
    }
    ClientResponse {
        status: head.status,
        headers: header_pairs(&head.headers),
        body,
        source,
        truncated,
    }
}

/// rewrite, access, then (unless a plugin answered) balancer and the simulated upstream.
async fn up_to_upstream(
    exchange: &mut Exchange,
    request: &RequestScenario,
    upstream_request: &mut Option<UpstreamRequest>,
) -> Result<Pending, PluginError> {
    if let Decision::Respond(early) = exchange.request_phases().await? {
        let head = ResponseHead {
            status: early.status,
            headers: early.headers,
        };
        return Ok((head, vec![early.body], ResponseSource::PluginExit));
    }
    let targets: Arc<[Target]> = request.targets.iter().cloned().collect();
    let proposed = request
        .targets
        .first()
        .cloned()
        .unwrap_or_else(default_target);
    let target = exchange.balancer(targets, proposed, 1).await?;
    let head = &exchange.state().request;
    *upstream_request = Some(UpstreamRequest {
        target,
        method: head.method.clone(),
        uri: match &head.query {
            Some(query) => format!("{}?{query}", head.path),
            None => head.path.clone(),
        },
        headers: header_pairs(&head.headers),
    });
    let head = ResponseHead {
        status: request.upstream.status,
        headers: header_map(&request.upstream.headers),
    };
    Ok((
        head,
        request.upstream.body.clone(),
        ResponseSource::Upstream,
    ))
}

/// The gateway's 500 after a fail-closed failure; log-phase plugins see it as the response.
fn failure_response(exchange: &mut Exchange, err: &PluginError) -> ClientResponse {
    let phase = err.phase().unwrap_or(Phase::Rewrite);
    let (head, body) = plugin_failure_response(err);
    exchange.state_mut().response = Some(head.clone());
    ClientResponse {
        status: head.status,
        headers: header_pairs(&head.headers),
        body: body.to_vec(),
        source: ResponseSource::PluginFailure(phase),
        truncated: false,
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
