//! Warnings for operators about things that can repeat at request rate: a plugin that times out,
//! traps or hits its memory cap on every request, a certificate-phase failure per handshake.
//! Each (plugin, kind) may warn a few times per window; what is held back is counted and said
//! with the next warning that gets through, so the log stays readable and cheap under abuse.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Length of a rate-limiting window.
const WINDOW: Duration = Duration::from_secs(10);
/// Warnings let through per (plugin, kind) and window.
const PER_WINDOW: u32 = 5;
/// Distinct (plugin, kind) keys remembered; past it the table starts over.
const MAX_KEYS: usize = 1024;

#[derive(Debug)]
struct Window {
    started: Instant,
    sent: u32,
    held_back: u64,
}

/// Whether a warning for `key` may be logged now; if so, how many were held back before it.
fn admit(key: (&str, &'static str)) -> Option<u64> {
    static WINDOWS: OnceLock<Mutex<HashMap<(String, &'static str), Window>>> = OnceLock::new();
    let mut windows = WINDOWS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = Instant::now();
    if windows.len() >= MAX_KEYS && !windows.contains_key(&(key.0.to_owned(), key.1)) {
        windows.clear();
    }
    let window = windows.entry((key.0.to_owned(), key.1)).or_insert(Window {
        started: now,
        sent: 0,
        held_back: 0,
    });
    if now.duration_since(window.started) >= WINDOW {
        window.started = now;
        window.sent = 0;
    }
    if window.sent < PER_WINDOW {
        window.sent += 1;
        Some(std::mem::take(&mut window.held_back))
    } else {
        window.held_back += 1;
        None
    }
}

/// Logs `message` at warn for `plugin`, unless this (plugin, kind) already warned
/// `PER_WINDOW` times in the current window.
pub fn warn_plugin(plugin: &str, kind: &'static str, message: fmt::Arguments<'_>) {
    if let Some(held_back) = admit((plugin, kind)) {
        if held_back > 0 {
            tracing::warn!(plugin, kind, held_back, "{message}");
        } else {
            tracing::warn!(plugin, kind, "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_warns_a_few_times_per_window_then_counts_what_it_holds_back() {
        let key = ("alerts-test-plugin", "timeout");
        for _ in 0..PER_WINDOW {
            assert_eq!(admit(key), Some(0));
        }
        assert_eq!(admit(key), None);
        assert_eq!(admit(key), None);
        // Another kind of the same plugin has its own allowance.
        assert_eq!(admit(("alerts-test-plugin", "trap")), Some(0));
    }
}
