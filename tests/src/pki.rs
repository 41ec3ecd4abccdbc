//! A test PKI made with rcgen: root CA → intermediate CA → client leaf (clientAuth), a server
//! certificate for `localhost` and 127.0.0.1, an expired client leaf and a self-signed client
//! leaf; and the PEM files a client, a server or `ca_certs` would use.
//!
//! Certificates are written in the chain format of the contract (spec §3): LF line ends, base64
//! in lines of 64, no blank lines, a trailing newline. This module encodes them itself, so a test
//! comparing the host's output with these files does not compare the host with itself.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

/// The certificates and keys of a test PKI.
#[derive(Debug)]
pub struct TestPki {
    /// Self-signed root CA, `CN=Tollgate Test Root CA`.
    pub root: Certificate,
    /// Intermediate CA signed by the root, `CN=Tollgate Test Intermediate CA`.
    pub intermediate: Certificate,
    /// Client leaf signed by the intermediate, clientAuth EKU,
    /// `O=Tollgate Test, OU=Clients, CN=test client`, with DNS, email, URI and IP SANs.
    pub leaf: Certificate,
    /// The client leaf's key.
    pub leaf_key: KeyPair,
    /// Server certificate for `localhost` and `127.0.0.1`, signed by the root.
    pub server: Certificate,
    /// The server certificate's key.
    pub server_key: KeyPair,
    /// A client leaf signed by the intermediate that expired in 2021.
    pub expired_leaf: Certificate,
    /// The expired leaf's key.
    pub expired_key: KeyPair,
    /// A self-signed client leaf (not a CA).
    pub self_signed_leaf: Certificate,
    /// The self-signed leaf's key.
    pub self_signed_key: KeyPair,
}

/// Where [`TestPki::write`] put the files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The root CA certificate.
    pub root: PathBuf,
    /// The intermediate CA certificate.
    pub intermediate: PathBuf,
    /// Intermediate then root: a `ca_certs` value or a listener's client CA bundle.
    pub ca_bundle: PathBuf,
    /// The client leaf alone.
    pub client_leaf: PathBuf,
    /// Leaf then intermediate: what a client sends (`openssl s_client -cert ... -cert_chain ...`).
    pub client_chain: PathBuf,
    /// The client leaf's key (PKCS#8).
    pub client_key: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server key (PKCS#8).
    pub server_key: PathBuf,
    /// The expired client leaf.
    pub expired_leaf: PathBuf,
    /// Its key.
    pub expired_key: PathBuf,
    /// The self-signed client leaf.
    pub self_signed_leaf: PathBuf,
    /// Its key.
    pub self_signed_key: PathBuf,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A fresh PKI with new keys.
    pub fn new() -> TestPki {
        let root_params = ca_params("Tollgate Test Root CA");
        let root_key = generate_key();
        let root = root_params.self_signed(&root_key).expect("root CA");
        let root_issuer = Issuer::new(root_params, root_key);

        let int_params = ca_params("Tollgate Test Intermediate CA");
        let int_key = generate_key();
        let intermediate = int_params
            .signed_by(&int_key, &root_issuer)
            .expect("intermediate CA");
        let int_issuer = Issuer::new(int_params, int_key);

        let leaf_key = generate_key();
        let leaf = named_client_params()
            .signed_by(&leaf_key, &int_issuer)
            .expect("client leaf");

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server names");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = generate_key();
        let server = server_params
            .signed_by(&server_key, &root_issuer)
            .expect("server certificate");

        let mut expired_params = client_params("expired client");
        expired_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired_key = generate_key();
        let expired_leaf = expired_params
            .signed_by(&expired_key, &int_issuer)
            .expect("expired leaf");

        let self_signed_key = generate_key();
        let self_signed_leaf = client_params("self-signed client")
            .self_signed(&self_signed_key)
            .expect("self-signed leaf");

        TestPki {
            root,
            intermediate,
            leaf,
            leaf_key,
            server,
            server_key,
            expired_leaf,
            expired_key,
            self_signed_leaf,
            self_signed_key,
        }
    }

    /// What the client sends: leaf then intermediate, in the contract's chain format.
    pub fn client_chain_pem(&self) -> String {
        pem_chain(&[self.leaf.der(), self.intermediate.der()])
    }

    /// The client chain as DER, leaf first.
    pub fn client_chain_der(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.der().clone(), self.intermediate.der().clone()]
    }

    /// Intermediate then root, the `ca_certs` of spec §6 case 4.
    pub fn ca_bundle_pem(&self) -> String {
        pem_chain(&[self.intermediate.der(), self.root.der()])
    }

    /// Writes every certificate and key into a fresh temporary directory, removed when the
    /// returned guard drops.
    pub fn write_temp(&self) -> std::io::Result<(tempfile::TempDir, PkiFiles)> {
        let dir = tempfile::tempdir()?;
        let files = self.write(dir.path())?;
        Ok((dir, files))
    }

    /// Writes every certificate and key into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<PkiFiles> {
        let put = |name: &str, contents: &str| -> std::io::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, contents)?;
            Ok(path)
        };
        Ok(PkiFiles {
            root: put("root.pem", &pem_chain(&[self.root.der()]))?,
            intermediate: put("intermediate.pem", &pem_chain(&[self.intermediate.der()]))?,
            ca_bundle: put("ca-bundle.pem", &self.ca_bundle_pem())?,
            client_leaf: put("client.pem", &pem_chain(&[self.leaf.der()]))?,
            client_chain: put("client-chain.pem", &self.client_chain_pem())?,
            client_key: put("client.key", &self.leaf_key.serialize_pem())?,
            server_cert: put("server.pem", &pem_chain(&[self.server.der()]))?,
            server_key: put("server.key", &self.server_key.serialize_pem())?,
            expired_leaf: put("expired.pem", &pem_chain(&[self.expired_leaf.der()]))?,
            expired_key: put("expired.key", &self.expired_key.serialize_pem())?,
            self_signed_leaf: put(
                "self-signed.pem",
                &pem_chain(&[self.self_signed_leaf.der()]),
            )?,
            self_signed_key: put("self-signed.key", &self.self_signed_key.serialize_pem())?,
        })
    }
}

/// Certificates in the contract's chain format: for each, `-----BEGIN CERTIFICATE-----\n`,
/// base64 in lines of 64, `-----END CERTIFICATE-----\n`.
pub fn pem_chain(certs: &[&CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn generate_key() -> KeyPair {
    KeyPair::generate().expect("key generation")
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tollgate Tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The main client leaf: a DN of three RDNs and a SAN of every kind the contract reports, so
/// the gateway's certificate facts can be checked against OpenSSL's reading of it.
fn named_client_params() -> CertificateParams {
    let mut params = client_params("test client");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tollgate Test");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "Clients");
    params
        .distinguished_name
        .push(DnType::CommonName, "test client");
    params.subject_alt_names = vec![
        SanType::DnsName("client.tollgate.test".try_into().expect("ia5")),
        SanType::Rfc822Name("client@tollgate.test".try_into().expect("ia5")),
        SanType::URI("spiffe://tollgate.test/client".try_into().expect("ia5")),
        SanType::IpAddress("192.0.2.7".parse().expect("ip")),
        SanType::IpAddress("2001:db8::7".parse().expect("ip")),
    ];
    params
}

fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}
