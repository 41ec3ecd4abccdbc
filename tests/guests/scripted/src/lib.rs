//! Test guest: a plugin whose host calls come from its configuration, so one guest serves many
//! tests.
//!
//! It implements (and so declares) all seven phases and, in each, runs the steps listed for that phase, in order:
//!
//! ```json
//! {
//!   "actions": {
//!     "certificate": [{ "call": "request_client_certificate", "ca_certs": "-----BEGIN ..." }],
//!     "access": [
//!       { "call": "get_full_client_certificate_chain", "to_header": "x-chain" },
//!       { "call": "set_client_verify", "value": "SUCCESS", "propagate": true }
//!     ]
//!   }
//! }
//! ```
//!
//! Phase keys are the canonical names (`header_filter`, not `header-filter`); phases without a key
//! do nothing. The host records every call and its result, which is what tests read, so a host
//! error does **not** fail the phase unless the step says `"propagate": true` (then the phase
//! fails with the error's message).
//!
//! | `call` | fields | host calls |
//! |---|---|---|
//! | `request_client_certificate` | `ca_certs`? | `client-tls.request-client-certificate` |
//! | `disable_session_reuse` | | `client-tls.disable-session-reuse` |
//! | `get_full_client_certificate_chain` | `to_header`?, `to_context`? | the chain call; a chain it gets is copied percent-encoded into that request header and/or verbatim into that context key |
//! | `get_client_certificate` | `to_header`? | `client-tls.get-client-certificate`; the leaf's facts, as JSON with the WIT record's field names, go percent-encoded into that request header |
//! | `get_escaped_client_certificate` / `get_escaped_full_client_certificate_chain` | `to_header`? | `client-tls.get-escaped-client-certificate` / `get-escaped-full-client-certificate-chain`; the value it gets (already URL-encoded) goes into that request header as it is |
//! | `set_client_verify` | `value` | `client-tls.set-client-verify` |
//! | `client_tls_all` | | all four client-TLS functions, in WIT order (no CA names, value `SUCCESS`) |
//! | `client_tls_report` | `value`? (`SUCCESS`), `to_header`?, `to_response_header`?, `to_context`?, `fail`? | all four client-TLS functions, in WIT order (no CA names, `set_client_verify(value)`); their results, as the JSON report below, go percent-encoded into that request and/or response header, verbatim into that context key, and with `"fail": true` become the phase's error message |
//! | `set_request_header` / `remove_request_header` | `name`, `value` | `request.set-header` / `request.remove-header` |
//! | `exit` | `status`, `headers`? (`[[name, value]]`), `body`? | `response.exit` |
//! | `set_response_header` | `name`, `value` | `response.set-header` |
//! | `set_body` | `from`, `to` | `response.set-body-chunk` with the chunk, `from` replaced by `to` |
//! | `set_target` | `target` | `balancer.set-target` |
//! | `context_set` | `key`, `value` | `context.set` |
//! | `context_get` | `key`, `to_header`?, `to_response_header`? | `context.get`; a value found is copied into that request and/or response header |
//! | `log` | `message`, `level`? (`info`) | `log.log` |
//! | `fail` | `message` | none: the phase fails with `message` |
//!
//! The report of `client_tls_report` is a JSON array of four results, one per call in WIT order;
//! each is `{"ok": null}` (success without a value, or the chain call's "none"), `{"ok": "<chain
//! PEM>"}` or `{"err": "<the host's message>"}`. It has no line breaks, so it also fits a header
//! verbatim (`context_get` copies it that way).
//!
//! An invalid configuration is rejected with `invalid scripted config: <serde's message>`.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use tollgate_sdk::{
    Error, Phase, PhaseError, PhaseResult, Plugin, balancer, client_tls, context, log, request,
    response,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    actions: BTreeMap<String, Vec<Step>>,
}

/// One step: a host call, and whether its error fails the phase.
#[derive(Debug, Deserialize)]
struct Step {
    #[serde(flatten)]
    action: Action,
    #[serde(default)]
    propagate: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
enum Action {
    RequestClientCertificate {
        #[serde(default)]
        ca_certs: Option<String>,
    },
    DisableSessionReuse,
    GetFullClientCertificateChain {
        #[serde(default)]
        to_header: Option<String>,
        #[serde(default)]
        to_context: Option<String>,
    },
    GetClientCertificate {
        #[serde(default)]
        to_header: Option<String>,
    },
    GetEscapedClientCertificate {
        #[serde(default)]
        to_header: Option<String>,
    },
    GetEscapedFullClientCertificateChain {
        #[serde(default)]
        to_header: Option<String>,
    },
    SetClientVerify {
        value: String,
    },
    ClientTlsAll,
    ClientTlsReport {
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        to_header: Option<String>,
        #[serde(default)]
        to_response_header: Option<String>,
        #[serde(default)]
        to_context: Option<String>,
        #[serde(default)]
        fail: bool,
    },
    SetRequestHeader {
        name: String,
        value: String,
    },
    RemoveRequestHeader {
        name: String,
    },
    Exit {
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        body: String,
    },
    SetResponseHeader {
        name: String,
        value: String,
    },
    SetBody {
        from: String,
        to: String,
    },
    SetTarget {
        target: String,
    },
    ContextSet {
        key: String,
        value: String,
    },
    ContextGet {
        key: String,
        #[serde(default)]
        to_header: Option<String>,
        #[serde(default)]
        to_response_header: Option<String>,
    },
    Log {
        message: String,
        #[serde(default)]
        level: Option<String>,
    },
    Fail {
        message: String,
    },
}

/// The configured plugin: its steps, by phase.
#[derive(Debug)]
pub struct Scripted {
    actions: HashMap<Phase, Vec<Step>>,
}

#[tollgate_sdk::plugin]
impl Plugin for Scripted {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config)
            .map_err(|err| format!("invalid scripted config: {err}"))?;
        let mut actions = HashMap::new();
        for (name, steps) in config.actions {
            let phase = Phase::from_name(&name)
                .ok_or_else(|| format!("invalid scripted config: unknown phase {name:?}"))?;
            actions.insert(phase, steps);
        }
        Ok(Scripted { actions })
    }

    fn certificate(&mut self) -> PhaseResult {
        self.run(Phase::Certificate, &[])
    }

    fn rewrite(&mut self) -> PhaseResult {
        self.run(Phase::Rewrite, &[])
    }

    fn access(&mut self) -> PhaseResult {
        self.run(Phase::Access, &[])
    }

    fn balancer(&mut self) -> PhaseResult {
        self.run(Phase::Balancer, &[])
    }

    fn header_filter(&mut self) -> PhaseResult {
        self.run(Phase::HeaderFilter, &[])
    }

    fn body_filter(&mut self, chunk: &[u8], _end_of_stream: bool) -> PhaseResult {
        self.run(Phase::BodyFilter, chunk)
    }

    fn log(&mut self) -> PhaseResult {
        self.run(Phase::Log, &[])
    }
}

impl Scripted {
    fn run(&self, phase: Phase, chunk: &[u8]) -> PhaseResult {
        for step in self.actions.get(&phase).into_iter().flatten() {
            let result = perform(&step.action, chunk)?;
            if step.propagate {
                result?;
            }
        }
        Ok(())
    }
}

/// The gateway's facts of the leaf as JSON, field names as in the WIT record.
fn certificate_json(leaf: &tollgate_sdk::ClientCertificate) -> String {
    serde_json::json!({
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
                tollgate_sdk::SubjectAltName::Dns(v) => serde_json::json!({ "dns": v }),
                tollgate_sdk::SubjectAltName::Email(v) => serde_json::json!({ "email": v }),
                tollgate_sdk::SubjectAltName::Uri(v) => serde_json::json!({ "uri": v }),
                tollgate_sdk::SubjectAltName::Ip(v) => serde_json::json!({ "ip": v }),
            })
            .collect::<Vec<_>>(),
        "not-before": leaf.not_before,
        "not-after": leaf.not_after,
        "pem": leaf.pem,
    })
    .to_string()
}

/// Runs one action. The outer error fails the phase whatever `propagate` says (`fail`); the inner
/// one is the host's answer.
fn perform(action: &Action, chunk: &[u8]) -> Result<Result<(), Error>, PhaseError> {
    Ok(match action {
        Action::RequestClientCertificate { ca_certs } => {
            client_tls::request_client_certificate(ca_certs.as_deref())
        }
        Action::DisableSessionReuse => client_tls::disable_session_reuse(),
        Action::GetFullClientCertificateChain {
            to_header,
            to_context,
        } => client_tls::get_full_client_certificate_chain().and_then(|chain| {
            let Some(chain) = chain else { return Ok(()) };
            if let Some(name) = to_header {
                request::set_header(name, &percent_encode(&chain))?;
            }
            if let Some(key) = to_context {
                context::set(key, &chain)?;
            }
            Ok(())
        }),
        Action::GetClientCertificate { to_header } => client_tls::get_client_certificate()
            .and_then(|leaf| {
                let (Some(leaf), Some(name)) = (leaf, to_header) else {
                    return Ok(());
                };
                request::set_header(name, &percent_encode(&certificate_json(&leaf)))
            }),
        Action::GetEscapedClientCertificate { to_header } => {
            client_tls::get_escaped_client_certificate()
                .and_then(|escaped| set_header_if(to_header, escaped))
        }
        Action::GetEscapedFullClientCertificateChain { to_header } => {
            client_tls::get_escaped_full_client_certificate_chain()
                .and_then(|escaped| set_header_if(to_header, escaped))
        }
        Action::SetClientVerify { value } => client_tls::set_client_verify(value),
        Action::ClientTlsAll => {
            // Every call is made even after an error; the first error is the result.
            let results = [
                client_tls::request_client_certificate(None),
                client_tls::disable_session_reuse(),
                client_tls::get_full_client_certificate_chain().map(drop),
                client_tls::set_client_verify("SUCCESS"),
            ];
            results.into_iter().collect()
        }
        Action::ClientTlsReport {
            value,
            to_header,
            to_response_header,
            to_context,
            fail,
        } => {
            let report = client_tls_report(value.as_deref().unwrap_or("SUCCESS"));
            if *fail {
                return Err(PhaseError::new(report));
            }
            let mut result = Ok(());
            if let Some(name) = to_header {
                result = result.and(request::set_header(name, &percent_encode(&report)));
            }
            if let Some(name) = to_response_header {
                result = result.and(response::set_header(name, &percent_encode(&report)));
            }
            if let Some(key) = to_context {
                result = result.and(context::set(key, &report));
            }
            result
        }
        Action::SetRequestHeader { name, value } => request::set_header(name, value),
        Action::RemoveRequestHeader { name } => request::remove_header(name),
        Action::Exit {
            status,
            headers,
            body,
        } => response::exit(*status, headers, body.as_bytes()),
        Action::SetResponseHeader { name, value } => response::set_header(name, value),
        Action::SetBody { from, to } => {
            let replaced = String::from_utf8_lossy(chunk).replace(from.as_str(), to);
            response::set_body_chunk(replaced.as_bytes())
        }
        Action::SetTarget { target } => balancer::set_target(target),
        Action::ContextSet { key, value } => context::set(key, value),
        Action::ContextGet {
            key,
            to_header,
            to_response_header,
        } => context::get(key).and_then(|value| {
            let Some(value) = value else { return Ok(()) };
            if let Some(name) = to_header {
                request::set_header(name, &value)?;
            }
            if let Some(name) = to_response_header {
                response::set_header(name, &value)?;
            }
            Ok(())
        }),
        Action::Log { message, level } => {
            let level = level
                .as_deref()
                .and_then(log::Level::from_name)
                .unwrap_or(log::Level::Info);
            log::log(level, message);
            Ok(())
        }
        Action::Fail { message } => return Err(PhaseError::new(message.clone())),
    })
}

/// Calls the four client-TLS functions in WIT order and reports their results as JSON.
fn client_tls_report(value: &str) -> String {
    let unit = |result: Result<(), Error>| result.map(|()| None);
    let results = [
        unit(client_tls::request_client_certificate(None)),
        unit(client_tls::disable_session_reuse()),
        client_tls::get_full_client_certificate_chain(),
        unit(client_tls::set_client_verify(value)),
    ];
    let report: Vec<serde_json::Value> = results
        .into_iter()
        .map(|result| match result {
            Ok(value) => serde_json::json!({ "ok": value }),
            Err(err) => serde_json::json!({ "err": err.to_string() }),
        })
        .collect();
    serde_json::Value::Array(report).to_string()
}

/// Sets request header `name`, when a step names one, to `value`, when the host gave one.
fn set_header_if(name: &Option<String>, value: Option<String>) -> Result<(), Error> {
    match (name, value) {
        (Some(name), Some(value)) => request::set_header(name, &value),
        _ => Ok(()),
    }
}

/// Percent-encodes every byte outside RFC 3986's unreserved set, so a PEM chain fits a header.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_every_documented_call() {
        let config = r#"{"actions": {
            "certificate": [{"call": "request_client_certificate"}, {"call": "disable_session_reuse"}],
            "access": [
                {"call": "get_full_client_certificate_chain", "to_header": "x-chain"},
                {"call": "set_client_verify", "value": "NONE", "propagate": true},
                {"call": "client_tls_all"},
                {"call": "client_tls_report", "to_header": "x-r", "to_response_header": "x-r",
                 "to_context": "r", "fail": true, "value": "NONE"},
                {"call": "context_get", "key": "k", "to_header": "x", "to_response_header": "y"},
                {"call": "exit", "status": 403, "body": "no"},
                {"call": "context_get", "key": "k"},
                {"call": "log", "message": "hi", "level": "warn"},
                {"call": "fail", "message": "boom"}
            ]
        }}"#;
        let plugin = Scripted::configure(config).unwrap();
        assert_eq!(plugin.actions[&Phase::Certificate].len(), 2);
        assert!(plugin.actions[&Phase::Access][1].propagate);
    }

    #[test]
    fn bad_config_is_rejected_with_a_message() {
        let err =
            Scripted::configure(r#"{"actions": {"access": [{"call": "nope"}]}}"#).unwrap_err();
        assert!(err.starts_with("invalid scripted config: "), "{err}");
        let err = Scripted::configure(r#"{"actions": {"header-filter": []}}"#).unwrap_err();
        assert!(err.contains("unknown phase \"header-filter\""), "{err}");
    }

    #[test]
    fn percent_encoding_keeps_unreserved_bytes() {
        assert_eq!(percent_encode("a-Z_9.~\n= +"), "a-Z_9.~%0A%3D%20%2B");
    }
}
