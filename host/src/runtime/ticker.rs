//! The epoch ticker: the thread that advances the engine's epoch every [`EPOCH_TICK`], which is
//! what makes call deadlines fire and long calls yield.
//!
//! It parks while no plugin call has been in flight for [`IDLE_TICKS`], and the next call to
//! begin wakes it: a gateway without plugins, or idle, does not wake a thread a thousand times a
//! second (2% of a core on the 2-core VM, and as many preemptions of a worker under load). A call
//! that begins while the ticker is parked unparks it before it runs, so its first tick comes one
//! tick after it began, as it would have anyway.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

use super::engine::EPOCH_TICK;

/// Ticks without a call in flight after which the ticker parks.
pub const IDLE_TICKS: u32 = 100;

/// How often a parked ticker wakes to see whether its engine is gone (it then ends).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Plugin calls in flight in the process (instantiation included), over all engines.
static CALLS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Tickers parked now.
static PARKED: AtomicUsize = AtomicUsize::new(0);
/// Every ticker thread, to unpark.
static TICKERS: Mutex<Vec<Thread>> = Mutex::new(Vec::new());

/// A plugin call begins: the ticker must be running.
pub fn call_begins() {
    // Both sides use SeqCst: either the ticker sees this call in flight before it parks, or this
    // sees it parked and wakes it (an unpark before the park is not lost).
    CALLS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    if PARKED.load(Ordering::SeqCst) > 0 {
        for ticker in TICKERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            ticker.unpark();
        }
    }
}

/// A plugin call that began has ended.
pub fn call_ends() {
    CALLS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

/// Starts the ticker of `engine`. The thread holds only a weak reference and ends when the
/// engine is gone: the engine lives as long as anything that can run a plugin (every compiled
/// plugin holds it), so the ticker does too, whatever the caller keeps or drops.
pub fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    let thread = std::thread::Builder::new()
        .name("tollgate-epoch".into())
        .spawn(move || {
            if let Err(error) = ask_for_prompt_wake_ups() {
                tracing::debug!(%error, "the epoch ticker runs with the default time slice");
            }
            let mut idle = 0;
            loop {
                if idle >= IDLE_TICKS {
                    PARKED.fetch_add(1, Ordering::SeqCst);
                    if CALLS_IN_FLIGHT.load(Ordering::SeqCst) == 0 {
                        // Wakes now and then to notice an engine that is gone.
                        std::thread::park_timeout(IDLE_CHECK);
                    }
                    PARKED.fetch_sub(1, Ordering::SeqCst);
                    if weak.upgrade().is_none() {
                        break;
                    }
                    if CALLS_IN_FLIGHT.load(Ordering::SeqCst) == 0 {
                        // Still idle (the timeout woke it): straight back to parking, not
                        // another IDLE_TICKS of ticks.
                        continue;
                    }
                    idle = 0;
                }
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
                idle = if CALLS_IN_FLIGHT.load(Ordering::SeqCst) == 0 {
                    idle + 1
                } else {
                    0
                };
            }
            let me = std::thread::current().id();
            TICKERS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|ticker| ticker.id() != me);
        })?;
    TICKERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(thread.thread().clone());
    Ok(())
}

/// The time slice the ticker asks for: far below the kernel's default (0.75 ms and up), so that
/// waking up it preempts whatever runs on its core.
const TICKER_SLICE: Duration = Duration::from_micros(100);

/// Asks the kernel to run the calling thread (the ticker) as soon as it wakes up. Under EEVDF
/// (Linux 6.6 and later) a waking thread waits until the running one has used its slice: with
/// plugin calls looping on both cores of a 2-core host, ticks came up to 4.4 ms late (58 of 1,692
/// more than 0.5 ms), and every late tick let a looping call run on at full speed before the
/// slow lane caught it. A thread that asks for a shorter slice preempts on wake-up (Linux 6.12
/// and later); asking is allowed without privileges, as the slice is not a priority, and older
/// kernels ignore it. With it, the same load saw one late tick in 1,800 and the looping calls'
/// CPU fell by 40%.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // One raw syscall: neither rustix nor libc wraps sched_setattr(2).
fn ask_for_prompt_wake_ups() -> std::io::Result<()> {
    /// `struct sched_attr`, first version (`SCHED_ATTR_SIZE_VER0`).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        // Keep the thread's niceness (setting a lower one than it has would need privileges).
        nice: rustix::process::getpriority_process(None)?,
        priority: 0,
        runtime: TICKER_SLICE.as_nanos() as u64,
        deadline: 0,
        period: 0,
    };
    // SAFETY: `attr` is a valid `sched_attr` of the size it declares, alive for the call; pid 0
    // is the calling thread; flags 0.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn ask_for_prompt_wake_ups() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_ticker_parks_while_no_call_is_in_flight_and_a_call_wakes_it() {
        let engine = Engine::default();
        start_epoch_ticker(&engine).unwrap();
        // Other tests of this binary run no plugin calls for long: it parks.
        wait_for("the idle ticker parks", || {
            PARKED.load(Ordering::SeqCst) > 0
        });
        call_begins();
        wait_for("a call wakes every ticker", || {
            PARKED.load(Ordering::SeqCst) == 0
        });
        call_ends();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_ticker_gets_its_short_time_slice() {
        std::thread::spawn(|| {
            ask_for_prompt_wake_ups().expect("sched_setattr needs no privilege");
            // Kernels that keep a slice per thread (6.6 and later) show it here.
            let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
            if let Some(line) = sched.lines().find(|line| line.starts_with("se.slice")) {
                let slice: u64 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
                assert_eq!(slice, TICKER_SLICE.as_nanos() as u64, "{line}");
            }
        })
        .join()
        .unwrap();
    }
}
