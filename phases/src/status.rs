//! Status codes a plugin may answer with.

use std::ops::RangeInclusive;

use crate::InvalidArgument;

/// The status codes `response.exit` accepts (and a scenario's upstream may answer): three
/// digits, as HTTP/1.1's status line carries them.
pub const STATUS_RANGE: RangeInclusive<u16> = 100..=999;

/// Checks a status against [`STATUS_RANGE`].
pub fn check_status(status: u16) -> Result<(), InvalidArgument> {
    if STATUS_RANGE.contains(&status) {
        Ok(())
    } else {
        Err(InvalidArgument::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_digit_statuses_only() {
        for ok in [100, 204, 999] {
            assert_eq!(check_status(ok), Ok(()));
        }
        for bad in [0, 99, 1000] {
            assert_eq!(
                check_status(bad).unwrap_err().to_string(),
                format!("invalid status code: {bad} (expected 100 to 999)")
            );
        }
    }
}
