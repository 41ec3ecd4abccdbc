//! The client certificate check behind `request.tls.client_verify` and its trust anchors.
//!
//! The check runs after the handshake (chain problems never fail it) and reports the first problem
//! in OpenSSL's order and wording: can the chain be built to an anchor, then what webpki finds
//! (dates, purpose, signatures).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;

use super::pem::{PemError, parse_certificates, parse_x509};

// OpenSSL's X509_verify_cert_error_string wording, as nginx puts it after `FAILED:`.
const UNABLE_TO_GET_LOCAL_ISSUER: &str = "unable to get local issuer certificate";
const SELF_SIGNED: &str = "self-signed certificate";
const SELF_SIGNED_IN_CHAIN: &str = "self-signed certificate in certificate chain";
const EXPIRED: &str = "certificate has expired";
const NOT_YET_VALID: &str = "certificate is not yet valid";
const UNSUITABLE_PURPOSE: &str = "unsuitable certificate purpose";
const SIGNATURE_FAILURE: &str = "certificate signature failure";
const INVALID_CA: &str = "invalid CA certificate";
const REVOKED: &str = "certificate revoked";
const VERIFY_FAILED: &str = "certificate verify failed";

/// The value of `request.tls.client_verify`: the contract's type, whose rule `set_client_verify`
/// and the harness share.
pub use tollgate_phases::{ClientVerify, InvalidClientVerify};

/// CA certificates that client chains are verified against, in the order given (which is also
/// the order their names are sent in a CertificateRequest).
///
/// Cheap to clone (shared), and compared and hashed by the certificates' DER, so it can key a
/// cache of server configs. The webpki verifier over these anchors is built once, on first use.
#[derive(Clone)]
pub struct TrustAnchors(Arc<Anchors>);

struct Anchors {
    certs: Vec<CertificateDer<'static>>,
    subjects: Vec<String>,
    /// DER of each subject Name (the SEQUENCE), as sent in a CertificateRequest.
    names: Vec<DistinguishedName>,
    roots: Arc<RootCertStore>,
    verifier: OnceLock<Option<Arc<dyn ClientCertVerifier>>>,
}

impl TrustAnchors {
    /// The anchors as a rustls root store.
    pub(crate) fn root_store(&self) -> Arc<RootCertStore> {
        self.0.roots.clone()
    }

    /// Parses one or more PEM CA certificates.
    pub fn from_pem(pem: &str) -> Result<Self, PemError> {
        Self::from_der(parse_certificates(pem)?)
    }

    /// Takes DER CA certificates; errors when there is none or one is not a usable anchor.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, PemError> {
        if certs.is_empty() {
            return Err(PemError::NoCertificate);
        }
        let mut subjects = Vec::with_capacity(certs.len());
        let mut names = Vec::with_capacity(certs.len());
        let mut roots = RootCertStore::empty();
        for (index, cert) in certs.iter().enumerate() {
            let parsed = parse_x509(index, cert)?;
            subjects.push(parsed.subject().to_string());
            names.push(DistinguishedName::from(parsed.subject().as_raw().to_vec()));
            roots
                .add(cert.clone())
                .map_err(|source| PemError::UnusableTrustAnchor { index, source })?;
        }
        Ok(Self(Arc::new(Anchors {
            certs,
            subjects,
            names,
            roots: Arc::new(roots),
            verifier: OnceLock::new(),
        })))
    }

    /// The certificates, in the given order.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.0.certs
    }

    /// Human-readable subject names in order, like `CN=Demo Root CA, O=Tollgate`.
    pub fn subject_names(&self) -> Vec<String> {
        self.0.subjects.clone()
    }

    /// The subject names as sent in a CertificateRequest's CA list, in order.
    pub fn distinguished_names(&self) -> Vec<DistinguishedName> {
        self.0.names.clone()
    }

    fn verifier(&self) -> Option<&Arc<dyn ClientCertVerifier>> {
        self.0
            .verifier
            .get_or_init(|| {
                WebPkiClientVerifier::builder_with_provider(self.0.roots.clone(), super::provider())
                    .build()
                    .map_err(|e| tracing::warn!(error = %e, "cannot build client chain verifier"))
                    .ok()
            })
            .as_ref()
    }

    fn has_subject(&self, name: &[u8]) -> bool {
        self.0.names.iter().any(|n| n.as_ref() == name)
    }
}

impl PartialEq for TrustAnchors {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.certs == other.0.certs
    }
}

impl Eq for TrustAnchors {}

impl Hash for TrustAnchors {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.certs.hash(state);
    }
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustAnchors")
            .field(&self.0.subjects)
            .finish()
    }
}

/// Verifies a client's chain (leaf first, then the rest as the client sent it) for client
/// authentication against `anchors` at time `now`.
///
/// An empty chain is [`ClientVerify::None`]. Never fails otherwise: problems become
/// [`ClientVerify::Failed`] with OpenSSL's wording of the first one found.
pub fn verify_client_chain(
    chain: &[CertificateDer<'_>],
    anchors: Option<&TrustAnchors>,
    now: UnixTime,
) -> ClientVerify {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return ClientVerify::None;
    };
    let failed = |reason: &str| ClientVerify::Failed(reason.to_owned());
    let Ok((_, parsed_leaf)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return failed(VERIFY_FAILED);
    };
    let parsed_rest: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| c)
        .collect();

    // OpenSSL builds the chain before checking anything else, so issuer problems come first.
    if let Some(reason) = issuer_problem(&parsed_leaf, &parsed_rest, anchors) {
        return failed(reason);
    }
    let Some(verifier) = anchors.and_then(TrustAnchors::verifier) else {
        return failed(UNABLE_TO_GET_LOCAL_ISSUER);
    };
    match verifier.verify_client_cert(leaf, intermediates, now) {
        Ok(_) => ClientVerify::Success,
        Err(rustls::Error::InvalidCertificate(error)) => {
            failed(certificate_error_reason(&error, &parsed_leaf, &parsed_rest))
        }
        Err(_) => failed(VERIFY_FAILED),
    }
}

/// Follows issuer names from the leaf through the client's certificates. `None` when an anchor
/// is reached (by name; signatures are webpki's job), else OpenSSL's reason.
fn issuer_problem(
    leaf: &X509Certificate<'_>,
    rest: &[X509Certificate<'_>],
    anchors: Option<&TrustAnchors>,
) -> Option<&'static str> {
    let mut used = vec![false; rest.len()];
    let mut current = leaf;
    for depth in 0..=rest.len() {
        let issuer = current.issuer().as_raw();
        if anchors.is_some_and(|a| a.has_subject(issuer)) {
            return None;
        }
        if current.subject().as_raw() == issuer {
            return Some(if depth == 0 {
                SELF_SIGNED
            } else {
                SELF_SIGNED_IN_CHAIN
            });
        }
        let next = rest
            .iter()
            .enumerate()
            .position(|(i, c)| !used[i] && c.subject().as_raw() == issuer)?;
        used[next] = true;
        current = &rest[next];
    }
    Some(UNABLE_TO_GET_LOCAL_ISSUER)
}

fn certificate_error_reason(
    error: &CertificateError,
    leaf: &X509Certificate<'_>,
    rest: &[X509Certificate<'_>],
) -> &'static str {
    match error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => EXPIRED,
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            NOT_YET_VALID
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            UNSUITABLE_PURPOSE
        }
        CertificateError::BadSignature
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            SIGNATURE_FAILURE
        }
        CertificateError::UnknownIssuer => UNABLE_TO_GET_LOCAL_ISSUER,
        CertificateError::Revoked => REVOKED,
        // rustls reports webpki's CA-used-as-end-entity and end-entity-used-as-CA only as
        // `Other`; tell them apart from the certificates rather than from error text.
        CertificateError::Other(_) if is_ca(leaf) => UNSUITABLE_PURPOSE,
        CertificateError::Other(_) if rest.iter().any(|c| !is_ca(c)) => INVALID_CA,
        _ => VERIFY_FAILED,
    }
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, date_time_ymd};

    use super::*;
    use crate::tls::test_pki::{Pki, client_params, root};

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn anchors(certs: &[&rcgen::Certificate]) -> TrustAnchors {
        TrustAnchors::from_der(certs.iter().map(|c| c.der().clone()).collect()).unwrap()
    }

    fn failed(reason: &str) -> ClientVerify {
        ClientVerify::Failed(reason.to_owned())
    }

    #[test]
    fn client_verify_displays_like_nginx() {
        assert_eq!(ClientVerify::None.to_string(), "NONE");
        assert_eq!(ClientVerify::Success.to_string(), "SUCCESS");
        assert_eq!(failed("x y").to_string(), "FAILED:x y");
        assert_eq!(failed("").to_string(), "FAILED:");
    }

    #[test]
    fn empty_chain_is_none() {
        let pki = Pki::new();
        assert_eq!(
            verify_client_chain(&[], Some(&anchors(&[&pki.root])), now()),
            ClientVerify::None
        );
    }

    #[test]
    fn chain_to_an_anchor_is_success() {
        let pki = Pki::new();
        let chain = pki.client_chain();
        for a in [
            anchors(&[&pki.root]),
            anchors(&[&pki.intermediate]),
            anchors(&[&pki.intermediate, &pki.root]),
        ] {
            assert_eq!(
                verify_client_chain(&chain, Some(&a), now()),
                ClientVerify::Success
            );
        }
        // The client may also send the root itself.
        let mut with_root = chain.clone();
        with_root.push(pki.root.der().clone());
        let a = anchors(&[&pki.root]);
        assert_eq!(
            verify_client_chain(&with_root, Some(&a), now()),
            ClientVerify::Success
        );
    }

    #[test]
    fn no_anchors_is_unable_to_get_local_issuer() {
        let pki = Pki::new();
        assert_eq!(
            verify_client_chain(&pki.client_chain(), None, now()),
            failed("unable to get local issuer certificate")
        );
    }

    #[test]
    fn unknown_issuer_is_unable_to_get_local_issuer() {
        let pki = Pki::new();
        let (other, _) = root("Other Root CA");
        let other = anchors(&[&other]);
        // Leaf without its intermediate, and with it but under another root.
        for chain in [vec![pki.leaf.der().clone()], pki.client_chain()] {
            assert_eq!(
                verify_client_chain(&chain, Some(&other), now()),
                failed("unable to get local issuer certificate")
            );
        }
        let root_only = anchors(&[&pki.root]);
        assert_eq!(
            verify_client_chain(&[pki.leaf.der().clone()], Some(&root_only), now()),
            failed("unable to get local issuer certificate")
        );
    }

    #[test]
    fn self_signed_leaf_not_trusted_is_self_signed_certificate() {
        let pki = Pki::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = client_params("self").self_signed(&key).unwrap();
        let chain = [leaf.der().clone()];
        for a in [None, Some(anchors(&[&pki.root]))] {
            assert_eq!(
                verify_client_chain(&chain, a.as_ref(), now()),
                failed("self-signed certificate")
            );
        }
    }

    #[test]
    fn untrusted_root_in_chain_is_self_signed_in_certificate_chain() {
        let pki = Pki::new();
        let (other, _) = root("Other Root CA");
        let mut chain = pki.client_chain();
        chain.push(pki.root.der().clone());
        for a in [None, Some(anchors(&[&other]))] {
            assert_eq!(
                verify_client_chain(&chain, a.as_ref(), now()),
                failed("self-signed certificate in certificate chain")
            );
        }
    }

    #[test]
    fn expired_leaf_is_certificate_has_expired() {
        let pki = Pki::new();
        let leaf = pki.leaf_with(|p| {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        });
        let chain = [leaf, pki.intermediate.der().clone()];
        assert_eq!(
            verify_client_chain(&chain, Some(&anchors(&[&pki.root])), now()),
            failed("certificate has expired")
        );
    }

    #[test]
    fn future_leaf_is_certificate_is_not_yet_valid() {
        let pki = Pki::new();
        let leaf = pki.leaf_with(|p| {
            p.not_before = date_time_ymd(2090, 1, 1);
            p.not_after = date_time_ymd(2091, 1, 1);
        });
        let chain = [leaf, pki.intermediate.der().clone()];
        assert_eq!(
            verify_client_chain(&chain, Some(&anchors(&[&pki.root])), now()),
            failed("certificate is not yet valid")
        );
        // The same through `now`: a valid chain checked before the epoch of its leaf.
        let early = UnixTime::since_unix_epoch(Duration::from_secs(0));
        assert_eq!(
            verify_client_chain(&pki.client_chain(), Some(&anchors(&[&pki.root])), early),
            failed("certificate is not yet valid")
        );
    }

    #[test]
    fn server_only_eku_is_unsuitable_certificate_purpose() {
        let pki = Pki::new();
        let leaf = pki.leaf_with(|p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        let chain = [leaf, pki.intermediate.der().clone()];
        assert_eq!(
            verify_client_chain(&chain, Some(&anchors(&[&pki.root])), now()),
            failed("unsuitable certificate purpose")
        );
    }

    #[test]
    fn ca_used_as_leaf_is_unsuitable_certificate_purpose() {
        let pki = Pki::new();
        let leaf = pki.leaf_with(|p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        });
        let chain = [leaf, pki.intermediate.der().clone()];
        assert_eq!(
            verify_client_chain(&chain, Some(&anchors(&[&pki.root])), now()),
            failed("unsuitable certificate purpose")
        );
    }

    #[test]
    fn tampered_signature_is_certificate_signature_failure() {
        let pki = Pki::new();
        let mut der = pki.leaf.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let chain = [CertificateDer::from(der), pki.intermediate.der().clone()];
        assert_eq!(
            verify_client_chain(&chain, Some(&anchors(&[&pki.root])), now()),
            failed("certificate signature failure")
        );
    }

    #[test]
    fn trust_anchors_keep_order_and_names() {
        let pki = Pki::new();
        let pem = format!("{}{}", pki.intermediate.pem(), pki.root.pem());
        let a = TrustAnchors::from_pem(&pem).unwrap();
        assert_eq!(
            a.subject_names(),
            [
                "CN=Demo Intermediate CA, O=Tollgate",
                "CN=Demo Root CA, O=Tollgate"
            ]
        );
        // Same bytes as rustls would send for these roots.
        let mut store = RootCertStore::empty();
        store.add(pki.intermediate.der().clone()).unwrap();
        store.add(pki.root.der().clone()).unwrap();
        let bytes = |names: Vec<DistinguishedName>| {
            names
                .iter()
                .map(|n| n.as_ref().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(bytes(a.distinguished_names()), bytes(store.subjects()));

        let same = TrustAnchors::from_pem(&pem).unwrap();
        let reversed = anchors(&[&pki.root, &pki.intermediate]);
        assert_eq!(a, same);
        assert_ne!(a, reversed);
        let hash = |t: &TrustAnchors| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            t.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&same));
        assert!(TrustAnchors::from_der(Vec::new()).is_err());
        assert!(TrustAnchors::from_pem("nope").is_err());
    }
}
