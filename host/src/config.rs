//! The gateway's declarative TOML file: parsed, checked and resolved into [`Config`].
//!
//! Every mistake in the file is reported, not only the first, each with its position and the
//! field it concerns, the way a compiler reports errors:
//!
//! ```text
//! tollgate.toml:12:11: services[0].targets[1]: invalid target "127.0.0.1": expected host:port (or [ipv6]:port)
//! tollgate.toml:20:8: plugins[0].path: file not found: /etc/tollgate/plugins/mtls.wasm
//! ```
//!
//! Relative paths in the file resolve against the file's directory. The TOML is read twice over:
//! first into a spanned tree (syntax), then each section element is deserialized on its own into
//! spanned raw structs (unknown keys, wrong types), then resolved (values, files, references).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

pub use crate::proxy::forwarding::IpRange;
use crate::runtime::{self, RuntimeLimits};

/// Listener TLS handshake deadline when `handshake_timeout` is not set.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream connect deadline when `connect_timeout` is not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream read deadline when `read_timeout` is not set.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Smallest accepted timeout of a listener or service.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Largest accepted timeout of a listener or service.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Upper bound of the default `retries` (which is the number of targets minus one).
pub const MAX_DEFAULT_RETRIES: u32 = 5;
/// Largest accepted explicit `retries`.
pub const MAX_RETRIES: u32 = 100;
/// Per-instance plugin memory cap when `memory_limit` is not set.
pub const DEFAULT_MEMORY_LIMIT: u64 = crate::runtime::DEFAULT_MEMORY_LIMIT as u64;
/// Smallest accepted `memory_limit`.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
/// Largest accepted `memory_limit`.
pub const MAX_MEMORY_LIMIT: u64 = crate::runtime::MAX_MEMORY_LIMIT as u64;
/// Per-call plugin CPU deadline when `time_limit` is not set.
pub const DEFAULT_TIME_LIMIT: Duration = crate::runtime::DEFAULT_TIME_LIMIT;
/// Smallest accepted `time_limit`.
pub const MIN_TIME_LIMIT: Duration = Duration::from_millis(1);
/// Largest accepted `time_limit`.
pub const MAX_TIME_LIMIT: Duration = Duration::from_secs(60);

/// Smallest accepted `runtime.memory_budget`.
pub const MIN_MEMORY_BUDGET: u64 = 16 << 20;
/// Largest accepted `runtime.memory_budget`.
pub const MAX_MEMORY_BUDGET: u64 = 1 << 40;
/// Deadline for a request head: a new connection's first one, and any later one from its first
/// byte (nginx `client_header_timeout`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle time allowed between requests, HTTP/1.1 keep-alive and HTTP/2 alike (nginx
/// `keepalive_timeout`).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Longest pause while reading a request body (nginx `client_body_timeout`), or an upstream's
/// response body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest stall while sending to a client (nginx `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers) when `max_header_size` is not set (nginx's
/// `large_client_header_buffers 4 8k`).
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 << 10;
/// Smallest accepted `max_header_size` (hyper's smallest HTTP/1.1 read buffer).
pub const MIN_MAX_HEADER_SIZE: u64 = 8 << 10;
/// Largest accepted `max_header_size`.
pub const MAX_MAX_HEADER_SIZE: u64 = 1 << 20;
/// Most request header fields when `max_headers` is not set.
pub const DEFAULT_MAX_HEADERS: u64 = 100;
/// Largest accepted `max_headers`.
pub const MAX_MAX_HEADERS: u64 = 10_000;
/// Largest request body when `max_body_size` is not set (nginx `client_max_body_size`).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 1 << 20;
/// Most open connections per listener when `max_connections` is not set.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// Largest accepted `max_connections`.
pub const MAX_MAX_CONNECTIONS: u64 = 1_000_000;
/// Most concurrent HTTP/2 streams per connection (nginx `http2_max_concurrent_streams`).
pub const DEFAULT_HTTP2_MAX_STREAMS: u64 = 128;
/// Streams a client may reset before their response is complete, per connection and
/// [`crate::gateway::RESET_WINDOW`], before it gets GOAWAY.
pub const DEFAULT_HTTP2_MAX_RESETS: u64 = 100;
/// Interval of HTTP/2 keep-alive pings on a connection that sent nothing meanwhile.
pub const DEFAULT_HTTP2_PING_INTERVAL: Duration = Duration::from_secs(60);
/// How long a ping may go unanswered before the HTTP/2 connection is closed.
pub const DEFAULT_HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Headers removed from every client request when `strip_client_headers` is not set: the ones
/// TLS-terminating proxies use to pass a client certificate on, which only Tollgate's plugins
/// may set.
pub const DEFAULT_STRIP_CLIENT_HEADERS: [&str; 2] = ["x-client-cert*", "x-ssl-*"];

/// Bounds the retry loop that collects several key/type mistakes from one table.
const MAX_SCHEMA_PROBLEMS_PER_TABLE: usize = 32;

/// The whole gateway configuration, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` headers are forwarded; every
    /// other client's are replaced (Kong's `trusted_ips`). Empty by default.
    pub trusted_ips: Vec<IpRange>,
    /// Lower-case header names removed from every client request before plugins run; a trailing
    /// `*` matches any suffix.
    pub strip_client_headers: Vec<String>,
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

/// One mistake in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Path of the field, e.g. `plugins[1].path`; empty for TOML syntax errors.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded. The file's author is at fault in every case.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but has mistakes: syntax, unknown keys, wrong types or invalid values.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file as given.
        path: PathBuf,
        /// All mistakes found, in file order.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The mistakes found (empty for [`ConfigError::Read`]).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let file = path.display();
    problems
        .iter()
        .map(|p| format!("{file}:{p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Checks `text` as the contents of the file at `path` (used for messages and to resolve
    /// relative paths; the file itself is not read).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base = base_dir(path);
        let mut cx = Checker {
            text,
            base,
            problems: Vec::new(),
            plugin_indexes: HashMap::new(),
        };
        let config = cx.check(text);
        let mut problems = cx.problems;
        match config {
            Some(mut config) if problems.is_empty() => {
                config.origins = Origins::new(path, text, cx.plugin_indexes);
                Ok(config)
            }
            _ => {
                problems.sort_by_key(|p| (p.line, p.column));
                Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems,
                })
            }
        }
    }
}

/// The directory relative paths in the file at `path` resolve against, made absolute. A bare
/// file name's parent is the empty path, which means the current directory.
pub(crate) fn base_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

// ---- raw, spanned shape of the file ----

type Field<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    target: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    max_instances: Field<i64>,
    memory_budget: Field<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Field<String>,
    address: Field<String>,
    handshake_timeout: Field<toml::Value>,
    header_timeout: Field<toml::Value>,
    keepalive_timeout: Field<toml::Value>,
    body_timeout: Field<toml::Value>,
    send_timeout: Field<toml::Value>,
    max_header_size: Field<toml::Value>,
    max_headers: Field<i64>,
    max_body_size: Field<toml::Value>,
    max_connections: Field<i64>,
    http2_max_streams: Field<i64>,
    http2_max_resets: Field<i64>,
    http2_ping_interval: Field<toml::Value>,
    http2_ping_timeout: Field<toml::Value>,
    client_ca: Field<String>,
    certificates: Option<Vec<Spanned<RawCertificate>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Field<String>,
    key: Field<String>,
    server_names: Field<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Field<String>,
    targets: Field<Vec<Spanned<String>>>,
    protocol: Field<Protocol>,
    connect_timeout: Field<toml::Value>,
    read_timeout: Field<toml::Value>,
    body_timeout: Field<toml::Value>,
    retries: Field<i64>,
    tls_verify: Field<bool>,
    ca: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Field<String>,
    hosts: Field<Vec<Spanned<String>>>,
    paths: Field<Vec<Spanned<String>>>,
    methods: Field<Vec<Spanned<String>>>,
    service: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Field<String>,
    path: Field<String>,
    config: Field<toml::Table>,
    route: Field<String>,
    service: Field<String>,
    order: Field<i64>,
    fail_open: Field<bool>,
    memory_limit: Field<toml::Value>,
    time_limit: Field<toml::Value>,
}

/// A section element that deserialized, with its index and span.
struct Element<T> {
    index: usize,
    span: Range<usize>,
    raw: T,
}

#[derive(Default)]
struct RawConfig {
    trusted_ips: Option<Vec<Spanned<String>>>,
    strip_client_headers: Option<Vec<Spanned<String>>>,
    access_log: Option<(RawAccessLog, Range<usize>)>,
    runtime: Option<RawRuntime>,
    listeners: Option<(Vec<Element<RawListener>>, Range<usize>)>,
    services: Vec<Element<RawService>>,
    routes: Vec<Element<RawRoute>>,
    plugins: Vec<Element<RawPlugin>>,
}

const SECTIONS: &str = "`trusted_ips`, `strip_client_headers`, `access_log`, `runtime`, \
                        `listeners`, `services`, `routes`, `plugins`";

/// Collects problems while turning the text into a [`Config`].
struct Checker<'t> {
    text: &'t str,
    base: PathBuf,
    problems: Vec<ConfigProblem>,
    /// Each plugin's position in the file, by name (the resolved list is sorted by `order`).
    plugin_indexes: HashMap<String, usize>,
}

impl Checker<'_> {
    fn problem(&mut self, offset: usize, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_column(self.text, offset);
        let message: String = message.into();
        self.problems.push(ConfigProblem {
            line,
            column,
            field: field.into(),
            message: message.replace('\n', "; "),
        });
    }

    /// Whether a problem was already reported on `field` or inside it.
    fn reported(&self, field: &str) -> bool {
        self.problems.iter().any(|p| {
            p.field
                .strip_prefix(field)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    fn required<'a, T>(
        &mut self,
        value: &'a Field<T>,
        field: &str,
        element: &Range<usize>,
    ) -> Option<&'a Spanned<T>> {
        if value.is_none() && !self.reported(field) {
            self.problem(element.start, field, "required field is missing");
        }
        value.as_ref()
    }

    fn check(&mut self, text: &str) -> Option<Config> {
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let mut message = e.message().to_owned();
                // toml's messages do not quote the offending text ("duplicate key").
                if let Some(snippet) = text.get(span.clone())
                    && (1..=40).contains(&snippet.len())
                    && !snippet.contains('\n')
                {
                    message.push_str(&format!(" (at `{snippet}`)"));
                }
                self.problem(span.start, "", message);
                return None;
            }
        };
        let raw = self.read_sections(root.into_inner());
        self.resolve(raw)
    }

    fn read_sections(&mut self, root: DeTable<'_>) -> RawConfig {
        let mut raw = RawConfig::default();
        for (key, value) in root {
            let span = value.span();
            match key.get_ref().as_ref() {
                "access_log" => {
                    raw.access_log = self
                        .deserialize_lenient(value, "access_log")
                        .map(|r| (r, span));
                }
                "runtime" => raw.runtime = self.deserialize_lenient(value, "runtime"),
                "listeners" => {
                    raw.listeners = Some((self.read_array(value, "listeners"), span));
                }
                "trusted_ips" => raw.trusted_ips = self.deserialize_lenient(value, "trusted_ips"),
                "strip_client_headers" => {
                    raw.strip_client_headers =
                        self.deserialize_lenient(value, "strip_client_headers");
                }
                "services" => raw.services = self.read_array(value, "services"),
                "routes" => raw.routes = self.read_array(value, "routes"),
                "plugins" => raw.plugins = self.read_array(value, "plugins"),
                other => {
                    let message = format!("unknown section `{other}`, expected one of {SECTIONS}");
                    self.problem(key.span().start, other, message);
                }
            }
        }
        raw
    }

    fn read_array<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'_>>,
        section: &str,
    ) -> Vec<Element<T>> {
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            self.problem(
                span.start,
                section,
                format!("expected an array of tables, written [[{section}]]"),
            );
            return Vec::new();
        };
        items
            .into_iter()
            .enumerate()
            .filter_map(|(index, item)| {
                let span = item.span();
                let field = format!("{section}[{index}]");
                self.deserialize_lenient(item, &field)
                    .map(|raw| Element { index, span, raw })
            })
            .collect()
    }

    /// Deserializes one table, reporting every unknown key and wrongly typed value: after each
    /// serde error the offending key is removed and the table tried again.
    fn deserialize_lenient<T: DeserializeOwned>(
        &mut self,
        mut value: Spanned<DeValue<'_>>,
        field: &str,
    ) -> Option<T> {
        for _ in 0..MAX_SCHEMA_PROBLEMS_PER_TABLE {
            let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(raw) => return Some(raw),
                Err(error) => error,
            };
            let offset = error.span().map_or(value.span().start, |s| s.start);
            let path = locate(value.get_ref(), offset).unwrap_or_default();
            let mut full = field.to_owned();
            for segment in &path {
                match segment {
                    Segment::Key(key) => {
                        full.push('.');
                        full.push_str(key);
                    }
                    Segment::Index(i) => full.push_str(&format!("[{i}]")),
                }
            }
            self.problem(offset, full, error.message());
            if !remove_deepest_key(value.get_mut(), &path) {
                return None;
            }
        }
        None
    }

    fn resolve(&mut self, raw: RawConfig) -> Option<Config> {
        let access_log = match &raw.access_log {
            Some((log, _)) => self.access_log(log),
            None => AccessLogTarget::Stdout,
        };
        let trusted_ips = self.trusted_ips(raw.trusted_ips.as_deref());
        let strip_client_headers = self.header_patterns(raw.strip_client_headers.as_deref());
        let listeners = self.listeners(raw.listeners);
        let services = self.services(&raw.services);
        let routes = self.routes(&raw.routes, &services);
        let plugins = self.plugins(&raw.plugins, &routes, &services);
        let runtime = self.runtime(raw.runtime.as_ref());
        Some(Config {
            trusted_ips,
            strip_client_headers,
            access_log,
            listeners,
            services,
            routes,
            plugins,
            runtime,
            origins: Origins::default(),
        })
    }

    fn access_log(&mut self, raw: &RawAccessLog) -> AccessLogTarget {
        let Some(target) = &raw.target else {
            return AccessLogTarget::Stdout;
        };
        let value = target.get_ref();
        if value == "stdout" {
            return AccessLogTarget::Stdout;
        }
        if value.is_empty() {
            self.problem(
                target.span().start,
                "access_log.target",
                "expected \"stdout\" or a file path",
            );
            return AccessLogTarget::Stdout;
        }
        let path = self.resolve_path(value);
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            let message = format!("directory not found: {}", dir.display());
            self.problem(target.span().start, "access_log.target", message);
        }
        AccessLogTarget::File(path)
    }

    fn listeners(
        &mut self,
        raw: Option<(Vec<Element<RawListener>>, Range<usize>)>,
    ) -> Vec<ListenerConfig> {
        let Some((raw, span)) = raw else {
            self.problem(0, "listeners", "at least one [[listeners]] is required");
            return Vec::new();
        };
        if raw.is_empty() && !self.reported("listeners") {
            self.problem(
                span.start,
                "listeners",
                "at least one [[listeners]] is required",
            );
        }
        let mut names = Names::new("listener name");
        let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
        let mut out = Vec::new();
        for Element { index, span, raw } in &raw {
            let at = format!("listeners[{index}]");
            let name = match &raw.name {
                Some(name) => {
                    self.check_name(name, &format!("{at}.name"));
                    names.add(self, name.get_ref(), name.span().start, &at);
                    name.get_ref().clone()
                }
                None => {
                    let name = format!("listener-{index}");
                    names.add(self, &name, span.start, &at);
                    name
                }
            };
            let address = self
                .required(&raw.address, &format!("{at}.address"), span)
                .and_then(|a| {
                    let field = format!("{at}.address");
                    match a.get_ref().parse::<SocketAddr>() {
                        Ok(addr) => {
                            // Port 0 asks the system for a free port each time: never a clash.
                            if addr.port() == 0 {
                            } else if let Some(first) = addresses.get(&addr) {
                                let message = format!("duplicate address {addr} (also {first})");
                                self.problem(a.span().start, field, message);
                            } else {
                                addresses.insert(addr, at.clone());
                            }
                            Some(addr)
                        }
                        Err(_) => {
                            let message = format!(
                                "invalid address `{}` (expected ip:port, e.g. 127.0.0.1:8443)",
                                a.get_ref()
                            );
                            self.problem(a.span().start, field, message);
                            None
                        }
                    }
                });
            let handshake_timeout = self.duration(
                &raw.handshake_timeout,
                &format!("{at}.handshake_timeout"),
                DEFAULT_HANDSHAKE_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let limits = self.client_limits(raw, &at);
            let client_ca = raw
                .client_ca
                .as_ref()
                .map(|ca| self.file(ca, &format!("{at}.client_ca")));
            let certificates = self.certificates(raw.certificates.as_deref(), &at);
            if let Some(ca) = &raw.client_ca
                && raw.certificates.as_ref().is_none_or(|c| c.is_empty())
            {
                self.problem(
                    ca.span().start,
                    format!("{at}.client_ca"),
                    "client_ca needs a TLS listener (add [[listeners.certificates]])",
                );
            }
            if let Some(address) = address {
                out.push(ListenerConfig {
                    name,
                    address,
                    handshake_timeout,
                    limits,
                    client_ca,
                    certificates,
                });
            }
        }
        out
    }

    fn certificates(
        &mut self,
        raw: Option<&[Spanned<RawCertificate>]>,
        listener: &str,
    ) -> Vec<CertificateConfig> {
        let mut out = Vec::new();
        let mut seen_names: HashMap<String, String> = HashMap::new();
        let mut default: Option<String> = None;
        for (index, cert) in raw.unwrap_or_default().iter().enumerate() {
            let at = format!("{listener}.certificates[{index}]");
            let span = cert.span();
            let raw = cert.get_ref();
            let cert_path = self
                .required(&raw.cert, &format!("{at}.cert"), &span)
                .map(|p| self.file(p, &format!("{at}.cert")));
            let key_path = self
                .required(&raw.key, &format!("{at}.key"), &span)
                .map(|p| self.file(p, &format!("{at}.key")));
            let mut server_names = Vec::new();
            for (i, pattern) in raw
                .server_names
                .iter()
                .flat_map(|n| n.get_ref())
                .enumerate()
            {
                let field = format!("{at}.server_names[{i}]");
                let Some(normalized) = self.host_pattern(pattern, &field) else {
                    continue;
                };
                if let Some(first) = seen_names.get(&normalized) {
                    let message = format!("duplicate server name `{normalized}` (also {first})");
                    self.problem(pattern.span().start, field, message);
                } else {
                    seen_names.insert(normalized.clone(), at.clone());
                }
                server_names.push(normalized);
            }
            let unnamed = raw
                .server_names
                .as_ref()
                .is_none_or(|n| n.get_ref().is_empty());
            if unnamed {
                if let Some(first) = &default {
                    let message = format!(
                        "only one certificate may omit server_names (it is the default), also {first}"
                    );
                    self.problem(span.start, format!("{at}.server_names"), message);
                } else {
                    default = Some(at.clone());
                }
            }
            if let (Some(cert), Some(key)) = (cert_path, key_path) {
                out.push(CertificateConfig {
                    cert,
                    key,
                    server_names,
                });
            }
        }
        out
    }

    fn services(&mut self, raw: &[Element<RawService>]) -> Vec<ServiceConfig> {
        let mut names = Names::new("service name");
        let mut out = Vec::new();
        for Element { index, span, raw } in raw {
            let at = format!("services[{index}]");
            let name = self.required(&raw.name, &format!("{at}.name"), span);
            let name = name.map(|name| {
                self.check_name(name, &format!("{at}.name"));
                names.add(self, name.get_ref(), name.span().start, &at);
                name.get_ref().clone()
            });
            let mut targets = Vec::new();
            if let Some(list) = self.required(&raw.targets, &format!("{at}.targets"), span) {
                if list.get_ref().is_empty() {
                    self.problem(
                        list.span().start,
                        format!("{at}.targets"),
                        "at least one target is required",
                    );
                }
                for (i, target) in list.get_ref().iter().enumerate() {
                    match parse_target(target.get_ref()) {
                        Ok(t) => targets.push(t),
                        Err(message) => {
                            self.problem(target.span().start, format!("{at}.targets[{i}]"), message)
                        }
                    }
                }
            }
            let protocol = raw
                .protocol
                .as_ref()
                .map_or(Protocol::Http, |p| *p.get_ref());
            if protocol == Protocol::Http {
                if let Some(v) = &raw.tls_verify {
                    self.problem(
                        v.span().start,
                        format!("{at}.tls_verify"),
                        "only valid for protocol = \"https\"",
                    );
                }
                if let Some(v) = &raw.ca {
                    self.problem(
                        v.span().start,
                        format!("{at}.ca"),
                        "only valid for protocol = \"https\"",
                    );
                }
            }
            let ca = raw.ca.as_ref().map(|ca| self.file(ca, &format!("{at}.ca")));
            let connect_timeout = self.duration(
                &raw.connect_timeout,
                &format!("{at}.connect_timeout"),
                DEFAULT_CONNECT_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let read_timeout = self.duration(
                &raw.read_timeout,
                &format!("{at}.read_timeout"),
                DEFAULT_READ_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let body_timeout = self.duration(
                &raw.body_timeout,
                &format!("{at}.body_timeout"),
                DEFAULT_BODY_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let default_retries = u32::try_from(targets.len().saturating_sub(1))
                .unwrap_or(MAX_DEFAULT_RETRIES)
                .min(MAX_DEFAULT_RETRIES);
            let retries = match &raw.retries {
                None => default_retries,
                Some(r) => match u32::try_from(*r.get_ref()) {
                    Ok(n) if n <= MAX_RETRIES => n,
                    _ => {
                        let message = format!("must be between 0 and {MAX_RETRIES}");
                        self.problem(r.span().start, format!("{at}.retries"), message);
                        default_retries
                    }
                },
            };
            if let Some(name) = name {
                out.push(ServiceConfig {
                    name,
                    targets,
                    protocol,
                    connect_timeout,
                    read_timeout,
                    body_timeout,
                    retries,
                    tls_verify: raw.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
                    ca,
                });
            }
        }
        out
    }

    fn routes(
        &mut self,
        raw: &[Element<RawRoute>],
        services: &[ServiceConfig],
    ) -> Vec<RouteConfig> {
        let mut names = Names::new("route name");
        let mut out = Vec::new();
        for Element { index, span, raw } in raw {
            let at = format!("routes[{index}]");
            let name = match &raw.name {
                Some(name) => {
                    self.check_name(name, &format!("{at}.name"));
                    names.add(self, name.get_ref(), name.span().start, &at);
                    name.get_ref().clone()
                }
                None => {
                    let name = format!("route-{index}");
                    names.add(self, &name, span.start, &at);
                    name
                }
            };
            let mut hosts = Vec::new();
            for (i, host) in raw.hosts.iter().flat_map(|h| h.get_ref()).enumerate() {
                if let Some(h) = self.host_pattern(host, &format!("{at}.hosts[{i}]")) {
                    hosts.push(h);
                }
            }
            let mut paths = Vec::new();
            for (i, path) in raw.paths.iter().flat_map(|p| p.get_ref()).enumerate() {
                if path.get_ref().starts_with('/') {
                    paths.push(path.get_ref().clone());
                } else {
                    let message = format!("path must start with \"/\": `{}`", path.get_ref());
                    self.problem(path.span().start, format!("{at}.paths[{i}]"), message);
                }
            }
            let mut methods = Vec::new();
            for (i, method) in raw.methods.iter().flat_map(|m| m.get_ref()).enumerate() {
                let m = method.get_ref();
                if !m.is_empty() && m.bytes().all(is_tchar) {
                    methods.push(m.to_ascii_uppercase());
                } else {
                    let message = format!("invalid HTTP method `{m}`");
                    self.problem(method.span().start, format!("{at}.methods[{i}]"), message);
                }
            }
            let service = self
                .required(&raw.service, &format!("{at}.service"), span)
                .map(|s| {
                    if !services.iter().any(|svc| svc.name == *s.get_ref()) {
                        self.unknown_reference(s, &format!("{at}.service"), "service");
                    }
                    s.get_ref().clone()
                });
            if let Some(service) = service {
                out.push(RouteConfig {
                    name,
                    hosts,
                    paths,
                    methods,
                    service,
                });
            }
        }
        out
    }

    fn plugins(
        &mut self,
        raw: &[Element<RawPlugin>],
        routes: &[RouteConfig],
        services: &[ServiceConfig],
    ) -> Vec<PluginConfig> {
        let mut names = Names::new("plugin name");
        let mut out = Vec::new();
        for Element { index, span, raw } in raw {
            let at = format!("plugins[{index}]");
            let path = self
                .required(&raw.path, &format!("{at}.path"), span)
                .map(|p| (p, self.file(p, &format!("{at}.path"))));
            let name = match (&raw.name, &path) {
                (Some(name), _) => {
                    self.check_name(name, &format!("{at}.name"));
                    names.add(self, name.get_ref(), name.span().start, &at);
                    Some(name.get_ref().clone())
                }
                (None, Some((p, resolved))) => {
                    let stem = resolved
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if names.contains(&stem) {
                        let message = format!(
                            "plugin name `{stem}` (from the file name) is already used by {}; \
                             give this instance a distinct `name`",
                            names.first(&stem).unwrap_or_default()
                        );
                        self.problem(p.span().start, format!("{at}.name"), message);
                    } else {
                        names.add(self, &stem, p.span().start, &at);
                    }
                    Some(stem)
                }
                (None, None) => None,
            };
            let config = match &raw.config {
                None => Some(serde_json::Value::Object(serde_json::Map::new())),
                Some(table) => match toml_to_json(toml::Value::Table(table.get_ref().clone())) {
                    Ok(json) => Some(json),
                    Err(message) => {
                        self.problem(table.span().start, format!("{at}.config"), message);
                        None
                    }
                },
            };
            let attached_to = match (&raw.route, &raw.service) {
                (Some(_), Some(service)) => {
                    self.problem(
                        service.span().start,
                        format!("{at}.service"),
                        "a plugin is scoped to a route or a service, not both",
                    );
                    PluginAttachment::Global
                }
                (Some(route), None) => {
                    if !routes.iter().any(|r| r.name == *route.get_ref()) {
                        self.unknown_reference(route, &format!("{at}.route"), "route");
                    }
                    PluginAttachment::Route(route.get_ref().clone())
                }
                (None, Some(service)) => {
                    if !services.iter().any(|s| s.name == *service.get_ref()) {
                        self.unknown_reference(service, &format!("{at}.service"), "service");
                    }
                    PluginAttachment::Service(service.get_ref().clone())
                }
                (None, None) => PluginAttachment::Global,
            };
            let memory_limit = self.memory(&raw.memory_limit, &format!("{at}.memory_limit"));
            let time_limit = self.duration(
                &raw.time_limit,
                &format!("{at}.time_limit"),
                DEFAULT_TIME_LIMIT,
                (MIN_TIME_LIMIT, MAX_TIME_LIMIT),
            );
            if let (Some(name), Some((_, path)), Some(config)) = (name, path, config) {
                self.plugin_indexes.insert(name.clone(), *index);
                out.push(PluginConfig {
                    name,
                    path,
                    config,
                    attached_to,
                    order: raw.order.as_ref().map_or(0, |o| *o.get_ref()),
                    fail_open: raw.fail_open.as_ref().is_some_and(|f| *f.get_ref()),
                    memory_limit,
                    time_limit,
                });
            }
        }
        // `sort_by_key` is stable: equal orders keep file order.
        out.sort_by_key(|p| p.order);
        out
    }

    fn check_name(&mut self, name: &Spanned<String>, field: &str) {
        if name.get_ref().trim().is_empty() {
            self.problem(name.span().start, field, "name must not be empty");
        }
    }

    fn unknown_reference(&mut self, name: &Spanned<String>, field: &str, kind: &str) {
        let message = format!("no {kind} named `{}`", name.get_ref());
        self.problem(name.span().start, field, message);
    }

    fn resolve_path(&self, value: &str) -> PathBuf {
        self.base.join(value)
    }

    /// Resolves a path against the file's directory and checks that it names a file.
    fn file(&mut self, value: &Spanned<String>, field: &str) -> PathBuf {
        let path = self.resolve_path(value.get_ref());
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                let message = format!("not a file: {}", path.display());
                self.problem(value.span().start, field, message);
            }
            Err(_) => {
                let message = format!("file not found: {}", path.display());
                self.problem(value.span().start, field, message);
            }
        }
        path
    }

    fn duration(
        &mut self,
        value: &Field<toml::Value>,
        field: &str,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let parsed = match value.get_ref() {
            toml::Value::String(s) => parse_duration(s),
            toml::Value::Integer(n) => Err(format!(
                "a duration needs a unit: write \"{n}s\" or \"{n}ms\""
            )),
            other => Err(format!(
                "expected a duration such as \"10s\", found {}",
                other.type_str()
            )),
        };
        match parsed {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                let message = format!(
                    "must be between {} and {}",
                    format_duration(min),
                    format_duration(max)
                );
                self.problem(value.span().start, field, message);
                default
            }
            Err(message) => {
                self.problem(value.span().start, field, message);
                default
            }
        }
    }

    fn memory(&mut self, value: &Field<toml::Value>, field: &str) -> usize {
        let bytes = self.size(
            value,
            field,
            DEFAULT_MEMORY_LIMIT,
            (MIN_MEMORY_LIMIT, MAX_MEMORY_LIMIT),
        );
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// A size in bytes: `"64MiB"` or a plain number.
    fn size(
        &mut self,
        value: &Field<toml::Value>,
        field: &str,
        default: u64,
        (min, max): (u64, u64),
    ) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let parsed = match value.get_ref() {
            toml::Value::String(s) => parse_size(s),
            toml::Value::Integer(n) => {
                u64::try_from(*n).map_err(|_| "must not be negative".to_owned())
            }
            other => Err(format!(
                "expected a size such as \"64MiB\" or a number of bytes, found {}",
                other.type_str()
            )),
        };
        match parsed {
            Ok(bytes) if (min..=max).contains(&bytes) => bytes,
            Ok(_) => {
                let message = format!(
                    "must be between {} and {}",
                    format_size(min),
                    format_size(max)
                );
                self.problem(value.span().start, field, message);
                default
            }
            Err(message) => {
                self.problem(value.span().start, field, message);
                default
            }
        }
    }

    fn runtime(&mut self, raw: Option<&RawRuntime>) -> RuntimeLimits {
        let defaults = RuntimeLimits::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let max_instances = self.count(
            &raw.max_instances,
            "runtime.max_instances",
            u64::from(defaults.max_instances),
            (1, u64::from(runtime::engine::MAX_INSTANCES)),
        );
        let memory_budget = self.size(
            &raw.memory_budget,
            "runtime.memory_budget",
            defaults.memory_budget as u64,
            (MIN_MEMORY_BUDGET, MAX_MEMORY_BUDGET),
        );
        RuntimeLimits {
            max_instances: u32::try_from(max_instances).unwrap_or(u32::MAX),
            memory_budget: usize::try_from(memory_budget).unwrap_or(usize::MAX),
        }
    }

    /// A whole number within `min..=max`.
    fn count(
        &mut self,
        value: &Field<i64>,
        field: &str,
        default: u64,
        (min, max): (u64, u64),
    ) -> u64 {
        let Some(value) = value else {
            return default;
        };
        match u64::try_from(*value.get_ref()) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                let message = format!("must be between {min} and {max}");
                self.problem(value.span().start, field, message);
                default
            }
        }
    }

    fn client_limits(&mut self, raw: &RawListener, at: &str) -> ClientLimits {
        let timeout = |cx: &mut Self, value: &Field<toml::Value>, key: &str, default| {
            cx.duration(
                value,
                &format!("{at}.{key}"),
                default,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            )
        };
        let header_timeout = timeout(
            self,
            &raw.header_timeout,
            "header_timeout",
            DEFAULT_HEADER_TIMEOUT,
        );
        let keepalive_timeout = timeout(
            self,
            &raw.keepalive_timeout,
            "keepalive_timeout",
            DEFAULT_KEEPALIVE_TIMEOUT,
        );
        let body_timeout = timeout(
            self,
            &raw.body_timeout,
            "body_timeout",
            DEFAULT_BODY_TIMEOUT,
        );
        let send_timeout = timeout(
            self,
            &raw.send_timeout,
            "send_timeout",
            DEFAULT_SEND_TIMEOUT,
        );
        let http2_ping_interval = timeout(
            self,
            &raw.http2_ping_interval,
            "http2_ping_interval",
            DEFAULT_HTTP2_PING_INTERVAL,
        );
        let http2_ping_timeout = timeout(
            self,
            &raw.http2_ping_timeout,
            "http2_ping_timeout",
            DEFAULT_HTTP2_PING_TIMEOUT,
        );
        let max_header_size = self.size(
            &raw.max_header_size,
            &format!("{at}.max_header_size"),
            DEFAULT_MAX_HEADER_SIZE,
            (MIN_MAX_HEADER_SIZE, MAX_MAX_HEADER_SIZE),
        );
        let max_body_size = self.size(
            &raw.max_body_size,
            &format!("{at}.max_body_size"),
            DEFAULT_MAX_BODY_SIZE,
            (0, u64::MAX),
        );
        let max_headers = self.count(
            &raw.max_headers,
            &format!("{at}.max_headers"),
            DEFAULT_MAX_HEADERS,
            (1, MAX_MAX_HEADERS),
        );
        let max_connections = self.count(
            &raw.max_connections,
            &format!("{at}.max_connections"),
            DEFAULT_MAX_CONNECTIONS,
            (1, MAX_MAX_CONNECTIONS),
        );
        let http2_max_streams = self.count(
            &raw.http2_max_streams,
            &format!("{at}.http2_max_streams"),
            DEFAULT_HTTP2_MAX_STREAMS,
            (1, u64::from(u32::MAX)),
        );
        let http2_max_resets = self.count(
            &raw.http2_max_resets,
            &format!("{at}.http2_max_resets"),
            DEFAULT_HTTP2_MAX_RESETS,
            (1, u64::from(u32::MAX)),
        );
        let int = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        ClientLimits {
            header_timeout,
            keepalive_timeout,
            body_timeout,
            send_timeout,
            max_header_size: int(max_header_size),
            max_headers: int(max_headers),
            max_body_size,
            max_connections: int(max_connections),
            http2_max_streams: small(http2_max_streams),
            http2_max_resets: small(http2_max_resets),
            http2_ping_interval,
            http2_ping_timeout,
        }
    }

    fn trusted_ips(&mut self, raw: Option<&[Spanned<String>]>) -> Vec<IpRange> {
        let mut out = Vec::new();
        for (i, value) in raw.unwrap_or_default().iter().enumerate() {
            match value.get_ref().parse::<IpRange>() {
                Ok(range) => out.push(range),
                Err(message) => {
                    self.problem(value.span().start, format!("trusted_ips[{i}]"), message);
                }
            }
        }
        out
    }

    /// Header names, each optionally ending in `*`; lower-cased. Absent: the default list.
    fn header_patterns(&mut self, raw: Option<&[Spanned<String>]>) -> Vec<String> {
        let Some(raw) = raw else {
            return DEFAULT_STRIP_CLIENT_HEADERS.map(str::to_owned).to_vec();
        };
        let mut out = Vec::new();
        for (i, value) in raw.iter().enumerate() {
            let pattern = value.get_ref().to_ascii_lowercase();
            let name = pattern.strip_suffix('*').unwrap_or(&pattern);
            if !name.is_empty() && name.bytes().all(is_tchar) {
                out.push(pattern);
            } else {
                let message = format!(
                    "invalid header pattern `{}` (expected a header name, optionally ending in \"*\")",
                    value.get_ref()
                );
                self.problem(
                    value.span().start,
                    format!("strip_client_headers[{i}]"),
                    message,
                );
            }
        }
        out
    }

    /// Checks an SNI or Host pattern (`name` or `*.suffix`) and returns it lower-cased.
    fn host_pattern(&mut self, pattern: &Spanned<String>, field: &str) -> Option<String> {
        let value = pattern.get_ref().to_ascii_lowercase();
        let name = value.strip_prefix("*.").unwrap_or(&value);
        if is_hostname(name) {
            Some(value)
        } else {
            let message = format!(
                "invalid host pattern `{}` (expected a host name, optionally starting with \"*.\")",
                pattern.get_ref()
            );
            self.problem(pattern.span().start, field, message);
            None
        }
    }
}

/// Names in one namespace, remembering where each was first defined.
struct Names {
    kind: &'static str,
    seen: HashMap<String, String>,
}

impl Names {
    fn new(kind: &'static str) -> Self {
        Names {
            kind,
            seen: HashMap::new(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.seen.contains_key(name)
    }

    fn first(&self, name: &str) -> Option<String> {
        self.seen.get(name).cloned()
    }

    fn add(&mut self, cx: &mut Checker<'_>, name: &str, offset: usize, at: &str) {
        if let Some(first) = self.seen.get(name) {
            let message = format!("duplicate {} `{name}` (also {first})", self.kind);
            cx.problem(offset, format!("{at}.name"), message);
        } else {
            self.seen.insert(name.to_owned(), at.to_owned());
        }
    }
}

mod origins;
mod spans;
mod values;

pub use origins::Origins;

use spans::remove_deepest_key;
pub(crate) use spans::{Segment, line_column, locate};
use values::{format_duration, format_size, is_hostname, is_tchar, parse_target, toml_to_json};
pub(crate) use values::{parse_duration, parse_size};

#[cfg(test)]
mod tests;
