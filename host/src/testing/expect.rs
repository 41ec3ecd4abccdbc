//! Checks a scenario's expectations against what a run produced.

use std::collections::BTreeMap;

use super::report::{ConnectionReport, Expectation, RequestReport, header_value, show_body};
use super::scenario::{
    CallPattern, ConnectionExpect, HeaderExpectation, RequestExpect, VerifyExpectation,
};
use crate::pipeline::TraceEntry;
use crate::runtime::PluginError;

fn outcome(description: String, passed: bool, actual: impl FnOnce() -> String) -> Expectation {
    Expectation {
        description,
        passed,
        actual: (!passed).then(actual),
    }
}

/// Checks a connection's expectations (its requests are checked on their own).
pub fn check_connection(expect: &ConnectionExpect, c: &ConnectionReport) -> Vec<Expectation> {
    let mut out = Vec::new();
    if let Some(wanted) = expect.client_certificate_requested {
        let got = c.policy.request_client_certificate;
        out.push(outcome(
            format!("client_certificate_requested = {wanted}"),
            got == wanted,
            || got.to_string(),
        ));
    }
    if let Some(wanted) = expect.session_reuse_disabled {
        let got = c.policy.disable_session_reuse;
        out.push(outcome(
            format!("session_reuse_disabled = {wanted}"),
            got == wanted,
            || got.to_string(),
        ));
    }
    if let Some(wanted) = &expect.ca_names {
        let got = c.ca_names();
        out.push(outcome(
            format!("ca_names = {wanted:?}"),
            &got == wanted,
            || format!("{got:?}"),
        ));
    }
    if let Some(wanted) = expect.client_chain {
        let got = c.client_chain().is_some();
        out.push(outcome(
            format!("client_chain = {wanted}"),
            got == wanted,
            || got.to_string(),
        ));
    }
    if let Some(wanted) = &expect.client_verify {
        let got = c.client_verify().map(ToString::to_string);
        out.push(check_verify(wanted, got.as_deref()));
    }
    check_calls_and_errors(
        &mut out,
        &expect.calls,
        &c.certificate_trace,
        expect.no_plugin_errors,
        expect.plugin_error.as_deref(),
        &c.plugin_errors,
    );
    out
}

/// Checks a request's expectations.
pub fn check_request(expect: &RequestExpect, r: &RequestReport) -> Vec<Expectation> {
    let mut out = Vec::new();
    if let Some(wanted) = expect.status {
        let got = r.response.status;
        out.push(outcome(format!("status = {wanted}"), got == wanted, || {
            got.to_string()
        }));
    }
    check_headers(
        &mut out,
        "header",
        &expect.headers,
        Some(&r.response.headers),
    );
    check_headers(
        &mut out,
        "upstream header",
        &expect.upstream_headers,
        r.upstream_request.as_ref().map(|u| u.headers.as_slice()),
    );
    if let Some(wanted) = &expect.body {
        let got = &r.response.body;
        out.push(outcome(
            format!("body = {}", show_body(wanted.as_bytes())),
            got.as_slice() == wanted.as_bytes(),
            || show_body(got),
        ));
    }
    if let Some(wanted) = &expect.client_verify {
        out.push(check_verify(wanted, r.client_verify()));
    }
    if let Some(wanted) = &expect.target {
        let got = r.upstream_request.as_ref().map(|u| &u.target);
        out.push(outcome(
            format!("target = \"{wanted}\""),
            got == Some(wanted),
            || got.map_or("no upstream request".to_owned(), |t| format!("\"{t}\"")),
        ));
    }
    check_calls_and_errors(
        &mut out,
        &expect.calls,
        &r.trace,
        expect.no_plugin_errors,
        expect.plugin_error.as_deref(),
        &r.plugin_errors,
    );
    out
}

/// Every expectation of a request that could not run, failed with `reason`.
pub fn not_run(expect: &RequestExpect, label: &str, reason: &str) -> Vec<Expectation> {
    let count = expect.status.iter().count()
        + expect.headers.len()
        + expect.upstream_headers.len()
        + expect.body.iter().count()
        + expect.client_verify.iter().count()
        + expect.target.iter().count()
        + expect.calls.len()
        + usize::from(expect.no_plugin_errors)
        + expect.plugin_error.iter().count();
    if count == 0 {
        return Vec::new();
    }
    vec![Expectation {
        description: format!("{label}: {count} expectation(s)"),
        passed: false,
        actual: Some(format!("not run: {reason}")),
    }]
}

fn check_verify(wanted: &VerifyExpectation, got: Option<&str>) -> Expectation {
    let show = |got: Option<&str>| {
        got.map_or("plaintext (no request.tls)".to_owned(), |v| {
            format!("\"{v}\"")
        })
    };
    match wanted {
        VerifyExpectation::Value(value) => outcome(
            format!("client_verify = \"{value}\""),
            got == Some(value.to_string().as_str()),
            || show(got),
        ),
        VerifyExpectation::Plaintext => outcome(
            "client_verify = false (plaintext)".to_owned(),
            got.is_none(),
            || show(got),
        ),
    }
}

fn check_headers(
    out: &mut Vec<Expectation>,
    what: &str,
    wanted: &BTreeMap<String, HeaderExpectation>,
    headers: Option<&[(String, String)]>,
) {
    for (name, expectation) in wanted {
        let description = match expectation {
            HeaderExpectation::Value(value) => format!("{what} {name} = \"{value}\""),
            HeaderExpectation::Present => format!("{what} {name} present"),
            HeaderExpectation::Absent => format!("{what} {name} absent"),
        };
        let Some(headers) = headers else {
            out.push(outcome(description, false, || {
                "no upstream request (the upstream was not contacted)".to_owned()
            }));
            continue;
        };
        let got = header_value(headers, name);
        let passed = match expectation {
            HeaderExpectation::Value(value) => got.as_deref() == Some(value.as_str()),
            HeaderExpectation::Present => got.is_some(),
            HeaderExpectation::Absent => got.is_none(),
        };
        out.push(outcome(description, passed, || {
            got.map_or("absent".to_owned(), |v| format!("\"{v}\""))
        }));
    }
}

fn check_calls_and_errors(
    out: &mut Vec<Expectation>,
    calls: &[CallPattern],
    trace: &[TraceEntry],
    no_plugin_errors: bool,
    plugin_error: Option<&str>,
    errors: &[PluginError],
) {
    for pattern in calls {
        let found = trace
            .iter()
            .flat_map(|e| &e.calls)
            .any(|c| pattern.matches(c));
        out.push(outcome(format!("call \"{pattern}\""), found, || {
            let same: Vec<String> = trace
                .iter()
                .flat_map(|e| &e.calls)
                .filter(|c| {
                    CallPattern {
                        phase: None,
                        result_prefix: None,
                        ..pattern.clone()
                    }
                    .matches(c)
                })
                .map(|c| format!("{}: {c}", c.phase))
                .collect();
            if same.is_empty() {
                "no such call".to_owned()
            } else {
                same.join("; ")
            }
        }));
    }
    let rendered = || {
        if errors.is_empty() {
            "no plugin errors".to_owned()
        } else {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    if no_plugin_errors {
        out.push(outcome(
            "no plugin errors".to_owned(),
            errors.is_empty(),
            rendered,
        ));
    }
    if let Some(text) = plugin_error {
        let found = errors.iter().any(|e| e.to_string().contains(text));
        out.push(outcome(
            format!("plugin error containing \"{text}\""),
            found,
            rendered,
        ));
    }
}
