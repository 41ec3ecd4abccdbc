use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use http_body_util::{Empty, Full};
use hyper::service::service_fn;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;

fn settings(targets: &[String]) -> UpstreamSettings {
    UpstreamSettings {
        targets: targets.to_vec(),
        https: false,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(2),
        retries: 1,
        tls_verify: true,
        extra_ca: Vec::new(),
    }
}

/// The echo upstream on a fresh port; stops when the returned sender drops.
async fn echo_server() -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(super::super::echo::serve_echo(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// An address nothing listens on.
async fn refused_target() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A body that records whether anyone ever polled it.
struct TrackedBody {
    polled: Arc<AtomicBool>,
    data: Option<Bytes>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.polled.store(true, Ordering::SeqCst);
        Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }
}

fn tracked(data: &'static str) -> (Request<TrackedBody>, Arc<AtomicBool>) {
    let polled = Arc::new(AtomicBool::new(false));
    let req = Request::builder()
        .method("POST")
        .uri("/upload?x=1")
        .body(TrackedBody {
            polled: Arc::clone(&polled),
            data: Some(Bytes::from_static(data.as_bytes())),
        })
        .unwrap();
    (req, polled)
}

async fn json(response: Response<UpstreamBody>) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn sends_origin_form_with_host_and_body() {
    let (target, _stop) = echo_server().await;
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    let uri = format!("http://{target}/a/b?q=1");
    let req = Request::builder()
        .uri(uri)
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let response = upstream.send(&target, req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json(response).await;
    assert_eq!(echo["path"], "/a/b");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["headers"]["host"], target.as_str());
    assert_eq!(echo["body_size"], 5);
}

#[tokio::test]
async fn keeps_an_explicit_host_header() {
    let (target, _stop) = echo_server().await;
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    let req = Request::builder()
        .uri("/")
        .header(HOST, "api.example.com")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let echo = json(upstream.send(&target, req).await.unwrap()).await;
    assert_eq!(echo["headers"]["host"], "api.example.com");
}

fn idle_connections(upstream: &Upstream) -> usize {
    upstream
        .pool
        .idle
        .lock()
        .unwrap()
        .values()
        .map(Vec::len)
        .sum()
}

/// Waits for the pool to hold the connection again.
async fn wait_until_idle(upstream: &Upstream) {
    for _ in 0..200 {
        if idle_connections(upstream) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("connection never returned to the pool");
}

#[tokio::test]
async fn reuses_a_keep_alive_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                }),
            ));
        }
    });
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    for _ in 0..3 {
        let connection = upstream.connect(&target).await.unwrap();
        let response = connection
            .send(Request::new(Empty::<Bytes>::new()))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        wait_until_idle(&upstream).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(upstream.connect(&target).await.unwrap().is_reused());
}

#[tokio::test]
async fn a_body_read_to_its_end_returns_its_connection_to_the_pool_at_once() {
    let (target, _stop) = echo_server().await;
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    for _ in 0..3 {
        let response = upstream
            .send(&target, Request::new(Empty::<Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(
            idle_connections(&upstream),
            0,
            "leased while its body is unread"
        );
        response.into_body().collect().await.unwrap();
        // No task to wait for: the body's end put the connection back.
        assert_eq!(idle_connections(&upstream), 1);
    }
    assert!(upstream.connect(&target).await.unwrap().is_reused());
}

#[tokio::test]
async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
    let (target, _stop) = echo_server().await;
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    let response = upstream
        .send(&target, Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap();
    drop(response);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(idle_connections(&upstream), 0);
}

#[tokio::test]
async fn upstream_closing_after_each_response_does_not_fail_the_next_request() {
    // Upstream answers one request per connection and closes it without saying so.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = tokio::io::AsyncWriteExt::write_all(
                    &mut stream,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                )
                .await;
            });
        }
    });
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    for _ in 0..3 {
        let response = upstream
            .send(&target, Request::new(Empty::<Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
    }
}

#[tokio::test]
async fn refused_connection_is_connect_error_and_body_is_never_polled() {
    let target = refused_target().await;
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    let (req, polled) = tracked("payload");
    let err = upstream.send(&target, req).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(err.target(), target);
    assert!(!polled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn retry_on_next_target_sends_the_untouched_request() {
    let dead = refused_target().await;
    let (live, _stop) = echo_server().await;
    let upstream = Upstream::new(settings(&[dead.clone(), live.clone()])).unwrap();
    let (req, polled) = tracked("payload");
    let mut attempts = Vec::new();
    let mut retries = 0;
    let connection = loop {
        let target = &upstream.targets()[upstream.next_target()];
        attempts.push(target.to_string());
        match upstream.connect(&target.to_string()).await {
            Ok(connection) => break connection,
            Err(err) if err.is_retryable() && retries < upstream.retries() => retries += 1,
            Err(err) => panic!("{err}"),
        }
    };
    assert_eq!(attempts, [dead, live]);
    assert!(!polled.load(Ordering::SeqCst));
    let echo = json(connection.send(req).await.unwrap()).await;
    assert_eq!(echo["body_size"], 7);
    assert_eq!(echo["path"], "/upload");
}

#[tokio::test]
async fn no_response_head_within_read_timeout_is_504() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        // Read the request, then say nothing.
        while stream.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let mut settings = settings(std::slice::from_ref(&target));
    settings.read_timeout = Duration::from_millis(200);
    let upstream = Upstream::new(settings).unwrap();
    let started = Instant::now();
    let err = upstream
        .send(&target, Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connection_closed_without_response_is_502_other() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
    });
    let upstream = Upstream::new(settings(std::slice::from_ref(&target))).unwrap();
    let err = upstream
        .send(&target, Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Other { .. }), "{err}");
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn stalled_tls_handshake_is_a_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(stream);
    });
    let mut settings = settings(std::slice::from_ref(&target));
    settings.https = true;
    settings.connect_timeout = Duration::from_millis(200);
    let upstream = Upstream::new(settings).unwrap();
    let (req, polled) = tracked("x");
    let err = upstream.send(&target, req).await.unwrap_err();
    match &err {
        UpstreamError::Connect { source, .. } => {
            assert_eq!(source.kind(), io::ErrorKind::TimedOut)
        }
        other => panic!("{other}"),
    }
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!polled.load(Ordering::SeqCst));
}

struct TlsUpstream {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    sni: Arc<Mutex<Option<String>>>,
}

/// A TLS server (certificate for `localhost` and 127.0.0.1, from a fresh CA) answering
/// "secure" to every request; records the SNI it was sent.
async fn tls_upstream() -> TlsUpstream {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sni = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&sni);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                *seen.lock().unwrap() = tls.get_ref().1.server_name().map(str::to_owned);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(tls),
                        service_fn(|_req| async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("secure"))))
                        }),
                    )
                    .await;
            });
        }
    });
    TlsUpstream {
        addr,
        ca: ca.der().clone(),
        sni,
    }
}

fn https_settings(
    target: &str,
    verify: bool,
    extra_ca: Vec<CertificateDer<'static>>,
) -> UpstreamSettings {
    UpstreamSettings {
        https: true,
        tls_verify: verify,
        extra_ca,
        ..settings(&[target.to_owned()])
    }
}

async fn body_text(response: Response<UpstreamBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn https_verifies_against_extra_ca_and_sends_target_host_as_sni() {
    let server = tls_upstream().await;
    let target = format!("localhost:{}", server.addr.port());
    let upstream = Upstream::new(https_settings(&target, true, vec![server.ca.clone()])).unwrap();
    let response = upstream
        .send(&target, Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "secure");
    assert_eq!(server.sni.lock().unwrap().as_deref(), Some("localhost"));
}

#[tokio::test]
async fn https_to_ip_target_verifies_ip_address() {
    let server = tls_upstream().await;
    let target = server.addr.to_string();
    let upstream = Upstream::new(https_settings(&target, true, vec![server.ca.clone()])).unwrap();
    let response = upstream
        .send(&target, Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "secure");
}

#[tokio::test]
async fn https_untrusted_certificate_is_a_connect_error() {
    let server = tls_upstream().await;
    let target = server.addr.to_string();
    let upstream = Upstream::new(https_settings(&target, true, Vec::new())).unwrap();
    let (req, polled) = tracked("x");
    let err = upstream.send(&target, req).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert!(!polled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn https_without_verification_accepts_untrusted_certificate() {
    let server = tls_upstream().await;
    let target = server.addr.to_string();
    let upstream = Upstream::new(https_settings(&target, false, Vec::new())).unwrap();
    let response = upstream
        .send(&target, Request::new(Empty::<Bytes>::new()))
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "secure");
}

#[test]
fn upstream_and_its_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let upstream = Upstream::new(settings(&["127.0.0.1:1".to_owned()])).unwrap();
    send_sync(&upstream);
    send(&upstream.connect("127.0.0.1:1"));
    send(&upstream.send("127.0.0.1:1", Request::new(Empty::<Bytes>::new())));
}

#[test]
fn next_target_is_round_robin() {
    let targets = ["a:1", "b:2", "c:3"].map(String::from);
    let upstream = Upstream::new(settings(&targets)).unwrap();
    let picks: Vec<_> = (0..7).map(|_| upstream.next_target()).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    let configured: Vec<String> = upstream.targets().iter().map(ToString::to_string).collect();
    assert_eq!(configured, targets);
}

#[test]
fn invalid_settings_are_rejected() {
    assert!(matches!(
        Upstream::new(settings(&[])),
        Err(UpstreamConfigError::NoTargets)
    ));
    for bad in ["no-port", "host:", "host:99999", "a b:80", "http://x:80"] {
        assert!(
            matches!(
                Upstream::new(settings(&[bad.to_owned()])),
                Err(UpstreamConfigError::InvalidTarget { .. })
            ),
            "{bad}"
        );
    }
    let mut bad_ca = settings(&["x:1".to_owned()]);
    bad_ca.https = true;
    bad_ca.extra_ca = vec![CertificateDer::from(vec![1, 2, 3])];
    assert!(matches!(
        Upstream::new(bad_ca),
        Err(UpstreamConfigError::InvalidCa { index: 0, .. })
    ));
    assert!(Upstream::new(settings(&["[::1]:8080".to_owned()])).is_ok());
}

#[tokio::test]
async fn unconfigured_invalid_target_is_a_connect_error() {
    let upstream = Upstream::new(settings(&["127.0.0.1:1".to_owned()])).unwrap();
    let err = upstream.connect("not a target").await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.target(), "not a target");
}
