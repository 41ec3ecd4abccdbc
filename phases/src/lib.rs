//! The plugin contract of Tollgate: the phases a plugin runs in, the one table that says which
//! host function may be called in which phase, and the typed values of the plugin API with their
//! rules (upstream targets, `client_verify`, header names and values, status codes, bodies,
//! context entries, log levels), and the client certificate's facts as the gateway reads them
//! (the `x509` feature).
//!
//! Every side of the contract validates through this crate: the gateway on every host call, the
//! guest SDK's native mock (so a plugin's unit tests see the gateway's errors, word for word),
//! and the offline harness when it reads a scenario. The WIT package documents each function's
//! phases; a test in the host checks that the documentation agrees with
//! [`HostFunction::allowed_phases`], and the integration test `contract` runs every rule below
//! through the host, the mock and the harness.
//!
//! ```
//! use tollgate_phases::{HostFunction, Phase, Target};
//!
//! let err = HostFunction::RequestClientCertificate.check(Phase::Access).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "function cannot be called in access phase (only in: certificate)"
//! );
//!
//! let target: Target = "[::1]:8080".parse().unwrap();
//! assert_eq!((target.host(), target.port()), ("::1", 8080));
//! assert_eq!(
//!     "backend:0".parse::<Target>().unwrap_err().to_string(),
//!     "invalid target \"backend:0\": the port must be 1 to 65535"
//! );
//! ```

mod body;
mod client_certificate;
mod client_verify;
mod context;
mod error;
mod headers;
mod log_level;
mod phases;
mod status;
mod target;

pub use body::{MAX_PLUGIN_BODY, check_body};
pub use client_certificate::{ClientCertificate, SubjectAltName};
#[cfg(feature = "x509")]
pub use client_certificate::{certificate_pem, escape_pem, leaf_pem};
pub use client_verify::{ClientVerify, InvalidClientVerify};
pub use context::{MAX_CONTEXT_ENTRIES, MAX_CONTEXT_VALUE, check_context_set};
pub use error::InvalidArgument;
pub use headers::{
    MAX_HEADER_BYTES, MAX_HEADERS, check_exit_headers, check_head_size, check_header_name,
    check_header_value,
};
pub use log_level::LogLevel;
pub use phases::{HostFunction, Phase, PhaseSet, WrongPhase};
pub use status::{STATUS_RANGE, check_status};
pub use target::{InvalidTarget, Target, TargetProblem, is_hostname};

/// Checks the arguments of `response.exit` in the gateway's order: status, body, the head's
/// size, then each header.
pub fn check_exit(
    status: u16,
    headers: &[(String, String)],
    body_len: usize,
) -> Result<(), InvalidArgument> {
    check_status(status)?;
    check_body(body_len)?;
    check_exit_headers(headers)
}
