//! The data of one plugin instance's store: sandboxed WASI, limits, and the state lent for the
//! current call.

use std::fmt;
use std::sync::Arc;

use tollgate_phases::Phase;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::engine::MAX_TABLE_ELEMENTS;
use super::output::PluginOutput;
use crate::exchange::{ExchangeState, HandshakeState};

/// The state a call works on, lent by the pipeline for one call and taken back after it.
#[derive(Debug, Default)]
pub enum Scope {
    /// Nothing lent (configure, or between calls).
    #[default]
    Idle,
    /// The certificate phase of a connection.
    Handshake(Box<HandshakeState>),
    /// A request phase.
    Exchange(Box<ExchangeState>),
}

/// One host call a plugin made, as the offline harness reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCall {
    /// The phase the call was made in.
    pub phase: Phase,
    /// `interface.function`, as in the WIT.
    pub function: &'static str,
    /// The arguments, rendered for people.
    pub args: String,
    /// `ok`, `ok: <value>` or `error: <message>`.
    pub result: String,
}

impl fmt::Display for HostCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}) -> {}", self.function, self.args, self.result)
    }
}

/// Caps an instance's memories; remembers when it refused, so the failure can be named.
#[derive(Debug)]
pub struct MemoryCap {
    limit: usize,
    exceeded: bool,
}

impl MemoryCap {
    /// A cap of `limit` bytes per linear memory.
    pub fn new(limit: usize) -> Self {
        MemoryCap {
            limit,
            exceeded: false,
        }
    }

    /// The cap, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a growth was refused.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // An error (not `Ok(false)`) traps the guest here instead of letting it fail later
            // on an unexpected allocation failure.
            wasmtime::bail!("memory limit of {} bytes exceeded", self.limit);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The data of a plugin instance's [`Store`].
pub struct PluginStore {
    pub(super) plugin: Arc<str>,
    /// `None` while `configure` runs.
    pub(super) phase: Option<Phase>,
    pub(super) scope: Scope,
    pub(super) calls: Option<Vec<HostCall>>,
    pub(super) memory: MemoryCap,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl fmt::Debug for PluginStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginStore")
            .field("plugin", &self.plugin)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl PluginStore {
    /// A store for `plugin`: no files, no network, no environment, no real clock; stdout and
    /// stderr go to the host log tagged with the plugin.
    pub fn new(plugin: Arc<str>, memory_limit: usize, record_calls: bool) -> PluginStore {
        let wasi = WasiCtxBuilder::new()
            .stdout(PluginOutput::new(plugin.clone(), "stdout"))
            .stderr(PluginOutput::new(plugin.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(super::output::FrozenClock)
            .monotonic_clock(super::output::FrozenClock)
            .build();
        PluginStore {
            plugin,
            phase: None,
            scope: Scope::Idle,
            calls: record_calls.then(Vec::new),
            memory: MemoryCap::new(memory_limit),
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Takes the host calls recorded so far.
    pub fn take_calls(&mut self) -> Vec<HostCall> {
        self.calls.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

impl WasiView for PluginStore {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Wires the memory cap into `store`.
pub fn install_limiter(store: &mut Store<PluginStore>) {
    store.limiter(|data| &mut data.memory);
}
