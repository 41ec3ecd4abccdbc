//! The client's chain as one connection keeps it: the DER the client sent, its PEM in the
//! contract's format, the leaf's facts and the URL-encoded PEM of leaf and chain (made on first
//! use, then kept), and the verify results plugins asked for, per trust-anchor set.
//!
//! Every request on a connection shares one [`ClientChain`], so a plugin that runs per request
//! pays for X.509 parsing and chain verification once per connection, not once per request.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use rustls_pki_types::{CertificateDer, UnixTime};
use tollgate_phases::{ClientCertificate, InvalidArgument, certificate_pem, escape_pem};

use super::chain_check::{ClientVerify, TrustAnchors, verify_client_chain};
use super::pem::{PemError, encode_chain, parse_certificates};

/// Verify results kept per connection; a plugin verifies against one CA set, a route's plugins
/// against a few. Past this many sets the oldest is forgotten.
const MAX_VERIFIED_SETS: usize = 8;

/// A client's chain, leaf first, as sent. Cheap to clone: clones share the caches.
#[derive(Clone)]
pub struct ClientChain(Arc<Inner>);

struct Inner {
    certs: Vec<CertificateDer<'static>>,
    pem: String,
    leaf: OnceLock<Result<ClientCertificate, InvalidArgument>>,
    escaped_leaf: OnceLock<String>,
    escaped_chain: OnceLock<String>,
    verified: Mutex<Vec<(TrustAnchors, ClientVerify)>>,
}

impl ClientChain {
    /// The chain a client presented (not empty), its PEM written in the contract's format.
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Self {
        let pem = encode_chain(&certs);
        Self::with_pem(certs, pem)
    }

    /// A chain given as PEM (scenarios, tests); `pem` is kept as the text plugins read.
    pub fn from_pem(pem: &str) -> Result<Self, PemError> {
        Ok(Self::with_pem(parse_certificates(pem)?, pem.to_owned()))
    }

    fn with_pem(certs: Vec<CertificateDer<'static>>, pem: String) -> Self {
        ClientChain(Arc::new(Inner {
            certs,
            pem,
            leaf: OnceLock::new(),
            escaped_leaf: OnceLock::new(),
            escaped_chain: OnceLock::new(),
            verified: Mutex::new(Vec::new()),
        }))
    }

    /// The certificates, leaf first.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0.certs
    }

    /// The chain as `get-full-client-certificate-chain` returns it.
    pub fn pem(&self) -> &str {
        &self.0.pem
    }

    /// The leaf's facts, read on the first call and kept for the connection.
    pub fn leaf(&self) -> Result<&ClientCertificate, &InvalidArgument> {
        self.0
            .leaf
            .get_or_init(|| match self.0.certs.first() {
                Some(leaf) => ClientCertificate::from_der(leaf.as_ref()),
                None => Err(InvalidArgument::ClientCertificate("empty chain".into())),
            })
            .as_ref()
    }

    /// The leaf's PEM (as [`ClientCertificate::pem`] has it), URL-encoded
    /// (`get-escaped-client-certificate`); made on the first call and kept for the connection.
    /// Needs no X.509 parse: the PEM is written from the DER.
    pub fn escaped_leaf(&self) -> &str {
        self.0.escaped_leaf.get_or_init(|| {
            let leaf = self
                .0
                .certs
                .first()
                .map(|der| certificate_pem(der.as_ref()));
            escape_pem(leaf.as_deref().unwrap_or_default())
        })
    }

    /// [`Self::pem`], URL-encoded (`get-escaped-full-client-certificate-chain`); made on the
    /// first call and kept for the connection.
    pub fn escaped_pem(&self) -> &str {
        self.0.escaped_chain.get_or_init(|| escape_pem(&self.0.pem))
    }

    /// [`verify_client_chain`] against `anchors`, kept per anchor set: a connection's chain and
    /// a CA set give one answer for the connection's life, as the handshake's `client_verify`
    /// does.
    pub fn verify(&self, anchors: &TrustAnchors) -> ClientVerify {
        let lock = || {
            self.0
                .verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some((_, verdict)) = lock().iter().find(|(known, _)| known == anchors) {
            return verdict.clone();
        }
        // Verified outside the lock: requests on one HTTP/2 connection may ask at once, and a
        // second identical verification is cheaper than making them wait.
        let verdict = verify_client_chain(&self.0.certs, Some(anchors), UnixTime::now());
        let mut verified = lock();
        if !verified.iter().any(|(known, _)| known == anchors) {
            if verified.len() >= MAX_VERIFIED_SETS {
                verified.remove(0);
            }
            verified.push((anchors.clone(), verdict.clone()));
        }
        verdict
    }
}

impl fmt::Debug for ClientChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientChain")
            .field("certificates", &self.0.certs.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_pki::{Pki, root};

    #[test]
    fn leaf_facts_are_read_once_per_chain_and_shared_by_clones() {
        let pki = Pki::new();
        let chain = ClientChain::new(pki.client_chain());
        let copy = chain.clone();
        let first: *const ClientCertificate = chain.leaf().expect("readable");
        let again: *const ClientCertificate = copy.leaf().expect("readable");
        assert!(std::ptr::eq(first, again));
        let leaf = chain.leaf().expect("readable");
        assert_eq!(leaf.pem, encode_chain(&pki.client_chain()[..1]));
        assert!(chain.pem().starts_with(&leaf.pem));
    }

    #[test]
    fn escaped_pems_are_made_once_per_chain_and_shared_by_clones() {
        let pki = Pki::new();
        let chain = ClientChain::new(pki.client_chain());
        let copy = chain.clone();
        assert!(std::ptr::eq(chain.escaped_leaf(), copy.escaped_leaf()));
        assert!(std::ptr::eq(chain.escaped_pem(), copy.escaped_pem()));
        let leaf = chain.leaf().expect("readable");
        assert_eq!(chain.escaped_leaf(), escape_pem(&leaf.pem));
        assert_eq!(chain.escaped_pem(), escape_pem(chain.pem()));
        assert!(chain.escaped_pem().starts_with(chain.escaped_leaf()));
        assert!(
            chain
                .escaped_leaf()
                .starts_with("-----BEGIN%20CERTIFICATE-----%0A")
        );
    }

    #[test]
    fn verify_results_are_kept_per_anchor_set() {
        let pki = Pki::new();
        let chain = ClientChain::new(pki.client_chain());
        let ours = TrustAnchors::from_der(vec![pki.root.der().clone()]).expect("anchors");
        let (other, _) = root("Other Root CA");
        let theirs = TrustAnchors::from_der(vec![other.der().clone()]).expect("anchors");
        assert_eq!(chain.verify(&ours), ClientVerify::Success);
        assert_eq!(
            chain.verify(&theirs),
            ClientVerify::Failed("unable to get local issuer certificate".into())
        );
        assert_eq!(chain.verify(&ours), ClientVerify::Success);
        assert_eq!(chain.0.verified.lock().expect("lock").len(), 2);
        for n in 0..MAX_VERIFIED_SETS + 2 {
            let (ca, _) = root(&format!("CA {n}"));
            chain.verify(&TrustAnchors::from_der(vec![ca.der().clone()]).expect("anchors"));
        }
        assert_eq!(
            chain.0.verified.lock().expect("lock").len(),
            MAX_VERIFIED_SETS
        );
    }
}
