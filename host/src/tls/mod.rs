//! TLS termination for client connections: everything the gateway needs to know about, and
//! decide for, the client's TLS handshake.
//!
//! - [`listener`]: a listener's certificates (picked by SNI) and one `rustls::ServerConfig` per
//!   distinct [`TlsPolicy`]. A policy is what the `certificate` phase decided for a connection;
//!   configs are built once per policy and reused because each one carries its own session cache
//!   and ticket key, and building a config per connection would throw resumption away.
//! - [`acceptor`]: reads the ClientHello, runs the certificate phase, finishes the handshake under
//!   the listener's deadline and reports the connection's [`TlsFacts`].
//! - [`facts`]: [`TlsFacts`], the one shape of a connection's TLS facts (version, cipher, ALPN,
//!   the client's chain, `client_verify`) that the request phases, the access log and the
//!   offline harness's report read, and [`client_identity`], which the acceptor and the harness
//!   both compute the chain and `client_verify` with.
//! - `client_cert_request` (private): client certificates are *requested, never required*, and chain problems
//!   never fail the handshake (only a bad CertificateVerify signature does); the chain is checked
//!   afterwards by [`verify_client_chain`], which gives nginx/OpenSSL-style `client_verify` values.
//! - [`chain_check`]: trust anchors, that chain check, and the `set_client_verify` value rule.
//! - [`client_chain`]: the chain as a connection keeps it, with the leaf's facts and the verify
//!   results plugins asked for, each computed once per connection.
//! - [`pem`]: PEM in and out; the chain format of `get_full_client_certificate_chain`.
//! - [`names`]: OpenSSL's names of protocol versions and cipher suites, as logged.

pub mod acceptor;
pub mod chain_check;
pub mod client_chain;
pub mod facts;
pub mod listener;
pub mod names;
pub mod pem;
pub mod policy;
pub mod tickets;

mod client_cert_request;

#[cfg(test)]
pub(crate) mod test_pki;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use acceptor::{ClientHelloInfo, HandshakeError, accept};
pub use chain_check::{ClientVerify, InvalidClientVerify, TrustAnchors, verify_client_chain};
pub use client_chain::ClientChain;
pub use facts::{TlsFacts, client_identity};
pub use listener::{ListenerTls, ServerCertificate, TlsError};
pub use names::{cipher_name, protocol_name};
pub use pem::{PemError, encode_chain, parse_certificates, parse_private_key};
pub use policy::TlsPolicy;
pub use tickets::{TicketKeyError, TicketKeys};

/// A server config that requires a client certificate chaining to `client_ca` (the admin
/// listener's TLS). A key that does not fit `chain` is [`TlsError::InvalidKey`] of index 0.
pub fn mutual_tls_config(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    client_ca: &TrustAnchors,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        client_ca.root_store(),
        provider(),
    )
    .build()
    .map_err(TlsError::ClientVerifier)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::InvalidKey { index: 0, source })?;
    Ok(Arc::new(config))
}

/// The one crypto provider (aws-lc-rs) used by every config, verifier and signature check of
/// the gateway, the upstream client's included.
///
/// Key exchange prefers the X25519 + ML-KEM-768 hybrid (post-quantum) when the client offers
/// it, then X25519 and the NIST curves; named here so that no cargo feature changes it.
/// Kept local rather than installed as the process default so this module never depends on
/// start-up order.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{self, kx_group};
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                kx_groups: vec![
                    kx_group::X25519MLKEM768,
                    kx_group::X25519,
                    kx_group::SECP256R1,
                    kx_group::SECP384R1,
                ],
                ..aws_lc_rs::default_provider()
            })
        })
        .clone()
}
