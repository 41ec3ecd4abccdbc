//! A real gateway for end-to-end tests: built from a TOML config (listeners on port 0), serving
//! on this process's runtime in front of the built-in echo upstream, with its access log in a
//! temp dir.
//!
//! ```no_run
//! # async fn demo() {
//! use tollgate_tests::gateway::TestGateway;
//!
//! let gateway = TestGateway::start(r#"
//! [[listeners]]
//! name = "http"
//! address = "127.0.0.1:0"
//!
//! [[services]]
//! name = "echo"
//! targets = ["{{echo}}"]
//!
//! [[routes]]
//! service = "echo"
//! "#).await;
//! let addr = gateway.addr("http");
//! // ... send requests to addr ...
//! let entries = gateway.log_entries(1).await;
//! assert_eq!(entries[0]["response"]["status"], 200);
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tollgate::config::Config;
use tollgate::gateway::Gateway;

use crate::pki::{PkiFiles, TestPki};
use crate::runtime;

/// A running gateway, stopped when dropped.
#[derive(Debug)]
pub struct TestGateway {
    addrs: Vec<(String, SocketAddr)>,
    /// The echo upstream's address.
    pub echo: SocketAddr,
    /// The test PKI's files (server certificate, client chain and key, CA bundle).
    pub pki: PkiFiles,
    /// The temp dir holding the config, the PKI and the access log.
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway from `config`, after replacing `{{echo}}` (the echo upstream's
    /// `host:port`), `{{dir}}` (the temp dir: `{{dir}}/server.pem`, `{{dir}}/server.key`,
    /// `{{dir}}/ca-bundle.pem`, ... see [`PkiFiles`]) and `{{guests}}` (the dir of the built
    /// guests). The access log goes to `{{dir}}/access.log` unless the config says otherwise.
    /// Panics with the config or build error.
    pub async fn start(config: &str) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new().write(dir.path()).expect("PKI files");
        let echo_socket = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("echo upstream binds");
        let echo = echo_socket.local_addr().expect("echo address");
        let shutdown = CancellationToken::new();
        tokio::spawn(tollgate::proxy::echo::serve_echo(echo_socket, {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        }));
        let mut text = config
            .replace("{{echo}}", &echo.to_string())
            .replace("{{dir}}", &dir.path().display().to_string())
            .replace("{{guests}}", &guests_dir().display().to_string());
        if !text.contains("[access_log]") {
            text = format!(
                "[access_log]\ntarget = \"{}\"\n\n{text}",
                dir.path().join("access.log").display()
            );
        }
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, &text).expect("config written");
        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(err) => panic!("test config is invalid:\n{err}\n---\n{text}"),
        };
        let gateway = match Gateway::build(&config, runtime()).await {
            Ok(gateway) => gateway,
            Err(err) => panic!("test gateway does not build: {err}"),
        };
        let addrs = gateway.local_addrs();
        let served = tokio::spawn(gateway.serve(shutdown.clone()));
        TestGateway {
            addrs,
            echo,
            pki,
            dir,
            shutdown,
            served: Some(served),
        }
    }

    /// The bound address of the named listener.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("no listener named {listener}"))
    }

    /// The access log's path.
    pub fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Waits (up to 10 s) until the access log has at least `count` lines, and returns them
    /// parsed. The log is written off the response path, so it can trail the response a little.
    pub async fn log_entries(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let entries = read_log(&self.access_log());
            if entries.len() >= count || tokio::time::Instant::now() > deadline {
                assert!(
                    entries.len() >= count,
                    "expected {count} access log lines, found {}",
                    entries.len()
                );
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting, drains in-flight requests and flushes the log.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The complete lines of an access log, parsed. The gateway writes lines from a background task,
/// so a read can catch the last one half-written: it is left for the next read.
pub fn read_log(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|line| serde_json::from_str(line).expect("each access log line is JSON"))
        .collect()
}

/// Where the build script put the guests (`<workspace>/target/guests/wasm32-wasip1/guest`).
pub fn guests_dir() -> &'static Path {
    Path::new(crate::guests::SCRIPTED)
        .parent()
        .expect("guests live in a directory")
}
