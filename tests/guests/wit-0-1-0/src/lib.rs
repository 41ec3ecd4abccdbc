//! A plugin exactly as one built against `tollgate:plugin@0.1.0` is: its imports and its
//! `handler` export all say `@0.1.0`. It asks for a client certificate, and in `access`
//! forwards what 0.1.0 offers about it: how many certificates the chain has, the connection's
//! `client_verify`, and an answer from `verify-client-chain` against the CA of its config
//! (`{"ca": "<PEM>"}`).
//! Calling `request-client-certificate` in `access` shows the phase table applies unchanged.

#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "../../../wit/compat/plugin-0.1.0.wit",
    world: "plugin",
});

use exports::tollgate::plugin::handler::Guest;
use tollgate::plugin::types::{Error, Phase};
use tollgate::plugin::{client_tls, connection, request};

/// The CA set `verify-client-chain` checks against: the whole configuration, a PEM string.
static CA: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

struct OldPlugin;

fn message(err: Error) -> String {
    match err {
        Error::WrongPhase(message) | Error::InvalidArgument(message) => message,
        Error::NotTls => "connection is not TLS".into(),
    }
}

impl Guest for OldPlugin {
    fn configure(config: String) -> Result<(), String> {
        // `{"ca": "<PEM>"}` or `{}`.
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|err| err.to_string())?;
        let ca = config["ca"].as_str().unwrap_or_default().to_owned();
        *CA.lock().map_err(|_| "poisoned")? = ca;
        Ok(())
    }

    fn phases() -> Vec<Phase> {
        vec![Phase::Certificate, Phase::Access]
    }

    fn on_certificate() -> Result<(), String> {
        client_tls::request_client_certificate(None).map_err(message)
    }

    fn on_access() -> Result<(), String> {
        let chain = client_tls::get_full_client_certificate_chain().map_err(message)?;
        let count = chain.map_or(0, |pem| pem.matches("-----BEGIN CERTIFICATE-----").count());
        request::set_header("x-old-chain-certs", &count.to_string()).map_err(message)?;
        let verify = connection::client_verify().map_err(message)?;
        request::set_header("x-old-client-verify", &verify).map_err(message)?;
        let ca = CA.lock().map_err(|_| "poisoned")?.clone();
        if !ca.is_empty() {
            let checked = client_tls::verify_client_chain(&ca).map_err(message)?;
            request::set_header("x-old-verify-chain", &checked).map_err(message)?;
        }
        let refused = match client_tls::request_client_certificate(None) {
            Ok(()) => "allowed".to_owned(),
            Err(err) => message(err),
        };
        request::set_header("x-old-wrong-phase", &refused).map_err(message)?;
        Ok(())
    }

    fn on_rewrite() -> Result<(), String> {
        Ok(())
    }
    fn on_balancer() -> Result<(), String> {
        Ok(())
    }
    fn on_header_filter() -> Result<(), String> {
        Ok(())
    }
    fn on_body_filter(_chunk: Vec<u8>, _end_of_stream: bool) -> Result<(), String> {
        Ok(())
    }
    fn on_log() -> Result<(), String> {
        Ok(())
    }
}

export!(OldPlugin);
