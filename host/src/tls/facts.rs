//! What a finished handshake established about a connection's TLS, in the one shape the request
//! phases, the access log and the offline harness's report all read; the acceptor and the
//! harness fill it through the same functions, so they agree.

use rustls_pki_types::{CertificateDer, UnixTime};

use super::chain_check::{ClientVerify, TrustAnchors, verify_client_chain};
use super::client_chain::ClientChain;
use super::policy::TlsPolicy;

/// The TLS facts of one connection.
#[derive(Clone, Debug)]
pub struct TlsFacts {
    /// OpenSSL's protocol name, `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// OpenSSL's cipher name, such as `TLS_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
    /// The negotiated ALPN protocol; `None` when there was none (and in the offline harness,
    /// whose scenarios do not negotiate one).
    pub alpn: Option<Vec<u8>>,
    /// The client's chain as sent, kept across resumption; `None` when no certificate was
    /// requested on this connection or the client sent none.
    pub client_chain: Option<ClientChain>,
    /// `client_verify` (spec §4) before any `set_client_verify` override.
    pub client_verify: ClientVerify,
}

impl TlsFacts {
    /// The facts of a handshake that negotiated `version` and `cipher` under `policy`, with
    /// the chain the client `presented` (if any) kept and checked as [`client_identity`] says.
    /// No ALPN protocol.
    pub fn negotiated(
        version: &'static str,
        cipher: &'static str,
        policy: &TlsPolicy,
        presented: Option<&[CertificateDer<'_>]>,
        listener_client_ca: Option<&TrustAnchors>,
    ) -> Self {
        let (client_chain, client_verify) = client_identity(policy, presented, listener_client_ca);
        TlsFacts {
            version,
            cipher,
            alpn: None,
            client_chain: client_chain.map(ClientChain::new),
            client_verify,
        }
    }
}

/// The client chain a connection reports and its `client_verify`, from what the client presented
/// and what the policy asked for.
///
/// A resumed session carries the chain of the handshake that made it; it is reported only when
/// this connection's policy asked for a certificate. The chain is verified against the policy's
/// `ca_certs`, else the listener's client CA bundle.
pub fn client_identity(
    policy: &TlsPolicy,
    presented: Option<&[CertificateDer<'_>]>,
    listener_client_ca: Option<&TrustAnchors>,
) -> (Option<Vec<CertificateDer<'static>>>, ClientVerify) {
    let client_chain = presented
        .filter(|chain| policy.request_client_certificate && !chain.is_empty())
        .map(|chain| {
            chain
                .iter()
                .map(|c| c.clone().into_owned())
                .collect::<Vec<_>>()
        });
    let client_verify = match &client_chain {
        Some(chain) => {
            let anchors = policy.ca_certs.as_ref().or(listener_client_ca);
            verify_client_chain(chain, anchors, UnixTime::now())
        }
        None => ClientVerify::None,
    };
    (client_chain, client_verify)
}
