//! Kong's `mtls-auth` as a Tollgate plugin: asks clients on matching SNIs for a certificate,
//! checks it against `ca_certificates`, maps it to a consumer, and answers 401 (or lets the
//! request through as the `anonymous` consumer) when any of that fails.
//!
//! Verification is always the host's (its verifier, its clock): with `send_ca_dn` the CA
//! certificates go with the certificate request, so their names are sent and they are the
//! connection's trust anchors (`connection::client_verify`); without it the certificate is
//! requested without names and the chain is checked against them in the access phase
//! (`client_tls::verify_client_chain`), whatever the listener's own client CA bundle says.
//!
//! The certificate's names come from the gateway too (`client_tls::get_client_certificate`,
//! read once per connection): the plugin carries no X.509 parser.

pub mod cert;

use std::collections::BTreeMap;

use serde::Deserialize;
use tollgate_sdk::{
    ClientCertificate, Error, PhaseResult, Plugin, SubjectAltName, client_tls, connection, log,
    request, response,
};

use tollgate_example_support::sni::Snis;

/// Upstream header: the consumer's name.
pub const CONSUMER_HEADER: &str = "X-Consumer-Username";
/// Upstream header: `true` when the request passes as the anonymous consumer.
pub const ANONYMOUS_HEADER: &str = "X-Anonymous-Consumer";
/// Upstream header: the certificate's subject DN.
pub const DN_HEADER: &str = "X-Client-Cert-DN";
/// Upstream header: the certificate's SANs, comma-separated.
pub const SAN_HEADER: &str = "X-Client-Cert-SAN";

/// How a certificate is matched to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerBy {
    /// The subject's common name.
    Cn,
    /// An email or DNS subject alternative name (checked before the CN, as Kong does).
    San,
}

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    ca_certificates: String,
    #[serde(default)]
    snis: Snis,
    #[serde(default)]
    send_ca_dn: bool,
    #[serde(default)]
    consumers: BTreeMap<String, String>,
    #[serde(default = "both")]
    consumer_by: Vec<ConsumerBy>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    skip_consumer_lookup: bool,
}

fn both() -> Vec<ConsumerBy> {
    vec![ConsumerBy::San, ConsumerBy::Cn]
}

/// The configured plugin.
#[derive(Debug)]
pub struct MtlsAuth {
    ca_pem: String,
    snis: Snis,
    send_ca_dn: bool,
    consumers: BTreeMap<String, String>,
    by_san: bool,
    by_cn: bool,
    anonymous: Option<String>,
    skip_consumer_lookup: bool,
}

/// Why a request is not authenticated.
#[derive(Debug)]
enum Failure {
    NoCertificate,
    Verification(String),
    ConsumerNotFound,
    /// A host call failed: the phase fails, nobody is let through.
    Host(Error),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Host(err)
    }
}

impl Failure {
    fn client_verify(&self) -> String {
        match self {
            Failure::NoCertificate => "NONE".into(),
            Failure::Verification(reason) => format!("FAILED:{reason}"),
            Failure::ConsumerNotFound => "FAILED:consumer not found".into(),
            Failure::Host(_) => "FAILED:".into(),
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Failure::NoCertificate => "No required TLS certificate was sent",
            _ => "TLS certificate failed verification",
        }
    }
}

/// An authenticated client.
#[derive(Debug)]
struct Client {
    consumer: Option<String>,
    subject_dn: String,
    /// DNS names, emails, URIs and IP addresses, in certificate order.
    sans: Vec<String>,
}

#[tollgate_sdk::plugin]
impl Plugin for MtlsAuth {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config)
            .map_err(|err| format!("invalid mtls-auth configuration: {err}"))?;
        MtlsAuth::new(config).map_err(|err| format!("invalid mtls-auth configuration: {err}"))
    }

    fn certificate(&mut self) -> PhaseResult {
        if !self.snis.matches(connection::sni()?.as_deref()) {
            return Ok(());
        }
        let ca_names = self.send_ca_dn.then_some(self.ca_pem.as_str());
        client_tls::request_client_certificate(ca_names)?;
        client_tls::disable_session_reuse()?;
        Ok(())
    }

    fn access(&mut self) -> PhaseResult {
        if !self.snis.matches(connection::sni()?.as_deref()) {
            return Ok(());
        }
        match self.authenticate() {
            Ok(client) => self.accept(client),
            Err(Failure::Host(err)) => Err(err.into()),
            Err(failure) => self.reject(&failure),
        }
    }
}

impl MtlsAuth {
    fn new(config: Config) -> Result<Self, String> {
        cert::check_certificates(&config.ca_certificates, "ca_certificates")?;
        if config.consumer_by.is_empty() {
            return Err("consumer_by must list \"cn\", \"san\" or both".into());
        }
        let names = config.consumers.values().chain(config.anonymous.as_ref());
        for name in names {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(format!(
                    "consumer name {name:?} must be non-empty, without control characters"
                ));
            }
        }
        Ok(MtlsAuth {
            ca_pem: config.ca_certificates,
            snis: config.snis,
            send_ca_dn: config.send_ca_dn,
            consumers: config.consumers,
            by_san: config.consumer_by.contains(&ConsumerBy::San),
            by_cn: config.consumer_by.contains(&ConsumerBy::Cn),
            anonymous: config.anonymous,
            skip_consumer_lookup: config.skip_consumer_lookup,
        })
    }

    fn authenticate(&self) -> Result<Client, Failure> {
        let leaf = match client_tls::get_client_certificate() {
            Ok(Some(leaf)) => Some(leaf),
            Ok(None) | Err(Error::NotTls) => return Err(Failure::NoCertificate),
            // A leaf the gateway cannot read: the verdict below comes first, as OpenSSL's would.
            Err(Error::InvalidArgument(_)) => None,
            Err(err) => return Err(Failure::Host(err)),
        };
        self.verify()?;
        let leaf = leaf.ok_or_else(|| Failure::Verification("certificate verify failed".into()))?;

        // Verified by the host; only the names it read are used here.
        let consumer = if self.skip_consumer_lookup {
            None
        } else {
            Some(self.lookup(&leaf).ok_or(Failure::ConsumerNotFound)?)
        };
        Ok(Client {
            consumer,
            subject_dn: leaf.subject.clone(),
            sans: header_sans(&leaf),
        })
    }

    /// The host's verdict on the client's chain against `ca_certificates`.
    fn verify(&self) -> Result<(), Failure> {
        let result = if self.send_ca_dn {
            // They were this connection's trust anchors, given with the certificate request.
            connection::client_verify()?
        } else {
            // Requested without names: the connection's anchors are the listener's, not ours.
            client_tls::verify_client_chain(&self.ca_pem)?
        };
        match result.as_str() {
            "SUCCESS" => Ok(()),
            "NONE" => Err(Failure::NoCertificate),
            other => Err(Failure::Verification(
                other.strip_prefix("FAILED:").unwrap_or(other).to_string(),
            )),
        }
    }

    /// SANs first (DNS names and emails, the kinds Kong matches, in certificate order), then the
    /// CN, like Kong; the first identity with a consumer wins.
    fn lookup(&self, leaf: &ClientCertificate) -> Option<String> {
        let by_san = leaf
            .subject_alt_names
            .iter()
            .filter(|_| self.by_san)
            .filter_map(|san| match san {
                SubjectAltName::Dns(name) | SubjectAltName::Email(name) => Some(name.as_str()),
                SubjectAltName::Uri(_) | SubjectAltName::Ip(_) => None,
            });
        let by_cn = leaf
            .common_names
            .iter()
            .map(String::as_str)
            .filter(|_| self.by_cn);
        by_san
            .chain(by_cn)
            .find_map(|identity| self.consumers.get(identity).cloned())
    }

    fn accept(&self, client: Client) -> PhaseResult {
        request::remove_header(ANONYMOUS_HEADER)?;
        match &client.consumer {
            Some(consumer) => request::set_header(CONSUMER_HEADER, consumer)?,
            // Never pass on a username the client made up.
            None => request::remove_header(CONSUMER_HEADER)?,
        }
        request::set_header(DN_HEADER, &client.subject_dn)?;
        if client.sans.is_empty() {
            request::remove_header(SAN_HEADER)?;
        } else {
            request::set_header(SAN_HEADER, &client.sans.join(","))?;
        }
        client_tls::set_client_verify("SUCCESS")?;
        Ok(())
    }

    fn reject(&self, failure: &Failure) -> PhaseResult {
        let client_verify = failure.client_verify();
        client_tls::set_client_verify(&client_verify)?;
        let Some(anonymous) = &self.anonymous else {
            log::info(&format!("rejected with 401: {client_verify}"));
            let body = serde_json::json!({ "message": failure.message() }).to_string();
            let headers = [("content-type".to_string(), "application/json".to_string())];
            response::exit(401, &headers, body.as_bytes())?;
            return Ok(());
        };
        log::info(&format!("passed as anonymous consumer: {client_verify}"));
        request::set_header(CONSUMER_HEADER, anonymous)?;
        request::set_header(ANONYMOUS_HEADER, "true")?;
        request::remove_header(DN_HEADER)?;
        request::remove_header(SAN_HEADER)?;
        Ok(())
    }
}

/// The SANs that go into [`SAN_HEADER`], in certificate order. Values no header may carry
/// (control characters, which these string types forbid anyway) are left out.
fn header_sans(leaf: &ClientCertificate) -> Vec<String> {
    leaf.subject_alt_names
        .iter()
        .map(SubjectAltName::value)
        .filter(|value| !value.is_empty() && !value.chars().any(char::is_control))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
