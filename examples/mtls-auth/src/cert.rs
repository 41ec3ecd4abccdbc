//! What mtls-auth reads from certificates: PEM to DER, and the names a client can be known by.

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// The certificates (DER) of a PEM text, in order. Errors when a block is malformed or is not a
/// certificate; `what` names the text in the message.
pub fn parse_pem(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    Pem::iter_from_buffer(pem.as_bytes())
        .enumerate()
        .map(|(index, block)| {
            let block = block.map_err(|err| format!("{what}: PEM block {index}: {err}"))?;
            if block.label != "CERTIFICATE" {
                return Err(format!(
                    "{what}: PEM block {index} is a {}, not a CERTIFICATE",
                    block.label
                ));
            }
            Ok(block.contents)
        })
        .collect()
}

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// `dNSName`.
    Dns(String),
    /// `rfc822Name` (email).
    Email(String),
    /// `uniformResourceIdentifier`.
    Uri(String),
    /// `iPAddress`.
    Ip(IpAddr),
}

impl San {
    /// The kinds a consumer can be identified by (Kong: DNS names and emails).
    pub fn identity(&self) -> Option<&str> {
        match self {
            San::Dns(name) | San::Email(name) => Some(name),
            San::Uri(_) | San::Ip(_) => None,
        }
    }

    /// The value as it goes into `X-Client-Cert-SAN`.
    pub fn value(&self) -> String {
        match self {
            San::Dns(v) | San::Email(v) | San::Uri(v) => v.clone(),
            San::Ip(ip) => ip.to_string(),
        }
    }
}

/// The certificate's SANs of the kinds above, in order. Values that could not be a header value
/// (control characters, which these string types forbid anyway) are left out.
pub fn sans(cert: &X509Certificate<'_>) -> Vec<San> {
    let Ok(Some(extension)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    let printable = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    extension
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(v) if printable(v) => Some(San::Dns((*v).to_string())),
            GeneralName::RFC822Name(v) if printable(v) => Some(San::Email((*v).to_string())),
            GeneralName::URI(v) if printable(v) => Some(San::Uri((*v).to_string())),
            GeneralName::IPAddress(bytes) => ip(bytes).map(San::Ip),
            _ => None,
        })
        .collect()
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// The subject's common names, in order.
pub fn common_names<'a>(cert: &'a X509Certificate<'_>) -> impl Iterator<Item = &'a str> {
    cert.subject()
        .iter_common_name()
        .filter_map(|attr| attr.as_str().ok())
}
