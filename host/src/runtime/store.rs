//! The data of one plugin instance's store: sandboxed WASI, limits, and the slots the caller's
//! state is lent into for one call.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use tollgate_phases::Phase;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::call_cpu::{CallCpu, Reading};
use super::capacity::Capacity;
use super::engine::{LOAD_WAIT_GRACE, MAX_TABLE_ELEMENTS, TABLE_ELEMENT_BYTES, WAIT_GRACE};
use super::output::{OutputBudget, PluginOutput};
use super::slow_lane::{LaneTurn, Quarantine, rest_after_turn};
use super::ticker;
use crate::exchange::{ConnectionFacts, Context, ExchangeState, HandshakeState, RequestHead};
use crate::tls::TlsPolicy;

/// The rules a store's calls run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Serving traffic: a call that uses more CPU than a real plugin call takes runs in the
    /// [slow lane](super::slow_lane), which ends it at its time limit in wall time, so a looping
    /// plugin cannot take the CPU from healthy requests.
    Serving,
    /// Loading a plugin (instantiating it, `configure` for its snapshot, asking its phases): no
    /// traffic waits on these calls, and a loaded machine must not fail a healthy plugin's load,
    /// so they run at full speed until they have used their time limit in CPU time.
    Loading,
}

/// What the current call has been lent: set by [`PluginInstance::call_handshake`] and
/// [`PluginInstance::call_exchange`] for the length of one call.
///
/// [`PluginInstance::call_handshake`]: super::PluginInstance::call_handshake
/// [`PluginInstance::call_exchange`]: super::PluginInstance::call_exchange
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lending {
    /// Nothing (configure, or between calls).
    Nothing,
    /// A connection's certificate phase.
    Handshake,
    /// A request phase.
    Exchange,
}

/// The state a host function works on, borrowed from the store for that function only.
#[derive(Debug)]
pub(super) enum Lent<'a> {
    /// Nothing is lent.
    Nothing,
    /// The certificate phase of a connection.
    Handshake(&'a mut HandshakeState),
    /// A request phase.
    Exchange(&'a mut ExchangeState),
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

/// Why a memory or table could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRefusal {
    /// Past the instance's own cap.
    InstanceCap(usize),
    /// Past the process-wide budget of all live instances.
    ProcessBudget(usize),
}

/// Counts every linear memory and table of one instance against its cap and against the
/// process-wide budget; gives the instance's bytes back to the budget when dropped.
#[derive(Debug)]
pub struct InstanceMemory {
    limit: usize,
    used: usize,
    /// The size of the largest linear memory, as last grown.
    largest_memory: usize,
    capacity: Arc<Capacity>,
    refused: Option<MemoryRefusal>,
}

impl InstanceMemory {
    /// A cap of `limit` bytes for all memories and tables of an instance together.
    pub fn new(limit: usize, capacity: Arc<Capacity>) -> Self {
        InstanceMemory {
            limit,
            used: 0,
            largest_memory: 0,
            capacity,
            refused: None,
        }
    }

    /// Why a growth was refused, if one was.
    pub fn refused(&self) -> Option<MemoryRefusal> {
        self.refused
    }

    /// The size of the instance's largest linear memory: right after instantiation, the size
    /// its image starts with.
    pub fn largest_memory(&self) -> usize {
        self.largest_memory
    }

    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current);
        let total = self.used.saturating_add(delta);
        let refusal = if total > self.limit {
            Some(MemoryRefusal::InstanceCap(self.limit))
        } else if !self.capacity.reserve_memory(delta) {
            Some(MemoryRefusal::ProcessBudget(
                self.capacity.limits().memory_budget,
            ))
        } else {
            None
        };
        match refusal {
            None => {
                self.used = total;
                Ok(true)
            }
            Some(refusal) => {
                self.refused = Some(refusal);
                // An error (not `Ok(false)`) traps the guest here instead of letting it fail
                // later on an unexpected allocation failure, and lets the host name the cause.
                match refusal {
                    MemoryRefusal::InstanceCap(limit) => {
                        wasmtime::bail!("memory limit of {limit} bytes exceeded")
                    }
                    MemoryRefusal::ProcessBudget(budget) => {
                        wasmtime::bail!("process-wide plugin memory budget of {budget} bytes spent")
                    }
                }
            }
        }
    }
}

impl Drop for InstanceMemory {
    fn drop(&mut self) {
        self.capacity.release_memory(self.used);
    }
}

impl ResourceLimiter for InstanceMemory {
    // Also called when a memory or table is first created (with `current` 0), so the initial
    // sizes count too.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = self.grow(current, desired)?;
        if grown {
            self.largest_memory = self.largest_memory.max(desired);
        }
        Ok(grown)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }
}

/// The data of a plugin instance's [`Store`].
pub struct PluginStore {
    pub(super) plugin: Arc<str>,
    /// `None` while `configure` runs.
    pub(super) phase: Option<Phase>,
    /// Which of the two slots below holds the caller's state for the current call.
    pub(super) lending: Lending,
    /// The caller's state is swapped into its slot for one call and swapped back after it, so
    /// giving it back cannot fail. Outside a call the slots hold vacant states that no host
    /// function reaches: [`PluginStore::lent`] shows a slot only while it is lent.
    handshake: HandshakeState,
    exchange: ExchangeState,
    pub(super) calls: Option<Vec<HostCall>>,
    pub(super) memory: InstanceMemory,
    /// What the plugin may still write in this call.
    pub(super) output: Arc<OutputBudget>,
    /// When the current call started, and how long it may run (see [`install_limits`]).
    pub(super) call_started: Instant,
    pub(super) time_limit: Duration,
    budget: Budget,
    /// The CPU time the current call has used: what makes it long-running.
    cpu: CallCpu,
    /// How much CPU time makes the current call long-running (see [`Quarantine::long_call`]).
    long_call: Duration,
    /// The call's hold on the slow lane, once it runs long.
    lane_turn: LaneTurn,
    /// The plugin's quarantine, shared by its instances: started when a call runs out of time.
    quarantine: Arc<Quarantine>,
    /// Whether the current call ran out of time.
    ran_out_of_time: bool,
    /// Whether a call is in flight, as the epoch ticker counts them (from store creation, which
    /// instantiates, to the end of the call).
    in_flight: bool,
    /// Built on the plugin's first WASI call: most instances make none (the SDK's plugins write
    /// nothing to stdout), and building one (its random source seeds from the thread RNG) was 7%
    /// of a request-phase call in the gateway's profile.
    wasi: Option<WasiCtx>,
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
    pub fn new(
        plugin: Arc<str>,
        memory: InstanceMemory,
        time_limit: Duration,
        quarantine: Arc<Quarantine>,
        record_calls: bool,
        budget: Budget,
    ) -> PluginStore {
        PluginStore {
            plugin,
            phase: None,
            lending: Lending::Nothing,
            handshake: vacant_handshake(),
            exchange: vacant_exchange(),
            calls: record_calls.then(Vec::new),
            memory,
            output: Arc::new(OutputBudget::default()),
            call_started: Instant::now(),
            time_limit,
            budget,
            cpu: CallCpu::default(),
            long_call: super::slow_lane::LONG_CALL,
            lane_turn: LaneTurn::default(),
            quarantine,
            ran_out_of_time: false,
            in_flight: false,
            wasi: None,
            table: ResourceTable::new(),
        }
    }

    /// Swaps `state` with the handshake slot: in before a certificate call, out after it.
    pub(super) fn swap_handshake(&mut self, state: &mut HandshakeState) {
        std::mem::swap(&mut self.handshake, state);
    }

    /// Swaps `state` with the request slot: in before a request phase call, out after it.
    pub(super) fn swap_exchange(&mut self, state: &mut ExchangeState) {
        std::mem::swap(&mut self.exchange, state);
    }

    /// The state lent to the current call, borrowed.
    pub(super) fn lent(&mut self) -> Lent<'_> {
        match self.lending {
            Lending::Nothing => Lent::Nothing,
            Lending::Handshake => Lent::Handshake(&mut self.handshake),
            Lending::Exchange => Lent::Exchange(&mut self.exchange),
        }
    }

    /// Whether WASI resources (streams, descriptors) are alive in the host for this instance.
    pub(super) fn holds_host_resources(&self) -> bool {
        !self.table.is_empty()
    }

    /// Takes the host calls recorded so far.
    pub fn take_calls(&mut self) -> Vec<HostCall> {
        self.calls.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

/// The handshake slot's content outside a certificate call.
fn vacant_handshake() -> HandshakeState {
    HandshakeState {
        client_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        sni: None,
        policy: TlsPolicy::default(),
        context: Context::new(),
    }
}

/// The request slot's content outside a request call; its connection is shared by all stores.
fn vacant_exchange() -> ExchangeState {
    static VACANT: OnceLock<Arc<ConnectionFacts>> = OnceLock::new();
    let connection = VACANT.get_or_init(|| {
        Arc::new(ConnectionFacts {
            client_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            sni: None,
            tls: None,
        })
    });
    ExchangeState::new(connection.clone(), RequestHead::default(), Context::new())
}

/// The sandboxed WASI of a plugin: no files, no network, no environment, no real clock; stdout
/// and stderr go to the host log tagged with the plugin, within the call's output allowance.
fn sandboxed_wasi(plugin: &Arc<str>, output: &Arc<OutputBudget>) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(PluginOutput::new(plugin.clone(), "stdout", output.clone()))
        .stderr(PluginOutput::new(plugin.clone(), "stderr", output.clone()))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(super::output::FrozenClock)
        .monotonic_clock(super::output::FrozenClock)
        .build()
}

impl WasiView for PluginStore {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let ctx = self
            .wasi
            .get_or_insert_with(|| sandboxed_wasi(&self.plugin, &self.output));
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

/// Wires the memory cap into `store`, and the time limit. The epoch ticks every
/// [`EPOCH_TICK`](super::engine::EPOCH_TICK); at each tick a running call yields to the async
/// scheduler (so a long call never holds a worker thread), and it traps once it has used its
/// time limit in CPU time, or reached its [wall deadline](wall_deadline). While serving, a call
/// that has used more CPU than a real plugin call takes runs in the [slow lane](super::slow_lane)
/// until its time limit is up in wall time, then traps. A call that runs out of time quarantines
/// its plugin.
pub fn install_limits(store: &mut Store<PluginStore>) {
    store.limiter(|data| &mut data.memory);
    store.epoch_deadline_callback(|mut store| {
        let data = store.data_mut();
        let at = Reading::now();
        let now = at.wall();
        let used = data.cpu.tick(at);
        let long = used >= data.long_call;
        let deadline = data.call_started + data.time_limit;
        Ok(
            if used >= data.time_limit || (long && now >= deadline) || now >= wall_deadline(data) {
                data.ran_out_of_time = true;
                data.quarantine.timed_out(data.phase, now);
                UpdateDeadline::Interrupt
            } else if data.lane_turn.take_fresh() {
                // It has just been given the lane: it runs one tick.
                UpdateDeadline::Continue(1)
            } else if !long {
                // Ticks are process-wide: a short call may meet one moments after it started, or
                // after the OS let it wait; neither is CPU it used.
                let wait = data.cpu.resume_after(tokio::task::yield_now());
                UpdateDeadline::YieldCustom(1, Box::pin(wait))
            } else {
                if data.cpu.found_long() {
                    tracing::debug!(
                        plugin = %data.plugin,
                        phase = data.phase.map_or("configure", Phase::name),
                        cpu_us = used.as_micros(),
                        wall_us = now.saturating_duration_since(data.call_started).as_micros(),
                        "long-running plugin call: it runs in the slow lane"
                    );
                }
                // Back here at once after the wait: with the lane it runs a tick (above); at its
                // deadline it traps without running on.
                let rest = rest_after_turn(data.long_call);
                let wait = data.cpu.resume_after(data.lane_turn.next(deadline, rest));
                UpdateDeadline::YieldCustom(0, Box::pin(wait))
            },
        )
    });
}

/// When the current call fails whatever CPU it used: its time limit plus [`WAIT_GRACE`] after it
/// started ([`LOAD_WAIT_GRACE`] at load).
fn wall_deadline(data: &PluginStore) -> Instant {
    let grace = match data.budget {
        Budget::Serving => WAIT_GRACE,
        Budget::Loading => LOAD_WAIT_GRACE,
    };
    data.call_started + data.time_limit + grace
}

/// Runs `call`, a call into `store`'s instance, until its [wall deadline](wall_deadline). Epoch
/// ticks end a call that runs; this ends one that waits in a host call (a WASI sleep), where no
/// tick reaches it: its future is dropped, which unwinds the guest's stack, and the call ran out
/// of time. Most calls end in their first poll, before any tick: the timer is set only for a call
/// that waits, so theirs costs nothing.
pub async fn within_deadline<T>(
    store: &mut Store<PluginStore>,
    call: impl AsyncFnOnce(&mut Store<PluginStore>) -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let deadline = wall_deadline(store.data());
    let finished = {
        let mut call = std::pin::pin!(call(store));
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            let timer =
                timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    };
    finished.unwrap_or_else(|| {
        let data = store.data_mut();
        data.ran_out_of_time = true;
        data.quarantine.timed_out(data.phase, Instant::now());
        Err(Trap::Interrupt.into())
    })
}

/// Starts the clocks and the output allowance of a call. A call whose phase's last calls all ran
/// out of time meets the epoch callback before it runs anything, and waits there for the lane.
pub fn begin_call(store: &mut Store<PluginStore>) {
    let data = store.data_mut();
    data.call_started = Instant::now();
    data.cpu.start(data.call_started);
    data.lane_turn.release();
    data.ran_out_of_time = false;
    if !std::mem::replace(&mut data.in_flight, true) {
        ticker::call_begins();
    }
    data.long_call = match data.budget {
        Budget::Serving => data.quarantine.long_call(data.phase, data.call_started),
        Budget::Loading => Duration::MAX,
    };
    data.output.refill();
    let first_tick = if data.long_call.is_zero() { 0 } else { 1 };
    store.set_epoch_deadline(first_tick);
}

/// Ends a call: gives the slow lane back, and tells the quarantine whether the call ran out of
/// time.
pub fn end_call(store: &mut Store<PluginStore>) {
    let data = store.data_mut();
    // A call that ran long held the slow lane: others may have it now.
    data.lane_turn.release();
    if !data.ran_out_of_time {
        data.quarantine.ended_in_time(data.phase);
    }
    if std::mem::take(&mut data.in_flight) {
        ticker::call_ends();
    }
}

impl Drop for PluginStore {
    /// A call dropped before its end (its request was cancelled) is no longer in flight.
    fn drop(&mut self) {
        if self.in_flight {
            ticker::call_ends();
        }
    }
}
