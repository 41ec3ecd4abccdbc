//! One TLS handshake: read the ClientHello, let the `certificate` phase decide the policy, finish
//! the handshake with that policy's config, all under the listener's deadline, and report what
//! the request phases and the log need.

use std::io;

use rustls::server::Acceptor;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::chain_check::{ClientVerify, TrustAnchors, verify_client_chain};
use super::listener::ListenerTls;
use super::names::{cipher_name, protocol_name};
use super::policy::TlsPolicy;

/// What the `certificate` phase sees of the ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The ALPN protocols the client offered, in its order.
    pub alpn: Vec<Vec<u8>>,
}

/// What a finished handshake established, for the request phases and the log entry.
#[derive(Clone, Debug)]
pub struct TlsFacts {
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// OpenSSL's protocol name, `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// OpenSSL's cipher name, such as `TLS_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The client's chain as sent (leaf first), kept across resumption; `None` when no
    /// certificate was requested on this connection or the client sent none.
    pub client_chain: Option<Vec<CertificateDer<'static>>>,
    /// `client_verify` before any `set_client_verify` override.
    pub client_verify: ClientVerify,
    /// What the certificate phase decided for this connection.
    pub policy: TlsPolicy,
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish the handshake within the listener's deadline.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The connection failed or closed during the handshake.
    #[error("I/O error during TLS handshake: {0}")]
    Io(#[source] io::Error),
    /// The TLS protocol failed (bad message, no common parameters, bad signature, …).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] rustls::Error),
    /// The `certificate` phase returned an error, which aborts the handshake.
    #[error("certificate phase failed: {0}")]
    CertificatePhase(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<io::Error> for HandshakeError {
    /// tokio-rustls reports rustls errors inside `io::Error`; take them back out.
    fn from(error: io::Error) -> Self {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Self::Tls(tls.clone()),
            None => Self::Io(error),
        }
    }
}

impl From<rustls::Error> for HandshakeError {
    fn from(error: rustls::Error) -> Self {
        Self::Tls(error)
    }
}

/// Runs the TLS handshake on `tcp`, calling `certificate_phase` once the ClientHello is read.
///
/// The whole handshake, ClientHello to Finished, runs under the listener's handshake timeout.
/// An error from `certificate_phase` aborts the handshake. `client_verify` is computed after the
/// handshake against the policy's `ca_certs`, else the listener's client CA bundle.
pub async fn accept<F, E>(
    listener: &ListenerTls,
    tcp: TcpStream,
    certificate_phase: F,
) -> Result<(TlsStream<TcpStream>, TlsFacts), HandshakeError>
where
    F: AsyncFnOnce(&ClientHelloInfo) -> Result<TlsPolicy, E>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
        let hello = start.client_hello();
        let info = ClientHelloInfo {
            sni: hello.server_name().map(str::to_owned),
            alpn: hello
                .alpn()
                .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
        };
        let policy = certificate_phase(&info)
            .await
            .map_err(|e| HandshakeError::CertificatePhase(e.into()))?;
        let config = listener.config_for(&policy)?;
        let stream = start.into_stream(config).await?;
        Ok::<_, HandshakeError>((stream, info, policy))
    };
    let (stream, info, policy) = tokio::time::timeout(listener.handshake_timeout(), handshake)
        .await
        .map_err(|_| HandshakeError::Timeout)??;

    let conn = stream.get_ref().1;
    let (client_chain, client_verify) =
        client_identity(&policy, conn.peer_certificates(), listener.client_ca());
    let facts = TlsFacts {
        sni: conn.server_name().map(str::to_owned).or(info.sni),
        version: conn.protocol_version().map_or("unknown", protocol_name),
        cipher: conn
            .negotiated_cipher_suite()
            .map_or("unknown", |suite| cipher_name(suite.suite())),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        client_chain,
        client_verify,
        policy,
    };
    Ok((stream, facts))
}

/// The client chain a connection reports and its `client_verify`, from what the client presented
/// and what the policy asked for. The offline harness uses this too, so both agree.
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

#[cfg(test)]
mod tests;
