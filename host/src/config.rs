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

/// Bounds the retry loop that collects several key/type mistakes from one table.
const MAX_SCHEMA_PROBLEMS_PER_TABLE: usize = 32;

/// The whole gateway configuration, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
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
    /// Deadline for the TLS handshake (and for a plaintext client's first request head).
    pub handshake_timeout: Duration,
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
    /// Deadline between reads from the upstream.
    pub read_timeout: Duration,
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
pub enum PluginScope {
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
    pub scope: PluginScope,
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
    access_log: Option<(RawAccessLog, Range<usize>)>,
    runtime: Option<RawRuntime>,
    listeners: Option<(Vec<Element<RawListener>>, Range<usize>)>,
    services: Vec<Element<RawService>>,
    routes: Vec<Element<RawRoute>>,
    plugins: Vec<Element<RawPlugin>>,
}

const SECTIONS: &str = "`access_log`, `runtime`, `listeners`, `services`, `routes`, `plugins`";

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
        let listeners = self.listeners(raw.listeners);
        let services = self.services(&raw.services);
        let routes = self.routes(&raw.routes, &services);
        let plugins = self.plugins(&raw.plugins, &routes, &services);
        let runtime = self.runtime(raw.runtime.as_ref());
        Some(Config {
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
            let scope = match (&raw.route, &raw.service) {
                (Some(_), Some(service)) => {
                    self.problem(
                        service.span().start,
                        format!("{at}.service"),
                        "a plugin is scoped to a route or a service, not both",
                    );
                    PluginScope::Global
                }
                (Some(route), None) => {
                    if !routes.iter().any(|r| r.name == *route.get_ref()) {
                        self.unknown_reference(route, &format!("{at}.route"), "route");
                    }
                    PluginScope::Route(route.get_ref().clone())
                }
                (None, Some(service)) => {
                    if !services.iter().any(|s| s.name == *service.get_ref()) {
                        self.unknown_reference(service, &format!("{at}.service"), "service");
                    }
                    PluginScope::Service(service.get_ref().clone())
                }
                (None, None) => PluginScope::Global,
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
                    scope,
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
            MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT,
        );
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// A size (`"64MiB"` or a number of bytes) within `range`, else `default` and a problem.
    fn size(
        &mut self,
        value: &Field<toml::Value>,
        field: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
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
            Ok(bytes) if range.contains(&bytes) => bytes,
            Ok(_) => {
                let message = format!(
                    "must be between {} and {}",
                    format_size(*range.start()),
                    format_size(*range.end())
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
        let max_instances = match &raw.max_instances {
            Some(value) => match u32::try_from(*value.get_ref()) {
                Ok(n) if (1..=runtime::engine::MAX_INSTANCES).contains(&n) => n,
                _ => {
                    let message =
                        format!("must be between 1 and {}", runtime::engine::MAX_INSTANCES);
                    self.problem(value.span().start, "runtime.max_instances", message);
                    defaults.max_instances
                }
            },
            None => defaults.max_instances,
        };
        let memory_budget = self.size(
            &raw.memory_budget,
            "runtime.memory_budget",
            defaults.memory_budget as u64,
            MIN_MEMORY_BUDGET..=MAX_MEMORY_BUDGET,
        );
        RuntimeLimits {
            max_instances,
            memory_budget: usize::try_from(memory_budget).unwrap_or(usize::MAX),
        }
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
