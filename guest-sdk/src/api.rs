//! The host API as idiomatic Rust: thin wrappers over the generated bindings (in wasm) or the
//! mock (native builds), converting host errors into [`Error`](crate::Error).

#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "tollgate_sdk::__private::bindings",
    });
}

#[cfg(not(target_arch = "wasm32"))]
use crate::mock::host;
#[cfg(target_arch = "wasm32")]
use bindings::tollgate::plugin as host;

use crate::Error;
use bindings::tollgate::plugin::types::Error as HostError;

pub(crate) type HostResult<T> = Result<T, HostError>;

fn lift<T>(result: HostResult<T>) -> Result<T, Error> {
    result.map_err(|err| match err {
        HostError::WrongPhase(message) => Error::WrongPhase(message),
        HostError::InvalidArgument(message) => Error::InvalidArgument(message),
        HostError::NotTls => Error::NotTls,
    })
}

/// Kong's `kong.client.tls`: the client's side of the TLS connection.
pub mod client_tls {
    use super::bindings::tollgate::plugin::client_tls::SubjectAltName as WitSan;
    use super::{Error, host, lift};
    pub use tollgate_phases::{ClientCertificate, SubjectAltName};

    /// Requests (does not require) a client certificate in this handshake. `ca_certs` (PEM CA
    /// certificates) become the CertificateRequest's acceptable CA names, in order, and this
    /// connection's trust anchors. Phase: certificate.
    pub fn request_client_certificate(ca_certs: Option<&str>) -> Result<(), Error> {
        lift(host::client_tls::request_client_certificate(ca_certs))
    }

    /// Keeps this handshake's session out of the cache and ticket-less, so the next connection
    /// does a full handshake. Phase: certificate.
    pub fn disable_session_reuse() -> Result<(), Error> {
        lift(host::client_tls::disable_session_reuse())
    }

    /// The client's chain as PEM, leaf first, exactly as sent; `None` if no certificate was
    /// requested or sent. Phases: rewrite, access, balancer, header_filter, body_filter, log.
    pub fn get_full_client_certificate_chain() -> Result<Option<String>, Error> {
        lift(host::client_tls::get_full_client_certificate_chain())
    }

    /// The client's leaf certificate as the gateway read it (once per connection): DNs as nginx
    /// prints them, serial, fingerprints, SANs, validity and its PEM, so the plugin needs no
    /// X.509 parser. `None` exactly when [`get_full_client_certificate_chain`] is `None`.
    /// Phases: rewrite, access, balancer, header_filter, body_filter, log.
    pub fn get_client_certificate() -> Result<Option<ClientCertificate>, Error> {
        let leaf = lift(host::client_tls::get_client_certificate())?;
        Ok(leaf.map(|leaf| ClientCertificate {
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
                    WitSan::Dns(v) => SubjectAltName::Dns(v),
                    WitSan::Email(v) => SubjectAltName::Email(v),
                    WitSan::Uri(v) => SubjectAltName::Uri(v),
                    WitSan::Ip(v) => SubjectAltName::Ip(v),
                })
                .collect(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            pem: leaf.pem,
        }))
    }

    /// The leaf's PEM, URL-encoded as nginx's `$ssl_client_escaped_cert` is (RFC 3986's
    /// unreserved characters kept, all else `%XX`): ready for a header. The gateway encodes it
    /// once per connection, so forwarding it costs a plugin a copy, not an encoder. `None`
    /// exactly when [`get_full_client_certificate_chain`] is `None`.
    /// Phases: rewrite, access, balancer, header_filter, body_filter, log.
    pub fn get_escaped_client_certificate() -> Result<Option<String>, Error> {
        lift(host::client_tls::get_escaped_client_certificate())
    }

    /// [`get_full_client_certificate_chain`], URL-encoded the same way; encoded once per
    /// connection. Phases: rewrite, access, balancer, header_filter, body_filter, log.
    pub fn get_escaped_full_client_certificate_chain() -> Result<Option<String>, Error> {
        lift(host::client_tls::get_escaped_full_client_certificate_chain())
    }

    /// Overrides `client_verify` in this request's log entry: `SUCCESS`, `NONE` or
    /// `FAILED:<reason>`. Phases: rewrite, access, balancer.
    pub fn set_client_verify(value: &str) -> Result<(), Error> {
        lift(host::client_tls::set_client_verify(value))
    }

    /// Verifies the client's chain against `ca_certs` (PEM) with the gateway's verifier and
    /// clock: `NONE`, `SUCCESS` or `FAILED:<reason>`, as `connection::client_verify` words it.
    /// Sends nothing to the client. The gateway keeps the answer with the connection per CA set. Phases: rewrite, access, balancer, header_filter,
    /// body_filter, log.
    pub fn verify_client_chain(ca_certs: &str) -> Result<String, Error> {
        lift(host::client_tls::verify_client_chain(ca_certs))
    }
}

/// Facts about the client's connection.
pub mod connection {
    use super::{Error, host, lift};

    /// The server name the client asked for. All phases.
    pub fn sni() -> Result<Option<String>, Error> {
        lift(host::connection::sni())
    }

    /// Whether the connection is TLS. All phases.
    pub fn is_tls() -> Result<bool, Error> {
        lift(host::connection::is_tls())
    }

    /// The client's `ip:port`. All phases.
    pub fn client_address() -> Result<String, Error> {
        lift(host::connection::client_address())
    }

    /// `TLSv1.2` or `TLSv1.3`. Request phases.
    pub fn tls_version() -> Result<String, Error> {
        lift(host::connection::tls_version())
    }

    /// The cipher suite, OpenSSL's name. Request phases.
    pub fn cipher() -> Result<String, Error> {
        lift(host::connection::cipher())
    }

    /// The handshake's verify result (`NONE`, `SUCCESS`, `FAILED:<reason>`), like nginx's
    /// `$ssl_client_verify`. Request phases.
    pub fn client_verify() -> Result<String, Error> {
        lift(host::connection::client_verify())
    }
}

/// The client's request.
pub mod request {
    use super::{Error, host, lift};

    /// The method. Request phases.
    pub fn method() -> Result<String, Error> {
        lift(host::request::method())
    }

    /// The path, without the query. Request phases.
    pub fn path() -> Result<String, Error> {
        lift(host::request::path())
    }

    /// The raw query string. Request phases.
    pub fn query() -> Result<Option<String>, Error> {
        lift(host::request::query())
    }

    /// A header's value (repeated values joined by `, `). Request phases.
    pub fn header(name: &str) -> Result<Option<String>, Error> {
        lift(host::request::header(name))
    }

    /// All headers, names lower case. Request phases.
    pub fn headers() -> Result<Vec<(String, String)>, Error> {
        lift(host::request::headers())
    }

    /// Sets a header on the request sent upstream. Phases: rewrite, access.
    pub fn set_header(name: &str, value: &str) -> Result<(), Error> {
        lift(host::request::set_header(name, value))
    }

    /// Removes a header from the request sent upstream. Phases: rewrite, access.
    pub fn remove_header(name: &str) -> Result<(), Error> {
        lift(host::request::remove_header(name))
    }
}

/// The response to the client.
pub mod response {
    use super::{Error, host, lift};

    /// Answers the request instead of the upstream. Phases: rewrite, access.
    pub fn exit(status: u16, headers: &[(String, String)], body: &[u8]) -> Result<(), Error> {
        lift(host::response::exit(status, headers, body))
    }

    /// The status. Phases: header_filter, body_filter, log.
    pub fn status() -> Result<u16, Error> {
        lift(host::response::status())
    }

    /// A header's value. Phases: header_filter, body_filter, log.
    pub fn header(name: &str) -> Result<Option<String>, Error> {
        lift(host::response::header(name))
    }

    /// All headers. Phases: header_filter, body_filter, log.
    pub fn headers() -> Result<Vec<(String, String)>, Error> {
        lift(host::response::headers())
    }

    /// Sets a response header. Phase: header_filter.
    pub fn set_header(name: &str, value: &str) -> Result<(), Error> {
        lift(host::response::set_header(name, value))
    }

    /// Removes a response header. Phase: header_filter.
    pub fn remove_header(name: &str) -> Result<(), Error> {
        lift(host::response::remove_header(name))
    }

    /// Replaces the body chunk being filtered. Phase: body_filter.
    pub fn set_body_chunk(chunk: &[u8]) -> Result<(), Error> {
        lift(host::response::set_body_chunk(chunk))
    }
}

/// The choice of upstream target.
pub mod balancer {
    use super::{Error, host, lift};

    /// The service's targets, `host:port`. Phase: balancer.
    pub fn targets() -> Result<Vec<String>, Error> {
        lift(host::balancer::targets())
    }

    /// Sends this attempt to `target` (`host:port`). Phase: balancer.
    pub fn set_target(target: &str) -> Result<(), Error> {
        lift(host::balancer::set_target(target))
    }

    /// 1 for the first try, 2 for the first retry, ... Phase: balancer.
    pub fn attempt() -> Result<u32, Error> {
        lift(host::balancer::attempt())
    }
}

/// Values shared between phases and plugins. Set in `certificate`, they seed every request on the
/// connection.
pub mod context {
    use super::{Error, host, lift};

    /// The value under `key`. All phases.
    pub fn get(key: &str) -> Result<Option<String>, Error> {
        lift(host::context::get(key))
    }

    /// Stores `value` under `key`. All phases.
    pub fn set(key: &str, value: &str) -> Result<(), Error> {
        lift(host::context::set(key, value))
    }
}

/// The gateway's log, tagged with the plugin and phase. Logging never fails a plugin: errors are
/// dropped.
pub mod log {
    use super::bindings::tollgate::plugin::types::LogLevel as WitLevel;
    use super::host;
    /// A log line's level: the contract's, as the WIT `log-level` enum has it.
    pub use tollgate_phases::LogLevel as Level;

    /// Writes `message` at `level`.
    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => WitLevel::Trace,
            Level::Debug => WitLevel::Debug,
            Level::Info => WitLevel::Info,
            Level::Warn => WitLevel::Warn,
            Level::Error => WitLevel::Error,
        };
        let _ = host::log::log(level, message);
    }

    /// Writes at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Writes at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Writes at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Writes at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}
