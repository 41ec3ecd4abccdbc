//! Runs plugin phases over one connection and its requests. The gateway and the offline harness
//! both drive this code, so a plugin behaves the same in `tollgate test` as in production.
//!
//! Plugins run in chain order. A plugin is instantiated when the request reaches the first phase
//! it handles, and its instance is dropped right after the last one (balancer, which a retry runs
//! again, ends when the next phase starts; body_filter at the end of the stream), so it does not
//! hold its slot and memory through the rest of the response; a failed call drops it too, so a
//! later phase gets a fresh one. A failure of a fail-closed plugin stops the phase and is returned; a fail-open plugin's
//! failure is recorded and skipped.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};
use tollgate_phases::{Phase, PhaseSet, Target};

use crate::exchange::{Context, EarlyResponse, ExchangeState, HandshakeState, ResponseHead};
use crate::runtime::{
    HostCall, LoadedPlugin, PhaseCall, PluginError, PluginFault, PluginInstance, Stage,
};
use crate::tls::{ClientVerify, TlsPolicy};

/// One plugin's phase call, as the harness reports it.
#[derive(Debug, Clone)]
pub struct TraceEntry {
    /// The plugin's name.
    pub plugin: String,
    /// The phase.
    pub phase: Phase,
    /// Its host calls, in order.
    pub calls: Vec<HostCall>,
    /// Its failure, if it failed.
    pub error: Option<PluginError>,
}

/// Whether to record host calls (the harness does; the gateway does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recording {
    /// Record nothing.
    #[default]
    Off,
    /// Record every host call of every plugin.
    On,
}

/// What the certificate phase decided for a connection.
#[derive(Debug, Clone, Default)]
pub struct CertificateOutcome {
    /// Client certificate request, CA names, session reuse.
    pub policy: TlsPolicy,
    /// The connection's context, seeding each request's.
    pub context: Context,
    /// Failures of fail-open plugins, which were skipped.
    pub skipped_failures: Vec<PluginError>,
    /// Per-plugin host calls, when recorded.
    pub trace: Vec<TraceEntry>,
}

/// Runs the certificate phase of the plugins that handle it. An error from a fail-closed plugin
/// aborts the handshake.
pub async fn run_certificate_phase(
    plugins: &[Arc<LoadedPlugin>],
    client_addr: SocketAddr,
    sni: Option<String>,
    recording: Recording,
) -> Result<CertificateOutcome, (PluginError, Vec<TraceEntry>)> {
    let mut state = HandshakeState {
        client_addr,
        sni,
        policy: TlsPolicy::default(),
        context: Context::new(),
    };
    let mut outcome = CertificateOutcome::default();
    let record = recording == Recording::On;
    for plugin in plugins.iter().filter(|p| p.handles(Phase::Certificate)) {
        let started = std::time::Instant::now();
        let result = match plugin.instantiate(record).await {
            Ok(mut instance) => {
                let result = instance.call_handshake(&mut state).await;
                if record {
                    outcome.trace.push(trace(
                        plugin,
                        Phase::Certificate,
                        instance.take_calls(),
                        &result,
                    ));
                }
                result
            }
            Err(err) => {
                let result = Err(err);
                if record {
                    outcome
                        .trace
                        .push(trace(plugin, Phase::Certificate, Vec::new(), &result));
                }
                result
            }
        };
        if let Some(metrics) = crate::metrics::get() {
            metrics.plugin_call(plugin.name(), Phase::Certificate, started.elapsed());
        }
        if let Err(err) = result {
            report_failure(&err, Some(client_addr));
            if !plugin.fail_open() || err.is_capacity() {
                return Err((err, outcome.trace));
            }
            outcome.skipped_failures.push(err);
        }
    }
    outcome.policy = state.policy;
    outcome.context = state.context;
    Ok(outcome)
}

/// Tells the operator, at warn and rate-limited per plugin and kind, that a plugin call failed.
fn report_failure(err: &PluginError, client: Option<SocketAddr>) {
    if let Some(metrics) = crate::metrics::get() {
        let kind = match err.kind() {
            // No instance slot: the call was rejected at the door.
            "at_capacity" => "rejected",
            kind => kind,
        };
        metrics.plugin_failure(&err.plugin, kind);
    }
    crate::alerts::warn_plugin(
        &err.plugin,
        err.kind(),
        format_args!(
            "{err} (client {})",
            client.map_or_else(|| "-".to_owned(), |addr| addr.to_string())
        ),
    );
}

fn trace(
    plugin: &LoadedPlugin,
    phase: Phase,
    calls: Vec<HostCall>,
    result: &Result<(), PluginError>,
) -> TraceEntry {
    TraceEntry {
        plugin: plugin.name().to_string(),
        phase,
        calls,
        error: result.as_ref().err().cloned(),
    }
}

/// What rewrite and access decided for a request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Go on to balancer and the upstream.
    Proxy,
    /// A plugin answered; the upstream is skipped (header_filter, body_filter and log still run).
    Respond(EarlyResponse),
}

/// Kong's answer when a plugin fails closed: status, content type and body.
pub const PLUGIN_FAILURE: (u16, &str, &str) = (
    500,
    "application/json; charset=utf-8",
    r#"{"message":"An unexpected error occurred"}"#,
);

/// The answer when the gateway has no room for a request's plugins (no instance slot, or the
/// plugin memory budget spent): status, seconds for `Retry-After`, body.
pub const AT_CAPACITY: (u16, u32, &str) = (
    503,
    1,
    r#"{"message":"The gateway is at capacity, retry later"}"#,
);

/// The response head and body the client gets when a plugin fails closed: Kong's 500, or a 503
/// with `Retry-After` when the gateway, not the plugin, ran out of room.
pub fn plugin_failure_response(err: &PluginError) -> (ResponseHead, Bytes) {
    let (_, content_type, _) = PLUGIN_FAILURE;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let (status, body) = if err.is_capacity() {
        let (status, retry_after, body) = AT_CAPACITY;
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        (status, body)
    } else {
        (PLUGIN_FAILURE.0, PLUGIN_FAILURE.2)
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    (
        ResponseHead { status, headers },
        Bytes::from_static(body.as_bytes()),
    )
}

/// One request's run through the plugin phases.
#[derive(Debug)]
pub struct Exchange {
    plugins: Arc<[Arc<LoadedPlugin>]>,
    instances: Vec<Option<PluginInstance>>,
    /// Lent to each plugin call by swapping it into the instance's store and back.
    state: ExchangeState,
    recording: Recording,
    trace: Vec<TraceEntry>,
    failures: Vec<PluginError>,
}

impl Exchange {
    /// Starts a request through `plugins` (already ordered and scoped for its route).
    pub fn new(
        plugins: Arc<[Arc<LoadedPlugin>]>,
        state: ExchangeState,
        recording: Recording,
    ) -> Self {
        let instances = plugins.iter().map(|_| None).collect();
        Exchange {
            plugins,
            instances,
            state,
            recording,
            trace: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The request's state.
    pub fn state(&self) -> &ExchangeState {
        &self.state
    }

    /// The request's state, to change from the host side.
    pub fn state_mut(&mut self) -> &mut ExchangeState {
        &mut self.state
    }

    /// Whether any plugin of the chain handles `phase`.
    pub fn has_phase(&self, phase: Phase) -> bool {
        self.plugins.iter().any(|plugin| plugin.handles(phase))
    }

    /// Every plugin failure so far, including skipped fail-open ones.
    pub fn failures(&self) -> &[PluginError] {
        &self.failures
    }

    /// The recorded host calls so far.
    pub fn trace(&self) -> &[TraceEntry] {
        &self.trace
    }

    /// The log's `client_verify`: the last override, else the handshake's. `None` on plaintext.
    pub fn client_verify(&self) -> Option<ClientVerify> {
        self.state().logged_client_verify()
    }

    /// Admission: whether the runtime has an instance slot for every plugin of the chain that
    /// runs in a request phase. Checked before any plugin runs, so a gateway at capacity
    /// answers 503 at once instead of failing plugin after plugin.
    pub fn admit(&self) -> Result<(), PluginError> {
        let needing: Vec<&Arc<LoadedPlugin>> = self
            .plugins
            .iter()
            .filter(|plugin| plugin.phases().intersects(PhaseSet::REQUEST))
            .collect();
        let Some(first) = needing.first() else {
            return Ok(());
        };
        let capacity = first.capacity();
        if capacity.has_room_for(needing.len()) {
            return Ok(());
        }
        let err = PluginError {
            plugin: first.name().to_owned(),
            stage: Stage::Instantiate,
            fault: PluginFault::AtCapacity(capacity.limits().max_instances),
        };
        report_failure(&err, Some(self.state().connection.client_addr));
        Err(err)
    }

    /// Admits the request, then runs rewrite, then access unless a plugin already answered.
    /// The gateway and the harness both start a request here.
    pub async fn request_phases(&mut self) -> Result<Decision, PluginError> {
        if let Err(err) = self.admit() {
            self.failures.push(err.clone());
            return Err(err);
        }
        self.rewrite().await?;
        if self.state().exit.is_none() {
            self.access().await?;
        }
        Ok(match self.state_mut().exit.take() {
            Some(mut exit) => {
                exit.headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(exit.body.len()));
                Decision::Respond(exit)
            }
            None => Decision::Proxy,
        })
    }

    /// Runs header_filter over the response head; when the chain filters bodies, the length
    /// is dropped (plugins may change it) and the body goes out chunked.
    pub async fn response_head(&mut self, head: ResponseHead) -> Result<ResponseHead, PluginError> {
        let mut head = self.header_filter(head).await?;
        if self.has_phase(Phase::BodyFilter) {
            head.headers.remove(CONTENT_LENGTH);
        }
        Ok(head)
    }

    /// Runs rewrite. Stops early when a plugin answers the request.
    pub async fn rewrite(&mut self) -> Result<(), PluginError> {
        self.run(Phase::Rewrite, None).await.map(drop)
    }

    /// Runs access. Stops early when a plugin answers the request.
    pub async fn access(&mut self) -> Result<(), PluginError> {
        self.run(Phase::Access, None).await.map(drop)
    }

    /// The response a plugin gave in rewrite or access, if any.
    pub fn early_response(&self) -> Option<&EarlyResponse> {
        self.state().exit.as_ref()
    }

    /// Runs balancer for attempt `attempt` (1 for the first try) among `targets`, proposing
    /// `proposed`; returns the target to use (a plugin may have chosen another).
    pub async fn balancer(
        &mut self,
        targets: Arc<[Target]>,
        proposed: Target,
        attempt: u32,
    ) -> Result<Target, PluginError> {
        {
            let balancer = &mut self.state_mut().balancer;
            balancer.targets = targets;
            balancer.target = Some(proposed.clone());
            balancer.attempt = attempt;
        }
        self.run(Phase::Balancer, None).await?;
        Ok(self.state().balancer.target.clone().unwrap_or(proposed))
    }

    /// Runs header_filter over the response head and returns it as plugins left it.
    pub async fn header_filter(&mut self, head: ResponseHead) -> Result<ResponseHead, PluginError> {
        self.state_mut().response = Some(head);
        self.run(Phase::HeaderFilter, None).await?;
        Ok(self.state().response.clone().unwrap_or_default())
    }

    /// Runs body_filter over one chunk; each plugin sees the previous one's output.
    pub async fn body_filter(
        &mut self,
        chunk: Bytes,
        end_of_stream: bool,
    ) -> Result<Bytes, PluginError> {
        self.run(Phase::BodyFilter, Some((chunk, end_of_stream)))
            .await
            .map(|chunk| chunk.unwrap_or_default())
    }

    /// Runs log. Failures are recorded (and reported), never returned: the response is
    /// already sent.
    pub async fn log(&mut self) {
        let _ = self.run(Phase::Log, None).await;
    }

    /// The request's final state, trace and failures.
    pub fn finish(self) -> (ExchangeState, Vec<TraceEntry>, Vec<PluginError>) {
        (self.state, self.trace, self.failures)
    }

    async fn run(
        &mut self,
        phase: Phase,
        mut body: Option<(Bytes, bool)>,
    ) -> Result<Option<Bytes>, PluginError> {
        self.drop_instances_finished_before(phase);
        for index in 0..self.plugins.len() {
            let plugin = self.plugins[index].clone();
            if !plugin.handles(phase) {
                continue;
            }
            if matches!(phase, Phase::Rewrite | Phase::Access) && self.state().exit.is_some() {
                break;
            }
            let result = self.call(index, phase, body.as_ref()).await;
            if let (Ok(()), Some((chunk, _))) = (&result, body.as_mut())
                && let Some(replacement) = self.state_mut().body_chunk.take()
            {
                *chunk = Bytes::from(replacement);
            }
            if let Err(err) = result {
                report_failure(&err, Some(self.state().connection.client_addr));
                self.failures.push(err.clone());
                if !plugin.fail_open() || err.is_capacity() {
                    return Err(err);
                }
            }
        }
        Ok(body.map(|(chunk, _)| chunk))
    }

    async fn call(
        &mut self,
        index: usize,
        phase: Phase,
        body: Option<&(Bytes, bool)>,
    ) -> Result<(), PluginError> {
        let plugin = self.plugins[index].clone();
        let started = std::time::Instant::now();
        let result = self.call_timed(&plugin, index, phase, body).await;
        if let Some(metrics) = crate::metrics::get() {
            metrics.plugin_call(plugin.name(), phase, started.elapsed());
        }
        result
    }

    async fn call_timed(
        &mut self,
        plugin: &Arc<LoadedPlugin>,
        index: usize,
        phase: Phase,
        body: Option<&(Bytes, bool)>,
    ) -> Result<(), PluginError> {
        let plugin = plugin.clone();
        let record = self.recording == Recording::On;
        let mut instance = match self.instances[index].take() {
            Some(instance) => instance,
            None => match plugin.instantiate(record).await {
                Ok(instance) => instance,
                Err(err) => {
                    let result = Err(err);
                    if record {
                        self.trace.push(trace(&plugin, phase, Vec::new(), &result));
                    }
                    return result;
                }
            },
        };
        let call = match body {
            Some((chunk, end_of_stream)) => PhaseCall::BodyFilter {
                chunk,
                end_of_stream: *end_of_stream,
            },
            None => PhaseCall::Plain(phase),
        };
        let result = instance.call_exchange(call, &mut self.state).await;
        if record {
            self.trace
                .push(trace(&plugin, phase, instance.take_calls(), &result));
        }
        // A failed instance cannot be entered again; the next phase makes a fresh one.
        if result.is_ok() && !finished_with(&plugin, phase, body) {
            self.instances[index] = Some(instance);
        }
        result
    }

    /// Drops the instances of plugins whose last phase came before `phase`.
    fn drop_instances_finished_before(&mut self, phase: Phase) {
        for (plugin, instance) in self.plugins.iter().zip(self.instances.iter_mut()) {
            if instance.is_some() && last_phase(plugin).is_some_and(|last| last < phase) {
                *instance = None;
            }
        }
    }
}

/// The last phase `plugin` handles.
fn last_phase(plugin: &LoadedPlugin) -> Option<Phase> {
    plugin.phases().iter().max()
}

/// Whether `plugin` needs no instance after this call of `phase`: it was its last phase and the
/// phase does not come again (a retry runs balancer again; body_filter runs until the end of the
/// stream).
fn finished_with(plugin: &LoadedPlugin, phase: Phase, body: Option<&(Bytes, bool)>) -> bool {
    last_phase(plugin) == Some(phase)
        && match phase {
            Phase::Balancer => false,
            Phase::BodyFilter => body.is_none_or(|(_, end_of_stream)| *end_of_stream),
            _ => true,
        }
}
