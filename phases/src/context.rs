//! The context: string pairs plugins share between phases and with each other.

use crate::InvalidArgument;

/// Most keys a context may hold.
pub const MAX_CONTEXT_ENTRIES: usize = 256;
/// Longest value (and key) a context entry may have, in bytes.
pub const MAX_CONTEXT_VALUE: usize = 64 * 1024;

/// Checks `context.set(key, value)` on a context of `entries` keys, which already holds `key`
/// when `replaces` (a replacement never counts against [`MAX_CONTEXT_ENTRIES`]).
pub fn check_context_set(
    key: &str,
    value: &str,
    entries: usize,
    replaces: bool,
) -> Result<(), InvalidArgument> {
    if key.len() > MAX_CONTEXT_VALUE || value.len() > MAX_CONTEXT_VALUE {
        return Err(InvalidArgument::ContextEntryTooLarge);
    }
    if entries >= MAX_CONTEXT_ENTRIES && !replaces {
        return Err(InvalidArgument::ContextFull);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_context_still_takes_replacements() {
        assert_eq!(
            check_context_set("k", "v", MAX_CONTEXT_ENTRIES, true),
            Ok(())
        );
        assert_eq!(
            check_context_set("k", "v", MAX_CONTEXT_ENTRIES, false),
            Err(InvalidArgument::ContextFull)
        );
        let long = "x".repeat(MAX_CONTEXT_VALUE + 1);
        assert_eq!(
            check_context_set(&long, "v", 0, false),
            Err(InvalidArgument::ContextEntryTooLarge)
        );
        assert_eq!(
            check_context_set("k", &long, 0, false),
            Err(InvalidArgument::ContextEntryTooLarge)
        );
    }
}
