//! Test guest: implements `header_filter` and nothing else, and stamps the response with
//! `x-stamp: <n>`, where `n` counts this instance's `header_filter` calls (state kept in a field,
//! through `&mut self`). Nothing lists its phases: `#[plugin]` declares what the block
//! implements, so the gateway runs `header_filter`.

use tollgate_sdk::{PhaseResult, Plugin, response};

/// Counts its `header_filter` calls.
#[derive(Debug)]
pub struct HeaderStamp {
    calls: u32,
}

#[tollgate_sdk::plugin]
impl Plugin for HeaderStamp {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(HeaderStamp { calls: 0 })
    }

    fn header_filter(&mut self) -> PhaseResult {
        self.calls += 1;
        response::set_header("x-stamp", &self.calls.to_string())?;
        Ok(())
    }
}
