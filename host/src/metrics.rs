//! The gateway's metrics, served in Prometheus (OpenMetrics) text by the admin listener.
//!
//! Process-wide and off unless the admin listener is configured: [`enable`] turns them on once
//! at start, and every instrumentation point is `if let Some(m) = metrics::get()`, one atomic
//! load when they are off. The request path uses handles resolved when the config is loaded
//! ([`RouteMeter`]): a request adds to a counter and observes a histogram, without hashing or
//! formatting a label.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tollgate_phases::Phase;

use crate::runtime::Capacity;

/// Seconds, from 100 µs to about 26 s: request, upstream and plugin-call latencies.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

/// The route label of requests that matched no route (or were refused before routing).
pub const NO_ROUTE: &str = "(none)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status_class: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    version: &'static str,
    resumed: &'static str,
    client_verify: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeFailureLabels {
    listener: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    plugin: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginFailureLabels {
    plugin: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    thread: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric family the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    upstream_duration: HistogramFamily<RouteLabels>,
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_failures: Family<HandshakeFailureLabels, Counter>,
    plugin_calls: HistogramFamily<PluginCallLabels>,
    plugin_failures: Family<PluginFailureLabels, Counter>,
    instances_live: Gauge,
    instance_slots: Gauge,
    open_connections: Family<ListenerLabels, Gauge>,
    thread_connections: Family<ThreadLabels, Gauge>,
    reloads: Family<OutcomeLabels, Counter>,
    /// Read at each scrape for the instance gauges.
    capacity: Mutex<Option<Arc<Capacity>>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for the life of the process.
pub fn enable() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The metrics, when on.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route, status class and protocol",
            Family::clone(&requests),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the log phase, by route",
            request_duration.clone(),
        );
        let upstream_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time spent on the upstream (connect to response end, all tries; millisecond \
             resolution), by route",
            upstream_duration.clone(),
        );
        let handshakes = Family::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed, by listener, version, resumption and client_verify",
            Family::clone(&handshakes),
        );
        let handshake_failures = Family::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that did not complete, by listener and cause",
            Family::clone(&handshake_failures),
        );
        let plugin_calls: HistogramFamily<PluginCallLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "plugin_call_duration_seconds",
            "Plugin phase calls (instantiation included), by plugin and phase",
            plugin_calls.clone(),
        );
        let plugin_failures = Family::default();
        registry.register(
            "plugin_failures",
            "Plugin calls that failed, by plugin and kind (trap, timeout, memory_limit, \
             memory_budget, rejected: no instance slot, failed: the plugin returned an error, \
             config_rejected, instantiate)",
            Family::clone(&plugin_failures),
        );
        let instances_live = Gauge::default();
        registry.register(
            "plugin_instances_live",
            "Plugin instances alive now",
            instances_live.clone(),
        );
        let instance_slots = Gauge::default();
        registry.register(
            "plugin_instance_slots",
            "Plugin instance slots in the pool (runtime.max_instances)",
            instance_slots.clone(),
        );
        let open_connections = Family::default();
        registry.register(
            "open_connections",
            "Client connections open now, by listener",
            Family::clone(&open_connections),
        );
        let thread_connections = Family::default();
        registry.register(
            "connection_thread_connections",
            "Client connections open now, by connection thread (conn-N; see `workers`)",
            Family::clone(&thread_connections),
        );
        let reloads = Family::default();
        registry.register(
            "reloads",
            "Config reloads, by outcome (success, failure)",
            Family::clone(&reloads),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            handshakes,
            handshake_failures,
            plugin_calls,
            plugin_failures,
            instances_live,
            instance_slots,
            open_connections,
            thread_connections,
            reloads,
            capacity: Mutex::new(None),
        }
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> String {
        if let Some(capacity) = self.lock_capacity().as_ref() {
            let slots = i64::from(capacity.limits().max_instances);
            let free = i64::try_from(capacity.free_slots()).unwrap_or(i64::MAX);
            self.instance_slots.set(slots);
            self.instances_live.set(slots - free);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn lock_capacity(&self) -> std::sync::MutexGuard<'_, Option<Arc<Capacity>>> {
        self.capacity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The instance pool the instance gauges read.
    pub fn watch_capacity(&self, capacity: Arc<Capacity>) {
        *self.lock_capacity() = Some(capacity);
    }

    /// The handles of `route`'s requests (use [`NO_ROUTE`] for unrouted ones).
    pub fn route(&self, route: &str) -> RouteMeter {
        let labels = RouteLabels {
            route: route.to_owned(),
        };
        let requests = std::array::from_fn(|class| {
            std::array::from_fn(|protocol| {
                self.requests.get_or_create_owned(&RequestLabels {
                    route: route.to_owned(),
                    status_class: STATUS_CLASSES[class],
                    protocol: PROTOCOLS[protocol],
                })
            })
        });
        RouteMeter {
            requests,
            duration: self.request_duration.get_or_create_owned(&labels),
            upstream: self.upstream_duration.get_or_create_owned(&labels),
        }
    }

    /// Counts a completed handshake; `verify` is `NONE`, `SUCCESS` or `FAILED` (the reason is
    /// in the access log, not in a label).
    pub fn handshake(
        &self,
        listener: &str,
        version: &'static str,
        resumed: bool,
        verify: &'static str,
    ) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.to_owned(),
                version,
                resumed: if resumed { "true" } else { "false" },
                client_verify: verify,
            })
            .inc();
    }

    /// Counts a handshake that failed for `cause`.
    pub fn handshake_failure(&self, listener: &str, cause: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeFailureLabels {
                listener: listener.to_owned(),
                cause,
            })
            .inc();
    }

    /// Observes one plugin call.
    pub fn plugin_call(&self, plugin: &str, phase: Phase, took: Duration) {
        self.plugin_calls
            .get_or_create(&PluginCallLabels {
                plugin: plugin.to_owned(),
                phase: phase.name(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a failed plugin call.
    pub fn plugin_failure(&self, plugin: &str, kind: &'static str) {
        self.plugin_failures
            .get_or_create(&PluginFailureLabels {
                plugin: plugin.to_owned(),
                kind,
            })
            .inc();
    }

    /// The open-connections gauge of `listener`.
    pub fn open_connections(&self, listener: &str) -> Gauge {
        self.open_connections.get_or_create_owned(&ListenerLabels {
            listener: listener.to_owned(),
        })
    }

    /// The open-connections gauge of connection thread `index`.
    pub fn thread_connections(&self, index: usize) -> Gauge {
        self.thread_connections.get_or_create_owned(&ThreadLabels {
            thread: index.to_string(),
        })
    }

    /// Counts a reload.
    pub fn reload(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const PROTOCOLS: [&str; 2] = ["http1", "http2"];

/// One route's request handles, resolved once per config load.
#[derive(Debug, Clone)]
pub struct RouteMeter {
    /// By status class, then protocol.
    requests: [[Counter; 2]; 6],
    duration: Histogram,
    upstream: Histogram,
}

impl RouteMeter {
    /// Records one answered request.
    #[inline]
    pub fn record(&self, status: u16, http2: bool, took: Duration, upstream_ms: Option<u64>) {
        let class = match status {
            100..=599 => usize::from(status / 100) - 1,
            _ => 5,
        };
        self.requests[class][usize::from(http2)].inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(ms) = upstream_ms {
            // Millisecond values: exact in f64.
            self.upstream.observe(ms as f64 / 1000.0);
        }
    }
}
