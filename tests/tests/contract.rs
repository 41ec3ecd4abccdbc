//! The plugin contract, applied by each of its three sides: every argument rule of
//! `tollgate_phases` runs its accepted and rejected inputs through
//!
//! - the host: the scripted guest (a real wasm component) makes the call in the phase that allows
//!   it, through the harness's runtime, and the recorded call result is read back;
//! - the SDK's native mock: the same SDK function, compiled natively, against a `MockHost`;
//! - the harness: the same input in the scenario field that carries such a value,
//!
//! and expects the same answer from each (accepted, or rejected with the same message). A rule
//! with no scenario field (context and head bounds) runs through the host and the mock.
//!
//! Also here: a plugin that implements `header_filter` and lists no phases runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tollgate::runtime::Runtime;
use tollgate::testing::{Harness, Scenario, ScenarioError, ScenarioReport};
use tollgate_phases::{MAX_CONTEXT_VALUE, MAX_HEADERS};
use tollgate_sdk::mock::{self, MockHost, MockTls};
use tollgate_sdk::{Phase, balancer, client_tls, context, request, response};
use tollgate_tests::guests;

/// What one side answered: `Ok(())`, or the rejection's message.
type Answer = Result<(), String>;

/// One input of one rule.
#[derive(Debug, Clone)]
enum Input {
    /// `balancer.set-target`; the scenario's `targets` and `expect.target`.
    Target(&'static str),
    /// `client-tls.set-client-verify`; the scenario's `expect.client_verify`.
    ClientVerify(&'static str),
    /// `request.set-header` with this name; the scenario's request `headers`.
    HeaderName(&'static str),
    /// `request.set-header` with this value; the scenario's request `headers`.
    HeaderValue(&'static str),
    /// `response.exit` with this status; the scenario's `upstream.status`.
    Status(u16),
    /// `context.set` with this key (no scenario field).
    ContextKey(String),
    /// `context.set` with this value (no scenario field).
    ContextValue(String),
    /// `response.exit` with this many headers (no scenario field).
    ExitHeaders(usize),
}

impl Input {
    /// The rule the input exercises, as the report names it.
    fn rule(&self) -> &'static str {
        match self {
            Input::Target(_) => "target",
            Input::ClientVerify(_) => "client_verify",
            Input::HeaderName(_) => "header name",
            Input::HeaderValue(_) => "header value",
            Input::Status(_) => "status code",
            Input::ContextKey(_) | Input::ContextValue(_) => "context entry size",
            Input::ExitHeaders(_) => "head bounds (header count)",
        }
    }

    /// The phase the call is made in, the scripted guest's step, and the host function.
    fn call(&self) -> (Phase, Value, &'static str) {
        match self {
            Input::Target(target) => (
                Phase::Balancer,
                json!({"call": "set_target", "target": target}),
                "balancer.set-target",
            ),
            Input::ClientVerify(value) => (
                Phase::Access,
                json!({"call": "set_client_verify", "value": value}),
                "client-tls.set-client-verify",
            ),
            Input::HeaderName(name) => (
                Phase::Access,
                json!({"call": "set_request_header", "name": name, "value": "v"}),
                "request.set-header",
            ),
            Input::HeaderValue(value) => (
                Phase::Access,
                json!({"call": "set_request_header", "name": "x-value", "value": value}),
                "request.set-header",
            ),
            Input::Status(status) => (
                Phase::Access,
                json!({"call": "exit", "status": status}),
                "response.exit",
            ),
            Input::ContextKey(key) => (
                Phase::Access,
                json!({"call": "context_set", "key": key, "value": "v"}),
                "context.set",
            ),
            Input::ContextValue(value) => (
                Phase::Access,
                json!({"call": "context_set", "key": "k", "value": value}),
                "context.set",
            ),
            Input::ExitHeaders(count) => (
                Phase::Access,
                json!({"call": "exit", "status": 403, "headers": exit_headers(*count)}),
                "response.exit",
            ),
        }
    }

    /// The SDK call the mock answers.
    fn through_mock(&self) -> Answer {
        let (phase, _, _) = self.call();
        mock::install(MockHost {
            phase,
            tls: Some(MockTls::default()),
            ..MockHost::default()
        });
        let result = match self {
            Input::Target(target) => balancer::set_target(target),
            Input::ClientVerify(value) => client_tls::set_client_verify(value),
            Input::HeaderName(name) => request::set_header(name, "v"),
            Input::HeaderValue(value) => request::set_header("x-value", value),
            Input::Status(status) => response::exit(*status, &[], b""),
            Input::ContextKey(key) => context::set(key, "v"),
            Input::ContextValue(value) => context::set("k", value),
            Input::ExitHeaders(count) => response::exit(403, &exit_headers(*count), b""),
        };
        result.map_err(|err| err.to_string())
    }

    /// The scenario text carrying the input, if a scenario field carries such a value.
    fn scenario_field(&self) -> Option<String> {
        let request = |fields: String| Some(format!("[[requests]]\npath = \"/\"\n{fields}\n"));
        match self {
            Input::Target(target) => request(format!("targets = [{}]", toml_string(target))),
            Input::ClientVerify(value) => request(format!(
                "[requests.expect]\nclient_verify = {}",
                toml_string(value)
            )),
            Input::HeaderName(name) => {
                request(format!("headers = [[{}, \"v\"]]", toml_string(name)))
            }
            Input::HeaderValue(value) => {
                request(format!("headers = [[\"x-value\", {}]]", toml_string(value)))
            }
            Input::Status(status) => request(format!("upstream = {{ status = {status} }}")),
            Input::ContextKey(_) | Input::ContextValue(_) | Input::ExitHeaders(_) => None,
        }
    }
}

/// `count` distinct, valid headers.
fn exit_headers(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect()
}

/// A TOML basic string holding `text` exactly (control characters escaped).
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Every rule's accepted (`true`) and rejected (`false`) inputs.
fn cases() -> Vec<(Input, bool)> {
    let long = "k".repeat(MAX_CONTEXT_VALUE + 1);
    vec![
        (Input::Target("backend.internal:9001"), true),
        (Input::Target("10.0.0.1:443"), true),
        (Input::Target("[::1]:80"), true),
        (Input::Target("127.0.0.1"), false),
        (Input::Target("::1:80"), false),
        (Input::Target("[nope]:80"), false),
        (Input::Target("a b:80"), false),
        (Input::Target(":80"), false),
        (Input::Target("host:0"), false),
        (Input::Target("host:+80"), false),
        (Input::Target("host:65536"), false),
        (Input::ClientVerify("SUCCESS"), true),
        (Input::ClientVerify("NONE"), true),
        (Input::ClientVerify("FAILED:"), true),
        (Input::ClientVerify("FAILED:unknown CA"), true),
        (Input::ClientVerify("success"), false),
        (Input::ClientVerify("FAILED"), false),
        (Input::ClientVerify(" SUCCESS"), false),
        (Input::HeaderName("x-consumer"), true),
        (Input::HeaderName("X-Upper_Case!"), true),
        (Input::HeaderName(""), false),
        (Input::HeaderName("a b"), false),
        (Input::HeaderName("a:b"), false),
        (Input::HeaderName("é"), false),
        (Input::HeaderValue(""), true),
        (Input::HeaderValue("a b\tc"), true),
        (Input::HeaderValue("a\r\nx-injected: 1"), false),
        (Input::HeaderValue("nul\0"), false),
        (Input::HeaderValue("é"), false),
        (Input::HeaderValue("\x7f"), false),
        (Input::Status(100), true),
        (Input::Status(403), true),
        (Input::Status(999), true),
        (Input::Status(99), false),
        (Input::Status(1000), false),
        (Input::ContextKey("k".repeat(MAX_CONTEXT_VALUE)), true),
        (Input::ContextKey(long.clone()), false),
        (Input::ContextValue(long), false),
        (Input::ExitHeaders(MAX_HEADERS), true),
        (Input::ExitHeaders(MAX_HEADERS + 1), false),
    ]
}

/// The host's answer: the scripted guest makes the call, the harness records its result.
async fn through_host(harness: &Harness, input: &Input) -> Answer {
    let (phase, step, function) = input.call();
    let config = json!({"actions": {phase.name(): [step]}});
    let text = format!(
        "[plugin]\nconfig = {}\n[connection]\ntls = true\n[[requests]]\npath = \"/\"\n",
        json_to_toml_inline(&config)
    );
    let scenario = Scenario::from_toml_str(&text, ".").expect("the host-side scenario parses");
    let report = harness
        .run(guests::SCRIPTED, &scenario)
        .await
        .expect("the scenario runs");
    let request = &report.connections[0].requests[0];
    let results = request.call_results(phase, function);
    assert_eq!(results.len(), 1, "{input:?}: {results:?}\n{report}");
    match results[0] {
        "ok" => Ok(()),
        other => Err(other
            .strip_prefix("error: ")
            .unwrap_or_else(|| panic!("{input:?}: unexpected result {other:?}"))
            .to_owned()),
    }
}

/// A JSON value as a TOML inline value (the plugin's `config`).
fn json_to_toml_inline(value: &Value) -> String {
    match value {
        Value::String(text) => toml_string(text),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(json_to_toml_inline)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(key, value)| format!(
                    "{} = {}",
                    toml_string(key),
                    json_to_toml_inline(value)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Null => panic!("TOML has no null"),
    }
}

/// The harness's answer: the scenario with the input in its field parses, or says why not.
fn through_harness(field: &str) -> Answer {
    match Scenario::from_toml_str(field, ".") {
        Ok(_) => Ok(()),
        Err(ScenarioError::Invalid { message, .. }) => Err(message),
        Err(other) => panic!("unexpected harness error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_mock_and_harness_apply_every_rule_alike() {
    let harness = Harness::new(Runtime::new().unwrap());
    let mut problems = Vec::new();
    for (input, accepted) in cases() {
        let host = through_host(&harness, &input).await;
        let mock = input.through_mock();
        let harness_answer = input.scenario_field().map(|field| through_harness(&field));
        if host.is_ok() != accepted {
            problems.push(format!(
                "{input:?}: expected accepted = {accepted}, host says {host:?}"
            ));
        }
        if mock != host {
            problems.push(format!("{input:?}: host says {host:?}, mock says {mock:?}"));
        }
        if let Some(answer) = harness_answer
            && answer != host
        {
            problems.push(format!(
                "{input:?}: host says {host:?}, harness says {answer:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Every rule of the table is exercised, accepted and rejected.
    let rules: std::collections::BTreeSet<_> = cases().iter().map(|(i, _)| i.rule()).collect();
    for rule in &rules {
        for want in [true, false] {
            assert!(
                cases()
                    .iter()
                    .any(|(i, ok)| i.rule() == *rule && *ok == want),
                "{rule}: no {} input",
                if want { "accepted" } else { "rejected" }
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_implemented_header_filter_runs_without_being_listed() {
    let scenario = Scenario::from_toml_str(
        "[connection]\ntls = false\n[[requests]]\npath = \"/\"\n[requests.expect]\nheaders = { \"x-stamp\" = \"1\" }\n",
        ".",
    )
    .unwrap();
    let harness = Harness::new(Runtime::new().unwrap());
    let report = harness.run(guests::HEADER_STAMP, &scenario).await.unwrap();
    assert!(report.passed(), "{report}");
    let request = &report.connections[0].requests[0];
    assert_eq!(
        request.call_results(Phase::HeaderFilter, "response.set-header"),
        ["ok"]
    );
}

/// What the scripted guest forwards of the leaf's facts: the WIT record's fields, as JSON.
fn facts_json(leaf: &tollgate_sdk::ClientCertificate) -> Value {
    json!({
        "subject": leaf.subject,
        "issuer": leaf.issuer,
        "subject-legacy": leaf.subject_legacy,
        "issuer-legacy": leaf.issuer_legacy,
        "common-names": leaf.common_names,
        "serial": leaf.serial,
        "fingerprint-sha1": leaf.fingerprint_sha1,
        "fingerprint-sha256": leaf.fingerprint_sha256,
        "subject-alt-names": leaf
            .subject_alt_names
            .iter()
            .map(|san| match san {
                tollgate_sdk::SubjectAltName::Dns(v) => json!({ "dns": v }),
                tollgate_sdk::SubjectAltName::Email(v) => json!({ "email": v }),
                tollgate_sdk::SubjectAltName::Uri(v) => json!({ "uri": v }),
                tollgate_sdk::SubjectAltName::Ip(v) => json!({ "ip": v }),
            })
            .collect::<Vec<_>>(),
        "not-before": leaf.not_before,
        "not-after": leaf.not_after,
        "pem": leaf.pem,
    })
}

/// Runs the scripted guest in the harness: one TLS connection whose client sent `chain_file`,
/// one request to `/`, and `actions` (phase name to steps) as the plugin's configuration.
async fn run_scripted_on_chain(
    actions: serde_json::Map<String, Value>,
    chain_file: &std::path::Path,
) -> ScenarioReport {
    let text = format!(
        "[plugin]\nconfig = {}\n[connection]\ntls = true\nclient_chain = {}\n\
         [[requests]]\npath = \"/\"\n",
        json_to_toml_inline(&json!({ "actions": actions })),
        toml_string(&chain_file.display().to_string()),
    );
    let scenario = Scenario::from_toml_str(&text, ".").expect("the scenario parses");
    let harness = Harness::new(Runtime::new().unwrap());
    harness.run(guests::SCRIPTED, &scenario).await.unwrap()
}

/// What the gateway answered to `function` in `phase`: in the connection's certificate phase, or
/// in the first request's other phases.
fn host_answers<'a>(report: &'a ScenarioReport, phase: Phase, function: &str) -> Vec<&'a str> {
    let connection = &report.connections[0];
    if phase == Phase::Certificate {
        connection
            .certificate_calls()
            .into_iter()
            .filter(|c| c.function == function)
            .map(|c| c.result.as_str())
            .collect()
    } else {
        connection.requests[0].call_results(phase, function)
    }
}

/// `client-tls.get-client-certificate` in every phase: the host (the scripted guest, on a
/// scenario whose connection presents a client chain, so the harness computes the facts
/// natively) and the SDK's mock (on the same chain) give the same phase answers and the same
/// facts.
#[tokio::test(flavor = "multi_thread")]
async fn get_client_certificate_answers_alike_in_host_harness_and_mock() {
    let pki = tollgate_tests::TestPki::new();
    let (_dir, files) = pki.write_temp().unwrap();
    let call = json!({ "call": "get_client_certificate" });
    let mut actions = serde_json::Map::new();
    for phase in Phase::ALL {
        let steps = match phase {
            Phase::Certificate => json!([{ "call": "request_client_certificate" }, call]),
            Phase::Access => json!([{ "call": "get_client_certificate", "to_header": "x-cert" }]),
            _ => json!([call]),
        };
        actions.insert(phase.name().to_owned(), steps);
    }
    let report = run_scripted_on_chain(actions, &files.client_chain).await;
    let request = &report.connections[0].requests[0];
    let chain = pki.client_chain_pem();

    for phase in Phase::ALL {
        let host = host_answers(&report, phase, "client-tls.get-client-certificate");
        assert_eq!(host.len(), 1, "{phase}: {host:?}\n{report}");
        mock::install(MockHost {
            phase,
            tls: Some(MockTls::with_chain(&chain)),
            ..MockHost::default()
        });
        match client_tls::get_client_certificate() {
            Ok(facts) => {
                assert!(facts.is_some(), "{phase}");
                assert!(host[0].starts_with("ok: Some("), "{phase}: {}", host[0]);
            }
            Err(err) => assert_eq!(host[0], format!("error: {err}"), "{phase}"),
        }
    }
    // Refused exactly where the chain is not known yet.
    mock::install(MockHost {
        phase: Phase::Certificate,
        tls: Some(MockTls::with_chain(&chain)),
        ..MockHost::default()
    });
    assert!(client_tls::get_client_certificate().is_err());

    mock::install(MockHost {
        phase: Phase::Access,
        tls: Some(MockTls::with_chain(&chain)),
        ..MockHost::default()
    });
    let mocked = client_tls::get_client_certificate().unwrap().unwrap();
    let forwarded = request
        .upstream_request
        .as_ref()
        .and_then(|up| up.header("x-cert"))
        .expect("the access phase forwarded the facts");
    let forwarded: Value = serde_json::from_str(
        &percent_encoding::percent_decode_str(&forwarded)
            .decode_utf8()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(forwarded, facts_json(&mocked));
    assert_eq!(
        mocked.pem,
        tollgate_tests::pki::pem_chain(&[pki.leaf.der()])
    );
}

/// `get-escaped-client-certificate` and `get-escaped-full-client-certificate-chain` (0.3.0): in
/// every phase the gateway (through the harness) and the mock give the same answer, refused in
/// `certificate` with the same message, and in `access` the same URL-encoded PEM, which decodes
/// to the leaf and to the chain as the client sent them.
#[tokio::test]
async fn escaped_client_certificate_and_chain_answer_alike_in_host_harness_and_mock() {
    let pki = tollgate_tests::TestPki::new();
    let (_dir, files) = pki.write_temp().unwrap();
    let calls = [
        (
            "get_escaped_client_certificate",
            "client-tls.get-escaped-client-certificate",
            "x-escaped-leaf",
        ),
        (
            "get_escaped_full_client_certificate_chain",
            "client-tls.get-escaped-full-client-certificate-chain",
            "x-escaped-chain",
        ),
    ];
    let mut actions = serde_json::Map::new();
    for phase in Phase::ALL {
        let mut steps = Vec::new();
        if phase == Phase::Certificate {
            steps.push(json!({ "call": "request_client_certificate" }));
        }
        for (call, _, header) in calls {
            steps.push(match phase {
                Phase::Access => json!({ "call": call, "to_header": header }),
                _ => json!({ "call": call }),
            });
        }
        actions.insert(phase.name().to_owned(), Value::Array(steps));
    }
    let report = run_scripted_on_chain(actions, &files.client_chain).await;
    let request = &report.connections[0].requests[0];
    let chain = pki.client_chain_pem();

    let mock_answer = |phase, function: &str| {
        mock::install(MockHost {
            phase,
            tls: Some(MockTls::with_chain(&chain)),
            ..MockHost::default()
        });
        let answer = match function {
            "client-tls.get-escaped-client-certificate" => {
                client_tls::get_escaped_client_certificate()
            }
            _ => client_tls::get_escaped_full_client_certificate_chain(),
        };
        match answer {
            Ok(Some(_)) => "ok: Some".to_owned(),
            Ok(None) => "ok: None".to_owned(),
            Err(err) => format!("error: {err}"),
        }
    };
    for phase in Phase::ALL {
        for (_, function, _) in calls {
            let host = host_answers(&report, phase, function);
            assert_eq!(host.len(), 1, "{phase} {function}: {host:?}\n{report}");
            let mocked = mock_answer(phase, function);
            assert!(
                host[0].starts_with(&mocked),
                "{phase} {function}: {} vs {mocked}",
                host[0]
            );
            assert_eq!(
                phase == Phase::Certificate,
                mocked.starts_with("error: function cannot be called in certificate phase"),
                "{phase} {function}: {mocked}"
            );
        }
    }

    let forwarded = |name| {
        request
            .upstream_request
            .as_ref()
            .and_then(|up| up.header(name))
            .unwrap_or_else(|| panic!("the access phase forwarded {name}"))
    };
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .unwrap()
            .into_owned()
    };
    mock::install(MockHost {
        phase: Phase::Access,
        tls: Some(MockTls::with_chain(&chain)),
        ..MockHost::default()
    });
    let leaf = forwarded("x-escaped-leaf");
    let whole = forwarded("x-escaped-chain");
    assert_eq!(
        Some(&leaf),
        client_tls::get_escaped_client_certificate()
            .unwrap()
            .as_ref()
    );
    assert_eq!(
        Some(&whole),
        client_tls::get_escaped_full_client_certificate_chain()
            .unwrap()
            .as_ref()
    );
    assert_eq!(
        decode(&leaf),
        tollgate_tests::pki::pem_chain(&[pki.leaf.der()])
    );
    assert_eq!(decode(&whole), chain);
    assert!(
        leaf.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{leaf}"
    );
}
