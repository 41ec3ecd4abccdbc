//! OpenSSL's names for protocol versions and cipher suites, as nginx logs them
//! (`$ssl_protocol`, `$ssl_cipher`), instead of rustls's enum names.

use rustls::{CipherSuite, ProtocolVersion};

/// `TLSv1.2`, `TLSv1.3`, …; `unknown` for anything else.
pub fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_1 => "TLSv1.1",
        ProtocolVersion::TLSv1_0 => "TLSv1",
        ProtocolVersion::SSLv3 => "SSLv3",
        _ => "unknown",
    }
}

/// OpenSSL's name of a cipher suite (`TLS_AES_256_GCM_SHA384`, `ECDHE-RSA-AES128-GCM-SHA256`);
/// covers every suite of the aws-lc-rs provider, `unknown` for anything else.
pub fn cipher_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_cipher_suite_has_an_openssl_name() {
        for suite in rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES {
            let name = cipher_name(suite.suite());
            assert_ne!(name, "unknown", "{:?}", suite.suite());
        }
        assert_eq!(
            cipher_name(CipherSuite::TLS13_AES_256_GCM_SHA384),
            "TLS_AES_256_GCM_SHA384"
        );
        assert_eq!(
            cipher_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "ECDHE-RSA-AES128-GCM-SHA256"
        );
    }

    #[test]
    fn protocol_versions_use_openssl_names() {
        assert_eq!(protocol_name(ProtocolVersion::TLSv1_2), "TLSv1.2");
        assert_eq!(protocol_name(ProtocolVersion::TLSv1_3), "TLSv1.3");
    }
}
