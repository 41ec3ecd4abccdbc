//! The scenario file: parsed with spans, checked, and resolved into a [`Scenario`].
//!
//! Every mistake is reported as `<file>:<line>:<column>: <field>: <message>`; the first one found
//! stops parsing. Paths in the file resolve against the file's directory.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_spanned::Spanned;
use tollgate_phases::{ClientVerify, Target};
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::scenario::{
    CallPattern, ConnectionExpect, ConnectionScenario, DEFAULT_CIPHER, DEFAULT_CLIENT_ADDRESS,
    DEFAULT_TLS_VERSION, DEFAULT_UPSTREAM_STATUS, HeaderExpectation, PluginSettings, RequestExpect,
    RequestScenario, Scenario, ScenarioError, TlsScenario, UpstreamScenario, VerifyExpectation,
    default_target,
};
use crate::config::{
    MAX_TIME_LIMIT, MIN_MEMORY_LIMIT, MIN_TIME_LIMIT, Segment, line_column, locate, parse_duration,
    parse_size,
};
use crate::runtime::MAX_MEMORY_LIMIT;
use crate::tls::{TrustAnchors, cipher_name, parse_certificates};

// ---- raw, spanned shape of the file ----

type Field<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    plugin: Option<RawPlugin>,
    connection: Field<RawConnection>,
    connections: Field<Vec<Spanned<RawConnection>>>,
    requests: Field<Vec<Spanned<RawRequest>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Option<String>,
    config: Option<toml::Table>,
    memory_limit: Field<toml::Value>,
    time_limit: Field<toml::Value>,
    fail_open: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    tls: Option<bool>,
    sni: Option<String>,
    client_address: Field<String>,
    client_chain: Field<String>,
    client_ca: Field<String>,
    tls_version: Field<String>,
    cipher: Field<String>,
    requests: Field<Vec<Spanned<RawRequest>>>,
    expect: Option<RawConnectionExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnectionExpect {
    client_certificate_requested: Option<bool>,
    session_reuse_disabled: Option<bool>,
    ca_names: Option<Vec<String>>,
    client_chain: Option<bool>,
    client_verify: Field<StrOrBool>,
    calls: Option<Vec<Spanned<String>>>,
    no_plugin_errors: Option<bool>,
    plugin_error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    method: Field<String>,
    path: Field<String>,
    headers: Field<HeaderList>,
    targets: Field<Vec<Spanned<String>>>,
    upstream: Option<RawUpstream>,
    expect: Option<RawRequestExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    status: Field<u16>,
    headers: Field<HeaderList>,
    body: Option<Body>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestExpect {
    status: Option<u16>,
    headers: Option<BTreeMap<String, Spanned<StrOrBool>>>,
    upstream_headers: Option<BTreeMap<String, Spanned<StrOrBool>>>,
    body: Option<String>,
    client_verify: Field<StrOrBool>,
    target: Field<String>,
    calls: Option<Vec<Spanned<String>>>,
    no_plugin_errors: Option<bool>,
    plugin_error: Option<String>,
}

/// Headers as a table (`{ name = "value" }` or `{ name = ["v1", "v2"] }`, in name order) or as
/// an array of `[name, value]` pairs (in the given order).
struct HeaderList(Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;

        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }

        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = HeaderList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of header values or an array of [name, value] pairs")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut out = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, OneOrMany>()? {
                    match value {
                        OneOrMany::One(value) => out.push((name, value)),
                        OneOrMany::Many(values) => {
                            out.extend(values.into_iter().map(|v| (name.clone(), v)));
                        }
                    }
                }
                Ok(HeaderList(out))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeaderList, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = seq.next_element::<(String, String)>()? {
                    out.push(pair);
                }
                Ok(HeaderList(out))
            }
        }

        deserializer.deserialize_any(HeaderVisitor)
    }
}

/// A body: one string, or an array of string chunks.
struct Body(Vec<Vec<u8>>);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;

        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of string chunks")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Body, E> {
                Ok(Body(vec![value.as_bytes().to_vec()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                let mut chunks = Vec::new();
                while let Some(chunk) = seq.next_element::<String>()? {
                    chunks.push(chunk.into_bytes());
                }
                Ok(Body(chunks))
            }
        }

        deserializer.deserialize_any(BodyVisitor)
    }
}

/// A string, or `true`/`false`.
#[derive(Clone)]
enum StrOrBool {
    Str(String),
    Bool(bool),
}

impl<'de> Deserialize<'de> for StrOrBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrOrBoolVisitor;

        impl Visitor<'_> for StrOrBoolVisitor {
            type Value = StrOrBool;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, true or false")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<StrOrBool, E> {
                Ok(StrOrBool::Str(value.to_owned()))
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<StrOrBool, E> {
                Ok(StrOrBool::Bool(value))
            }
        }

        deserializer.deserialize_any(StrOrBoolVisitor)
    }
}

// ---- checking and resolving ----

struct Checker<'t> {
    text: &'t str,
    file: &'t Path,
    base: PathBuf,
}

type Checked<T> = Result<T, ScenarioError>;

pub(super) fn parse(text: &str, file: &Path, base_dir: &Path) -> Checked<Scenario> {
    let base = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    let cx = Checker { text, file, base };
    let root = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        cx.error(offset, "", e.message())
    })?;
    let span = root.span();
    let value = Spanned::new(span, DeValue::Table(root.into_inner()));
    let raw = RawScenario::deserialize(ValueDeserializer::from(value.clone())).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let field = render_path(&locate(value.get_ref(), offset).unwrap_or_default());
        cx.error(offset, field, e.message())
    })?;
    cx.resolve(raw)
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

impl Checker<'_> {
    fn error(
        &self,
        offset: usize,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) -> ScenarioError {
        let (line, column) = line_column(self.text, offset);
        ScenarioError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.to_string().replace('\n', "; "),
        }
    }

    fn error_at<T>(
        &self,
        span: &Spanned<T>,
        field: &str,
        message: impl fmt::Display,
    ) -> ScenarioError {
        self.error(span.span().start, field, message)
    }

    fn resolve(&self, raw: RawScenario) -> Checked<Scenario> {
        let plugin = match raw.plugin {
            Some(plugin) => self.plugin(plugin)?,
            None => PluginSettings::default(),
        };
        let connections = match (raw.connection, raw.connections) {
            (Some(_), Some(list)) => {
                return Err(self.error_at(
                    &list,
                    "connections",
                    "give either [connection] with [[requests]] or [[connections]], not both",
                ));
            }
            (None, Some(list)) => {
                if let Some(requests) = &raw.requests {
                    return Err(self.error_at(
                        requests,
                        "requests",
                        "with [[connections]], write requests as [[connections.requests]]",
                    ));
                }
                let mut out = Vec::new();
                for (index, connection) in list.into_inner().into_iter().enumerate() {
                    let span = connection.span();
                    let at = format!("connections[{index}]");
                    out.push(self.connection(connection.into_inner(), None, &at, span)?);
                }
                out
            }
            (connection, None) => {
                let (connection, span) = match connection {
                    Some(c) => {
                        let span = c.span();
                        (c.into_inner(), span)
                    }
                    None => (RawConnection::empty(), 0..0),
                };
                vec![self.connection(connection, raw.requests, "connection", span)?]
            }
        };
        Ok(Scenario {
            file: self.file.to_path_buf(),
            plugin,
            connections,
        })
    }

    fn plugin(&self, raw: RawPlugin) -> Checked<PluginSettings> {
        let mut settings = PluginSettings {
            name: raw.name,
            fail_open: raw.fail_open.unwrap_or(false),
            ..PluginSettings::default()
        };
        if let Some(config) = raw.config {
            settings.config = serde_json::to_value(config).map_err(|e| {
                self.error(0, "plugin.config", format!("cannot convert to JSON: {e}"))
            })?;
        }
        if let Some(value) = &raw.memory_limit {
            let field = "plugin.memory_limit";
            let bytes = match value.get_ref() {
                toml::Value::String(s) => parse_size(s),
                toml::Value::Integer(n) => {
                    u64::try_from(*n).map_err(|_| "must not be negative".to_owned())
                }
                other => Err(format!(
                    "expected a size such as \"64MiB\" or a number of bytes, found {}",
                    other.type_str()
                )),
            }
            .map_err(|m| self.error_at(value, field, m))?;
            let max = MAX_MEMORY_LIMIT as u64;
            if !(MIN_MEMORY_LIMIT..=max).contains(&bytes) {
                return Err(self.error_at(
                    value,
                    field,
                    format!("must be between 1MiB and {}MiB", max >> 20),
                ));
            }
            settings.memory_limit = usize::try_from(bytes).unwrap_or(MAX_MEMORY_LIMIT);
        }
        if let Some(value) = &raw.time_limit {
            let field = "plugin.time_limit";
            let limit = match value.get_ref() {
                toml::Value::String(s) => parse_duration(s),
                other => Err(format!(
                    "expected a duration such as \"100ms\", found {}",
                    other.type_str()
                )),
            }
            .map_err(|m| self.error_at(value, field, m))?;
            if !(MIN_TIME_LIMIT..=MAX_TIME_LIMIT).contains(&limit) {
                return Err(self.error_at(value, field, "must be between 1ms and 60s"));
            }
            settings.time_limit = limit;
        }
        Ok(settings)
    }

    fn connection(
        &self,
        raw: RawConnection,
        top_level_requests: Field<Vec<Spanned<RawRequest>>>,
        at: &str,
        span: Range<usize>,
    ) -> Checked<ConnectionScenario> {
        let client_addr = match &raw.client_address {
            Some(addr) => addr.get_ref().parse().map_err(|_| {
                self.error_at(
                    addr,
                    &format!("{at}.client_address"),
                    format!("expected `ip:port`, found `{}`", addr.get_ref()),
                )
            })?,
            None => DEFAULT_CLIENT_ADDRESS
                .parse()
                .map_err(|_| self.error(span.start, at, "bad default client address"))?,
        };
        let is_tls = raw.tls.unwrap_or(true);
        let tls = if is_tls {
            Some(self.tls(&raw, at)?)
        } else {
            for (field, value) in [
                ("client_chain", &raw.client_chain),
                ("client_ca", &raw.client_ca),
                ("tls_version", &raw.tls_version),
                ("cipher", &raw.cipher),
            ] {
                if let Some(value) = value {
                    return Err(self.error_at(
                        value,
                        &format!("{at}.{field}"),
                        "only for TLS connections (this one has tls = false)",
                    ));
                }
            }
            None
        };
        let (requests, requests_at) = match (raw.requests, top_level_requests) {
            (Some(r), _) => (Some(r), format!("{at}.requests")),
            (None, top) => (top, "requests".to_owned()),
        };
        let mut out = Vec::new();
        for (index, request) in requests
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let span = request.span();
            let field = format!("{requests_at}[{index}]");
            out.push(self.request(request.into_inner(), &field, span)?);
        }
        let expect = match raw.expect {
            Some(expect) => self.connection_expect(expect, &format!("{at}.expect"))?,
            None => ConnectionExpect::default(),
        };
        Ok(ConnectionScenario {
            sni: raw.sni,
            client_addr,
            tls,
            requests: out,
            expect,
        })
    }

    fn tls(&self, raw: &RawConnection, at: &str) -> Checked<TlsScenario> {
        let version = match &raw.tls_version {
            Some(v) => match ["TLSv1.2", "TLSv1.3"]
                .into_iter()
                .find(|known| v.get_ref() == known)
            {
                Some(known) => known,
                None => {
                    return Err(self.error_at(
                        v,
                        &format!("{at}.tls_version"),
                        format!(
                            "expected \"TLSv1.2\" or \"TLSv1.3\", found \"{}\"",
                            v.get_ref()
                        ),
                    ));
                }
            },
            None => DEFAULT_TLS_VERSION,
        };
        let cipher = match &raw.cipher {
            Some(c) => {
                let tls13 = version == "TLSv1.3";
                let known: Vec<&'static str> = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
                    .iter()
                    .map(|s| cipher_name(s.suite()))
                    .filter(|name| name.starts_with("TLS_") == tls13)
                    .collect();
                match known.iter().copied().find(|name| c.get_ref() == name) {
                    Some(name) => name,
                    None => {
                        return Err(self.error_at(
                            c,
                            &format!("{at}.cipher"),
                            format!(
                                "unknown {version} cipher \"{}\" (OpenSSL names: {})",
                                c.get_ref(),
                                known.join(", ")
                            ),
                        ));
                    }
                }
            }
            None if version == DEFAULT_TLS_VERSION => DEFAULT_CIPHER,
            None => "ECDHE-RSA-AES128-GCM-SHA256",
        };
        let client_chain = match &raw.client_chain {
            Some(path) => {
                let field = format!("{at}.client_chain");
                let text = self.read(path, &field)?;
                Some(parse_certificates(&text).map_err(|e| self.error_at(path, &field, e))?)
            }
            None => None,
        };
        let client_ca = match &raw.client_ca {
            Some(path) => {
                let field = format!("{at}.client_ca");
                let text = self.read(path, &field)?;
                Some(TrustAnchors::from_pem(&text).map_err(|e| self.error_at(path, &field, e))?)
            }
            None => None,
        };
        Ok(TlsScenario {
            version,
            cipher,
            client_chain,
            client_ca,
        })
    }

    fn read(&self, path: &Spanned<String>, field: &str) -> Checked<String> {
        let full = self.base.join(path.get_ref());
        std::fs::read_to_string(&full)
            .map_err(|e| self.error_at(path, field, format!("cannot read {}: {e}", full.display())))
    }

    fn request(&self, raw: RawRequest, at: &str, span: Range<usize>) -> Checked<RequestScenario> {
        let method = match &raw.method {
            Some(m) => {
                let method = m.get_ref();
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(self.error_at(
                        m,
                        &format!("{at}.method"),
                        format!(
                            "expected an upper-case method such as \"GET\", found \"{method}\""
                        ),
                    ));
                }
                method.clone()
            }
            None => "GET".to_owned(),
        };
        let Some(uri) = &raw.path else {
            return Err(self.error(
                span.start,
                format!("{at}.path"),
                "required field is missing",
            ));
        };
        if !uri.get_ref().starts_with('/') || uri.get_ref().contains(char::is_whitespace) {
            return Err(self.error_at(
                uri,
                &format!("{at}.path"),
                format!(
                    "expected a path starting with `/`, found \"{}\"",
                    uri.get_ref()
                ),
            ));
        }
        let (path, query) = match uri.get_ref().split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (uri.get_ref().clone(), None),
        };
        let headers = self.headers(raw.headers, &format!("{at}.headers"))?;
        let targets = match &raw.targets {
            Some(list) if list.get_ref().is_empty() => {
                return Err(self.error_at(list, &format!("{at}.targets"), "must not be empty"));
            }
            Some(list) => {
                let mut targets = Vec::new();
                for (i, target) in list.get_ref().iter().enumerate() {
                    let parsed = Target::parse(target.get_ref())
                        .map_err(|e| self.error_at(target, &format!("{at}.targets[{i}]"), e))?;
                    targets.push(parsed);
                }
                targets
            }
            None => vec![default_target()],
        };
        let upstream = match raw.upstream {
            Some(up) => {
                let status = match &up.status {
                    Some(s) => {
                        tollgate_phases::check_status(*s.get_ref())
                            .map_err(|e| self.error_at(s, &format!("{at}.upstream.status"), e))?;
                        *s.get_ref()
                    }
                    None => DEFAULT_UPSTREAM_STATUS,
                };
                UpstreamScenario {
                    status,
                    headers: self.headers(up.headers, &format!("{at}.upstream.headers"))?,
                    body: up.body.map(|b| b.0).unwrap_or_default(),
                }
            }
            None => UpstreamScenario::default(),
        };
        let expect = match raw.expect {
            Some(expect) => self.request_expect(expect, &format!("{at}.expect"))?,
            None => RequestExpect::default(),
        };
        Ok(RequestScenario {
            method,
            path,
            query,
            headers,
            targets,
            upstream,
            expect,
        })
    }

    fn headers(&self, raw: Field<HeaderList>, field: &str) -> Checked<Vec<(String, String)>> {
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, value) in &raw.get_ref().0 {
            tollgate_phases::check_header_name(name)
                .and_then(|()| tollgate_phases::check_header_value(value))
                .map_err(|e| self.error_at(&raw, field, e))?;
            out.push((name.to_ascii_lowercase(), value.clone()));
        }
        Ok(out)
    }

    fn calls(&self, raw: Option<Vec<Spanned<String>>>, at: &str) -> Checked<Vec<CallPattern>> {
        raw.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, text)| {
                CallPattern::parse(text.get_ref())
                    .map_err(|m| self.error_at(text, &format!("{at}.calls[{i}]"), m))
            })
            .collect()
    }

    fn verify(&self, raw: Field<StrOrBool>, field: &str) -> Checked<Option<VerifyExpectation>> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        match raw.get_ref() {
            StrOrBool::Str(value) => {
                let value =
                    ClientVerify::parse(value).map_err(|e| self.error_at(&raw, field, e))?;
                Ok(Some(VerifyExpectation::Value(value)))
            }
            StrOrBool::Bool(false) => Ok(Some(VerifyExpectation::Plaintext)),
            StrOrBool::Bool(true) => Err(self.error_at(
                &raw,
                field,
                "expected \"SUCCESS\", \"NONE\", \"FAILED:<reason>\" or false (plaintext)",
            )),
        }
    }

    fn header_expectations(
        &self,
        raw: Option<BTreeMap<String, Spanned<StrOrBool>>>,
        at: &str,
    ) -> Checked<BTreeMap<String, HeaderExpectation>> {
        let mut out = BTreeMap::new();
        for (name, value) in raw.unwrap_or_default() {
            tollgate_phases::check_header_name(&name)
                .map_err(|e| self.error_at(&value, &format!("{at}.{name}"), e))?;
            let expectation = match value.into_inner() {
                StrOrBool::Str(v) => HeaderExpectation::Value(v),
                StrOrBool::Bool(true) => HeaderExpectation::Present,
                StrOrBool::Bool(false) => HeaderExpectation::Absent,
            };
            out.insert(name.to_ascii_lowercase(), expectation);
        }
        Ok(out)
    }

    fn connection_expect(&self, raw: RawConnectionExpect, at: &str) -> Checked<ConnectionExpect> {
        Ok(ConnectionExpect {
            client_certificate_requested: raw.client_certificate_requested,
            session_reuse_disabled: raw.session_reuse_disabled,
            ca_names: raw.ca_names,
            client_chain: raw.client_chain,
            client_verify: self.verify(raw.client_verify, &format!("{at}.client_verify"))?,
            calls: self.calls(raw.calls, at)?,
            no_plugin_errors: raw.no_plugin_errors.unwrap_or(false),
            plugin_error: raw.plugin_error,
        })
    }

    fn request_expect(&self, raw: RawRequestExpect, at: &str) -> Checked<RequestExpect> {
        Ok(RequestExpect {
            status: raw.status,
            headers: self.header_expectations(raw.headers, &format!("{at}.headers"))?,
            upstream_headers: self
                .header_expectations(raw.upstream_headers, &format!("{at}.upstream_headers"))?,
            body: raw.body,
            client_verify: self.verify(raw.client_verify, &format!("{at}.client_verify"))?,
            target: raw
                .target
                .map(|target| {
                    Target::parse(target.get_ref())
                        .map_err(|e| self.error_at(&target, &format!("{at}.target"), e))
                })
                .transpose()?,
            calls: self.calls(raw.calls, at)?,
            no_plugin_errors: raw.no_plugin_errors.unwrap_or(false),
            plugin_error: raw.plugin_error,
        })
    }
}

impl RawConnection {
    fn empty() -> Self {
        RawConnection {
            tls: None,
            sni: None,
            client_address: None,
            client_chain: None,
            client_ca: None,
            tls_version: None,
            cipher: None,
            requests: None,
            expect: None,
        }
    }
}
