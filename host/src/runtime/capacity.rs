//! What all plugin instances of the process share: a fixed number of instance slots and one
//! memory budget. Both are checked without waiting: a gateway at capacity answers 503 at once
//! instead of queueing work it cannot finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The process-wide limits of the plugin runtime (the config's `[runtime]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Plugin instances alive at once, across all plugins. A request holds one instance per
    /// plugin of its route for its request phases, a handshake one per certificate-phase plugin
    /// for the length of that phase.
    pub max_instances: u32,
    /// Bytes of linear memory and tables that all live instances together may hold.
    pub memory_budget: usize,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            max_instances: super::engine::DEFAULT_MAX_INSTANCES,
            memory_budget: super::engine::DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Instance slots and the memory budget, shared by every plugin of a runtime.
#[derive(Debug)]
pub struct Capacity {
    limits: RuntimeLimits,
    slots: Arc<Semaphore>,
    memory_used: AtomicUsize,
}

/// One instance slot, given back when dropped.
#[derive(Debug)]
pub struct InstanceSlot {
    _permit: OwnedSemaphorePermit,
}

impl Capacity {
    /// Slots and budget for `limits`.
    pub fn new(limits: RuntimeLimits) -> Capacity {
        Capacity {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_instances as usize)),
            memory_used: AtomicUsize::new(0),
        }
    }

    /// The limits.
    pub fn limits(&self) -> RuntimeLimits {
        self.limits
    }

    /// Slots free right now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Bytes of the memory budget in use right now.
    pub fn memory_used(&self) -> usize {
        self.memory_used.load(Ordering::Relaxed)
    }

    /// Takes a slot, or `None` when all are in use.
    pub fn try_slot(&self) -> Option<InstanceSlot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(InstanceSlot { _permit: permit }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => None,
        }
    }

    /// Whether `needed` more instances fit right now: the admission check at the start of a
    /// request, so that a request the gateway cannot finish is refused before any plugin runs.
    pub fn has_room_for(&self, needed: usize) -> bool {
        needed == 0 || self.slots.available_permits() >= needed
    }

    /// Takes `bytes` from the memory budget, or refuses without taking anything.
    pub fn reserve_memory(&self, bytes: usize) -> bool {
        let budget = self.limits.memory_budget;
        self.memory_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= budget)
            })
            .is_ok()
    }

    /// Gives `bytes` back to the memory budget.
    pub fn release_memory(&self, bytes: usize) {
        self.memory_used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(max_instances: u32, memory_budget: usize) -> Capacity {
        Capacity::new(RuntimeLimits {
            max_instances,
            memory_budget,
        })
    }

    #[test]
    fn slots_run_out_and_come_back_when_dropped() {
        let capacity = capacity(2, 0);
        let first = capacity.try_slot().expect("first slot");
        let _second = capacity.try_slot().expect("second slot");
        assert!(capacity.try_slot().is_none());
        assert!(!capacity.has_room_for(1));
        drop(first);
        assert!(capacity.has_room_for(1));
        assert!(!capacity.has_room_for(2));
        assert!(capacity.try_slot().is_some());
    }

    #[test]
    fn the_memory_budget_refuses_without_taking_anything() {
        let capacity = capacity(1, 100);
        assert!(capacity.reserve_memory(60));
        assert!(!capacity.reserve_memory(41));
        assert_eq!(capacity.memory_used(), 60);
        assert!(capacity.reserve_memory(40));
        capacity.release_memory(100);
        assert_eq!(capacity.memory_used(), 0);
    }
}
