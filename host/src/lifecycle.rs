//! The request lifecycle, written once: admission, rewrite, access, balancer with its retries,
//! the upstream, header_filter, body_filter over each chunk, then log and the access log entry.
//!
//! [`run_request`] drives it against a [`RequestIo`]: the gateway implements that with hyper and
//! the upstream client, the offline harness with scenario data. What `tollgate test` reports is
//! therefore what the gateway does, by construction; only where bytes come from and go to
//! differs.
//!
//! ```text
//!  admit ─ rewrite ─ access ─┬─ exit ────────────────────────────┐
//!                            └─ balancer ─ connect ─┬─ send ─────┤  header_filter
//!                                 ▲     (retryable) │            ├─ respond ─ body_filter* ─ log
//!                                 └─────────────────┘            │
//!  (any fail-closed failure, upstream failure) ─ error response ─┘  (no filters)
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use tollgate_phases::{Phase, Target};

use crate::exchange::{RequestHead, ResponseHead};
use crate::log::{
    Latencies, LogEntry, NamedRef, PluginErrorLog, RequestLog, ResponseLog, ServiceLog, TlsLog,
    Try, headers_to_map, unix_millis,
};
use crate::pipeline::{Decision, Exchange, TraceEntry, plugin_failure_response};
use crate::proxy::upstream::UpstreamError;
use crate::runtime::PluginError;

/// A boxed error, as hyper accepts in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One piece of an upstream response body.
#[derive(Debug)]
pub enum BodyPiece {
    /// Bytes; `last` when nothing but trailers can follow.
    Data {
        /// The bytes.
        bytes: Bytes,
        /// Whether this is the last data of the body.
        last: bool,
    },
    /// Trailers, which end the body.
    Trailers(HeaderMap),
}

/// The upstream's answer to the request.
#[derive(Debug)]
pub struct UpstreamResponse<B> {
    /// Status and headers (hop-by-hop headers already removed).
    pub head: ResponseHead,
    /// The body, read with [`RequestIo::next_piece`].
    pub body: B,
    /// The path and query the upstream was sent, for the log.
    pub uri: String,
}

/// Where the response the client gets comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The upstream answered.
    Upstream,
    /// A plugin answered in rewrite or access (`response.exit`).
    PluginExit,
    /// A fail-closed plugin failed in this phase (or no instance could be had).
    PluginFailure(Option<Phase>),
    /// The gateway answered itself: no route matched, or the upstream could not be reached or
    /// did not answer in time.
    Gateway,
}

/// Where a request's bytes come from and go to. Everything else is [`run_request`]'s.
pub trait RequestIo: Send {
    /// The upstream response body.
    type UpstreamBody: Send;

    /// The upstream's targets.
    fn targets(&self) -> Arc<[Target]>;
    /// The target the upstream's own balancing proposes for the next attempt; `None` when the
    /// upstream has none.
    fn propose_target(&mut self) -> Option<Target>;
    /// How many connection attempts a request may make (retries + 1).
    fn attempts(&self) -> u32;

    /// Opens a connection to `target`. A retryable error makes the next attempt.
    fn connect(
        &mut self,
        target: &Target,
    ) -> impl Future<Output = Result<(), UpstreamError>> + Send;

    /// Sends `request` (as plugins left it) on the connection just made, with the request body.
    fn send(
        &mut self,
        request: &RequestHead,
    ) -> impl Future<Output = Result<UpstreamResponse<Self::UpstreamBody>, UpstreamError>> + Send;

    /// The next piece of the upstream body; `None` at its end.
    fn next_piece(
        &mut self,
        body: &mut Self::UpstreamBody,
    ) -> impl Future<Output = Option<Result<BodyPiece, BoxError>>> + Send;

    /// Sends the response head to the client.
    fn respond(&mut self, head: &ResponseHead, origin: &Origin);

    /// Sends body bytes to the client; `false` when the client went away.
    fn send_data(&mut self, bytes: Bytes) -> impl Future<Output = bool> + Send;

    /// Sends trailers to the client.
    fn send_trailers(&mut self, trailers: HeaderMap) -> impl Future<Output = ()> + Send;

    /// Ends the response as broken: the client sees it cut off, never as complete.
    fn abort(&mut self, reason: BoxError) -> impl Future<Output = ()> + Send;

    /// The response is complete (or aborted): nothing more will be sent. Called before the log
    /// phase, so log plugins never delay the client.
    fn end_response(&mut self);

    /// Hands over the finished request's access log entry.
    fn log(&mut self, entry: LogEntry);
}

/// Why a client's request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The body grew past the listener's `max_body_size` (the client gets 413).
    #[error("the request body is larger than max_body_size ({limit} bytes)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client sent nothing of the body for the listener's `body_timeout` (408).
    #[error("the client sent no request body data for {0:?} (body_timeout)")]
    Stalled(std::time::Duration),
}

impl RequestBodyError {
    /// The `RequestBodyError` somewhere in `err`'s chain of sources, if any: how an upstream
    /// exchange that failed because of the client's body says so.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RequestBodyError> {
        let mut cause = Some(err);
        while let Some(err) = cause {
            if let Some(found) = err.downcast_ref::<RequestBodyError>() {
                return Some(found);
            }
            cause = err.source();
        }
        None
    }
}

/// What the access log entry needs that is known before the lifecycle starts.
#[derive(Debug)]
pub struct LogDraft {
    /// When the request arrived.
    pub started: Instant,
    /// `started_at`, in Unix milliseconds.
    pub started_at: u64,
    /// The request as received (its `tls` part is filled in by the lifecycle).
    pub request: RequestLog,
    /// The client's address.
    pub client_ip: String,
    /// The matched route.
    pub route: Option<NamedRef>,
    /// The route's service: name and protocol (host and port come from the target).
    pub service: Option<(String, String)>,
}

impl LogDraft {
    /// A draft for a request that arrived now.
    pub fn new(request: RequestLog, client_ip: String) -> Self {
        LogDraft {
            started: Instant::now(),
            started_at: unix_millis(SystemTime::now()),
            request,
            client_ip,
            route: None,
            service: None,
        }
    }
}

/// What a finished request leaves for the harness: the plugins' trace and failures.
#[derive(Debug)]
pub struct Finished {
    /// Every plugin call, when recorded.
    pub trace: Vec<TraceEntry>,
    /// Every plugin failure, skipped fail-open ones included.
    pub failures: Vec<PluginError>,
}

/// How a request left the request phases.
enum Outcome<B> {
    /// The gateway answers with an error; no filters run on it.
    Failed(ResponseHead, Bytes, Origin),
    /// A plugin answered in rewrite or access.
    Answered(ResponseHead, Bytes),
    /// The upstream answered.
    Proxied(ResponseHead, B),
}

/// Where the response body comes from.
enum Source<B> {
    Upstream(B),
    Whole(Bytes),
}

/// What the upstream side contributed to the log.
#[derive(Default)]
struct UpstreamLog {
    uri: String,
    tries: Vec<Try>,
    target: Option<Target>,
    proxy_ms: i64,
}

/// Runs one routed request through its whole lifecycle.
pub async fn run_request<Io: RequestIo>(
    mut exchange: Exchange,
    io: &mut Io,
    draft: LogDraft,
) -> Finished {
    let mut upstream = UpstreamLog {
        proxy_ms: -1,
        ..UpstreamLog::default()
    };
    let outcome = up_to_response(&mut exchange, io, &mut upstream).await;
    let (head, source, origin, filtering) = match outcome {
        Outcome::Failed(head, bytes, origin) => (head, Source::Whole(bytes), origin, false),
        Outcome::Answered(head, bytes) => {
            filtered_head(
                &mut exchange,
                head,
                Source::Whole(bytes),
                Origin::PluginExit,
            )
            .await
        }
        Outcome::Proxied(head, body) => {
            filtered_head(
                &mut exchange,
                head,
                Source::Upstream(body),
                Origin::Upstream,
            )
            .await
        }
    };
    if exchange.state().response.is_none() && exchange.has_phase(Phase::Log) {
        // Log-phase plugins see the response the client got, also when no filter ran.
        exchange.state_mut().response = Some(head.clone());
    }
    io.respond(&head, &origin);
    let filter = filtering && exchange.has_phase(Phase::BodyFilter);
    let sent = pump(filter.then_some(&mut exchange), io, source).await;
    io.end_response();
    exchange.log().await;
    let entry = log_entry(&exchange, draft, upstream, &head, sent);
    io.log(entry);
    let (_, trace, failures) = exchange.finish();
    Finished { trace, failures }
}

/// The answer when no route matches.
pub const NO_ROUTE: (StatusCode, &str) =
    (StatusCode::NOT_FOUND, "no Route matched with those values");

/// The gateway answers a request itself, before any plugin: no route matched, or what the
/// client sent was refused (400, 413, 421, 431). Kong's JSON message; logged like any request.
pub async fn answer<Io: RequestIo>(
    io: &mut Io,
    draft: LogDraft,
    status: StatusCode,
    message: &str,
) {
    let (head, body) = kong_error(status, message);
    io.respond(&head, &Origin::Gateway);
    let sent = pump(None, io, Source::Whole(body)).await;
    io.end_response();
    let entry = base_entry(draft, UpstreamLog::default(), &head, sent);
    io.log(entry);
}

/// rewrite and access, then balancer and the upstream, retrying the next target while no
/// connection can be made (the request body is only handed over on a live connection).
async fn up_to_response<Io: RequestIo>(
    exchange: &mut Exchange,
    io: &mut Io,
    upstream: &mut UpstreamLog,
) -> Outcome<Io::UpstreamBody> {
    match exchange.request_phases().await {
        Err(err) => return plugin_failed(&err),
        Ok(Decision::Respond(exit)) => {
            let head = ResponseHead {
                status: exit.status,
                headers: exit.headers,
            };
            return Outcome::Answered(head, exit.body.into());
        }
        Ok(Decision::Proxy) => {}
    }

    let targets = io.targets();
    let attempts = io.attempts();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let balancer_started = Instant::now();
        let Some(proposed) = io.propose_target() else {
            let (head, bytes) = kong_error(StatusCode::SERVICE_UNAVAILABLE, "No targets available");
            return Outcome::Failed(head, bytes, Origin::Gateway);
        };
        let target = match exchange.balancer(targets.clone(), proposed, attempt).await {
            Ok(target) => target,
            Err(err) => return plugin_failed(&err),
        };
        upstream.tries.push(Try {
            ip: target.host().to_owned(),
            port: target.port(),
            balancer_latency: balancer_started.elapsed().as_millis() as u64,
        });
        upstream.target = Some(target.clone());
        match io.connect(&target).await {
            Ok(()) => break,
            Err(err) if err.is_retryable() && attempt < attempts => {
                tracing::info!(%err, attempt, "retrying the next upstream target");
            }
            Err(err) => return upstream_failed(&err),
        }
    }

    let proxy_started = Instant::now();
    let sent = io.send(&exchange.state().request).await;
    upstream.proxy_ms = proxy_started.elapsed().as_millis() as i64;
    match sent {
        Ok(response) => {
            upstream.uri = response.uri;
            Outcome::Proxied(response.head, response.body)
        }
        Err(err) => upstream_failed(&err),
    }
}

/// header_filter over a response head; a failure replaces the response with the plugin
/// failure answer, on which no filter runs.
async fn filtered_head<B>(
    exchange: &mut Exchange,
    head: ResponseHead,
    source: Source<B>,
    origin: Origin,
) -> (ResponseHead, Source<B>, Origin, bool) {
    match exchange.response_head(head).await {
        Ok(head) => (head, source, origin, true),
        Err(err) => {
            let (head, bytes) = plugin_failure_response(&err);
            (
                head,
                Source::Whole(bytes),
                Origin::PluginFailure(err.phase()),
                false,
            )
        }
    }
}

/// Streams the body to the client, through body_filter when `exchange` is given. Returns the
/// body bytes sent. Stops early when the client goes away or a fail-closed filter fails.
async fn pump<Io: RequestIo>(
    mut exchange: Option<&mut Exchange>,
    io: &mut Io,
    source: Source<Io::UpstreamBody>,
) -> u64 {
    let mut sent = 0u64;
    match source {
        Source::Whole(bytes) => {
            forward(exchange, io, bytes, true, &mut sent).await;
        }
        Source::Upstream(mut body) => {
            let mut ended = false;
            while let Some(piece) = io.next_piece(&mut body).await {
                match piece {
                    Err(err) => {
                        tracing::warn!(%err, "upstream body failed");
                        io.abort(err).await;
                        return sent;
                    }
                    Ok(BodyPiece::Data { bytes, last }) => {
                        ended = last;
                        if !forward(exchange.as_deref_mut(), io, bytes, last, &mut sent).await {
                            return sent;
                        }
                    }
                    Ok(BodyPiece::Trailers(trailers)) => {
                        if !ended
                            && !forward(exchange.as_deref_mut(), io, Bytes::new(), true, &mut sent)
                                .await
                        {
                            return sent;
                        }
                        ended = true;
                        io.send_trailers(trailers).await;
                    }
                }
            }
            if !ended {
                forward(exchange, io, Bytes::new(), true, &mut sent).await;
            }
        }
    }
    sent
}

/// One chunk through body_filter (when filtering) and out. `false` ends the body.
async fn forward<Io: RequestIo>(
    exchange: Option<&mut Exchange>,
    io: &mut Io,
    chunk: Bytes,
    end_of_stream: bool,
    sent: &mut u64,
) -> bool {
    let chunk = match exchange {
        Some(exchange) => match exchange.body_filter(chunk, end_of_stream).await {
            Ok(chunk) => chunk,
            Err(err) => {
                io.abort(Box::new(err)).await;
                return false;
            }
        },
        None => chunk,
    };
    if chunk.is_empty() {
        return true;
    }
    *sent += chunk.len() as u64;
    io.send_data(chunk).await
}

fn plugin_failed<B>(err: &PluginError) -> Outcome<B> {
    let (head, bytes) = plugin_failure_response(err);
    Outcome::Failed(head, bytes, Origin::PluginFailure(err.phase()))
}

fn upstream_failed<B>(err: &UpstreamError) -> Outcome<B> {
    // The client's body failing on its way up is the client's fault, not the upstream's.
    let refusal = match RequestBodyError::find(err) {
        Some(RequestBodyError::TooLarge { .. }) => {
            Some((StatusCode::PAYLOAD_TOO_LARGE, "Request size limit exceeded"))
        }
        Some(RequestBodyError::Stalled(_)) => {
            Some((StatusCode::REQUEST_TIMEOUT, "Request timeout"))
        }
        None => None,
    };
    if let Some((status, message)) = refusal {
        let (head, bytes) = kong_error(status, message);
        return Outcome::Failed(head, bytes, Origin::Gateway);
    }
    tracing::warn!(%err, "upstream failed");
    let status = err.status();
    let message = if status == StatusCode::GATEWAY_TIMEOUT {
        "The upstream server is timing out"
    } else {
        "An invalid response was received from the upstream server"
    };
    let (head, bytes) = kong_error(status, message);
    Outcome::Failed(head, bytes, Origin::Gateway)
}

/// A gateway error in Kong's shape: `{"message": ...}` as JSON.
pub fn kong_error(status: StatusCode, message: &str) -> (ResponseHead, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let body = Bytes::from(serde_json::json!({ "message": message }).to_string());
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    (
        ResponseHead {
            status: status.as_u16(),
            headers,
        },
        body,
    )
}

fn log_entry(
    exchange: &Exchange,
    mut draft: LogDraft,
    upstream: UpstreamLog,
    head: &ResponseHead,
    sent: u64,
) -> LogEntry {
    if let (Some(tls), Some(verify)) = (
        exchange.state().connection.tls.as_ref(),
        exchange.client_verify(),
    ) {
        draft.request.tls = Some(TlsLog {
            version: tls.version.to_owned(),
            cipher: tls.cipher.to_owned(),
            client_verify: verify.to_string(),
        });
    }
    let mut entry = base_entry(draft, upstream, head, sent);
    entry.plugin_errors = exchange
        .failures()
        .iter()
        .map(|err| PluginErrorLog {
            plugin: err.plugin.clone(),
            phase: err
                .phase()
                .map_or_else(|| err.stage.to_string(), |phase| phase.name().to_owned()),
            message: err.fault.to_string(),
        })
        .collect();
    entry
}

fn base_entry(draft: LogDraft, upstream: UpstreamLog, head: &ResponseHead, sent: u64) -> LogEntry {
    let request_ms = draft.started.elapsed().as_millis() as i64;
    let service = match (draft.service, upstream.target) {
        (Some((name, protocol)), Some(target)) => Some(ServiceLog {
            name,
            host: target.host().to_owned(),
            port: target.port(),
            protocol,
        }),
        _ => None,
    };
    LogEntry {
        request: draft.request,
        upstream_uri: upstream.uri,
        response: ResponseLog {
            status: head.status,
            headers: headers_to_map(&head.headers),
            size: response_head_size(&head.headers) + sent,
        },
        latencies: Latencies {
            proxy: upstream.proxy_ms,
            kong: request_ms - upstream.proxy_ms.max(0),
            request: request_ms,
        },
        client_ip: draft.client_ip,
        started_at: draft.started_at,
        route: draft.route,
        service,
        tries: upstream.tries,
        plugin_errors: Vec::new(),
    }
}

/// Request line plus headers as HTTP/1.1 would carry them.
pub fn request_head_size(headers: &HeaderMap, uri: &str, method: &str) -> u64 {
    let line = method.len() + uri.len() + 12;
    (line + header_bytes(headers)) as u64
}

fn response_head_size(headers: &HeaderMap) -> u64 {
    (17 + header_bytes(headers)) as u64
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + 2
}
