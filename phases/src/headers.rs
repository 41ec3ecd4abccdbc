//! Header names and values, and how large a head a plugin may leave.

use crate::InvalidArgument;

/// Headers a plugin may leave in a request or response head. Past it, `set-header` and `exit`
/// answer `invalid-argument`: a guest must not make the host hold (or a peer receive) an
/// unbounded head.
pub const MAX_HEADERS: usize = 256;
/// Bytes of names and values a plugin may leave in a head. See [`MAX_HEADERS`].
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// Longest header name the `http` crate (and so the gateway) represents.
const MAX_HEADER_NAME: usize = (1 << 16) - 1;

/// RFC 9110 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A header name is an RFC 9110 token (any case; the gateway lower-cases it).
pub fn check_header_name(name: &str) -> Result<(), InvalidArgument> {
    if !name.is_empty() && name.len() <= MAX_HEADER_NAME && name.bytes().all(is_tchar) {
        Ok(())
    } else {
        Err(InvalidArgument::HeaderName(name.to_owned()))
    }
}

/// A header value holds tabs, spaces and visible ASCII only: no control characters (so no line
/// breaks to smuggle a header in) and no non-ASCII text.
pub fn check_header_value(value: &str) -> Result<(), InvalidArgument> {
    // Whole chunks folded without a branch per byte, so the check vectorizes: it runs over
    // every value a plugin sets, and forwarded certificates are kilobytes.
    let allowed = |b: u8| (b == b'\t') | ((b' '..=b'~').contains(&b));
    if value
        .as_bytes()
        .chunks(64)
        .all(|chunk| chunk.iter().fold(true, |ok, &b| ok & allowed(b)))
    {
        Ok(())
    } else {
        Err(InvalidArgument::HeaderValue(value.to_owned()))
    }
}

/// Checks a head of `count` headers whose names and values take `bytes` against
/// [`MAX_HEADERS`] and [`MAX_HEADER_BYTES`].
pub fn check_head_size(count: usize, bytes: usize) -> Result<(), InvalidArgument> {
    if count > MAX_HEADERS {
        Err(InvalidArgument::TooManyHeaders)
    } else if bytes > MAX_HEADER_BYTES {
        Err(InvalidArgument::HeadTooLarge)
    } else {
        Ok(())
    }
}

/// Checks the headers of `response.exit`: the head's size first, then each name and value.
pub fn check_exit_headers(headers: &[(String, String)]) -> Result<(), InvalidArgument> {
    check_head_size(
        headers.len(),
        headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum(),
    )?;
    for (name, value) in headers {
        check_header_name(name)?;
        check_header_value(value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens() {
        for ok in ["x-a", "X-Upper", "a!#$%&'*+-.^_`|~9"] {
            assert_eq!(check_header_name(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "a b", "a:b", "é", "a\n"] {
            assert_eq!(
                check_header_name(bad),
                Err(InvalidArgument::HeaderName(bad.into()))
            );
        }
    }

    #[test]
    fn values_are_visible_ascii() {
        for ok in ["", "a b\tc", " padded "] {
            assert_eq!(check_header_value(ok), Ok(()), "{ok:?}");
        }
        for bad in ["a\r\nx-injected: 1", "nul\0", "é", "\x7f"] {
            assert_eq!(
                check_header_value(bad).unwrap_err().to_string(),
                format!("invalid header value: {bad:?}")
            );
        }
    }

    #[test]
    fn every_byte_is_judged_at_any_position_of_a_long_value() {
        for byte in 0..=0x7fu8 {
            let allowed = byte == b'\t' || (b' '..=b'~').contains(&byte);
            for at in [0, 63, 64, 65, 199] {
                let mut value = vec![b'a'; 200];
                value[at] = byte;
                let value = String::from_utf8(value).expect("ASCII");
                assert_eq!(
                    check_header_value(&value).is_ok(),
                    allowed,
                    "{byte:#x} at {at}"
                );
            }
        }
        let mut value = "a".repeat(130);
        value.push('é');
        assert!(check_header_value(&value).is_err());
    }

    #[test]
    fn head_bounds() {
        assert_eq!(check_head_size(MAX_HEADERS, MAX_HEADER_BYTES), Ok(()));
        assert_eq!(
            check_head_size(MAX_HEADERS + 1, 0),
            Err(InvalidArgument::TooManyHeaders)
        );
        assert_eq!(
            check_head_size(1, MAX_HEADER_BYTES + 1),
            Err(InvalidArgument::HeadTooLarge)
        );
    }
}
