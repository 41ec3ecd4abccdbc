//! The gateway: listeners, the certificate phase on each TLS connection, and the request path.
//!
//! [`Gateway::build`] turns a checked [`Config`] into running parts (plugins loaded and
//! configured, TLS listeners with their certificates, routes, upstreams, the access log);
//! [`Gateway::serve`] accepts connections until shutdown, then drains in-flight requests. With a
//! [`ReloadHandle`] it also reloads its config file on request without dropping anything
//! (`reload.rs`).

mod admin;
mod body;
mod capacity_report;
mod chains;
mod connection;
pub mod demo;
mod open_files;
mod reload;
mod request;
mod watchdog;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigProblem, ListenerConfig, Origins, Protocol};
use crate::cores::Cores;
use crate::log::AccessLog;
use crate::metrics::{self, RouteMeter};
use crate::proxy::forwarding::ClientHeaderPolicy;
use crate::proxy::router::{Route, Router};
use crate::proxy::upstream::{Upstream, UpstreamSettings};
use crate::runtime::{LoadError, PluginFault, PluginSpec, Runtime, Stage};
use crate::tls::{self, ListenerTls, ServerCertificate, TicketKeys, TlsError, TrustAnchors};

pub use admin::{Health, Phase as HealthPhase};
pub use capacity_report::{OversizedStart, RouteCapacity, human_bytes};
pub use chains::{Chain, Chains};
pub use reload::{ReloadHandle, ReloadRequests, Reloaded, reload_channel};
pub use watchdog::RESET_WINDOW;

/// Why the gateway could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Files, plugins or sockets the config names are unusable: every problem found, each with
    /// the config's line and field.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The connection threads could not start.
    #[error("cannot start the connection threads: {0}")]
    Threads(std::io::Error),
}

/// An upstream service.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    pub(crate) upstream: Upstream,
}

/// What every connection and request shares: one generation of the config. A reload swaps in
/// a new one; requests keep the one they started with.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) chains: Chains,
    pub(crate) services: Vec<Service>,
    pub(crate) access_log: AccessLog,
    /// Which client-sent headers are believed.
    pub(crate) client_headers: ClientHeaderPolicy,
    /// Each route's request metrics, when metrics are on.
    pub(crate) meters: Option<RouteMeters>,
    /// Response pumps and log phases still running, of every generation; waited for at
    /// shutdown.
    pub(crate) tasks: TaskTracker,
}

/// A listener, bound.
#[derive(Debug)]
struct BoundListener {
    config: ListenerConfig,
    tls: Option<Arc<ListenerTls>>,
    socket: TcpListener,
}

/// Which version of the config is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigVersion {
    /// SHA-256 of the config file's text, in hex.
    pub hash: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl ConfigVersion {
    fn of(config: &Config) -> ConfigVersion {
        ConfigVersion {
            hash: config.origins.text_hash(),
            loaded_at: SystemTime::now(),
        }
    }
}

/// A built gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    current: Arc<ArcSwap<Shared>>,
    listeners: Vec<BoundListener>,
    /// The config running now, to tell what a reload changes.
    config: Config,
    version: ConfigVersion,
    runtime: Runtime,
    /// The admin listener, when configured, and its TLS.
    admin: Option<(TcpListener, Option<Arc<rustls::ServerConfig>>)>,
    /// The open-file limit the connection caps were fitted to, once
    /// [`Gateway::raise_open_file_limit`] ran; reloads fit theirs too.
    open_files: Option<u64>,
    /// The threads that will serve the connections.
    cores: Cores,
}

/// The problems found while preparing, each placed at its field in the config file.
struct Problems<'c> {
    origins: &'c Origins,
    found: Vec<ConfigProblem>,
}

impl Problems<'_> {
    fn add(&mut self, field: impl Into<String>, message: impl std::fmt::Display) {
        self.found.push(self.origins.problem(field, message));
    }

    /// Reads the PEM file at `path`, named by `field`, and parses it with `parse`.
    fn pem<T, E: std::fmt::Display>(
        &mut self,
        path: &Path,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                self.add(field, format!("cannot read {}: {err}", path.display()));
                return None;
            }
        };
        match parse(&text) {
            Ok(value) => Some(value),
            Err(err) => {
                self.add(field, format!("{}: {err}", path.display()));
                None
            }
        }
    }

    fn into_result(self) -> Result<(), GatewayError> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }

    fn into_error(self) -> GatewayError {
        self.origins.error(self.found).into()
    }
}

/// The listener's TLS side; `None` for a plaintext listener or when a problem was found.
fn listener_tls(
    listener: &ListenerConfig,
    at: &str,
    problems: &mut Problems<'_>,
) -> Option<ListenerTls> {
    let mut certificates = Vec::new();
    for (index, certificate) in listener.certificates.iter().enumerate() {
        let field = format!("{at}.certificates[{index}]");
        let chain = problems.pem(&certificate.cert, &format!("{field}.cert"), |text| {
            tls::parse_certificates(text)
        });
        let key = problems.pem(&certificate.key, &format!("{field}.key"), |text| {
            tls::parse_private_key(text)
        });
        if let (Some(chain), Some(key)) = (chain, key) {
            certificates.push(ServerCertificate {
                server_names: certificate.server_names.clone(),
                chain,
                key,
            });
        }
    }
    let client_ca = listener
        .client_ca
        .as_ref()
        .map(|path| problems.pem(path, &format!("{at}.client_ca"), TrustAnchors::from_pem));
    let ca_read = client_ca.as_ref().is_none_or(Option::is_some);
    // With every certificate read, the keys are checked even if the CA file failed, so one run
    // reports both.
    if certificates.len() < listener.certificates.len() {
        return None;
    }
    let mut ticket_keys = TicketKeys::default();
    let mut keys_read = true;
    for (index, path) in listener.session_ticket_keys.iter().enumerate() {
        let field = format!("{at}.session_ticket_keys[{index}]");
        // Secrets: read as bytes, never echoed into a message.
        match std::fs::read(path) {
            Ok(bytes) => {
                if let Err(err) = ticket_keys.add_file(&bytes) {
                    problems.add(field, format!("{}: {err}", path.display()));
                    keys_read = false;
                }
            }
            Err(err) => {
                problems.add(field, format!("cannot read {}: {err}", path.display()));
                keys_read = false;
            }
        }
    }
    match ListenerTls::new(
        certificates,
        client_ca.flatten(),
        listener.handshake_timeout,
    ) {
        Ok(tls) => (ca_read && keys_read).then(|| tls.with_ticket_keys(ticket_keys)),
        Err(TlsError::InvalidKey { index, source }) => {
            let certificate = &listener.certificates[index];
            problems.add(
                format!("{at}.certificates[{index}].key"),
                format!(
                    "{} does not match the certificate in {} or is unusable ({source})",
                    certificate.key.display(),
                    certificate.cert.display()
                ),
            );
            None
        }
        Err(err) => {
            let field = match &err {
                TlsError::EmptyChain { index } => format!("{at}.certificates[{index}].cert"),
                _ => at.to_owned(),
            };
            problems.add(field, err);
            None
        }
    }
}

/// The admin listener's TLS config (client certificates required).
fn admin_tls(
    tls: &crate::config::AdminTls,
    problems: &mut Problems<'_>,
) -> Option<Arc<rustls::ServerConfig>> {
    let chain = problems.pem(&tls.cert, "admin.cert", tls::parse_certificates);
    let key = problems.pem(&tls.key, "admin.key", tls::parse_private_key);
    let client_ca = problems.pem(&tls.client_ca, "admin.client_ca", TrustAnchors::from_pem);
    match tls::mutual_tls_config(chain?, key?, &client_ca?) {
        Ok(config) => Some(config),
        Err(TlsError::InvalidKey { source, .. }) => {
            problems.add(
                "admin.key",
                format!(
                    "{} does not match the certificate in {} or is unusable ({source})",
                    tls.key.display(),
                    tls.cert.display()
                ),
            );
            None
        }
        Err(TlsError::ClientVerifier(err)) => {
            problems.add(
                "admin.client_ca",
                format!("{}: {err}", tls.client_ca.display()),
            );
            None
        }
        Err(err) => {
            problems.add("admin", err);
            None
        }
    }
}

/// The config field a plugin load error is about: the limit a call at load ran into, the
/// configuration `configure` failed on, or else the file.
fn plugin_load_field(err: &LoadError) -> &'static str {
    match err {
        LoadError::Setup { source, .. } => match source.fault {
            PluginFault::Timeout(_) => "time_limit",
            PluginFault::MemoryLimit(_) => "memory_limit",
            _ if source.stage == Stage::Configure => "config",
            _ => "path",
        },
        _ => "path",
    }
}

impl Gateway {
    /// Loads every plugin and reads every file the config names, without binding sockets.
    /// This is what `tollgate check` runs, so a config that checks clean also starts. Every
    /// problem is reported, each with the config's line and field.
    pub async fn prepare(config: &Config, runtime: &Runtime) -> Result<Prepared, GatewayError> {
        let mut problems = Problems {
            origins: &config.origins,
            found: Vec::new(),
        };
        let mut plugins = Vec::new();
        for plugin in &config.plugins {
            let spec = PluginSpec {
                name: plugin.name.clone(),
                path: plugin.path.clone(),
                config: plugin.config.clone(),
                memory_limit: plugin.memory_limit,
                time_limit: plugin.time_limit,
                fail_open: plugin.fail_open,
            };
            match runtime.load(spec).await {
                Ok(loaded) => plugins.push((plugin.attached_to.clone(), loaded)),
                Err(err) => {
                    let at = config.origins.plugin_field(&plugin.name);
                    problems.add(format!("{at}.{}", plugin_load_field(&err)), err);
                }
            }
        }
        let mut listeners = Vec::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let tls = if listener.is_tls() {
                match listener_tls(listener, &format!("listeners[{index}]"), &mut problems) {
                    Some(tls) => Some(Arc::new(tls)),
                    None => continue,
                }
            } else {
                None
            };
            listeners.push((listener.clone(), tls));
        }
        let mut services = Vec::new();
        for (index, service) in config.services.iter().enumerate() {
            let at = format!("services[{index}]");
            let extra_ca = match &service.ca {
                Some(path) => {
                    match problems.pem(path, &format!("{at}.ca"), tls::parse_certificates) {
                        Some(ca) => ca,
                        None => continue,
                    }
                }
                None => Vec::new(),
            };
            let upstream = Upstream::new(UpstreamSettings {
                targets: service.targets.iter().map(ToString::to_string).collect(),
                https: service.protocol == Protocol::Https,
                connect_timeout: service.connect_timeout,
                read_timeout: service.read_timeout,
                body_timeout: service.body_timeout,
                retries: service.retries,
                tls_verify: service.tls_verify,
                extra_ca,
            });
            match upstream {
                Ok(upstream) => services.push(Service {
                    name: service.name.clone(),
                    protocol: service.protocol,
                    upstream,
                }),
                Err(err) => problems.add(at, err),
            }
        }
        let admin_tls = config
            .admin
            .as_ref()
            .and_then(|admin| admin.tls.as_ref())
            .and_then(|tls| admin_tls(tls, &mut problems));
        problems.into_result()?;
        let service_index = |name: &str| services.iter().position(|s| s.name == name);
        let routes: Vec<Route> = config
            .routes
            .iter()
            .filter_map(|route| {
                Some(Route {
                    name: route.name.clone(),
                    hosts: route.hosts.clone(),
                    paths: route.paths.clone(),
                    methods: route.methods.clone(),
                    service: service_index(&route.service)?,
                })
            })
            .collect();
        let route_services: Vec<(String, String)> = config
            .routes
            .iter()
            .map(|route| (route.name.clone(), route.service.clone()))
            .collect();
        Ok(Prepared {
            parts: SharedParts {
                router: Router::new(routes),
                chains: Chains::new(plugins, &route_services),
                services,
                client_headers: ClientHeaderPolicy::new(
                    config.trusted_ips.clone(),
                    config.strip_client_headers.clone(),
                ),
            },
            listeners,
            access_log: config.access_log.clone(),
            admin_tls,
        })
    }

    /// Prepares the gateway, opens the access log and binds every listener. Nothing is bound
    /// when anything fails, and every problem is reported.
    pub async fn build(config: &Config, runtime: &Runtime) -> Result<Gateway, GatewayError> {
        if config.admin.is_some() {
            // Before the routes' meters are resolved in `prepare`.
            metrics::enable();
        }
        let prepared = Gateway::prepare(config, runtime).await?;
        let mut problems = Problems {
            origins: &config.origins,
            found: Vec::new(),
        };
        let access_log = match AccessLog::start(&prepared.access_log) {
            Ok(log) => Some(log),
            Err(err) => {
                problems.add("access_log.target", format!("cannot open: {err}"));
                None
            }
        };
        let mut listeners = Vec::new();
        for (index, (listener, tls)) in prepared.listeners.into_iter().enumerate() {
            if let Some(socket) = bind(&listener, index, &mut problems).await {
                listeners.push(BoundListener {
                    config: listener,
                    tls,
                    socket,
                });
            }
        }
        let admin = match &config.admin {
            Some(admin) => match TcpListener::bind(admin.address).await {
                Ok(socket) => Some((socket, prepared.admin_tls.clone())),
                Err(err) => {
                    problems.add(
                        "admin.address",
                        format!("cannot listen on {}: {err}", admin.address),
                    );
                    None
                }
            },
            None => None,
        };
        let access_log = match access_log {
            Some(access_log) if problems.found.is_empty() => access_log,
            // Dropping the bound sockets here: nothing listens when anything failed.
            _ => return Err(problems.into_error()),
        };
        let cores = Cores::start(config.workers).map_err(GatewayError::Threads)?;
        let parts = prepared.parts;
        Ok(Gateway {
            current: Arc::new(ArcSwap::from_pointee(
                parts.into_shared(access_log, TaskTracker::new()),
            )),
            listeners,
            version: ConfigVersion::of(config),
            config: config.clone(),
            runtime: runtime.clone(),
            admin,
            open_files: None,
            cores,
        })
    }

    /// The bound addresses, by listener name (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.config.name.clone(), l.socket.local_addr().ok()?)))
            .collect()
    }

    /// The admin listener's bound address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.0.local_addr().ok()
    }

    /// The version of the config running now.
    pub fn version(&self) -> &ConfigVersion {
        &self.version
    }

    /// Raises the process's open-file soft limit to its hard limit (each client connection
    /// holds a descriptor, and one more upstream while its request is in flight). When even that
    /// is below what the listeners' `max_connections` may need, lowers their caps to fit, so a
    /// connection past it is refused at once and the rest are served, instead of every accept
    /// failing for want of descriptors; every reload from then on fits its caps the same way.
    /// Returns the new soft limit. Unix only; elsewhere it does nothing.
    pub fn raise_open_file_limit(&mut self) -> Option<u64> {
        let limit = open_files::raise()?;
        self.open_files = Some(limit);
        if !open_files::fit(self.listeners.iter_mut().map(|l| &mut l.config), limit) {
            tracing::info!(open_files = limit, "open-file limit");
        }
        Some(limit)
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests
    /// finish within the config's `drain_timeout`, and flushes the access log.
    pub async fn serve(self, shutdown: CancellationToken) {
        self.serve_with_reloads(shutdown, None).await;
    }

    /// [`Gateway::serve`], also reloading the config file on each request `reloads` receives
    /// (see [`reload_channel`]).
    pub async fn serve_with_reloads(
        self,
        shutdown: CancellationToken,
        reloads: Option<ReloadRequests>,
    ) {
        reload::Serving::start(self, shutdown, reloads).run().await;
    }
}

/// Binds the listener, or adds why it cannot to `problems`.
async fn bind(
    listener: &ListenerConfig,
    index: usize,
    problems: &mut Problems<'_>,
) -> Option<TcpListener> {
    match TcpListener::bind(listener.address).await {
        Ok(socket) => Some(socket),
        Err(err) => {
            problems.add(
                format!("listeners[{index}].address"),
                format!("cannot listen on {}: {err}", listener.address),
            );
            None
        }
    }
}

/// Each route's request metrics, resolved when the config is loaded.
#[derive(Debug)]
pub(crate) struct RouteMeters {
    by_route: std::collections::HashMap<String, RouteMeter>,
    unrouted: RouteMeter,
}

impl RouteMeters {
    fn new(metrics: &metrics::Metrics, router: &Router) -> RouteMeters {
        RouteMeters {
            by_route: router
                .routes()
                .iter()
                .map(|route| (route.name.clone(), metrics.route(&route.name)))
                .collect(),
            unrouted: metrics.route(metrics::NO_ROUTE),
        }
    }

    /// The meter of the named route, or of unrouted requests.
    pub(crate) fn get(&self, route: Option<&str>) -> &RouteMeter {
        route
            .and_then(|route| self.by_route.get(route))
            .unwrap_or(&self.unrouted)
    }
}

/// The routing, plugins and upstreams of one generation, before the access log joins them.
#[derive(Debug)]
struct SharedParts {
    router: Router,
    chains: Chains,
    services: Vec<Service>,
    client_headers: ClientHeaderPolicy,
}

impl SharedParts {
    fn into_shared(self, access_log: AccessLog, tasks: TaskTracker) -> Shared {
        Shared {
            meters: metrics::get().map(|metrics| RouteMeters::new(metrics, &self.router)),
            router: self.router,
            chains: self.chains,
            services: self.services,
            access_log,
            client_headers: self.client_headers,
            tasks,
        }
    }
}

/// A gateway with everything loaded but no socket bound.
#[derive(Debug)]
pub struct Prepared {
    parts: SharedParts,
    listeners: Vec<(ListenerConfig, Option<Arc<ListenerTls>>)>,
    access_log: crate::config::AccessLogTarget,
    admin_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = interrupt => {},
                        _ = terminate.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = interrupt.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = interrupt.await;
        }
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}
