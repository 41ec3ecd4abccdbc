//! Long-running plugin calls share one slow lane, so a plugin that loops cannot take the CPU from
//! healthy requests.
//!
//! Real plugin calls take microseconds. A call still running at an epoch tick at least
//! [`LONG_CALL`] after it started is treated as long-running: from then on it runs one tick at a time while holding the process's single
//! lane, and after each tick it rests [`REST`] still holding it. All long-running calls together
//! therefore get at most one tick of one core per tick + [`REST`] (about 5% of a core), however
//! many there are. Their time limits still run in wall time: waiting for the lane ends at the
//! call's deadline, and the next tick traps it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::engine::EPOCH_TICK;

/// How long a call must have been running before it counts as long-running. Epoch ticks are
/// process-wide, so a call meets its first one anywhere from 0 to one tick after it starts; the
/// next one comes a full tick later.
pub const LONG_CALL: Duration = Duration::from_millis(1);

/// How long a long-running call rests, holding the lane, after each tick it ran.
pub const REST: Duration = Duration::from_millis(19 * EPOCH_TICK.as_millis() as u64);

fn lane() -> Arc<Semaphore> {
    static LANE: OnceLock<Arc<Semaphore>> = OnceLock::new();
    LANE.get_or_init(|| Arc::new(Semaphore::new(1))).clone()
}

/// A call's hold on the lane, between one of its ticks and the next.
#[derive(Debug, Clone, Default)]
pub struct LaneTurn(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl LaneTurn {
    fn swap(&self, permit: Option<OwnedSemaphorePermit>) -> Option<OwnedSemaphorePermit> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, permit)
    }

    /// Gives the lane back (the call ended, or it is starting).
    pub fn release(&self) {
        self.swap(None);
    }

    /// What a long-running call awaits at an epoch tick before it runs its next one: the rest,
    /// if it held the lane, then the lane again, or its deadline, whichever comes first.
    pub fn next(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let turn = self.clone();
        Box::pin(async move {
            if let Some(permit) = turn.swap(None) {
                // Never rest past the deadline: the call must be trapped on time.
                tokio::time::sleep_until(deadline.min(Instant::now() + REST).into()).await;
                drop(permit);
            }
            if let Ok(Ok(permit)) =
                tokio::time::timeout_at(deadline.into(), lane().acquire_owned()).await
            {
                turn.swap(Some(permit));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_call_waits_for_the_lane_only_until_its_deadline() {
        let first = LaneTurn::default();
        let second = LaneTurn::default();
        let far = Instant::now() + Duration::from_secs(10);
        first.next(far).await;
        assert!(
            first.0.lock().unwrap().is_some(),
            "the first call holds the lane"
        );
        // The second waits while the first holds it, but never past its own deadline.
        let soon = Instant::now() + Duration::from_millis(50);
        second.next(soon).await;
        assert!(
            second.0.lock().unwrap().is_none(),
            "gave up at the deadline"
        );
        // After its rest the first gives the lane up; the second gets it.
        first.release();
        second.next(far).await;
        assert!(second.0.lock().unwrap().is_some());
    }
}
