//! Upstream targets: `host:port`, `[ipv6]:port`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU16;
use std::str::FromStr;

/// An upstream `host:port`, as the config's `targets`, `balancer.targets` and
/// `balancer.set-target` carry it.
///
/// The host is a DNS name (labels of letters, digits, `-` and `_`), an IPv4 address, or an IPv6
/// address, which the text form brackets (`[::1]:80`); the port is 1 to 65535. `Display` gives
/// the text form back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Target, InvalidTarget> {
        let invalid = |problem| InvalidTarget {
            target: text.to_owned(),
            problem,
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| invalid(TargetProblem::MissingPort))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(invalid(TargetProblem::InvalidIpv6));
            }
            (host, port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| invalid(TargetProblem::MissingPort))?;
            if host.contains(':') {
                return Err(invalid(TargetProblem::UnbracketedIpv6));
            }
            if !is_hostname(host) {
                return Err(invalid(TargetProblem::InvalidHost));
            }
            (host, port)
        };
        // `u16::from_str` takes a leading `+`; a port is digits only.
        let digits = port.bytes().all(|b| b.is_ascii_digit());
        match port.parse::<u16>() {
            Ok(port) if port != 0 && digits => Ok(Target {
                host: host.to_owned(),
                port,
            }),
            _ => Err(invalid(TargetProblem::InvalidPort)),
        }
    }

    /// The target at an IP address, which is always a valid host.
    pub fn from_ip(ip: IpAddr, port: NonZeroU16) -> Target {
        Target {
            host: ip.to_string(),
            port: port.get(),
        }
    }

    /// The host name or IP address; an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port, never 0.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A DNS name of letters, digits, `-` and `_` (which also covers IPv4 addresses): the rule for a
/// target's host, and for the config's SNI and Host patterns.
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for Target {
    type Err = InvalidTarget;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Target::parse(text)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A text that is not a target, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTarget {
    /// The text as given.
    pub target: String,
    /// What is wrong with it.
    pub problem: TargetProblem,
}

/// What is wrong with a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProblem {
    /// No `:port`.
    MissingPort,
    /// An IPv6 address without brackets.
    UnbracketedIpv6,
    /// Brackets around something that is not an IPv6 address.
    InvalidIpv6,
    /// Not a DNS name or IPv4 address.
    InvalidHost,
    /// Not a number from 1 to 65535.
    InvalidPort,
}

impl fmt::Display for TargetProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetProblem::MissingPort => "expected host:port (or [ipv6]:port)",
            TargetProblem::UnbracketedIpv6 => "an IPv6 address needs brackets: [ipv6]:port",
            TargetProblem::InvalidIpv6 => "invalid IPv6 address in brackets",
            TargetProblem::InvalidHost => "invalid host name",
            TargetProblem::InvalidPort => "the port must be 1 to 65535",
        })
    }
}

impl fmt::Display for InvalidTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid target {:?}: {}", self.target, self.problem)
    }
}

impl std::error::Error for InvalidTarget {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_addresses() {
        for (text, host, port) in [
            ("backend.internal:9001", "backend.internal", 9001),
            ("10.0.0.1:443", "10.0.0.1", 443),
            ("[::1]:80", "::1", 80),
            ("[2001:db8::7]:65535", "2001:db8::7", 65535),
            ("svc_a:1", "svc_a", 1),
        ] {
            let target = Target::parse(text).unwrap();
            assert_eq!((target.host(), target.port()), (host, port));
            assert_eq!(target.to_string(), text);
        }
    }

    #[test]
    fn ip_targets_print_as_they_parse() {
        let port = NonZeroU16::new(80).unwrap();
        let v6 = Target::from_ip("::1".parse().unwrap(), port);
        assert_eq!(v6.to_string(), "[::1]:80");
        assert_eq!(Target::parse("[::1]:80").unwrap(), v6);
    }

    #[test]
    fn says_what_is_wrong() {
        for (text, problem) in [
            ("127.0.0.1", TargetProblem::MissingPort),
            ("[::1]", TargetProblem::MissingPort),
            ("::1:80", TargetProblem::UnbracketedIpv6),
            ("[nope]:80", TargetProblem::InvalidIpv6),
            (":80", TargetProblem::InvalidHost),
            ("a b:80", TargetProblem::InvalidHost),
            ("host:0", TargetProblem::InvalidPort),
            ("host:", TargetProblem::InvalidPort),
            ("host:+80", TargetProblem::InvalidPort),
            ("host:65536", TargetProblem::InvalidPort),
        ] {
            let err = Target::parse(text).unwrap_err();
            assert_eq!(err.problem, problem, "{text:?}");
            assert_eq!(
                err.to_string(),
                format!("invalid target {text:?}: {problem}")
            );
        }
    }
}
