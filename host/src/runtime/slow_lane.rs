//! Long-running plugin calls share one slow lane, so a plugin that loops cannot take the CPU from
//! healthy requests.
//!
//! Real plugin calls take microseconds of CPU. A call that, at an epoch tick, has used at least
//! [`LONG_CALL`] of CPU (its own, as its thread's CPU clock counts it: see
//! [`call_cpu`](super::call_cpu)) is treated as long-running: from then on it runs one tick at a
//! time while holding the process's single lane, and after each tick it rests [`REST`] still
//! holding it. All long-running calls together therefore get at most one tick of one core per
//! tick + [`REST`] (about 5% of a core), however many there are. CPU time, not wall time, decides
//! it: on a busy machine the OS may leave a healthy call waiting for a core past [`LONG_CALL`],
//! and sending it to the lane then would queue it behind looping plugins and past its own time
//! limit. Time limits still run in wall time: waiting for the lane ends at the call's deadline,
//! and the next tick traps it.
//!
//! A plugin phase whose call ran out of time is [quarantined](Quarantine) for [`QUARANTINE`]: its
//! calls count as long-running after [`QUARANTINED_LONG_CALL`] of CPU instead of [`LONG_CALL`]. A
//! plugin that loops on every request would otherwise run [`LONG_CALL`] at full speed on each
//! before the lane catches it, which under load adds up to a good part of a core. The quarantine
//! is per phase, and its grace stays above zero, so the plugin's short calls (its other phases)
//! rarely wait for the lane.
//!
//! Once [`STRAIGHT_TO_LANE_AFTER`] calls of a phase in a row have run out of time, its calls start
//! in the lane: they run nothing until they get it. Even the quarantined grace costs about a tick
//! of CPU per call, because a looping client sends its next request as soon as the last one timed
//! out, on a tick, so the next call meets its first tick a whole tick after it started: 8 looping
//! connections cost the gateway 9% of a core that way, against the lane's 5%. Like an outlier
//! ejection after consecutive failures, it is undone by the first call of the phase that ends in
//! time, which a plugin that got well again makes at its first turn in the lane.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tollgate_phases::Phase;

use super::engine::EPOCH_TICK;

/// How much CPU a call must have used before it counts as long-running. It is looked at on epoch
/// ticks, which are process-wide, so a call meets its first one anywhere from 0 to one tick after
/// it starts; the next one comes a full tick later.
///
/// Real calls take microseconds, but the thread's CPU clock also charges a call for what the
/// kernel does on its thread meanwhile (the page faults of a fresh instance, network interrupts),
/// and some healthy calls do real work (mtls-auth verifies a chain). In the soak on a loaded
/// 2-core VM, healthy calls were charged up to 3.9 ms; at 1 ms, a few a minute went to the lane,
/// queued behind the looping plugins and ran out of time. A looping plugin pays this grace once
/// per call only until its first time-out quarantines it ([`QUARANTINED_LONG_CALL`]).
pub const LONG_CALL: Duration = Duration::from_millis(10);

/// [`LONG_CALL`] for a quarantined plugin: still several times what a real plugin call takes,
/// so its short calls rarely wait for the lane, yet a looping call meets the lane at its first
/// or second tick.
pub const QUARANTINED_LONG_CALL: Duration = Duration::from_micros(100);

/// How long a long-running call rests, holding the lane, after each tick it ran: all
/// long-running calls together get one tick in 20 (5% of a core), enough for a heavy but
/// legitimate call (instantiation and `configure` at load on a busy machine) to finish.
pub const REST: Duration = Duration::from_millis(19 * EPOCH_TICK.as_millis() as u64);

/// [`REST`] for a call of a phase whose last calls all ran out of time (it started in the lane):
/// one tick in 40. Against 8 looping connections this kept the healthy route at 0.93–0.99 of its
/// solo throughput, against 0.88 with [`REST`] (`scripts/soak isolation`, 5 runs each).
pub const STREAK_REST: Duration = Duration::from_millis(39 * EPOCH_TICK.as_millis() as u64);

/// The rest after each turn of a call that counts as long-running after `long_call` of CPU (see
/// [`Quarantine::long_call`]: zero for a phase in a timeout streak).
pub fn rest_after_turn(long_call: Duration) -> Duration {
    if long_call.is_zero() {
        STREAK_REST
    } else {
        REST
    }
}

/// How long a plugin stays quarantined after one of its calls ran out of time.
pub const QUARANTINE: Duration = Duration::from_secs(10);

/// How many calls of a phase in a row must run out of time before its calls start in the lane.
pub const STRAIGHT_TO_LANE_AFTER: u32 = 3;

/// A plugin's quarantine, per phase (`None`: instantiation and `configure`); shared by all of
/// its instances.
#[derive(Debug, Default)]
pub struct Quarantine {
    /// When each phase's quarantine ends, in nanoseconds after [`since_process_start`]'s start;
    /// 0: never started.
    until: [AtomicU64; Phase::ALL.len() + 1],
    /// How many calls of each phase in a row ran out of time.
    timeouts_in_a_row: [AtomicU32; Phase::ALL.len() + 1],
}

fn index(phase: Option<Phase>) -> usize {
    phase.map_or(0, |phase| phase as usize + 1)
}

impl Quarantine {
    /// Starts (or extends) the quarantine: a call in `phase` ran out of time at `now`.
    pub fn timed_out(&self, phase: Option<Phase>, now: Instant) {
        let until = since_process_start(now + QUARANTINE);
        self.until[index(phase)].fetch_max(until, Ordering::Relaxed);
        self.timeouts_in_a_row[index(phase)].fetch_add(1, Ordering::Relaxed);
    }

    /// A call in `phase` ended in time (whatever its outcome): the run of timeouts is over.
    pub fn ended_in_time(&self, phase: Option<Phase>) {
        let run = &self.timeouts_in_a_row[index(phase)];
        // Read first: healthy calls of every instance come here, and a store would make them
        // take the cache line from each other.
        if run.load(Ordering::Relaxed) != 0 {
            run.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `phase` is quarantined at `now`.
    pub fn holds(&self, phase: Option<Phase>, now: Instant) -> bool {
        since_process_start(now) < self.until[index(phase)].load(Ordering::Relaxed)
    }

    /// How much CPU a call in `phase` that started at `started` uses before it counts as
    /// long-running: zero once the phase's last [`STRAIGHT_TO_LANE_AFTER`] calls ran out of time,
    /// so the call starts in the lane.
    pub fn long_call(&self, phase: Option<Phase>, started: Instant) -> Duration {
        if !self.holds(phase, started) {
            LONG_CALL
        } else if self.timeouts_in_a_row[index(phase)].load(Ordering::Relaxed)
            >= STRAIGHT_TO_LANE_AFTER
        {
            Duration::ZERO
        } else {
            QUARANTINED_LONG_CALL
        }
    }
}

/// An instant as nanoseconds after the first time this was asked, so it fits an atomic.
fn since_process_start(instant: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(instant.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

fn lane() -> Arc<Semaphore> {
    static LANE: OnceLock<Arc<Semaphore>> = OnceLock::new();
    LANE.get_or_init(|| Arc::new(Semaphore::new(1))).clone()
}

/// A call's hold on the lane, between one of its ticks and the next.
#[derive(Debug, Clone, Default)]
pub struct LaneTurn(Arc<Mutex<Turn>>);

#[derive(Debug, Default)]
struct Turn {
    permit: Option<OwnedSemaphorePermit>,
    /// The call has just been given the lane and has not run its tick yet.
    fresh: bool,
}

impl LaneTurn {
    fn turn(&self) -> std::sync::MutexGuard<'_, Turn> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the lane back (the call ended, or it is starting).
    pub fn release(&self) {
        *self.turn() = Turn::default();
    }

    /// Whether the call has just been given the lane, so it runs its tick now; asking uses it up.
    pub fn take_fresh(&self) -> bool {
        std::mem::take(&mut self.turn().fresh)
    }

    /// What a long-running call awaits at an epoch tick before it runs its next one: the rest,
    /// if it held the lane, then the lane again, or its deadline, whichever comes first.
    pub fn next(
        &self,
        deadline: Instant,
        rest: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let lane_turn = self.clone();
        async move {
            let held = lane_turn.turn().permit.take();
            if let Some(permit) = held {
                // Never rest past the deadline: the call must be trapped on time.
                tokio::time::sleep_until(deadline.min(Instant::now() + rest).into()).await;
                drop(permit);
            }
            if let Ok(Ok(permit)) =
                tokio::time::timeout_at(deadline.into(), lane().acquire_owned()).await
            {
                *lane_turn.turn() = Turn {
                    permit: Some(permit),
                    fresh: true,
                };
            }
        }
    }

    #[cfg(test)]
    fn holds(&self) -> bool {
        self.turn().permit.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantine_holds_the_phase_that_timed_out_for_its_length() {
        let quarantine = Quarantine::default();
        let access = Some(Phase::Access);
        let now = Instant::now();
        assert!(
            !quarantine.holds(access, now),
            "no quarantine before any timeout"
        );
        quarantine.timed_out(access, now);
        assert!(quarantine.holds(access, now));
        assert_eq!(quarantine.long_call(access, now), QUARANTINED_LONG_CALL);
        assert!(quarantine.holds(access, now + QUARANTINE - Duration::from_millis(1)));
        assert!(!quarantine.holds(access, now + QUARANTINE));
        // Other phases, and configure, keep their grace.
        for other in [None, Some(Phase::Rewrite), Some(Phase::Log)] {
            assert!(!quarantine.holds(other, now));
            assert_eq!(quarantine.long_call(other, now), LONG_CALL);
        }
        // A later timeout extends it; an earlier one never shortens it.
        quarantine.timed_out(access, now + Duration::from_secs(1));
        quarantine.timed_out(access, now);
        assert!(quarantine.holds(access, now + QUARANTINE));
    }

    #[test]
    fn calls_start_in_the_lane_after_timeouts_in_a_row_until_one_ends_in_time() {
        let quarantine = Quarantine::default();
        let access = Some(Phase::Access);
        let now = Instant::now();
        for _ in 1..STRAIGHT_TO_LANE_AFTER {
            quarantine.timed_out(access, now);
        }
        assert_eq!(quarantine.long_call(access, now), QUARANTINED_LONG_CALL);
        quarantine.timed_out(access, now);
        assert_eq!(quarantine.long_call(access, now), Duration::ZERO);
        assert_eq!(
            quarantine.long_call(Some(Phase::Log), now),
            LONG_CALL,
            "per phase"
        );
        // One call that ends in time undoes it; the quarantine itself stays.
        quarantine.ended_in_time(access);
        assert_eq!(quarantine.long_call(access, now), QUARANTINED_LONG_CALL);
        // So does the quarantine's end, however long the run was.
        for _ in 0..STRAIGHT_TO_LANE_AFTER {
            quarantine.timed_out(access, now);
        }
        assert_eq!(quarantine.long_call(access, now + QUARANTINE), LONG_CALL);
    }

    #[tokio::test]
    async fn a_long_call_waits_for_the_lane_only_until_its_deadline() {
        let first = LaneTurn::default();
        let second = LaneTurn::default();
        let far = Instant::now() + Duration::from_secs(10);
        first.next(far, REST).await;
        assert!(first.holds(), "the first call holds the lane");
        assert!(first.take_fresh(), "and runs its tick now");
        assert!(!first.take_fresh(), "only one");
        // The second waits while the first holds it, but never past its own deadline.
        let soon = Instant::now() + Duration::from_millis(50);
        second.next(soon, REST).await;
        assert!(!second.holds(), "gave up at the deadline");
        assert!(!second.take_fresh());
        // After its rest the first gives the lane up; the second gets it.
        first.release();
        second.next(far, REST).await;
        assert!(second.holds());
    }
}
