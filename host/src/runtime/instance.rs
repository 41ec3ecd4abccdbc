//! One live plugin instance: a fresh store, the plugin configured in it, and calls into it
//! under the plugin's deadline and memory cap.

use std::sync::Arc;

use tollgate_phases::Phase;
use wasmtime::component::Instance;
use wasmtime::{Store, Trap};

use super::PreparedPlugin;
use super::bindings::{self, WitPhase};
use super::capacity::InstanceSlot;
use super::error::{PluginError, PluginFault, Stage};
use super::store::{
    Budget, HostCall, InstanceMemory, Lending, MemoryRefusal, PluginStore, begin_call, end_call,
    install_limits, within_deadline,
};
use crate::exchange::{ExchangeState, HandshakeState};

/// A plugin instance for one connection's certificate phase or one request's phases. After a
/// failed call it must not be entered again: callers drop it and make a new one if needed.
pub struct PluginInstance {
    plugin: Arc<PreparedPlugin>,
    store: Store<PluginStore>,
    bindings: bindings::PluginWorld,
    /// The pool slot this instance holds until it is dropped.
    _slot: InstanceSlot,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

/// A phase handler's input.
#[derive(Debug)]
pub enum PhaseCall<'a> {
    /// Any phase but body_filter.
    Plain(Phase),
    /// A body chunk.
    BodyFilter {
        /// The chunk.
        chunk: &'a [u8],
        /// Whether it is the last.
        end_of_stream: bool,
    },
}

impl PhaseCall<'_> {
    fn phase(&self) -> Phase {
        match self {
            PhaseCall::Plain(phase) => *phase,
            PhaseCall::BodyFilter { .. } => Phase::BodyFilter,
        }
    }
}

impl PluginInstance {
    /// A fresh instance of `plugin`, configured: it starts from the configured snapshot when
    /// the plugin has one, else `configure` runs in it first.
    pub(super) async fn new(
        plugin: Arc<PreparedPlugin>,
        record_calls: bool,
        budget: Budget,
    ) -> Result<Self, PluginError> {
        let (mut store, slot) = new_store(&plugin, record_calls, budget)?;
        let pre = &plugin.pre;
        let instantiated =
            within_deadline(&mut store, async |store| pre.instantiate_async(store).await).await;
        let bindings = match instantiated {
            Ok(bindings) => bindings,
            Err(err) => {
                let fault = classify(&store, &plugin, err, PluginFault::Instantiate);
                return Err(plugin.error(Stage::Instantiate, fault));
            }
        };
        let starts_configured = plugin.starts_configured();
        let mut instance = PluginInstance {
            plugin,
            store,
            bindings,
            _slot: slot,
        };
        if !starts_configured {
            instance.configure().await?;
        }
        Ok(instance)
    }

    /// A fresh instance of `plugin`'s (instrumented) image, configured, with the handle wizer
    /// reads its state through.
    pub(super) async fn configured_for_snapshot(
        plugin: &Arc<PreparedPlugin>,
    ) -> Result<(Self, Instance), PluginError> {
        let (mut store, slot) = new_store(plugin, false, Budget::Loading)?;
        let pre = &plugin.pre;
        let instantiated = within_deadline(&mut store, async |store| {
            let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
            let bindings = pre.bindings(&mut *store, &instance)?;
            Ok((instance, bindings))
        })
        .await;
        let (raw, bindings) = match instantiated {
            Ok(instantiated) => instantiated,
            Err(err) => {
                let fault = classify(&store, plugin, err, PluginFault::Instantiate);
                return Err(plugin.error(Stage::Instantiate, fault));
            }
        };
        let mut instance = PluginInstance {
            plugin: plugin.clone(),
            store,
            bindings,
            _slot: slot,
        };
        instance.configure().await?;
        Ok((instance, raw))
    }

    /// The instance's store.
    pub(super) fn store_mut(&mut self) -> &mut Store<PluginStore> {
        &mut self.store
    }

    async fn configure(&mut self) -> Result<(), PluginError> {
        self.store.data_mut().phase = None;
        begin_call(&mut self.store);
        let handler = self.bindings.tollgate_plugin_handler();
        let config = &self.plugin.config_json;
        let result = within_deadline(&mut self.store, async |store| {
            handler.call_configure(store, config).await
        })
        .await;
        self.end_call(None);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(self
                .plugin
                .error(Stage::Configure, PluginFault::ConfigRejected(message))),
            Err(err) => {
                let fault = classify(&self.store, &self.plugin, err, PluginFault::Trap);
                Err(self.plugin.error(Stage::Configure, fault))
            }
        }
    }

    /// The phases the plugin says it handles.
    pub async fn declared_phases(&mut self) -> Result<Vec<Phase>, PluginError> {
        begin_call(&mut self.store);
        let handler = self.bindings.tollgate_plugin_handler();
        let result = within_deadline(&mut self.store, async |store| {
            handler.call_phases(store).await
        })
        .await;
        self.end_call(None);
        match result {
            Ok(phases) => Ok(phases.into_iter().map(Phase::from).collect()),
            Err(err) => {
                let fault = classify(&self.store, &self.plugin, err, PluginFault::Trap);
                Err(self.plugin.error(Stage::Configure, fault))
            }
        }
    }

    /// Runs the certificate phase with the connection's `state` lent to it.
    pub async fn call_handshake(&mut self, state: &mut HandshakeState) -> Result<(), PluginError> {
        let data = self.store.data_mut();
        data.swap_handshake(state);
        data.lending = Lending::Handshake;
        let result = self.call(PhaseCall::Plain(Phase::Certificate)).await;
        let data = self.store.data_mut();
        data.lending = Lending::Nothing;
        data.swap_handshake(state);
        result
    }

    /// Runs one request phase handler with the request's `state` lent to it.
    pub async fn call_exchange(
        &mut self,
        call: PhaseCall<'_>,
        state: &mut ExchangeState,
    ) -> Result<(), PluginError> {
        let data = self.store.data_mut();
        data.swap_exchange(state);
        data.lending = Lending::Exchange;
        let result = self.call(call).await;
        let data = self.store.data_mut();
        data.lending = Lending::Nothing;
        data.swap_exchange(state);
        result
    }

    /// Runs one phase handler on whatever the caller lent.
    async fn call(&mut self, call: PhaseCall<'_>) -> Result<(), PluginError> {
        let phase = call.phase();
        self.store.data_mut().phase = Some(phase);
        begin_call(&mut self.store);
        let handler = self.bindings.tollgate_plugin_handler();
        let result = within_deadline(&mut self.store, async |store| match call {
            PhaseCall::Plain(Phase::Certificate) => handler.call_on_certificate(store).await,
            PhaseCall::Plain(Phase::Rewrite) => handler.call_on_rewrite(store).await,
            PhaseCall::Plain(Phase::Access) => handler.call_on_access(store).await,
            PhaseCall::Plain(Phase::Balancer) => handler.call_on_balancer(store).await,
            PhaseCall::Plain(Phase::HeaderFilter) => handler.call_on_header_filter(store).await,
            PhaseCall::Plain(Phase::BodyFilter) => {
                handler.call_on_body_filter(store, &[], true).await
            }
            PhaseCall::Plain(Phase::Log) => handler.call_on_log(store).await,
            PhaseCall::BodyFilter {
                chunk,
                end_of_stream,
            } => {
                handler
                    .call_on_body_filter(store, chunk, end_of_stream)
                    .await
            }
        })
        .await;
        self.end_call(Some(phase));
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(PluginFault::Failed(message)),
            Err(err) => Err(classify(&self.store, &self.plugin, err, PluginFault::Trap)),
        };
        outcome.map_err(|fault| self.plugin.error(Stage::Phase(phase), fault))
    }

    /// Ends a call (see [`end_call`]) and says, rate-limited, when the call wrote more output
    /// than it may.
    fn end_call(&mut self, phase: Option<Phase>) {
        end_call(&mut self.store);
        let dropped = self.store.data().output.take_dropped();
        if dropped > 0 {
            let phase = phase.map_or("configure", Phase::name);
            crate::alerts::warn_plugin(
                &self.plugin.name,
                "output_dropped",
                format_args!(
                    "plugin {} wrote more than {} bytes of output in one {phase} call; \
                     {dropped} bytes were dropped",
                    self.plugin.name,
                    super::engine::MAX_OUTPUT_PER_CALL
                ),
            );
        }
    }

    /// The size of the instance's largest linear memory (see [`InstanceMemory::largest_memory`]).
    pub fn largest_memory(&self) -> usize {
        self.store.data().memory.largest_memory()
    }

    /// Takes the host calls recorded so far (when recording was asked for).
    pub fn take_calls(&mut self) -> Vec<HostCall> {
        self.store.data_mut().take_calls()
    }
}

/// A store for one instance of `plugin`, holding one of the runtime's instance slots.
fn new_store(
    plugin: &PreparedPlugin,
    record_calls: bool,
    budget: Budget,
) -> Result<(Store<PluginStore>, InstanceSlot), PluginError> {
    let Some(slot) = plugin.capacity.try_slot() else {
        let slots = plugin.capacity.limits().max_instances;
        return Err(plugin.error(Stage::Instantiate, PluginFault::AtCapacity(slots)));
    };
    let memory = InstanceMemory::new(plugin.memory_limit, plugin.capacity.clone());
    let data = PluginStore::new(
        plugin.name.clone(),
        memory,
        plugin.time_limit,
        plugin.quarantine.clone(),
        record_calls,
        budget,
    );
    let mut store = Store::new(plugin.pre.engine(), data);
    install_limits(&mut store);
    begin_call(&mut store);
    Ok((store, slot))
}

/// Names what stopped a call: the deadline, the memory cap, or another trap.
fn classify(
    store: &Store<PluginStore>,
    plugin: &PreparedPlugin,
    err: wasmtime::Error,
    other: fn(String) -> PluginFault,
) -> PluginFault {
    if let Some(refusal) = store.data().memory.refused() {
        match refusal {
            MemoryRefusal::InstanceCap(limit) => PluginFault::MemoryLimit(limit),
            MemoryRefusal::ProcessBudget(budget) => PluginFault::MemoryBudget(budget),
        }
    } else if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        PluginFault::Timeout(plugin.time_limit)
    } else if let Some(trap) = err.downcast_ref::<Trap>() {
        other(trap.to_string())
    } else {
        other(err.to_string())
    }
}

impl From<Phase> for WitPhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Certificate => WitPhase::Certificate,
            Phase::Rewrite => WitPhase::Rewrite,
            Phase::Access => WitPhase::Access,
            Phase::Balancer => WitPhase::Balancer,
            Phase::HeaderFilter => WitPhase::HeaderFilter,
            Phase::BodyFilter => WitPhase::BodyFilter,
            Phase::Log => WitPhase::Log,
        }
    }
}
