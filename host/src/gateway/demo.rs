//! `tollgate demo`: the gateway on an embedded default config, with demo certificates made on
//! first run, the built-in echo upstream, and the example mTLS plugins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::tls::{encode_chain, parse_certificates};

/// The demo's config, with `{{...}}` placeholders filled in at start.
const CONFIG_TEMPLATE: &str = include_str!("demo.toml");

/// The example plugins the demo config uses, by file name.
pub const DEMO_PLUGINS: [&str; 3] = [
    "tls_handshake_modifier.wasm",
    "mtls_auth.wasm",
    "tls_metadata_headers.wasm",
];

/// Files of the demo PKI, in the demo directory.
#[derive(Debug, Clone)]
pub struct DemoPki {
    /// Root CA certificate: trust it for the server (`curl --cacert`).
    pub root: PathBuf,
    /// Intermediate CA certificate (issues the client certificate).
    pub intermediate: PathBuf,
    /// Intermediate + root: the CA bundle mtls-auth trusts.
    pub ca_bundle: PathBuf,
    /// Server certificate for `localhost` and 127.0.0.1.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client's leaf + intermediate, in the chain format (`curl --cert`).
    pub client_chain: PathBuf,
    /// The client's key (`curl --key`).
    pub client_key: PathBuf,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate demo certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// A plugin file is missing.
    #[error("plugin {0} not found; build the examples first (the README's run command does it)")]
    MissingPlugin(PathBuf),
}

fn write(path: &Path, contents: &str) -> Result<(), DemoError> {
    std::fs::write(path, contents).map_err(|source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tollgate Demo");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl DemoPki {
    /// The demo PKI in `dir`, generated on first use: root CA → intermediate CA → client
    /// certificate `demo-client`, and a server certificate signed by the root.
    pub fn ensure(dir: &Path) -> Result<DemoPki, DemoError> {
        let pki = DemoPki {
            root: dir.join("ca.pem"),
            intermediate: dir.join("intermediate.pem"),
            ca_bundle: dir.join("ca-bundle.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_chain: dir.join("client-chain.pem"),
            client_key: dir.join("client.key"),
        };
        let complete = [
            &pki.root,
            &pki.intermediate,
            &pki.ca_bundle,
            &pki.server_cert,
            &pki.server_key,
            &pki.client_chain,
            &pki.client_key,
        ]
        .iter()
        .all(|path| path.exists());
        if !complete {
            std::fs::create_dir_all(dir).map_err(|source| DemoError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            pki.generate()?;
        }
        Ok(pki)
    }

    fn generate(&self) -> Result<(), DemoError> {
        let root_params = ca_params("Tollgate Demo Root CA")?;
        let root_key = KeyPair::generate()?;
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);

        let intermediate_params = ca_params("Tollgate Demo Intermediate CA")?;
        let intermediate_key = KeyPair::generate()?;
        let intermediate = intermediate_params.signed_by(&intermediate_key, &root_issuer)?;
        let intermediate_issuer = Issuer::new(intermediate_params, intermediate_key);

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server = server_params.signed_by(&server_key, &root_issuer)?;

        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "demo-client");
        client_params
            .distinguished_name
            .push(DnType::OrganizationName, "Tollgate Demo");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let client_key = KeyPair::generate()?;
        let client = client_params.signed_by(&client_key, &intermediate_issuer)?;

        // The chain in the contract's format, so `get_full_client_certificate_chain` returns
        // this file byte for byte.
        let client_chain = encode_chain(&[client.der().clone(), intermediate.der().clone()]);
        write(&self.root, &encode_chain(&[root.der().clone()]))?;
        write(
            &self.intermediate,
            &encode_chain(&[intermediate.der().clone()]),
        )?;
        write(
            &self.ca_bundle,
            &encode_chain(&[intermediate.der().clone(), root.der().clone()]),
        )?;
        write(&self.server_cert, &encode_chain(&[server.der().clone()]))?;
        write(&self.server_key, &server_key.serialize_pem())?;
        write(&self.client_chain, &client_chain)?;
        write(&self.client_key, &client_key.serialize_pem())?;
        Ok(())
    }
}

/// Writes the demo config into `dir`, pointing at `plugins`, the demo PKI and `upstream`.
pub fn write_config(
    dir: &Path,
    plugins: &Path,
    pki: &DemoPki,
    upstream: SocketAddr,
    https: SocketAddr,
    http: SocketAddr,
) -> Result<PathBuf, DemoError> {
    for plugin in DEMO_PLUGINS {
        let path = plugins.join(plugin);
        if !path.exists() {
            return Err(DemoError::MissingPlugin(path));
        }
    }
    let ca_bundle = std::fs::read_to_string(&pki.ca_bundle).map_err(|source| DemoError::Io {
        path: pki.ca_bundle.clone(),
        source,
    })?;
    // Checked here so a damaged bundle is reported as such, not as a plugin config error.
    if parse_certificates(&ca_bundle).is_err() {
        return Err(DemoError::Io {
            path: pki.ca_bundle.clone(),
            source: std::io::Error::other("not a PEM certificate bundle"),
        });
    }
    let config = CONFIG_TEMPLATE
        .replace("{{https}}", &https.to_string())
        .replace("{{http}}", &http.to_string())
        .replace("{{upstream}}", &upstream.to_string())
        .replace("{{plugins}}", &toml_path(plugins))
        .replace("{{dir}}", &toml_path(dir))
        .replace("{{ca_bundle}}", ca_bundle.trim_end());
    let path = dir.join("tollgate.toml");
    write(&path, &config)?;
    Ok(path)
}

fn toml_path(path: &Path) -> String {
    path.display().to_string().replace('\\', "/")
}

/// The commands a person can try against the running demo.
pub fn instructions(pki: &DemoPki, https: SocketAddr, http: SocketAddr, config: &Path) -> String {
    let cert = format!(
        "--cacert {} --cert {} --key {}",
        pki.root.display(),
        pki.client_chain.display(),
        pki.client_key.display()
    );
    let no_cert = format!("--cacert {}", pki.root.display());
    let base = format!("https://localhost:{}", https.port());
    let access_log = config.with_file_name("access.log");
    format!(
        "\nTollgate demo is running (config: {config}).\n\n\
         Try:\n  \
         # TLS, no client certificate: the echo upstream gets no certificate headers\n  \
         curl {no_cert} {base}/hello\n\n  \
         # with the client certificate: tls-metadata-headers forwards the chain, serial, DNs\n  \
         curl {cert} {base}/hello\n\n  \
         # /secure is guarded by mtls-auth: 401 without a certificate, consumer `alice` with one\n  \
         curl {no_cert} {base}/secure\n  \
         curl {cert} {base}/secure\n\n  \
         # plaintext listener: no request.tls in the log\n  \
         curl http://127.0.0.1:{http_port}/hello\n\n\
         Access log (one JSON line per request, request.tls.client_verify included):\n  \
         tail -f {log}\n\nCtrl-C stops the gateway.\n",
        config = config.display(),
        http_port = http.port(),
        log = access_log.display(),
    )
}
