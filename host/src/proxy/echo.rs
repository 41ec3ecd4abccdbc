//! The built-in demo upstream: answers every request with what it received, so a demo user
//! sees with curl exactly what the gateway forwarded (headers plugins added, the path after
//! routing, the body size).
//!
//! - any request: `200`, `application/json`:
//!   `{"method", "path", "query", "version", "headers": {name: value}, "body_size"}`
//!   (a header sent several times is shown once, its values joined with `, `);
//! - `GET /stream?chunks=N&size=M[&delay_ms=D]`: a chunked body of N chunks of M bytes, the
//!   first all `a`, the next all `b`, … (wrapping after `z`), each written and flushed on its
//!   own, optionally D ms apart (defaults: 5 chunks of 16 bytes, no delay);
//! - `/status/<code>`: the echo body with that status (200–599; no body for 204 and 304).
//!
//! HTTP/1.1 and HTTP/2 (prior knowledge) on the same plain-text listener.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

/// After shutdown, how long open connections get to finish before they are cut.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bounds for `/stream`, so a typo cannot make the demo server allocate gigabytes.
pub const MAX_STREAM_CHUNKS: usize = 100_000;
/// See [`MAX_STREAM_CHUNKS`].
pub const MAX_STREAM_CHUNK_SIZE: usize = 1 << 20;
/// See [`MAX_STREAM_CHUNKS`].
pub const MAX_STREAM_DELAY_MS: u64 = 60_000;

type EchoBody = BoxBody<Bytes, Infallible>;

/// Serves the echo upstream on `listener` until `shutdown` completes, then stops accepting,
/// lets open connections finish (at most [`DRAIN_TIMEOUT`]) and returns.
pub async fn serve_echo(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer enables hyper's header-read timeout, so idle half-open clients are dropped.
    builder.http1().timer(TokioTimer::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let builder = builder.clone();
                    let mut stop = stop_rx.clone();
                    connections.spawn(async move {
                        let connection = builder
                            .serve_connection(TokioIo::new(stream), service_fn(handle));
                        tokio::pin!(connection);
                        let result = tokio::select! {
                            result = connection.as_mut() => result,
                            () = async { drop(stop.wait_for(|stopped| *stopped).await) } => {
                                connection.as_mut().graceful_shutdown();
                                connection.await
                            }
                        };
                        if let Err(err) = result {
                            tracing::debug!(error = %err, "echo connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %err, "echo server accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path();
    if path == "/stream" && req.method() == http::Method::GET {
        return Ok(match StreamParams::parse(req.uri().query()) {
            Ok(params) => Response::new(ChunkStream::new(params).boxed()),
            Err(message) => text(StatusCode::BAD_REQUEST, message),
        });
    }
    let status = match path.strip_prefix("/status/") {
        Some(code) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) if (200..=599).contains(&status.as_u16()) => status,
            _ => return Ok(text(StatusCode::BAD_REQUEST, "status must be 200-599")),
        },
        None => StatusCode::OK,
    };
    let echo = match describe(req).await {
        Ok(echo) => echo,
        Err(err) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read request body: {err}"),
            ));
        }
    };
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut response = Response::new(Empty::new().boxed());
        *response.status_mut() = status;
        return Ok(response);
    }
    let mut response = Response::new(Full::new(Bytes::from(echo.to_string())).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The echo document for a request; reads (and counts, without keeping) its body.
async fn describe(req: Request<Incoming>) -> Result<serde_json::Value, hyper::Error> {
    let (parts, mut body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<_> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    let mut body_size = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            body_size += data.len();
        }
    }
    Ok(serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_size": body_size,
    }))
}

fn text(status: StatusCode, message: &str) -> Response<EchoBody> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamParams {
    chunks: usize,
    size: usize,
    delay: Option<Duration>,
}

impl StreamParams {
    fn parse(query: Option<&str>) -> Result<StreamParams, &'static str> {
        let mut params = StreamParams {
            chunks: 5,
            size: 16,
            delay: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "chunks" => {
                    params.chunks = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_STREAM_CHUNKS)
                        .ok_or("chunks must be 0-100000")?;
                }
                "size" => {
                    params.size = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_STREAM_CHUNK_SIZE).contains(n))
                        .ok_or("size must be 1-1048576")?;
                }
                "delay_ms" => {
                    let ms: u64 = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_STREAM_DELAY_MS)
                        .ok_or("delay_ms must be 0-60000")?;
                    params.delay = (ms > 0).then(|| Duration::from_millis(ms));
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

/// `/stream`'s body. Between chunks it returns `Pending` once (waking itself, or after the
/// delay), which makes hyper flush the chunk written so far instead of batching the next one
/// with it. No exact size hint, so HTTP/1.1 uses chunked transfer encoding.
struct ChunkStream {
    params: StreamParams,
    sent: usize,
    paused: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ChunkStream {
    fn new(params: StreamParams) -> Self {
        ChunkStream {
            params,
            sent: 0,
            paused: false,
            sleep: None,
        }
    }
}

impl Body for ChunkStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.sent >= this.params.chunks {
            return Poll::Ready(None);
        }
        if this.sent > 0 && !this.paused {
            this.paused = true;
            match this.params.delay {
                Some(delay) => this.sleep = Some(Box::pin(tokio::time::sleep(delay))),
                None => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        if let Some(sleep) = &mut this.sleep {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        this.paused = false;
        // `% 26` keeps the value below 26, so the cast cannot truncate.
        let letter = b'a' + (this.sent % 26) as u8;
        this.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![
            letter;
            this.params.size
        ])))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.params.chunks
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::Full;
    use hyper::client::conn::{http1, http2};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;

    struct EchoServer {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl EchoServer {
        async fn start() -> EchoServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve_echo(listener, async {
                let _ = stopped.await;
            }));
            EchoServer {
                addr,
                stop: Some(stop),
                task,
            }
        }

        async fn h1(&self) -> http1::SendRequest<Full<Bytes>> {
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            sender
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(2), self.task)
                .await
                .expect("serve_echo returns after shutdown")
                .unwrap();
        }
    }

    fn request(method: &str, uri: &str, body: &'static str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "echo.test")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn json(response: Response<Incoming>) -> serde_json::Value {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn echoes_method_path_query_headers_and_body_size() {
        let server = EchoServer::start().await;
        let mut client = server.h1().await;
        let mut req = request("POST", "/v1/items?page=2&x=y", "hello world");
        req.headers_mut()
            .insert("x-client-cert", HeaderValue::from_static("MIIB..."));
        req.headers_mut()
            .append("x-multi", HeaderValue::from_static("one"));
        req.headers_mut()
            .append("x-multi", HeaderValue::from_static("two"));
        let response = client.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let echo = json(response).await;
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/v1/items");
        assert_eq!(echo["query"], "page=2&x=y");
        assert_eq!(echo["version"], "HTTP/1.1");
        assert_eq!(echo["body_size"], 11);
        assert_eq!(echo["headers"]["host"], "echo.test");
        assert_eq!(echo["headers"]["x-client-cert"], "MIIB...");
        assert_eq!(echo["headers"]["x-multi"], "one, two");
        server.stop().await;
    }

    #[tokio::test]
    async fn query_is_null_when_absent() {
        let server = EchoServer::start().await;
        let mut client = server.h1().await;
        let echo = json(client.send_request(request("GET", "/", "")).await.unwrap()).await;
        assert_eq!(echo["query"], serde_json::Value::Null);
        assert_eq!(echo["body_size"], 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn speaks_http2_with_prior_knowledge() {
        let server = EchoServer::start().await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut client, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method("PUT")
            .uri(format!("http://{}/h2?yes", server.addr))
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        let echo = json(client.send_request(req).await.unwrap()).await;
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["method"], "PUT");
        assert_eq!(echo["path"], "/h2");
        assert_eq!(echo["body_size"], 3);
        server.stop().await;
    }

    #[tokio::test]
    async fn status_path_answers_that_status() {
        let server = EchoServer::start().await;
        let mut client = server.h1().await;
        let response = client
            .send_request(request("GET", "/status/503", ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(response).await["path"], "/status/503");

        let response = client
            .send_request(request("GET", "/status/204", ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );

        for bad in ["/status/99", "/status/600", "/status/abc"] {
            let response = client.send_request(request("GET", bad, "")).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
            response.into_body().collect().await.unwrap();
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn stream_sends_separate_chunks() {
        let server = EchoServer::start().await;
        let mut client = server.h1().await;
        let response = client
            .send_request(request("GET", "/stream?chunks=4&size=3&delay_ms=20", ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(frames, ["aaa", "bbb", "ccc", "ddd"]);
        server.stop().await;
    }

    #[tokio::test]
    async fn stream_without_delay_delivers_all_chunks_in_order() {
        let server = EchoServer::start().await;
        let mut client = server.h1().await;
        let response = client
            .send_request(request("GET", "/stream?chunks=30&size=1", ""))
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let expected: Vec<u8> = (0..30u8).map(|i| b'a' + i % 26).collect();
        assert_eq!(bytes, expected);
        server.stop().await;
    }

    #[tokio::test]
    async fn stream_rejects_bad_parameters() {
        let server = EchoServer::start().await;
        let mut client = server.h1().await;
        for bad in ["/stream?chunks=x", "/stream?size=0", "/stream?size=2000000"] {
            let response = client.send_request(request("GET", bad, "")).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
            response.into_body().collect().await.unwrap();
        }
        server.stop().await;
    }

    #[test]
    fn stream_params_defaults_and_parsing() {
        assert_eq!(
            StreamParams::parse(None),
            Ok(StreamParams {
                chunks: 5,
                size: 16,
                delay: None
            })
        );
        assert_eq!(
            StreamParams::parse(Some("chunks=0&size=7&delay_ms=3&other")),
            Ok(StreamParams {
                chunks: 0,
                size: 7,
                delay: Some(Duration::from_millis(3))
            })
        );
    }

    #[tokio::test]
    async fn shutdown_ends_idle_keep_alive_connections() {
        let server = EchoServer::start().await;
        let mut client = server.h1().await;
        let response = client.send_request(request("GET", "/", "")).await.unwrap();
        json(response).await;
        // The keep-alive connection is idle and open; shutdown must still return promptly.
        server.stop().await;
    }
}
