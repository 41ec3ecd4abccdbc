//! An in-process stand-in for the gateway, used when a plugin crate is compiled natively (for
//! `cargo test`). A test installs a [`MockHost`] describing the connection, request and phase,
//! calls the plugin's methods, then inspects what the plugin did.
//!
//! The mock enforces the same phase table and validates arguments through the same contract
//! rules ([`tollgate_phases`]) as the gateway, including its bounds on heads, bodies and the
//! context, so a call the gateway refuses fails in unit tests with the same message.

use std::cell::RefCell;
use std::collections::BTreeMap;

use tollgate_phases::{
    ClientCertificate, ClientVerify, HostFunction, InvalidArgument, Phase, SubjectAltName, Target,
    escape_pem, leaf_pem,
};

use crate::api::bindings::tollgate::plugin::client_tls::{
    ClientCertificate as WitCertificate, SubjectAltName as WitSan,
};
use crate::api::bindings::tollgate::plugin::types::{Error as HostError, LogLevel as WitLevel};
use crate::log::Level;

/// The TLS session the mock connection has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockTls {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// OpenSSL cipher name.
    pub cipher: String,
    /// The chain `get_full_client_certificate_chain` returns; `get_client_certificate` reads
    /// its first block.
    pub client_chain_pem: Option<String>,
    /// The handshake's verify result.
    pub client_verify: ClientVerify,
}

impl Default for MockTls {
    fn default() -> Self {
        MockTls {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_chain_pem: None,
            client_verify: ClientVerify::None,
        }
    }
}

impl MockTls {
    /// A TLS session whose client sent `chain_pem` (not verified: `FAILED:unable to get local
    /// issuer certificate`, as with no trust anchors).
    pub fn with_chain(chain_pem: &str) -> Self {
        MockTls {
            client_chain_pem: Some(chain_pem.to_string()),
            client_verify: ClientVerify::Failed("unable to get local issuer certificate".into()),
            ..MockTls::default()
        }
    }
}

/// A response a plugin gave with `response::exit`: status, headers, body.
pub type MockExit = (u16, Vec<(String, String)>, Vec<u8>);

/// The gateway as a plugin sees it: set the inputs, call the plugin, read the outputs.
#[derive(Debug, Clone)]
pub struct MockHost {
    /// The phase calls are made in.
    pub phase: Phase,
    /// The SNI.
    pub sni: Option<String>,
    /// `None` for a plaintext connection.
    pub tls: Option<MockTls>,
    /// The client's `ip:port`.
    pub client_address: String,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Request query.
    pub query: Option<String>,
    /// Request headers (set/removed by the plugin in rewrite/access).
    pub request_headers: Vec<(String, String)>,
    /// Response status (header_filter and later).
    pub response_status: u16,
    /// Response headers (header_filter and later).
    pub response_headers: Vec<(String, String)>,
    /// The balancer's targets.
    pub targets: Vec<String>,
    /// The balancer attempt.
    pub attempt: u32,
    /// The context.
    pub context: BTreeMap<String, String>,

    /// Output: whether `request_client_certificate` was called, and its `ca_certs`.
    pub client_certificate_requested: Option<Option<String>>,
    /// Output: whether `disable_session_reuse` was called.
    pub session_reuse_disabled: bool,
    /// Output: the last `set_client_verify` value.
    pub client_verify_override: Option<ClientVerify>,
    /// Output: the response given with `exit`: status, headers, body.
    pub exit: Option<MockExit>,
    /// Output: the target chosen with `set_target`.
    pub chosen_target: Option<Target>,
    /// Output: the replacement body chunk.
    pub body_chunk: Option<Vec<u8>>,
    /// Output: log lines.
    pub logs: Vec<(Level, String)>,
    /// What `verify_client_chain` answers (the mock does no cryptography): the given CA PEM
    /// and the answer. Unlisted CA sets answer `FAILED:unable to get local issuer certificate`.
    pub chain_verification: Vec<(String, String)>,
}

impl Default for MockHost {
    fn default() -> Self {
        MockHost {
            phase: Phase::Access,
            sni: None,
            tls: None,
            client_address: "127.0.0.1:50000".into(),
            method: "GET".into(),
            path: "/".into(),
            query: None,
            request_headers: Vec::new(),
            response_status: 200,
            response_headers: Vec::new(),
            targets: Vec::new(),
            attempt: 1,
            context: BTreeMap::new(),
            client_certificate_requested: None,
            session_reuse_disabled: false,
            client_verify_override: None,
            exit: None,
            chosen_target: None,
            body_chunk: None,
            logs: Vec::new(),
            chain_verification: Vec::new(),
        }
    }
}

impl MockHost {
    /// The request header's value, as the upstream would get it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        find(&self.request_headers, name)
    }

    /// The response header's value.
    pub fn response_header(&self, name: &str) -> Option<String> {
        find(&self.response_headers, name)
    }
}

fn find(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<_> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn put(headers: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    if let Some(value) = value {
        headers.push((name.to_ascii_lowercase(), value.to_string()));
    }
}

thread_local! {
    static HOST: RefCell<MockHost> = RefCell::new(MockHost::default());
}

/// Makes `host` the gateway for this thread's calls.
pub fn install(host: MockHost) {
    HOST.with(|slot| *slot.borrow_mut() = host);
}

/// Reads or changes the installed host.
pub fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
    HOST.with(|slot| f(&mut slot.borrow_mut()))
}

/// Removes the installed host and returns it.
pub fn take() -> MockHost {
    HOST.with(|slot| std::mem::take(&mut *slot.borrow_mut()))
}

/// Runs a host function: the phase table first, as the gateway does.
fn call<T>(
    function: HostFunction,
    body: impl FnOnce(&mut MockHost) -> Result<T, HostError>,
) -> Result<T, HostError> {
    with(|host| {
        function
            .check(host.phase)
            .map_err(|wrong| HostError::WrongPhase(wrong.to_string()))?;
        body(host)
    })
}

/// An argument the contract rejects, as the gateway reports it.
fn invalid(err: impl Into<InvalidArgument>) -> HostError {
    HostError::InvalidArgument(err.into().to_string())
}

/// Checks `set-header` against the contract: the name, the value, then the head's bounds with
/// the header replaced.
fn check_set_header(
    headers: &[(String, String)],
    name: &str,
    value: &str,
) -> Result<(), HostError> {
    tollgate_phases::check_header_name(name).map_err(invalid)?;
    tollgate_phases::check_header_value(value).map_err(invalid)?;
    let kept = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name));
    let (count, bytes) = kept.fold((1, name.len() + value.len()), |(count, bytes), (n, v)| {
        (count + 1, bytes + n.len() + v.len())
    });
    tollgate_phases::check_head_size(count, bytes).map_err(invalid)
}

/// The contract's facts as the generated bindings hand them over.
fn wit_certificate(leaf: ClientCertificate) -> WitCertificate {
    WitCertificate {
        subject: leaf.subject,
        issuer: leaf.issuer,
        subject_legacy: leaf.subject_legacy,
        issuer_legacy: leaf.issuer_legacy,
        common_names: leaf.common_names,
        serial: leaf.serial,
        fingerprint_sha1: leaf.fingerprint_sha1,
        fingerprint_sha256: leaf.fingerprint_sha256,
        subject_alt_names: leaf
            .subject_alt_names
            .into_iter()
            .map(|san| match san {
                SubjectAltName::Dns(v) => WitSan::Dns(v),
                SubjectAltName::Email(v) => WitSan::Email(v),
                SubjectAltName::Uri(v) => WitSan::Uri(v),
                SubjectAltName::Ip(v) => WitSan::Ip(v),
            })
            .collect(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        pem: leaf.pem,
    }
}

fn tls(host: &MockHost) -> Result<&MockTls, HostError> {
    host.tls.as_ref().ok_or(HostError::NotTls)
}

/// The mock's side of every import, with the generated bindings' signatures.
pub(crate) mod host {
    use super::*;

    pub mod client_tls {
        use super::*;

        pub fn request_client_certificate(ca_certs: Option<&str>) -> Result<(), HostError> {
            call(HostFunction::RequestClientCertificate, |host| {
                if let Some(pem) = ca_certs
                    && !pem.contains("-----BEGIN CERTIFICATE-----")
                {
                    return Err(HostError::InvalidArgument(
                        "invalid ca_certs: no certificate found".into(),
                    ));
                }
                host.client_certificate_requested = Some(ca_certs.map(str::to_string));
                Ok(())
            })
        }

        pub fn disable_session_reuse() -> Result<(), HostError> {
            call(HostFunction::DisableSessionReuse, |host| {
                host.session_reuse_disabled = true;
                Ok(())
            })
        }

        pub fn get_full_client_certificate_chain() -> Result<Option<String>, HostError> {
            call(HostFunction::GetFullClientCertificateChain, |host| {
                Ok(tls(host)?.client_chain_pem.clone())
            })
        }

        /// Read from the chain's first block by the gateway's own code (the contract crate), so
        /// a plugin's unit tests see exactly the values the gateway gives.
        pub fn get_client_certificate() -> Result<Option<WitCertificate>, HostError> {
            call(HostFunction::GetClientCertificate, |host| {
                let Some(chain) = tls(host)?.client_chain_pem.as_deref() else {
                    return Ok(None);
                };
                let leaf = ClientCertificate::from_chain_pem(chain).map_err(invalid)?;
                Ok(leaf.map(wit_certificate))
            })
        }

        /// The leaf's PEM, escaped by the gateway's code.
        pub fn get_escaped_client_certificate() -> Result<Option<String>, HostError> {
            call(HostFunction::GetEscapedClientCertificate, |host| {
                let Some(chain) = tls(host)?.client_chain_pem.as_deref() else {
                    return Ok(None);
                };
                // The PEM written from the leaf's DER, as the gateway does: no X.509 parse, so a
                // leaf the gateway cannot read is escaped all the same.
                let leaf = leaf_pem(chain).map_err(invalid)?;
                Ok(leaf.map(|leaf| escape_pem(&leaf)))
            })
        }

        pub fn get_escaped_full_client_certificate_chain() -> Result<Option<String>, HostError> {
            call(HostFunction::GetEscapedFullClientCertificateChain, |host| {
                Ok(tls(host)?.client_chain_pem.as_deref().map(escape_pem))
            })
        }

        pub fn verify_client_chain(ca_certs: &str) -> Result<String, HostError> {
            call(HostFunction::VerifyClientChain, |host| {
                if tls(host)?.client_chain_pem.is_none() {
                    return Ok("NONE".into());
                }
                Ok(host
                    .chain_verification
                    .iter()
                    .find(|(cas, _)| cas == ca_certs)
                    .map_or_else(
                        || "FAILED:unable to get local issuer certificate".into(),
                        |(_, answer)| answer.clone(),
                    ))
            })
        }

        pub fn set_client_verify(value: &str) -> Result<(), HostError> {
            call(HostFunction::SetClientVerify, |host| {
                host.client_verify_override = Some(ClientVerify::parse(value).map_err(invalid)?);
                Ok(())
            })
        }
    }

    pub mod connection {
        use super::*;

        pub fn sni() -> Result<Option<String>, HostError> {
            call(HostFunction::Sni, |host| Ok(host.sni.clone()))
        }
        pub fn is_tls() -> Result<bool, HostError> {
            call(HostFunction::IsTls, |host| Ok(host.tls.is_some()))
        }
        pub fn client_address() -> Result<String, HostError> {
            call(HostFunction::ClientAddress, |host| {
                Ok(host.client_address.clone())
            })
        }
        pub fn tls_version() -> Result<String, HostError> {
            call(HostFunction::TlsVersion, |host| {
                Ok(tls(host)?.version.clone())
            })
        }
        pub fn cipher() -> Result<String, HostError> {
            call(HostFunction::Cipher, |host| Ok(tls(host)?.cipher.clone()))
        }
        pub fn client_verify() -> Result<String, HostError> {
            call(HostFunction::ClientVerify, |host| {
                Ok(tls(host)?.client_verify.to_string())
            })
        }
    }

    pub mod request {
        use super::*;

        pub fn method() -> Result<String, HostError> {
            call(HostFunction::RequestMethod, |host| Ok(host.method.clone()))
        }
        pub fn path() -> Result<String, HostError> {
            call(HostFunction::RequestPath, |host| Ok(host.path.clone()))
        }
        pub fn query() -> Result<Option<String>, HostError> {
            call(HostFunction::RequestQuery, |host| Ok(host.query.clone()))
        }
        pub fn header(name: &str) -> Result<Option<String>, HostError> {
            call(HostFunction::RequestHeader, |host| {
                Ok(host.request_header(name))
            })
        }
        pub fn headers() -> Result<Vec<(String, String)>, HostError> {
            call(HostFunction::RequestHeaders, |host| {
                Ok(host.request_headers.clone())
            })
        }
        pub fn set_header(name: &str, value: &str) -> Result<(), HostError> {
            call(HostFunction::SetRequestHeader, |host| {
                check_set_header(&host.request_headers, name, value)?;
                put(&mut host.request_headers, name, Some(value));
                Ok(())
            })
        }
        pub fn remove_header(name: &str) -> Result<(), HostError> {
            call(HostFunction::RemoveRequestHeader, |host| {
                tollgate_phases::check_header_name(name).map_err(invalid)?;
                put(&mut host.request_headers, name, None);
                Ok(())
            })
        }
    }

    pub mod response {
        use super::*;

        pub fn exit(
            status: u16,
            headers: &[(String, String)],
            body: &[u8],
        ) -> Result<(), HostError> {
            call(HostFunction::Exit, |host| {
                tollgate_phases::check_exit(status, headers, body.len()).map_err(invalid)?;
                host.exit = Some((status, headers.to_vec(), body.to_vec()));
                Ok(())
            })
        }
        pub fn status() -> Result<u16, HostError> {
            call(
                HostFunction::ResponseStatus,
                |host| Ok(host.response_status),
            )
        }
        pub fn header(name: &str) -> Result<Option<String>, HostError> {
            call(HostFunction::ResponseHeader, |host| {
                Ok(host.response_header(name))
            })
        }
        pub fn headers() -> Result<Vec<(String, String)>, HostError> {
            call(HostFunction::ResponseHeaders, |host| {
                Ok(host.response_headers.clone())
            })
        }
        pub fn set_header(name: &str, value: &str) -> Result<(), HostError> {
            call(HostFunction::SetResponseHeader, |host| {
                check_set_header(&host.response_headers, name, value)?;
                put(&mut host.response_headers, name, Some(value));
                Ok(())
            })
        }
        pub fn remove_header(name: &str) -> Result<(), HostError> {
            call(HostFunction::RemoveResponseHeader, |host| {
                tollgate_phases::check_header_name(name).map_err(invalid)?;
                put(&mut host.response_headers, name, None);
                Ok(())
            })
        }
        pub fn set_body_chunk(chunk: &[u8]) -> Result<(), HostError> {
            call(HostFunction::SetBodyChunk, |host| {
                tollgate_phases::check_body(chunk.len()).map_err(invalid)?;
                host.body_chunk = Some(chunk.to_vec());
                Ok(())
            })
        }
    }

    pub mod balancer {
        use super::*;

        pub fn targets() -> Result<Vec<String>, HostError> {
            call(HostFunction::BalancerTargets, |host| {
                Ok(host.targets.clone())
            })
        }
        pub fn set_target(target: &str) -> Result<(), HostError> {
            call(HostFunction::SetTarget, |host| {
                host.chosen_target = Some(Target::parse(target).map_err(invalid)?);
                Ok(())
            })
        }
        pub fn attempt() -> Result<u32, HostError> {
            call(HostFunction::BalancerAttempt, |host| Ok(host.attempt))
        }
    }

    pub mod context {
        use super::*;

        pub fn get(key: &str) -> Result<Option<String>, HostError> {
            call(HostFunction::ContextGet, |host| {
                Ok(host.context.get(key).cloned())
            })
        }
        pub fn set(key: &str, value: &str) -> Result<(), HostError> {
            call(HostFunction::ContextSet, |host| {
                tollgate_phases::check_context_set(
                    key,
                    value,
                    host.context.len(),
                    host.context.contains_key(key),
                )
                .map_err(invalid)?;
                host.context.insert(key.to_string(), value.to_string());
                Ok(())
            })
        }
    }

    pub mod log {
        use super::*;

        pub fn log(level: WitLevel, message: &str) -> Result<(), HostError> {
            let level = match level {
                WitLevel::Trace => Level::Trace,
                WitLevel::Debug => Level::Debug,
                WitLevel::Info => Level::Info,
                WitLevel::Warn => Level::Warn,
                WitLevel::Error => Level::Error,
            };
            call(HostFunction::Log, |host| {
                host.logs.push((level, message.to_string()));
                Ok(())
            })
        }
    }
}
