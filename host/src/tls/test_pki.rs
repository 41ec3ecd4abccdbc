//! Test PKIs made with rcgen: root → intermediate → client leaf, and a server certificate.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub(crate) struct Pki {
    pub root: Certificate,
    pub intermediate: Certificate,
    pub intermediate_issuer: Issuer<'static, KeyPair>,
    pub leaf: Certificate,
    pub leaf_key: KeyPair,
    pub server: Certificate,
    pub server_key: KeyPair,
}

pub(crate) fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tollgate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

pub(crate) fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

/// A self-signed root CA and the issuer to sign with it.
pub(crate) fn root(cn: &str) -> (Certificate, Issuer<'static, KeyPair>) {
    let params = ca_params(cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

pub(crate) fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

impl Pki {
    pub fn new() -> Self {
        let (root, root_issuer) = root("Demo Root CA");

        let int_params = ca_params("Demo Intermediate CA");
        let int_key = KeyPair::generate().unwrap();
        let intermediate = int_params.signed_by(&int_key, &root_issuer).unwrap();
        let intermediate_issuer = Issuer::new(int_params, int_key);

        let leaf_key = KeyPair::generate().unwrap();
        let leaf = client_params("demo client")
            .signed_by(&leaf_key, &intermediate_issuer)
            .unwrap();

        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server = server_params.signed_by(&server_key, &root_issuer).unwrap();

        Self {
            root,
            intermediate,
            intermediate_issuer,
            leaf,
            leaf_key,
            server,
            server_key,
        }
    }

    /// A client leaf signed by the intermediate, after `edit` changed its parameters.
    pub fn leaf_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
        let mut params = client_params("edited client");
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        params
            .signed_by(&key, &self.intermediate_issuer)
            .unwrap()
            .der()
            .clone()
    }

    /// The client's chain as it sends it: leaf then intermediate.
    pub fn client_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.der().clone(), self.intermediate.der().clone()]
    }
}
