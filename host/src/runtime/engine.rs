//! Engine policy: every wasmtime setting and sandbox limit in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the epoch advances. Call deadlines are counted in these ticks, so a deadline is
/// honoured to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Default per-call CPU deadline of a plugin.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);

/// Default cap on one plugin instance's linear memories, all together.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;

/// The largest memory cap a plugin may be given. Interpreted languages (Python, JavaScript)
/// need tens of MiB; the pooling allocator reserves address space for this much per memory slot.
pub const MAX_MEMORY_LIMIT: usize = 1 << 30;

/// Plugin instances alive at once, across all plugins (one per plugin per in-flight request).
pub const MAX_LIVE_INSTANCES: u32 = 1000;

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

/// Builds the process's one engine.
pub fn build_engine() -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(MAX_LIVE_INSTANCES)
        .total_core_instances(MAX_LIVE_INSTANCES * 8)
        .total_memories(MAX_LIVE_INSTANCES * 2)
        .total_tables(MAX_LIVE_INSTANCES * 8)
        .total_stacks(MAX_LIVE_INSTANCES)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memories_per_module(2)
        .max_tables_per_module(8)
        .max_core_instance_size(MAX_CORE_INSTANCE_SIZE)
        .max_component_instance_size(MAX_CORE_INSTANCE_SIZE)
        .max_memory_size(MAX_MEMORY_LIMIT)
        .table_elements(MAX_TABLE_ELEMENTS);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        // Address space is reserved per memory slot; linear memories of 32-bit guests never need
        // more than the cap, and a smaller reservation keeps a thousand slots affordable.
        .memory_reservation(MAX_MEMORY_LIMIT as u64)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Deadline, in epoch ticks, for a call limited to `limit`.
pub fn deadline_ticks(limit: Duration) -> u64 {
    (limit.as_nanos().div_ceil(EPOCH_TICK.as_nanos())).max(1) as u64
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`], which is what makes call
/// deadlines fire. Stops when dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`'s epoch.
    pub fn start(engine: &Engine) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let thread = std::thread::Builder::new()
            .name("tollgate-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match weak.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_to_whole_ticks() {
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 50);
        assert_eq!(deadline_ticks(Duration::from_millis(3)), 2);
        assert_eq!(deadline_ticks(Duration::from_micros(1)), 1);
    }
}
