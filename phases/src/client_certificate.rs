//! The client leaf's facts (`client-tls.get-client-certificate`), spelled as nginx's
//! `$ssl_client_*` variables spell them, which is also what Kong's plugins forward.
//!
//! The type is plain data, available everywhere. Reading it from a certificate
//! ([`ClientCertificate::from_der`]) is behind the `x509` feature, which the gateway and the
//! SDK's native mock turn on: both read a certificate by this one code, so a plugin's unit tests
//! see exactly the gateway's values, and plugins compiled to wasm carry no X.509 parser.

/// What the gateway read from the client's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCertificate {
    /// Subject DN, RFC 2253 (`$ssl_client_s_dn`): `CN=alice,O=Tollgate`.
    pub subject: String,
    /// Issuer DN, RFC 2253 (`$ssl_client_i_dn`).
    pub issuer: String,
    /// Subject DN, OpenSSL's one-line form (`$ssl_client_s_dn_legacy`): `/O=Tollgate/CN=alice`.
    pub subject_legacy: String,
    /// Issuer DN, one-line form (`$ssl_client_i_dn_legacy`).
    pub issuer_legacy: String,
    /// The subject's common names, in certificate order.
    pub common_names: Vec<String>,
    /// Serial number, upper-case hex without leading zero bytes (`$ssl_client_serial`).
    pub serial: String,
    /// SHA-1 of the DER, lower-case hex (`$ssl_client_fingerprint`).
    pub fingerprint_sha1: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint_sha256: String,
    /// The DNS, email, URI and IP subject alternative names, in certificate order.
    pub subject_alt_names: Vec<SubjectAltName>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The leaf alone as PEM: LF line ends, 64-column base64, as the chain's first block.
    pub pem: String,
}

/// One subject alternative name of the kinds the gateway reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectAltName {
    /// dNSName.
    Dns(String),
    /// rfc822Name (an email address).
    Email(String),
    /// uniformResourceIdentifier.
    Uri(String),
    /// iPAddress, as text (`192.0.2.1`, `2001:db8::1`).
    Ip(String),
}

impl SubjectAltName {
    /// The name's value, whatever its kind.
    pub fn value(&self) -> &str {
        match self {
            Self::Dns(v) | Self::Email(v) | Self::Uri(v) | Self::Ip(v) => v,
        }
    }
}

impl ClientCertificate {
    /// The dNSName SANs, in certificate order.
    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        self.subject_alt_names.iter().filter_map(|san| match san {
            SubjectAltName::Dns(v) => Some(v.as_str()),
            _ => None,
        })
    }

    /// The email SANs, in certificate order.
    pub fn emails(&self) -> impl Iterator<Item = &str> {
        self.subject_alt_names.iter().filter_map(|san| match san {
            SubjectAltName::Email(v) => Some(v.as_str()),
            _ => None,
        })
    }
}

#[cfg(feature = "x509")]
pub use read::{certificate_pem, leaf_pem};

/// PEM as nginx's `$ssl_client_escaped_cert` and the `Cert=`/`Chain=` of Envoy's
/// `x-forwarded-client-cert` spell it, ready for a header value: RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) kept, every other byte `%XX` with upper-case hex, as `ngx.escape_uri`
/// writes it. What `client-tls.get-escaped-client-certificate` and
/// `get-escaped-full-client-certificate-chain` return.
#[cfg(feature = "x509")]
pub fn escape_pem(pem: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(pem, RESERVED).to_string()
}

#[cfg(feature = "x509")]
mod read {
    use std::fmt::Write as _;
    use std::net::IpAddr;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::{AttributeTypeAndValue, X509Name};

    use super::{ClientCertificate, SubjectAltName};
    use crate::InvalidArgument;

    /// Width of a base64 line inside a PEM block (RFC 7468).
    const PEM_LINE_LEN: usize = 64;

    impl ClientCertificate {
        /// Reads a DER certificate. Errors (`invalid-argument`) when it is not X.509.
        pub fn from_der(der: &[u8]) -> Result<ClientCertificate, InvalidArgument> {
            let (_, cert) = X509Certificate::from_der(der)
                .map_err(|err| InvalidArgument::ClientCertificate(err.to_string()))?;
            let mut facts = ClientCertificate {
                subject: rfc2253(cert.subject()),
                issuer: rfc2253(cert.issuer()),
                subject_legacy: oneline(cert.subject()),
                issuer_legacy: oneline(cert.issuer()),
                common_names: cert
                    .subject()
                    .iter_common_name()
                    .filter_map(|attr| attr.as_str().ok().map(str::to_owned))
                    .collect(),
                serial: serial(cert.raw_serial()),
                fingerprint_sha1: hex_lower(
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
                        .as_ref(),
                ),
                fingerprint_sha256: hex_lower(
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref(),
                ),
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
                pem: certificate_pem(der),
                ..ClientCertificate::default()
            };
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                facts.subject_alt_names = san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::DNSName(v) => Some(SubjectAltName::Dns((*v).to_owned())),
                        GeneralName::RFC822Name(v) => Some(SubjectAltName::Email((*v).to_owned())),
                        GeneralName::URI(v) => Some(SubjectAltName::Uri((*v).to_owned())),
                        GeneralName::IPAddress(bytes) => {
                            ip(bytes).map(|ip| SubjectAltName::Ip(ip.to_string()))
                        }
                        _ => None,
                    })
                    .collect();
            }
            Ok(facts)
        }

        /// Reads the leaf, the first `CERTIFICATE` block, of a PEM chain; `None` without one.
        pub fn from_chain_pem(chain: &str) -> Result<Option<ClientCertificate>, InvalidArgument> {
            leaf_der(chain)?.map_or(Ok(None), |der| ClientCertificate::from_der(&der).map(Some))
        }
    }

    /// The leaf of a PEM chain written in the contract's PEM format, as the gateway writes it
    /// from the DER it received: no X.509 parse, so a leaf the gateway cannot read still has
    /// one. `None` without a block.
    pub fn leaf_pem(chain: &str) -> Result<Option<String>, InvalidArgument> {
        Ok(leaf_der(chain)?.map(|der| certificate_pem(&der)))
    }

    /// The DER of the first PEM block of `chain`.
    fn leaf_der(chain: &str) -> Result<Option<Vec<u8>>, InvalidArgument> {
        let Some(block) = x509_parser::pem::Pem::iter_from_buffer(chain.as_bytes()).next() else {
            return Ok(None);
        };
        let block = block.map_err(|err| InvalidArgument::ClientCertificate(err.to_string()))?;
        Ok(Some(block.contents))
    }

    /// The DN as `X509_NAME_print_ex(..., XN_FLAG_RFC2253)` prints it (nginx's
    /// `$ssl_client_s_dn`): most specific RDN first, `,` between RDNs, `+` inside one, RFC 2253
    /// specials escaped with `\`, control and non-ASCII bytes as `\XX`, so the result is always
    /// a valid header value.
    fn rfc2253(name: &X509Name<'_>) -> String {
        let mut rdns: Vec<String> = name
            .iter()
            .map(|rdn| {
                rdn.iter()
                    .map(|attr| match attr.as_str() {
                        Ok(value) => format!("{}={}", attr_name(attr), escape_2253(value)),
                        // Not a string type: RFC 2253's `#` and the value's bytes in hex.
                        Err(_) => format!("{}=#{}", attr_name(attr), hex_lower(attr.as_slice())),
                    })
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect();
        rdns.reverse();
        rdns.join(",")
    }

    /// The DN as `X509_NAME_oneline` prints it (nginx's `$ssl_client_s_dn_legacy`): in
    /// certificate order, `/` before each RDN and `+` inside one, the value's bytes as they are
    /// except those outside printable ASCII, which become `\xHH`.
    fn oneline(name: &X509Name<'_>) -> String {
        let mut out = String::new();
        for rdn in name.iter() {
            for (i, attr) in rdn.iter().enumerate() {
                out.push(if i == 0 { '/' } else { '+' });
                out.push_str(&attr_name(attr));
                out.push('=');
                for &byte in attr.as_slice() {
                    if (b' '..=b'~').contains(&byte) {
                        out.push(char::from(byte));
                    } else {
                        let _ = write!(out, "\\x{byte:02X}");
                    }
                }
            }
        }
        out
    }

    fn attr_name(attr: &AttributeTypeAndValue<'_>) -> String {
        let oid = attr.attr_type().to_id_string();
        short_name(&oid).map_or(oid, str::to_owned)
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

    fn escape_2253(value: &str) -> String {
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

    /// `i2a_ASN1_INTEGER` as nginx's `$ssl_client_serial` uses it: the integer's bytes in
    /// upper-case hex, without DER's leading zero byte (the sign padding).
    fn serial(raw: &[u8]) -> String {
        let start = raw
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        raw[start..].iter().fold(String::new(), |mut out, byte| {
            let _ = write!(out, "{byte:02X}");
            out
        })
    }

    fn hex_lower(bytes: &[u8]) -> String {
        bytes.iter().fold(String::new(), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
    }

    fn ip(bytes: &[u8]) -> Option<IpAddr> {
        if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
            return Some(IpAddr::from(v4));
        }
        <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
    }

    /// One certificate in the contract's PEM format (the chain format of
    /// `get-full-client-certificate-chain`): `-----BEGIN CERTIFICATE-----`, base64 in lines of
    /// 64, `-----END CERTIFICATE-----`, each line ended by LF.
    pub fn certificate_pem(der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let mut out = String::with_capacity(b64.len() + b64.len() / PEM_LINE_LEN + 60);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        // base64 is ASCII: any byte offset is a char boundary.
        let mut rest = b64.as_str();
        while !rest.is_empty() {
            let (line, tail) = rest.split_at(rest.len().min(PEM_LINE_LEN));
            out.push_str(line);
            out.push('\n');
            rest = tail;
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }
}

#[cfg(all(test, feature = "x509"))]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;

    #[test]
    fn leaf_pem_is_written_from_the_first_block_without_reading_it_as_x509() {
        let not_x509 = certificate_pem(b"not a certificate");
        let chain = format!("{not_x509}{}", certificate_pem(b"second"));
        assert_eq!(leaf_pem(&chain).unwrap(), Some(not_x509));
        assert!(ClientCertificate::from_chain_pem(&chain).is_err());
        assert_eq!(leaf_pem("no blocks here").unwrap(), None);
    }

    #[test]
    fn escaped_pem_is_spelled_as_nginx_escapes_a_certificate() {
        assert_eq!(
            escape_pem("-----BEGIN CERTIFICATE-----\nMIIB+x/9a-._~=\n"),
            "-----BEGIN%20CERTIFICATE-----%0AMIIB%2Bx%2F9a-._~%3D%0A"
        );
        assert_eq!(escape_pem("é"), "%C3%A9");
        // Every ASCII byte, against the rule written out by hand (`ngx.escape_uri`'s).
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let by_hand: String = every_ascii
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        assert_eq!(escape_pem(&every_ascii), by_hand);
    }

    fn facts(params: CertificateParams) -> ClientCertificate {
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let facts = ClientCertificate::from_der(cert.der()).expect("readable");
        assert_eq!(facts.pem, cert.pem());
        facts
    }

    fn named(dn: DistinguishedName) -> ClientCertificate {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        facts(params)
    }

    #[test]
    fn dn_is_most_specific_first_in_rfc2253_and_in_order_in_the_legacy_form() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "NL");
        dn.push(DnType::OrganizationName, "Tollgate");
        dn.push(DnType::CommonName, "alice");
        let facts = named(dn);
        assert_eq!(facts.subject, "CN=alice,O=Tollgate,C=NL");
        assert_eq!(facts.subject_legacy, "/C=NL/O=Tollgate/CN=alice");
        // Self-signed: the issuer is the subject.
        assert_eq!(facts.issuer, facts.subject);
        assert_eq!(facts.issuer_legacy, facts.subject_legacy);
        assert_eq!(facts.common_names, ["alice"]);
    }

    #[test]
    fn dn_escapes_special_and_non_ascii_characters_as_openssl_does() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "A, B+C");
        dn.push(DnType::CommonName, " #José\n");
        let facts = named(dn);
        assert_eq!(facts.subject, "CN=\\ #Jos\\C3\\A9\\0A,O=A\\, B\\+C");
        assert_eq!(facts.subject_legacy, "/O=A, B+C/CN= #Jos\\xC3\\xA9\\x0A");
    }

    #[test]
    fn sans_keep_certificate_order_across_kinds() {
        let mut params = CertificateParams::new(vec!["b.example".into()]).expect("params");
        params.subject_alt_names.push(SanType::Rfc822Name(
            "alice@example.com".try_into().expect("ia5"),
        ));
        params.subject_alt_names.push(SanType::URI(
            "spiffe://example/alice".try_into().expect("ia5"),
        ));
        params
            .subject_alt_names
            .push(SanType::IpAddress("192.0.2.1".parse().expect("ip")));
        params
            .subject_alt_names
            .push(SanType::IpAddress("2001:db8::1".parse().expect("ip")));
        params
            .subject_alt_names
            .push(SanType::DnsName("a.example".try_into().expect("ia5")));
        let facts = facts(params);
        assert_eq!(
            facts.subject_alt_names,
            [
                SubjectAltName::Dns("b.example".into()),
                SubjectAltName::Email("alice@example.com".into()),
                SubjectAltName::Uri("spiffe://example/alice".into()),
                SubjectAltName::Ip("192.0.2.1".into()),
                SubjectAltName::Ip("2001:db8::1".into()),
                SubjectAltName::Dns("a.example".into()),
            ]
        );
        assert_eq!(
            facts.dns_names().collect::<Vec<_>>(),
            ["b.example", "a.example"]
        );
        assert_eq!(facts.emails().collect::<Vec<_>>(), ["alice@example.com"]);
    }

    #[test]
    fn serial_drops_the_sign_byte_and_validity_is_in_unix_seconds() {
        let mut params = CertificateParams::default();
        params.serial_number = Some(vec![0x00, 0x80, 0x0a].into());
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let facts = facts(params);
        assert_eq!(facts.serial, "800A");
        assert_eq!(facts.not_before, 1_577_836_800);
        assert_eq!(facts.not_after, 1_893_456_000);
        assert_eq!(facts.fingerprint_sha1.len(), 40);
        assert_eq!(facts.fingerprint_sha256.len(), 64);
    }

    #[test]
    fn the_leaf_of_a_chain_is_its_first_block_and_garbage_is_invalid() {
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::default()
            .self_signed(&key)
            .expect("cert");
        let other = CertificateParams::default()
            .self_signed(&key)
            .expect("cert");
        let chain = format!("{}{}", leaf.pem(), other.pem());
        let facts = ClientCertificate::from_chain_pem(&chain).expect("readable");
        assert_eq!(facts.map(|f| f.pem), Some(leaf.pem()));
        assert_eq!(ClientCertificate::from_chain_pem(""), Ok(None));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = ClientCertificate::from_chain_pem(garbage).expect_err("not X.509");
        assert!(
            err.to_string()
                .starts_with("client certificate cannot be read: "),
            "{err}"
        );
    }
}
