//! Engine policy: every wasmtime setting and sandbox limit in one place.

use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

/// How often the epoch advances. Call deadlines are counted in these ticks, so a deadline is
/// honoured to within one tick. A call not yet found long-running runs on at full speed until
/// its next tick, and a looping client sends its next request right after the last one timed
/// out on a tick, so a quarantined looping call runs about a tick before the slow lane holds it:
/// halving the tick from 2 ms halved that. A call of tens of microseconds rarely meets a tick,
/// and the ticker parks while no call is in flight (see `ticker`).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Default per-call time limit of a plugin (see [`WAIT_GRACE`] for what it counts).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);

/// How long past its time limit, in wall time, a call that has not run long may go on before it
/// fails. A call's time limit counts the CPU it uses; the slow lane ends a long-running one at
/// its time limit in wall time. A short call past its limit in wall time was kept waiting: by a
/// loaded machine (a 2-core CI VM once kept a 1 ms `configure` off the CPU past its 100 ms), or
/// by itself, in a host call such as a WASI sleep, where no epoch tick reaches it. The grace
/// forgives the first and bounds the second: such a call holds its request and its instance slot
/// for at most its time limit plus this.
pub const WAIT_GRACE: Duration = Duration::from_millis(500);

/// [`WAIT_GRACE`] for calls at load (instantiation, `configure` for the snapshot, asking a plugin
/// its phases): no request waits on them, and a gateway starting on a machine busy with other
/// work (a CI runner compiling, several gateways starting at once) must not refuse a healthy
/// plugin, so they are forgiven more waiting. A plugin that sleeps in `configure` delays the
/// start or the reload by this much before it is refused.
pub const LOAD_WAIT_GRACE: Duration = Duration::from_secs(5);

/// Default cap on one plugin instance's linear memories, all together.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;

/// The largest memory cap a plugin may be given. Interpreted languages (Python, JavaScript)
/// need tens of MiB; the pooling allocator reserves address space for this much per memory slot.
pub const MAX_MEMORY_LIMIT: usize = 1 << 30;

/// Default number of plugin instances alive at once, across all plugins (one per plugin per
/// in-flight request). Each is a slot of the pooling allocator, reserved up front.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// Largest accepted `max_instances`: each slot reserves address space for its memories.
pub const MAX_INSTANCES: u32 = 10_000;

/// Default budget of linear memory and tables for all live instances together. A request
/// arriving when the budget is spent fails with 503 instead of pushing the host into swap or
/// the OOM killer.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;

/// Bytes counted against a memory cap per table element (a function reference).
pub const TABLE_ELEMENT_BYTES: usize = 8;

/// How much output (log lines, stdout, stderr) one call of a plugin may write; the rest is
/// dropped and counted, so a plugin that logs in a loop cannot flood the host's log.
pub const MAX_OUTPUT_PER_CALL: usize = 16 << 10;

/// Longest log line kept from a plugin; the rest of a longer line is cut.
pub const MAX_LOG_LINE: usize = 4096;

// The bounds on what a plugin hands the host (heads, bodies) are part of the contract, so the
// SDK's mock applies them too.
pub use tollgate_phases::{MAX_HEADER_BYTES, MAX_HEADERS, MAX_PLUGIN_BODY};

/// Core instances in one component. A componentized wasm32-wasip1 module has a handful; a
/// componentize-py component has a few dozen.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;

/// Memories / tables in one component.
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
const MAX_TABLES_PER_COMPONENT: u32 = 64;

/// Table elements in one instance.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Size of the per-instance VM context, which grows with the number of functions and globals.
const MAX_CORE_INSTANCE_SIZE: usize = 4 << 20;

/// Guest stack: deep recursion traps instead of taking the host down.
const MAX_WASM_STACK: usize = 1 << 20;
/// Host stack of the fiber a plugin call runs on; must exceed `MAX_WASM_STACK`.
const ASYNC_STACK: usize = 2 << 20;

/// Bytes at the bottom of each linear memory that a freed slot resets by copying the image back
/// (instead of `madvise`), so the next instance finds them mapped: no page faults for what a
/// plugin touches there on every call. The copy is paid on every drop whether the pages were
/// touched or not (pagemap_scan, which would copy only written pages, is off: see below), so
/// this stays small: it covers a C guest's data and 64 KiB stack; a Rust guest linked with
/// `--stack-first` and a 1 MiB stack touches pages above 1 MiB, which `madvise` resets and the
/// next instance faults in again (a smaller guest stack would bring them under this).
pub const MEMORY_KEEP_RESIDENT: usize = 128 << 10;

/// The same for tables: a componentized plugin's tables are a few KiB, so this covers them.
pub const TABLE_KEEP_RESIDENT: usize = 16 << 10;

/// Freed slots whose pages are returned to the kernel together. Kept at 1 (no batching): a slot
/// waiting in a batch keeps its pages resident after its instance has given its bytes back to
/// the memory budget, so with batches of 16 a few memory hogs left the process holding twice
/// the budget (the sandbox test saw 396 MiB of RSS under a 192 MiB budget). The budget is a
/// promise about RSS; fewer `madvise` calls are not worth breaking it.
pub const DECOMMIT_BATCH: usize = 1;

/// Freed slots kept warm (their image mapped, their resident bytes kept) for the next instance
/// of the same plugin: more than the plugin images a gateway runs, so each stays warm.
pub const WARM_SLOTS: u32 = 256;

/// Address space reserved per memory: 4 GiB plus the guard lets wasmtime drop the bounds check
/// of every load and store of a 32-bit memory. Reserved, not committed; only when the slots
/// asked for would not fit the address space we allow ourselves is the reservation the memory
/// cap instead (bounds checks come back, slots stay affordable).
fn memory_reservation(max_instances: u32) -> u64 {
    const FULL: u64 = 4 << 30;
    const ADDRESS_SPACE: u64 = 32 << 40;
    let memories = u64::from(max_instances) * MEMORIES_PER_INSTANCE as u64;
    if memories * (FULL + DEFAULT_GUARD) <= ADDRESS_SPACE {
        FULL
    } else {
        MAX_MEMORY_LIMIT as u64
    }
}

/// wasmtime's default guard after each memory on 64-bit hosts.
const DEFAULT_GUARD: u64 = 32 << 20;

/// Memory slots per instance slot.
const MEMORIES_PER_INSTANCE: u32 = 2;

/// Builds the process's one engine, its instance pool sized for `max_instances`.
pub fn build_engine(max_instances: u32) -> wasmtime::Result<Engine> {
    let max_instances = max_instances.clamp(1, MAX_INSTANCES);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 8)
        .total_memories(max_instances * MEMORIES_PER_INSTANCE)
        .total_tables(max_instances * 8)
        .total_stacks(max_instances)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memories_per_module(2)
        .max_tables_per_module(8)
        .max_core_instance_size(MAX_CORE_INSTANCE_SIZE)
        .max_component_instance_size(MAX_CORE_INSTANCE_SIZE)
        .max_memory_size(MAX_MEMORY_LIMIT)
        .table_elements(MAX_TABLE_ELEMENTS)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .decommit_batch_size(DECOMMIT_BATCH)
        .max_unused_warm_slots(WARM_SLOTS.min(max_instances))
        // Off on purpose: in wasmtime 48 a written page that was swapped out is neither reset nor
        // decommitted when pagemap_scan is on (wasmtime PR #14357), so the next instance in the
        // slot could read an earlier request's data. Without it, the kept-resident bytes are
        // reset by copy and the rest by madvise: never stale, whatever the host's swap does.
        // wasmtime 50 resets swapped dirty pages and scans past 32 regions, so it can be on
        // there; wasmtime 50 needs rustc 1.97, and this project's toolchain is 1.95.
        .pagemap_scan(Enabled::No);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        .memory_reservation(memory_reservation(max_instances))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}
