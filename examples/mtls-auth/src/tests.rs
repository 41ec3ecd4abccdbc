//! mtls-auth through the SDK mock, with test PKIs from rcgen.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use tollgate_sdk::Phase;
use tollgate_sdk::mock::{self, MockHost, MockTls};

use super::*;

struct Pki {
    root: Certificate,
    intermediate: Certificate,
    intermediate_issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tollgate");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A client certificate for `alice`: DNS and email SANs, client-auth usage.
fn alice_params() -> CertificateParams {
    let mut params = CertificateParams::new(vec!["alice.example.com".to_string()]).expect("params");
    params.subject_alt_names.push(SanType::Rfc822Name(
        "alice@example.com".try_into().expect("ia5"),
    ));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tollgate");
    params.distinguished_name.push(DnType::CommonName, "alice");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

impl Pki {
    fn new(name: &str) -> Self {
        let root_params = ca_params(&format!("{name} Root CA"));
        let root_key = KeyPair::generate().expect("key");
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);
        let int_params = ca_params(&format!("{name} Intermediate CA"));
        let int_key = KeyPair::generate().expect("key");
        let intermediate = int_params.signed_by(&int_key, &root_issuer).expect("int");
        Pki {
            root,
            intermediate,
            intermediate_issuer: Issuer::new(int_params, int_key),
        }
    }

    /// The client's bundle: a leaf made from `params`, then the intermediate.
    fn chain_with(&self, params: CertificateParams) -> String {
        let key = KeyPair::generate().expect("key");
        let leaf = params
            .signed_by(&key, &self.intermediate_issuer)
            .expect("leaf");
        format!("{}{}", leaf.pem(), self.intermediate.pem())
    }

    fn alice_chain(&self) -> String {
        self.chain_with(alice_params())
    }
}

/// A configuration trusting `pki`'s root, mapping the CN `alice` to `alice-consumer`.
fn config(pki: &Pki, extra: &str) -> String {
    let ca = serde_json::to_string(&pki.root.pem()).expect("json");
    format!(r#"{{"ca_certificates": {ca}, "consumers": {{"alice": "alice-consumer"}}{extra}}}"#)
}

/// A TLS connection on `api.example.com` whose client sent `chain`, verified by the handshake
/// (against the connection's trust anchors) as `client_verify`.
fn tls_host(chain: Option<&str>, client_verify: &str) -> MockHost {
    MockHost {
        sni: Some("api.example.com".into()),
        tls: Some(MockTls {
            client_chain_pem: chain.map(str::to_string),
            client_verify: client_verify.parse().expect("a client_verify value"),
            ..MockTls::default()
        }),
        ..MockHost::default()
    }
}

/// Runs the access phase with the handshake's verdict `client_verify` only (`send_ca_dn = true`,
/// or no chain); `verify_client_chain` answers its default for any CA set.
fn access(config: &str, chain: Option<&str>, client_verify: &str) -> MockHost {
    access_on(config, tls_host(chain, client_verify))
}

/// Runs the access phase as `send_ca_dn = false` sees it: the listener has no trust anchors
/// (the handshake says [`LISTENER_VERDICT`]) and `verify_client_chain(ca_pem)` answers `verdict`.
fn access_checked(config: &str, chain: &str, ca_pem: &str, verdict: &str) -> MockHost {
    access_on(
        config,
        MockHost {
            chain_verification: vec![(ca_pem.to_string(), verdict.to_string())],
            ..tls_host(Some(chain), LISTENER_VERDICT)
        },
    )
}

/// [`access_checked`] with `pki`'s root (the CA set of [`config`]) verifying the chain.
fn access_verified(config: &str, pki: &Pki, chain: &str) -> MockHost {
    access_checked(config, chain, &pki.root.pem(), "SUCCESS")
}

fn access_on(config: &str, host: MockHost) -> MockHost {
    mock::install(MockHost {
        phase: Phase::Access,
        ..host
    });
    let mut plugin = MtlsAuth::configure(config).expect("valid config");
    plugin.access().expect("access phase");
    mock::take()
}

/// The handshake's verdict when the listener has no trust anchors: what `send_ca_dn = false` gets
/// from `connection::client_verify`, and must not rely on.
const LISTENER_VERDICT: &str = "FAILED:unable to get local issuer certificate";

fn assert_401(host: &MockHost, message: &str, client_verify: &str) {
    let (status, headers, body) = host.exit.clone().expect("request answered");
    assert_eq!(status, 401);
    assert_eq!(
        headers,
        [("content-type".to_string(), "application/json".to_string())]
    );
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(body, serde_json::json!({ "message": message }));
    assert_eq!(
        host.client_verify_override
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some(client_verify)
    );
}

fn assert_anonymous(host: &MockHost, client_verify: &str) {
    assert!(host.exit.is_none());
    assert_eq!(
        host.request_header(CONSUMER_HEADER).as_deref(),
        Some("guest")
    );
    assert_eq!(
        host.request_header(ANONYMOUS_HEADER).as_deref(),
        Some("true")
    );
    assert_eq!(host.request_header(DN_HEADER), None);
    assert_eq!(
        host.client_verify_override
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some(client_verify)
    );
}

const NO_CERT: &str = "No required TLS certificate was sent";
const FAILED_VERIFICATION: &str = "TLS certificate failed verification";

// ---- configuration ----

#[test]
fn missing_ca_certificates_is_rejected_at_load() {
    let err = MtlsAuth::configure("{}").expect_err("required");
    assert!(err.contains("missing field `ca_certificates`"), "{err}");
}

#[test]
fn ca_certificates_without_a_certificate_is_rejected_at_load() {
    let err = MtlsAuth::configure(r#"{"ca_certificates": "not pem"}"#).expect_err("no cert");
    assert!(
        err.contains("ca_certificates: no PEM certificate found"),
        "{err}"
    );
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = MtlsAuth::configure(&serde_json::json!({ "ca_certificates": garbage }).to_string())
        .expect_err("bad cert");
    assert!(err.contains("ca_certificates: certificate 0"), "{err}");
}

#[test]
fn unknown_field_and_bad_consumer_by_are_rejected_at_load() {
    let pki = Pki::new("Demo");
    let err = MtlsAuth::configure(&config(&pki, r#", "send_ca_names": true"#)).expect_err("field");
    assert!(err.contains("unknown field `send_ca_names`"), "{err}");
    let err = MtlsAuth::configure(&config(&pki, r#", "consumer_by": ["email"]"#)).expect_err("by");
    assert!(err.contains("unknown variant `email`"), "{err}");
    let err = MtlsAuth::configure(&config(&pki, r#", "consumer_by": []"#)).expect_err("empty");
    assert!(err.contains("consumer_by must list"), "{err}");
}

#[test]
fn consumer_name_with_control_characters_is_rejected_at_load() {
    let pki = Pki::new("Demo");
    let err = MtlsAuth::configure(&config(&pki, r#", "anonymous": "a\nb""#)).expect_err("ctl");
    assert!(err.contains("without control characters"), "{err}");
}

// ---- certificate phase ----

fn handshake(config: &str, sni: Option<&str>) -> MockHost {
    mock::install(MockHost {
        phase: Phase::Certificate,
        sni: sni.map(str::to_string),
        ..MockHost::default()
    });
    let mut plugin = MtlsAuth::configure(config).expect("valid config");
    plugin.certificate().expect("certificate phase");
    mock::take()
}

#[test]
fn send_ca_dn_requests_certificate_with_the_ca_certificates() {
    let pki = Pki::new("Demo");
    let host = handshake(
        &config(&pki, r#", "send_ca_dn": true"#),
        Some("a.example.com"),
    );
    assert_eq!(
        host.client_certificate_requested,
        Some(Some(pki.root.pem()))
    );
    assert!(host.session_reuse_disabled);
}

#[test]
fn without_send_ca_dn_certificate_is_requested_without_ca_names() {
    let pki = Pki::new("Demo");
    let host = handshake(&config(&pki, ""), None);
    assert_eq!(host.client_certificate_requested, Some(None));
    assert!(host.session_reuse_disabled);
}

#[test]
fn other_sni_gets_no_certificate_request() {
    let pki = Pki::new("Demo");
    let host = handshake(
        &config(&pki, r#", "snis": ["*.internal"]"#),
        Some("api.example.com"),
    );
    assert_eq!(host.client_certificate_requested, None);
    assert!(!host.session_reuse_disabled);
}

// ---- access: failures ----

#[test]
fn no_certificate_is_401_no_required_certificate_and_none() {
    let pki = Pki::new("Demo");
    let host = access(&config(&pki, ""), None, "NONE");
    assert_401(&host, NO_CERT, "NONE");
}

#[test]
fn plaintext_connection_is_401_no_required_certificate() {
    let pki = Pki::new("Demo");
    let host = access_on(&config(&pki, ""), MockHost::default());
    assert_401(&host, NO_CERT, "NONE");
}

#[test]
fn send_ca_dn_host_verify_failure_is_401_with_the_host_reason() {
    let pki = Pki::new("Demo");
    let host = access_on(
        &config(&pki, r#", "send_ca_dn": true"#),
        MockHost {
            // Not asked: with `send_ca_dn` the CAs were the handshake's trust anchors.
            chain_verification: vec![(pki.root.pem(), "SUCCESS".into())],
            ..tls_host(Some(&pki.alice_chain()), "FAILED:certificate has expired")
        },
    );
    assert_401(&host, FAILED_VERIFICATION, "FAILED:certificate has expired");
}

#[test]
fn chain_from_another_ca_is_401_unable_to_get_local_issuer() {
    let (pki, other) = (Pki::new("Demo"), Pki::new("Other"));
    let host = access_checked(
        &config(&pki, ""),
        &other.alice_chain(),
        &pki.root.pem(),
        "FAILED:unable to get local issuer certificate",
    );
    assert_401(
        &host,
        FAILED_VERIFICATION,
        "FAILED:unable to get local issuer certificate",
    );
}

#[test]
fn expired_leaf_is_401_certificate_has_expired() {
    let pki = Pki::new("Demo");
    let mut params = alice_params();
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2001, 1, 1);
    let host = access_checked(
        &config(&pki, ""),
        &pki.chain_with(params),
        &pki.root.pem(),
        "FAILED:certificate has expired",
    );
    assert_401(&host, FAILED_VERIFICATION, "FAILED:certificate has expired");
}

#[test]
fn each_host_failure_reason_is_401_with_that_reason() {
    let pki = Pki::new("Demo");
    let mut server_only = alice_params();
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let self_signed = alice_params()
        .self_signed(&KeyPair::generate().expect("key"))
        .expect("leaf")
        .pem();
    // Same names as the real intermediate, another key: names chain up, the signature does not.
    let forger = Issuer::new(
        ca_params("Demo Intermediate CA"),
        KeyPair::generate().expect("key"),
    );
    let forged = alice_params()
        .signed_by(&KeyPair::generate().expect("key"), &forger)
        .expect("leaf");
    let mut not_yet_valid = alice_params();
    not_yet_valid.not_before = date_time_ymd(2999, 1, 1);
    not_yet_valid.not_after = date_time_ymd(3000, 1, 1);
    let cases = [
        (
            pki.chain_with(server_only),
            "unsuitable certificate purpose",
        ),
        (self_signed, "self-signed certificate"),
        (
            format!("{}{}", forged.pem(), pki.intermediate.pem()),
            "certificate signature failure",
        ),
        (
            pki.chain_with(not_yet_valid),
            "certificate is not yet valid",
        ),
    ];
    for (chain, reason) in cases {
        let verdict = format!("FAILED:{reason}");
        let host = access_checked(&config(&pki, ""), &chain, &pki.root.pem(), &verdict);
        assert_401(&host, FAILED_VERIFICATION, &verdict);
    }
}

#[test]
fn without_send_ca_dn_a_listener_success_is_not_trusted() {
    let pki = Pki::new("Demo");
    // The listener's own client CA bundle accepted the chain; `ca_certificates` did not.
    let host = access(&config(&pki, ""), Some(&pki.alice_chain()), "SUCCESS");
    assert_401(
        &host,
        FAILED_VERIFICATION,
        "FAILED:unable to get local issuer certificate",
    );
}

#[test]
fn unreadable_leaf_is_401_certificate_verify_failed() {
    let pki = Pki::new("Demo");
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let host = access_verified(&config(&pki, ""), &pki, garbage);
    assert_401(
        &host,
        FAILED_VERIFICATION,
        "FAILED:certificate verify failed",
    );
}

#[test]
fn unknown_identity_is_401_consumer_not_found() {
    let pki = Pki::new("Demo");
    let config = config(&pki, "").replace(r#""alice""#, r#""bob""#);
    let host = access_verified(&config, &pki, &pki.alice_chain());
    assert_401(&host, FAILED_VERIFICATION, "FAILED:consumer not found");
}

// ---- access: success ----

#[test]
fn without_send_ca_dn_chain_verified_against_ca_certificates_succeeds_whatever_the_listener_says() {
    let pki = Pki::new("Demo");
    let host = access_verified(&config(&pki, ""), &pki, &pki.alice_chain());
    assert!(host.exit.is_none());
    assert_eq!(
        host.client_verify_override
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("SUCCESS")
    );
    assert_eq!(
        host.request_header(CONSUMER_HEADER).as_deref(),
        Some("alice-consumer")
    );
}

#[test]
fn send_ca_dn_host_success_authenticates_and_forwards_consumer_dn_and_sans() {
    let pki = Pki::new("Demo");
    let host = access(
        &config(&pki, r#", "send_ca_dn": true"#),
        Some(&pki.alice_chain()),
        "SUCCESS",
    );
    assert!(host.exit.is_none());
    assert_eq!(
        host.client_verify_override
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("SUCCESS")
    );
    assert_eq!(
        host.request_header(CONSUMER_HEADER).as_deref(),
        Some("alice-consumer")
    );
    assert_eq!(
        host.request_header(DN_HEADER).as_deref(),
        Some("CN=alice,O=Tollgate")
    );
    assert_eq!(
        host.request_header(SAN_HEADER).as_deref(),
        Some("alice.example.com,alice@example.com")
    );
    assert_eq!(host.request_header(ANONYMOUS_HEADER), None);
}

#[test]
fn chain_is_checked_against_exactly_the_configured_ca_certificates() {
    let pki = Pki::new("Demo");
    let ca = serde_json::to_string(&pki.intermediate.pem()).expect("json");
    let config = format!(r#"{{"ca_certificates": {ca}, "skip_consumer_lookup": true}}"#);
    let chain = pki.alice_chain();
    // The host is asked about exactly the configured CA set.
    let host = access_checked(&config, &chain, &pki.intermediate.pem(), "SUCCESS");
    assert_eq!(
        host.client_verify_override
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("SUCCESS")
    );
    let host = access_verified(&config, &pki, &chain);
    assert_401(
        &host,
        FAILED_VERIFICATION,
        "FAILED:unable to get local issuer certificate",
    );
}

#[test]
fn san_is_matched_before_cn() {
    let pki = Pki::new("Demo");
    let config = config(&pki, "").replace(
        r#""alice": "alice-consumer""#,
        r#""alice": "by-cn", "alice@example.com": "by-email""#,
    );
    let host = access_verified(&config, &pki, &pki.alice_chain());
    assert_eq!(
        host.request_header(CONSUMER_HEADER).as_deref(),
        Some("by-email")
    );
}

#[test]
fn consumer_by_cn_ignores_sans_and_consumer_by_san_ignores_cn() {
    let pki = Pki::new("Demo");
    let consumers = r#""alice": "alice-consumer""#;
    let both = r#""alice": "by-cn", "alice.example.com": "by-dns""#;
    let by_cn = config(&pki, r#", "consumer_by": ["cn"]"#).replace(consumers, both);
    let host = access_verified(&by_cn, &pki, &pki.alice_chain());
    assert_eq!(
        host.request_header(CONSUMER_HEADER).as_deref(),
        Some("by-cn")
    );

    let by_san = config(&pki, r#", "consumer_by": ["san"]"#);
    let host = access_verified(&by_san, &pki, &pki.alice_chain());
    assert_401(&host, FAILED_VERIFICATION, "FAILED:consumer not found");
}

#[test]
fn skip_consumer_lookup_succeeds_without_consumer_and_drops_a_spoofed_one() {
    let pki = Pki::new("Demo");
    let mut host = MockHost {
        sni: Some("api.example.com".into()),
        tls: Some(MockTls::with_chain(&pki.alice_chain())),
        chain_verification: vec![(pki.root.pem(), "SUCCESS".into())],
        ..MockHost::default()
    };
    host.request_headers = vec![
        ("x-consumer-username".into(), "admin".into()),
        ("x-anonymous-consumer".into(), "false".into()),
    ];
    let config = config(&pki, r#", "skip_consumer_lookup": true"#).replace("alice", "bob");
    let host = access_on(&config, host);
    assert!(host.exit.is_none());
    assert_eq!(
        host.client_verify_override
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("SUCCESS")
    );
    assert_eq!(host.request_header(CONSUMER_HEADER), None);
    assert_eq!(host.request_header(ANONYMOUS_HEADER), None);
    assert_eq!(
        host.request_header(DN_HEADER).as_deref(),
        Some("CN=alice,O=Tollgate")
    );
}

// ---- access: anonymous ----

#[test]
fn anonymous_passes_each_failure_through_keeping_its_client_verify() {
    let (pki, other) = (Pki::new("Demo"), Pki::new("Other"));
    let anonymous = config(&pki, r#", "anonymous": "guest""#);
    assert_anonymous(&access(&anonymous, None, "NONE"), "NONE");
    assert_anonymous(
        &access_checked(
            &anonymous,
            &other.alice_chain(),
            &pki.root.pem(),
            "FAILED:unable to get local issuer certificate",
        ),
        "FAILED:unable to get local issuer certificate",
    );
    let unknown = anonymous.replace(r#""alice""#, r#""bob""#);
    assert_anonymous(
        &access_verified(&unknown, &pki, &pki.alice_chain()),
        "FAILED:consumer not found",
    );
}

#[test]
fn anonymous_configured_but_authenticated_client_is_not_anonymous() {
    let pki = Pki::new("Demo");
    let host = access_verified(
        &config(&pki, r#", "anonymous": "guest""#),
        &pki,
        &pki.alice_chain(),
    );
    assert_eq!(
        host.request_header(CONSUMER_HEADER).as_deref(),
        Some("alice-consumer")
    );
    assert_eq!(host.request_header(ANONYMOUS_HEADER), None);
}

// ---- access: scope ----

#[test]
fn other_sni_is_not_checked_in_access() {
    let pki = Pki::new("Demo");
    let config = config(&pki, r#", "snis": ["*.internal"]"#);
    let host = access(&config, None, "NONE");
    assert!(host.exit.is_none());
    assert_eq!(host.client_verify_override, None);
    assert!(host.request_headers.is_empty());
}
