//! The file's shape before checking: each section element deserialized on its own, every
//! value spanned so a problem can point at its line and column.

use super::*;

pub(super) type Field<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub(super) target: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    pub(super) max_instances: Field<i64>,
    pub(super) memory_budget: Field<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) address: Field<String>,
    pub(super) cert: Field<String>,
    pub(super) key: Field<String>,
    pub(super) client_ca: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Field<String>,
    pub(super) address: Field<String>,
    pub(super) handshake_timeout: Field<toml::Value>,
    pub(super) header_timeout: Field<toml::Value>,
    pub(super) keepalive_timeout: Field<toml::Value>,
    pub(super) body_timeout: Field<toml::Value>,
    pub(super) send_timeout: Field<toml::Value>,
    pub(super) max_header_size: Field<toml::Value>,
    pub(super) max_headers: Field<i64>,
    pub(super) max_body_size: Field<toml::Value>,
    pub(super) max_connections: Field<i64>,
    pub(super) http2_max_streams: Field<i64>,
    pub(super) http2_max_resets: Field<i64>,
    pub(super) http2_ping_interval: Field<toml::Value>,
    pub(super) http2_ping_timeout: Field<toml::Value>,
    pub(super) client_ca: Field<String>,
    pub(super) session_ticket_keys: Field<Vec<Spanned<String>>>,
    pub(super) certificates: Option<Vec<Spanned<RawCertificate>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert: Field<String>,
    pub(super) key: Field<String>,
    pub(super) server_names: Field<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Field<String>,
    pub(super) targets: Field<Vec<Spanned<String>>>,
    pub(super) protocol: Field<Protocol>,
    pub(super) connect_timeout: Field<toml::Value>,
    pub(super) read_timeout: Field<toml::Value>,
    pub(super) body_timeout: Field<toml::Value>,
    pub(super) retries: Field<i64>,
    pub(super) tls_verify: Field<bool>,
    pub(super) ca: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Field<String>,
    pub(super) hosts: Field<Vec<Spanned<String>>>,
    pub(super) paths: Field<Vec<Spanned<String>>>,
    pub(super) methods: Field<Vec<Spanned<String>>>,
    pub(super) service: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub(super) name: Field<String>,
    pub(super) path: Field<String>,
    pub(super) config: Field<toml::Table>,
    pub(super) route: Field<String>,
    pub(super) service: Field<String>,
    pub(super) order: Field<i64>,
    pub(super) fail_open: Field<bool>,
    pub(super) memory_limit: Field<toml::Value>,
    pub(super) time_limit: Field<toml::Value>,
}

/// A section element that deserialized, with its index and span.
pub(super) struct Element<T> {
    pub(super) index: usize,
    pub(super) span: Range<usize>,
    pub(super) raw: T,
}

#[derive(Default)]
pub(super) struct RawConfig {
    pub(super) trusted_ips: Option<Vec<Spanned<String>>>,
    pub(super) strip_client_headers: Option<Vec<Spanned<String>>>,
    pub(super) pid_file: Option<Spanned<String>>,
    pub(super) drain_timeout: Field<toml::Value>,
    pub(super) workers: Field<i64>,
    pub(super) admin: Option<(RawAdmin, Range<usize>)>,
    pub(super) access_log: Option<(RawAccessLog, Range<usize>)>,
    pub(super) runtime: Option<RawRuntime>,
    pub(super) listeners: Option<(Vec<Element<RawListener>>, Range<usize>)>,
    pub(super) services: Vec<Element<RawService>>,
    pub(super) routes: Vec<Element<RawRoute>>,
    pub(super) plugins: Vec<Element<RawPlugin>>,
}

pub(super) const SECTIONS: &str = "`trusted_ips`, `strip_client_headers`, `pid_file`, \
                        `drain_timeout`, `workers`, `admin`, `access_log`, `runtime`, `listeners`, \
                        `services`, `routes`, `plugins`";
