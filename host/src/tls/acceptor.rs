//! One TLS handshake: read the ClientHello, let the `certificate` phase decide the policy, finish
//! the handshake with that policy's config, all under the listener's deadline, and report the
//! connection's [`TlsFacts`].

use std::io;

use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::facts::TlsFacts;
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

/// Runs the TLS handshake on `tcp`, calling `certificate_phase` once the ClientHello is read
/// (which is where the caller learns the SNI).
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
        Ok::<_, HandshakeError>((stream, policy))
    };
    let (stream, policy) = tokio::time::timeout(listener.handshake_timeout(), handshake)
        .await
        .map_err(|_| HandshakeError::Timeout)??;

    let conn = stream.get_ref().1;
    let facts = TlsFacts {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        ..TlsFacts::negotiated(
            conn.protocol_version().map_or("unknown", protocol_name),
            conn.negotiated_cipher_suite()
                .map_or("unknown", |suite| cipher_name(suite.suite())),
            &policy,
            conn.peer_certificates(),
            listener.client_ca(),
        )
    };
    Ok((stream, facts))
}

#[cfg(test)]
mod tests;
