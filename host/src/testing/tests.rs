//! Scenario parsing and its error messages, expectation matching, and the text report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_phases::{Phase, PhaseSet};

use super::expect::{check_connection, check_request};
use super::*;
use crate::log::TlsLog;
use crate::pipeline::TraceEntry;
use crate::runtime::{HostCall, PluginError, PluginFault, Stage};
use crate::tls::test_pki::Pki;
use crate::tls::{ClientChain, ClientVerify, TlsFacts, TlsPolicy, TrustAnchors};

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, "/scenarios/demo.toml")
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_scenario_gets_the_defaults() {
    let scenario = parse("[[requests]]\npath = \"/\"\n").unwrap();
    assert_eq!(scenario.plugin, PluginSettings::default());
    assert_eq!(scenario.connections.len(), 1);
    let connection = &scenario.connections[0];
    assert_eq!(connection.client_addr.to_string(), DEFAULT_CLIENT_ADDRESS);
    let tls = connection.tls.as_ref().unwrap();
    assert_eq!(
        (tls.version, tls.cipher),
        (DEFAULT_TLS_VERSION, DEFAULT_CIPHER)
    );
    assert!(tls.client_chain.is_none() && tls.client_ca.is_none());
    let request = &connection.requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.targets, [default_target()]);
    assert_eq!(default_target().to_string(), DEFAULT_TARGET);
    assert_eq!(request.upstream, UpstreamScenario::default());
    assert_eq!(request.expect, RequestExpect::default());
}

#[test]
fn full_scenario_parses_with_files_relative_to_the_scenario() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    let chain = format!("{}{}", pki.leaf.pem(), pki.intermediate.pem());
    std::fs::write(dir.path().join("certs/chain.pem"), &chain).unwrap();
    std::fs::write(dir.path().join("certs/ca.pem"), pki.root.pem()).unwrap();
    let text = r#"
[plugin]
name = "mtls"
config = { snis = ["*"], nested = { n = 3 } }
memory_limit = "16MiB"
time_limit = "250ms"
fail_open = true

[connection]
sni = "api.example.com"
client_address = "10.1.2.3:4444"
client_chain = "certs/chain.pem"
client_ca = "certs/ca.pem"
tls_version = "TLSv1.2"
cipher = "ECDHE-RSA-AES128-GCM-SHA256"

[connection.expect]
client_certificate_requested = true
ca_names = ["CN=Demo Root CA, O=Tollgate"]
client_verify = "SUCCESS"
calls = ["certificate: request_client_certificate -> ok"]

[[requests]]
method = "POST"
path = "/hello?x=1&y"
headers = [["x-b", "1"], ["x-a", "2"], ["x-b", "3"]]
targets = ["10.0.0.1:80", "10.0.0.2:80"]
upstream = { status = 201, headers = { "Content-Type" = "text/plain", "set-cookie" = ["a", "b"] }, body = ["hello ", "world"] }

[requests.expect]
status = 201
headers = { "content-type" = "text/plain", "x-gone" = false, "set-cookie" = true }
upstream_headers = { "x-consumer-username" = "alice" }
body = "hello world"
client_verify = false
target = "10.0.0.2:80"
calls = ["set-client-verify", "access: client-tls.get-full-client-certificate-chain -> ok: Some"]
no_plugin_errors = true
plugin_error = "boom"

[[requests]]
path = "/second"
upstream = { body = "one chunk" }
"#;
    let scenario = Scenario::from_toml_str(text, dir.path()).unwrap();
    assert_eq!(scenario.file, PathBuf::from(INLINE_SCENARIO));
    let plugin = &scenario.plugin;
    assert_eq!(plugin.name.as_deref(), Some("mtls"));
    assert_eq!(
        plugin.config,
        serde_json::json!({"snis": ["*"], "nested": {"n": 3}})
    );
    assert_eq!(plugin.memory_limit, 16 << 20);
    assert_eq!(plugin.time_limit, Duration::from_millis(250));
    assert!(plugin.fail_open);
    let spec = plugin.spec(std::path::Path::new("x/mtls_auth.wasm"));
    assert_eq!((spec.name.as_str(), spec.fail_open), ("mtls", true));

    let connection = &scenario.connections[0];
    assert_eq!(connection.sni.as_deref(), Some("api.example.com"));
    assert_eq!(connection.client_addr.to_string(), "10.1.2.3:4444");
    let tls = connection.tls.as_ref().unwrap();
    assert_eq!(tls.version, "TLSv1.2");
    assert_eq!(tls.client_chain.as_deref(), Some(&pki.client_chain()[..]));
    assert_eq!(
        tls.client_ca.as_ref().unwrap().subject_names(),
        ["CN=Demo Root CA, O=Tollgate"]
    );
    assert_eq!(connection.expect.calls[0].phase, Some(Phase::Certificate));
    assert_eq!(
        connection.expect.calls[0].function,
        "request-client-certificate"
    );

    let request = &connection.requests[0];
    assert_eq!(
        (request.path.as_str(), request.query.as_deref()),
        ("/hello", Some("x=1&y"))
    );
    assert_eq!(request.uri(), "/hello?x=1&y");
    // Pairs keep their order and repeats.
    assert_eq!(
        request.headers,
        [("x-b", "1"), ("x-a", "2"), ("x-b", "3")].map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert_eq!(request.upstream.status, 201);
    // Tables come in name order, names lower-cased, arrays repeat the header.
    assert_eq!(
        request.upstream.headers,
        [
            ("content-type", "text/plain"),
            ("set-cookie", "a"),
            ("set-cookie", "b")
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert_eq!(
        request.upstream.body,
        [b"hello ".to_vec(), b"world".to_vec()]
    );
    let expect = &request.expect;
    assert_eq!(expect.headers["x-gone"], HeaderExpectation::Absent);
    assert_eq!(expect.headers["set-cookie"], HeaderExpectation::Present);
    assert_eq!(expect.client_verify, Some(VerifyExpectation::Plaintext));
    assert_eq!(expect.calls.len(), 2);
    assert!(expect.no_plugin_errors);
    assert_eq!(
        connection.requests[1].upstream.body,
        [b"one chunk".to_vec()]
    );
}

#[test]
fn several_connections_each_have_their_requests() {
    let text = r#"
[[connections]]
tls = false
[[connections.requests]]
path = "/a"
[[connections.requests]]
path = "/b"

[[connections]]
sni = "x"
[connections.expect]
client_verify = "NONE"
"#;
    let scenario = parse(text).unwrap();
    assert_eq!(scenario.connections.len(), 2);
    assert!(scenario.connections[0].tls.is_none());
    assert_eq!(scenario.connections[0].requests.len(), 2);
    assert!(scenario.connections[1].tls.is_some());
    assert!(scenario.connections[1].requests.is_empty());
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let message = error("[connection]\nsni = \n");
    assert!(message.starts_with("/scenarios/demo.toml:2:"), "{message}");
}

#[test]
fn wrong_type_names_the_field_and_line() {
    assert_eq!(
        error("[connection]\nsni = 5\n"),
        "/scenarios/demo.toml:2:7: connection.sni: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        error("[[requests]]\npath = \"/\"\nupstream = { status = \"x\" }\n"),
        "/scenarios/demo.toml:3:23: requests[0].upstream.status: invalid type: string \"x\", expected u16"
    );
}

#[test]
fn unknown_field_names_the_field_and_line() {
    let message = error("[[requests]]\npath = \"/\"\n[requests.expect]\nstatuss = 5\n");
    assert!(
        message.starts_with(
            "/scenarios/demo.toml:4:1: requests[0].expect.statuss: unknown field `statuss`"
        ),
        "{message}"
    );
    let message = error("[conection]\n");
    assert!(
        message.contains(":1:2: conection: unknown field"),
        "{message}"
    );
}

#[test]
fn invalid_values_name_the_field_and_line() {
    let cases = [
        (
            "[plugin]\nmemory_limit = \"64XB\"\n",
            "2:16: plugin.memory_limit: invalid size `64XB`",
        ),
        (
            "[plugin]\nmemory_limit = \"2GiB\"\n",
            "2:16: plugin.memory_limit: must be between",
        ),
        (
            "[plugin]\ntime_limit = 100\n",
            "2:14: plugin.time_limit: expected a duration",
        ),
        (
            "[connection]\nclient_address = \"nope\"\n",
            "2:18: connection.client_address: expected `ip:port`",
        ),
        (
            "[connection]\ntls_version = \"TLSv1.1\"\n",
            "2:15: connection.tls_version: expected \"TLSv1.2\"",
        ),
        (
            "[connection]\ncipher = \"ECDHE-RSA-AES128-GCM-SHA256\"\n",
            "2:10: connection.cipher: unknown TLSv1.3 cipher",
        ),
        (
            "[connection]\ntls = false\nclient_ca = \"ca.pem\"\n",
            "3:13: connection.client_ca: only for TLS connections",
        ),
        (
            "[connection]\nclient_chain = \"missing.pem\"\n",
            "2:16: connection.client_chain: cannot read /scenarios/missing.pem",
        ),
        (
            "[[requests]]\nmethod = \"GET\"\n",
            "1:1: requests[0].path: required field is missing",
        ),
        (
            "[[requests]]\npath = \"nope\"\n",
            "2:8: requests[0].path: expected a path starting with `/`",
        ),
        (
            "[[requests]]\npath = \"/\"\nmethod = \"get\"\n",
            "3:10: requests[0].method: expected an upper-case method",
        ),
        (
            "[[requests]]\npath = \"/\"\nheaders = { \"bad name\" = \"x\" }\n",
            "3:11: requests[0].headers: invalid header name: \"bad name\"",
        ),
        (
            "[[requests]]\npath = \"/\"\ntargets = [\"a:1\", \"nope\"]\n",
            "3:19: requests[0].targets[1]: invalid target \"nope\": expected host:port",
        ),
        (
            "[[requests]]\npath = \"/\"\nexpect = { calls = [\"acces: f\"] }\n",
            "3:21: requests[0].expect.calls[0]: unknown phase `acces`",
        ),
        (
            "[[requests]]\npath = \"/\"\nexpect = { client_verify = \"success\" }\n",
            "3:28: requests[0].expect.client_verify: unknown client verify value: success",
        ),
        (
            "[connection]\n[[connections]]\n",
            "connections: give either [connection]",
        ),
    ];
    for (text, wanted) in cases {
        let message = error(text);
        assert!(
            message.starts_with("/scenarios/demo.toml:") && message.contains(wanted),
            "{text:?}: {message}"
        );
    }
}

#[test]
fn unreadable_file_names_it() {
    let message = Scenario::from_file("/nonexistent/scenario.toml")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("/nonexistent/scenario.toml: cannot read scenario"),
        "{message}"
    );
}

#[test]
fn call_patterns_match_function_phase_and_result_prefix() {
    let call = HostCall {
        phase: Phase::Access,
        function: "client-tls.set-client-verify",
        args: "\"success\"".into(),
        result: "error: unknown client verify value: success".into(),
    };
    for pattern in [
        "set_client_verify",
        "set-client-verify",
        "client-tls.set-client-verify",
        "access: set_client_verify",
        "set_client_verify -> error: unknown client verify",
        " access :set_client_verify->error",
    ] {
        assert!(
            CallPattern::parse(pattern).unwrap().matches(&call),
            "{pattern}"
        );
    }
    for pattern in [
        "rewrite: set_client_verify",
        "set_client_verify -> ok",
        "client-tls.set",
        "connection.set-client-verify",
    ] {
        assert!(
            !CallPattern::parse(pattern).unwrap().matches(&call),
            "{pattern}"
        );
    }
    assert!(CallPattern::parse("").is_err());
    assert!(CallPattern::parse("two words").is_err());
    assert_eq!(
        CallPattern::parse("access: set_client_verify -> ok")
            .unwrap()
            .to_string(),
        "access: set-client-verify -> ok"
    );
}

fn call(phase: Phase, function: &'static str, result: &str) -> HostCall {
    HostCall {
        phase,
        function,
        args: String::new(),
        result: result.into(),
    }
}

fn failure(phase: Phase, message: &str) -> PluginError {
    PluginError {
        plugin: "demo".into(),
        stage: Stage::Phase(phase),
        fault: PluginFault::Failed(message.into()),
    }
}

/// A run of one TLS connection with one request answered by the upstream.
fn synthetic_report() -> ScenarioReport {
    let pki = Pki::new();
    let anchors =
        TrustAnchors::from_pem(&format!("{}{}", pki.intermediate.pem(), pki.root.pem())).unwrap();
    let request = RequestReport {
        method: "GET".into(),
        uri: "/hello?x=1".into(),
        trace: vec![
            TraceEntry {
                plugin: "demo".into(),
                phase: Phase::Access,
                calls: vec![
                    call(
                        Phase::Access,
                        "client-tls.get-full-client-certificate-chain",
                        "ok: Some(\"-----BEGIN\")",
                    ),
                    call(Phase::Access, "request.set-header", "ok"),
                ],
                error: None,
            },
            TraceEntry {
                plugin: "demo".into(),
                phase: Phase::Log,
                calls: Vec::new(),
                error: Some(failure(Phase::Log, "log sink down")),
            },
        ],
        plugin_errors: vec![failure(Phase::Log, "log sink down")],
        upstream_request: Some(UpstreamRequest {
            target: default_target(),
            method: "GET".into(),
            uri: "/hello?x=1".into(),
            headers: vec![
                ("authorization".into(), "Bearer x".into()),
                ("x-consumer-username".into(), "alice".into()),
            ],
        }),
        response: ClientResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"hello world".to_vec(),
            source: Origin::Upstream,
            truncated: false,
        },
        log_tls: Some(TlsLog {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_verify: "SUCCESS".into(),
        }),
        expectations: Vec::new(),
    };
    let connection = ConnectionReport {
        sni: Some("api.example.com".into()),
        client_addr: "127.0.0.1:50000".parse().unwrap(),
        tls: Some(TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            alpn: None,
            client_chain: Some(ClientChain::new(pki.client_chain())),
            client_verify: ClientVerify::Success,
        }),
        presented_certificates: 2,
        certificate_trace: vec![TraceEntry {
            plugin: "demo".into(),
            phase: Phase::Certificate,
            calls: vec![call(
                Phase::Certificate,
                "client-tls.request-client-certificate",
                "ok",
            )],
            error: None,
        }],
        plugin_errors: Vec::new(),
        handshake_error: None,
        policy: TlsPolicy {
            request_client_certificate: true,
            ca_certs: Some(anchors),
            disable_session_reuse: false,
        },
        requests: vec![request],
        expectations: Vec::new(),
    };
    ScenarioReport {
        scenario: PathBuf::from("scenarios/demo.toml"),
        plugins: vec![PluginSummary {
            name: "demo".into(),
            path: PathBuf::from("demo.wasm"),
            phases: [Phase::Certificate, Phase::Access, Phase::Log]
                .into_iter()
                .collect::<PhaseSet>(),
        }],
        connections: vec![connection],
    }
}

#[test]
fn request_expectations_pass_and_fail_with_what_was_found() {
    let report = synthetic_report();
    let request = &report.connections[0].requests[0];
    let text = |s: &str| s.to_owned();
    let passing = RequestExpect {
        status: Some(200),
        headers: BTreeMap::from([
            (
                text("content-type"),
                HeaderExpectation::Value(text("text/plain")),
            ),
            (text("x-debug"), HeaderExpectation::Absent),
        ]),
        upstream_headers: BTreeMap::from([
            (
                text("x-consumer-username"),
                HeaderExpectation::Value(text("alice")),
            ),
            (text("authorization"), HeaderExpectation::Present),
        ]),
        body: Some(text("hello world")),
        client_verify: Some(VerifyExpectation::Value(ClientVerify::Success)),
        target: Some(default_target()),
        calls: vec![
            CallPattern::parse("access: get_full_client_certificate_chain -> ok: Some").unwrap(),
        ],
        no_plugin_errors: false,
        plugin_error: Some(text("log sink down")),
    };
    let outcomes = check_request(&passing, request);
    assert_eq!(outcomes.len(), 10);
    assert!(
        outcomes.iter().all(|o| o.passed && o.actual.is_none()),
        "{outcomes:#?}"
    );

    let failing = RequestExpect {
        status: Some(201),
        headers: BTreeMap::from([(text("content-type"), HeaderExpectation::Absent)]),
        upstream_headers: BTreeMap::from([(
            text("x-consumer-username"),
            HeaderExpectation::Value(text("bob")),
        )]),
        body: Some(text("hello")),
        client_verify: Some(VerifyExpectation::Plaintext),
        target: None,
        calls: vec![CallPattern::parse("rewrite: request.set-header").unwrap()],
        no_plugin_errors: true,
        plugin_error: None,
    };
    let outcomes = check_request(&failing, request);
    let actual: Vec<_> = outcomes
        .iter()
        .map(|o| (o.passed, o.actual.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        actual,
        [
            (false, text("200")),
            (false, text("\"text/plain\"")),
            (false, text("\"alice\"")),
            (false, text("\"hello world\"")),
            (false, text("\"SUCCESS\"")),
            (false, text("access: request.set-header() -> ok")),
            (
                false,
                text("plugin demo failed in log phase: returned an error: log sink down")
            ),
        ]
    );
}

#[test]
fn upstream_expectations_fail_when_the_upstream_was_not_contacted() {
    let mut report = synthetic_report();
    let request = &mut report.connections[0].requests[0];
    request.upstream_request = None;
    let expect = RequestExpect {
        upstream_headers: BTreeMap::from([("x".to_owned(), HeaderExpectation::Absent)]),
        target: Some(default_target()),
        ..RequestExpect::default()
    };
    let outcomes = check_request(&expect, request);
    assert!(outcomes.iter().all(|o| !o.passed), "{outcomes:#?}");
}

#[test]
fn connection_expectations_check_the_policy_and_verify() {
    let report = synthetic_report();
    let connection = &report.connections[0];
    let expect = ConnectionExpect {
        client_certificate_requested: Some(true),
        session_reuse_disabled: Some(false),
        ca_names: Some(vec![
            "CN=Demo Intermediate CA, O=Tollgate".into(),
            "CN=Demo Root CA, O=Tollgate".into(),
        ]),
        client_chain: Some(true),
        client_verify: Some(VerifyExpectation::Value(ClientVerify::Success)),
        calls: vec![CallPattern::parse("request_client_certificate -> ok").unwrap()],
        no_plugin_errors: true,
        plugin_error: None,
    };
    let outcomes = check_connection(&expect, connection);
    assert_eq!(outcomes.len(), 7);
    assert!(outcomes.iter().all(|o| o.passed), "{outcomes:#?}");

    let reversed = ConnectionExpect {
        ca_names: Some(vec![
            "CN=Demo Root CA, O=Tollgate".into(),
            "CN=Demo Intermediate CA, O=Tollgate".into(),
        ]),
        session_reuse_disabled: Some(true),
        ..ConnectionExpect::default()
    };
    let outcomes = check_connection(&reversed, connection);
    assert!(
        outcomes.iter().all(|o| !o.passed),
        "order matters: {outcomes:#?}"
    );
}

#[test]
fn report_renders_connection_request_and_summary() {
    let mut report = synthetic_report();
    let connection = &mut report.connections[0];
    connection.expectations = vec![Expectation {
        description: "client_certificate_requested = true".into(),
        passed: true,
        actual: None,
    }];
    connection.requests[0].expectations = vec![Expectation {
        description: "status = 201".into(),
        passed: false,
        actual: Some("200".into()),
    }];
    let text = report.to_string();
    let expected = [
        "scenario scenarios/demo.toml",
        "plugin demo (demo.wasm), phases: certificate, access, log",
        "",
        "connection 1: TLS (TLSv1.3, TLS_AES_256_GCM_SHA384), sni \"api.example.com\", client 127.0.0.1:50000",
        "  client presents: 2 certificates",
        "  certificate phase:",
        "    demo:",
        "      client-tls.request-client-certificate() -> ok",
        "  policy: certificate requested: yes; CA names: \"CN=Demo Intermediate CA, O=Tollgate\", \"CN=Demo Root CA, O=Tollgate\"; session reuse: on",
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..expected.len()], expected, "{text}");
    for fragment in [
        "  client chain: 2 certificates (",
        "\"CN=demo client\", \"CN=Demo Intermediate CA, O=Tollgate\"",
        "  client_verify: SUCCESS\n  PASS client_certificate_requested = true\n",
        "  request 1: GET /hello?x=1\n    access / demo:\n      client-tls.get-full-client-certificate-chain() -> ok: Some(\"-----BEGIN\")\n",
        "    log / demo:\n      FAILED in log phase: returned an error: log sink down\n",
        "    upstream request to 127.0.0.1:8080: GET /hello?x=1\n      authorization: Bearer x\n",
        "    response: 200 (from upstream)\n      content-type: text/plain\n      body (11 bytes): \"hello world\"\n",
        "    log request.tls: version TLSv1.3, cipher TLS_AES_256_GCM_SHA384, client_verify SUCCESS\n",
        "    FAIL status = 201 (got 200)\n",
        "\nsummary: 2 expectations, 1 passed, 1 failed: FAIL\n",
    ] {
        assert!(text.contains(fragment), "missing {fragment:?} in:\n{text}");
    }
    assert!(!report.passed());
    assert_eq!(report.failures().len(), 1);
}

#[test]
fn report_shows_plaintext_exit_truncation_and_long_bodies() {
    let mut report = synthetic_report();
    let connection = &mut report.connections[0];
    connection.tls = None;
    let request = &mut connection.requests[0];
    request.log_tls = None;
    request.upstream_request = None;
    request.response.source = Origin::PluginExit;
    request.response.truncated = true;
    request.response.body = vec![b'a'; MAX_BODY_SHOWN + 10];
    let text = report.to_string();
    assert!(
        text.contains("connection 1: plaintext, sni \"api.example.com\""),
        "{text}"
    );
    assert!(!text.contains("certificate phase"), "{text}");
    assert!(text.contains("    upstream: not contacted\n"), "{text}");
    assert!(text.contains("(from a plugin's response.exit)"), "{text}");
    assert!(
        text.contains(&format!(
            "body ({} bytes, truncated by a body_filter failure)",
            MAX_BODY_SHOWN + 10
        )),
        "{text}"
    );
    assert!(text.contains("… (10 more bytes)"), "{text}");
    assert!(
        text.contains("    log request.tls: absent (plaintext)\n"),
        "{text}"
    );
    assert!(
        text.ends_with("summary: 0 expectations, 0 passed, 0 failed: PASS\n"),
        "{text}"
    );
    assert!(report.passed());
}

#[test]
fn request_report_accessors_select_by_phase_and_function() {
    let report = synthetic_report();
    let request = &report.connections[0].requests[0];
    assert_eq!(request.calls(Phase::Access).len(), 2);
    assert!(request.calls(Phase::Rewrite).is_empty());
    assert_eq!(
        request.call_results(Phase::Access, "request.set-header"),
        ["ok"]
    );
    assert_eq!(request.client_verify(), Some("SUCCESS"));
    assert_eq!(
        request.response.header("Content-Type").as_deref(),
        Some("text/plain")
    );
    let upstream = request.upstream_request.as_ref().unwrap();
    assert_eq!(
        upstream.header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(report.connections[0].certificate_calls().len(), 1);
}
