//! The request path as routing, plugins and the upstream see it: normalized per RFC 3986 §6.2.2,
//! so that one resource has one spelling and no spelling slips past a route's prefix.
//!
//! In order:
//!
//! 1. percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded (`%73` → `s`,
//!    `%2E` → `.`); every other escape is kept, its hex digits upper-cased (`%c3` → `%C3`);
//! 2. repeated slashes collapse into one (`//a///b` → `/a/b`);
//! 3. dot segments are removed (`/a/./b/../c` → `/a/c`; a trailing `.` or `..` leaves a
//!    trailing slash: `/a/b/..` → `/a/`).
//!
//! What cannot be normalized safely is refused (the gateway answers 400): an encoded slash
//! (`%2F`: a backend that decodes it would see another path than the router did), an encoded
//! backslash (`%5C`, a separator on some backends), a NUL (encoded; a raw one cannot reach here),
//! a `..` that would climb above the root, a malformed escape, and a path that does not start
//! with `/` (such as `OPTIONS *`).
//!
//! Matching stays case-sensitive, as in Kong: `/SECURE` is not `/secure`.
//!
//! ```
//! # use tollgate::proxy::path::{normalize, PathError};
//! assert_eq!(normalize("//x/../%73ecure/./").unwrap(), "/secure/");
//! assert_eq!(normalize("/%2fsecure"), Err(PathError::EncodedSeparator));
//! assert_eq!(normalize("/%2e%2e/secure"), Err(PathError::AboveRoot));
//! ```

use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// It does not start with `/`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// `%2F` or `%5C`: an encoded path separator.
    EncodedSeparator,
    /// `%00`.
    Nul,
    /// A `..` segment with nothing left to remove.
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::MalformedEscape => "malformed percent-encoding in the path",
            PathError::EncodedSeparator => "encoded / or \\ in the path",
            PathError::Nul => "encoded NUL in the path",
            PathError::AboveRoot => "the path climbs above the root",
        })
    }
}

impl std::error::Error for PathError {}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escapes of unreserved characters and upper-cases the others; refuses encoded
/// separators, NUL and malformed escapes. The result is ASCII whenever the input is.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = &rest.as_bytes()[at..];
        let (Some(high), Some(low)) = (
            escape.get(1).copied().and_then(hex_value),
            escape.get(2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::MalformedEscape);
        };
        let byte = high << 4 | low;
        match byte {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            byte if is_unreserved(byte) => out.push(char::from(byte)),
            byte => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 0xf)]));
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The normalized form of `path` (no query), or why it has none. See the module docs.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // The common case, a path that is already normal, costs one scan and one copy.
    let decoded = if path.contains('%') {
        decode_unreserved(path)?
    } else {
        path.to_owned()
    };
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // Splitting "/a//b/" gives "", "a", "", "b", "": empty segments are repeated slashes, except
    // the last, which is a trailing slash.
    let mut parts = decoded[1..].split('/').peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "" => trailing_slash = last && !segments.is_empty(),
            "." => trailing_slash = last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            segment => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ok(path: &str) -> String {
        normalize(path).unwrap_or_else(|err| panic!("{path}: {err}"))
    }

    #[test]
    fn normal_paths_are_unchanged() {
        for path in [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "/v1/users;id=7",
            "/~user/x.y-z_",
        ] {
            assert_eq!(ok(path), path);
        }
    }

    #[test]
    fn repeated_slashes_collapse() {
        assert_eq!(ok("//secure"), "/secure");
        assert_eq!(ok("///secure"), "/secure");
        assert_eq!(ok("/a//b///c//"), "/a/b/c/");
        assert_eq!(ok("//"), "/");
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/./secure"), "/secure");
        assert_eq!(ok("/x/../secure"), "/secure");
        assert_eq!(ok("/secure/./"), "/secure/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/a/./b/../../c"), "/c");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/."), "/");
        // Not dot segments: dots inside a name.
        assert_eq!(ok("/a/..b/.c/..."), "/a/..b/.c/...");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(ok("/%73ecure"), "/secure");
        assert_eq!(ok("/%7Euser/%2d%5f%2E"), "/~user/-_.");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(ok("/a%20b%3f"), "/a%20b%3F");
        assert_eq!(ok("/%41"), "/A");
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        assert_eq!(ok("/%2e/secure"), "/secure");
        assert_eq!(ok("/x/%2E%2e/secure"), "/secure");
        assert_eq!(normalize("/%2e%2e/secure"), Err(PathError::AboveRoot));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(normalize("/%2fsecure"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/%2Fsecure"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/secure%00"), Err(PathError::Nul));
        assert_eq!(normalize("/../secure"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/%"), Err(PathError::MalformedEscape));
        assert_eq!(normalize("/%4"), Err(PathError::MalformedEscape));
        assert_eq!(normalize("/%zz"), Err(PathError::MalformedEscape));
        assert_eq!(normalize("/%%41"), Err(PathError::MalformedEscape));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn case_is_kept() {
        assert_eq!(ok("/SECURE"), "/SECURE");
        assert_eq!(ok("/%53ECURE"), "/SECURE");
    }

    /// Paths built from the pieces that normalization cares about.
    fn tricky_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%2f".to_owned()),
            Just("%73".to_owned()),
            Just("%c3%a9".to_owned()),
            Just("%00".to_owned()),
            Just("%".to_owned()),
            "[a-zA-Z0-9._~;=-]{1,4}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(path in tricky_path()) {
            if let Ok(once) = normalize(&path) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
            }
        }

        #[test]
        fn normal_forms_have_no_empty_or_dot_segments(path in tricky_path()) {
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                for bad in ["//", "/./", "/../"] {
                    prop_assert!(!normal.contains(bad), "{} has {}", normal, bad);
                }
                prop_assert!(!normal.ends_with("/.") && !normal.ends_with("/.."), "{}", normal);
                // Nothing left that decodes to a separator, a dot or NUL.
                let lower = normal.to_ascii_lowercase();
                for escape in ["%2f", "%5c", "%2e", "%00"] {
                    prop_assert!(!lower.contains(escape), "{} has {}", normal, escape);
                }
            }
        }

        #[test]
        fn arbitrary_input_never_panics(path in "\\PC{0,40}") {
            let _ = normalize(&path);
            let _ = normalize(&format!("/{path}"));
        }
    }
}
