//! One request through the gateway: what the client sent becomes a routed [`Exchange`], then
//! the [`lifecycle`] runs it (rewrite to log) against [`GatewayIo`]: hyper and the upstream
//! client. It runs on the connection's task, driven by hyper's polls (see [`super::responder`]):
//! the response head goes back to hyper as soon as it is known, the body streams as hyper asks
//! for it, and the log phase's plugins run once the client has the whole response.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tollgate_phases::{Phase, Target};

use super::Shared;
use super::body::RequestBody;
use super::responder::{Lifecycle, Outlet, ResponseBody};
use crate::config::ClientLimits;
use crate::exchange::{ConnectionFacts, Context, ExchangeState, RequestHead, ResponseHead};
use crate::lifecycle::{
    self, BodyPiece, BoxError, LogDraft, Origin, RequestIo, UpstreamResponse, request_head_size,
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

/// Serves one request: routes it, then runs its lifecycle and answers with the response head
/// as soon as the lifecycle has it; the body runs the rest.
pub async fn handle(
    shared: Arc<Shared>,
    connection: Arc<EstablishedConnection>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
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

    let outlet = Outlet::default();
    let log_plugins = routed
        .as_ref()
        .is_some_and(|(_, exchange)| exchange.has_phase(Phase::Log));
    let task_shared = shared.clone();
    let task_outlet = outlet.clone();
    let lifecycle = async move {
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
            outlet: task_outlet,
            log_plugins,
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
    };
    Lifecycle::new(lifecycle, outlet, shared.tasks.clone())
        .response()
        .await
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
    /// Where the response goes: hyper takes it from there.
    outlet: Outlet,
    /// Whether the log phase runs plugins: they wait until the client has the response.
    log_plugins: bool,
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
        let mut response = Response::new(());
        *response.status_mut() =
            StatusCode::from_u16(head.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *response.headers_mut() = head.headers.clone();
        self.outlet.respond(response);
    }

    async fn send_data(&mut self, bytes: Bytes) -> bool {
        self.outlet.send(Ok(Frame::data(bytes))).await
    }

    async fn send_trailers(&mut self, trailers: HeaderMap) {
        self.outlet.send(Ok(Frame::trailers(trailers))).await;
    }

    async fn abort(&mut self, reason: BoxError) {
        tracing::warn!(%reason, "aborting the response");
        // The body hands the error to hyper only once hyper asks for the body, so after the
        // response head: the client sees the head, then the body cut off.
        self.outlet.send(Err(reason)).await;
    }

    async fn end_response(&mut self) {
        self.outlet.end();
        if self.log_plugins {
            self.outlet.delivered().await;
        }
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
