//! What the `certificate` phase decided for one connection.

use super::chain_check::TrustAnchors;

/// The per-connection TLS choices made by plugins in the `certificate` phase.
///
/// Connections with equal policies share one server config, and so one session cache.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsPolicy {
    /// Send a CertificateRequest (`request_client_certificate`); the certificate stays optional.
    pub request_client_certificate: bool,
    /// CA names to send and the trust anchors for `client_verify` (`ca_certs`); `None` sends no
    /// names and verifies against the listener's client CA bundle.
    pub ca_certs: Option<TrustAnchors>,
    /// Neither cache this session nor issue a ticket for it (`disable_session_reuse`).
    pub disable_session_reuse: bool,
}
