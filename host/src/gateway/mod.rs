//! The gateway: listeners, the certificate phase on each TLS connection, and the request path.
//!
//! [`Gateway::build`] turns a checked [`Config`] into running parts (plugins loaded and
//! configured, TLS listeners with their certificates, routes, upstreams, the access log);
//! [`Gateway::serve`] accepts connections until shutdown, then drains in-flight requests.

mod body;
mod capacity_report;
mod chains;
mod connection;
pub mod demo;
mod request;
mod watchdog;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClientLimits, Config, ConfigProblem, ListenerConfig, Origins, Protocol};
use crate::log::AccessLog;
use crate::proxy::forwarding::ClientHeaderPolicy;
use crate::proxy::router::{Route, Router};
use crate::proxy::upstream::{Upstream, UpstreamSettings};
use crate::runtime::{LoadError, PluginFault, PluginSpec, Runtime};
use crate::tls::{self, ListenerTls, ServerCertificate, TlsError, TrustAnchors};

pub use capacity_report::{RouteCapacity, human_bytes};
pub use chains::{Chain, Chains};
pub use watchdog::RESET_WINDOW;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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
}

/// An upstream service.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    pub(crate) upstream: Upstream,
}

/// What every connection and request shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) chains: Chains,
    pub(crate) services: Vec<Service>,
    pub(crate) access_log: AccessLog,
    /// Which client-sent headers are believed.
    pub(crate) client_headers: ClientHeaderPolicy,
    /// Response pumps and log phases still running; waited for at shutdown.
    pub(crate) tasks: TaskTracker,
}

/// A listener, bound.
#[derive(Debug)]
struct BoundListener {
    name: String,
    tls: Option<Arc<ListenerTls>>,
    socket: TcpListener,
    limits: ClientLimits,
}

/// A built gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Vec<BoundListener>,
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
    match ListenerTls::new(
        certificates,
        client_ca.flatten(),
        listener.handshake_timeout,
    ) {
        Ok(tls) => ca_read.then_some(tls),
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

/// The config field a plugin load error is about.
fn plugin_load_field(err: &LoadError) -> &'static str {
    match err {
        LoadError::Setup { source, .. }
            if matches!(source.fault, PluginFault::ConfigRejected(_)) =>
        {
            "config"
        }
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
            router: Router::new(routes),
            chains: Chains::new(plugins, &route_services),
            services,
            listeners,
            access_log: config.access_log.clone(),
            client_headers: ClientHeaderPolicy::new(
                config.trusted_ips.clone(),
                config.strip_client_headers.clone(),
            ),
        })
    }

    /// Prepares the gateway, opens the access log and binds every listener. Nothing is bound
    /// when anything fails, and every problem is reported.
    pub async fn build(config: &Config, runtime: &Runtime) -> Result<Gateway, GatewayError> {
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
            match TcpListener::bind(listener.address).await {
                Ok(socket) => listeners.push(BoundListener {
                    name: listener.name,
                    tls,
                    socket,
                    limits: listener.limits,
                }),
                Err(err) => problems.add(
                    format!("listeners[{index}].address"),
                    format!("cannot listen on {}: {err}", listener.address),
                ),
            }
        }
        let access_log = match access_log {
            Some(access_log) if problems.found.is_empty() => access_log,
            // Dropping the bound sockets here: nothing listens when anything failed.
            _ => return Err(problems.into_error()),
        };
        Ok(Gateway {
            shared: Arc::new(Shared {
                router: prepared.router,
                chains: prepared.chains,
                services: prepared.services,
                access_log,
                client_headers: prepared.client_headers,
                tasks: TaskTracker::new(),
            }),
            listeners,
        })
    }

    /// The bound addresses, by listener name (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.socket.local_addr().ok()?)))
            .collect()
    }

    /// Raises the process's open-file soft limit to its hard limit (each client connection
    /// holds a descriptor, and one more upstream while its request is in flight). When even that
    /// is below what the listeners' `max_connections` may need, lowers their caps to fit, so a
    /// connection past it is refused at once and the rest are served, instead of every accept
    /// failing for want of descriptors. Returns the new soft limit. Unix only; elsewhere it does
    /// nothing.
    pub fn raise_open_file_limit(&mut self) -> Option<u64> {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(err) => {
                tracing::warn!(%err, "cannot raise the open-file limit");
                return None;
            }
        };
        let mut caps: Vec<usize> = self
            .listeners
            .iter()
            .map(|l| l.limits.max_connections)
            .collect();
        if fit_connection_caps(&mut caps, limit) {
            for (listener, cap) in self.listeners.iter_mut().zip(caps) {
                if cap < listener.limits.max_connections {
                    tracing::warn!(
                        listener = %listener.name,
                        open_files = limit,
                        configured = listener.limits.max_connections,
                        max_connections = cap,
                        "the open-file limit is below what max_connections needs; lowered the \
                         cap to fit (raise the hard limit with ulimit -Hn or LimitNOFILE)"
                    );
                    listener.limits.max_connections = cap;
                }
            }
        } else {
            tracing::info!(open_files = limit, "open-file limit");
        }
        Some(limit)
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests
    /// finish within [`SHUTDOWN_GRACE`], and flushes the access log.
    pub async fn serve(self, shutdown: CancellationToken) {
        let connections = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for listener in self.listeners {
            accept_loops.push(tokio::spawn(connection::accept_loop(
                self.shared.clone(),
                listener,
                connections.clone(),
                shutdown.clone(),
            )));
        }
        shutdown.cancelled().await;
        for accept_loop in accept_loops {
            let _ = accept_loop.await;
        }
        tracing::info!("shutting down: waiting for in-flight requests");
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            // Each connection saw the shutdown: idle ones close, busy ones finish their requests.
            connections.close();
            connections.wait().await;
            self.shared.tasks.close();
            self.shared.tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over; closing the remaining connections");
        }
        self.shared.access_log.flush().await;
    }
}

/// A gateway with everything loaded but no socket bound.
#[derive(Debug)]
pub struct Prepared {
    router: Router,
    chains: Chains,
    services: Vec<Service>,
    listeners: Vec<(ListenerConfig, Option<Arc<ListenerTls>>)>,
    access_log: crate::config::AccessLogTarget,
    client_headers: ClientHeaderPolicy,
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

/// Descriptors kept for everything that is not a client connection: listeners, the log file,
/// plugin files, the epoch ticker, stdio.
const RESERVED_FILES: u64 = 64;

/// Lowers `caps` (connections per listener) in proportion so that two descriptors per connection
/// (client and upstream) and [`RESERVED_FILES`] fit `open_files`; each listener keeps at least
/// one. Returns whether it lowered any.
fn fit_connection_caps(caps: &mut [usize], open_files: u64) -> bool {
    let wanted: u64 = caps.iter().map(|&cap| cap as u64).sum();
    let room = open_files.saturating_sub(RESERVED_FILES) / 2;
    if wanted <= room {
        return false;
    }
    for cap in caps.iter_mut() {
        let share = (*cap as u64).saturating_mul(room) / wanted.max(1);
        *cap = usize::try_from(share).unwrap_or(usize::MAX).max(1);
    }
    true
}

#[cfg(test)]
mod open_file_tests {
    use super::fit_connection_caps;

    #[test]
    fn caps_that_fit_the_open_file_limit_are_kept() {
        let mut caps = [4096, 100];
        assert!(!fit_connection_caps(&mut caps, 1 << 20));
        assert_eq!(caps, [4096, 100]);
    }

    #[test]
    fn caps_past_the_open_file_limit_are_lowered_in_proportion() {
        // 1024 descriptors: 64 reserved, two per connection: 480 connections in all.
        let mut caps = [4096, 4096];
        assert!(fit_connection_caps(&mut caps, 1024));
        assert_eq!(caps, [240, 240]);
        let mut caps = [3000, 1000, 1];
        assert!(fit_connection_caps(&mut caps, 1024));
        assert_eq!(caps, [359, 119, 1]);
        assert!(caps.iter().sum::<usize>() <= 480);
    }
}
