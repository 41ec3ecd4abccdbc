//! The `tollgate` command: run the gateway, check a config, test a plugin offline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tollgate::config::Config;
use tollgate::gateway::{
    self, Gateway, GatewayError,
    demo::{self, DemoPki},
};
use tollgate::runtime::Runtime;

/// mimalloc rather than glibc's malloc: each request allocates and frees many small objects,
/// often on another worker thread than the one that allocated them, and glibc's allocator was
/// about a tenth of the gateway's CPU time on the keep-alive path (perf, `scripts/bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for the serving process. mimalloc asks for them on its
/// arenas, and with the kernel's default `khugepaged/max_ptes_none` (511) the pages it gives back
/// are refilled when khugepaged collapses the range into a huge page again: in a 10-minute soak
/// the allocator's arena held 84 MiB instead of 22 and the process's RSS was about twice what
/// it is without them, drifting by up to 20% from minute to minute. A gateway that promises a
/// memory budget needs an RSS that follows what it holds. The setting is per process (also
/// covering the plugin pool on hosts that enable huge pages for everything) and inherited by
/// children, so only `run` and `demo` set it.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(%err, "cannot turn transparent huge pages off");
    }
}

/// A TLS-terminating HTTP gateway extended by sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway. SIGHUP reloads the config file without dropping connections.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Where to write the process id (overrides the config's `pid_file`).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Make a running gateway reload its config file: checks the file, then signals the process
    /// named by the pid file (SIGHUP). The gateway logs the outcome; on any problem it keeps
    /// running the config it has.
    Reload {
        /// The config file (TOML) the gateway runs from.
        #[arg(long, short)]
        config: PathBuf,
        /// The running gateway's pid file (overrides the config's `pid_file`).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Validate a config file and load its plugins and certificates, without listening;
    /// prints every problem with file, line and field.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo: demo certificates, the built-in echo upstream, the example plugins.
    Demo {
        /// Where the example plugins (.wasm) are.
        #[arg(long)]
        plugins: PathBuf,
        /// Where demo certificates, the config and the access log go.
        #[arg(long, default_value = "demo-data")]
        dir: PathBuf,
        /// The HTTPS listener's address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: std::net::SocketAddr,
        /// The plaintext listener's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: std::net::SocketAddr,
    },
    /// Run a plugin offline against a scenario file and print a report; exits 1 when an
    /// expectation fails.
    Test {
        /// The plugin (.wasm core module built for wasm32-wasip1, or a component).
        plugin: PathBuf,
        /// The scenario file (TOML).
        scenario: PathBuf,
    },
}

async fn load_config(path: &Path) -> anyhow::Result<Option<Config>> {
    match Config::load(path) {
        Ok(config) => Ok(Some(config)),
        Err(err) => {
            eprintln!("{err}");
            Ok(None)
        }
    }
}

async fn check(path: &Path) -> anyhow::Result<bool> {
    let Some(config) = load_config(path).await? else {
        return Ok(false);
    };
    let runtime = Runtime::with_limits(config.runtime)?;
    match Gateway::prepare(&config, &runtime).await {
        Ok(prepared) => {
            println!(
                "{}: ok ({} listeners, {} services, {} routes, {} plugins)",
                path.display(),
                config.listeners.len(),
                config.services.len(),
                config.routes.len(),
                config.plugins.len()
            );
            println!(
                "plugin runtime: {} instance slots, {} memory budget for all instances together",
                config.runtime.max_instances,
                gateway::human_bytes(config.runtime.memory_budget)
            );
            for route in prepared.route_capacity(config.runtime) {
                println!("  {route}");
            }
            for oversized in prepared.oversized_starts().await {
                println!("  {oversized}");
            }
            Ok(true)
        }
        Err(err) => report(err),
    }
}

/// Prints the config's problems (each with file, line and field) and answers `Ok(false)` (exit
/// 1, the user's mistake); other failures go up as errors (exit 2).
fn report(err: GatewayError) -> anyhow::Result<bool> {
    match err {
        GatewayError::Config(problems) => {
            eprintln!("{problems}");
            Ok(false)
        }
        other => Err(other.into()),
    }
}

/// Serves until SIGTERM or SIGINT, reloading `config_path` on SIGHUP.
async fn serve(
    mut gateway: Gateway,
    config_path: &Path,
    hangups: Hangups,
    pid_file: Option<&Path>,
) -> anyhow::Result<bool> {
    gateway.raise_open_file_limit();
    // The pid file exists before "listening" is logged: whoever waits for that line (a
    // supervisor, a test) can signal the process at once.
    let pid_file = match pid_file {
        Some(path) => Some(PidFile::write(path)?),
        None => None,
    };
    for (name, addr) in gateway.local_addrs() {
        tracing::info!(listener = %name, %addr, "listening");
    }
    let shutdown = CancellationToken::new();
    gateway::cancel_on_signal(shutdown.clone());
    let (reloader, reloads) = gateway::reload_channel(config_path.to_path_buf());
    hangups.reload_with(reloader);
    gateway.serve_with_reloads(shutdown, Some(reloads)).await;
    drop(pid_file);
    Ok(true)
}

/// SIGHUP, listened for from the start so that an early one cannot end the process (its
/// default action); each one reloads once the gateway serves.
struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    fn listen() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(hangups) => Hangups(Some(hangups)),
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGHUP: reload by signal is off");
                    Hangups(None)
                }
            }
        }
        #[cfg(not(unix))]
        Hangups()
    }

    fn reload_with(self, reloader: gateway::ReloadHandle) {
        #[cfg(unix)]
        if let Some(mut hangups) = self.0 {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received");
                    // The gateway logs the outcome.
                    let _ = reloader.reload().await;
                }
            });
        }
        #[cfg(not(unix))]
        let _ = reloader;
    }
}

/// The pid file, removed when dropped.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &Path) -> anyhow::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|err| {
            anyhow::anyhow!("cannot write the pid file {}: {err}", path.display())
        })?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn run(path: &Path, pid_file: Option<PathBuf>) -> anyhow::Result<bool> {
    let hangups = Hangups::listen();
    let Some(config) = load_config(path).await? else {
        return Ok(false);
    };
    let gateway = match Gateway::build(&config, &Runtime::with_limits(config.runtime)?).await {
        Ok(gateway) => gateway,
        Err(err) => return report(err),
    };
    let pid_file = pid_file.or(config.pid_file);
    serve(gateway, path, hangups, pid_file.as_deref()).await
}

/// `tollgate reload`: checks the file, then sends SIGHUP to the process in the pid file.
async fn reload(path: &Path, pid_file: Option<PathBuf>) -> anyhow::Result<bool> {
    let Some(config) = load_config(path).await? else {
        eprintln!(
            "{}: not reloading: fix the problems above first",
            path.display()
        );
        return Ok(false);
    };
    let Some(pid_file) = pid_file.or(config.pid_file) else {
        anyhow::bail!(
            "{}: no pid_file set; set it in the config or pass --pid-file",
            path.display()
        );
    };
    let text = std::fs::read_to_string(&pid_file)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: not a process id", pid_file.display()))?;
    signal_reload(pid)?;
    println!("sent SIGHUP to tollgate (pid {pid}); its log says whether the reload succeeded");
    Ok(true)
}

#[cfg(unix)]
fn signal_reload(pid: i32) -> anyhow::Result<()> {
    use rustix::process::{Pid, Signal, kill_process};
    let target = Pid::from_raw(pid).ok_or_else(|| anyhow::anyhow!("invalid pid {pid}"))?;
    kill_process(target, Signal::HUP)
        .map_err(|err| anyhow::anyhow!("cannot signal pid {pid}: {err}"))
}

#[cfg(not(unix))]
fn signal_reload(_pid: i32) -> anyhow::Result<()> {
    anyhow::bail!("reload by signal needs a Unix system")
}

async fn demo(
    plugins: &Path,
    dir: &Path,
    https: SocketAddr,
    http: SocketAddr,
) -> anyhow::Result<bool> {
    let dir = std::path::absolute(dir)?;
    let plugins = std::path::absolute(plugins)?;
    let pki = DemoPki::ensure(&dir)?;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = echo.local_addr()?;
    tokio::spawn(tollgate::proxy::echo::serve_echo(
        echo,
        std::future::pending(),
    ));
    let hangups = Hangups::listen();
    let config_path = demo::write_config(&dir, &plugins, &pki, upstream, https, http)?;
    let Some(config) = load_config(&config_path).await? else {
        return Ok(false);
    };
    let gateway = match Gateway::build(&config, &Runtime::with_limits(config.runtime)?).await {
        Ok(gateway) => gateway,
        Err(err) => return report(err),
    };
    // The bound addresses, which differ from the configured ones when those use port 0.
    let bound = |name: &str, configured: SocketAddr| {
        gateway
            .local_addrs()
            .into_iter()
            .find(|(listener, _)| listener == name)
            .map_or(configured, |(_, addr)| addr)
    };
    let (https, http) = (bound("https", https), bound("http", http));
    println!("{}", demo::instructions(&pki, https, http, &config_path));
    serve(gateway, &config_path, hangups, config.pid_file.as_deref()).await
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        disable_transparent_huge_pages();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, pid_file } => run(&config, pid_file).await,
            Command::Reload { config, pid_file } => reload(&config, pid_file).await,
            Command::Check { config } => check(&config).await,
            Command::Demo {
                plugins,
                dir,
                https,
                http,
            } => demo(&plugins, &dir, https, http).await,
            Command::Test { plugin, scenario } => {
                tollgate::testing::run_command(&plugin, &scenario).await
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("tollgate: {err:#}");
            ExitCode::from(2)
        }
    }
}
