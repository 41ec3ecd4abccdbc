//! Test guest: implements `header_filter` and nothing else, and stamps the response with
//! `x-stamp: <n>`, where `n` counts this instance's `header_filter` calls (state kept in a field,
//! through `&mut self`). Nothing lists its phases: `#[plugin]` declares what the block
//! implements, so the gateway runs `header_filter`.
//!
//! Configuration (optional): `{"say": "text"}` prints `stdout: text` to stdout and `stderr: text`
//! to stderr in each call; `{"panic": true}` panics in it. It imports from WASI only what the
//! standard library's panic path needs, so the gateway gives it its small WASI adapter: these
//! are what prove that adapter's output.

use tollgate_sdk::{PhaseResult, Plugin, response};

/// Counts its `header_filter` calls.
#[derive(Debug)]
pub struct HeaderStamp {
    calls: u32,
    say: Option<String>,
    panic: bool,
}

#[tollgate_sdk::plugin]
impl Plugin for HeaderStamp {
    fn configure(config: &str) -> Result<Self, String> {
        let config: serde_json::Value =
            serde_json::from_str(config).map_err(|err| format!("invalid config: {err}"))?;
        Ok(HeaderStamp {
            calls: 0,
            say: config["say"].as_str().map(str::to_owned),
            panic: config["panic"].as_bool().unwrap_or(false),
        })
    }

    fn header_filter(&mut self) -> PhaseResult {
        self.calls += 1;
        if let Some(say) = &self.say {
            println!("stdout: {say}");
            eprintln!("stderr: {say}");
        }
        if self.panic {
            panic!("header-stamp panics on purpose");
        }
        response::set_header("x-stamp", &self.calls.to_string())?;
        Ok(())
    }
}
