//! The host side of every WIT import. Each function first checks the phase table, then validates
//! its arguments through the contract's rules ([`tollgate_phases`], shared with the SDK's mock
//! and the harness), then acts on the state lent to the store for this call.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Mutex, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_phases::{
    ClientCertificate, ClientVerify, HostFunction, InvalidArgument, Phase, SubjectAltName, Target,
};

use super::bindings::{
    HostError, LogLevel, balancer, client_tls, connection, context, plugin_log, request, response,
    types,
};
use super::engine::MAX_LOG_LINE;
use super::output::log_line;
use super::store::{HostCall, Lent, PluginStore};
use crate::exchange::{Context, EarlyResponse, ExchangeState, HandshakeState};
use crate::tls::TrustAnchors;

type HostResult<T> = Result<T, HostError>;

/// The message of `error.not-tls`, as the contract words it.
pub const NOT_TLS: &str = "connection is not TLS";

impl HostError {
    /// The error's message, as reports and the SDK render it.
    pub fn message(&self) -> String {
        match self {
            HostError::WrongPhase(message) | HostError::InvalidArgument(message) => message.clone(),
            HostError::NotTls => NOT_TLS.to_string(),
        }
    }
}

fn invalid(message: impl Into<String>) -> HostError {
    HostError::InvalidArgument(message.into())
}

impl From<InvalidArgument> for HostError {
    fn from(err: InvalidArgument) -> Self {
        HostError::InvalidArgument(err.to_string())
    }
}

impl PluginStore {
    /// Whether the harness records this instance's host calls.
    fn recording(&self) -> bool {
        self.calls.is_some()
    }

    /// Runs one host function: phase check first, then `body`, recording the call when the
    /// harness asked for it. `args` renders the arguments and runs only then, so the gateway
    /// never formats or copies them.
    fn guarded<T: Debug>(
        &mut self,
        function: HostFunction,
        args: impl FnOnce() -> String,
        body: impl FnOnce(&mut Self) -> HostResult<T>,
    ) -> HostResult<T> {
        let result = match self.phase {
            None => Err(invalid(format!(
                "{} cannot be called during configure",
                function.wit_name()
            ))),
            Some(phase) => match function.check(phase) {
                Err(wrong) => Err(HostError::WrongPhase(wrong.to_string())),
                Ok(()) => body(self),
            },
        };
        if let (Some(calls), Some(phase)) = (self.calls.as_mut(), self.phase) {
            calls.push(HostCall {
                phase,
                function: function.wit_name(),
                args: args(),
                result: match &result {
                    Ok(value) => render_ok(value),
                    Err(err) => format!("error: {}", err.message()),
                },
            });
        }
        result
    }

    fn handshake(&mut self) -> HostResult<&mut HandshakeState> {
        match self.lent() {
            Lent::Handshake(state) => Ok(state),
            _ => Err(invalid("no connection handshake in progress")),
        }
    }

    fn exchange(&mut self) -> HostResult<&mut ExchangeState> {
        match self.lent() {
            Lent::Exchange(state) => Ok(state),
            _ => Err(invalid("no request in progress")),
        }
    }

    fn context(&mut self) -> HostResult<&mut Context> {
        match self.lent() {
            Lent::Handshake(state) => Ok(&mut state.context),
            Lent::Exchange(state) => Ok(&mut state.context),
            Lent::Nothing => Err(invalid("no connection or request in progress")),
        }
    }

    fn tls_facts(&mut self) -> HostResult<&crate::tls::TlsFacts> {
        self.exchange()?
            .connection
            .tls
            .as_ref()
            .ok_or(HostError::NotTls)
    }
}

fn render_ok<T: Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    if text == "()" {
        "ok".to_string()
    } else {
        format!("ok: {}", shorten(&text))
    }
}

/// Keeps reports readable when a call carries a certificate chain or a body.
fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// A header name by the contract's rule. `http` accepts every name the rule does; its own
/// refusal is kept as a second line, with the contract's message.
fn header_name(name: &str) -> HostResult<HeaderName> {
    tollgate_phases::check_header_name(name)?;
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| InvalidArgument::HeaderName(name.to_owned()).into())
}

/// A header value by the contract's rule (see [`header_name`]).
fn header_value(value: &str) -> HostResult<HeaderValue> {
    tollgate_phases::check_header_value(value)?;
    HeaderValue::from_str(value).map_err(|_| InvalidArgument::HeaderValue(value.to_owned()).into())
}

/// Refuses a `set-header` that would take a head past [`tollgate_phases::MAX_HEADERS`] or
/// [`tollgate_phases::MAX_HEADER_BYTES`]:
/// a guest must not make the host hold (or a peer receive) an unbounded head.
fn check_room_for(headers: &HeaderMap, name: &HeaderName, value: &HeaderValue) -> HostResult<()> {
    let replaced = headers.get_all(name).iter().count();
    let replaced_bytes: usize = headers
        .get_all(name)
        .iter()
        .map(|old| name.as_str().len() + old.len())
        .sum();
    let count = headers.len() - replaced + 1;
    let bytes = head_bytes(headers) - replaced_bytes + name.as_str().len() + value.len();
    Ok(tollgate_phases::check_head_size(count, bytes)?)
}

fn head_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn header_get(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<_> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

impl types::Host for PluginStore {}

impl client_tls::Host for PluginStore {
    fn request_client_certificate(&mut self, ca_certs: Option<String>) -> HostResult<()> {
        self.guarded(
            HostFunction::RequestClientCertificate,
            || format!("{:?}", ca_certs.as_deref().map(shorten)),
            |store| {
                let anchors = match &ca_certs {
                    Some(pem) => Some(
                        TrustAnchors::from_pem(pem)
                            .map_err(|err| invalid(format!("invalid ca_certs: {err}")))?,
                    ),
                    None => None,
                };
                let policy = &mut store.handshake()?.policy;
                policy.request_client_certificate = true;
                if anchors.is_some() {
                    policy.ca_certs = anchors;
                }
                Ok(())
            },
        )
    }

    fn disable_session_reuse(&mut self) -> HostResult<()> {
        self.guarded(HostFunction::DisableSessionReuse, String::new, |store| {
            store.handshake()?.policy.disable_session_reuse = true;
            Ok(())
        })
    }

    fn get_full_client_certificate_chain(&mut self) -> HostResult<Option<String>> {
        self.guarded(
            HostFunction::GetFullClientCertificateChain,
            String::new,
            |store| {
                let chain = store.tls_facts()?.client_chain.as_ref();
                Ok(chain.map(|chain| chain.pem().to_owned()))
            },
        )
    }

    fn get_client_certificate(&mut self) -> HostResult<Option<client_tls::ClientCertificate>> {
        self.guarded(HostFunction::GetClientCertificate, String::new, |store| {
            let Some(chain) = store.tls_facts()?.client_chain.as_ref() else {
                return Ok(None);
            };
            // Read once per connection (the chain keeps it); each call copies it to the guest.
            let leaf = chain.leaf().map_err(|err| invalid(err.to_string()))?;
            Ok(Some(wit_certificate(leaf)))
        })
    }

    fn get_escaped_client_certificate(&mut self) -> HostResult<Option<String>> {
        self.guarded(
            HostFunction::GetEscapedClientCertificate,
            String::new,
            |store| {
                let chain = store.tls_facts()?.client_chain.as_ref();
                Ok(chain.map(|chain| chain.escaped_leaf().to_owned()))
            },
        )
    }

    fn get_escaped_full_client_certificate_chain(&mut self) -> HostResult<Option<String>> {
        self.guarded(
            HostFunction::GetEscapedFullClientCertificateChain,
            String::new,
            |store| {
                let chain = store.tls_facts()?.client_chain.as_ref();
                Ok(chain.map(|chain| chain.escaped_pem().to_owned()))
            },
        )
    }

    fn set_client_verify(&mut self, value: String) -> HostResult<()> {
        self.guarded(
            HostFunction::SetClientVerify,
            || format!("{value:?}"),
            |store| {
                let verify = ClientVerify::parse(&value).map_err(InvalidArgument::from)?;
                store.exchange()?.client_verify_override = Some(verify);
                Ok(())
            },
        )
    }

    fn verify_client_chain(&mut self, ca_certs: String) -> HostResult<String> {
        self.guarded(
            HostFunction::VerifyClientChain,
            || shorten(&format!("{ca_certs:?}")),
            |store| {
                let anchors = cached_anchors(&ca_certs)?;
                let Some(chain) = store.tls_facts()?.client_chain.as_ref() else {
                    return Ok(ClientVerify::None.to_string());
                };
                // Kept with the connection per anchor set: later requests ask for free.
                Ok(chain.verify(&anchors).to_string())
            },
        )
    }
}

/// The contract's facts as the WIT record.
fn wit_certificate(leaf: &ClientCertificate) -> client_tls::ClientCertificate {
    client_tls::ClientCertificate {
        subject: leaf.subject.clone(),
        issuer: leaf.issuer.clone(),
        subject_legacy: leaf.subject_legacy.clone(),
        issuer_legacy: leaf.issuer_legacy.clone(),
        common_names: leaf.common_names.clone(),
        serial: leaf.serial.clone(),
        fingerprint_sha1: leaf.fingerprint_sha1.clone(),
        fingerprint_sha256: leaf.fingerprint_sha256.clone(),
        subject_alt_names: leaf
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SubjectAltName::Dns(v) => client_tls::SubjectAltName::Dns(v.clone()),
                SubjectAltName::Email(v) => client_tls::SubjectAltName::Email(v.clone()),
                SubjectAltName::Uri(v) => client_tls::SubjectAltName::Uri(v.clone()),
                SubjectAltName::Ip(v) => client_tls::SubjectAltName::Ip(v.clone()),
            })
            .collect(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        pem: leaf.pem.clone(),
    }
}

/// Trust anchor sets plugins verified against recently, by their PEM, so a plugin that verifies
/// every request against the same CA list parses it once.
fn cached_anchors(pem: &str) -> HostResult<TrustAnchors> {
    const MAX_CACHED: usize = 64;
    static CACHE: OnceLock<Mutex<HashMap<String, TrustAnchors>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let lock = || {
        cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(anchors) = lock().get(pem) {
        return Ok(anchors.clone());
    }
    let anchors =
        TrustAnchors::from_pem(pem).map_err(|err| invalid(format!("invalid ca_certs: {err}")))?;
    let mut cache = lock();
    if cache.len() >= MAX_CACHED {
        cache.clear();
    }
    cache.insert(pem.to_string(), anchors.clone());
    Ok(anchors)
}

impl connection::Host for PluginStore {
    fn sni(&mut self) -> HostResult<Option<String>> {
        self.guarded(HostFunction::Sni, String::new, |store| {
            Ok(match store.lent() {
                Lent::Handshake(state) => state.sni.clone(),
                Lent::Exchange(state) => state.connection.sni.clone(),
                Lent::Nothing => None,
            })
        })
    }

    fn is_tls(&mut self) -> HostResult<bool> {
        self.guarded(HostFunction::IsTls, String::new, |store| {
            Ok(match store.lent() {
                Lent::Handshake(_) => true,
                Lent::Exchange(state) => state.connection.tls.is_some(),
                Lent::Nothing => false,
            })
        })
    }

    fn client_address(&mut self) -> HostResult<String> {
        self.guarded(
            HostFunction::ClientAddress,
            String::new,
            |store| match store.lent() {
                Lent::Handshake(state) => Ok(state.client_addr.to_string()),
                Lent::Exchange(state) => Ok(state.connection.client_addr.to_string()),
                Lent::Nothing => Err(invalid("no connection")),
            },
        )
    }

    fn tls_version(&mut self) -> HostResult<String> {
        self.guarded(HostFunction::TlsVersion, String::new, |store| {
            Ok(store.tls_facts()?.version.to_owned())
        })
    }

    fn cipher(&mut self) -> HostResult<String> {
        self.guarded(HostFunction::Cipher, String::new, |store| {
            Ok(store.tls_facts()?.cipher.to_owned())
        })
    }

    fn client_verify(&mut self) -> HostResult<String> {
        self.guarded(HostFunction::ClientVerify, String::new, |store| {
            Ok(store.tls_facts()?.client_verify.to_string())
        })
    }
}

impl request::Host for PluginStore {
    fn method(&mut self) -> HostResult<String> {
        self.guarded(HostFunction::RequestMethod, String::new, |store| {
            Ok(store.exchange()?.request.method.clone())
        })
    }

    fn path(&mut self) -> HostResult<String> {
        self.guarded(HostFunction::RequestPath, String::new, |store| {
            Ok(store.exchange()?.request.path.clone())
        })
    }

    fn query(&mut self) -> HostResult<Option<String>> {
        self.guarded(HostFunction::RequestQuery, String::new, |store| {
            Ok(store.exchange()?.request.query.clone())
        })
    }

    fn header(&mut self, name: String) -> HostResult<Option<String>> {
        self.guarded(
            HostFunction::RequestHeader,
            || format!("{name:?}"),
            |store| Ok(header_get(&store.exchange()?.request.headers, &name)),
        )
    }

    fn headers(&mut self) -> HostResult<Vec<(String, String)>> {
        self.guarded(HostFunction::RequestHeaders, String::new, |store| {
            Ok(header_list(&store.exchange()?.request.headers))
        })
    }

    fn set_header(&mut self, name: String, value: String) -> HostResult<()> {
        self.guarded(
            HostFunction::SetRequestHeader,
            || format!("{name:?}, {}", shorten(&format!("{value:?}"))),
            |store| {
                let (name, value) = (header_name(&name)?, header_value(&value)?);
                let headers = &mut store.exchange()?.request.headers;
                check_room_for(headers, &name, &value)?;
                headers.insert(name, value);
                Ok(())
            },
        )
    }

    fn remove_header(&mut self, name: String) -> HostResult<()> {
        self.guarded(
            HostFunction::RemoveRequestHeader,
            || format!("{name:?}"),
            |store| {
                let name = header_name(&name)?;
                store.exchange()?.request.headers.remove(name);
                Ok(())
            },
        )
    }
}

impl response::Host for PluginStore {
    fn exit(
        &mut self,
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> HostResult<()> {
        // Rendered before `body` moves, and only when recording.
        let args = self
            .recording()
            .then(|| format!("{status}, {headers:?}, <{} bytes>", body.len()));
        self.guarded(
            HostFunction::Exit,
            || args.unwrap_or_default(),
            |store| {
                tollgate_phases::check_exit(status, &headers, body.len())?;
                let mut map = HeaderMap::new();
                for (name, value) in &headers {
                    map.append(header_name(name)?, header_value(value)?);
                }
                store.exchange()?.exit = Some(EarlyResponse {
                    status,
                    headers: map,
                    body,
                });
                Ok(())
            },
        )
    }

    fn status(&mut self) -> HostResult<u16> {
        self.guarded(HostFunction::ResponseStatus, String::new, |store| {
            Ok(response_head(store)?.status)
        })
    }

    fn header(&mut self, name: String) -> HostResult<Option<String>> {
        self.guarded(
            HostFunction::ResponseHeader,
            || format!("{name:?}"),
            |store| Ok(header_get(&response_head(store)?.headers, &name)),
        )
    }

    fn headers(&mut self) -> HostResult<Vec<(String, String)>> {
        self.guarded(HostFunction::ResponseHeaders, String::new, |store| {
            Ok(header_list(&response_head(store)?.headers))
        })
    }

    fn set_header(&mut self, name: String, value: String) -> HostResult<()> {
        self.guarded(
            HostFunction::SetResponseHeader,
            || format!("{name:?}, {}", shorten(&format!("{value:?}"))),
            |store| {
                let (name, value) = (header_name(&name)?, header_value(&value)?);
                let headers = &mut response_head(store)?.headers;
                check_room_for(headers, &name, &value)?;
                headers.insert(name, value);
                Ok(())
            },
        )
    }

    fn remove_header(&mut self, name: String) -> HostResult<()> {
        self.guarded(
            HostFunction::RemoveResponseHeader,
            || format!("{name:?}"),
            |store| {
                let name = header_name(&name)?;
                response_head(store)?.headers.remove(name);
                Ok(())
            },
        )
    }

    fn set_body_chunk(&mut self, chunk: Vec<u8>) -> HostResult<()> {
        let len = chunk.len();
        self.guarded(
            HostFunction::SetBodyChunk,
            move || format!("<{len} bytes>"),
            |store| {
                tollgate_phases::check_body(chunk.len())?;
                store.exchange()?.body_chunk = Some(chunk);
                Ok(())
            },
        )
    }
}

fn response_head(store: &mut PluginStore) -> HostResult<&mut crate::exchange::ResponseHead> {
    store
        .exchange()?
        .response
        .as_mut()
        .ok_or_else(|| invalid("no response yet"))
}

impl balancer::Host for PluginStore {
    fn targets(&mut self) -> HostResult<Vec<String>> {
        self.guarded(HostFunction::BalancerTargets, String::new, |store| {
            let targets = &store.exchange()?.balancer.targets;
            Ok(targets.iter().map(Target::to_string).collect())
        })
    }

    fn set_target(&mut self, target: String) -> HostResult<()> {
        self.guarded(
            HostFunction::SetTarget,
            || format!("{target:?}"),
            |store| {
                let target = Target::parse(&target).map_err(InvalidArgument::from)?;
                store.exchange()?.balancer.target = Some(target);
                Ok(())
            },
        )
    }

    fn attempt(&mut self) -> HostResult<u32> {
        self.guarded(HostFunction::BalancerAttempt, String::new, |store| {
            Ok(store.exchange()?.balancer.attempt)
        })
    }
}

impl context::Host for PluginStore {
    fn get(&mut self, key: String) -> HostResult<Option<String>> {
        self.guarded(
            HostFunction::ContextGet,
            || format!("{key:?}"),
            |store| Ok(store.context()?.get(&key).cloned()),
        )
    }

    fn set(&mut self, key: String, value: String) -> HostResult<()> {
        // Rendered before `key` and `value` move, and only when recording.
        let args = self
            .recording()
            .then(|| format!("{key:?}, {}", shorten(&format!("{value:?}"))));
        self.guarded(
            HostFunction::ContextSet,
            || args.unwrap_or_default(),
            |store| {
                let context = store.context()?;
                tollgate_phases::check_context_set(
                    &key,
                    &value,
                    context.len(),
                    context.contains_key(&key),
                )?;
                context.insert(key, value);
                Ok(())
            },
        )
    }
}

impl plugin_log::Host for PluginStore {
    fn log(&mut self, level: LogLevel, message: String) -> HostResult<()> {
        self.guarded(
            HostFunction::Log,
            || shorten(&format!("{level:?}, {message:?}")),
            |store| {
                // Counted against the call's output allowance like stdout and stderr; past it
                // the line is dropped (and counted), not an error: logging must not fail a call.
                if !store.output.take(message.len().min(MAX_LOG_LINE) + 1) {
                    return Ok(());
                }
                let plugin = &*store.plugin;
                let phase = store.phase.map_or("configure", Phase::name);
                let message = log_line(&message);
                macro_rules! emit {
                    ($level:ident) => {
                        tracing::$level!(target: "tollgate::plugin", plugin, phase, "{message}")
                    };
                }
                match level {
                    LogLevel::Trace => emit!(trace),
                    LogLevel::Debug => emit!(debug),
                    LogLevel::Info => emit!(info),
                    LogLevel::Warn => emit!(warn),
                    LogLevel::Error => emit!(error),
                }
                Ok(())
            },
        )
    }
}
