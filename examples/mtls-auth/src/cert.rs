//! What mtls-auth reads of certificates itself: only the framing of its own `ca_certificates`,
//! to reject a broken setting at load. The client's certificate is read by the gateway
//! (`client_tls::get_client_certificate`), and all verification is the gateway's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const BEGIN: &str = "-----BEGIN ";
const DASHES: &str = "-----";

/// Checks that `pem` holds one or more `CERTIFICATE` blocks, each base64 of one DER SEQUENCE
/// (the outer shape of every X.509 certificate). The gateway reads them in full when it verifies
/// against them. `what` names the text in the message.
pub fn check_certificates(pem: &str, what: &str) -> Result<(), String> {
    let mut count = 0;
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let (label, body) = after
            .split_once(DASHES)
            .ok_or_else(|| format!("{what}: PEM block {count}: unterminated header"))?;
        if label != "CERTIFICATE" {
            return Err(format!(
                "{what}: PEM block {count} is a {label}, not a CERTIFICATE"
            ));
        }
        let end_marker = format!("-----END {label}-----");
        let (base64, tail) = body
            .split_once(&end_marker)
            .ok_or_else(|| format!("{what}: PEM block {count}: no {end_marker}"))?;
        let text: String = base64.split_whitespace().collect();
        let der = STANDARD
            .decode(text)
            .map_err(|err| format!("{what}: certificate {count}: {err}"))?;
        if !is_one_sequence(&der) {
            return Err(format!(
                "{what}: certificate {count}: not a DER certificate"
            ));
        }
        count += 1;
        rest = tail;
    }
    if count == 0 {
        return Err(format!("{what}: no PEM certificate found"));
    }
    Ok(())
}

/// Whether `der` is exactly one DER SEQUENCE: tag 0x30 and a definite length that covers the
/// rest of the bytes.
fn is_one_sequence(der: &[u8]) -> bool {
    let [0x30, first, rest @ ..] = der else {
        return false;
    };
    let (len, content) = match *first {
        short @ 0..=0x7f => (usize::from(short), rest),
        long @ 0x81..=0x84 => {
            let width = usize::from(long & 0x7f);
            let Some((len_bytes, content)) = rest.split_at_checked(width) else {
                return false;
            };
            let len = len_bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            (len, content)
        }
        _ => return false,
    };
    content.len() == len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_blocks_must_be_one_der_sequence() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .expect("cert");
        let two = format!("{}{}", cert.pem(), cert.pem());
        assert_eq!(check_certificates(&two, "ca"), Ok(()));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            check_certificates(garbage, "ca"),
            Err("ca: certificate 0: not a DER certificate".into())
        );
        let key_block = key.serialize_pem();
        assert!(
            check_certificates(&key_block, "ca")
                .expect_err("a key")
                .contains("not a CERTIFICATE")
        );
        assert_eq!(
            check_certificates("not pem", "ca"),
            Err("ca: no PEM certificate found".into())
        );
    }
}
