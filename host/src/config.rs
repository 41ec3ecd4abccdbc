//! The gateway's declarative TOML file: parsed, checked and resolved into [`Config`].
//!
//! Every mistake in the file is reported, not only the first, each with its position and the
//! field it concerns, the way a compiler reports errors:
//!
//! ```text
//! tollgate.toml:12:11: services[0].targets[1]: target needs a port: `127.0.0.1`
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

/// An upstream `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

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
        let dir = path.parent().unwrap_or(Path::new(""));
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut cx = Checker {
            text,
            base,
            problems: Vec::new(),
        };
        let config = cx.check(text);
        let mut problems = cx.problems;
        match config {
            Some(config) if problems.is_empty() => Ok(config),
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

// ---- raw, spanned shape of the file ----

type Field<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    target: Field<String>,
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
    listeners: Option<(Vec<Element<RawListener>>, Range<usize>)>,
    services: Vec<Element<RawService>>,
    routes: Vec<Element<RawRoute>>,
    plugins: Vec<Element<RawPlugin>>,
}

const SECTIONS: &str = "`access_log`, `listeners`, `services`, `routes`, `plugins`";

/// Collects problems while turning the text into a [`Config`].
struct Checker<'t> {
    text: &'t str,
    base: PathBuf,
    problems: Vec<ConfigProblem>,
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
        Some(Config {
            access_log,
            listeners,
            services,
            routes,
            plugins,
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
        let default = usize::try_from(DEFAULT_MEMORY_LIMIT).unwrap_or(usize::MAX);
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
            Ok(bytes) if (MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT).contains(&bytes) => {
                usize::try_from(bytes).unwrap_or(default)
            }
            Ok(_) => {
                let message = format!(
                    "must be between {} and {}",
                    format_size(MIN_MEMORY_LIMIT),
                    format_size(MAX_MEMORY_LIMIT)
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

pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

fn span_contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || span.start == offset
}

/// The path to the innermost key or array item whose span holds `offset`.
pub(crate) fn locate(value: &DeValue<'_>, offset: usize) -> Option<Vec<Segment>> {
    match value {
        DeValue::Table(table) => table.iter().find_map(|(key, item)| {
            let here = || vec![Segment::Key(key.get_ref().to_string())];
            if span_contains(&key.span(), offset) {
                return Some(here());
            }
            if let Some(mut inner) = locate(item.get_ref(), offset) {
                inner.insert(0, Segment::Key(key.get_ref().to_string()));
                return Some(inner);
            }
            span_contains(&item.span(), offset).then(here)
        }),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            if let Some(mut inner) = locate(item.get_ref(), offset) {
                inner.insert(0, Segment::Index(i));
                return Some(inner);
            }
            span_contains(&item.span(), offset).then(|| vec![Segment::Index(i)])
        }),
        _ => None,
    }
}

/// Removes the innermost table key on `path`; false when there is none.
fn remove_deepest_key(value: &mut DeValue<'_>, path: &[Segment]) -> bool {
    let Some(last_key) = path.iter().rposition(|s| matches!(s, Segment::Key(_))) else {
        return false;
    };
    let mut current = value;
    for segment in &path[..last_key] {
        let next = match (current, segment) {
            (DeValue::Table(t), Segment::Key(k)) => t.get_mut(k.as_str()).map(Spanned::get_mut),
            (DeValue::Array(a), Segment::Index(i)) => a.get_mut(*i).map(Spanned::get_mut),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match (current, &path[last_key]) {
        (DeValue::Table(t), Segment::Key(k)) => t.remove(k.as_str()).is_some(),
        _ => false,
    }
}

/// 1-based line and character column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let invalid = || format!("invalid duration `{s}` (expected e.g. \"250ms\", \"10s\", \"2m\")");
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(invalid()),
    };
    millis.map(Duration::from_millis).ok_or_else(invalid)
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let invalid = || format!("invalid size `{s}` (expected e.g. \"64MiB\", \"512KiB\" or bytes)");
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let factor: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    n.checked_mul(factor).ok_or_else(invalid)
}

fn format_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_target(s: &str) -> Result<Target, String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("target needs a port: `{s}` (write [ipv6]:port)"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 address in target `{s}`"));
        }
        (host, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("target needs a port: `{s}` (expected host:port)"))?;
        if host.contains(':') {
            return Err(format!("IPv6 targets need brackets: `[{host}]:{port}`"));
        }
        if !is_hostname(host) {
            return Err(format!("invalid host in target `{s}`"));
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(Target {
            host: host.to_owned(),
            port,
        }),
        _ => Err(format!("invalid port in target `{s}`")),
    }
}

fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as Json;
    Ok(match value {
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} cannot be represented in JSON"))?,
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Json::Object(
            table
                .into_iter()
                .map(|(k, v)| toml_to_json(v).map(|v| (k, v)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory holding the files the example configuration refers to.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "certs/server.pem",
            "certs/server.key",
            "certs/api.pem",
            "certs/api.key",
            "certs/ca.pem",
            "certs/upstream-ca.pem",
            "plugins/mtls_auth.wasm",
            "plugins/rate_limit.wasm",
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        dir
    }

    const FULL: &str = r#"
[access_log]
target = "logs/access.log"

[[listeners]]
name = "https"
address = "127.0.0.1:8443"
handshake_timeout = "250ms"
client_ca = "certs/ca.pem"
[[listeners.certificates]]
cert = "certs/api.pem"
key = "certs/api.key"
server_names = ["API.example.com", "*.example.com"]
[[listeners.certificates]]
cert = "certs/server.pem"
key = "certs/server.key"

[[listeners]]
address = "[::1]:8080"

[[services]]
name = "echo"
targets = ["127.0.0.1:9000", "backend.internal:9001", "[::1]:9002"]
connect_timeout = "2s"

[[services]]
name = "secure"
targets = ["10.0.0.1:443"]
protocol = "https"
read_timeout = "2m"
retries = 3
tls_verify = false
ca = "certs/upstream-ca.pem"

[[routes]]
name = "api"
hosts = ["api.example.com", "*.Example.com"]
paths = ["/api", "/v1"]
methods = ["get", "POST"]
service = "echo"

[[routes]]
service = "secure"

[[plugins]]
name = "mtls"
path = "plugins/mtls_auth.wasm"
config = { ca_certificates = "pem", snis = ["*"], nested = { depth = 2, ratio = 0.5, on = true } }
route = "api"
order = 10
fail_open = true
memory_limit = "16MiB"
time_limit = "250ms"

[[plugins]]
path = "plugins/rate_limit.wasm"
service = "secure"
memory_limit = 2097152

[[plugins]]
name = "mtls-global"
path = "plugins/mtls_auth.wasm"
order = -1
"#;

    fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &dir.join("tollgate.toml"))
    }

    /// The rendered problems, with the fixture directory replaced by `$DIR`.
    fn rendered(dir: &Path, text: &str) -> Vec<String> {
        let error = parse_in(dir, text).unwrap_err();
        error
            .to_string()
            .replace(&dir.display().to_string(), "$DIR")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    const MINIMAL_LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n";

    #[test]
    fn full_example_resolves_to_expected_structures() {
        let dir = fixture();
        let d = dir.path();
        let config = parse_in(d, FULL).unwrap();

        assert_eq!(
            config.access_log,
            AccessLogTarget::File(d.join("logs/access.log"))
        );

        assert_eq!(
            config.listeners,
            vec![
                ListenerConfig {
                    name: "https".into(),
                    address: "127.0.0.1:8443".parse().unwrap(),
                    handshake_timeout: Duration::from_millis(250),
                    client_ca: Some(d.join("certs/ca.pem")),
                    certificates: vec![
                        CertificateConfig {
                            cert: d.join("certs/api.pem"),
                            key: d.join("certs/api.key"),
                            server_names: vec!["api.example.com".into(), "*.example.com".into()],
                        },
                        CertificateConfig {
                            cert: d.join("certs/server.pem"),
                            key: d.join("certs/server.key"),
                            server_names: vec![],
                        },
                    ],
                },
                ListenerConfig {
                    name: "listener-1".into(),
                    address: "[::1]:8080".parse().unwrap(),
                    handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                    client_ca: None,
                    certificates: vec![],
                },
            ]
        );
        assert!(config.listeners[0].is_tls());
        assert!(!config.listeners[1].is_tls());
        assert_eq!(
            config.listeners[0].default_certificate().unwrap().cert,
            d.join("certs/server.pem")
        );

        let target = |host: &str, port| Target {
            host: host.into(),
            port,
        };
        assert_eq!(
            config.services,
            vec![
                ServiceConfig {
                    name: "echo".into(),
                    targets: vec![
                        target("127.0.0.1", 9000),
                        target("backend.internal", 9001),
                        target("::1", 9002),
                    ],
                    protocol: Protocol::Http,
                    connect_timeout: Duration::from_secs(2),
                    read_timeout: DEFAULT_READ_TIMEOUT,
                    retries: 2,
                    tls_verify: true,
                    ca: None,
                },
                ServiceConfig {
                    name: "secure".into(),
                    targets: vec![target("10.0.0.1", 443)],
                    protocol: Protocol::Https,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    read_timeout: Duration::from_secs(120),
                    retries: 3,
                    tls_verify: false,
                    ca: Some(d.join("certs/upstream-ca.pem")),
                },
            ]
        );
        assert_eq!(config.services[0].targets[2].to_string(), "[::1]:9002");

        assert_eq!(
            config.routes,
            vec![
                RouteConfig {
                    name: "api".into(),
                    hosts: vec!["api.example.com".into(), "*.example.com".into()],
                    paths: vec!["/api".into(), "/v1".into()],
                    methods: vec!["GET".into(), "POST".into()],
                    service: "echo".into(),
                },
                RouteConfig {
                    name: "route-1".into(),
                    hosts: vec![],
                    paths: vec![],
                    methods: vec![],
                    service: "secure".into(),
                },
            ]
        );

        // Sorted by order, ties in file order; the same wasm twice under two names.
        assert_eq!(
            config.plugins,
            vec![
                PluginConfig {
                    name: "mtls-global".into(),
                    path: d.join("plugins/mtls_auth.wasm"),
                    config: serde_json::json!({}),
                    scope: PluginScope::Global,
                    order: -1,
                    fail_open: false,
                    memory_limit: 64 << 20,
                    time_limit: DEFAULT_TIME_LIMIT,
                },
                PluginConfig {
                    name: "rate_limit".into(),
                    path: d.join("plugins/rate_limit.wasm"),
                    config: serde_json::json!({}),
                    scope: PluginScope::Service("secure".into()),
                    order: 0,
                    fail_open: false,
                    memory_limit: 2 << 20,
                    time_limit: DEFAULT_TIME_LIMIT,
                },
                PluginConfig {
                    name: "mtls".into(),
                    path: d.join("plugins/mtls_auth.wasm"),
                    config: serde_json::json!({
                        "ca_certificates": "pem",
                        "snis": ["*"],
                        "nested": { "depth": 2, "ratio": 0.5, "on": true },
                    }),
                    scope: PluginScope::Route("api".into()),
                    order: 10,
                    fail_open: true,
                    memory_limit: 16 << 20,
                    time_limit: Duration::from_millis(250),
                },
            ]
        );
    }

    #[test]
    fn defaults_for_a_minimal_file() {
        let dir = fixture();
        let config = parse_in(dir.path(), MINIMAL_LISTENER).unwrap();
        assert_eq!(config.access_log, AccessLogTarget::Stdout);
        assert_eq!(config.listeners[0].name, "listener-0");
        assert!(config.services.is_empty() && config.routes.is_empty());
        assert!(config.plugins.is_empty());

        let targets: Vec<String> = (1..=8).map(|p| format!("\"h:{p}\"")).collect();
        let text = format!(
            "{MINIMAL_LISTENER}[[services]]\nname = \"many\"\ntargets = [{}]\n",
            targets.join(", ")
        );
        let config = parse_in(dir.path(), &text).unwrap();
        assert_eq!(config.services[0].retries, MAX_DEFAULT_RETRIES);
        assert_eq!(config.services[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn duplicate_key_is_a_syntax_error_quoting_the_key() {
        let dir = fixture();
        let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\naddress = \"x\"\n";
        assert_eq!(
            rendered(dir.path(), text),
            vec!["$DIR/tollgate.toml:3:1: duplicate key (at `address`)"]
        );
    }

    #[test]
    fn load_reads_the_file_and_resolves_against_its_directory() {
        let dir = fixture();
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, FULL).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.plugins[2].path,
            dir.path().join("plugins/mtls_auth.wasm")
        );
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let dir = fixture();
        let path = dir.path().join("missing.toml");
        let error = Config::load(&path).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("{}: cannot read configuration: ", path.display())),
            "{text}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let dir = fixture();
        let text = "[[listeners]]\naddress = \"127.0.0.1:8080\nname = 1\n";
        let error = parse_in(dir.path(), text).unwrap_err();
        let problems = error.problems();
        assert_eq!(problems.len(), 1, "{error}");
        assert_eq!((problems[0].line, problems[0].field.as_str()), (2, ""));
        assert!(error.to_string().starts_with(&format!(
            "{}:2:",
            dir.path().join("tollgate.toml").display()
        )));
    }

    #[test]
    fn unknown_key_is_named_with_its_position() {
        let dir = fixture();
        let text = format!(
            "{MINIMAL_LISTENER}\n[[plugins]]\npath = \"plugins/mtls_auth.wasm\"\nordr = 1\n"
        );
        let lines = rendered(dir.path(), &text);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "$DIR/tollgate.toml:6:1: plugins[0].ordr: unknown field `ordr`, expected one of"
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn unknown_section_and_nested_unknown_key() {
        let dir = fixture();
        let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[listeners.certificates]]\n\
                    cert = \"certs/server.pem\"\nkey = \"certs/server.key\"\nsni = [\"a\"]\n\
                    [upstreams]\nx = 1\n";
        let lines = rendered(dir.path(), text);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "$DIR/tollgate.toml:6:1: listeners[0].certificates[0].sni: unknown field `sni`"
            ),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "$DIR/tollgate.toml:7:2: upstreams: unknown section `upstreams`, expected one of \
             `access_log`, `listeners`, `services`, `routes`, `plugins`"
        );
    }

    #[test]
    fn wrong_types_are_reported_per_field() {
        let dir = fixture();
        let text = format!(
            "{MINIMAL_LISTENER}[[services]]\nname = \"s\"\ntargets = [\"a:1\", 5]\nretries = \"two\"\n\
             tls_verify = \"yes\"\nprotocol = \"ftp\"\n"
        );
        let lines = rendered(dir.path(), &text);
        assert_eq!(
            lines,
            vec![
                "$DIR/tollgate.toml:5:19: services[0].targets[1]: invalid type: integer `5`, expected a string",
                "$DIR/tollgate.toml:6:11: services[0].retries: invalid type: string \"two\", expected i64",
                "$DIR/tollgate.toml:7:14: services[0].tls_verify: invalid type: string \"yes\", expected a boolean",
                "$DIR/tollgate.toml:8:12: services[0].protocol: unknown variant `ftp`, expected `http` or `https`",
            ],
        );
    }

    #[test]
    fn missing_file_gives_resolved_path() {
        let dir = fixture();
        let text = format!(
            "{MINIMAL_LISTENER}\n[[plugins]]\nname = \"p\"\npath = \"plugins/nope.wasm\"\n"
        );
        assert_eq!(
            rendered(dir.path(), &text),
            vec!["$DIR/tollgate.toml:6:8: plugins[0].path: file not found: $DIR/plugins/nope.wasm"]
        );
    }

    #[test]
    fn bad_values_are_all_reported_in_file_order() {
        let dir = fixture();
        let text = r#"
[access_log]
target = "no-such-dir/access.log"

[[listeners]]
address = "localhost:8443"
handshake_timeout = "10"

[[listeners]]
name = "b"
address = "127.0.0.1:9000"
client_ca = "certs/ca.pem"

[[listeners]]
name = "b"
address = "127.0.0.1:9000"
[[listeners.certificates]]
cert = "certs/server.pem"
key = "certs/missing.key"
server_names = ["bad host"]
[[listeners.certificates]]
cert = "certs/server.pem"
key = "certs/server.key"

[[services]]
name = "echo"
targets = ["127.0.0.1", "::1:80", "host:0"]
tls_verify = false
connect_timeout = 5

[[services]]
name = "echo"

[[routes]]
name = "api"
hosts = ["*.*.example.com"]
paths = ["api"]
methods = ["GE T"]
service = "nope"

[[plugins]]
path = "plugins/mtls_auth.wasm"
route = "missing-route"
memory_limit = "512KiB"
time_limit = "2m"

[[plugins]]
path = "plugins/mtls_auth.wasm"
route = "api"
service = "echo"
memory_limit = "1TB"
"#;
        let lines = rendered(dir.path(), text);
        let expected = vec![
            "$DIR/tollgate.toml:3:10: access_log.target: directory not found: $DIR/no-such-dir",
            "$DIR/tollgate.toml:6:11: listeners[0].address: invalid address `localhost:8443` (expected ip:port, e.g. 127.0.0.1:8443)",
            "$DIR/tollgate.toml:7:21: listeners[0].handshake_timeout: invalid duration `10` (expected e.g. \"250ms\", \"10s\", \"2m\")",
            "$DIR/tollgate.toml:12:13: listeners[1].client_ca: client_ca needs a TLS listener (add [[listeners.certificates]])",
            "$DIR/tollgate.toml:15:8: listeners[2].name: duplicate listener name `b` (also listeners[1])",
            "$DIR/tollgate.toml:16:11: listeners[2].address: duplicate address 127.0.0.1:9000 (also listeners[1])",
            "$DIR/tollgate.toml:19:7: listeners[2].certificates[0].key: file not found: $DIR/certs/missing.key",
            "$DIR/tollgate.toml:20:17: listeners[2].certificates[0].server_names[0]: invalid host pattern `bad host` (expected a host name, optionally starting with \"*.\")",
            "$DIR/tollgate.toml:27:12: services[0].targets[0]: target needs a port: `127.0.0.1` (expected host:port)",
            "$DIR/tollgate.toml:27:25: services[0].targets[1]: IPv6 targets need brackets: `[::1]:80`",
            "$DIR/tollgate.toml:27:35: services[0].targets[2]: invalid port in target `host:0`",
            "$DIR/tollgate.toml:28:14: services[0].tls_verify: only valid for protocol = \"https\"",
            "$DIR/tollgate.toml:29:19: services[0].connect_timeout: a duration needs a unit: write \"5s\" or \"5ms\"",
            "$DIR/tollgate.toml:31:1: services[1].targets: required field is missing",
            "$DIR/tollgate.toml:32:8: services[1].name: duplicate service name `echo` (also services[0])",
            "$DIR/tollgate.toml:36:10: routes[0].hosts[0]: invalid host pattern `*.*.example.com` (expected a host name, optionally starting with \"*.\")",
            "$DIR/tollgate.toml:37:10: routes[0].paths[0]: path must start with \"/\": `api`",
            "$DIR/tollgate.toml:38:12: routes[0].methods[0]: invalid HTTP method `GE T`",
            "$DIR/tollgate.toml:39:11: routes[0].service: no service named `nope`",
            "$DIR/tollgate.toml:43:9: plugins[0].route: no route named `missing-route`",
            "$DIR/tollgate.toml:44:16: plugins[0].memory_limit: must be between 1MiB and 1GiB",
            "$DIR/tollgate.toml:45:14: plugins[0].time_limit: must be between 1ms and 1m",
            "$DIR/tollgate.toml:48:8: plugins[1].name: plugin name `mtls_auth` (from the file name) is already used by plugins[0]; give this instance a distinct `name`",
            "$DIR/tollgate.toml:50:11: plugins[1].service: a plugin is scoped to a route or a service, not both",
            "$DIR/tollgate.toml:51:16: plugins[1].memory_limit: invalid size `1TB` (expected e.g. \"64MiB\", \"512KiB\" or bytes)",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn at_least_one_listener() {
        let dir = fixture();
        assert_eq!(
            rendered(dir.path(), "[access_log]\ntarget = \"stdout\"\n"),
            vec!["$DIR/tollgate.toml:1:1: listeners: at least one [[listeners]] is required"]
        );
    }

    #[test]
    fn several_unknown_keys_in_one_table_are_all_reported() {
        let dir = fixture();
        let text = "[[listeners]]\nadress = \"127.0.0.1:1\"\nnmae = \"x\"\n";
        let fields: Vec<String> = parse_in(dir.path(), text)
            .unwrap_err()
            .problems()
            .iter()
            .map(|p| p.field.clone())
            .collect();
        assert_eq!(
            fields,
            [
                "listeners[0].address",
                "listeners[0].adress",
                "listeners[0].nmae"
            ]
        );
    }

    #[test]
    fn duration_size_and_position_helpers() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1MB").is_err());
        assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
    }
}
