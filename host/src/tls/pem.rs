//! PEM in and out.
//!
//! [`encode_chain`] writes the exact chain format of `get_full_client_certificate_chain`
//! (LF only, 64-column base64, no blank lines), so a client's bundle file comes back byte for byte.

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::error::X509Error;

/// Why PEM text could not be turned into certificates or a key.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The text holds no `CERTIFICATE` block at all.
    #[error("no certificate found in PEM")]
    NoCertificate,
    /// The text holds no private key block.
    #[error("no private key found in PEM")]
    NoPrivateKey,
    /// The PEM framing or its base64 is broken.
    #[error("malformed PEM: {0}")]
    Malformed(#[source] std::io::Error),
    /// A block decoded but is not a usable X.509 certificate (`index` counts from 0).
    #[error("certificate {index} is not a valid X.509 certificate: {source}")]
    InvalidCertificate {
        /// Position of the certificate in the input.
        index: usize,
        /// What the X.509 parser found wrong with it.
        #[source]
        source: X509Error,
    },
    /// A CA certificate parses as X.509 but webpki cannot use it as a trust anchor (`index`
    /// counts from 0).
    #[error("certificate {index} cannot be a trust anchor: {source}")]
    UnusableTrustAnchor {
        /// Position of the certificate in the input.
        index: usize,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
}

/// Parses `der` as X.509; `index` is its position, for the error.
pub(crate) fn parse_x509<'a>(
    index: usize,
    der: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, PemError> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|err| PemError::InvalidCertificate {
            index,
            source: X509Error::from(err),
        })
}

/// Encodes certificates as PEM, in the given order: each one
/// `-----BEGIN CERTIFICATE-----\n`, base64 in lines of 64, `-----END CERTIFICATE-----\n`.
pub fn encode_chain(certs: &[CertificateDer<'_>]) -> String {
    // The format is the contract's: the leaf's `pem` fact is written by the same function.
    certs
        .iter()
        .map(|cert| tollgate_phases::certificate_pem(cert.as_ref()))
        .collect()
}

/// Parses every `CERTIFICATE` block of `pem`, in order, and checks each is valid X.509.
///
/// Other block types (keys, parameters) are skipped. Errors when there is no certificate or a
/// block is malformed.
pub fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemError::Malformed)?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    for (index, cert) in certs.iter().enumerate() {
        parse_x509(index, cert)?;
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in `pem`.
pub fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(PemError::Malformed)?
        .ok_or(PemError::NoPrivateKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_pki::Pki;

    #[test]
    fn client_bundle_round_trips_byte_for_byte() {
        let pki = Pki::new();
        // What a client's bundle file looks like: leaf then intermediate, LF, 64 columns.
        let bundle = format!("{}{}", pki.leaf.pem(), pki.intermediate.pem());
        assert!(!bundle.contains('\r') && !bundle.contains("\n\n"));
        let certs = parse_certificates(&bundle).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(encode_chain(&certs), bundle);
    }

    #[test]
    fn encoded_chain_has_64_column_lines_and_ends_with_newline() {
        let pki = Pki::new();
        let pem = encode_chain(&[pki.leaf.der().clone()]);
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert!(pem.lines().filter(|l| !l.starts_with("-----")).count() > 1);
        assert_eq!(encode_chain(&[]), "");
    }

    #[test]
    fn text_without_certificate_is_an_error() {
        assert!(matches!(
            parse_certificates("hello"),
            Err(PemError::NoCertificate)
        ));
        assert!(matches!(
            parse_certificates(""),
            Err(PemError::NoCertificate)
        ));
    }

    #[test]
    fn malformed_certificate_block_is_an_error() {
        let unterminated = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(
            parse_certificates(unterminated),
            Err(PemError::Malformed(_))
        ));
        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let err = parse_certificates(not_x509).unwrap_err();
        assert!(
            matches!(err, PemError::InvalidCertificate { index: 0, .. }),
            "{err}"
        );
        // The parser's error is kept as the source, and its text is the parser's own words.
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.is::<X509Error>(), "{source:?}");
        assert_eq!(
            err.to_string(),
            format!("certificate 0 is not a valid X.509 certificate: {source}")
        );
    }

    #[test]
    fn private_key_parses_and_missing_key_is_an_error() {
        let pki = Pki::new();
        assert!(parse_private_key(&pki.leaf_key.serialize_pem()).is_ok());
        assert!(matches!(
            parse_private_key(&pki.leaf.pem()),
            Err(PemError::NoPrivateKey)
        ));
    }
}
