//! SNI patterns as in Kong's `snis` settings: exact names, `*.suffix`, `prefix.*`, and `*` for
//! every connection (including one without SNI).

use std::fmt;

use serde::Deserialize;

/// One configured SNI pattern, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SniPattern {
    /// `*`: every connection, with or without SNI.
    Any,
    /// `api.example.com`.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: one or more labels before it.
    Suffix(String),
    /// `api.*`, stored as `api.`: one or more labels after it.
    Prefix(String),
}

impl SniPattern {
    /// Whether a connection with this SNI matches. Without SNI only `*` matches.
    pub fn matches(&self, sni: Option<&str>) -> bool {
        let Some(sni) = sni else {
            return matches!(self, SniPattern::Any);
        };
        let sni = sni.to_ascii_lowercase();
        match self {
            SniPattern::Any => true,
            SniPattern::Exact(name) => sni == *name,
            SniPattern::Suffix(suffix) => sni.len() > suffix.len() && sni.ends_with(suffix),
            SniPattern::Prefix(prefix) => sni.len() > prefix.len() && sni.starts_with(prefix),
        }
    }
}

impl TryFrom<String> for SniPattern {
    type Error = String;

    fn try_from(pattern: String) -> Result<Self, String> {
        let lower = pattern.to_ascii_lowercase();
        let invalid = |why: &str| Err(format!("invalid SNI pattern `{pattern}`: {why}"));
        if lower == "*" {
            return Ok(SniPattern::Any);
        }
        let (kind, name): (fn(String) -> SniPattern, &str) =
            if let Some(rest) = lower.strip_prefix("*.") {
                (|s| SniPattern::Suffix(format!(".{s}")), rest)
            } else if let Some(rest) = lower.strip_suffix(".*") {
                (|s| SniPattern::Prefix(format!("{s}.")), rest)
            } else {
                (SniPattern::Exact, lower.as_str())
            };
        if name.is_empty() {
            return invalid("empty name");
        }
        if name.contains('*') {
            return invalid("`*` is allowed only as a whole first or last label");
        }
        if name.split('.').any(str::is_empty) {
            return invalid("empty label");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return invalid("only letters, digits, `-`, `_` and `.` are allowed");
        }
        Ok(kind(name.to_string()))
    }
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniPattern::Any => f.write_str("*"),
            SniPattern::Exact(name) => f.write_str(name),
            SniPattern::Suffix(suffix) => write!(f, "*{suffix}"),
            SniPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// The `snis` setting: a non-empty list of patterns; `["*"]` by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<SniPattern>")]
pub struct Snis(Vec<SniPattern>);

impl Snis {
    /// Whether any pattern matches this SNI.
    pub fn matches(&self, sni: Option<&str>) -> bool {
        self.0.iter().any(|pattern| pattern.matches(sni))
    }
}

impl Default for Snis {
    fn default() -> Self {
        Snis(vec![SniPattern::Any])
    }
}

impl TryFrom<Vec<SniPattern>> for Snis {
    type Error = &'static str;

    fn try_from(patterns: Vec<SniPattern>) -> Result<Self, Self::Error> {
        if patterns.is_empty() {
            return Err("`snis` must not be empty (use [\"*\"] for every connection)");
        }
        Ok(Snis(patterns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> SniPattern {
        SniPattern::try_from(text.to_string()).expect("valid pattern")
    }

    #[test]
    fn star_matches_every_sni_and_no_sni() {
        assert!(pattern("*").matches(Some("a.example.com")));
        assert!(pattern("*").matches(None));
    }

    #[test]
    fn exact_name_matches_case_insensitively_and_nothing_else() {
        let p = pattern("API.example.com");
        assert!(p.matches(Some("api.EXAMPLE.com")));
        assert!(!p.matches(Some("x.api.example.com")));
        assert!(!p.matches(Some("example.com")));
        assert!(!p.matches(None));
    }

    #[test]
    fn leading_wildcard_matches_one_or_more_labels_before_the_suffix() {
        let p = pattern("*.example.com");
        assert!(p.matches(Some("a.example.com")));
        assert!(p.matches(Some("a.b.example.com")));
        assert!(!p.matches(Some("example.com")));
        assert!(!p.matches(Some("badexample.com")));
        assert!(!p.matches(None));
    }

    #[test]
    fn trailing_wildcard_matches_one_or_more_labels_after_the_prefix() {
        let p = pattern("api.*");
        assert!(p.matches(Some("api.example.com")));
        assert!(p.matches(Some("api.local")));
        assert!(!p.matches(Some("api")));
        assert!(!p.matches(Some("apix.example.com")));
    }

    #[test]
    fn malformed_patterns_are_rejected_with_the_reason() {
        for (text, why) in [
            ("", "empty name"),
            ("*.", "empty name"),
            ("a.*.b", "`*` is allowed only"),
            ("*.*", "`*` is allowed only"),
            ("a..b", "empty label"),
            ("a b", "only letters"),
        ] {
            let err = SniPattern::try_from(text.to_string()).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn empty_list_is_rejected() {
        assert!(Snis::try_from(Vec::new()).is_err());
    }
}
