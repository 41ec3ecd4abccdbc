use super::*;
use serde_json::json;

fn entry(started_at: u64, tls: Option<TlsLog>) -> LogEntry {
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "api.example.com".parse().unwrap());
    headers.insert("authorization", "Bearer secret".parse().unwrap());
    let mut response_headers = http::HeaderMap::new();
    response_headers.insert("content-length", "2".parse().unwrap());
    LogEntry {
        request: RequestLog {
            method: "GET".into(),
            uri: "/api/items?id=7&debug".into(),
            url: request_url("https", "api.example.com", 8443, "/api/items?id=7&debug"),
            querystring: parse_querystring("id=7&debug"),
            headers: headers_to_map(&headers),
            size: 120,
            tls,
        },
        upstream_uri: "/api/items?id=7&debug".into(),
        response: ResponseLog {
            status: 200,
            headers: headers_to_map(&response_headers),
            size: 80,
        },
        latencies: Latencies {
            proxy: 3,
            kong: 1,
            request: 5,
        },
        client_ip: "127.0.0.1".into(),
        started_at,
        route: Some(NamedRef {
            id: None,
            name: "api".into(),
        }),
        service: Some(ServiceLog {
            name: "echo".into(),
            host: "127.0.0.1".into(),
            port: 9000,
            protocol: "http".into(),
        }),
        tries: vec![Try {
            ip: "127.0.0.1".into(),
            port: 9000,
            balancer_latency: 0,
        }],
        plugin_errors: vec![],
    }
}

fn tls() -> TlsLog {
    TlsLog {
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        client_verify: "NONE".into(),
    }
}

#[test]
fn entry_serializes_in_kong_shape() {
    let value = serde_json::to_value(entry(1_700_000_000_000, Some(tls()))).unwrap();
    assert_eq!(
        value,
        json!({
            "request": {
                "method": "GET",
                "uri": "/api/items?id=7&debug",
                "url": "https://api.example.com:8443/api/items?id=7&debug",
                "querystring": { "id": "7", "debug": true },
                "headers": { "host": "api.example.com", "authorization": "REDACTED" },
                "size": 120,
                "tls": {
                    "version": "TLSv1.3",
                    "cipher": "TLS_AES_256_GCM_SHA384",
                    "client_verify": "NONE"
                }
            },
            "upstream_uri": "/api/items?id=7&debug",
            "response": { "status": 200, "headers": { "content-length": "2" }, "size": 80 },
            "latencies": { "proxy": 3, "kong": 1, "request": 5 },
            "client_ip": "127.0.0.1",
            "started_at": 1_700_000_000_000u64,
            "route": { "name": "api" },
            "service": { "name": "echo", "host": "127.0.0.1", "port": 9000, "protocol": "http" },
            "tries": [{ "ip": "127.0.0.1", "port": 9000, "balancer_latency": 0 }]
        })
    );
    let line = serde_json::to_string(&entry(1, Some(tls()))).unwrap();
    assert!(!line.contains('\n'));
    let back: LogEntry = serde_json::from_str(&line).unwrap();
    assert_eq!(back, entry(1, Some(tls())));
}

#[test]
fn plaintext_request_has_no_tls_in_log() {
    let value = serde_json::to_value(entry(1, None)).unwrap();
    let request = value["request"].as_object().unwrap();
    assert!(!request.contains_key("tls"));
    assert_eq!(request.len(), 6);
}

#[test]
fn plugin_errors_and_absent_route_service() {
    let mut e = entry(1, None);
    e.route = None;
    e.service = None;
    e.latencies.proxy = -1;
    e.plugin_errors.push(PluginErrorLog {
        plugin: "mtls".into(),
        phase: "access".into(),
        message: "trap".into(),
    });
    let value = serde_json::to_value(e).unwrap();
    let top = value.as_object().unwrap();
    assert!(!top.contains_key("route") && !top.contains_key("service"));
    assert_eq!(value["latencies"]["proxy"], -1);
    assert_eq!(
        value["plugin_errors"],
        json!([{ "plugin": "mtls", "phase": "access", "message": "trap" }])
    );
}

#[test]
fn authorization_headers_are_logged_redacted() {
    let mut headers = http::HeaderMap::new();
    headers.append("Authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    headers.append("Proxy-Authorization", "Basic a".parse().unwrap());
    headers.append("Proxy-Authorization", "Basic b".parse().unwrap());
    headers.append("X-Forwarded-For", "10.0.0.1".parse().unwrap());
    headers.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
    headers.append("x-forwarded-for", "10.0.0.3".parse().unwrap());
    headers.append("accept", "*/*".parse().unwrap());
    assert_eq!(
        Value::Object(headers_to_map(&headers)),
        json!({
            "authorization": "REDACTED",
            "proxy-authorization": "REDACTED",
            "x-forwarded-for": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            "accept": "*/*",
        })
    );
    let pairs = [
        ("AUTHORIZATION".to_owned(), "x".to_owned()),
        ("Cookie".to_owned(), "a=1".to_owned()),
        ("cookie".to_owned(), "b=2".to_owned()),
    ];
    assert_eq!(
        Value::Object(request_headers_from_pairs(&pairs)),
        json!({ "authorization": "REDACTED", "cookie": ["a=1", "b=2"] })
    );
}

#[test]
fn querystring_is_parsed_like_kong() {
    let q = |s: &str| Value::Object(parse_querystring(s));
    assert_eq!(q(""), json!({}));
    assert_eq!(q("?a=1"), json!({ "a": "1" }));
    assert_eq!(q("flag"), json!({ "flag": true }));
    assert_eq!(q("empty="), json!({ "empty": "" }));
    assert_eq!(q("a=1&a=2&a"), json!({ "a": ["1", "2", true] }));
    assert_eq!(q("=x&&=&b=2"), json!({ "b": "2" }));
    assert_eq!(
        q("na%6De=J%C3%BCrgen+M&x=a%2Bb%3D%26&bad=%zz%4"),
        json!({ "name": "Jürgen M", "x": "a+b=&", "bad": "%zz%4" })
    );
    assert_eq!(q("k=a=b"), json!({ "k": "a=b" }));
    let many: Vec<String> = (0..150).map(|i| format!("k{i}=v")).collect();
    assert_eq!(parse_querystring(&many.join("&")).len(), MAX_QUERY_ARGS);
}

#[test]
fn url_and_time_helpers() {
    assert_eq!(
        request_url("http", "::1", 8080, "/a?b"),
        "http://[::1]:8080/a?b"
    );
    assert_eq!(
        unix_millis(UNIX_EPOCH + std::time::Duration::from_millis(1234)),
        1234
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_writes_one_line_per_entry_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    std::fs::write(&path, "previous\n").unwrap();
    let log = AccessLog::start(&AccessLogTarget::File(path.clone())).unwrap();
    let writers: Vec<_> = (0..2)
        .map(|_| log.clone())
        .enumerate()
        .map(|(w, log)| {
            tokio::spawn(async move {
                for i in 0..500 {
                    log.write(entry((w * 1000 + i) as u64, None));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    log.flush().await;
    assert_eq!(log.dropped(), 0);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("previous"));
    let stamps: Vec<u64> = lines
        .map(|l| serde_json::from_str::<LogEntry>(l).unwrap().started_at)
        .collect();
    assert_eq!(stamps.len(), 1000);
    for w in 0..2u64 {
        let mine: Vec<u64> = stamps.iter().copied().filter(|s| s / 1000 == w).collect();
        let expected: Vec<u64> = (0..500).map(|i| w * 1000 + i).collect();
        assert_eq!(mine, expected, "writer {w} out of order");
    }
}

#[tokio::test]
async fn full_queue_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log = AccessLog::start_with_limits(
        &AccessLogTarget::File(path.clone()),
        3,
        ACCESS_LOG_QUEUE_BYTES,
    )
    .unwrap();
    // Current-thread runtime: the writer cannot run until this task yields.
    for i in 0..10 {
        log.write(entry(i, None));
    }
    assert_eq!(log.dropped(), 7);
    log.flush().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let stamps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<LogEntry>(l).unwrap().started_at)
        .collect();
    assert_eq!(stamps, [0, 1, 2]);
}

#[test]
fn start_without_runtime_is_an_error() {
    assert!(AccessLog::start(&AccessLogTarget::Stdout).is_err());
}

#[tokio::test]
async fn unopenable_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir/access.log");
    let error = AccessLog::start(&AccessLogTarget::File(path.clone())).unwrap_err();
    assert!(error.to_string().contains(&path.display().to_string()));
}

#[tokio::test]
async fn queue_is_bounded_by_bytes_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let line = serde_json::to_string(&entry(0, None)).unwrap().len() + 1;
    // Room for two and a half lines: the third does not fit.
    let log = AccessLog::start_with_limits(
        &AccessLogTarget::File(path.clone()),
        ACCESS_LOG_QUEUE_LINES,
        line * 5 / 2,
    )
    .unwrap();
    // Current-thread runtime: the writer cannot run until this task yields.
    for i in 0..10 {
        log.write(entry(i, None));
    }
    assert_eq!(log.dropped(), 8);
    assert_eq!(log.queued_bytes(), 2 * line);
    log.flush().await;
    assert_eq!(log.queued_bytes(), 0, "written lines no longer count");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    // Written lines free their room for new ones.
    log.write(entry(10, None));
    log.flush().await;
    assert_eq!(log.dropped(), 8);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3);
}

#[tokio::test]
async fn reopen_writes_to_a_fresh_file_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let log = AccessLog::start(&AccessLogTarget::File(path.clone())).unwrap();
    log.write(entry(1, None));
    log.flush().await;
    std::fs::rename(&path, &rotated).unwrap();
    // Before the reopen, lines still go to the moved file (the open descriptor).
    log.write(entry(2, None));
    log.reopen().await;
    log.write(entry(3, None));
    log.flush().await;
    let stamps = |path: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<LogEntry>(l).unwrap().started_at)
            .collect()
    };
    assert_eq!(stamps(&rotated), [1, 2]);
    assert_eq!(stamps(&path), [3]);
}

#[tokio::test]
async fn failed_reopen_keeps_writing_to_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let path = logs.join("access.log");
    let log = AccessLog::start(&AccessLogTarget::File(path.clone())).unwrap();
    let moved = dir.path().join("old-logs");
    std::fs::rename(&logs, &moved).unwrap();
    log.reopen().await;
    log.write(entry(1, None));
    log.flush().await;
    assert_eq!(log.dropped(), 0);
    let text = std::fs::read_to_string(moved.join("access.log")).unwrap();
    assert_eq!(text.lines().count(), 1);
}
