//! A TLS listener's certificates and its server configs, one per [`TlsPolicy`].
//!
//! rustls keeps the session cache and the ticket key in the `ServerConfig`, so a config is built
//! the first time a policy is seen and reused for every later connection with that policy. Each
//! policy gets its own ticket key as well as its own cache: a session made under one policy
//! (say, no certificate requested) is never resumed under another (certificate requested), which
//! would skip the CertificateRequest that policy asks for (rustls's `ServerConfig` docs warn
//! about exactly this when storage is shared between configs with different verifiers).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::chain_check::TrustAnchors;
use super::client_cert_request::RequestClientCertificate;
use super::policy::TlsPolicy;
use super::tickets::TicketKeys;

/// Sessions kept per server config (per policy) for session-ID resumption.
const SESSION_CACHE_SIZE: usize = 1024;

/// Distinct policies whose configs are kept. Policies come from plugins (`ca_certs` is plugin
/// data), so the map is bounded; past this, configs are built per connection and work the same,
/// except that their sessions cannot be resumed.
const MAX_CACHED_POLICIES: usize = 256;

/// ALPN protocols offered, in server preference order.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A certificate chain with its key and the server names it answers for.
pub struct ServerCertificate {
    /// Exact names (`api.example.com`) or one-label wildcards (`*.example.com`); empty means
    /// this is the default certificate.
    pub server_names: Vec<String>,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("server_names", &self.server_names)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Why a listener's TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS listener needs at least one certificate.
    #[error("a TLS listener needs at least one certificate")]
    NoCertificate,
    /// A certificate entry has an empty chain (`index` counts from 0).
    #[error("certificate {index} has an empty chain")]
    EmptyChain {
        /// Position of the entry.
        index: usize,
    },
    /// A key is unusable or does not match its certificate.
    #[error("certificate {index}: {source}")]
    InvalidKey {
        /// Position of the entry.
        index: usize,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// A client CA bundle cannot verify client certificates (no usable anchor in it).
    #[error("the client CA bundle cannot verify client certificates: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A listener's TLS side: its certificates, its client CA bundle, its handshake deadline and the
/// server configs built so far.
pub struct ListenerTls {
    resolver: Arc<SniResolver>,
    client_ca: Option<TrustAnchors>,
    handshake_timeout: Duration,
    /// Session-ticket keys shared with other replicas; `None`: random keys of this process.
    ticket_keys: Option<TicketKeys>,
    configs: Mutex<HashMap<TlsPolicy, Arc<ServerConfig>>>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("resolver", &self.resolver)
            .field("client_ca", &self.client_ca)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Loads the certificates (the first without server names, else the first, is the default)
    /// and checks that the default config can be built.
    pub fn new(
        certs: Vec<ServerCertificate>,
        client_ca: Option<TrustAnchors>,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let listener = Self {
            resolver: Arc::new(SniResolver::new(certs)?),
            client_ca,
            handshake_timeout,
            ticket_keys: None,
            configs: Mutex::new(HashMap::new()),
        };
        listener.config_for(&TlsPolicy::default())?;
        Ok(listener)
    }

    /// Encrypts session tickets with `keys` (shared by a fleet) instead of random keys of this
    /// process.
    pub fn with_ticket_keys(mut self, keys: TicketKeys) -> Self {
        self.ticket_keys = (!keys.is_empty()).then_some(keys);
        self.configs = Mutex::new(HashMap::new());
        self
    }

    /// The listener's client CA bundle: trust anchors when the policy names none.
    pub fn client_ca(&self) -> Option<&TrustAnchors> {
        self.client_ca.as_ref()
    }

    /// The deadline for a whole handshake, ClientHello to Finished.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The server config for `policy`, built on first use and then shared.
    pub fn config_for(&self, policy: &TlsPolicy) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = configs.get(policy) {
            return Ok(config.clone());
        }
        let config = Arc::new(self.build_config(policy)?);
        if configs.len() < MAX_CACHED_POLICIES {
            configs.insert(policy.clone(), config.clone());
        } else {
            tracing::warn!(
                limit = MAX_CACHED_POLICIES,
                "too many distinct TLS policies; this one's sessions will not resume"
            );
        }
        Ok(config)
    }

    fn build_config(&self, policy: &TlsPolicy) -> Result<ServerConfig, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?;
        let builder = if policy.request_client_certificate {
            let names = policy
                .ca_certs
                .as_ref()
                .map(TrustAnchors::distinguished_names)
                .unwrap_or_default();
            builder.with_client_cert_verifier(Arc::new(RequestClientCertificate::new(names)))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        if policy.disable_session_reuse {
            config.session_storage = Arc::new(ForgetSessions);
            config.send_tls13_tickets = 0;
        } else {
            config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
            config.ticketer = match &self.ticket_keys {
                Some(keys) => Arc::new(keys.ticketer(&policy_fingerprint(policy))),
                None => rustls::crypto::aws_lc_rs::Ticketer::new()?,
            };
        }
        Ok(config)
    }
}

/// The same bytes for equal policies in every process: what binds a shared-key ticket to the
/// policy that issued it.
fn policy_fingerprint(policy: &TlsPolicy) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update([
        u8::from(policy.request_client_certificate),
        u8::from(policy.disable_session_reuse),
    ]);
    for cert in policy.ca_certs.iter().flat_map(TrustAnchors::certificates) {
        hash.update((cert.len() as u64).to_be_bytes());
        hash.update(cert);
    }
    hash.finalize().into()
}

/// Session storage for `disable_session_reuse` that stores nothing.
///
/// Unlike rustls's `NoServerSessionStorage` it says it can cache, so TLS 1.2 handshakes still
/// hand out a session ID, as OpenSSL does with its cache off; the ID is never stored, so offering
/// it back always misses and the handshake is full. Clients that keep such sessions
/// (`openssl s_client -sess_out`, then `-sess_in`) therefore see `New`, not a missing session.
/// TLS 1.3 gets no ticket: `put` refuses, and rustls then issues none.
#[derive(Debug)]
struct ForgetSessions;

impl StoresServerSessions for ForgetSessions {
    fn put(&self, _key: Vec<u8>, _value: Vec<u8>) -> bool {
        false
    }

    fn get(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn take(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Picks the certificate by SNI: exact name, then wildcard, then the default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix including the leading dot, key), in configuration order.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(certs: Vec<ServerCertificate>) -> Result<Self, TlsError> {
        let provider = super::provider();
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut first = None;
        let mut default = None;
        for (index, cert) in certs.into_iter().enumerate() {
            if cert.chain.is_empty() {
                return Err(TlsError::EmptyChain { index });
            }
            let key = Arc::new(
                CertifiedKey::from_der(cert.chain, cert.key, &provider)
                    .map_err(|source| TlsError::InvalidKey { index, source })?,
            );
            first.get_or_insert_with(|| key.clone());
            if cert.server_names.is_empty() {
                default.get_or_insert_with(|| key.clone());
            }
            for name in cert.server_names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        wildcard.push((suffix.to_owned(), key.clone()))
                    }
                    _ => {
                        exact.entry(name).or_insert_with(|| key.clone());
                    }
                }
            }
        }
        let default = default.or(first).ok_or(TlsError::NoCertificate)?;
        Ok(Self {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sni) = sni.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(&sni) {
            return key;
        }
        // A wildcard covers exactly one label: `*.example.com` matches `a.example.com` only.
        let parent = sni.find('.').map(|dot| &sni[dot..]);
        self.wildcard
            .iter()
            .find(|(suffix, _)| Some(suffix.as_str()) == parent)
            .map_or(&self.default, |(_, key)| key)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_pki::{Pki, key_der};

    fn server_cert(pki: &Pki, names: &[&str]) -> ServerCertificate {
        ServerCertificate {
            server_names: names.iter().map(|n| n.to_string()).collect(),
            chain: vec![pki.server.der().clone()],
            key: key_der(&pki.server_key),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let a = Pki::new();
        let b = Pki::new();
        let c = Pki::new();
        let resolver = SniResolver::new(vec![
            server_cert(&a, &["api.example.com"]),
            server_cert(&b, &["*.example.com"]),
            server_cert(&c, &[]),
        ])
        .unwrap();
        let leaf = |sni| resolver.pick(sni).cert[0].clone();
        assert_eq!(leaf(Some("API.example.com")), *a.server.der());
        assert_eq!(leaf(Some("www.example.com")), *b.server.der());
        assert_eq!(leaf(Some("a.b.example.com")), *c.server.der());
        assert_eq!(leaf(Some("example.com")), *c.server.der());
        assert_eq!(leaf(None), *c.server.der());
    }

    #[test]
    fn first_certificate_is_default_without_an_unnamed_one() {
        let a = Pki::new();
        let b = Pki::new();
        let resolver = SniResolver::new(vec![
            server_cert(&a, &["a.test"]),
            server_cert(&b, &["b.test"]),
        ])
        .unwrap();
        assert_eq!(resolver.pick(Some("other.test")).cert[0], *a.server.der());
    }

    #[test]
    fn listener_needs_a_certificate_and_a_matching_key() {
        let timeout = Duration::from_secs(1);
        assert!(matches!(
            ListenerTls::new(Vec::new(), None, timeout),
            Err(TlsError::NoCertificate)
        ));
        let a = Pki::new();
        let b = Pki::new();
        let mismatched = ServerCertificate {
            server_names: Vec::new(),
            chain: vec![a.server.der().clone()],
            key: key_der(&b.server_key),
        };
        assert!(matches!(
            ListenerTls::new(vec![mismatched], None, timeout),
            Err(TlsError::InvalidKey { index: 0, .. })
        ));
    }

    #[test]
    fn one_config_per_policy_is_reused() {
        let pki = Pki::new();
        let listener =
            ListenerTls::new(vec![server_cert(&pki, &[])], None, Duration::from_secs(1)).unwrap();
        let plain = TlsPolicy::default();
        let request = TlsPolicy {
            request_client_certificate: true,
            ..TlsPolicy::default()
        };
        let c1 = listener.config_for(&plain).unwrap();
        let c2 = listener.config_for(&plain.clone()).unwrap();
        let c3 = listener.config_for(&request).unwrap();
        assert!(Arc::ptr_eq(&c1, &c2));
        assert!(!Arc::ptr_eq(&c1, &c3));
        assert_eq!(c1.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
