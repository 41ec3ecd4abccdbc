//! One request through the gateway: what the client sent becomes a routed [`Exchange`], then
//! the [`lifecycle`] runs it (rewrite to log) on a task of its own against [`GatewayIo`]: hyper
//! and the upstream client. The response head goes back to hyper as soon as it is known; the
//! body streams from that task, which then runs log, never delaying the client.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};
use tollgate_phases::Target;

use super::Shared;
use super::body::{PUMP_DEPTH, PumpedBody, RequestBody};
use crate::config::ClientLimits;
use crate::exchange::{ConnectionFacts, Context, ExchangeState, RequestHead, ResponseHead};
use crate::lifecycle::{
    self, BodyPiece, BoxError, LogDraft, Origin, RequestIo, UpstreamResponse, kong_error,
    request_head_size,
};
use crate::log::{LogEntry, NamedRef, RequestLog, headers_to_map, parse_querystring, request_url};
use crate::metrics::RouteMeter;
use crate::pipeline::{Exchange, Recording};
use crate::proxy::forwarding::{ForwardedFacts, add_forwarded, strip_hop_by_hop, upstream_uri};
use crate::proxy::path;
use crate::proxy::router::strip_port;
use crate::proxy::upstream::{self, UpstreamConnection, UpstreamError};
use crate::runtime::LoadedPlugin;

/// What a connection contributes to each of its requests.
#[derive(Debug)]
pub struct EstablishedConnection {
    /// Facts plugins can read.
    pub facts: Arc<ConnectionFacts>,
    /// The certificate phase's context, seeding every request's.
    pub context: Context,
    /// The port the client connected to.
    pub local_port: u16,
    /// The plugins that ran in the certificate phase for the connection's SNI (TLS only).
    pub certificate_plugins: Vec<Arc<LoadedPlugin>>,
    /// The listener's deadlines and caps.
    pub limits: Arc<ClientLimits>,
}

/// The client's request body, bounded by the listener's limits.
type ClientBody = RequestBody<Incoming>;

/// Serves one request: routes it, then runs its lifecycle on a task of its own and answers
/// with the response head as soon as that task has it.
pub async fn handle(
    shared: Arc<Shared>,
    connection: Arc<EstablishedConnection>,
    request: Request<Incoming>,
) -> Response<PumpedBody> {
    let started = std::time::Instant::now();
    let (mut parts, body) = request.into_parts();
    let http2 = parts.version == Version::HTTP_2;
    let facts = connection.facts.clone();
    let scheme = if facts.tls.is_some() { "https" } else { "http" };
    let host = parts
        .uri
        .host()
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|value| value.to_str().ok())
                .map(strip_port)
        })
        .map(str::to_ascii_lowercase);
    let method = parts.method.as_str().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let received_uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());

    let mut draft = LogDraft::new(
        RequestLog {
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
        facts.client_addr.ip().to_string(),
    );

    let checked = check(&shared, &connection, &parts, &body, host.as_deref()).and_then(|path| {
        // Upstream and plugins get the normalized path, with the query as the client sent it
        // (an origin-form URI that is already normal stays as it is).
        if parts.uri.scheme().is_none() && parts.uri.path() == path {
            return Ok(path);
        }
        let forwarded = match &query {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        let forwarded = PathAndQuery::from_maybe_shared(forwarded)
            .map_err(|_| (StatusCode::BAD_REQUEST, "Bad request"))?;
        parts.uri = Uri::from(forwarded);
        Ok(path)
    });
    let (path, refused) = match checked {
        Ok(path) => (path, None),
        Err(refusal) => (String::new(), Some(refusal)),
    };
    let trusted = shared
        .client_headers
        .sanitize(&mut parts.headers, facts.client_addr.ip());
    let routed = refused
        .is_none()
        .then(|| shared.router.route(host.as_deref(), &path, &method))
        .flatten()
        .map(|route| {
            draft.route = Some(NamedRef {
                id: None,
                name: route.name.clone(),
            });
            let service = &shared.services[route.service];
            draft.service = Some((service.name.clone(), service.protocol.to_string()));
            strip_hop_by_hop(&mut parts.headers);
            let head = RequestHead {
                method,
                path,
                query,
                headers: std::mem::take(&mut parts.headers),
            };
            let state = ExchangeState::new(facts.clone(), head, connection.context.clone());
            let chain = shared.chains.for_route(&route.name);
            (route.service, Exchange::new(chain, state, Recording::Off))
        });
    let forwarding = Forwarding {
        scheme,
        host,
        local_port: connection.local_port,
        client: facts.client_addr,
        trusted,
    };
    let limits = &connection.limits;
    let body = RequestBody::new(body, limits.max_body_size, limits.body_timeout);

    let (head_tx, head_rx) = oneshot::channel();
    let task_shared = shared.clone();
    // Boxed: the lifecycle's future is large, and a task moves its future a few times on the
    // way into the scheduler and once more when it finishes; a box moves as a pointer.
    shared.tasks.spawn(Box::pin(async move {
        let shared = task_shared;
        let route = draft.route.as_ref().map(|route| route.name.as_str());
        let meter = shared.meters.as_ref().map(|meters| meters.get(route));
        let mut io = GatewayIo {
            shared: &shared,
            meter,
            started,
            http2,
            service: routed
                .as_ref()
                .map(|(service, _)| &shared.services[*service]),
            parts,
            body: Some(body),
            forwarding,
            connection: None,
            head: Some(head_tx),
            frames: None,
            head_written: None,
        };
        match (refused, routed) {
            (Some((status, message)), _) => {
                lifecycle::answer(&mut io, draft, status, message).await;
            }
            (None, Some((_, exchange))) => {
                lifecycle::run_request(exchange, &mut io, draft).await;
            }
            (None, None) => {
                let (status, message) = lifecycle::NO_ROUTE;
                lifecycle::answer(&mut io, draft, status, message).await;
            }
        }
    }));
    match head_rx.await {
        Ok(response) => response,
        // The lifecycle task ended without a response head: it panicked.
        Err(_) => {
            let (head, body) = kong_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "An unexpected error occurred",
            );
            let (frames, receiver) = mpsc::channel(1);
            let _ = frames.try_send(Ok(Frame::data(body)));
            response_with(&head, PumpedBody::new(receiver))
        }
    }
}

/// What the forwarding headers of a routed request say.
#[derive(Debug)]
struct Forwarding {
    scheme: &'static str,
    host: Option<String>,
    local_port: u16,
    client: std::net::SocketAddr,
    /// Whether the client's identity headers are believed.
    trusted: bool,
}

/// The gateway's side of the lifecycle: the client (the request body, and the response through
/// hyper), the route's upstream, and the access log.
struct GatewayIo<'a> {
    shared: &'a Shared,
    /// The route's request metrics, when on.
    meter: Option<&'a RouteMeter>,
    /// When the request head arrived.
    started: std::time::Instant,
    http2: bool,
    service: Option<&'a super::Service>,
    parts: http::request::Parts,
    body: Option<ClientBody>,
    forwarding: Forwarding,
    connection: Option<UpstreamConnection<'a>>,
    /// Where the response head goes, until it is sent.
    head: Option<oneshot::Sender<Response<PumpedBody>>>,
    /// Where the response body goes, once the head is sent.
    frames: Option<mpsc::Sender<Result<Frame<Bytes>, BoxError>>>,
    /// Fires when hyper has written the head and asks for the body.
    head_written: Option<oneshot::Receiver<()>>,
}

fn response_with(head: &ResponseHead, body: PumpedBody) -> Response<PumpedBody> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(head.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = head.headers.clone();
    response
}

fn internal(target: &str, reason: &str) -> UpstreamError {
    UpstreamError::Other {
        target: target.to_owned(),
        source: reason.into(),
    }
}

impl RequestIo for GatewayIo<'_> {
    type UpstreamBody = upstream::UpstreamBody;

    fn targets(&self) -> Arc<[Target]> {
        self.service.map_or_else(
            || Arc::from([]),
            |service| service.upstream.targets().into(),
        )
    }

    fn propose_target(&mut self) -> Option<Target> {
        let upstream = &self.service?.upstream;
        upstream.targets().get(upstream.next_target()).cloned()
    }

    fn attempts(&self) -> u32 {
        self.service
            .map_or(1, |service| service.upstream.retries() + 1)
    }

    async fn connect(&mut self, target: &Target) -> Result<(), UpstreamError> {
        let target = target.to_string();
        let service = self
            .service
            .ok_or_else(|| internal(&target, "no upstream service"))?;
        self.connection = Some(service.upstream.connect(&target).await?);
        Ok(())
    }

    async fn send(
        &mut self,
        head: &RequestHead,
    ) -> Result<UpstreamResponse<upstream::UpstreamBody>, UpstreamError> {
        let (Some(connection), Some(service)) = (self.connection.take(), self.service) else {
            return Err(internal("", "no upstream connection"));
        };
        let target = connection.target().to_owned();
        let to = &self.forwarding;
        // Upstream request headers: what plugins left, plus the forwarding headers.
        let mut headers = head.headers.clone();
        let facts = ForwardedFacts {
            client_ip: to.client.ip(),
            proto: to.scheme,
            host: to.host.as_deref(),
            port: to.local_port,
        };
        add_forwarded(&mut headers, &facts, to.trusted);
        // Like Kong's default (preserve_host off): Host names the upstream target.
        headers.remove(HOST);
        let uri = upstream_uri(&self.parts.uri, &target, service.upstream.is_https())
            .map_err(|err| internal(&target, &format!("cannot build the upstream URI: {err}")))?;
        let logged_uri = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        let body = self
            .body
            .take()
            .ok_or_else(|| internal(&target, "the request body was already sent"))?;
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let (response, body) = connection.send(request).await?.into_parts();
        let mut head = ResponseHead {
            status: response.status.as_u16(),
            headers: response.headers,
        };
        strip_hop_by_hop(&mut head.headers);
        Ok(UpstreamResponse {
            head,
            body,
            uri: logged_uri,
        })
    }

    async fn next_piece(
        &mut self,
        body: &mut upstream::UpstreamBody,
    ) -> Option<Result<BodyPiece, BoxError>> {
        let idle = self
            .service
            .map_or(crate::config::DEFAULT_BODY_TIMEOUT, |service| {
                service.upstream.body_timeout()
            });
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Ok(frame) => frame?,
                Err(_) => {
                    let reason = format!("the upstream body paused longer than {idle:?}");
                    return Some(Err(reason.into()));
                }
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => return Some(Err(Box::new(err))),
            };
            match frame.into_data() {
                Ok(bytes) => {
                    let last = body.is_end_stream();
                    return Some(Ok(BodyPiece::Data { bytes, last }));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Some(Ok(BodyPiece::Trailers(trailers)));
                    }
                    // A frame kind hyper may add later: not ours to forward.
                }
            }
        }
    }

    fn respond(&mut self, head: &ResponseHead, _origin: &Origin) {
        let Some(sender) = self.head.take() else {
            return;
        };
        let (frames, receiver) = mpsc::channel(PUMP_DEPTH);
        let (written, head_written) = oneshot::channel();
        let body = PumpedBody::signalling(receiver, written);
        if sender.send(response_with(head, body)).is_ok() {
            self.frames = Some(frames);
            self.head_written = Some(head_written);
        }
    }

    async fn send_data(&mut self, bytes: Bytes) -> bool {
        match &self.frames {
            Some(frames) => frames.send(Ok(Frame::data(bytes))).await.is_ok(),
            None => false,
        }
    }

    async fn send_trailers(&mut self, trailers: HeaderMap) {
        if let Some(frames) = &self.frames {
            let _ = frames.send(Ok(Frame::trailers(trailers))).await;
        }
    }

    async fn abort(&mut self, reason: BoxError) {
        tracing::warn!(%reason, "aborting the response");
        // Let the client have the head first (an error returns at once if the client is gone):
        // hyper drops an HTTP/1.1 connection at a body error without writing out what it holds.
        // Its first poll of the body finds nothing (this waits), so it flushes the head then.
        if let Some(head_written) = self.head_written.take() {
            let _ = head_written.await;
        }
        if let Some(frames) = self.frames.take() {
            let _ = frames.send(Err(reason)).await;
        }
    }

    fn end_response(&mut self) {
        // Closing the channel lets hyper finish the response.
        self.frames = None;
    }

    fn log(&mut self, entry: LogEntry) {
        if let Some(meter) = self.meter {
            let upstream_ms = (!entry.tries.is_empty())
                .then(|| u64::try_from(entry.latencies.proxy).ok())
                .flatten();
            meter.record(
                entry.response.status,
                self.http2,
                self.started.elapsed(),
                upstream_ms,
            );
        }
        self.shared.access_log.write(entry);
    }
}

/// What the gateway refuses before routing: too many header fields (431: hyper counts them for
/// HTTP/1.1, this for HTTP/2), a second `Host`, an HTTP/2 `Host` that contradicts `:authority`,
/// a path that cannot be normalized (all 400), a declared body over `max_body_size` (413), and
/// on TLS a host whose certificate-phase policy is not the one the connection's SNI got (421:
/// the client must open a connection for that name). Returns the normalized path.
fn check(
    shared: &Shared,
    connection: &EstablishedConnection,
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
