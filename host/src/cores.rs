//! Connection threads: one single-threaded async runtime per core, each serving the connections
//! handed to it from accept to close, as nginx's workers do.
//!
//! A work-stealing runtime wakes an idle worker whenever work arrives so that it may steal some;
//! a gateway's request is a few tens of microseconds of work, so most of those wake-ups find
//! nothing and cost a context switch each. Here nothing moves between threads after the hand-off:
//! a connection's I/O, its requests' tasks (hyper's HTTP/2 streams, the request lifecycle, its
//! plugins' instances) and the upstream connections it opens all live on one thread, whose caches
//! stay warm for them. Accept loops, the admin listener and reloads stay on the main runtime.
//!
//! A plugin call that loops does not stall its thread's other connections: calls yield at every
//! epoch tick and long ones queue for the [slow lane](crate::runtime).

use std::cell::Cell;
use std::io;

use prometheus_client::metrics::gauge::Gauge;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the connection thread this is, if it is one.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The connection thread the caller runs on (`None` on any other thread). Per-thread state such
/// as the upstream pool's idle connections is kept apart by it.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// The connection threads of one serving gateway. Dropping it stops them; whatever still runs on
/// them is dropped (the gateway drains before that).
pub struct Cores {
    threads: Vec<CoreThread>,
}

struct CoreThread {
    handle: Handle,
    /// Connections handed to this thread and not yet closed: what placement goes by.
    open: Gauge,
    /// The same count in `tollgate_connection_thread_connections`, when metrics are on (that
    /// family is process-wide, so it does not decide placement).
    metric: Option<Gauge>,
    /// Dropped (or fired) to stop the thread.
    _stop: oneshot::Sender<()>,
}

/// A connection's place on a thread: counted there until dropped.
#[derive(Debug)]
pub struct Placement {
    open: Gauge,
    metric: Option<Gauge>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.open.dec();
        if let Some(metric) = &self.metric {
            metric.dec();
        }
    }
}

impl std::fmt::Debug for Cores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open: Vec<i64> = self
            .threads
            .iter()
            .map(|thread| thread.open.get())
            .collect();
        f.debug_struct("Cores").field("open", &open).finish()
    }
}

impl Cores {
    /// `count` threads (at least one), each running its own runtime; one per available core
    /// when `None`.
    pub fn start(count: Option<usize>) -> io::Result<Cores> {
        let count =
            count.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let threads = (0..count.max(1))
            .map(start_thread)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Cores { threads })
    }

    /// The thread with the fewest open connections, for a new one. Connections differ in what
    /// they cost, but a count keeps one long-lived busy client from drawing every newcomer to
    /// the thread it loads.
    pub fn place(&self) -> (&Handle, Placement) {
        let thread = self
            .threads
            .iter()
            .min_by_key(|thread| thread.open.get())
            .expect("at least one connection thread");
        thread.open.inc();
        if let Some(metric) = &thread.metric {
            metric.inc();
        }
        let placement = Placement {
            open: thread.open.clone(),
            metric: thread.metric.clone(),
        };
        (&thread.handle, placement)
    }
}

fn start_thread(index: usize) -> io::Result<CoreThread> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("conn-{index}"))
        .spawn(move || {
            CURRENT.with(|current| current.set(Some(index)));
            // Sender dropped or fired: either way the gateway is done with this thread.
            let _ = runtime.block_on(stopped);
        })?;
    Ok(CoreThread {
        handle,
        open: Gauge::default(),
        metric: crate::metrics::get().map(|metrics| metrics.thread_connections(index)),
        _stop: stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection thread a task spawned on `handle` runs on.
    fn thread_of(handle: &Handle) -> Option<usize> {
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(current());
        });
        rx.recv().unwrap()
    }

    #[test]
    fn a_new_connection_goes_to_the_thread_with_the_fewest_open() {
        let cores = Cores::start(Some(2)).unwrap();
        let (first, a) = cores.place();
        let first = thread_of(first);
        let (second, b) = cores.place();
        let second = thread_of(second);
        assert_ne!(first, second, "the second goes to the idle thread");
        drop(a);
        let (third, _c) = cores.place();
        assert_eq!(
            thread_of(third),
            first,
            "the thread whose connection closed is idle again"
        );
        drop(b);
    }

    #[test]
    fn tasks_on_a_connection_thread_know_which_it_is() {
        let cores = Cores::start(Some(2)).unwrap();
        let outside = current();
        let (handle, _placement) = cores.place();
        let inside = thread_of(handle);
        assert_eq!(outside, None);
        assert!(inside.is_some_and(|index| index < 2));
    }
}
