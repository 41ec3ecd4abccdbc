//! The defaults and bounds of every configurable value.

use super::*;

/// How long in-flight requests may finish after a shutdown signal or a listener's removal, when
/// `drain_timeout` is not set.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
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
/// The most connection threads `workers` may ask for: well past any machine a gateway runs on,
/// low enough that a typo does not start a million threads.
pub const MAX_WORKERS: u64 = 1024;
