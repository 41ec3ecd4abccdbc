//! `trusted_ips` and `strip_client_headers`: which peers may pass client identity headers on,
//! and which client-sent headers are removed otherwise.

use super::*;

impl Checker<'_> {
    pub(super) fn trusted_ips(&mut self, raw: Option<&[Spanned<String>]>) -> Vec<IpRange> {
        let mut out = Vec::new();
        for (i, value) in raw.unwrap_or_default().iter().enumerate() {
            match value.get_ref().parse::<IpRange>() {
                Ok(range) => out.push(range),
                Err(message) => {
                    self.problem(value.span().start, format!("trusted_ips[{i}]"), message);
                }
            }
        }
        out
    }

    /// Header names, each optionally ending in `*`; lower-cased. Absent: the default list.
    pub(super) fn header_patterns(&mut self, raw: Option<&[Spanned<String>]>) -> Vec<String> {
        let Some(raw) = raw else {
            return DEFAULT_STRIP_CLIENT_HEADERS.map(str::to_owned).to_vec();
        };
        let mut out = Vec::new();
        for (i, value) in raw.iter().enumerate() {
            let pattern = value.get_ref().to_ascii_lowercase();
            let name = pattern.strip_suffix('*').unwrap_or(&pattern);
            if !name.is_empty() && name.bytes().all(is_tchar) {
                out.push(pattern);
            } else {
                let message = format!(
                    "invalid header pattern `{}` (expected a header name, optionally ending in \"*\")",
                    value.get_ref()
                );
                self.problem(
                    value.span().start,
                    format!("strip_client_headers[{i}]"),
                    message,
                );
            }
        }
        out
    }
}
