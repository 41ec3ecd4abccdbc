//! The gateway's HTTP behaviour end to end, over real sockets: a [`TestGateway`] (the real
//! gateway in-process, in front of the echo upstream) driven by hyper's HTTP/1.1 and HTTP/2
//! clients, rustls, raw TCP and `curl`; and the `tollgate` binary itself for graceful shutdown,
//! `tollgate check` and the README's demo.
//!
//! Phases are made visible with the scripted guest: rewrite and access set request headers the
//! echo upstream reports back, header_filter sets a response header, body_filter rewrites the
//! body. Phases that cannot change anything the client or upstream sees (balancer, log) are
//! observed through a fail-open "probe" plugin whose step there is `fail`: each call is then
//! listed in the access log's `plugin_errors` while the request goes on unaffected.
//!
//! The binary tests expect `target/release/tollgate` to be built (`scripts/test` builds it
//! before `cargo test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_tests::binary::{Reaper, Tollgate, tollgate_binary};
use tollgate_tests::gateway::TestGateway;
use tollgate_tests::{guests, workspace_dir};

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A whole response as the client saw it.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("response body is not JSON ({err}): {}", self.text()))
    }

    /// The request headers the echo upstream received.
    fn upstream_headers(&self) -> Value {
        let echo = self.json();
        assert!(echo["headers"].is_object(), "not an echo body: {echo}");
        echo["headers"].clone()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// One client connection (HTTP/1.1 keep-alive or HTTP/2), for any number of requests.
struct Client {
    sender: Sender,
    /// `scheme://authority` for HTTP/2 request URIs; the `Host` for HTTP/1.1.
    scheme: &'static str,
    authority: String,
}

impl Client {
    /// HTTP/1.1 over plain TCP.
    async fn plain(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("gateway accepts");
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        Client {
            sender: Sender::H1(sender),
            scheme: "http",
            authority: format!("localhost:{}", addr.port()),
        }
    }

    /// HTTP over TLS to `localhost` (server trusted through `root`), offering `alpn`, optionally
    /// presenting `client` (chain PEM file, key PEM file). Speaks what ALPN chose.
    async fn tls(
        addr: SocketAddr,
        root: &Path,
        alpn: &[&[u8]],
        client: Option<(&Path, &Path)>,
    ) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("gateway accepts");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(root, alpn, client)));
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the gateway");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let sender = if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake");
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
            tokio::spawn(connection);
            Sender::H1(sender)
        };
        Client {
            sender,
            scheme: "https",
            authority: format!("localhost:{}", addr.port()),
        }
    }

    /// Sends `GET path` with `headers` and returns the response head (body still streaming).
    async fn send(&mut self, path: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
        let mut builder = Request::get(path);
        if matches!(self.sender, Sender::H2(_)) {
            builder = Request::get(format!("{}://{}{path}", self.scheme, self.authority));
        } else {
            builder = builder.header("host", &self.authority);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Empty::new()).expect("valid request");
        let sent = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await.expect("connection ready");
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await.expect("connection ready");
                sender.send_request(request).await
            }
        };
        sent.unwrap_or_else(|err| panic!("GET {path} failed: {err}"))
    }

    /// Sends `GET path` and reads the whole response (within 10 s).
    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let read = async {
            let response = self.send(path, headers).await;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .unwrap_or_else(|err| panic!("GET {path}: body failed: {err}"))
                .to_bytes();
            Reply {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            }
        };
        within(Duration::from_secs(10), read, &format!("GET {path}")).await
    }
}

/// One request on a new plaintext HTTP/1.1 connection.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::plain(addr).await.get(path, headers).await
}

fn tls_config(root: &Path, alpn: &[&[u8]], client: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).expect("root PEM") {
        roots
            .add(cert.expect("root certificate"))
            .expect("root added");
    }
    let builder = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_file_iter(chain)
                .expect("client chain PEM")
                .map(|cert| cert.expect("client certificate"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("client key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate accepted")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Sends `raw` on a new TCP connection and reads until the server closes it; returns the head
/// (status line and headers) and the body, de-chunked.
async fn raw_exchange(addr: SocketAddr, raw: &str) -> (String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.expect("gateway accepts");
    tcp.write_all(raw.as_bytes())
        .await
        .expect("request written");
    let mut bytes = Vec::new();
    within(
        Duration::from_secs(10),
        tcp.read_to_end(&mut bytes),
        "raw response",
    )
    .await
    .expect("response read");
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut body = bytes[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (head, body)
}

fn dechunk(mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = input
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&input[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
        let size = usize::from_str_radix(&size_text, 16).expect("hex chunk size");
        input = &input[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}

/// Runs `future`, failing the test with `what` if it takes longer than `limit`.
async fn within<T>(limit: Duration, future: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

/// Runs `curl` with `args` off the async threads; returns (exit success, stdout, stderr).
async fn curl(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new("curl")
            .args(&args)
            .output()
            .expect("curl runs (scripts/test installs it)");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("curl task")
}

// ---------------------------------------------------------------------------------------------
// Config snippets
// ---------------------------------------------------------------------------------------------

const HTTP_LISTENER: &str = r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
"#;

const HTTPS_LISTENER: &str = r#"
[[listeners]]
name = "https"
address = "127.0.0.1:0"
[[listeners.certificates]]
cert = "{{dir}}/server.pem"
key = "{{dir}}/server.key"
"#;

const ECHO_SERVICE: &str = r#"
[[services]]
name = "echo"
targets = ["{{echo}}"]
"#;

const DEFAULT_ROUTE: &str = r#"
[[routes]]
name = "default"
paths = ["/"]
service = "echo"
"#;

/// The plain listener, the echo service and one catch-all route, then `plugins`.
fn simple_config(plugins: &str) -> String {
    format!("{HTTP_LISTENER}{ECHO_SERVICE}{DEFAULT_ROUTE}{plugins}")
}

/// A `[[plugins]]` entry for the wasm file `path`, its config written as a TOML inline table;
/// `extra` is more `key = value` lines (`fail_open`, `route`, ...).
fn plugin(name: &str, path: &str, config: &Value, extra: &str) -> String {
    format!(
        "\n[[plugins]]\nname = \"{name}\"\npath = \"{path}\"\nconfig = {}\n{extra}\n",
        toml_inline(config)
    )
}

/// A scripted-guest plugin running `actions` (by phase, see tests/guests/scripted).
fn scripted(name: &str, actions: Value, extra: &str) -> String {
    plugin(
        name,
        guests::SCRIPTED,
        &json!({ "actions": actions }),
        extra,
    )
}

/// A fail-open scripted plugin that fails in each of `phases`, so every call of those phases is
/// listed in the access log's `plugin_errors` without affecting the request.
fn probe(phases: &[&str]) -> String {
    let actions: serde_json::Map<String, Value> = phases
        .iter()
        .map(|phase| {
            (
                (*phase).to_owned(),
                json!([{ "call": "fail", "message": format!("probe: {phase} ran") }]),
            )
        })
        .collect();
    scripted("probe", Value::Object(actions), "fail_open = true")
}

/// JSON as a one-line TOML value (inline tables, arrays, basic strings).
fn toml_inline(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(key, value)| {
                    format!("{} = {}", Value::String(key.clone()), toml_inline(value))
                })
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Null => panic!("TOML has no null"),
        other => other.to_string(),
    }
}

/// `plugin_errors` of a log entry as (plugin, phase) pairs.
fn plugin_errors(entry: &Value) -> Vec<(String, String)> {
    entry["plugin_errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    (
                        e["plugin"].as_str().unwrap_or_default().to_owned(),
                        e["phase"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pair(plugin: &str, phase: &str) -> (String, String) {
    (plugin.to_owned(), phase.to_owned())
}

/// An address nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("address");
    drop(socket);
    addr
}

/// A plugin in every phase: rewrite and access set request headers (and carry a value from
/// rewrite to access through the context), header_filter sets a response header, body_filter
/// renames the echo's `body_size` key; balancer and log are probed.
fn every_phase_plugins() -> String {
    let phases = scripted(
        "phases",
        json!({
            "rewrite": [
                { "call": "set_request_header", "name": "x-phase-rewrite", "value": "ran" },
                { "call": "context_set", "key": "carried", "value": "from-rewrite" }
            ],
            "access": [
                { "call": "set_request_header", "name": "x-phase-access", "value": "ran" },
                { "call": "context_get", "key": "carried", "to_header": "x-context" }
            ],
            "header_filter": [
                { "call": "set_response_header", "name": "x-phase-header-filter", "value": "ran" }
            ],
            "body_filter": [
                { "call": "set_body", "from": "\"body_size\"", "to": "\"body_filtered\"" }
            ]
        }),
        "order = 1",
    );
    format!("{phases}{}", probe(&["balancer", "log"]))
}

/// What [`every_phase_plugins`] leaves visible on one proxied request.
fn assert_every_phase_ran(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-phase-header-filter"), Some("ran"));
    let upstream = reply.upstream_headers();
    assert_eq!(upstream["x-phase-rewrite"], "ran", "{upstream}");
    assert_eq!(upstream["x-phase-access"], "ran", "{upstream}");
    assert_eq!(upstream["x-context"], "from-rewrite", "{upstream}");
    let echo = reply.json();
    assert!(
        echo.get("body_filtered").is_some(),
        "body_filter ran: {echo}"
    );
    assert!(echo.get("body_size").is_none(), "{echo}");
}

fn assert_log_shows_every_phase(entry: &Value) {
    assert_eq!(entry["response"]["status"], 200, "{entry}");
    assert_eq!(entry["response"]["headers"]["x-phase-header-filter"], "ran");
    assert_eq!(
        plugin_errors(entry),
        [pair("probe", "balancer"), pair("probe", "log")],
        "{entry}"
    );
    assert_eq!(entry["route"]["name"], "default");
    assert_eq!(entry["service"]["name"], "echo");
}

// ---------------------------------------------------------------------------------------------
// Protocols and phases
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_serves_several_requests_on_one_connection_through_every_phase() {
    let gateway = TestGateway::start(&simple_config(&every_phase_plugins())).await;
    let mut client = Client::plain(gateway.addr("http")).await;
    for index in 0..3 {
        let reply = client.get(&format!("/keep-alive/{index}"), &[]).await;
        assert_eq!(reply.version, Version::HTTP_11);
        assert_every_phase_ran(&reply);
        assert_eq!(reply.json()["path"], format!("/keep-alive/{index}"));
    }
    let entries = gateway.log_entries(3).await;
    assert_eq!(entries.len(), 3);
    for entry in &entries {
        assert_log_shows_every_phase(entry);
        assert!(entry["request"].get("tls").is_none(), "{entry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_negotiated_by_alpn_runs_every_phase() {
    let config = format!(
        "{HTTPS_LISTENER}{ECHO_SERVICE}{DEFAULT_ROUTE}{}",
        every_phase_plugins()
    );
    let gateway = TestGateway::start(&config).await;
    let mut client = Client::tls(
        gateway.addr("https"),
        &gateway.pki.root,
        &[b"h2", b"http/1.1"],
        None,
    )
    .await;
    // Two streams on the one HTTP/2 connection.
    for index in 0..2 {
        let reply = client.get(&format!("/h2/{index}"), &[]).await;
        assert_eq!(reply.version, Version::HTTP_2);
        assert_every_phase_ran(&reply);
        let echo = reply.json();
        // The upstream leg is HTTP/1.1 whatever the client spoke.
        assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    }
    let entries = gateway.log_entries(2).await;
    for entry in &entries {
        assert_log_shows_every_phase(entry);
        assert_eq!(entry["request"]["tls"]["client_verify"], "NONE", "{entry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_reaches_the_upstream_through_every_phase() {
    let config = format!(
        "{HTTPS_LISTENER}{ECHO_SERVICE}{DEFAULT_ROUTE}{}",
        every_phase_plugins()
    );
    let gateway = TestGateway::start(&config).await;
    let port = gateway.addr("https").port();
    let (ok, stdout, stderr) = curl(vec![
        "-sS".into(),
        "--http2".into(),
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
        "--cacert".into(),
        gateway.pki.root.display().to_string(),
        "-i".into(),
        format!("https://localhost:{port}/curl-h2"),
    ])
    .await;
    assert!(ok, "curl failed: {stderr}");
    let (head, body) = stdout.split_once("\r\n\r\n").expect("headers and body");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-phase-header-filter: ran"),
        "{head}"
    );
    let reply = Reply {
        status: StatusCode::OK,
        version: Version::HTTP_2,
        headers: HeaderMap::new(),
        body: Bytes::from(body.to_owned()),
    };
    let upstream = reply.upstream_headers();
    assert_eq!(upstream["x-phase-rewrite"], "ran");
    assert_eq!(upstream["x-phase-access"], "ran");
    assert_eq!(upstream["x-context"], "from-rewrite");
    assert!(reply.json().get("body_filtered").is_some());
    let entries = gateway.log_entries(1).await;
    assert_log_shows_every_phase(&entries[0]);
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_filter_changes_a_streamed_body_which_is_sent_chunked() {
    let rewrite_b = scripted(
        "upper-b",
        json!({ "body_filter": [{ "call": "set_body", "from": "b", "to": "B" }] }),
        "",
    );
    let gateway = TestGateway::start(&simple_config(&rewrite_b)).await;
    let mut client = Client::plain(gateway.addr("http")).await;

    let reply = client.get("/stream?chunks=4&size=8", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "aaaaaaaaBBBBBBBBccccccccdddddddd");
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));

    // A body the upstream sent with a content-length loses it too: the filter may change it.
    let reply = client.get("/with-length", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.json()["path"], "/with-length");

    let entries = gateway.log_entries(2).await;
    assert!(plugin_errors(&entries[0]).is_empty(), "{}", entries[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_body_filter_plugins_content_length_passes_through() {
    // (The scripted and misbehave guests declare body_filter, so no plugin at all here.)
    let gateway = TestGateway::start(&simple_config("")).await;
    let reply = get(gateway.addr("http"), "/with-length", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    assert_eq!(reply.header("transfer-encoding"), None);

    // A chunked upstream body stays chunked and whole.
    let reply = get(gateway.addr("http"), "/stream?chunks=3&size=4", &[]).await;
    assert_eq!(reply.text(), "aaaabbbbcccc");
}

// ---------------------------------------------------------------------------------------------
// Upstream targets: retries and the balancer
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_target_is_retried_on_the_next_and_the_balancer_runs_per_attempt() {
    let dead = closed_port().await;
    let config = format!(
        "{HTTP_LISTENER}\n[[services]]\nname = \"echo\"\ntargets = [\"{dead}\", \"{{{{echo}}}}\"]\n\
         {DEFAULT_ROUTE}{}",
        probe(&["balancer"])
    );
    let gateway = TestGateway::start(&config).await;
    let reply = get(gateway.addr("http"), "/retry", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/retry");

    let entry = &gateway.log_entries(1).await[0];
    let tries: Vec<(String, u64)> = entry["tries"]
        .as_array()
        .expect("tries")
        .iter()
        .map(|t| {
            (
                t["ip"].as_str().unwrap().to_owned(),
                t["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tries,
        [
            ("127.0.0.1".to_owned(), u64::from(dead.port())),
            ("127.0.0.1".to_owned(), u64::from(gateway.echo.port())),
        ],
        "{entry}"
    );
    assert_eq!(entry["service"]["port"], gateway.echo.port(), "{entry}");
    assert_eq!(
        plugin_errors(entry),
        [pair("probe", "balancer"), pair("probe", "balancer")],
        "one balancer run per attempt: {entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_chosen_by_set_target_wins_over_the_round_robin_one() {
    let dead = closed_port().await;
    let chooser = scripted(
        "chooser",
        json!({ "balancer": [{ "call": "set_target", "target": "{{echo}}", "propagate": true }] }),
        "",
    );
    let config = format!(
        "{HTTP_LISTENER}\n[[services]]\nname = \"dead\"\ntargets = [\"{dead}\"]\n\
         [[routes]]\nname = \"default\"\nservice = \"dead\"\n{chooser}"
    );
    let gateway = TestGateway::start(&config).await;
    let reply = get(gateway.addr("http"), "/chosen", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let entry = &gateway.log_entries(1).await[0];
    assert_eq!(entry["tries"].as_array().map(Vec::len), Some(1), "{entry}");
    assert_eq!(entry["tries"][0]["port"], gateway.echo.port(), "{entry}");
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_a_404_with_kongs_json_message() {
    let config = format!(
        "{HTTP_LISTENER}{ECHO_SERVICE}\n[[routes]]\nname = \"only\"\npaths = [\"/only\"]\n\
         service = \"echo\"\n"
    );
    let gateway = TestGateway::start(&config).await;
    let reply = get(gateway.addr("http"), "/elsewhere", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        reply.json(),
        json!({ "message": "no Route matched with those values" })
    );
    let entry = &gateway.log_entries(1).await[0];
    assert_eq!(entry["response"]["status"], 404);
    assert!(entry.get("route").is_none(), "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_is_a_502() {
    let dead = closed_port().await;
    let config = format!(
        "{HTTP_LISTENER}\n[[services]]\nname = \"echo\"\ntargets = [\"{dead}\"]\n{DEFAULT_ROUTE}"
    );
    let gateway = TestGateway::start(&config).await;
    let reply = get(gateway.addr("http"), "/refused", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json(),
        json!({ "message": "An invalid response was received from the upstream server" })
    );
    let entry = &gateway.log_entries(1).await[0];
    assert_eq!(entry["response"]["status"], 502);
    assert_eq!(entry["tries"].as_array().map(Vec::len), Some(1), "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_is_a_504_after_the_read_timeout() {
    // Accepts connections and holds them open without ever answering.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("address");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let config = format!(
        "{HTTP_LISTENER}\n[[services]]\nname = \"echo\"\ntargets = [\"{silent_addr}\"]\n\
         read_timeout = \"200ms\"\n{DEFAULT_ROUTE}"
    );
    let gateway = TestGateway::start(&config).await;
    let started = Instant::now();
    let reply = get(gateway.addr("http"), "/silent", &[]).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.json(),
        json!({ "message": "The upstream server is timing out" })
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(gateway.log_entries(1).await[0]["response"]["status"], 504);
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_in_access_is_a_500_logged_with_plugin_and_phase() {
    let failing = scripted(
        "failing",
        json!({ "access": [{ "call": "fail", "message": "access exploded" }] }),
        "",
    );
    let gateway = TestGateway::start(&simple_config(&failing)).await;
    let reply = get(gateway.addr("http"), "/fails", &[]).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.json(),
        json!({ "message": "An unexpected error occurred" })
    );
    let entry = &gateway.log_entries(1).await[0];
    assert_eq!(entry["response"]["status"], 500);
    assert_eq!(plugin_errors(entry), [pair("failing", "access")], "{entry}");
    let message = entry["plugin_errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("access exploded"), "{message}");
    assert_eq!(entry["upstream_uri"], "", "the upstream was not contacted");
    // The phase is named as everywhere else in the contract (`access`, as host/src/log.rs
    // documents and unit-tests), not by the error's display form (`access phase`).
    assert_eq!(entry["plugin_errors"][0]["phase"], "access", "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_plugin_failing_in_access_lets_the_request_through() {
    let failing = scripted(
        "failing",
        json!({ "access": [{ "call": "fail", "message": "access exploded" }] }),
        "fail_open = true",
    );
    let gateway = TestGateway::start(&simple_config(&failing)).await;
    let reply = get(gateway.addr("http"), "/fails-open", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/fails-open");
    let entry = &gateway.log_entries(1).await[0];
    assert_eq!(entry["response"]["status"], 200);
    assert_eq!(plugin_errors(entry), [pair("failing", "access")], "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_only_their_request_and_the_gateway_keeps_serving() {
    let mut config = format!("{HTTP_LISTENER}{ECHO_SERVICE}{DEFAULT_ROUTE}");
    for mode in ["loop", "grow", "trap"] {
        config.push_str(&format!(
            "\n[[routes]]\nname = \"{mode}\"\npaths = [\"/{mode}\"]\nservice = \"echo\"\n"
        ));
        config.push_str(&plugin(
            &format!("misbehave-{mode}"),
            guests::MISBEHAVE,
            &json!({ "phase": "access", "mode": mode }),
            &format!("route = \"{mode}\"\nmemory_limit = \"16MiB\"\ntime_limit = \"100ms\""),
        ));
    }
    let gateway = TestGateway::start(&config).await;
    let addr = gateway.addr("http");
    let mut expected_logs = 0;
    for round in 0..2 {
        for mode in ["loop", "grow", "trap"] {
            let started = Instant::now();
            let reply = get(addr, &format!("/{mode}"), &[]).await;
            assert_eq!(
                reply.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{mode}: {}",
                reply.text()
            );
            assert_eq!(
                reply.json(),
                json!({ "message": "An unexpected error occurred" })
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{mode} took {:?}",
                started.elapsed()
            );
            // The next request, on a well-behaved route, is served.
            let reply = get(addr, &format!("/good/{round}/{mode}"), &[]).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "after {mode}: {}",
                reply.text()
            );
            expected_logs += 2;
        }
    }
    let entries = gateway.log_entries(expected_logs).await;
    for mode in ["loop", "grow", "trap"] {
        let failed: Vec<&Value> = entries
            .iter()
            .filter(|e| e["request"]["uri"] == format!("/{mode}"))
            .collect();
        assert_eq!(failed.len(), 2, "{mode}");
        for entry in failed {
            assert_eq!(entry["response"]["status"], 500);
            assert_eq!(
                plugin_errors(entry),
                [pair(&format!("misbehave-{mode}"), "access")],
                "{entry}"
            );
        }
    }
    // Still serving, also on a fresh keep-alive connection.
    let mut client = Client::plain(addr).await;
    for _ in 0..3 {
        assert_eq!(client.get("/still-up", &[]).await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_filter_failure_ends_the_response_instead_of_hanging_the_client() {
    let failing = scripted(
        "failing-body",
        json!({ "body_filter": [{ "call": "fail", "message": "body exploded" }] }),
        "route = \"stream\"",
    );
    let stream_route =
        "\n[[routes]]\nname = \"stream\"\npaths = [\"/stream\"]\nservice = \"echo\"\n";
    let gateway = TestGateway::start(&simple_config(&format!("{stream_route}{failing}"))).await;
    let mut client = Client::plain(gateway.addr("http")).await;
    let response = within(
        Duration::from_secs(10),
        client.send("/stream?chunks=3&size=8", &[]),
        "response head",
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    // The body ends (an error or a truncated body) rather than hanging.
    let body = within(
        Duration::from_secs(5),
        response.into_body().collect(),
        "the failed body to end",
    )
    .await;
    if let Ok(body) = body {
        assert!(
            body.to_bytes().len() < 24,
            "the body is truncated, not completed"
        );
    }
    let entry = &gateway.log_entries(1).await[0];
    assert_eq!(
        plugin_errors(entry),
        [pair("failing-body", "body_filter")],
        "{entry}"
    );
    // The gateway still serves new connections (on a route without the failing filter).
    let reply = get(gateway.addr("http"), "/after", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["path"], "/after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_phase_failure_does_not_affect_the_response() {
    let failing = scripted(
        "failing-log",
        json!({ "log": [{ "call": "fail", "message": "log exploded" }] }),
        "",
    );
    let gateway = TestGateway::start(&simple_config(&failing)).await;
    let mut client = Client::plain(gateway.addr("http")).await;
    for _ in 0..2 {
        let reply = client.get("/stream?chunks=3&size=8", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "aaaaaaaabbbbbbbbcccccccc");
    }
    let entries = gateway.log_entries(2).await;
    for entry in &entries {
        assert_eq!(entry["response"]["status"], 200);
        assert_eq!(
            plugin_errors(entry),
            [pair("failing-log", "log")],
            "{entry}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_reach_the_upstream_and_hop_by_hop_headers_do_not() {
    let gateway = TestGateway::start(&simple_config("")).await;
    let addr = gateway.addr("http");
    let request = "GET /forwarded?q=1 HTTP/1.1\r\n\
                   Host: api.example.test:8080\r\n\
                   Connection: x-foo, close\r\n\
                   x-foo: bar\r\n\
                   Keep-Alive: timeout=5\r\n\
                   te: trailers\r\n\
                   upgrade: websocket\r\n\
                   x-forwarded-for: 203.0.113.9\r\n\
                   x-forwarded-proto: gopher\r\n\
                   x-forwarded-host: evil.example\r\n\
                   x-forwarded-port: 1\r\n\
                   x-kept: yes\r\n\
                   \r\n";
    let (head, body) = raw_exchange(addr, request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
    let upstream = &echo["headers"];
    // The client is not in `trusted_ips`: its chain is dropped, not extended (tests/hostile.rs
    // covers a trusted peer).
    assert_eq!(upstream["x-forwarded-for"], "127.0.0.1", "{upstream}");
    assert_eq!(upstream["x-forwarded-proto"], "http", "{upstream}");
    assert_eq!(
        upstream["x-forwarded-host"], "api.example.test",
        "{upstream}"
    );
    assert_eq!(
        upstream["x-forwarded-port"],
        addr.port().to_string(),
        "{upstream}"
    );
    assert_eq!(upstream["x-kept"], "yes");
    for hop in ["x-foo", "te", "upgrade", "keep-alive"] {
        assert!(
            upstream.get(hop).is_none(),
            "{hop} reached the upstream: {upstream}"
        );
    }
    if let Some(connection) = upstream.get("connection") {
        assert!(
            !connection.as_str().unwrap_or("").contains("x-foo"),
            "{upstream}"
        );
    }
    // Host names the upstream target, as Kong's preserve_host off.
    assert_eq!(upstream["host"], gateway.echo.to_string(), "{upstream}");
    assert_eq!(echo["query"], "q=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_headers_are_redacted_in_the_access_log() {
    let gateway = TestGateway::start(&simple_config("")).await;
    let reply = get(
        gateway.addr("http"),
        "/private",
        &[
            ("authorization", "Bearer s3cret-token"),
            ("proxy-authorization", "Basic cHJveHk6czNjcmV0"),
            ("x-visible", "shown"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The upstream still gets the credentials; only the log hides them.
    assert_eq!(
        reply.upstream_headers()["authorization"],
        "Bearer s3cret-token"
    );
    let entry = &gateway.log_entries(1).await[0];
    assert_eq!(entry["request"]["headers"]["authorization"], "REDACTED");
    assert_eq!(
        entry["request"]["headers"]["proxy-authorization"],
        "REDACTED"
    );
    assert_eq!(entry["request"]["headers"]["x-visible"], "shown");
    let line = std::fs::read_to_string(gateway.access_log()).expect("log");
    assert!(!line.contains("s3cret"), "{line}");
    assert!(!line.contains("cHJveHk6czNjcmV0"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_refuses_new_connections_and_exits_0() {
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let echo_addr = echo.local_addr().expect("echo address");
    tokio::spawn(tollgate::proxy::echo::serve_echo(
        echo,
        std::future::pending(),
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let mut gateway = Tollgate::run(
        dir.path(),
        &format!(
            "[access_log]\ntarget = \"{}\"\n{HTTP_LISTENER}\n[[services]]\nname = \"echo\"\n\
             targets = [\"{echo_addr}\"]\n{DEFAULT_ROUTE}",
            log.display()
        ),
    );
    let addr = gateway.addr("http");

    let mut client = Client::plain(addr).await;
    let response = within(
        Duration::from_secs(10),
        client.send("/stream?chunks=5&size=10&delay_ms=100", &[]),
        "slow response head",
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let signalled = Instant::now();
    gateway.signal("TERM");
    // The listener closes at once; the in-flight body keeps streaming.
    let refused = within(
        Duration::from_secs(5),
        async {
            loop {
                if TcpStream::connect(addr).await.is_err() {
                    break signalled.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
        "new connections to be refused",
    )
    .await;
    let body = within(
        Duration::from_secs(10),
        response.into_body().collect(),
        "the in-flight body",
    )
    .await
    .expect("the in-flight body completes")
    .to_bytes();
    let finished = signalled.elapsed();
    assert_eq!(
        body,
        Bytes::from("aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeee")
    );
    assert!(
        refused < finished,
        "new connections were refused ({refused:?}) while the request was in flight \
         (finished {finished:?})"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.wait(Duration::from_secs(20));
        (status, gateway)
    })
    .await
    .expect("wait task");
    let (status, _gateway) = status;
    let status = status.expect("the gateway exits after draining");
    assert_eq!(status.code(), Some(0), "{status}");
    // The drained request was logged before exit.
    let text = std::fs::read_to_string(&log).expect("access log");
    assert!(text.contains("/stream?chunks=5"), "{text}");
}

/// Runs `tollgate check --config path`; returns (exit code, stdout, stderr).
fn check(path: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(tollgate_binary())
        .args(["check", "--config"])
        .arg(path)
        .env("NO_COLOR", "1")
        .output()
        .expect("tollgate check runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn tollgate_check_names_file_line_column_and_field_of_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"[[listeners]]
name = "http"
address = "not-an-address"

[[services]]
name = "echo"
targets = ["127.0.0.1"]
retries = "many"

[[routes]]
name = "default"
service = "missing"
"#,
    )
    .expect("config written");
    let (code, stdout, stderr) = check(&path);
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    let prefix = format!("{}:", path.display());
    let problems: Vec<(usize, usize, String)> = stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let mut parts = rest.splitn(4, ": ");
            let position = parts.next()?;
            let (line_no, column) = position.split_once(':')?;
            let field = parts.next()?.to_owned();
            parts.next()?; // a message follows the field
            Some((line_no.parse().ok()?, column.parse().ok()?, field))
        })
        .collect();
    assert!(problems.len() >= 3, "several problems expected:\n{stderr}");
    let field_at = |field: &str| -> (usize, usize) {
        problems
            .iter()
            .find(|(_, _, f)| f == field)
            .map(|(l, c, _)| (*l, *c))
            .unwrap_or_else(|| panic!("no problem reported for {field}:\n{stderr}"))
    };
    assert_eq!(field_at("listeners[0].address").0, 3, "{stderr}");
    assert_eq!(field_at("services[0].targets[0]").0, 7, "{stderr}");
    assert_eq!(field_at("routes[0].service").0, 12, "{stderr}");
    for (line, column, _) in &problems {
        assert!(*line >= 1 && *column >= 1);
    }
}

#[test]
fn tollgate_check_accepts_a_good_config_and_names_a_plugin_that_rejects_its_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.toml");
    let base = format!(
        "{HTTP_LISTENER}\n[[services]]\nname = \"echo\"\ntargets = [\"127.0.0.1:9\"]\n\
         {DEFAULT_ROUTE}"
    );
    let fine = scripted(
        "fine",
        json!({ "access": [{ "call": "log", "message": "hi" }] }),
        "",
    );
    std::fs::write(&good, format!("{base}{fine}")).expect("config written");
    let (code, stdout, stderr) = check(&good);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}: ok", good.display())),
        "{stdout}"
    );

    let rejected = dir.path().join("rejected.toml");
    let picky = scripted(
        "picky",
        json!({ "access": [{ "call": "no-such-call" }] }),
        "",
    );
    std::fs::write(&rejected, format!("{base}{picky}")).expect("config written");
    let (code, stdout, stderr) = check(&rejected);
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("picky"), "names the plugin: {stderr}");
    assert!(
        stderr.contains("invalid scripted config"),
        "carries the plugin's message: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// The README's demo
// ---------------------------------------------------------------------------------------------

/// Runs one of the demo's printed curl command lines, adding flags to capture the status;
/// returns (status, body).
async fn run_printed_curl(command: &str) -> (u16, String) {
    let mut args: Vec<String> = command
        .split_whitespace()
        .skip(1) // "curl"
        .map(str::to_owned)
        .collect();
    args.extend([
        "-sS".to_owned(),
        "-w".to_owned(),
        "\n%{http_code}".to_owned(),
    ]);
    let (ok, stdout, stderr) = curl(args).await;
    assert!(ok, "`{command}` failed: {stderr}");
    let (body, status) = stdout.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status code"), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_does_what_its_printed_curl_commands_say() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo_dir = dir.path().join("demo-data");
    let stderr = std::fs::File::create(dir.path().join("demo.stderr")).expect("stderr file");
    let mut command = Command::new(workspace_dir().join("scripts/demo"));
    command
        .arg("--dir")
        .arg(&demo_dir)
        .args(["--https", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("scripts/demo runs");
    let mut demo = Reaper { child, group: true };

    // Read its instructions: the curl lines and the access log's path.
    let stdout = demo.child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut curls = Vec::new();
    let mut access_log = None;
    let mut previous = String::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines_rx.recv_timeout(left) {
            Ok(line) => line,
            Err(err) => {
                let log = std::fs::read_to_string(dir.path().join("demo.stderr"));
                panic!("the demo printed no instructions ({err}); stderr:\n{log:?}");
            }
        };
        let line = line.trim().to_owned();
        if line.starts_with("curl ") {
            curls.push(line.clone());
        }
        if previous.starts_with("Access log") {
            access_log = line.strip_prefix("tail -f ").map(PathBuf::from);
        }
        if line.contains("Ctrl-C stops the gateway") {
            break;
        }
        previous = line;
    }
    let access_log = access_log.expect("the demo names its access log");
    assert_eq!(curls.len(), 5, "{curls:#?}");
    let find = |path: &str, with_cert: bool| -> String {
        curls
            .iter()
            .find(|c| {
                c.contains("https://") && c.ends_with(path) && c.contains("--cert ") == with_cert
            })
            .unwrap_or_else(|| panic!("no curl for {path} (cert: {with_cert}): {curls:#?}"))
            .clone()
    };

    // TLS, no client certificate: 200, and no certificate headers at the echo.
    let (status, body) = run_printed_curl(&find("/hello", false)).await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).expect("echo JSON");
    let headers = echo["headers"].as_object().expect("headers");
    assert!(
        !headers.keys().any(|k| k.starts_with("x-client-cert")),
        "{echo}"
    );

    // With the certificate: the chain, serial, DNs and fingerprint reach the echo.
    let (status, body) = run_printed_curl(&find("/hello", true)).await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).expect("echo JSON");
    for header in [
        "x-client-cert",
        "x-client-cert-chain",
        "x-client-cert-serial",
        "x-client-cert-subject-dn",
        "x-client-cert-issuer-dn",
        "x-client-cert-fingerprint",
    ] {
        assert!(echo["headers"].get(header).is_some(), "{header}: {echo}");
    }
    assert!(
        echo["headers"]["x-client-cert-subject-dn"]
            .as_str()
            .unwrap()
            .contains("demo-client"),
        "{echo}"
    );

    // /secure: 401 without a certificate, consumer alice with one.
    let (status, body) = run_printed_curl(&find("/secure", false)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = run_printed_curl(&find("/secure", true)).await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(echo["headers"]["x-consumer-username"], "alice", "{echo}");

    // Plaintext.
    let plain = curls
        .iter()
        .find(|c| c.contains("http://"))
        .expect("a plaintext curl");
    let (status, body) = run_printed_curl(plain).await;
    assert_eq!(status, 200, "{body}");

    // One JSON line per request; request.tls.client_verify on the TLS ones only.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries: Vec<Value> = loop {
        let entries = tollgate_tests::gateway::read_log(&access_log);
        if entries.len() >= 5 || Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(entries.len(), 5, "{entries:#?}");
    let verify: Vec<Option<&str>> = entries
        .iter()
        .map(|e| e["request"]["tls"]["client_verify"].as_str())
        .collect();
    assert_eq!(
        verify,
        [
            Some("NONE"),
            Some("SUCCESS"),
            Some("NONE"),
            Some("SUCCESS"),
            None
        ],
        "{entries:#?}"
    );
    assert!(entries[4]["request"].get("tls").is_none());
    let statuses: Vec<u64> = entries
        .iter()
        .map(|e| e["response"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 401, 200, 200]);

    demo.signal("TERM");
    let exited = tokio::task::spawn_blocking(move || demo.wait(Duration::from_secs(20)))
        .await
        .expect("wait task");
    assert!(exited.is_some(), "the demo stops on SIGTERM");
}

#[test]
fn tollgate_check_names_plugins_whose_memory_starts_above_what_a_slot_keeps_resident() {
    use tollgate_tests::examples_support::plugin_path;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tollgate.toml");
    let config = format!(
        r#"[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[services]]
name = "echo"
targets = ["127.0.0.1:9"]

[[routes]]
name = "default"
paths = ["/"]
service = "echo"

[[plugins]]
name = "tls-metadata-headers"
path = {small:?}

[[plugins]]
name = "py-client-cert-header"
path = {python:?}
memory_limit = "64MiB"
time_limit = "1s"
"#,
        small = plugin_path("tls-metadata-headers"),
        python = plugin_path("py-client-cert-header"),
    );
    std::fs::write(&path, config).expect("config written");
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    // The Rust example, linked with a 64 KiB stack (.cargo/config.toml), fits; CPython does not.
    assert!(
        !stdout.contains("plugin tls-metadata-headers: its memory starts at"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|line| line.contains("plugin py-client-cert-header: its memory starts at"))
        .unwrap_or_else(|| panic!("no line about the Python plugin's memory:\n{stdout}"));
    assert!(
        line.contains("above the 128 KiB a pool slot keeps resident"),
        "{line}"
    );
}
