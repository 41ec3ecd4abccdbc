//! The access log: one JSON line per request, in the shape of Kong's log serializer
//! (`spec/client-tls.md` §5), written off the request path by a background task.
//!
//! The proxy fills a [`LogEntry`] after the response is sent and hands it to
//! [`AccessLog::write`], which never blocks: when the queue is full (in lines or in bytes, so a
//! slow disk cannot make the gateway hold unbounded memory) the line is dropped and counted
//! rather than delaying a client. The writer never leaves half a line in front of the next one
//! after a failed write, and reopens its file on SIGUSR1 (logrotate).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use self::writer::{Command, LineWriter, ReopenSignal};

use crate::config::AccessLogTarget;

/// Lines queued for the writer before new ones are dropped.
pub const ACCESS_LOG_QUEUE_LINES: usize = 8192;
/// Bytes queued for (or being written by) the writer before new lines are dropped.
pub const ACCESS_LOG_QUEUE_BYTES: usize = 16 << 20;
/// What redacted request headers are logged as.
pub const REDACTED: &str = "REDACTED";
/// Request headers whose values are never logged.
pub const REDACTED_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];
/// Query arguments kept in `request.querystring`, as Kong's `get_query()` default.
pub const MAX_QUERY_ARGS: usize = 100;
/// Minimum time between two warnings about dropped lines or write failures.
const WARN_INTERVAL_MS: u64 = 1000;

/// One request's log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The request as received from the client.
    pub request: RequestLog,
    /// Path and query sent upstream (empty when no upstream was contacted).
    pub upstream_uri: String,
    /// The response as sent to the client.
    pub response: ResponseLog,
    /// Where the time went.
    pub latencies: Latencies,
    /// The client's IP address.
    pub client_ip: String,
    /// When the request started, milliseconds since the Unix epoch.
    pub started_at: u64,
    /// The matched route; absent when none matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<NamedRef>,
    /// The service proxied to; absent when none was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceLog>,
    /// Each attempt to reach an upstream target, in order.
    #[serde(default)]
    pub tries: Vec<Try>,
    /// Plugin failures during this request (Tollgate's addition); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugin_errors: Vec<PluginErrorLog>,
}

/// The `request` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLog {
    /// Request method.
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// `scheme://host:port/path?query`, see [`request_url`].
    pub url: String,
    /// Parsed query, see [`parse_querystring`].
    pub querystring: Map<String, Value>,
    /// Request headers, see [`headers_to_map`].
    pub headers: Map<String, Value>,
    /// Bytes received for the request (head and body).
    pub size: u64,
    /// The connection's TLS parameters; absent on plaintext connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsLog>,
}

/// The `request.tls` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsLog {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// OpenSSL's cipher name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// `SUCCESS`, `NONE` or `FAILED:<reason>`, after any `set_client_verify`.
    pub client_verify: String,
}

/// The `response` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseLog {
    /// Status code sent to the client.
    pub status: u16,
    /// Response headers sent to the client, see [`headers_to_map`].
    pub headers: Map<String, Value>,
    /// Bytes sent to the client (head and body).
    pub size: u64,
}

/// The `latencies` object, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latencies {
    /// Time spent waiting for the upstream; -1 when no upstream was contacted.
    pub proxy: i64,
    /// Time spent in the gateway itself, plugins included.
    pub kong: i64,
    /// From the first byte read from the client to the last byte sent.
    pub request: i64,
}

/// A named entity (the matched route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedRef {
    /// Identifier, when the entity has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name from the configuration.
    pub name: String,
}

/// The `service` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLog {
    /// Name from the configuration.
    pub name: String,
    /// Host of the target used (the last try's).
    pub host: String,
    /// Port of the target used.
    pub port: u16,
    /// `http` or `https`.
    pub protocol: String,
}

/// One attempt to reach an upstream target (an element of `tries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Try {
    /// Target address tried.
    pub ip: String,
    /// Target port tried.
    pub port: u16,
    /// Milliseconds spent choosing the target (balancer phase).
    pub balancer_latency: u64,
}

/// A plugin failure recorded for this request (an element of `plugin_errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginErrorLog {
    /// Plugin instance name.
    pub plugin: String,
    /// Phase it failed in.
    pub phase: String,
    /// What went wrong.
    pub message: String,
}

/// Request or response headers as Kong logs them: lower-case names, a repeated header as an
/// array of its values in order, `authorization` and `proxy-authorization` as `"REDACTED"`.
pub fn headers_to_map(headers: &http::HeaderMap) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        add_header(&mut map, name.as_str().to_owned(), value);
    }
    map
}

/// [`headers_to_map`] for headers held as name/value pairs (names in any case).
pub fn request_headers_from_pairs(pairs: &[(String, String)]) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in pairs {
        add_header(&mut map, name.to_ascii_lowercase(), value.clone());
    }
    map
}

fn add_header(map: &mut Map<String, Value>, name: String, value: String) {
    if REDACTED_HEADERS.contains(&name.as_str()) {
        map.insert(name, Value::String(REDACTED.to_owned()));
        return;
    }
    append(map, name, Value::String(value));
}

/// Inserts `value`, turning a repeated key into an array of its values in order.
fn append(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        None => {
            map.insert(key, value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

/// Parses a query string as Kong does (`ngx.req.get_uri_args`): `key=value` gives a string,
/// a key without `=` gives `true`, a repeated key an array in order; `%XX` and `+` are decoded;
/// empty keys are discarded; at most [`MAX_QUERY_ARGS`] arguments are read. A leading `?` is
/// ignored.
pub fn parse_querystring(query: &str) -> Map<String, Value> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut map = Map::new();
    for arg in query
        .split('&')
        .filter(|arg| !arg.is_empty())
        .take(MAX_QUERY_ARGS)
    {
        let (key, value) = match arg.split_once('=') {
            Some((key, value)) => (key, Value::String(decode_component(value))),
            None => (arg, Value::Bool(true)),
        };
        let key = decode_component(key);
        if !key.is_empty() {
            append(&mut map, key, value);
        }
    }
    map
}

/// Decodes `%XX` escapes and `+` (as a space); malformed escapes are kept as they are.
fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `scheme://host:port` followed by the path and query as received (`request.url`).
pub fn request_url(scheme: &str, host: &str, port: u16, uri: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}{uri}")
    } else {
        format!("{scheme}://{host}:{port}{uri}")
    }
}

/// Milliseconds since the Unix epoch (`started_at`); 0 for times before it.
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Lets at most one warning through per [`WARN_INTERVAL_MS`].
#[derive(Debug)]
struct WarnThrottle {
    epoch: Instant,
    next_ms: AtomicU64,
}

impl WarnThrottle {
    fn new() -> Self {
        WarnThrottle {
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(WARN_INTERVAL_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[derive(Debug)]
struct Stats {
    /// Lines not written: queue full, or lost to a write error.
    dropped: AtomicU64,
    /// Bytes of the lines queued or being written.
    queued_bytes: AtomicUsize,
    /// Most bytes queued or being written.
    max_queued_bytes: usize,
    warn: WarnThrottle,
}

/// Handle to the access log writer; clones share one queue and one writer task.
#[derive(Debug, Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Command>,
    stats: Arc<Stats>,
}

impl AccessLog {
    /// Opens the target (a file is created if needed and appended to) and spawns the writer on
    /// the current tokio runtime; fails when the file cannot be opened or there is no runtime.
    /// From then on SIGUSR1 makes the writer reopen the file.
    pub fn start(target: &AccessLogTarget) -> io::Result<AccessLog> {
        AccessLog::start_with_limits(target, ACCESS_LOG_QUEUE_LINES, ACCESS_LOG_QUEUE_BYTES)
    }

    fn start_with_limits(
        target: &AccessLogTarget,
        lines: usize,
        bytes: usize,
    ) -> io::Result<AccessLog> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let output = match target {
            AccessLogTarget::Stdout => LineWriter::new(writer::Stdout),
            AccessLogTarget::File(path) => LineWriter::new(writer::File::open(path.clone())?),
        };
        let (queue, commands) = mpsc::channel(lines.max(1));
        let stats = Arc::new(Stats {
            dropped: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: bytes,
            warn: WarnThrottle::new(),
        });
        // Registered here, inside the runtime, before anything is served.
        let reopen = ReopenSignal::listen();
        runtime.spawn(writer::run(commands, output, stats.clone(), reopen));
        Ok(AccessLog { queue, stats })
    }

    /// Queues the entry as one JSON line. Never blocks or waits: when the queue is full the
    /// line is dropped and counted (see [`AccessLog::dropped`]).
    pub fn write(&self, entry: LogEntry) {
        let mut line = match serde_json::to_string(&entry) {
            Ok(line) => line,
            Err(error) => {
                tracing::warn!(%error, "access log entry could not be serialized");
                self.note_dropped();
                return;
            }
        };
        line.push('\n');
        let bytes = line.len();
        let queued = self.stats.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if queued + bytes > self.stats.max_queued_bytes
            || self.queue.try_send(Command::Line(line)).is_err()
        {
            self.stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.note_dropped();
        }
    }

    fn note_dropped(&self) {
        let total = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self.stats.warn.allow() {
            tracing::warn!(
                dropped_total = total,
                "access log queue full or closed (a slow or failing disk?): dropping lines"
            );
        }
    }

    /// Lines not written so far: the queue was full (in lines or bytes), the writer had
    /// stopped, or a write failed.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Bytes of the lines queued or being written now.
    pub fn queued_bytes(&self) -> usize {
        self.stats.queued_bytes.load(Ordering::Relaxed)
    }

    /// Makes the writer reopen its file once the lines queued before are written (what SIGUSR1
    /// does): after logrotate moved the file away, a fresh one is created at the configured
    /// path. A no-op for stdout.
    pub async fn reopen(&self) {
        // An error means the writer stopped; there is nothing to reopen.
        let _ = self.queue.send(Command::Reopen).await;
    }

    /// Waits until every line queued before this call is written and flushed.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Command::Flush(done)).await.is_ok() {
            // An error means the writer stopped; nothing more will be written either way.
            let _ = written.await;
        }
    }
}

mod writer;

#[cfg(test)]
mod tests;
