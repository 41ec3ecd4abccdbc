//! The gateway's edge under hostile clients, through the `tollgate` binary as a user starts it:
//! slow and silent connections closed at their deadlines while a normal client is served, the
//! connection cap, HTTP/2 rapid reset, path tricks against a guarded route, forged identity
//! headers, header and body size limits, and requests for another host than the connection's.
//!
//! Deadlines are configured at 1–3 s so the tests run fast; each is asserted from both sides (not
//! before the deadline, and within the deadline + 1 s).
//!
//! The tests expect `target/release/tollgate` to be built (`scripts/test` builds it first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tollgate_tests::binary::Tollgate;
use tollgate_tests::clients::{Identity, Reply, TlsClient, Versions, parse_response};
use tollgate_tests::{PkiFiles, TestPki, guests};

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// `tollgate run` in front of an echo upstream served by this test process.
struct Gateway {
    tollgate: Tollgate,
    pki: PkiFiles,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the binary on `config`, after replacing `{{echo}}` (the echo upstream's address),
    /// `{{dir}}` (a temp dir with the test PKI's files) and `{{scripted}}` (the scripted guest).
    async fn start(config: &str) -> Gateway {
        Self::start_with_open_files(config, None).await
    }

    /// [`Gateway::start`], with the process's open-file limit set to `open_files` when given.
    async fn start_with_open_files(config: &str, open_files: Option<u64>) -> Gateway {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let echo_addr = echo.local_addr().expect("echo address");
        tokio::spawn(tollgate::proxy::echo::serve_echo(
            echo,
            std::future::pending(),
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new().write(dir.path()).expect("PKI files");
        let text = config
            .replace("{{echo}}", &echo_addr.to_string())
            .replace("{{dir}}", &dir.path().display().to_string())
            .replace("{{scripted}}", guests::SCRIPTED);
        let path = dir.path().to_owned();
        let tollgate = tokio::task::block_in_place(|| match open_files {
            None => Tollgate::run(&path, &text),
            Some(limit) => Tollgate::run_with_open_files(&path, &text, limit),
        });
        Gateway {
            tollgate,
            pki,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.tollgate.addr("edge")
    }
}

/// A plaintext listener named `edge` with `settings`, the echo service, and `routes` (the echo
/// service is `echo`).
fn config(settings: &str, routes: &str) -> String {
    format!(
        "[[listeners]]\nname = \"edge\"\naddress = \"127.0.0.1:0\"\n{settings}\n\n\
         [[services]]\nname = \"echo\"\ntargets = [\"{{{{echo}}}}\"]\n\n{routes}"
    )
}

const CATCH_ALL: &str = "[[routes]]\nname = \"open\"\npaths = [\"/\"]\nservice = \"echo\"\n";

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Reads one whole response from `stream`.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Reply> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Ok(reply) = parse_response(&raw)
            && reply_is_complete(&raw)
        {
            return Ok(reply);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return parse_response(&raw);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Whether `raw` holds a whole response delimited by length or chunking (a response delimited by
/// the end of the connection is only complete at EOF).
fn reply_is_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
    text.contains("content-length:") || text.contains("transfer-encoding: chunked")
}

/// One raw HTTP/1.1 request (`Connection: close` is added) on a new connection.
async fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    within(
        Duration::from_secs(10),
        async {
            let mut tcp = TcpStream::connect(addr).await.expect("gateway accepts");
            tcp.write_all(head.as_bytes()).await.expect("head written");
            tcp.write_all(body).await.expect("body written");
            read_response(&mut tcp).await.expect("a response")
        },
        "a raw request",
    )
    .await
}

/// `GET path` with `headers`, as raw HTTP/1.1 on a new connection.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    raw_request(addr, &request_head("GET", path, headers), b"").await
}

fn request_head(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Waits until the peer closes `stream` (EOF or reset), discarding what it sends.
async fn wait_closed<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await
        && n > 0
    {}
}

async fn within<T>(limit: Duration, future: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

/// Asserts that `elapsed` is within `deadline` − 150 ms and `deadline` + 1 s.
fn assert_deadline(what: &str, elapsed: Duration, deadline: Duration) {
    assert_deadline_within(what, elapsed, deadline, Duration::from_secs(1));
}

/// Asserts that `elapsed` is within `deadline` − 150 ms and `deadline` + `slack`.
fn assert_deadline_within(what: &str, elapsed: Duration, deadline: Duration, slack: Duration) {
    let early = deadline.saturating_sub(Duration::from_millis(150));
    assert!(
        elapsed >= early && elapsed <= deadline + slack,
        "{what}: closed after {elapsed:?}, expected {deadline:?} (+ at most {slack:?})"
    );
}

/// An HTTP/2 (prior knowledge) connection with the `h2` crate, its driver on a task.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("gateway accepts");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    (client, tokio::spawn(connection))
}

/// One HTTP/2 request; returns the status and the body.
async fn h2_request(
    client: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), h2::Error> {
    let exchange = async {
        let mut client = client.clone().ready().await?;
        let (response, mut send) = client.send_request(request, body.is_none())?;
        if let Some(body) = body {
            send.send_data(body, true)?;
        }
        let response = response.await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, Bytes::from(bytes)))
    };
    within(Duration::from_secs(10), exchange, "HTTP/2 request").await
}

fn h2_get(addr: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("http://localhost:{}{path}", addr.port()))
        .body(())
        .expect("request")
}

/// A client that keeps sending requests (alternating a keep-alive connection and new ones) until
/// stopped; counts answers and failures.
struct NormalClient {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl NormalClient {
    fn start(addr: SocketAddr) -> NormalClient {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            async move {
                let mut kept: Option<TcpStream> = None;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let ok = tokio::time::timeout(Duration::from_secs(5), async {
                        let mut fresh = None;
                        let stream = if round.is_multiple_of(2) {
                            fresh.insert(TcpStream::connect(addr).await.ok()?)
                        } else {
                            match kept.as_mut() {
                                Some(stream) => stream,
                                None => kept.insert(TcpStream::connect(addr).await.ok()?),
                            }
                        };
                        let head = "GET /healthy HTTP/1.1\r\nHost: localhost\r\n\r\n";
                        stream.write_all(head.as_bytes()).await.ok()?;
                        let reply = read_response(stream).await.ok()?;
                        Some(reply.status == 200)
                    })
                    .await;
                    let ok = matches!(ok, Ok(Some(true)));
                    if ok {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        kept = None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        NormalClient {
            stop,
            served,
            failed,
            task,
        }
    }

    /// Stops it; returns (served, failed).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.served.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_silent_connections_are_closed_at_their_deadlines_while_others_are_served() {
    let header_timeout = Duration::from_secs(1);
    let keepalive_timeout = Duration::from_secs(3);
    let gateway = Gateway::start(&config(
        "header_timeout = \"1s\"\nkeepalive_timeout = \"3s\"\nsend_timeout = \"1s\"",
        CATCH_ALL,
    ))
    .await;
    let addr = gateway.addr();
    let normal = NormalClient::start(addr);

    // Connects and sends nothing.
    let silent = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let start = Instant::now();
        wait_closed(&mut tcp).await;
        start.elapsed()
    });
    // Starts a request head and never finishes it.
    let partial = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let start = Instant::now();
        tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .expect("partial head");
        wait_closed(&mut tcp).await;
        start.elapsed()
    });
    // Keep-alive: one request, then a partial head after 500 ms of idle. The head deadline
    // (1 s from its first byte) applies, not what is left of the keep-alive one (2.5 s).
    let partial_later = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let head = "GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n";
        tcp.write_all(head.as_bytes()).await.expect("request");
        let reply = read_response(&mut tcp).await.expect("response");
        assert_eq!(reply.status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        tcp.write_all(b"GET /second HTTP/1.1\r\nHost: loc")
            .await
            .expect("partial head");
        wait_closed(&mut tcp).await;
        start.elapsed()
    });
    // Keep-alive: one request, then nothing.
    let idle = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let head = "GET /once HTTP/1.1\r\nHost: localhost\r\n\r\n";
        tcp.write_all(head.as_bytes()).await.expect("request");
        let reply = read_response(&mut tcp).await.expect("response");
        assert_eq!(reply.status, 200);
        let start = Instant::now();
        wait_closed(&mut tcp).await;
        start.elapsed()
    });
    // HTTP/2: one request, then no open stream.
    let idle_h2 = tokio::spawn(async move {
        let (mut client, connection) = h2_connect(addr).await;
        let (status, _) = h2_request(&mut client, h2_get(addr, "/h2-once"), None)
            .await
            .expect("HTTP/2 request");
        assert_eq!(status, StatusCode::OK);
        let start = Instant::now();
        let _ = connection.await;
        start.elapsed()
    });
    // Asks for a large response and reads none of it: the write stalls, send_timeout ends it.
    let not_reading = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let total: usize = 256 << 20;
        let head = "GET /stream?chunks=256&size=1048576 HTTP/1.1\r\nHost: localhost\r\n\r\n";
        tcp.write_all(head.as_bytes()).await.expect("request");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let start = Instant::now();
        while let Ok(n) = tcp.read(&mut buf).await
            && n > 0
        {
            received += n;
        }
        (received, total, start.elapsed())
    });

    let silent = within(Duration::from_secs(10), silent, "silent")
        .await
        .unwrap();
    let partial = within(Duration::from_secs(10), partial, "partial")
        .await
        .unwrap();
    let partial_later = within(Duration::from_secs(10), partial_later, "partial later")
        .await
        .unwrap();
    let idle = within(Duration::from_secs(10), idle, "idle").await.unwrap();
    let idle_h2 = within(Duration::from_secs(10), idle_h2, "idle HTTP/2")
        .await
        .unwrap();
    let (received, total, drained) = within(Duration::from_secs(20), not_reading, "not reading")
        .await
        .unwrap();
    let (served, failed) = normal.stop().await;

    eprintln!(
        "closed after: silent {silent:?}, partial head {partial:?}, partial head on keep-alive \
         {partial_later:?}, idle keep-alive {idle:?}, idle HTTP/2 {idle_h2:?}; not reading: \
         {received} of {total} bytes before the close; normal client: {served} served, {failed} failed"
    );
    assert_deadline("silent connection", silent, header_timeout);
    assert_deadline("partial request head", partial, header_timeout);
    assert_deadline(
        "partial head on a keep-alive connection",
        partial_later,
        header_timeout,
    );
    assert_deadline("idle keep-alive connection", idle, keepalive_timeout);
    assert_deadline("idle HTTP/2 connection", idle_h2, keepalive_timeout);
    assert!(
        received < total,
        "a client that read nothing for send_timeout still got the whole {total} bytes"
    );
    assert!(drained < Duration::from_secs(5), "{drained:?}");
    assert_eq!(
        failed, 0,
        "the normal client failed {failed} times ({served} served)"
    );
    assert!(
        served >= 20,
        "the normal client was served only {served} times"
    );
}

// ---------------------------------------------------------------------------------------------
// The connection cap
// ---------------------------------------------------------------------------------------------

/// The status of `request` sent on the open connection `tcp`.
async fn served_on(tcp: &mut TcpStream, request: &str) -> u16 {
    tcp.write_all(request.as_bytes()).await.expect("request");
    within(Duration::from_secs(5), read_response(tcp), "response")
        .await
        .expect("response")
        .status
}

/// The status of `request` on a new connection, retried while the cap closes them at once.
async fn served_once_a_slot_frees(addr: SocketAddr, request: &str) -> u16 {
    within(
        Duration::from_secs(5),
        async {
            loop {
                let mut tcp = TcpStream::connect(addr).await.expect("connect");
                let _ = tcp.write_all(request.as_bytes()).await;
                if let Ok(reply) = read_response(&mut tcp).await {
                    break reply.status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
        "a new connection to be served after one closed",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_new_connections_are_closed_at_once_and_the_rest_are_served() {
    let gateway = Gateway::start(&config("max_connections = 3", CATCH_ALL)).await;
    let addr = gateway.addr();
    let request = "GET /capped HTTP/1.1\r\nHost: localhost\r\n\r\n";

    let mut open = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("request");
        let reply = within(Duration::from_secs(5), read_response(&mut tcp), "response")
            .await
            .expect("response");
        assert_eq!(reply.status, 200);
        open.push(tcp);
    }

    // The fourth is accepted by the kernel, then closed by the gateway without an answer.
    for _ in 0..3 {
        let start = Instant::now();
        let mut over = TcpStream::connect(addr).await.expect("connect");
        let _ = over.write_all(request.as_bytes()).await;
        let mut bytes = Vec::new();
        let _ = within(
            Duration::from_secs(2),
            over.read_to_end(&mut bytes),
            "the over-cap connection to close",
        )
        .await;
        assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }

    // The three keep working.
    for tcp in &mut open {
        assert_eq!(served_on(tcp, request).await, 200);
    }

    // One leaves; a new connection is served again.
    drop(open.pop());
    assert_eq!(served_once_a_slot_frees(addr, request).await, 200);
    let warnings = gateway.tollgate.stderr().join("\n");
    assert!(warnings.contains("connection cap reached"), "{warnings}");
}

/// Connections opened before a reload still count against the cap after it: the reloaded
/// listener keeps its count of open connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_across_a_reload() {
    let gateway = Gateway::start(&config("max_connections = 2", CATCH_ALL)).await;
    let addr = gateway.addr();
    let request = request_head("GET", "/capped", &[]).replace("Connection: close\r\n", "");
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("request");
        let reply = within(Duration::from_secs(5), read_response(&mut tcp), "response")
            .await
            .expect("response");
        assert_eq!(reply.status, 200);
        open.push(tcp);
    }
    gateway.tollgate.signal("HUP");
    assert!(
        gateway
            .tollgate
            .wait_for_stderr(Duration::from_secs(30), |line| line.contains("reloaded")),
        "no reload:\n{}",
        gateway.tollgate.stderr().join("\n")
    );

    // A third connection is still over the cap: closed at once, no bytes.
    let mut over = TcpStream::connect(addr).await.expect("connect");
    let _ = over.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    let _ = within(
        Duration::from_secs(2),
        over.read_to_end(&mut bytes),
        "the over-cap connection to close",
    )
    .await;
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));

    // The two from before the reload keep working; when one leaves, a new one is served.
    for tcp in &mut open {
        assert_eq!(served_on(tcp, &request).await, 200);
    }
    drop(open.pop());
    assert_eq!(served_once_a_slot_frees(addr, &request).await, 200);
}

/// Started as a service manager with `LimitNOFILE=1024` would start it, with the default
/// `max_connections` (4096) far past what 1,024 descriptors hold: the gateway lowers the cap to
/// fit, so a flood of idle connections is refused at the cap instead of exhausting descriptors,
/// and once the idle ones reach their deadline new clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_1024_open_file_limit_an_idle_flood_is_capped_and_new_clients_served_after_the_deadline()
 {
    const OPEN_FILES: u64 = 1024;
    // The gateway keeps 64 descriptors for itself and two per connection (client, upstream).
    const CAP: usize = 480;
    const FLOOD: usize = 1100;
    let header_timeout = Duration::from_secs(2);
    // This process holds the flood's client ends.
    rlimit::increase_nofile_limit(4096).expect("raise this test's open-file limit");
    let gateway = Gateway::start_with_open_files(
        &config("header_timeout = \"2s\"", CATCH_ALL),
        Some(OPEN_FILES),
    )
    .await;
    let addr = gateway.addr();
    let lowered = |line: &str| {
        line.contains("lowered the cap") && line.contains(&format!("max_connections={CAP}"))
    };
    assert!(
        gateway
            .tollgate
            .wait_for_stderr(Duration::from_secs(5), lowered),
        "no warning that the cap was lowered to {CAP}:\n{}",
        gateway.tollgate.stderr().join("\n")
    );

    // 1,100 connections that send nothing.
    let flood_started = Instant::now();
    let flood = idle_flood(addr, FLOOD).await;
    let flood_connected = flood_started.elapsed();
    // Those past the cap are closed at once; the others stay open until their deadline. At once
    // means once the gateway has accepted them: on a machine shared with other tests, draining a
    // backlog of 1,100 can take past the first look, so the count is read again until it is
    // within the cap, at most until shortly before the first deadline can come.
    tokio::time::sleep_until((flood_started + header_timeout / 2).into()).await;
    let settled_by = flood_started + header_timeout * 9 / 10;
    while flood.iter().filter(|tcp| is_open(tcp)).count() > CAP && Instant::now() < settled_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (still_open, closed): (Vec<_>, Vec<_>) = flood.into_iter().partition(is_open);
    let closed_at_once = closed.len();
    assert!(
        still_open.len() <= CAP && still_open.len() + 16 >= CAP,
        "{} of {FLOOD} stayed open (cap {CAP})",
        still_open.len()
    );
    assert_eq!(closed_at_once + still_open.len(), FLOOD);

    // At their deadline the idle ones are closed, and a new client is served again.
    let served = within(
        header_timeout + Duration::from_secs(5),
        async {
            loop {
                // Refused (closed at once) while the cap is full.
                let attempt = async {
                    let mut tcp = TcpStream::connect(addr).await.ok()?;
                    tcp.write_all(request_head("GET", "/after", &[]).as_bytes())
                        .await
                        .ok()?;
                    read_response(&mut tcp).await.ok()
                };
                if let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(1), attempt).await
                {
                    break reply;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
        "a new client to be served after the idle flood's deadline",
    )
    .await;
    assert_eq!(served.status, 200);
    // Not before the first idle connection's deadline, and soon after the last one's: the
    // gateway accepts (and starts the clocks of) 1,100 connections one by one, on a machine this
    // test shares with the tests running beside it, so the slack is 2 s past the flood's
    // connecting here, not 1.
    assert_deadline_within(
        "serving again after the idle flood",
        flood_started.elapsed(),
        header_timeout,
        flood_connected + Duration::from_secs(2),
    );
    for mut tcp in still_open {
        within(
            Duration::from_secs(2),
            wait_closed(&mut tcp),
            "idle connection closed",
        )
        .await;
    }
    assert_descriptors_lasted(&gateway);
}

/// Opens `count` connections to `addr` that send nothing.
async fn idle_flood(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut flood = Vec::with_capacity(count);
    for _ in 0..count {
        flood.push(TcpStream::connect(addr).await.expect("connect"));
    }
    flood
}

/// Whether the gateway still holds an idle connection open (it sent nothing and did not close).
fn is_open(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tcp.try_read(&mut byte) {
        Err(err) => err.kind() == io::ErrorKind::WouldBlock,
        Ok(0) => false,
        Ok(_) => panic!("an idle connection got bytes"),
    }
}

/// The gateway never ran out of file descriptors.
fn assert_descriptors_lasted(gateway: &Gateway) {
    let stderr = gateway.tollgate.stderr().join("\n");
    assert!(
        !stderr.contains("Too many open files"),
        "the gateway ran out of descriptors:\n{stderr}"
    );
}

/// A reload fits its connection caps to the open-file limit as start-up does: a reloaded
/// `max_connections` past what the descriptors hold is lowered (with the same warning), and the
/// lowered cap is the one enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_past_the_open_file_limit_lowers_the_cap_to_fit() {
    const OPEN_FILES: u64 = 256;
    // 64 descriptors kept, two per connection.
    const CAP: usize = 96;
    const FLOOD: usize = 120;
    rlimit::increase_nofile_limit(4096).expect("raise this test's open-file limit");
    let gateway = Gateway::start_with_open_files(
        &config("max_connections = 50", CATCH_ALL),
        Some(OPEN_FILES),
    )
    .await;
    let addr = gateway.addr();
    let config_path = &gateway.tollgate.config;
    let text = std::fs::read_to_string(config_path).expect("config");
    let raised = text.replace("max_connections = 50", "max_connections = 1000");
    assert_ne!(text, raised);
    std::fs::write(config_path, raised).expect("config rewritten");
    gateway.tollgate.signal("HUP");
    assert!(
        gateway
            .tollgate
            .wait_for_stderr(Duration::from_secs(30), |line| line.contains("reloaded")),
        "no reload:\n{}",
        gateway.tollgate.stderr().join("\n")
    );
    let stderr = gateway.tollgate.stderr().join("\n");
    let lowered = stderr
        .lines()
        .filter(|line| line.contains("lowered the cap"));
    assert_eq!(
        lowered.clone().count(),
        1,
        "one warning, for the reload, not for the start:\n{stderr}"
    );
    assert!(
        lowered
            .clone()
            .all(|line| line.contains(&format!("max_connections={CAP}"))
                && line.contains("configured=1000")),
        "{stderr}"
    );

    // Idle connections: the fitted cap (not 50, not 1000) stay open, the rest are closed at once.
    let flood = idle_flood(addr, FLOOD).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still_open = flood.iter().filter(|tcp| is_open(tcp)).count();
    assert!(
        (CAP - 8..=CAP).contains(&still_open),
        "{still_open} of {FLOOD} stayed open (cap {CAP})"
    );
    assert_descriptors_lasted(&gateway);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 rapid reset
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_gets_goaway_and_costs_no_plugin_while_other_connections_are_served() {
    let marker = "plugin-instantiated-for-a-request";
    let routes = format!(
        "{CATCH_ALL}\n[[plugins]]\nname = \"counter\"\npath = \"{{{{scripted}}}}\"\n\
         config = {{ actions = {{ rewrite = [{{ call = \"log\", message = \"{marker}\" }}] }} }}\n"
    );
    let gateway = Gateway::start(&config(
        "http2_max_resets = 20\nhttp2_max_streams = 100",
        &routes,
    ))
    .await;
    let addr = gateway.addr();
    let instantiations = || {
        gateway
            .tollgate
            .stderr()
            .iter()
            .filter(|line| line.contains(marker))
            .count()
    };

    // Streams opened and reset at once, as fast as the client can.
    let (client, attack) = h2_connect(addr).await;
    let started = Instant::now();
    let (goaway, opened) = within(
        Duration::from_secs(20),
        async move {
            let mut client = client;
            let mut opened = 0;
            loop {
                client = match client.ready().await {
                    Ok(client) => client,
                    Err(err) => break (err, opened),
                };
                let request = h2_get(addr, &format!("/rapid/{opened}"));
                match client.send_request(request, true) {
                    Ok((_response, mut stream)) => {
                        stream.send_reset(h2::Reason::CANCEL);
                        opened += 1;
                    }
                    Err(err) => break (err, opened),
                }
                if opened % 10 == 0 {
                    // Lets the connection task write the burst and read what the server sent.
                    tokio::task::yield_now().await;
                }
                assert!(opened < 100_000, "no GOAWAY after {opened} reset streams");
            }
        },
        "GOAWAY",
    )
    .await;
    let took = started.elapsed();
    let ended = within(
        Duration::from_secs(5),
        attack,
        "the attacking connection to end",
    )
    .await;
    eprintln!(
        "rapid reset: GOAWAY after {took:?} and {opened} streams sent and reset by the client \
         ({goaway}); connection ended with {ended:?}"
    );
    // The server writes GOAWAY, then closes: a client still writing may see the close first.
    assert!(
        goaway.is_go_away() || goaway.is_io(),
        "expected GOAWAY, got {goaway}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A stream whose RST_STREAM came in a later read than its HEADERS was already on its way
    // into the plugins, as a request cancelled by its client is (rare in such a burst). Each
    // such stream counts against http2_max_resets, and once past it the connection's remaining
    // streams get no work: at most http2_max_resets + http2_max_streams in all.
    let leaked = instantiations();
    eprintln!("rapid reset: plugins ran for {leaked} of the {opened} reset streams");
    assert!(
        leaked <= 20 + 100,
        "{leaked} of {opened} reset streams ran plugins"
    );

    // Paced so that the server reads each HEADERS with its RST_STREAM: no plugin runs for any,
    // and the 21st gets GOAWAY from Tollgate's count (not from h2's queue of pending streams).
    let (frames, sent) = raw_rapid_reset(addr, 200).await;
    let goaway = frames.iter().find(|frame| frame.kind == GOAWAY);
    eprintln!("paced reset: {sent} streams sent and reset; GOAWAY: {goaway:?}");
    assert!(goaway.is_some(), "no GOAWAY after {sent} reset streams");
    assert!(
        (21..=40).contains(&sent),
        "GOAWAY after {sent} reset streams"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        instantiations(),
        leaked,
        "streams reset on arrival ran plugins"
    );

    // Another HTTP/2 client is served, and so is HTTP/1.1; each of these runs the plugin.
    let (mut normal, _driver) = h2_connect(addr).await;
    for index in 0..20 {
        let (status, _) = h2_request(&mut normal, h2_get(addr, &format!("/normal/{index}")), None)
            .await
            .expect("normal HTTP/2 request");
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(get(addr, "/after", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(instantiations(), leaked + 21);

    // Streams reset after their response started (the upstream sends the body slowly) are
    // counted too: the 21st within 10 s gets GOAWAY.
    // A request that crossed the GOAWAY is answered 503 without running anything.
    let (client, slow_attack) = h2_connect(addr).await;
    let (refusal, reset) = within(
        Duration::from_secs(30),
        async move {
            let mut client = client;
            let mut reset = 0;
            loop {
                client = match client.ready().await {
                    Ok(client) => client,
                    Err(err) => break (err.to_string(), reset),
                };
                let request = h2_get(addr, "/stream?chunks=3&size=10&delay_ms=500");
                let (response, mut stream) = match client.send_request(request, true) {
                    Ok(sent) => sent,
                    Err(err) => break (err.to_string(), reset),
                };
                match response.await {
                    Ok(response) if response.status() == StatusCode::OK => {}
                    Ok(response) => break (format!("status {}", response.status()), reset),
                    Err(err) => break (err.to_string(), reset),
                }
                stream.send_reset(h2::Reason::CANCEL);
                reset += 1;
                assert!(
                    reset <= 40,
                    "no GOAWAY after {reset} streams reset mid-body"
                );
            }
        },
        "GOAWAY for resets mid-body",
    )
    .await;
    let ended = within(Duration::from_secs(5), slow_attack, "the connection to end").await;
    eprintln!(
        "resets mid-body: refused after {reset} ({refusal}); connection ended with {ended:?}"
    );
    assert!(
        refusal.contains("GOAWAY")
            || refusal.contains("not a result of an error")
            || refusal == "status 503 Service Unavailable",
        "{refusal}"
    );
    assert!(
        (21..=22).contains(&reset),
        "refused after {reset} resets, expected 21"
    );
    let warned = gateway.tollgate.stderr().join("\n");
    assert!(warned.contains("too many streams reset"), "{warned}");
}

/// An HTTP/2 frame as received: type, stream and payload.
#[derive(Debug)]
#[allow(dead_code)]
struct RawFrame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

const GOAWAY: u8 = 0x7;

fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HTTP/2 (prior knowledge) client written frame by frame: `GET /` on streams 1, 3, 5, …,
/// each HEADERS written together with its RST_STREAM (CANCEL), 2 ms apart, until the server
/// sends GOAWAY or closes, or `limit` streams. Returns the frames received and the streams sent.
async fn raw_rapid_reset(addr: SocketAddr, limit: u32) -> (Vec<RawFrame>, u32) {
    let tcp = TcpStream::connect(addr).await.expect("gateway accepts");
    let (mut reader, mut writer) = tcp.into_split();
    let done = Arc::new(AtomicBool::new(false));
    let received = tokio::spawn({
        let done = done.clone();
        async move {
            let mut bytes = Vec::new();
            let mut frames = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf).await
                && n > 0
            {
                bytes.extend_from_slice(&buf[..n]);
                while bytes.len() >= 9 {
                    let length = usize::from(bytes[0]) << 16
                        | usize::from(bytes[1]) << 8
                        | usize::from(bytes[2]);
                    if bytes.len() < 9 + length {
                        break;
                    }
                    let frame: Vec<u8> = bytes.drain(..9 + length).collect();
                    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]);
                    if frame[3] == GOAWAY {
                        done.store(true, Ordering::Relaxed);
                    }
                    frames.push(RawFrame {
                        kind: frame[3],
                        stream,
                        payload: frame[9..].to_vec(),
                    });
                }
            }
            done.store(true, Ordering::Relaxed);
            frames
        }
    });
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(raw_frame(0x4, 0, 0, &[])); // SETTINGS, none changed
    writer.write_all(&start).await.expect("preface");
    // HPACK: :method GET, :scheme http, :path / (static table), :authority localhost.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 9];
    block.extend_from_slice(b"localhost");
    let mut sent = 0;
    while sent < limit && !done.load(Ordering::Relaxed) {
        let stream = 2 * sent + 1;
        let mut pair = raw_frame(0x1, 0x5, stream, &block); // HEADERS, END_STREAM | END_HEADERS
        pair.extend(raw_frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM, CANCEL
        if writer.write_all(&pair).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(writer);
    let frames = within(Duration::from_secs(5), received, "the server to close")
        .await
        .expect("reader task");
    (frames, sent)
}

// ---------------------------------------------------------------------------------------------
// Path tricks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_get_the_guarded_route_or_400_never_the_upstream_unguarded() {
    let routes = format!(
        "[[routes]]\nname = \"secure\"\npaths = [\"/secure\"]\nservice = \"echo\"\n\n{CATCH_ALL}\n\
         [[plugins]]\nname = \"guard\"\npath = \"{{{{scripted}}}}\"\nroute = \"secure\"\n\
         config = {{ actions = {{ access = [{{ call = \"exit\", status = 401, body = \"guarded\" }}] }} }}\n"
    );
    let gateway = Gateway::start(&config("", &routes)).await;
    let addr = gateway.addr();

    let tricks = [
        "/secure",
        "//secure",
        "///secure",
        "/./secure",
        "/x/../secure",
        "/%73ecure",
        "/%73%65%63%75%72%65",
        "/%2fsecure",
        "/%2Fsecure",
        "/secure/",
        "/secure%00",
        "/%00/secure",
        "/%2e/secure",
        "/%2E/secure",
        "/%2e%2e/secure",
        "/.%2e/secure",
        "/../secure",
        "/x/..%2fsecure",
        "/secure/./",
        "/secure/x/..",
        "/secure;x=1",
        "/secure%3f",
        "/secure%5c",
        "/%5csecure",
        "/secure?x=1",
        "//x/..//secure",
    ];
    let mut table = Vec::new();
    for path in tricks {
        let reply = get(addr, path, &[]).await;
        table.push(format!("{path:<22} {}", reply.status));
        match reply.status {
            401 => assert_eq!(reply.body, b"guarded", "{path}"),
            400 => {}
            status => panic!(
                "{path}: {status}, the upstream answered without the guard: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }

    // Matching is case-sensitive (as in Kong): `/SECURE` is another path, so it takes the open
    // route, and the upstream gets `/SECURE`.
    let upper = get(addr, "/SECURE", &[]).await;
    table.push(format!("{:<22} {} (open route)", "/SECURE", upper.status));
    assert_eq!(upper.status, 200);
    assert_eq!(upper.json()["path"], "/SECURE");

    // The upstream gets the normalized path, and the query as sent.
    let normalized = get(addr, "/open/./a//b/../%63?q=%2F..//x", &[]).await;
    assert_eq!(normalized.status, 200);
    assert_eq!(normalized.json()["path"], "/open/a/c");
    assert_eq!(normalized.json()["query"], "q=%2F..//x");
    eprintln!("path forms and answers:\n{}", table.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Identity headers
// ---------------------------------------------------------------------------------------------

/// `GET path` from the local address `from`.
async fn get_from(from: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind the client's address");
    let mut tcp = socket.connect(addr).await.expect("gateway accepts");
    tcp.write_all(request_head("GET", path, headers).as_bytes())
        .await
        .expect("request");
    within(Duration::from_secs(10), read_response(&mut tcp), "response")
        .await
        .expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_reach_the_upstream_only_from_trusted_peers() {
    // 127.0.0.2 stands for a trusted load balancer; the test's 127.0.0.1 for anyone else.
    let text = format!(
        "trusted_ips = [\"127.0.0.2/32\"]\n\n{}",
        config("", CATCH_ALL)
    );
    let gateway = Gateway::start(&text).await;
    let addr = gateway.addr();
    let forged = [
        ("X-Client-Cert", "forged"),
        ("X-Client-Cert-DN", "CN=forged"),
        ("X-SSL-Client-DN", "CN=forged"),
        ("Forwarded", "for=198.51.100.66;proto=https"),
        ("X-Real-IP", "198.51.100.66"),
        ("X-Forwarded-For", "198.51.100.66"),
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Port", "1"),
        ("X-Kept", "yes"),
    ];

    let untrusted = get_from("127.0.0.1", addr, "/identity", &forged).await;
    let seen = untrusted.json()["headers"].clone();
    for name in [
        "x-client-cert",
        "x-client-cert-dn",
        "x-ssl-client-dn",
        "forwarded",
    ] {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the upstream: {seen}"
        );
    }
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "localhost", "{seen}");
    assert_eq!(seen["x-forwarded-port"], addr.port().to_string(), "{seen}");
    assert_eq!(seen["x-kept"], "yes", "{seen}");

    let trusted = get_from("127.0.0.2", addr, "/identity", &forged).await;
    let seen = trusted.json()["headers"].clone();
    // Certificate headers are removed from everyone: only plugins set them.
    for name in ["x-client-cert", "x-client-cert-dn", "x-ssl-client-dn"] {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the upstream: {seen}"
        );
    }
    assert_eq!(seen["forwarded"], "for=198.51.100.66;proto=https", "{seen}");
    assert_eq!(seen["x-real-ip"], "198.51.100.66", "{seen}");
    assert_eq!(
        seen["x-forwarded-for"], "198.51.100.66, 127.0.0.2",
        "{seen}"
    );
    assert_eq!(seen["x-forwarded-proto"], "gopher", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "evil.example", "{seen}");
    assert_eq!(seen["x-forwarded-port"], "1", "{seen}");
}

// ---------------------------------------------------------------------------------------------
// Size limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_or_too_many_headers_get_431_and_too_large_or_stalled_bodies_413_and_408() {
    let gateway = Gateway::start(&config(
        "max_header_size = \"8KiB\"\nmax_headers = 20\nmax_body_size = \"1KiB\"\nbody_timeout = \"1s\"",
        CATCH_ALL,
    ))
    .await;
    let addr = gateway.addr();
    let big = "v".repeat(9000);
    let many: Vec<(String, String)> = (0..25)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();

    // HTTP/1.1 heads.
    assert_eq!(get(addr, "/h", &[("x-big", &big)]).await.status, 431);
    assert_eq!(get(addr, "/h", &many).await.status, 431);
    assert_eq!(get(addr, "/h", &many[..10]).await.status, 200);

    // HTTP/2 heads.
    let (mut client, _driver) = h2_connect(addr).await;
    let mut request = h2_get(addr, "/h2");
    request.headers_mut().insert("x-big", big.parse().unwrap());
    let (status, _) = h2_request(&mut client, request, None)
        .await
        .expect("HTTP/2");
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let mut request = h2_get(addr, "/h2");
    for (name, value) in &many {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let (status, _) = h2_request(&mut client, request, None)
        .await
        .expect("HTTP/2");
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Bodies: declared too large, streamed too large (chunked; HTTP/2 without content-length),
    // within the limit, stalled.
    let body = vec![b'x'; 2000];
    let declared = raw_request(
        addr,
        &request_head("POST", "/body", &[("content-length", "2000")]),
        &body,
    )
    .await;
    assert_eq!(declared.status, 413);
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let streamed = raw_request(
        addr,
        &request_head("POST", "/body", &[("transfer-encoding", "chunked")]),
        &chunked,
    )
    .await;
    assert_eq!(streamed.status, 413);
    let post = Request::post(format!("http://localhost:{}/body", addr.port()))
        .body(())
        .unwrap();
    let (status, _) = h2_request(&mut client, post, Some(Bytes::from(body.clone())))
        .await
        .expect("HTTP/2 body");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let fits = raw_request(
        addr,
        &request_head("POST", "/body", &[("content-length", "1000")]),
        &body[..1000],
    )
    .await;
    assert_eq!(fits.status, 200);
    assert_eq!(fits.json()["body_size"], 1000);

    let start = Instant::now();
    let stalled = raw_request(
        addr,
        &request_head("POST", "/body", &[("content-length", "100")]),
        &body[..10],
    )
    .await;
    assert_eq!(stalled.status, 408);
    assert_deadline(
        "stalled request body",
        start.elapsed(),
        Duration::from_secs(1),
    );
}

// ---------------------------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_host_that_contradicts_authority_is_400() {
    let gateway = Gateway::start(&config("", CATCH_ALL)).await;
    let addr = gateway.addr();
    let (mut client, _driver) = h2_connect(addr).await;
    let authority = format!("localhost:{}", addr.port());

    let mut same = h2_get(addr, "/host");
    same.headers_mut()
        .insert("host", authority.parse().unwrap());
    let (status, body) = h2_request(&mut client, same, None).await.expect("HTTP/2");
    assert_eq!(status, StatusCode::OK, "{body:?}");

    let mut other = h2_get(addr, "/host");
    other
        .headers_mut()
        .insert("host", "evil.example".parse().unwrap());
    let (status, _) = h2_request(&mut client, other, None).await.expect("HTTP/2");
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Two Host headers are refused over HTTP/1.1.
    let twice = get(addr, "/host", &[("Host", "evil.example")]).await;
    assert_eq!(twice.status, 400);
}

/// `GET /` with `Host: host` over TLS with SNI `sni`.
async fn tls_get(client: &TlsClient, addr: SocketAddr, sni: &str, host: &str) -> Reply {
    within(
        Duration::from_secs(10),
        async {
            let mut tls = client.connect(addr, sni).await.expect("TLS handshake");
            let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            tls.write_all(head.as_bytes()).await.expect("request");
            read_response(&mut tls).await.expect("response")
        },
        "TLS request",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_certificate_policy_differs_from_the_snis_gets_421() {
    // `guarded.test` asks for a client certificate in the certificate phase; `localhost` and
    // `other.test` have no certificate-phase plugin.
    let text = "[[listeners]]\nname = \"edge\"\naddress = \"127.0.0.1:0\"\n\
        [[listeners.certificates]]\ncert = \"{{dir}}/server.pem\"\nkey = \"{{dir}}/server.key\"\n\n\
        [[services]]\nname = \"echo\"\ntargets = [\"{{echo}}\"]\n\n\
        [[routes]]\nname = \"guarded\"\nhosts = [\"guarded.test\"]\nservice = \"echo\"\n\
        [[routes]]\nname = \"local\"\nhosts = [\"localhost\"]\nservice = \"echo\"\n\
        [[routes]]\nname = \"other\"\nhosts = [\"other.test\"]\nservice = \"echo\"\n\n\
        [[plugins]]\nname = \"ask-cert\"\npath = \"{{scripted}}\"\nroute = \"guarded\"\n\
        config = { actions = { certificate = [{ call = \"request_client_certificate\" }] } }\n";
    let gateway = Gateway::start(text).await;
    let addr = gateway.addr();
    let client = TlsClient::any_server(&gateway.pki, Versions::Tls13, Identity::Anonymous);

    let cases = [
        ("localhost", "localhost", 200),
        ("guarded.test", "guarded.test", 200),
        // Same certificate-phase policy (none): allowed, as with any shared certificate.
        ("localhost", "other.test", 200),
        // The connection did not go through guarded.test's certificate phase.
        ("localhost", "guarded.test", 421),
        ("guarded.test", "localhost", 421),
        ("localhost", "GUARDED.test.", 421),
    ];
    for (sni, host, expected) in cases {
        let reply = tls_get(&client, addr, sni, host).await;
        assert_eq!(reply.status, expected, "SNI {sni}, Host {host}");
    }
}
