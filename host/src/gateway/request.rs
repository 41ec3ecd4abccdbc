//! One request through the gateway: checks of what the client sent (header count, `Host`, the
//! path, which is normalized, the declared body size, the certificate-phase policy of its host),
//! route, rewrite, access, balancer and upstream (retrying the next target on connect failures),
//! header_filter, body_filter while streaming, then log after the response is finished, on the
//! pump task, never delaying the client.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tollgate_phases::Phase;

use super::Shared;
use super::body::{BoxError, PUMP_DEPTH, PumpedBody, RequestBody, RequestBodyError};
use crate::config::ClientLimits;
use crate::exchange::{ConnectionFacts, Context, ExchangeState, RequestHead, ResponseHead};
use crate::log::{
    Latencies, LogEntry, NamedRef, PluginErrorLog, RequestLog, ResponseLog, ServiceLog, TlsLog,
    Try, headers_to_map, parse_querystring, request_url, unix_millis,
};
use crate::pipeline::{Decision, Exchange, Recording, plugin_failure_response};
use crate::proxy::forwarding::{ForwardedFacts, add_forwarded, strip_hop_by_hop, upstream_uri};
use crate::proxy::path;
use crate::proxy::router::strip_port;
use crate::proxy::upstream::UpstreamError;
use crate::runtime::{Plugin, PluginError};

/// What a connection contributes to each of its requests.
#[derive(Debug)]
pub struct ConnectionScope {
    /// Facts plugins can read.
    pub facts: Arc<ConnectionFacts>,
    /// The certificate phase's context, seeding every request's.
    pub context: Context,
    /// The port the client connected to.
    pub local_port: u16,
    /// The plugins that ran in the certificate phase for the connection's SNI (TLS only).
    pub certificate_plugins: Vec<Arc<Plugin>>,
    /// The listener's deadlines and caps.
    pub limits: Arc<ClientLimits>,
}

/// The client's request body, bounded by the listener's limits.
type ClientBody = RequestBody<Incoming>;

/// Where the response body comes from.
enum Source {
    /// The upstream's body, and the longest pause allowed between two of its frames.
    Upstream(Incoming, Duration),
    Whole(Bytes),
}

/// What the log entry needs that is known before the response.
struct Draft {
    started: Instant,
    request: RequestLog,
    client_ip: String,
    started_at: u64,
    route: Option<NamedRef>,
    service: Option<ServiceLog>,
    upstream_uri: String,
    tries: Vec<Try>,
    proxy_ms: i64,
}

fn kong_error(status: StatusCode, message: &str) -> (ResponseHead, Bytes) {
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

fn plugin_failure(err: &PluginError) -> (ResponseHead, Bytes) {
    tracing::error!(%err, "request failed in a plugin");
    plugin_failure_response()
}

fn upstream_failure(err: &UpstreamError) -> (ResponseHead, Bytes) {
    // The client's body failing on its way up is the client's fault, not the upstream's.
    match RequestBodyError::find(err) {
        Some(RequestBodyError::TooLarge { .. }) => {
            return kong_error(StatusCode::PAYLOAD_TOO_LARGE, "Request size limit exceeded");
        }
        Some(RequestBodyError::Stalled(_)) => {
            return kong_error(StatusCode::REQUEST_TIMEOUT, "Request timeout");
        }
        None => {}
    }
    tracing::warn!(%err, "upstream failed");
    let status = err.status();
    let message = if status == StatusCode::GATEWAY_TIMEOUT {
        "The upstream server is timing out"
    } else {
        "An invalid response was received from the upstream server"
    };
    kong_error(status, message)
}

/// Serves one request.
pub async fn handle(
    shared: Arc<Shared>,
    connection: Arc<ConnectionScope>,
    request: Request<Incoming>,
) -> Response<PumpedBody> {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let facts = &connection.facts;
    let tls = facts.tls.is_some();
    let scheme = if tls { "https" } else { "http" };
    let host = parts
        .uri
        .host()
        .map(str::to_owned)
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|value| value.to_str().ok())
                .map(|value| strip_port(value).to_owned())
        })
        .map(|host| host.to_ascii_lowercase());
    let method = parts.method.as_str().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let received_uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());

    let mut draft = Draft {
        started,
        request: RequestLog {
            method: method.clone(),
            uri: received_uri.clone(),
            url: request_url(
                scheme,
                host.as_deref().unwrap_or("localhost"),
                connection.local_port,
                &received_uri,
            ),
            querystring: query.as_deref().map(parse_querystring).unwrap_or_default(),
            headers: headers_to_map(&parts.headers),
            size: request_head_size(&parts.headers, &received_uri, &method)
                + body.size_hint().exact().unwrap_or(0),
            tls: None,
        },
        client_ip: facts.client_addr.ip().to_string(),
        started_at: unix_millis(SystemTime::now()),
        route: None,
        service: None,
        upstream_uri: String::new(),
        tries: Vec::new(),
        proxy_ms: -1,
    };

    let path = match check(&shared, &connection, &parts, &body, host.as_deref()) {
        Ok(path) => path,
        Err((status, message)) => {
            let (head, bytes) = kong_error(status, message);
            return respond(&shared, None, head, Source::Whole(bytes), draft, facts);
        }
    };
    // Upstream and plugins get the normalized path, with the query as the client sent it.
    let forwarded = match &query {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    match PathAndQuery::from_maybe_shared(forwarded) {
        Ok(forwarded) => parts.uri = Uri::from(forwarded),
        Err(_) => {
            let (head, bytes) = kong_error(StatusCode::BAD_REQUEST, "Bad request");
            return respond(&shared, None, head, Source::Whole(bytes), draft, facts);
        }
    }

    let Some(route) = shared.router.route(host.as_deref(), &path, &method) else {
        let (head, bytes) = kong_error(StatusCode::NOT_FOUND, "no Route matched with those values");
        return respond(&shared, None, head, Source::Whole(bytes), draft, facts);
    };
    draft.route = Some(NamedRef {
        id: None,
        name: route.name.clone(),
    });

    let trusted = shared
        .client_headers
        .sanitize(&mut parts.headers, facts.client_addr.ip());
    strip_hop_by_hop(&mut parts.headers);
    let head = RequestHead {
        method,
        path,
        query,
        headers: std::mem::take(&mut parts.headers),
    };
    let chain = shared.chains.for_route(&route.name);
    let state = ExchangeState::new(facts.clone(), head, connection.context.clone());
    let mut exchange = Exchange::new(chain, state, Recording::Off);
    let forwarding = Forwarding {
        service: &shared.services[route.service],
        scheme,
        host: host.as_deref(),
        local_port: connection.local_port,
        client: facts.client_addr,
        trusted,
    };
    let limits = &connection.limits;
    let body = RequestBody::new(body, limits.max_body_size, limits.body_timeout);
    match forward(&mut exchange, forwarding, parts, body, &mut draft).await {
        Outcome::Failed(head, bytes) => respond(
            &shared,
            Some(exchange),
            head,
            Source::Whole(bytes),
            draft,
            facts,
        ),
        Outcome::Answered(head, bytes) => {
            filtered(&shared, exchange, head, Source::Whole(bytes), draft, facts).await
        }
        Outcome::Proxied(head, body, idle) => {
            filtered(
                &shared,
                exchange,
                head,
                Source::Upstream(body, idle),
                draft,
                facts,
            )
            .await
        }
    }
}

/// What the gateway refuses before routing: too many header fields (431: hyper counts them for
/// HTTP/1.1, this for HTTP/2), a second `Host`, an HTTP/2 `Host` that contradicts `:authority`,
/// a path that cannot be normalized (all 400), a declared body over `max_body_size` (413), and
/// on TLS a host whose certificate-phase policy is not the one the connection's SNI got (421:
/// the client must open a connection for that name). Returns the normalized path.
fn check(
    shared: &Shared,
    connection: &ConnectionScope,
    parts: &http::request::Parts,
    body: &Incoming,
    host: Option<&str>,
) -> Result<String, (StatusCode, &'static str)> {
    const BAD_REQUEST: (StatusCode, &str) = (StatusCode::BAD_REQUEST, "Bad request");
    let limits = &connection.limits;
    if parts.headers.len() > limits.max_headers {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request header fields too large",
        ));
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(BAD_REQUEST);
    }
    if parts.version == Version::HTTP_2
        && let (Some(authority), Some(host_header)) = (parts.uri.authority(), host_header)
        && !host_header
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(BAD_REQUEST);
    }
    let path = match path::normalize(parts.uri.path()) {
        Ok(path) => path,
        Err(err) => {
            tracing::debug!(path = parts.uri.path(), %err, "refusing the request path");
            return Err(BAD_REQUEST);
        }
    };
    if limits.max_body_size > 0 && body.size_hint().lower() > limits.max_body_size {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "Request size limit exceeded"));
    }
    if connection.facts.tls.is_some() {
        let sni = connection.facts.sni.as_deref();
        let name = |name: Option<&str>| name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        if name(host) != name(sni) {
            let wanted = shared.chains.for_sni(&shared.router, host);
            let got = &connection.certificate_plugins;
            let same_policy =
                wanted.len() == got.len() && wanted.iter().zip(got).all(|(a, b)| Arc::ptr_eq(a, b));
            if !same_policy {
                return Err((StatusCode::MISDIRECTED_REQUEST, "Misdirected request"));
            }
        }
    }
    Ok(path)
}

/// How a request left the request phases.
enum Outcome {
    /// The gateway answers with an error; no filters run on it.
    Failed(ResponseHead, Bytes),
    /// A plugin answered in rewrite or access.
    Answered(ResponseHead, Bytes),
    /// The upstream answered; its body may pause this long between frames.
    Proxied(ResponseHead, Incoming, Duration),
}

/// Where and how a routed request is forwarded.
struct Forwarding<'a> {
    service: &'a super::Service,
    scheme: &'static str,
    host: Option<&'a str>,
    local_port: u16,
    client: std::net::SocketAddr,
    /// Whether the client's identity headers are believed.
    trusted: bool,
}

/// rewrite and access, then balancer and the upstream, retrying the next target while no
/// connection can be made (the request body is only handed over on a live connection).
async fn forward(
    exchange: &mut Exchange,
    to: Forwarding<'_>,
    parts: http::request::Parts,
    body: ClientBody,
    draft: &mut Draft,
) -> Outcome {
    match exchange.request_phases().await {
        Err(err) => return failed(plugin_failure(&err)),
        Ok(Decision::Respond(exit)) => {
            let head = ResponseHead {
                status: exit.status,
                headers: exit.headers,
            };
            return Outcome::Answered(head, exit.body.into());
        }
        Ok(Decision::Proxy) => {}
    }

    // Upstream request headers: what plugins left, plus the forwarding headers.
    let mut headers = exchange.state().request.headers.clone();
    let facts = ForwardedFacts {
        client_ip: to.client.ip(),
        proto: to.scheme,
        host: to.host,
        port: to.local_port,
    };
    add_forwarded(&mut headers, &facts, to.trusted);
    // Like Kong's default (preserve_host off): Host names the upstream target.
    headers.remove(HOST);

    let upstream = &to.service.upstream;
    let targets: Arc<[String]> = upstream.targets().into();
    let attempts = upstream.retries() + 1;
    let mut attempt = 0;
    let conn = loop {
        attempt += 1;
        let balancer_started = Instant::now();
        let proposed = targets[upstream.next_target()].clone();
        let target = match exchange.balancer(targets.clone(), proposed, attempt).await {
            Ok(target) => target,
            Err(err) => return failed(plugin_failure(&err)),
        };
        let (ip, port) = split_target(&target);
        draft.service = Some(ServiceLog {
            name: to.service.name.clone(),
            host: ip.clone(),
            port,
            protocol: to.service.protocol.to_string(),
        });
        draft.tries.push(Try {
            ip,
            port,
            balancer_latency: balancer_started.elapsed().as_millis() as u64,
        });
        match upstream.connect(&target).await {
            Ok(conn) => break conn,
            Err(err) if err.is_retryable() && attempt < attempts => {
                tracing::info!(%err, attempt, "retrying the next upstream target");
            }
            Err(err) => return failed(upstream_failure(&err)),
        }
    };

    let uri = match upstream_uri(&parts.uri, conn.target(), upstream.is_https()) {
        Ok(uri) => uri,
        Err(err) => {
            tracing::warn!(%err, "cannot build the upstream URI");
            return failed(kong_error(
                StatusCode::BAD_GATEWAY,
                "invalid upstream target",
            ));
        }
    };
    draft.upstream_uri = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;

    let proxy_started = Instant::now();
    let response = conn.send(request).await;
    draft.proxy_ms = proxy_started.elapsed().as_millis() as i64;
    match response {
        Ok(response) => {
            let (response, body) = response.into_parts();
            let mut head = ResponseHead {
                status: response.status.as_u16(),
                headers: response.headers,
            };
            strip_hop_by_hop(&mut head.headers);
            Outcome::Proxied(head, body, upstream.body_timeout())
        }
        Err(err) => failed(upstream_failure(&err)),
    }
}

fn failed((head, bytes): (ResponseHead, Bytes)) -> Outcome {
    Outcome::Failed(head, bytes)
}

/// Runs header_filter, then responds with body_filter on the way.
async fn filtered(
    shared: &Arc<Shared>,
    mut exchange: Exchange,
    head: ResponseHead,
    source: Source,
    draft: Draft,
    facts: &Arc<ConnectionFacts>,
) -> Response<PumpedBody> {
    match exchange.response_head(head).await {
        Ok(head) => respond(shared, Some(exchange), head, source, draft, facts),
        Err(err) => {
            let (head, bytes) = plugin_failure(&err);
            respond(
                shared,
                Some(exchange),
                head,
                Source::Whole(bytes),
                draft,
                facts,
            )
        }
    }
}

/// Builds the client's response and starts the pump that streams its body, then logs.
fn respond(
    shared: &Arc<Shared>,
    exchange: Option<Exchange>,
    head: ResponseHead,
    source: Source,
    mut draft: Draft,
    facts: &Arc<ConnectionFacts>,
) -> Response<PumpedBody> {
    let (frames, receiver) = mpsc::channel(PUMP_DEPTH);
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(PumpedBody::new(receiver));
    *response.status_mut() = status;
    *response.headers_mut() = head.headers.clone();

    if let Some(tls) = &facts.tls {
        draft.request.tls = Some(TlsLog {
            version: tls.version.clone(),
            cipher: tls.cipher.clone(),
            client_verify: tls.client_verify.to_string(),
        });
    }
    let shared = shared.clone();
    shared.tasks.clone().spawn(async move {
        let mut exchange = exchange;
        let sent = pump(exchange.as_mut(), source, frames).await;
        let mut plugin_errors = Vec::new();
        if let Some(mut exchange) = exchange {
            if exchange.state().response.is_none() {
                exchange.state_mut().response = Some(head.clone());
            }
            exchange.log().await;
            if let (Some(tls), Some(verify)) =
                (draft.request.tls.as_mut(), exchange.client_verify())
            {
                tls.client_verify = verify.to_string();
            }
            plugin_errors = exchange
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
        }
        let request_ms = draft.started.elapsed().as_millis() as i64;
        let entry = LogEntry {
            request: draft.request,
            upstream_uri: draft.upstream_uri,
            response: ResponseLog {
                status: head.status,
                headers: headers_to_map(&head.headers),
                size: response_head_size(&head.headers) + sent,
            },
            latencies: Latencies {
                proxy: draft.proxy_ms,
                kong: request_ms - draft.proxy_ms.max(0),
                request: request_ms,
            },
            client_ip: draft.client_ip,
            started_at: draft.started_at,
            route: draft.route,
            service: draft.service,
            tries: draft.tries,
            plugin_errors,
        };
        shared.access_log.write(entry);
    });
    response
}

/// Streams the body to the client, through body_filter when the chain has it. Returns the body
/// bytes sent. Stops early when the client goes away or a fail-closed filter fails.
async fn pump(
    mut exchange: Option<&mut Exchange>,
    source: Source,
    frames: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) -> u64 {
    let filtering = exchange
        .as_ref()
        .is_some_and(|exchange| exchange.has_phase(Phase::BodyFilter));
    let mut sent = 0u64;
    let mut forward = async |chunk: Bytes, end_of_stream: bool, sent: &mut u64| -> bool {
        let chunk = match exchange.as_deref_mut() {
            Some(exchange) if filtering => match exchange.body_filter(chunk, end_of_stream).await {
                Ok(chunk) => chunk,
                Err(err) => {
                    tracing::error!(%err, "body filter failed; aborting the response");
                    let _ = frames.send(Err(Box::new(err))).await;
                    return false;
                }
            },
            _ => chunk,
        };
        if chunk.is_empty() {
            return true;
        }
        *sent += chunk.len() as u64;
        frames.send(Ok(Frame::data(chunk))).await.is_ok()
    };
    match source {
        Source::Whole(bytes) => {
            forward(bytes, true, &mut sent).await;
        }
        Source::Upstream(mut body, idle) => {
            let mut ended = false;
            loop {
                let frame = match tokio::time::timeout(idle, body.frame()).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!(
                            ?idle,
                            "upstream body paused longer than body_timeout; aborting the response"
                        );
                        let _ = frames.send(Err("upstream body timed out".into())).await;
                        return sent;
                    }
                };
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(err) => {
                        tracing::warn!(%err, "upstream body failed");
                        let _ = frames.send(Err(Box::new(err))).await;
                        return sent;
                    }
                };
                match frame.into_data() {
                    Ok(data) => {
                        ended = body.is_end_stream();
                        if !forward(data, ended, &mut sent).await {
                            return sent;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            if !ended && !forward(Bytes::new(), true, &mut sent).await {
                                return sent;
                            }
                            ended = true;
                            let _ = frames.send(Ok(Frame::trailers(trailers))).await;
                        }
                    }
                }
            }
            if !ended {
                forward(Bytes::new(), true, &mut sent).await;
            }
        }
    }
    sent
}

fn split_target(target: &str) -> (String, u16) {
    match target.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port.parse().unwrap_or(0),
        ),
        None => (target.to_owned(), 0),
    }
}

fn request_head_size(headers: &HeaderMap, uri: &str, method: &str) -> u64 {
    // Request line plus headers as HTTP/1.1 would carry them.
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
