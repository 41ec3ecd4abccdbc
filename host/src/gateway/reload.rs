//! Serving, and reloading the config file while serving without dropping anything.
//!
//! A reload loads the new config completely (every plugin compiled and configured, every
//! certificate and key read, new listeners bound) before anything changes; if anything fails,
//! the running config stays and every problem is logged with file, line and field. Then the
//! gateway state is swapped atomically: new connections and requests use the new generation,
//! those in flight finish on the one they started with. A listener whose address stays keeps its
//! socket (its TLS and limits are swapped for new connections), an added one is opened, a removed
//! one stops accepting and its connections drain within `drain_timeout`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admin::{self, Admin, Health, Phase};
use super::connection::{ListenerShared, accept_loop};
use super::{
    BoundListener, ConfigVersion, Gateway, GatewayError, Problems, Shared, bind, open_files,
};
use crate::config::{Config, ListenerConfig};
use crate::cores::Cores;
use crate::log::AccessLog;
use crate::metrics;
use crate::runtime::Runtime;

/// What one reload request is answered with: what changed, or every problem found (one per
/// line, `file:line:column: field: message`).
type Reply = oneshot::Sender<Result<Reloaded, String>>;

/// Asks a serving gateway to reload its config file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<Reply>,
}

/// The gateway's end of [`reload_channel`].
#[derive(Debug)]
pub struct ReloadRequests {
    path: PathBuf,
    requests: mpsc::Receiver<Reply>,
    /// For the admin listener's `POST /reload`.
    handle: ReloadHandle,
}

/// A handle that reloads from the config file at `path`, and the end to give
/// [`Gateway::serve_with_reloads`].
pub fn reload_channel(path: PathBuf) -> (ReloadHandle, ReloadRequests) {
    // Reloads run one at a time; a few may queue behind the running one.
    let (requests, receiver) = mpsc::channel(4);
    let handle = ReloadHandle { requests };
    (
        handle.clone(),
        ReloadRequests {
            path,
            requests: receiver,
            handle,
        },
    )
}

impl ReloadHandle {
    /// Reloads and answers once the new config serves, or with every problem found (the
    /// running config then stays).
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(reply).await.is_err() {
            return Err("the gateway is shutting down".to_owned());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the gateway is shutting down".to_owned()))
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The config now running.
    pub version: ConfigVersion,
    /// Listeners that kept their socket.
    pub kept: usize,
    /// Listeners opened, with their bound addresses.
    pub opened: Vec<(String, SocketAddr)>,
    /// Listeners closed (their connections drain).
    pub closed: Vec<String>,
}

/// A listener accepting connections.
struct RunningListener {
    config: ListenerConfig,
    shared: Arc<ArcSwap<ListenerShared>>,
    /// Cancelled to stop accepting and drain the listener's connections.
    stop: CancellationToken,
    accept_loop: JoinHandle<()>,
}

/// Whether `new` is `old`'s socket: the same address (or, for port 0, the same name too).
fn same_socket(old: &ListenerConfig, new: &ListenerConfig) -> bool {
    old.address == new.address && (new.address.port() != 0 || old.name == new.name)
}

/// A serving gateway.
pub(super) struct Serving {
    current: Arc<ArcSwap<Shared>>,
    listeners: Vec<RunningListener>,
    /// The running config, to tell what a reload changes.
    config: Config,
    version: ConfigVersion,
    runtime: Runtime,
    /// Every client connection, of every listener and generation.
    connections: TaskTracker,
    /// The threads the connections run on.
    cores: Arc<Cores>,
    health: Arc<Health>,
    /// Access logs of earlier generations (the target changed), flushed at shutdown.
    retired_logs: Vec<AccessLog>,
    shutdown: CancellationToken,
    reloads: Option<ReloadRequests>,
    /// The open-file limit that start-up fitted the connection caps to, if it did: each reload
    /// fits its own the same way.
    open_files: Option<u64>,
}

impl Serving {
    pub(super) fn start(
        gateway: Gateway,
        shutdown: CancellationToken,
        reloads: Option<ReloadRequests>,
    ) -> Serving {
        let health = Arc::new(Health::new(gateway.version.clone()));
        let admin_handle = reloads.as_ref().map(|r| r.handle.clone());
        let mut serving = Serving {
            current: gateway.current,
            listeners: Vec::new(),
            health,
            version: gateway.version,
            runtime: gateway.runtime,
            connections: TaskTracker::new(),
            cores: Arc::new(gateway.cores),
            retired_logs: Vec::new(),
            shutdown,
            reloads,
            config: gateway.config,
            open_files: gateway.open_files,
        };
        for listener in gateway.listeners {
            let running = serving.start_listener(listener);
            serving.listeners.push(running);
        }
        // The admin listener answers once the gateway serves: every listener bound and every
        // plugin loaded (a port that does not answer yet is what a starting process looks like).
        if let Some((socket, tls)) = gateway.admin {
            let metrics = metrics::enable();
            metrics.watch_capacity(serving.runtime.capacity().clone());
            let admin = Admin {
                health: serving.health.clone(),
                metrics,
                reloads: admin_handle,
            };
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(listener = %"admin", %addr, "listening");
            }
            // Still answering while the gateway drains, so probes see it is not ready.
            tokio::spawn(admin::serve(admin, socket, tls, CancellationToken::new()));
        }
        serving
    }

    fn listener_shared(&self, config: &ListenerConfig, bound: &BoundListener) -> ListenerShared {
        ListenerShared::new(
            config.name.clone(),
            bound.tls.clone(),
            config.limits.clone(),
            bound.socket.local_addr().map_or(0, |a| a.port()),
            self.config.drain_timeout,
        )
    }

    fn start_listener(&self, bound: BoundListener) -> RunningListener {
        let shared = Arc::new(ArcSwap::from_pointee(
            self.listener_shared(&bound.config, &bound),
        ));
        let stop = self.shutdown.child_token();
        let config = bound.config.clone();
        let accept_loop = tokio::spawn(accept_loop(
            self.current.clone(),
            bound.socket,
            shared.clone(),
            self.connections.clone(),
            self.cores.clone(),
            stop.clone(),
        ));
        RunningListener {
            config,
            shared,
            stop,
            accept_loop,
        }
    }

    /// Serves and reloads until shutdown, then drains.
    pub(super) async fn run(mut self) {
        let mut reloads = self.reloads.take();
        loop {
            let next = async {
                match &mut reloads {
                    Some(reloads) => reloads.requests.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                Some(reply) = next => {
                    let path = reloads.as_ref().map(|r| r.path.clone()).unwrap_or_default();
                    let outcome = self.reload(&path).await;
                    // The requester may have gone; the outcome is logged either way.
                    let _ = reply.send(outcome);
                }
            }
        }
        self.drain().await;
    }

    async fn drain(self) {
        self.health.set_phase(Phase::Draining);
        // The listeners' stop tokens are children of the shutdown token: each accept loop ends
        // and each connection saw it (idle ones close, busy ones finish their requests).
        for listener in self.listeners {
            let _ = listener.accept_loop.await;
        }
        tracing::info!("shutting down: waiting for in-flight requests");
        let tasks = self.current.load().tasks.clone();
        let drained = tokio::time::timeout(self.config.drain_timeout, async {
            self.connections.close();
            self.connections.wait().await;
            tasks.close();
            tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout over; closing the remaining connections");
        }
        for log in &self.retired_logs {
            log.flush().await;
        }
        self.current.load().access_log.flush().await;
    }

    /// Reloads from `path`, logging the outcome.
    async fn reload(&mut self, path: &std::path::Path) -> Result<Reloaded, String> {
        tracing::info!(config = %path.display(), "reloading");
        let outcome = self.try_reload(path).await;
        if let Some(metrics) = metrics::get() {
            metrics.reload(outcome.is_ok());
        }
        match outcome {
            Ok(reloaded) => {
                self.health.set_version(reloaded.version.clone());
                tracing::info!(
                    config_hash = %reloaded.version.hash,
                    listeners_kept = reloaded.kept,
                    listeners_opened = reloaded.opened.len(),
                    listeners_closed = reloaded.closed.len(),
                    "reloaded"
                );
                Ok(reloaded)
            }
            Err(err) => {
                let message = err.to_string();
                for problem in message.lines() {
                    tracing::error!("reload failed, the running config stays: {problem}");
                }
                Err(message)
            }
        }
    }

    async fn try_reload(&mut self, path: &std::path::Path) -> Result<Reloaded, GatewayError> {
        let config = Config::load(path)?;
        let prepared = Gateway::prepare(&config, &self.runtime).await?;
        let mut problems = Problems {
            origins: &config.origins,
            found: Vec::new(),
        };
        let current = self.current.load_full();
        let access_log = if config.access_log == self.config.access_log {
            Some(current.access_log.clone())
        } else {
            match AccessLog::start(&config.access_log) {
                Ok(log) => Some(log),
                Err(err) => {
                    problems.add("access_log.target", format!("cannot open: {err}"));
                    None
                }
            }
        };
        // Each new listener either keeps a running one's socket or is bound now, so that a
        // port already taken fails the reload before anything changed.
        let mut kept = Vec::new();
        let mut opened = Vec::new();
        for (index, (listener, tls)) in prepared.listeners.into_iter().enumerate() {
            match self
                .listeners
                .iter()
                .position(|running| same_socket(&running.config, &listener))
            {
                Some(running) => kept.push((running, listener, tls)),
                None => {
                    if let Some(socket) = bind(&listener, index, &mut problems).await {
                        opened.push(BoundListener {
                            config: listener,
                            tls,
                            socket,
                        });
                    }
                }
            }
        }
        let access_log = match access_log {
            Some(log) if problems.found.is_empty() => log,
            // The sockets bound for this reload close here; nothing changed.
            _ => return Err(problems.into_error()),
        };
        self.warn_restart_only(&config);
        if let Some(previous) = self.open_files {
            // Raised again: the hard limit may have been raised on the running process.
            let limit = open_files::raise().unwrap_or(previous);
            self.open_files = Some(limit);
            let listeners = kept.iter_mut().map(|(_, listener, _)| listener);
            open_files::fit(
                listeners.chain(opened.iter_mut().map(|bound| &mut bound.config)),
                limit,
            );
        }

        // From here on nothing fails: the new generation goes live.
        if config.access_log != self.config.access_log {
            self.retired_logs.push(current.access_log.clone());
        }
        let tasks = current.tasks.clone();
        self.current
            .store(Arc::new(prepared.parts.into_shared(access_log, tasks)));
        self.config = config;
        self.version = ConfigVersion::of(&self.config);

        let mut previous: Vec<Option<RunningListener>> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(Some)
            .collect();
        for (index, listener, tls) in kept {
            let Some(mut running) = previous.get_mut(index).and_then(Option::take) else {
                continue;
            };
            let reloaded = running.shared.load().reloaded(
                listener.name.clone(),
                tls,
                listener.limits.clone(),
                self.config.drain_timeout,
            );
            running.shared.store(Arc::new(reloaded));
            running.config = listener;
            self.listeners.push(running);
        }
        let kept = self.listeners.len();
        let mut opened_addrs = Vec::new();
        for bound in opened {
            let name = bound.config.name.clone();
            if let Ok(addr) = bound.socket.local_addr() {
                tracing::info!(listener = %name, %addr, "listening");
                opened_addrs.push((name, addr));
            }
            let running = self.start_listener(bound);
            self.listeners.push(running);
        }
        let mut closed = Vec::new();
        for removed in previous.into_iter().flatten() {
            tracing::info!(listener = %removed.config.name, "listener removed: draining");
            removed.stop.cancel();
            closed.push(removed.config.name);
        }
        Ok(Reloaded {
            version: self.version.clone(),
            kept,
            opened: opened_addrs,
            closed,
        })
    }

    /// Settings fixed for the life of the process: a change is reported, not applied.
    fn warn_restart_only(&self, new: &Config) {
        let running = &self.config;
        let changed = [
            ("runtime", running.runtime != new.runtime),
            ("admin", running.admin != new.admin),
            ("pid_file", running.pid_file != new.pid_file),
            ("workers", running.workers != new.workers),
        ];
        for (field, _) in changed.iter().filter(|(_, changed)| *changed) {
            tracing::warn!(
                field,
                "changed in the config file; takes effect at the next restart, not on reload"
            );
        }
    }
}
