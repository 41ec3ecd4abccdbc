//! Kong's `tls-metadata-headers` as a Tollgate plugin: forwards the client certificate to the
//! upstream in request headers (URL-encoded PEM of the leaf and of the whole chain, serial number,
//! issuer and subject DN, SHA-1 fingerprint), like nginx's `$ssl_client_*` variables. The values
//! are the gateway's (`client_tls::get_client_certificate`): the plugin parses no certificate.
//!
//! It does not ask for a certificate itself: pair it with `tls-handshake-modifier` (forward
//! whatever the client sent) or `mtls-auth` (forward only authenticated clients).

use serde::Deserialize;
use tollgate_sdk::{Error, PhaseResult, Plugin, client_tls, log, request};

/// The header names, as configured, and whether the chain is forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The leaf, URL-encoded PEM.
    pub client_cert_header_name: String,
    /// The whole chain as the client sent it, URL-encoded PEM.
    pub client_cert_chain_header_name: String,
    /// The leaf's serial number, upper-case hex.
    pub client_serial_header_name: String,
    /// The leaf's issuer DN.
    pub client_cert_issuer_dn_header_name: String,
    /// The leaf's subject DN.
    pub client_cert_subject_dn_header_name: String,
    /// SHA-1 of the leaf's DER, lower-case hex.
    pub client_cert_fingerprint_header_name: String,
    /// Whether the chain header is sent. The chain is most of the bytes these headers add
    /// (2–3 KiB URL-encoded for a leaf and one intermediate); an upstream that needs only the
    /// leaf (nginx's `$ssl_client_escaped_cert` is the leaf alone) is spared them.
    pub forward_chain: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client_cert_header_name: "X-Client-Cert".into(),
            client_cert_chain_header_name: "X-Client-Cert-Chain".into(),
            client_serial_header_name: "X-Client-Cert-Serial".into(),
            client_cert_issuer_dn_header_name: "X-Client-Cert-Issuer-DN".into(),
            client_cert_subject_dn_header_name: "X-Client-Cert-Subject-DN".into(),
            client_cert_fingerprint_header_name: "X-Client-Cert-Fingerprint".into(),
            forward_chain: true,
        }
    }
}

impl Config {
    /// Removes every header this plugin forwards: a client may have sent them.
    fn forward_nothing(&self) -> PhaseResult {
        for (_, name) in self.names() {
            request::remove_header(name)?;
        }
        Ok(())
    }

    fn names(&self) -> [(&'static str, &str); 6] {
        [
            ("client_cert_header_name", &self.client_cert_header_name),
            (
                "client_cert_chain_header_name",
                &self.client_cert_chain_header_name,
            ),
            ("client_serial_header_name", &self.client_serial_header_name),
            (
                "client_cert_issuer_dn_header_name",
                &self.client_cert_issuer_dn_header_name,
            ),
            (
                "client_cert_subject_dn_header_name",
                &self.client_cert_subject_dn_header_name,
            ),
            (
                "client_cert_fingerprint_header_name",
                &self.client_cert_fingerprint_header_name,
            ),
        ]
    }

    fn check(&self) -> Result<(), String> {
        let names = self.names();
        for (i, (field, name)) in names.iter().enumerate() {
            if !is_token(name) {
                return Err(format!("{field}: {name:?} is not a valid header name"));
            }
            if let Some((other, _)) = names[..i]
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(name))
            {
                return Err(format!("{field}: {name:?} is already used by {other}"));
            }
        }
        Ok(())
    }
}

/// RFC 9110 `token`.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Forwards the client certificate's details upstream.
#[derive(Debug)]
pub struct TlsMetadataHeaders {
    config: Config,
}

#[tollgate_sdk::plugin]
impl Plugin for TlsMetadataHeaders {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config)
            .map_err(|err| format!("invalid tls-metadata-headers configuration: {err}"))?;
        config
            .check()
            .map_err(|err| format!("invalid tls-metadata-headers configuration: {err}"))?;
        Ok(TlsMetadataHeaders { config })
    }

    fn access(&mut self) -> PhaseResult {
        let c = &self.config;
        // The gateway reads the leaf once per connection; nothing is parsed here.
        let leaf = match client_tls::get_client_certificate() {
            Ok(Some(leaf)) => leaf,
            Ok(None) => {
                // Debug, not info: on a route open to clients without certificates this is
                // every request.
                log::debug(
                    "no client certificate (none requested, or none sent): nothing forwarded",
                );
                return c.forward_nothing();
            }
            Err(Error::NotTls) => {
                log::debug("connection is not TLS: no client certificate forwarded");
                return c.forward_nothing();
            }
            Err(Error::InvalidArgument(why)) => {
                log::warn(&format!("{why}: nothing forwarded"));
                return c.forward_nothing();
            }
            Err(err) => return Err(err.into()),
        };
        // What the upstream gets in these headers comes from the TLS connection, never the
        // client: each is set (which replaces what the client sent) or removed.
        // The PEM comes URL-encoded from the gateway, which encodes it once per connection (this
        // encoding was most of the plugin's own time when it ran here, on every request).
        if c.forward_chain {
            match client_tls::get_escaped_full_client_certificate_chain()? {
                Some(chain) => request::set_header(&c.client_cert_chain_header_name, &chain)?,
                None => request::remove_header(&c.client_cert_chain_header_name)?,
            }
        } else {
            request::remove_header(&c.client_cert_chain_header_name)?;
        }
        match client_tls::get_escaped_client_certificate()? {
            Some(escaped) => request::set_header(&c.client_cert_header_name, &escaped)?,
            None => request::remove_header(&c.client_cert_header_name)?,
        }
        request::set_header(&c.client_serial_header_name, &leaf.serial)?;
        request::set_header(&c.client_cert_issuer_dn_header_name, &leaf.issuer)?;
        request::set_header(&c.client_cert_subject_dn_header_name, &leaf.subject)?;
        request::set_header(
            &c.client_cert_fingerprint_header_name,
            &leaf.fingerprint_sha1,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
