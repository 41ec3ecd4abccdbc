//! `client_verify`: the verify result of a client certificate, as nginx's `$ssl_client_verify`
//! spells it (spec client-tls.md §3).

use std::fmt;
use std::str::FromStr;

/// The value of `request.tls.client_verify` and of `set_client_verify`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientVerify {
    /// No client certificate: none was requested, or the client sent none.
    None,
    /// The chain builds to a trust anchor, within its dates, usable for client authentication.
    Success,
    /// Verification failed for this reason (OpenSSL's wording; may be empty after an override).
    Failed(String),
}

impl ClientVerify {
    /// Parses a value by the contract's rule: exactly `SUCCESS`, exactly `NONE`, or any string
    /// that starts with `FAILED:` (the reason may be empty). Case-sensitive, no trimming.
    pub fn parse(value: &str) -> Result<ClientVerify, InvalidClientVerify> {
        match value {
            "SUCCESS" => Ok(ClientVerify::Success),
            "NONE" => Ok(ClientVerify::None),
            _ => value
                .strip_prefix("FAILED:")
                .map(|reason| ClientVerify::Failed(reason.to_owned()))
                .ok_or_else(|| InvalidClientVerify(value.to_owned())),
        }
    }
}

impl FromStr for ClientVerify {
    type Err = InvalidClientVerify;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        ClientVerify::parse(value)
    }
}

impl fmt::Display for ClientVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("NONE"),
            Self::Success => f.write_str("SUCCESS"),
            Self::Failed(reason) => write!(f, "FAILED:{reason}"),
        }
    }
}

/// A value `set_client_verify` rejects. Its `Display` is the contract's exact message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidClientVerify(pub String);

impl fmt::Display for InvalidClientVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown client verify value: {} accepted values are: \"SUCCESS\", \"NONE\" or \"FAILED:<reason>\"",
            self.0
        )
    }
}

impl std::error::Error for InvalidClientVerify {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_contract() {
        let failed = |reason: &str| ClientVerify::Failed(reason.into());
        for (text, value) in [
            ("SUCCESS", ClientVerify::Success),
            ("NONE", ClientVerify::None),
            ("FAILED:", failed("")),
            ("FAILED:unknown CA", failed("unknown CA")),
            ("FAILED:a:b ", failed("a:b ")),
        ] {
            assert_eq!(text.parse(), Ok(value.clone()), "{text:?}");
            assert_eq!(value.to_string(), text);
        }
        for bad in ["success", "FAILED", " SUCCESS", "NONE ", ""] {
            let err = ClientVerify::parse(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "unknown client verify value: {bad} accepted values are: \"SUCCESS\", \"NONE\" or \"FAILED:<reason>\""
                )
            );
        }
    }
}
