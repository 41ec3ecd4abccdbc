//! The CPU time a plugin call has used, counted across its yields: what tells a long-running call
//! (the [slow lane](super::slow_lane)'s business) from one the OS merely descheduled.
//!
//! A call runs on a fiber that the async executor may resume on any worker thread. It runs
//! without pause from where it started or last resumed until the next epoch tick (or its end), so
//! the CPU it used in that stretch is what its thread's CPU clock advanced by. Each future a call
//! yields on therefore ends by reading the clock of the thread that resumes it
//! ([`CallCpu::resume_after`]), and each epoch tick adds what the thread used since
//! ([`CallCpu::tick`]). Time the call spent waiting (in the executor's queue, for the lane,
//! descheduled by the OS) is not on its thread's clock, so it does not count.
//!
//! The clock is not read when a call starts: the thread CPU clock is a system call (about 2 µs on
//! a VM, against a plugin call of 10–30 µs), and most calls end before any tick. The first
//! stretch, from the start to the first tick, counts as its wall time but at most one tick
//! ([`FIRST_STRETCH`]): a call running all along meets a tick within one, and a call the OS left
//! waiting is charged at most one tick more than it used, far below the slow lane's grace.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// The clocks of the thread running a call, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Which thread was read (its CPU clock means nothing on another one).
    thread: u64,
    /// The thread's CPU clock.
    cpu: Duration,
    /// The wall clock.
    wall: Instant,
}

impl Reading {
    /// Reads the calling thread's clocks.
    pub fn now() -> Reading {
        let cpu = clock_gettime(ClockId::ThreadCPUTime);
        Reading {
            thread: thread_tag(),
            cpu: Duration::new(
                u64::try_from(cpu.tv_sec).unwrap_or(0),
                u32::try_from(cpu.tv_nsec).unwrap_or(0),
            ),
            wall: Instant::now(),
        }
    }

    /// The wall-clock part.
    pub fn wall(self) -> Instant {
        self.wall
    }

    /// The CPU time a call that ran without pause from `self` to `later` used. On another thread
    /// the two CPU clocks cannot be compared: the call was resumed somewhere its futures did not
    /// see (an async host function that waited), and the wall time between is the bound.
    fn used_until(self, later: Reading) -> Duration {
        if self.thread == later.thread {
            later.cpu.saturating_sub(self.cpu)
        } else {
            later.wall.saturating_duration_since(self.wall)
        }
    }
}

/// A number per thread, cheaper to read and compare than a [`std::thread::ThreadId`].
fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static TAG: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TAG.with(|tag| *tag)
}

/// The most the stretch from a call's start to its first tick counts for.
pub const FIRST_STRETCH: Duration = super::engine::EPOCH_TICK;

/// The CPU time of the current call of one store.
#[derive(Debug)]
pub struct CallCpu {
    /// When the call started.
    started: Instant,
    /// Used up to the last tick.
    used: Duration,
    /// Whether the call has been found long-running.
    long: bool,
    /// Where the call last resumed running (none before its first tick): written by each tick it
    /// runs on from, and by the end of each future it yields on (which is where it resumes, on
    /// that future's thread), where the store is out of reach.
    resumed: Arc<Mutex<Option<Reading>>>,
}

impl Default for CallCpu {
    fn default() -> Self {
        CallCpu {
            started: Instant::now(),
            used: Duration::ZERO,
            long: false,
            resumed: Arc::default(),
        }
    }
}

impl CallCpu {
    fn set_resumed(resumed: &Mutex<Option<Reading>>, at: Reading) -> Option<Reading> {
        resumed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(at)
    }

    /// A call starts running at `started`: nothing used yet.
    pub fn start(&mut self, started: Instant) {
        self.started = started;
        self.used = Duration::ZERO;
        self.long = false;
        *self.resumed.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The call is long-running; whether that is news.
    pub fn found_long(&mut self) -> bool {
        !std::mem::replace(&mut self.long, true)
    }

    /// At an epoch tick `at`, the call running: adds what it used since it last resumed (from
    /// here on it runs on, or it yields and a future marks where it resumes) and says the total.
    pub fn tick(&mut self, at: Reading) -> Duration {
        self.used += match Self::set_resumed(&self.resumed, at) {
            Some(since) => since.used_until(at),
            None => at
                .wall
                .saturating_duration_since(self.started)
                .min(FIRST_STRETCH),
        };
        self.used
    }

    /// `wait`, and then, on the thread that goes on to resume the call, marks the resumption.
    pub fn resume_after(
        &self,
        wait: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let resumed = self.resumed.clone();
        async move {
            wait.await;
            Self::set_resumed(&resumed, Reading::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn reading(thread: u64, cpu: Duration, wall: Instant) -> Reading {
        Reading { thread, cpu, wall }
    }

    fn started(at: Instant) -> CallCpu {
        let mut cpu = CallCpu::default();
        cpu.start(at);
        cpu
    }

    #[test]
    fn the_first_stretch_counts_its_wall_time_but_at_most_one_tick() {
        let start = Instant::now();
        let quick = Duration::from_micros(300);
        let mut cpu = started(start);
        assert_eq!(cpu.tick(reading(1, 40 * MS, start + quick)), quick);
        // The OS left it waiting 5 ms before its first tick: one tick at most.
        let mut cpu = started(start);
        assert_eq!(cpu.tick(reading(1, 40 * MS, start + 5 * MS)), FIRST_STRETCH);
    }

    #[test]
    fn a_descheduled_call_counts_only_the_cpu_it_used() {
        let start = Instant::now();
        let mut cpu = started(start);
        let first = cpu.tick(reading(1, 40 * MS, start + Duration::from_micros(500)));
        // Ten microseconds of CPU, but the OS left it waiting for 5 ms before the next tick.
        let used = cpu.tick(reading(
            1,
            40 * MS + Duration::from_micros(10),
            start + 5 * MS,
        ));
        assert_eq!(used - first, Duration::from_micros(10));
    }

    #[test]
    fn a_loop_adds_up_across_ticks_and_threads() {
        let start = Instant::now();
        let mut cpu = started(start);
        assert_eq!(cpu.tick(reading(1, 40 * MS, start + MS)), MS);
        assert_eq!(cpu.tick(reading(1, 42 * MS, start + 3 * MS)), 3 * MS);
        // It yielded, waited 30 ms and resumed on thread 2, whose clock is elsewhere.
        CallCpu::set_resumed(&cpu.resumed, reading(2, 900 * MS, start + 33 * MS));
        assert_eq!(cpu.tick(reading(2, 902 * MS, start + 35 * MS)), 5 * MS);
        // A new call starts from nothing.
        cpu.start(start + 40 * MS);
        assert_eq!(
            cpu.tick(reading(2, 950 * MS, start + 40 * MS)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_resumption_no_future_saw_counts_the_wall_time() {
        let start = Instant::now();
        let mut cpu = started(start);
        assert_eq!(cpu.tick(reading(1, 40 * MS, start + MS)), MS);
        assert_eq!(cpu.tick(reading(3, 5 * MS, start + 4 * MS)), 4 * MS);
    }

    #[test]
    fn the_thread_clock_counts_a_spin_but_not_a_sleep() {
        let mut cpu = started(Instant::now());
        cpu.tick(Reading::now());
        std::thread::sleep(20 * MS);
        assert!(
            cpu.tick(Reading::now()) < 5 * MS,
            "a sleeping thread uses no CPU"
        );
        // However loaded the machine, a spin reaches the slow lane's grace in CPU time.
        let spin = Instant::now();
        while cpu.tick(Reading::now()) < super::super::slow_lane::LONG_CALL {
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "the spin is not counted"
            );
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn a_yield_marks_where_the_call_resumes() {
        let mut cpu = started(Instant::now());
        // What its thread runs while the call waits (other tasks) is not the call's.
        cpu.resume_after(async {
            let others = Reading::now();
            while others.used_until(Reading::now()) < 5 * MS {
                std::hint::spin_loop();
            }
        })
        .await;
        assert!(cpu.tick(Reading::now()) < MS, "the wait was not counted");
    }
}
