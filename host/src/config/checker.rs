//! The checker: collects every problem with its position, reads the file's sections and
//! resolves them (one sibling module per section), and the value checks sections share.

use super::*;

/// Bounds the retry loop that collects several key/type mistakes from one table.
const MAX_SCHEMA_PROBLEMS_PER_TABLE: usize = 32;

/// Collects problems while turning the text into a [`Config`].
pub(super) struct Checker<'t> {
    pub(super) text: &'t str,
    pub(super) base: PathBuf,
    pub(super) problems: Vec<ConfigProblem>,
    /// Each plugin's position in the file, by name (the resolved list is sorted by `order`).
    pub(super) plugin_indexes: HashMap<String, usize>,
}

impl Checker<'_> {
    pub(super) fn problem(
        &mut self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
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
    pub(super) fn reported(&self, field: &str) -> bool {
        self.problems.iter().any(|p| {
            p.field
                .strip_prefix(field)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    pub(super) fn required<'a, T>(
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

    pub(super) fn check(&mut self, text: &str) -> Option<Config> {
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

    pub(super) fn read_sections(&mut self, root: DeTable<'_>) -> RawConfig {
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
                "pid_file" => raw.pid_file = self.deserialize_lenient(value, "pid_file"),
                "drain_timeout" => {
                    raw.drain_timeout = self.deserialize_lenient(value, "drain_timeout");
                }
                "workers" => raw.workers = self.deserialize_lenient(value, "workers"),
                "admin" => {
                    raw.admin = self.deserialize_lenient(value, "admin").map(|r| (r, span));
                }
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

    pub(super) fn read_array<T: DeserializeOwned>(
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
    pub(super) fn deserialize_lenient<T: DeserializeOwned>(
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

    pub(super) fn resolve(&mut self, raw: RawConfig) -> Option<Config> {
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
        let pid_file = self.pid_file(raw.pid_file.as_ref());
        let drain_timeout = self.duration(
            &raw.drain_timeout,
            "drain_timeout",
            DEFAULT_DRAIN_TIMEOUT,
            (MIN_TIMEOUT, MAX_TIMEOUT),
        );
        let workers = self.workers(&raw.workers);
        let admin = raw
            .admin
            .as_ref()
            .and_then(|(admin, span)| self.admin(admin, span));
        Some(Config {
            pid_file,
            drain_timeout,
            workers,
            admin,
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

    pub(super) fn check_name(&mut self, name: &Spanned<String>, field: &str) {
        if name.get_ref().trim().is_empty() {
            self.problem(name.span().start, field, "name must not be empty");
        }
    }

    pub(super) fn unknown_reference(&mut self, name: &Spanned<String>, field: &str, kind: &str) {
        let message = format!("no {kind} named `{}`", name.get_ref());
        self.problem(name.span().start, field, message);
    }

    pub(super) fn resolve_path(&self, value: &str) -> PathBuf {
        self.base.join(value)
    }

    /// Resolves a path against the file's directory and checks that it names a file.
    pub(super) fn file(&mut self, value: &Spanned<String>, field: &str) -> PathBuf {
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

    pub(super) fn duration(
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
        self.within(value, field, parsed, default, (min, max), format_duration)
    }

    /// `parsed` when it lies within `min..=max`; otherwise a problem at `value` (written with
    /// `show`) and `default`.
    fn within<T: PartialOrd + Copy>(
        &mut self,
        value: &Spanned<toml::Value>,
        field: &str,
        parsed: Result<T, String>,
        default: T,
        (min, max): (T, T),
        show: fn(T) -> String,
    ) -> T {
        let message = match parsed {
            Ok(parsed) if parsed >= min && parsed <= max => return parsed,
            Ok(_) => format!("must be between {} and {}", show(min), show(max)),
            Err(message) => message,
        };
        self.problem(value.span().start, field, message);
        default
    }

    pub(super) fn memory(&mut self, value: &Field<toml::Value>, field: &str) -> usize {
        let bytes = self.size(
            value,
            field,
            DEFAULT_MEMORY_LIMIT,
            (MIN_MEMORY_LIMIT, MAX_MEMORY_LIMIT),
        );
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// A size in bytes: `"64MiB"` or a plain number.
    pub(super) fn size(
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
        self.within(value, field, parsed, default, (min, max), format_size)
    }

    /// A whole number within `min..=max`.
    pub(super) fn count(
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

    /// Checks an SNI or Host pattern (`name` or `*.suffix`) and returns it lower-cased.
    pub(super) fn host_pattern(
        &mut self,
        pattern: &Spanned<String>,
        field: &str,
    ) -> Option<String> {
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
pub(super) struct Names {
    pub(super) kind: &'static str,
    pub(super) seen: HashMap<String, String>,
}

impl Names {
    pub(super) fn new(kind: &'static str) -> Self {
        Names {
            kind,
            seen: HashMap::new(),
        }
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.seen.contains_key(name)
    }

    pub(super) fn first(&self, name: &str) -> Option<String> {
        self.seen.get(name).cloned()
    }

    pub(super) fn add(&mut self, cx: &mut Checker<'_>, name: &str, offset: usize, at: &str) {
        if let Some(first) = self.seen.get(name) {
            let message = format!("duplicate {} `{name}` (also {first})", self.kind);
            cx.problem(offset, format!("{at}.name"), message);
        } else {
            self.seen.insert(name.to_owned(), at.to_owned());
        }
    }
}
