//! tls-metadata-headers through the SDK mock, with certificates from rcgen.

use percent_encoding::percent_decode_str;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber,
};
use tollgate_sdk::Phase;
use tollgate_sdk::log::Level;
use tollgate_sdk::mock::{self, MockHost, MockTls};

use super::*;
use sha1::{Digest, Sha1};

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Chain {
    leaf: Certificate,
    intermediate: Certificate,
}

impl Chain {
    fn new(serial: &[u8]) -> Self {
        let mut ca = CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::OrganizationName, "Tollgate");
        ca.distinguished_name.push(DnType::CommonName, "Demo CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key");
        let intermediate = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);

        let mut params = CertificateParams::new(vec!["alice.example.com".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tollgate");
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let leaf = params
            .signed_by(&KeyPair::generate().expect("key"), &issuer)
            .expect("leaf");
        Chain { leaf, intermediate }
    }

    /// The chain in the host's format: LF line ends, leaf first.
    fn pem(&self) -> String {
        format!("{}{}", self.leaf.pem(), self.intermediate.pem()).replace("\r\n", "\n")
    }
}

fn run(config: &str, host: MockHost) -> MockHost {
    mock::install(MockHost {
        phase: Phase::Access,
        ..host
    });
    let mut plugin = TlsMetadataHeaders::configure(config).expect("valid config");
    plugin.access().expect("access phase");
    mock::take()
}

fn with_chain(chain: &str) -> MockHost {
    MockHost {
        tls: Some(MockTls::with_chain(chain)),
        ..MockHost::default()
    }
}

fn decoded(host: &MockHost, name: &str) -> String {
    let value = host.request_header(name).expect(name);
    percent_decode_str(&value)
        .decode_utf8()
        .expect("utf-8")
        .into_owned()
}

#[test]
fn chain_header_url_decodes_to_the_chain_byte_for_byte() {
    let chain = Chain::new(&[0x01]);
    let host = run("{}", with_chain(&chain.pem()));
    assert_eq!(decoded(&host, "X-Client-Cert-Chain"), chain.pem());
    let value = host.request_header("X-Client-Cert-Chain").expect("chain");
    assert!(
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "{value}"
    );
}

#[test]
fn cert_header_is_the_url_encoded_leaf_pem() {
    let chain = Chain::new(&[0x01]);
    let host = run("{}", with_chain(&chain.pem()));
    assert_eq!(
        decoded(&host, "X-Client-Cert"),
        chain.leaf.pem().replace("\r\n", "\n")
    );
    let value = host.request_header("X-Client-Cert").expect("cert");
    assert!(
        value.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{value}"
    );
}

#[test]
fn serial_is_upper_case_hex_without_colons_or_sign_byte() {
    let host = run("{}", with_chain(&Chain::new(&[0x0a, 0xbc, 0x12]).pem()));
    assert_eq!(
        host.request_header("X-Client-Cert-Serial").as_deref(),
        Some("0ABC12")
    );
    // A high first bit makes DER add a zero byte; nginx does not print it.
    let host = run("{}", with_chain(&Chain::new(&[0x8a, 0x01]).pem()));
    assert_eq!(
        host.request_header("X-Client-Cert-Serial").as_deref(),
        Some("8A01")
    );
}

#[test]
fn issuer_and_subject_dn_are_most_specific_first() {
    let host = run("{}", with_chain(&Chain::new(&[0x01]).pem()));
    assert_eq!(
        host.request_header("X-Client-Cert-Subject-DN").as_deref(),
        Some("CN=alice,O=Tollgate")
    );
    assert_eq!(
        host.request_header("X-Client-Cert-Issuer-DN").as_deref(),
        Some("CN=Demo CA,O=Tollgate")
    );
}

#[test]
fn fingerprint_is_lower_case_sha1_of_the_leaf_der() {
    let chain = Chain::new(&[0x01]);
    let host = run("{}", with_chain(&chain.pem()));
    let fingerprint = host
        .request_header("X-Client-Cert-Fingerprint")
        .expect("fp");
    assert_eq!(fingerprint, hex_lower(&Sha1::digest(chain.leaf.der())));
    assert_eq!(fingerprint.len(), 40);
    assert!(
        fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

#[test]
fn without_forward_chain_the_leaf_is_forwarded_and_the_chain_is_not() {
    let chain = Chain::new(&[0x8a, 0x01]);
    let host = run(r#"{"forward_chain": false}"#, with_chain(&chain.pem()));
    assert_eq!(
        decoded(&host, "X-Client-Cert"),
        chain.leaf.pem().replace("\r\n", "\n")
    );
    assert_eq!(
        host.request_header("X-Client-Cert-Serial").as_deref(),
        Some("8A01")
    );
    assert_eq!(host.request_header("X-Client-Cert-Chain"), None);
}

#[test]
fn without_forward_chain_a_chain_header_the_client_sent_is_removed() {
    let chain = Chain::new(&[0x01]);
    let host = run(
        r#"{"forward_chain": false}"#,
        MockHost {
            request_headers: vec![("x-client-cert-chain".into(), "forged".into())],
            ..with_chain(&chain.pem())
        },
    );
    assert_eq!(host.request_header("X-Client-Cert-Chain"), None);
    assert!(host.request_header("X-Client-Cert").is_some());
}

#[test]
fn headers_the_client_sent_are_replaced_by_the_connections() {
    let chain = Chain::new(&[0x01]);
    let host = run(
        "{}",
        MockHost {
            request_headers: vec![
                ("x-client-cert-subject-dn".into(), "CN=admin".into()),
                ("x-client-cert-chain".into(), "forged".into()),
            ],
            ..with_chain(&chain.pem())
        },
    );
    assert_eq!(
        host.request_header("X-Client-Cert-Subject-DN").as_deref(),
        Some("CN=alice,O=Tollgate")
    );
    assert_eq!(decoded(&host, "X-Client-Cert-Chain"), chain.pem());
}

#[test]
fn configured_header_names_are_used() {
    let config =
        r#"{"client_cert_header_name": "X-Cert", "client_cert_fingerprint_header_name": "X-FP"}"#;
    let host = run(config, with_chain(&Chain::new(&[0x01]).pem()));
    assert!(host.request_header("X-Cert").is_some());
    assert!(host.request_header("X-FP").is_some());
    assert!(host.request_header("X-Client-Cert").is_none());
    assert!(host.request_header("X-Client-Cert-Serial").is_some());
}

#[test]
fn no_certificate_logs_why_and_forwards_nothing_not_even_client_sent_headers() {
    let host = run(
        "{}",
        MockHost {
            tls: Some(MockTls::default()),
            request_headers: vec![("x-client-cert-subject-dn".into(), "CN=admin".into())],
            ..MockHost::default()
        },
    );
    assert!(host.request_headers.is_empty());
    assert_eq!(host.logs.len(), 1);
    assert!(matches!(host.logs[0].0, Level::Debug));
    assert!(
        host.logs[0].1.contains("no client certificate"),
        "{}",
        host.logs[0].1
    );
}

#[test]
fn plaintext_connection_logs_why_and_forwards_nothing() {
    let host = run("{}", MockHost::default());
    assert!(host.request_headers.is_empty());
    assert!(host.logs[0].1.contains("connection is not TLS"));
}

#[test]
fn unknown_field_is_rejected_at_load() {
    let err = TlsMetadataHeaders::configure(r#"{"client_cert_header": "X"}"#).expect_err("field");
    assert!(err.contains("unknown field `client_cert_header`"), "{err}");
}

#[test]
fn invalid_or_duplicate_header_name_is_rejected_at_load() {
    let err = TlsMetadataHeaders::configure(r#"{"client_serial_header_name": "X Serial"}"#)
        .expect_err("invalid");
    assert!(
        err.contains("client_serial_header_name: \"X Serial\" is not a valid header name"),
        "{err}"
    );
    let err = TlsMetadataHeaders::configure(r#"{"client_serial_header_name": "x-client-cert"}"#)
        .expect_err("duplicate");
    assert!(
        err.contains("already used by client_cert_header_name"),
        "{err}"
    );
    assert!(TlsMetadataHeaders::configure(r#"{"client_serial_header_name": ""}"#).is_err());
}

#[test]
fn phases_are_access_only() {
    assert_eq!(
        tollgate_sdk::declared_phases::<TlsMetadataHeaders>(),
        [Phase::Access]
    );
}
