//! Bodies a plugin may hand the gateway.

use crate::InvalidArgument;

/// Largest body a plugin may answer with (`exit`) or put in place of a chunk (`set-body-chunk`).
pub const MAX_PLUGIN_BODY: usize = 8 << 20;

/// Checks a body's length against [`MAX_PLUGIN_BODY`].
pub fn check_body(len: usize) -> Result<(), InvalidArgument> {
    if len > MAX_PLUGIN_BODY {
        Err(InvalidArgument::BodyTooLarge(len))
    } else {
        Ok(())
    }
}
