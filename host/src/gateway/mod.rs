//! The gateway: listeners, the certificate phase on each TLS connection, and the request path.
//!
//! [`Gateway::build`] turns a checked [`Config`] into running parts (plugins loaded and
//! configured, TLS listeners with their certificates, routes, upstreams, the access log);
//! [`Gateway::serve`] accepts connections until shutdown, then drains in-flight requests.

mod body;
mod chains;
mod connection;
pub mod demo;
mod request;
mod watchdog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClientLimits, Config, ListenerConfig, Protocol};
use crate::log::AccessLog;
use crate::proxy::forwarding::ClientHeaderPolicy;
use crate::proxy::router::{Route, Router};
use crate::proxy::upstream::{Upstream, UpstreamSettings};
use crate::runtime::{PluginSpec, Runtime};
use crate::tls::{self, ListenerTls, ServerCertificate, TrustAnchors};

pub use chains::{Chain, Chains};
pub use watchdog::RESET_WINDOW;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the gateway could not be built or started. Names the file or listener at fault.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A file named by the config could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::runtime::LoadError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// A listener's TLS settings were refused.
    #[error("listener {listener}: {message}")]
    Listener {
        /// The listener's name.
        listener: String,
        /// What is wrong.
        message: String,
    },
    /// A service's upstream settings were refused.
    #[error("service {service}: {message}")]
    Service {
        /// The service's name.
        service: String,
        /// What is wrong.
        message: String,
    },
    /// A listening socket could not be bound.
    #[error("listener {listener}: cannot listen on {address}: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// Its address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
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

fn read_file(path: &std::path::Path) -> Result<String, GatewayError> {
    std::fs::read_to_string(path).map_err(|err| GatewayError::File {
        path: path.to_path_buf(),
        message: format!("cannot read: {err}"),
    })
}

fn listener_tls(listener: &ListenerConfig) -> Result<Option<ListenerTls>, GatewayError> {
    if !listener.is_tls() {
        return Ok(None);
    }
    let mut certificates = Vec::new();
    for certificate in &listener.certificates {
        let chain = tls::parse_certificates(&read_file(&certificate.cert)?).map_err(|err| {
            GatewayError::File {
                path: certificate.cert.clone(),
                message: err.to_string(),
            }
        })?;
        let key = tls::parse_private_key(&read_file(&certificate.key)?).map_err(|err| {
            GatewayError::File {
                path: certificate.key.clone(),
                message: err.to_string(),
            }
        })?;
        certificates.push(ServerCertificate {
            server_names: certificate.server_names.clone(),
            chain,
            key,
        });
    }
    let client_ca =
        match &listener.client_ca {
            Some(path) => Some(TrustAnchors::from_pem(&read_file(path)?).map_err(|err| {
                GatewayError::File {
                    path: path.clone(),
                    message: err.to_string(),
                }
            })?),
            None => None,
        };
    ListenerTls::new(certificates, client_ca, listener.handshake_timeout)
        .map(Some)
        .map_err(|err| GatewayError::Listener {
            listener: listener.name.clone(),
            message: err.to_string(),
        })
}

impl Gateway {
    /// Loads every plugin and reads every file the config names, without binding sockets.
    /// This is what `tollgate check` runs, so a config that checks clean also starts.
    pub async fn prepare(config: &Config, runtime: &Runtime) -> Result<Prepared, GatewayError> {
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
            plugins.push((plugin.scope.clone(), runtime.load(spec).await?));
        }
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            listeners.push((listener.clone(), listener_tls(listener)?.map(Arc::new)));
        }
        let mut services = Vec::new();
        for service in &config.services {
            let extra_ca = match &service.ca {
                Some(path) => tls::parse_certificates(&read_file(path)?).map_err(|err| {
                    GatewayError::File {
                        path: path.clone(),
                        message: err.to_string(),
                    }
                })?,
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
            })
            .map_err(|err| GatewayError::Service {
                service: service.name.clone(),
                message: err.to_string(),
            })?;
            services.push(Service {
                name: service.name.clone(),
                protocol: service.protocol,
                upstream,
            });
        }
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

    /// Prepares the gateway, binds its listeners and opens the access log.
    pub async fn build(config: &Config, runtime: &Runtime) -> Result<Gateway, GatewayError> {
        let prepared = Gateway::prepare(config, runtime).await?;
        let mut listeners = Vec::new();
        for (listener, tls) in prepared.listeners {
            let socket = TcpListener::bind(listener.address)
                .await
                .map_err(|source| GatewayError::Bind {
                    listener: listener.name.clone(),
                    address: listener.address,
                    source,
                })?;
            listeners.push(BoundListener {
                name: listener.name,
                tls,
                socket,
                limits: listener.limits,
            });
        }
        let access_log = AccessLog::start(&prepared.access_log).map_err(GatewayError::AccessLog)?;
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
    /// holds a descriptor, and one more upstream while its request is in flight), and warns when
    /// even that is below what the listeners' `max_connections` may need. Returns the new soft
    /// limit. Unix only; elsewhere it does nothing.
    pub fn raise_open_file_limit(&self) -> Option<u64> {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(err) => {
                tracing::warn!(%err, "cannot raise the open-file limit");
                return None;
            }
        };
        let connections: u64 = self
            .listeners
            .iter()
            .map(|l| l.limits.max_connections as u64)
            .sum();
        // Two descriptors per connection (client and upstream), and some for everything else.
        let needed = connections.saturating_mul(2).saturating_add(64);
        if limit < needed {
            tracing::warn!(
                open_files = limit,
                needed,
                "the open-file limit is below what the listeners' max_connections may need; \
                 lower max_connections or raise the hard limit (ulimit -Hn, LimitNOFILE)"
            );
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
