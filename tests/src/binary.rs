//! The `tollgate` binary, started as a user starts it: `tollgate run --config FILE` in a child
//! process. Promises a user relies on (time limits, timeouts, caps, signals) are tested through
//! this, not through a gateway the test builds from the library, so that nothing a test keeps
//! alive can stand in for what the product does.
//!
//! ```no_run
//! # async fn demo() {
//! use tollgate_tests::binary::Tollgate;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let gateway = Tollgate::run(dir.path(), "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n");
//! let addr = gateway.addr("http");
//! // ... send requests to addr ...
//! gateway.signal("TERM");
//! # }
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The smallest config that forwards: `head` (top-level settings, sections), a plaintext
/// listener `http`, the service `echo` at `echo`, and one route of `path` to it.
pub fn echo_route_config(head: &str, echo: SocketAddr, path: &str) -> String {
    format!(
        r#"{head}

[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[services]]
name = "echo"
targets = ["{echo}"]

[[routes]]
name = "echo"
paths = ["{path}"]
service = "echo"
"#
    )
}

/// The release binary next to this test executable (`<target>/release/tollgate`), so the tests
/// find it wherever cargo put it, `CARGO_TARGET_DIR` included.
pub fn tollgate_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // Tests run from <target>/release/deps/<test>-<hash>, binaries from <target>/release/.
    let dir = exe.parent().expect("the executable's directory");
    let path = [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|dir| dir.join("tollgate"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| dir.join("tollgate"));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release -p tollgate` (scripts/test does)",
        path.display()
    );
    path
}

/// Removes ANSI escape sequences (tracing's colours).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Kills a child (and its process group when it leads one) if the test ends early.
#[derive(Debug)]
pub struct Reaper {
    /// The child.
    pub child: Child,
    /// Whether the child leads a process group (signals then go to the group).
    pub group: bool,
}

impl Reaper {
    /// Sends `signal` (a name such as `TERM`) with `kill`.
    pub fn signal(&self, signal: &str) {
        let target = if self.group {
            format!("-{}", self.child.id())
        } else {
            self.child.id().to_string()
        };
        let _ = Command::new("kill")
            .args([format!("-{signal}"), "--".to_owned(), target])
            .status();
    }

    /// Waits up to `limit` for the child to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("KILL");
            let _ = self.child.wait();
        }
    }
}

/// A running `tollgate run` process: its listeners' bound addresses (read from its "listening"
/// log lines, so configs may use port 0) and everything it wrote to stderr.
#[derive(Debug)]
pub struct Tollgate {
    process: Reaper,
    addrs: HashMap<String, SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The config file it runs from.
    pub config: PathBuf,
}

impl Tollgate {
    /// Writes `config` to `dir/tollgate.toml` and runs `tollgate run --config` on it from `dir`,
    /// with `RUST_LOG=info`; waits until every listener is bound. Panics with the process's
    /// output if it exits or stays silent for 60 s.
    pub fn run(dir: &Path, config: &str) -> Tollgate {
        Self::run_with(dir, config, &[])
    }

    /// [`Tollgate::run`] with extra environment variables.
    pub fn run_with(dir: &Path, config: &str, env: &[(&str, &str)]) -> Tollgate {
        Self::launch(dir, config, env, None)
    }

    /// [`Tollgate::run`] under an open-file limit (soft and hard), as a service manager's
    /// `LimitNOFILE` or `ulimit -n` would start it; `prlimit` (util-linux) sets it.
    pub fn run_with_open_files(dir: &Path, config: &str, open_files: u64) -> Tollgate {
        Self::launch(dir, config, &[], Some(open_files))
    }

    fn launch(dir: &Path, config: &str, env: &[(&str, &str)], open_files: Option<u64>) -> Tollgate {
        let path = dir.join("tollgate.toml");
        std::fs::write(&path, config).expect("config written");
        // Each listener says "listening", and so does the admin listener.
        let listeners = config
            .lines()
            .filter(|line| matches!(line.trim(), "[[listeners]]" | "[admin]"))
            .count();
        let mut command = match open_files {
            None => Command::new(tollgate_binary()),
            Some(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(tollgate_binary());
                prlimit
            }
        };
        command
            .args(["run", "--config"])
            .arg(&path)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("tollgate runs");
        let mut process = Reaper {
            child,
            group: false,
        };
        let lines = spawn_line_reader(process.child.stderr.take().expect("stderr"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut addrs = HashMap::new();
        while addrs.len() < listeners {
            let line = match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let status = process.wait(Duration::from_secs(1));
                    panic!(
                        "tollgate did not bind its listeners (exit: {status:?}); stderr:\n{}",
                        stderr.lock().expect("stderr lines").join("\n")
                    );
                }
            };
            if line.contains("listening")
                && let (Some(name), Some(addr)) = (field(&line, "listener"), field(&line, "addr"))
                && let Ok(addr) = addr.parse()
            {
                addrs.insert(name.to_owned(), addr);
            }
            stderr.lock().expect("stderr lines").push(line);
        }
        // Keep collecting what it says, for assertions on its log.
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in lines {
                collected.lock().expect("stderr lines").push(line);
            }
        });
        Tollgate {
            process,
            addrs,
            stderr,
            config: path,
        }
    }

    /// The bound address of the listener named `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name:?}; have {:?}", self.addrs))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`, `USR1`, ...).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.wait(limit)
    }

    /// Every stderr line so far, ANSI colours removed.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lines").clone()
    }

    /// Waits up to `limit` for a stderr line matching `wanted` (the process writes its log
    /// asynchronously, and a reader thread collects it); whether one came.
    pub fn wait_for_stderr(&self, limit: Duration, wanted: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.stderr().iter().any(|line| wanted(line)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The resident set size of the process, in bytes (from `/proc`).
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// The anonymous part of the resident set: the memory the process allocated (plugin
    /// memories among it), without the binary's code and other file pages, which page in as
    /// code paths first run and do not grow with what plugins hold.
    pub fn anon_rss_bytes(&self) -> u64 {
        self.status_bytes("RssAnon:")
    }

    /// The names of the process's threads (`/proc/<pid>/task/<tid>/comm`, at most 15 bytes).
    pub fn thread_names(&self) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .expect("/proc task list")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|comm| comm.trim().to_owned())
            .collect()
    }

    /// How often the process's thread named `name` has gone to sleep of its own accord
    /// (`voluntary_ctxt_switches` in `/proc/<pid>/task/<tid>/status`).
    pub fn voluntary_switches_of_thread(&self, name: &str) -> u64 {
        let task = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .expect("/proc task list")
            .map(|task| task.expect("/proc task").path())
            .find(|task| {
                std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name)
            })
            .unwrap_or_else(|| panic!("no thread named {name}"));
        status_number(&task.join("status"), "voluntary_ctxt_switches:")
            .expect("voluntary_ctxt_switches in status")
    }

    fn status_bytes(&self, key: &str) -> u64 {
        let status = format!("/proc/{}/status", self.pid());
        status_number(Path::new(&status), key).map_or(0, |kib| kib * 1024)
    }
}

/// The number after `key` in a `/proc` status file.
fn status_number(status: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(status)
        .expect("/proc status")
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// The value of `key=value` in a tracing line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

fn spawn_line_reader(stderr: std::process::ChildStderr) -> Receiver<String> {
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });
    lines_rx
}
