//! A plugin exactly as one built against `tollgate:plugin@0.2.0` is: its imports and its
//! `handler` export all say `@0.2.0`. It asks for a client certificate, and in `access`
//! forwards what 0.2.0 added, the leaf's facts from `get-client-certificate` (its subject DN,
//! serial, SAN count and the PEM's first line), beside the chain's size. Calling
//! `get-client-certificate` in `certificate` shows the phase table applies unchanged.

#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "../../../wit/compat/plugin-0.2.0.wit",
    world: "plugin",
});

use exports::tollgate::plugin::handler::Guest;
use tollgate::plugin::types::{Error, Phase};
use tollgate::plugin::{client_tls, context, request};

struct OldPlugin;

fn message(err: Error) -> String {
    match err {
        Error::WrongPhase(message) | Error::InvalidArgument(message) => message,
        Error::NotTls => "connection is not TLS".into(),
    }
}

impl Guest for OldPlugin {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn phases() -> Vec<Phase> {
        vec![Phase::Certificate, Phase::Access]
    }

    fn on_certificate() -> Result<(), String> {
        client_tls::request_client_certificate(None).map_err(message)?;
        // Kept in the connection's context for `access` to forward.
        let refused = match client_tls::get_client_certificate() {
            Ok(_) => "allowed".to_owned(),
            Err(err) => message(err),
        };
        context::set("wrong-phase", &refused).map_err(message)
    }

    fn on_access() -> Result<(), String> {
        let chain = client_tls::get_full_client_certificate_chain().map_err(message)?;
        let count = chain.map_or(0, |pem| pem.matches("-----BEGIN CERTIFICATE-----").count());
        request::set_header("x-old-chain-certs", &count.to_string()).map_err(message)?;
        if let Some(leaf) = client_tls::get_client_certificate().map_err(message)? {
            request::set_header("x-old-subject", &leaf.subject).map_err(message)?;
            request::set_header("x-old-serial", &leaf.serial).map_err(message)?;
            let sans = leaf.subject_alt_names.len().to_string();
            request::set_header("x-old-sans", &sans).map_err(message)?;
            let first_line = leaf.pem.lines().next().unwrap_or_default();
            request::set_header("x-old-pem", first_line).map_err(message)?;
        }
        let refused = context::get("wrong-phase").map_err(message)?;
        request::set_header("x-old-wrong-phase", &refused.unwrap_or_default()).map_err(message)?;
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
