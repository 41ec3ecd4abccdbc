//! Distinguished names as nginx's `$ssl_client_s_dn` prints them (OpenSSL's RFC 2253 style):
//! most specific RDN first, `,` between RDNs, `+` inside one, special characters escaped with `\`,
//! control and non-ASCII bytes as `\XX`, so the result is always a valid header value.

use std::fmt::Write;

use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// `CN=alice,O=Tollgate` for a name encoded as O, then CN.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut rdns: Vec<String> = name
        .iter()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.reverse();
    rdns.join(",")
}

fn attribute(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type().to_id_string();
    let name = short_name(&oid).unwrap_or(&oid);
    match attr.as_str() {
        Ok(value) => format!("{name}={}", escape(value)),
        // Not a string type: RFC 4514's `#` and the value's bytes in hex.
        Err(_) => format!("{name}=#{}", hex(attr.as_slice())),
    }
}

/// OpenSSL's short names for the attributes seen in practice; others print as dotted OIDs.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.len().saturating_sub(1);
    for (i, byte) in value.bytes().enumerate() {
        match byte {
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\{byte:02X}");
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    use x509_parser::certificate::X509Certificate;
    use x509_parser::prelude::FromDer;

    use super::*;

    fn subject_of(dn: DistinguishedName) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let (_, parsed) = X509Certificate::from_der(cert.der()).expect("parse");
        rfc4514(parsed.subject())
    }

    #[test]
    fn dn_is_most_specific_first_with_short_names() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "NL");
        dn.push(DnType::OrganizationName, "Tollgate");
        dn.push(DnType::CommonName, "alice");
        assert_eq!(subject_of(dn), "CN=alice,O=Tollgate,C=NL");
    }

    #[test]
    fn dn_escapes_special_and_non_ascii_characters() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "A, B+C");
        dn.push(DnType::CommonName, " #José\n");
        assert_eq!(subject_of(dn), "CN=\\ #Jos\\C3\\A9\\0A,O=A\\, B\\+C");
    }
}
