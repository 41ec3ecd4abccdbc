//! Kong's `tls-handshake-modifier` as a Tollgate plugin: for connections whose SNI matches
//! `snis`, asks the client for a certificate and turns off session reuse, so the certificate is
//! there on every connection. It verifies nothing; pair it with a plugin that reads the chain
//! (`tls-metadata-headers`) or use `mtls-auth`, which also authenticates.

use serde::Deserialize;
use tollgate_sdk::{PhaseResult, Plugin, client_tls, connection};

use tollgate_example_support::sni::Snis;

/// The plugin's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SNIs to request a certificate for; `["*"]` (every connection) by default.
    #[serde(default)]
    pub snis: Snis,
}

/// Requests a client certificate for matching SNIs.
#[derive(Debug)]
pub struct TlsHandshakeModifier {
    config: Config,
}

#[tollgate_sdk::plugin]
impl Plugin for TlsHandshakeModifier {
    fn configure(config: &str) -> Result<Self, String> {
        let config = serde_json::from_str(config)
            .map_err(|err| format!("invalid tls-handshake-modifier configuration: {err}"))?;
        Ok(TlsHandshakeModifier { config })
    }

    fn certificate(&mut self) -> PhaseResult {
        if !self.config.snis.matches(connection::sni()?.as_deref()) {
            return Ok(());
        }
        client_tls::request_client_certificate(None)?;
        client_tls::disable_session_reuse()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tollgate_sdk::Phase;
    use tollgate_sdk::mock::{self, MockHost};

    use super::*;

    fn handshake(config: &str, sni: Option<&str>) -> MockHost {
        mock::install(MockHost {
            phase: Phase::Certificate,
            sni: sni.map(str::to_string),
            ..MockHost::default()
        });
        let mut plugin = TlsHandshakeModifier::configure(config).expect("valid config");
        plugin.certificate().expect("certificate phase");
        mock::take()
    }

    fn requested(host: &MockHost) -> bool {
        host.client_certificate_requested == Some(None) && host.session_reuse_disabled
    }

    fn untouched(host: &MockHost) -> bool {
        host.client_certificate_requested.is_none() && !host.session_reuse_disabled
    }

    #[test]
    fn default_config_requests_a_certificate_on_every_connection() {
        assert!(requested(&handshake("{}", Some("api.example.com"))));
        assert!(requested(&handshake("{}", None)));
    }

    #[test]
    fn matching_sni_gets_certificate_request_without_ca_names_and_no_session_reuse() {
        let config = r#"{"snis": ["api.example.com", "*.internal", "mtls.*"]}"#;
        for sni in [
            "api.example.com",
            "db.internal",
            "a.b.internal",
            "mtls.example.org",
        ] {
            assert!(requested(&handshake(config, Some(sni))), "{sni}");
        }
    }

    #[test]
    fn other_sni_is_left_alone() {
        let config = r#"{"snis": ["api.example.com", "*.internal"]}"#;
        for sni in ["www.example.com", "internal"] {
            assert!(untouched(&handshake(config, Some(sni))), "{sni}");
        }
    }

    #[test]
    fn connection_without_sni_matches_only_star() {
        assert!(untouched(&handshake(
            r#"{"snis": ["*.example.com"]}"#,
            None
        )));
        assert!(requested(&handshake(
            r#"{"snis": ["x.example.com", "*"]}"#,
            None
        )));
    }

    #[test]
    fn unknown_field_is_rejected_at_load() {
        let err = TlsHandshakeModifier::configure(r#"{"sni": ["*"]}"#).expect_err("unknown field");
        assert!(
            err.starts_with("invalid tls-handshake-modifier configuration: unknown field `sni`"),
            "{err}"
        );
    }

    #[test]
    fn bad_sni_pattern_is_rejected_at_load() {
        let err =
            TlsHandshakeModifier::configure(r#"{"snis": ["a.*.b"]}"#).expect_err("bad pattern");
        assert!(err.contains("invalid SNI pattern `a.*.b`"), "{err}");
        let err = TlsHandshakeModifier::configure(r#"{"snis": []}"#).expect_err("empty");
        assert!(err.contains("`snis` must not be empty"), "{err}");
    }

    #[test]
    fn phases_are_certificate_only() {
        assert_eq!(
            tollgate_sdk::declared_phases::<TlsHandshakeModifier>(),
            [Phase::Certificate]
        );
    }
}
