//! What a plugin sees of the outside world through WASI: its stdout/stderr become host log lines,
//! and its clocks are frozen.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use super::engine::{MAX_LOG_LINE, MAX_OUTPUT_PER_CALL};

/// What one call of a plugin may still write to the host log (log lines, stdout and stderr
/// together), and how much it wrote past that.
#[derive(Debug, Default)]
pub struct OutputBudget {
    remaining: AtomicUsize,
    dropped: AtomicUsize,
}

impl OutputBudget {
    /// Gives a new call its full allowance.
    pub fn refill(&self) {
        self.remaining.store(MAX_OUTPUT_PER_CALL, Ordering::Relaxed);
    }

    /// Whether a line of `len` bytes may be written; if not, it is counted as dropped.
    pub fn take(&self, len: usize) -> bool {
        let taken = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(len)
            })
            .is_ok();
        if !taken {
            self.dropped.fetch_add(len, Ordering::Relaxed);
        }
        taken
    }

    /// Bytes dropped since the last call of this, reset to zero.
    pub fn take_dropped(&self) -> usize {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// `text` as one log line: control characters (newlines among them) escaped, so a plugin cannot
/// forge log lines or terminal sequences, and cut at [`MAX_LOG_LINE`] bytes.
pub fn log_line(text: &str) -> Cow<'_, str> {
    let cut = if text.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    } else {
        text
    };
    if !cut.chars().any(char::is_control) && cut.len() == text.len() {
        return Cow::Borrowed(text);
    }
    let mut line = String::with_capacity(cut.len() + 16);
    for c in cut.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    if cut.len() < text.len() {
        line.push_str(" [cut]");
    }
    Cow::Owned(line)
}

/// A plugin's stdout or stderr, forwarded line by line to the host log.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    plugin: Arc<str>,
    stream: &'static str,
    budget: Arc<OutputBudget>,
}

impl PluginOutput {
    /// Output of `plugin` on `stream` (`stdout` or `stderr`), within `budget`.
    pub fn new(plugin: Arc<str>, stream: &'static str, budget: Arc<OutputBudget>) -> Self {
        PluginOutput {
            plugin,
            stream,
            budget,
        }
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            output: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    output: PluginOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if self.output.budget.take(self.line.len() + 1) {
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(
                target: "tollgate::plugin",
                plugin = %self.output.plugin,
                stream = self.output.stream,
                "{}",
                log_line(text.trim_end_matches('\r'))
            );
        }
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        for &byte in buf {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LOG_LINE {
                self.line.push(byte);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

/// A clock that always reads zero: plugins get no time source (it would let them observe the host
/// and is not needed by the API, which hands them every fact they may use).
#[derive(Debug, Clone, Copy)]
pub struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_cannot_carry_newlines_or_escape_sequences() {
        assert_eq!(log_line("plain"), "plain");
        assert_eq!(
            log_line("one\nforged line\r\u{1b}[31m"),
            "one\\nforged line\\r\\u{1b}[31m"
        );
    }

    #[test]
    fn long_log_lines_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_LOG_LINE);
        let line = log_line(&long);
        assert!(line.len() <= MAX_LOG_LINE + " [cut]".len());
        assert!(line.ends_with(" [cut]"));
    }

    #[test]
    fn the_budget_drops_and_counts_what_does_not_fit() {
        let budget = OutputBudget::default();
        budget.refill();
        assert!(budget.take(MAX_OUTPUT_PER_CALL - 10));
        assert!(!budget.take(11));
        assert!(budget.take(10));
        assert_eq!(budget.take_dropped(), 11);
        assert_eq!(budget.take_dropped(), 0);
        budget.refill();
        assert!(budget.take(11));
    }
}
