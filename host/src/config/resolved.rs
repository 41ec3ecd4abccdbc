//! The resolved configuration the gateway runs: every section checked, paths absolute,
//! references between sections known to hold.

use super::*;

/// The whole gateway configuration, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` headers are forwarded; every
    /// other client's are replaced (Kong's `trusted_ips`). Empty by default.
    pub trusted_ips: Vec<IpRange>,
    /// Lower-case header names removed from every client request before plugins run; a trailing
    /// `*` matches any suffix.
    pub strip_client_headers: Vec<String>,
    /// Where `tollgate run` writes its process id (for `tollgate reload`); absolute.
    pub pid_file: Option<PathBuf>,
    /// How long in-flight requests may take to finish after a shutdown signal, and how long a
    /// listener removed by a reload keeps its connections.
    pub drain_timeout: Duration,
    /// How many [connection threads](crate::cores) serve the listeners' connections; one per
    /// available core when not set.
    pub workers: Option<usize>,
    /// The admin listener (`/status`, `/metrics`, `/reload`); off when absent.
    pub admin: Option<AdminConfig>,
    /// Where access log lines go.
    pub access_log: AccessLogTarget,
    /// At least one listener, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream services, in file order.
    pub services: Vec<ServiceConfig>,
    /// Routes, in file order (each names an existing service).
    pub routes: Vec<RouteConfig>,
    /// Plugin instances sorted by `order`; equal orders keep file order.
    pub plugins: Vec<PluginConfig>,
    /// Process-wide plugin limits (`[runtime]`).
    pub runtime: RuntimeLimits,
    /// Where each field sits in the file, for problems found after parsing.
    pub origins: Origins,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address to bind (HTTP/1.1; keep it on loopback or a private network).
    pub address: SocketAddr,
    /// TLS with required client certificates; plaintext when absent.
    pub tls: Option<AdminTls>,
}

/// The admin listener's TLS: its certificate, and the CA its clients' certificates must chain
/// to (a client without one is refused in the handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// PEM chain, absolute path.
    pub cert: PathBuf,
    /// PEM key, absolute path.
    pub key: PathBuf,
    /// PEM trust anchors for client certificates, absolute path.
    pub client_ca: PathBuf,
}

/// Destination of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output (the default).
    Stdout,
    /// A file, appended to; the path is absolute.
    File(PathBuf),
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique name, `listener-<index>` by default.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// Deadline for the TLS handshake, certificate phase included.
    pub handshake_timeout: Duration,
    /// Deadlines and caps on the listener's clients.
    pub limits: ClientLimits,
    /// PEM trust anchors for `client_verify`, absolute path.
    pub client_ca: Option<PathBuf>,
    /// Session-ticket key files (nginx `ssl_session_ticket_key` format), absolute paths: the
    /// first key encrypts, all decrypt. Empty: random keys of this process.
    pub session_ticket_keys: Vec<PathBuf>,
    /// Server certificates; empty means a plaintext listener.
    pub certificates: Vec<CertificateConfig>,
}

impl ListenerConfig {
    /// Whether this listener terminates TLS.
    pub fn is_tls(&self) -> bool {
        !self.certificates.is_empty()
    }

    /// The certificate used when no `server_names` pattern matches the SNI: the one without
    /// names, else the first.
    pub fn default_certificate(&self) -> Option<&CertificateConfig> {
        self.certificates
            .iter()
            .find(|c| c.server_names.is_empty())
            .or_else(|| self.certificates.first())
    }
}

/// How long a listener waits for its clients and how much it takes from them. The defaults
/// follow nginx (see the `DEFAULT_*` constants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// A new connection's first request head, and any later head from its first byte.
    pub header_timeout: Duration,
    /// Idle time between requests (HTTP/1.1 keep-alive, HTTP/2 without open streams).
    pub keepalive_timeout: Duration,
    /// Longest pause between two reads of a request body (then 408).
    pub body_timeout: Duration,
    /// Longest stall of a write to the client (then the connection is closed).
    pub send_timeout: Duration,
    /// Largest request head in bytes (then 431): request line and headers in HTTP/1.1, the
    /// decoded header list in HTTP/2.
    pub max_header_size: usize,
    /// Most header fields in a request (then 431).
    pub max_headers: usize,
    /// Largest request body in bytes, declared or streamed (then 413); 0: no limit.
    pub max_body_size: u64,
    /// Most open connections; one more is closed at once.
    pub max_connections: usize,
    /// Most concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Streams an HTTP/2 client may reset before their response completes, per
    /// [`crate::gateway::RESET_WINDOW`]; one more and the connection gets GOAWAY.
    pub http2_max_resets: u32,
    /// Keep-alive ping interval on HTTP/2 connections.
    pub http2_ping_interval: Duration,
    /// How long an HTTP/2 ping may go unanswered before the connection is closed.
    pub http2_ping_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        let int = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        ClientLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_header_size: int(DEFAULT_MAX_HEADER_SIZE),
            max_headers: int(DEFAULT_MAX_HEADERS),
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            max_connections: int(DEFAULT_MAX_CONNECTIONS),
            http2_max_streams: small(DEFAULT_HTTP2_MAX_STREAMS),
            http2_max_resets: small(DEFAULT_HTTP2_MAX_RESETS),
            http2_ping_interval: DEFAULT_HTTP2_PING_INTERVAL,
            http2_ping_timeout: DEFAULT_HTTP2_PING_TIMEOUT,
        }
    }
}

/// A server certificate chain and its key, both PEM files the caller reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first, absolute path.
    pub cert: PathBuf,
    /// PEM private key, absolute path.
    pub key: PathBuf,
    /// SNI patterns (lower-case; exact or `*.` + suffix); empty for the default certificate.
    pub server_names: Vec<String>,
}

/// Scheme spoken to a service's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Protocol {
    /// The lower-case scheme name, as in URLs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream `host:port`: the contract's type, shared with `balancer.set-target`.
pub use tollgate_phases::Target;

/// An upstream service: where proxied requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Unique name, referenced by routes and plugins.
    pub name: String,
    /// At least one target, in file order.
    pub targets: Vec<Target>,
    /// Scheme spoken to the targets.
    pub protocol: Protocol,
    /// Deadline to connect to one target.
    pub connect_timeout: Duration,
    /// Deadline from handing the request over to the response head.
    pub read_timeout: Duration,
    /// Longest pause between two reads of the response body (then the response is cut off).
    pub body_timeout: Duration,
    /// Extra attempts after a connect failure.
    pub retries: u32,
    /// Whether to verify the upstream certificate (https only; true for http services).
    pub tls_verify: bool,
    /// Extra PEM trust anchors for the upstream (https only), absolute path.
    pub ca: Option<PathBuf>,
}

/// A route: which requests go to which service.
///
/// Empty `hosts`, `paths` or `methods` match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Unique name, `route-<index>` by default.
    pub name: String,
    /// Lower-case host patterns: exact, or `*.` followed by a suffix.
    pub hosts: Vec<String>,
    /// Path prefixes, each starting with `/`.
    pub paths: Vec<String>,
    /// Upper-case method tokens.
    pub methods: Vec<String>,
    /// Name of an existing service.
    pub service: String,
}

/// Which requests a plugin instance runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginAttachment {
    /// Every request.
    Global,
    /// Requests matched by the named route.
    Route(String),
    /// Requests proxied to the named service.
    Service(String),
}

/// One plugin instance: a wasm component plus its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// Unique instance name; the file stem by default.
    pub name: String,
    /// The `.wasm` file, absolute path (several instances may share it).
    pub path: PathBuf,
    /// The instance's configuration, handed to the plugin as JSON (an object).
    pub config: serde_json::Value,
    /// Which requests it runs for.
    pub attached_to: PluginAttachment,
    /// Lower runs first.
    pub order: i64,
    /// Whether a failing plugin is skipped instead of answering 500.
    pub fail_open: bool,
    /// Per-instance memory cap in bytes.
    pub memory_limit: usize,
    /// Per-call CPU deadline.
    pub time_limit: Duration,
}
