//! The access log's writer task: appends queued lines in batches, never leaves half a line in
//! front of the next one after a failed or short write, and reopens its file on request (what
//! logrotate asks for with SIGUSR1 after moving the file away).

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Stats, WarnThrottle};

/// Most lines gathered into one write.
const MAX_BATCH: usize = 256;

/// How long the writer waits for more lines once a batch has begun and is not full. Under load
/// this makes one write (and one hand-off to the blocking pool, a thread wake-up) per many
/// requests instead of one per few; when idle, a line reaches the file this much later. Flush
/// and reopen requests do not wait.
const LINGER: Duration = Duration::from_millis(5);

pub(super) enum Command {
    Line(String),
    Flush(oneshot::Sender<()>),
    Reopen,
}

/// Where lines are appended: written with blocking calls on tokio's blocking pool (tokio's own
/// stdout needs its `io-std` feature, which the host does not enable).
pub(super) trait Sink: Send + 'static {
    /// One write call; may write only part of `bytes`.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;

    /// Pushes out anything buffered.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The output's current length, when it can be cut back (a file); `None` for a stream.
    fn end(&mut self) -> Option<u64>;

    /// Cuts the output back to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;

    /// Opens the destination afresh; a stream has nothing to reopen.
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) struct Stdout;

impl Sink for Stdout {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }

    fn end(&mut self) -> Option<u64> {
        None
    }

    fn truncate(&mut self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "stdout cannot be cut back",
        ))
    }
}

/// A file opened for appending, unbuffered: one write call per batch.
pub(super) struct File {
    path: PathBuf,
    file: std::fs::File,
}

impl File {
    pub(super) fn open(path: PathBuf) -> io::Result<File> {
        let file = open_append(&path)?;
        Ok(File { path, file })
    }
}

fn open_append(path: &std::path::Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Sink for File {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }

    fn end(&mut self) -> Option<u64> {
        self.file.metadata().ok().map(|meta| meta.len())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

/// A write that failed: why, and how many whole lines did not make it.
#[derive(Debug)]
pub(super) struct WriteFailure {
    pub(super) error: io::Error,
    pub(super) lost_lines: usize,
}

/// Appends whole lines to a [`Sink`]. After a failed or short write the output is cut back to
/// its last whole line; where it cannot be cut (a stream, or the cut fails too), the next write
/// first ends the broken line, so a later line is never glued to half of an earlier one.
pub(super) struct LineWriter {
    sink: Box<dyn Sink>,
    /// The output ends with part of a line.
    mid_line: bool,
}

impl LineWriter {
    pub(super) fn new(sink: impl Sink) -> Self {
        LineWriter {
            sink: Box::new(sink),
            mid_line: false,
        }
    }

    /// Appends `batch`, which holds whole lines.
    pub(super) fn append(&mut self, batch: &[u8]) -> Result<(), WriteFailure> {
        let lost = |error, from: usize| WriteFailure {
            error,
            lost_lines: count_lines(&batch[from..]),
        };
        if self.mid_line {
            write_all(&mut *self.sink, b"\n").map_err(|(error, _)| lost(error, 0))?;
            self.mid_line = false;
        }
        let start = self.sink.end();
        let (error, written) = match write_all(&mut *self.sink, batch) {
            Ok(()) => return self.sink.flush().map_err(|error| lost(error, batch.len())),
            Err(failure) => failure,
        };
        let whole = batch[..written]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if whole < written {
            let cut = start.map(|start| self.sink.truncate(start + whole as u64));
            self.mid_line = !matches!(cut, Some(Ok(())));
        }
        Err(lost(error, whole))
    }

    /// Opens the destination afresh (a new file at the configured path after rotation).
    pub(super) fn reopen(&mut self) -> io::Result<()> {
        self.sink.reopen()?;
        self.mid_line = false;
        Ok(())
    }
}

/// Writes all of `bytes`, or says how many were written before the error.
fn write_all(sink: &mut dyn Sink, bytes: &[u8]) -> Result<(), (io::Error, usize)> {
    let mut written = 0;
    while written < bytes.len() {
        match sink.write(&bytes[written..]) {
            Ok(0) => {
                let error = io::Error::new(io::ErrorKind::WriteZero, "the output took no bytes");
                return Err((error, written));
            }
            Ok(n) => written += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err((error, written)),
        }
    }
    Ok(())
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// What one batch holds so far.
#[derive(Default)]
struct Gathered {
    lines: usize,
    /// A reopen was asked for: the batch ends there.
    reopen: bool,
}

impl Gathered {
    fn take(
        &mut self,
        command: Command,
        batch: &mut Vec<u8>,
        waiting: &mut Vec<oneshot::Sender<()>>,
    ) {
        match command {
            Command::Line(line) => {
                batch.extend_from_slice(line.as_bytes());
                self.lines += 1;
            }
            Command::Flush(done) => waiting.push(done),
            Command::Reopen => self.reopen = true,
        }
    }

    /// Takes what is queued, up to a full batch or a reopen.
    fn drain(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        batch: &mut Vec<u8>,
        waiting: &mut Vec<oneshot::Sender<()>>,
    ) {
        while self.lines < MAX_BATCH && !self.reopen {
            match commands.try_recv() {
                Ok(command) => self.take(command, batch, waiting),
                Err(_) => break,
            }
        }
    }
}

/// Writes queued lines in order, one batch (up to [`MAX_BATCH`] lines, or what is queued
/// within [`LINGER`] of the first) per write; answers flush requests once what preceded them
/// is written; reopens the output on a [`Command::Reopen`] or on `reopen_signal`. Ends when
/// every sender is gone.
pub(super) async fn run(
    mut commands: mpsc::Receiver<Command>,
    mut output: LineWriter,
    stats: Arc<Stats>,
    mut reopen_signal: ReopenSignal,
) {
    let throttle = WarnThrottle::new();
    let mut batch: Vec<u8> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => command,
                None => break,
            },
            () = reopen_signal.recv() => Command::Reopen,
        };
        let mut gathered = Gathered::default();
        gathered.take(first, &mut batch, &mut waiting);
        gathered.drain(&mut commands, &mut batch, &mut waiting);
        if gathered.lines < MAX_BATCH && !gathered.reopen && waiting.is_empty() {
            tokio::time::sleep(LINGER).await;
            gathered.drain(&mut commands, &mut batch, &mut waiting);
        }
        let reopen = gathered.reopen;
        let bytes = batch.len();
        let done = tokio::task::spawn_blocking(move || {
            let written = if batch.is_empty() {
                Ok(())
            } else {
                output.append(&batch)
            };
            let reopened = reopen.then(|| output.reopen());
            batch.clear();
            (written, reopened, output, batch)
        })
        .await;
        // A join error means the runtime is shutting down: nothing more can be written.
        let Ok((written, reopened, returned, emptied)) = done else {
            return;
        };
        (output, batch) = (returned, emptied);
        stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if let Err(failure) = written {
            let total = stats
                .dropped
                .fetch_add(failure.lost_lines as u64, Ordering::Relaxed)
                + failure.lost_lines as u64;
            if throttle.allow() {
                tracing::warn!(
                    error = %failure.error,
                    lost = failure.lost_lines,
                    dropped_total = total,
                    "access log write failed: lines lost"
                );
            }
        }
        match reopened {
            Some(Ok(())) => tracing::info!("access log reopened"),
            Some(Err(error)) => {
                tracing::warn!(%error, "access log could not be reopened; still writing to the old file");
            }
            None => {}
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// SIGUSR1, the signal logrotate's `postrotate` sends to make a daemon reopen its logs.
/// Registered when the log starts, so the signal never meets the default action (exit).
pub(super) struct ReopenSignal {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl ReopenSignal {
    /// Listens for SIGUSR1; without it (not on Unix, or no signal driver) never fires.
    pub(super) fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::user_defined1())
                .inspect_err(|error| {
                    tracing::warn!(%error, "cannot listen for SIGUSR1: the access log will not be reopened on it");
                })
                .ok();
            ReopenSignal { signal }
        }
        #[cfg(not(unix))]
        ReopenSignal {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            // The signal driver is gone: stop listening.
            self.signal = None;
        }
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An in-memory output that takes as many bytes as its shared budget allows, then fails
    /// every write (a disk that fills up and is freed again).
    struct Flaky {
        data: Arc<Mutex<Vec<u8>>>,
        budget: Arc<Mutex<usize>>,
        cuttable: bool,
    }

    impl Sink for Flaky {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut budget = self.budget.lock().unwrap();
            if *budget == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = bytes.len().min(*budget);
            *budget -= n;
            self.data.lock().unwrap().extend_from_slice(&bytes[..n]);
            Ok(n)
        }

        fn end(&mut self) -> Option<u64> {
            self.cuttable
                .then(|| self.data.lock().unwrap().len() as u64)
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.data.lock().unwrap().truncate(len as usize);
            Ok(())
        }
    }

    struct Output {
        writer: LineWriter,
        data: Arc<Mutex<Vec<u8>>>,
        budget: Arc<Mutex<usize>>,
    }

    impl Output {
        fn new(budget: usize, cuttable: bool) -> Self {
            let data = Arc::new(Mutex::new(Vec::new()));
            let budget = Arc::new(Mutex::new(budget));
            let writer = LineWriter::new(Flaky {
                data: data.clone(),
                budget: budget.clone(),
                cuttable,
            });
            Output {
                writer,
                data,
                budget,
            }
        }

        fn text(&self) -> String {
            String::from_utf8(self.data.lock().unwrap().clone()).unwrap()
        }

        fn refill(&self) {
            *self.budget.lock().unwrap() = 1 << 20;
        }
    }

    #[test]
    fn a_short_write_to_a_file_is_cut_back_to_the_last_whole_line() {
        let mut out = Output::new(14, true);
        out.writer.append(b"{\"a\":1}\n").unwrap();
        let failure = out.writer.append(b"{\"b\":2}\n{\"c\":3}\n").unwrap_err();
        assert_eq!(failure.lost_lines, 2);
        assert_eq!(out.text(), "{\"a\":1}\n");
        out.refill();
        out.writer.append(b"{\"d\":4}\n").unwrap();
        assert_eq!(out.text(), "{\"a\":1}\n{\"d\":4}\n");
    }

    #[test]
    fn a_short_write_to_a_stream_ends_the_broken_line_before_the_next() {
        let mut out = Output::new(12, false);
        let failure = out.writer.append(b"{\"a\":1}\n{\"b\":2}\n").unwrap_err();
        assert_eq!(failure.lost_lines, 1);
        assert_eq!(out.text(), "{\"a\":1}\n{\"b\"");
        let still_full = out.writer.append(b"{\"c\":3}\n").unwrap_err();
        assert_eq!(
            still_full.lost_lines, 1,
            "no room: the line is lost, not glued on"
        );
        assert_eq!(out.text(), "{\"a\":1}\n{\"b\"");
        out.refill();
        out.writer.append(b"{\"d\":4}\n").unwrap();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["{\"a\":1}", "{\"b\"", "{\"d\":4}"]);
    }

    #[test]
    fn a_write_that_stops_on_a_line_boundary_leaves_whole_lines() {
        let mut out = Output::new(8, false);
        let failure = out.writer.append(b"{\"a\":1}\n{\"b\":2}\n").unwrap_err();
        assert_eq!(failure.lost_lines, 1);
        out.refill();
        out.writer.append(b"{\"c\":3}\n").unwrap();
        assert_eq!(out.text(), "{\"a\":1}\n{\"c\":3}\n");
    }
}
