//! The one error of the argument rules.

use std::fmt;

use crate::{InvalidClientVerify, InvalidTarget, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_VALUE};
use crate::{MAX_HEADER_BYTES, MAX_HEADERS, MAX_PLUGIN_BODY};

/// An argument a host function rejects. Its `Display` is the contract's exact message, which
/// the gateway returns as `error.invalid-argument`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidArgument {
    /// Not an RFC 9110 token.
    HeaderName(String),
    /// Holds a byte other than tab and visible ASCII or space.
    HeaderValue(String),
    /// The head would carry more than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// The head's names and values would take more than [`MAX_HEADER_BYTES`].
    HeadTooLarge,
    /// A status outside [`STATUS_RANGE`](crate::STATUS_RANGE).
    Status(u16),
    /// A body longer than [`MAX_PLUGIN_BODY`]; holds its length.
    BodyTooLarge(usize),
    /// A context key or value longer than [`MAX_CONTEXT_VALUE`].
    ContextEntryTooLarge,
    /// A new key in a context that already holds [`MAX_CONTEXT_ENTRIES`].
    ContextFull,
    /// Not a `host:port` target.
    Target(InvalidTarget),
    /// Not a `client_verify` value.
    ClientVerify(InvalidClientVerify),
    /// The client's leaf is not an X.509 certificate the gateway can read; holds why.
    ClientCertificate(String),
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeaderName(name) => write!(f, "invalid header name: {name:?}"),
            Self::HeaderValue(value) => write!(f, "invalid header value: {value:?}"),
            Self::TooManyHeaders => write!(
                f,
                "too many headers: a head may carry at most {MAX_HEADERS}"
            ),
            Self::HeadTooLarge => write!(
                f,
                "headers too large: a head may carry at most {MAX_HEADER_BYTES} bytes of names and values"
            ),
            Self::Status(status) => {
                write!(f, "invalid status code: {status} (expected 100 to 999)")
            }
            Self::BodyTooLarge(len) => {
                write!(f, "body too large: {len} bytes, at most {MAX_PLUGIN_BODY}")
            }
            Self::ContextEntryTooLarge => write!(
                f,
                "context entries are limited to {MAX_CONTEXT_VALUE} bytes"
            ),
            Self::ContextFull => {
                write!(f, "context is limited to {MAX_CONTEXT_ENTRIES} entries")
            }
            Self::Target(err) => err.fmt(f),
            Self::ClientVerify(err) => err.fmt(f),
            Self::ClientCertificate(reason) => {
                write!(f, "client certificate cannot be read: {reason}")
            }
        }
    }
}

impl std::error::Error for InvalidArgument {}

impl From<InvalidTarget> for InvalidArgument {
    fn from(err: InvalidTarget) -> Self {
        Self::Target(err)
    }
}

impl From<InvalidClientVerify> for InvalidArgument {
    fn from(err: InvalidClientVerify) -> Self {
        Self::ClientVerify(err)
    }
}
