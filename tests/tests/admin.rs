//! The admin listener through the `tollgate` binary: `/status` (ready, the config's hash),
//! `POST /reload`, and `/metrics` after a known set of requests (a plugin that exits, a 404, an
//! upstream that is down, a trapping plugin, TLS handshakes with and without a client
//! certificate, a failed handshake): the counts are those, and the text parses as Prometheus
//! (OpenMetrics) exposition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tollgate_tests::binary::{Tollgate, echo_route_config};
use tollgate_tests::clients::{curl, parse_response, plain_get};
use tollgate_tests::echo_upstream;
use tollgate_tests::{TestPki, guests};

/// An unused local port: bound, then released.
fn closed_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address")
}

fn config(echo: SocketAddr, down: SocketAddr, extra_route: &str) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[listeners]]
name = "https"
address = "127.0.0.1:0"
client_ca = "pki/ca-bundle.pem"
[[listeners.certificates]]
cert = "pki/server.pem"
key = "pki/server.key"

[[services]]
name = "echo"
targets = ["{echo}"]

[[services]]
name = "down"
targets = ["{down}"]
connect_timeout = "2s"

[[routes]]
name = "ok"
paths = ["/ok"]
service = "echo"

[[routes]]
name = "deny"
paths = ["/deny"]
service = "echo"

[[routes]]
name = "down"
paths = ["/down"]
service = "down"

[[routes]]
name = "trap"
paths = ["/trap"]
service = "echo"
{extra_route}
[[plugins]]
name = "ask"
path = "{scripted}"
config = {{ actions = {{ certificate = [{{ call = "request_client_certificate" }}] }} }}

[[plugins]]
name = "deny"
path = "{scripted}"
route = "deny"
config = {{ actions = {{ access = [{{ call = "exit", status = 403, body = "no" }}] }} }}

[[plugins]]
name = "trapper"
path = "{misbehave}"
route = "trap"
config = {{ mode = "trap" }}
"#,
        scripted = guests::SCRIPTED,
        misbehave = guests::MISBEHAVE,
    )
}

/// `method path` on the admin listener: status and body.
async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("admin");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut raw)
        .await
        .expect("read");
    let reply = parse_response(&raw).expect("an HTTP response");
    (reply.status, String::from_utf8(reply.body).expect("UTF-8"))
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the OpenMetrics text exposition strictly enough to catch a malformed line: `# TYPE`,
/// `# HELP`, `# UNIT` and a final `# EOF`; each sample `name{label="value",...} number`, its
/// family declared by a `# TYPE` line before it.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut families = BTreeSet::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    for line in text.lines() {
        assert!(!saw_eof, "a line after # EOF: {line}");
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let keyword = words.next().unwrap();
            let family = words
                .next()
                .unwrap_or_else(|| panic!("bad comment: {line}"));
            match keyword {
                "TYPE" => {
                    let kind = words.next().unwrap_or_default();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info"
                        ]
                        .contains(&kind),
                        "bad type: {line}"
                    );
                    families.insert(family.to_owned());
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            value => value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (key, value) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(
                        key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name: {line}"
                    );
                    labels.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| families.contains(*family))
            .unwrap_or(&name);
        assert!(families.contains(family), "sample without a # TYPE: {line}");
        samples.push((name, labels, value));
    }
    assert!(saw_eof, "no # EOF");
    samples
}

/// The value of the sample `name` whose labels include `wanted`; 0 when there is none.
fn value(samples: &[Sample], name: &str, wanted: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && wanted
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, value)| value)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reload_and_metrics_after_known_traffic() {
    let echo = echo_upstream().await;
    let down = closed_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path();
    std::fs::create_dir(path.join("pki")).expect("pki dir");
    let pki = TestPki::new().write(&path.join("pki")).expect("pki");
    let gateway = tokio::task::block_in_place(|| Tollgate::run(path, &config(echo, down, "")));
    let (http, https, admin_addr) = (
        gateway.addr("http"),
        gateway.addr("https"),
        gateway.addr("admin"),
    );

    // /status: ready, with the hash of the file it runs.
    let sha = |text: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_owned()
    };
    let (status, body) = admin(admin_addr, "GET", "/status").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON status");
    assert_eq!(json["status"], "ready");
    assert_eq!(json["ready"], true);
    let first = std::fs::read_to_string(&gateway.config).unwrap();
    assert_eq!(json["config_hash"], sha(&first));

    // The known traffic.
    let get = async |path: &str| plain_get(http, "localhost", path).await.expect(path).status;
    for _ in 0..3 {
        assert_eq!(get("/ok").await, 200);
    }
    assert_eq!(get("/deny").await, 403);
    assert_eq!(get("/deny").await, 403);
    assert_eq!(get("/nowhere").await, 404);
    assert_eq!(get("/down").await, 502, "connection refused");
    assert_eq!(get("/trap").await, 500, "the plugin trapped");
    let with_cert = curl(
        &pki,
        https,
        "/ok",
        &[
            "--cert",
            &pki.client_chain.display().to_string(),
            "--key",
            &pki.client_key.display().to_string(),
            "--tlsv1.3",
        ],
    )
    .await;
    assert_eq!(with_cert.code, Some(0), "{}", with_cert.all());
    let without_cert = curl(&pki, https, "/ok", &["--tlsv1.2", "--tls-max", "1.2"]).await;
    assert_eq!(without_cert.code, Some(0), "{}", without_cert.all());
    // Not TLS at all: the handshake fails.
    let mut junk = tokio::net::TcpStream::connect(https).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut junk, &mut sink),
    )
    .await;

    // A reload through the admin listener: a new route, a new hash.
    let second = config(
        echo,
        down,
        "\n[[routes]]\nname = \"new\"\npaths = [\"/new\"]\nservice = \"echo\"\n",
    );
    std::fs::write(&gateway.config, &second).unwrap();
    let (status, body) = admin(admin_addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get("/new").await, 200);
    let (_, body) = admin(admin_addr, "GET", "/status").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["config_hash"], sha(&second));
    // A broken one: 422 with the problem's line and field, nothing changes.
    std::fs::write(
        &gateway.config,
        second.replace("name = \"new\"", "name = \"\""),
    )
    .unwrap();
    let (status, body) = admin(admin_addr, "POST", "/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("routes[4].name"), "{body}");
    assert_eq!(get("/new").await, 200);

    // The log phase runs after the response: give the last requests' metrics a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = admin(admin_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_exposition(&text);
    let requests = |route: &str, class: &str| {
        value(
            &samples,
            "tollgate_requests_total",
            &[
                ("route", route),
                ("status_class", class),
                ("protocol", "http1"),
            ],
        )
    };
    assert_eq!(requests("ok", "2xx"), 5.0, "3 plain + 2 TLS\n{text}");
    assert_eq!(requests("deny", "4xx"), 2.0);
    assert_eq!(requests("(none)", "4xx"), 1.0);
    assert_eq!(requests("down", "5xx"), 1.0);
    assert_eq!(requests("trap", "5xx"), 1.0);
    assert_eq!(requests("new", "2xx"), 2.0);
    assert_eq!(
        value(
            &samples,
            "tollgate_request_duration_seconds_count",
            &[("route", "ok")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_upstream_duration_seconds_count",
            &[("route", "ok")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_tls_handshakes_total",
            &[
                ("listener", "https"),
                ("version", "TLSv1.3"),
                ("resumed", "false"),
                ("client_verify", "SUCCESS")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_tls_handshakes_total",
            &[
                ("listener", "https"),
                ("version", "TLSv1.2"),
                ("client_verify", "NONE")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_tls_handshake_failures_total",
            &[("listener", "https")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_plugin_call_duration_seconds_count",
            &[("plugin", "deny"), ("phase", "access")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_plugin_call_duration_seconds_count",
            &[("plugin", "ask"), ("phase", "certificate")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_plugin_failures_total",
            &[("plugin", "trapper"), ("kind", "trap")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_reloads_total",
            &[("outcome", "success")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tollgate_reloads_total",
            &[("outcome", "failure")]
        ),
        1.0
    );
    assert!(value(&samples, "tollgate_plugin_instance_slots", &[]) > 0.0);
    assert!(
        samples
            .iter()
            .any(|(name, _, _)| name == "tollgate_plugin_instances_live")
    );
    assert!(
        samples
            .iter()
            .any(|(name, labels, _)| name == "tollgate_open_connections"
                && labels.get("listener").map(String::as_str) == Some("http")),
        "{text}"
    );
    gateway.signal("TERM");
}

/// With `cert`, `key` and `client_ca`, the admin listener speaks TLS and refuses a client
/// without a certificate.
#[tokio::test(flavor = "multi_thread")]
async fn admin_over_tls_requires_a_client_certificate() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path();
    std::fs::create_dir(path.join("pki")).expect("pki dir");
    let pki = TestPki::new().write(&path.join("pki")).expect("pki");
    let config = config(echo, closed_port(), "").replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        "[admin]\naddress = \"127.0.0.1:0\"\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
         client_ca = \"pki/ca-bundle.pem\"\n",
    );
    assert!(config.contains("client_ca = \"pki/ca-bundle.pem\"\n\n[[listeners]]"));
    let gateway = tokio::task::block_in_place(|| Tollgate::run(path, &config));
    let admin_addr = gateway.addr("admin");
    let with_cert = curl(
        &pki,
        admin_addr,
        "/status",
        &[
            "--cert",
            &pki.client_chain.display().to_string(),
            "--key",
            &pki.client_key.display().to_string(),
        ],
    )
    .await;
    assert_eq!(with_cert.code, Some(0), "{}", with_cert.all());
    assert!(
        with_cert.stdout.contains("\"ready\":true"),
        "{}",
        with_cert.all()
    );
    let without = curl(&pki, admin_addr, "/status", &[]).await;
    assert_ne!(
        without.code,
        Some(0),
        "no certificate, no answer: {}",
        without.all()
    );
    assert!(!without.stdout.contains("ready"));
    // Plaintext is not answered either.
    assert!(plain_get(admin_addr, "localhost", "/status").await.is_err());
}

/// Each connection thread reports its open connections: connections held open spread over the
/// `workers` threads, and the gauges add up to them.
#[tokio::test(flavor = "multi_thread")]
async fn each_connection_thread_reports_its_open_connections() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let head = "workers = 2\n\n[admin]\naddress = \"127.0.0.1:0\"";
    let config = echo_route_config(head, echo, "/");
    let gateway = tokio::task::block_in_place(|| Tollgate::run(dir.path(), &config));
    let (http, admin_addr) = (gateway.addr("http"), gateway.addr("admin"));
    // Four keep-alive connections, each past one request (so each was accepted and placed).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head)
            .await
            .expect("read");
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(tcp);
    }
    let (status, text) = admin(admin_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_exposition(&text);
    let per_thread = |thread: &str| {
        value(
            &samples,
            "tollgate_connection_thread_connections",
            &[("thread", thread)],
        )
    };
    assert_eq!(
        (per_thread("0"), per_thread("1")),
        (2.0, 2.0),
        "four connections over two threads: {text}"
    );
    drop(held);
    gateway.signal("TERM");
}
