//! The access log: one JSON line per request, in the shape of Kong's log serializer
//! (`spec/client-tls.md` §5), written off the request path by a background task.
//!
//! The proxy fills a [`LogEntry`] after the response is sent and hands it to
//! [`AccessLog::write`], which never blocks: when the queue is full the line is dropped and
//! counted rather than delaying a client.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::AccessLogTarget;

/// Lines queued for the writer before new ones are dropped.
pub const ACCESS_LOG_QUEUE_LINES: usize = 8192;
/// What redacted request headers are logged as.
pub const REDACTED: &str = "REDACTED";
/// Request headers whose values are never logged.
pub const REDACTED_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];
/// Query arguments kept in `request.querystring`, as Kong's `get_query()` default.
pub const MAX_QUERY_ARGS: usize = 100;
/// Minimum time between two warnings about dropped lines or write failures.
const WARN_INTERVAL_MS: u64 = 1000;
/// Most lines gathered into one write.
const MAX_BATCH: usize = 256;

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

enum Command {
    Line(String),
    Flush(oneshot::Sender<()>),
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
    dropped: AtomicU64,
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
    pub fn start(target: &AccessLogTarget) -> io::Result<AccessLog> {
        AccessLog::start_with_queue(target, ACCESS_LOG_QUEUE_LINES)
    }

    fn start_with_queue(target: &AccessLogTarget, lines: usize) -> io::Result<AccessLog> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (queue, commands) = mpsc::channel(lines.max(1));
        match target {
            AccessLogTarget::Stdout => {
                runtime.spawn(run_writer(commands, Output::Stdout));
            }
            AccessLogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                runtime.spawn(run_writer(commands, Output::File(file)));
            }
        }
        Ok(AccessLog {
            queue,
            stats: Arc::new(Stats {
                dropped: AtomicU64::new(0),
                warn: WarnThrottle::new(),
            }),
        })
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
        if self.queue.try_send(Command::Line(line)).is_err() {
            self.note_dropped();
        }
    }

    fn note_dropped(&self) {
        let total = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self.stats.warn.allow() {
            tracing::warn!(
                dropped_total = total,
                "access log queue full or closed: dropping lines"
            );
        }
    }

    /// Lines dropped so far because the queue was full (or the writer had stopped).
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
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

/// Where the writer appends; written with blocking calls on tokio's blocking pool (tokio's
/// own stdout needs its `io-std` feature, which the host does not enable).
enum Output {
    Stdout,
    File(std::fs::File),
}

impl Output {
    fn write_batch(&mut self, batch: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(batch)?;
                out.flush()
            }
            // Unbuffered: one write per batch, nothing left to flush.
            Output::File(file) => file.write_all(batch),
        }
    }
}

/// Writes queued lines in order, one batch (up to [`MAX_BATCH`] lines, or what is queued) per
/// write, and answers flush requests once what preceded them is written.
async fn run_writer(mut commands: mpsc::Receiver<Command>, mut output: Output) {
    let throttle = WarnThrottle::new();
    let mut batch: Vec<u8> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(mut command) = commands.recv().await {
        let mut lines = 0;
        loop {
            match command {
                Command::Line(line) => {
                    batch.extend_from_slice(line.as_bytes());
                    lines += 1;
                }
                Command::Flush(done) => waiting.push(done),
            }
            if lines >= MAX_BATCH {
                break;
            }
            match commands.try_recv() {
                Ok(next) => command = next,
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let written = tokio::task::spawn_blocking(move || {
                let result = output.write_batch(&batch);
                batch.clear();
                (result, output, batch)
            })
            .await;
            let result;
            // A join error means the runtime is shutting down: nothing more can be written.
            let Ok(parts) = written else { return };
            (result, output, batch) = parts;
            if let Err(error) = result
                && throttle.allow()
            {
                tracing::warn!(%error, "access log write failed");
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests;
