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

/// A TLS-terminating HTTP gateway extended by sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
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

async fn serve(mut gateway: Gateway) -> anyhow::Result<bool> {
    gateway.raise_open_file_limit();
    for (name, addr) in gateway.local_addrs() {
        tracing::info!(listener = %name, %addr, "listening");
    }
    let shutdown = CancellationToken::new();
    gateway::cancel_on_signal(shutdown.clone());
    gateway.serve(shutdown).await;
    Ok(true)
}

async fn run(path: &Path) -> anyhow::Result<bool> {
    let Some(config) = load_config(path).await? else {
        return Ok(false);
    };
    let gateway = match Gateway::build(&config, &Runtime::with_limits(config.runtime)?).await {
        Ok(gateway) => gateway,
        Err(err) => return report(err),
    };
    serve(gateway).await
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
    serve(gateway).await
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tollgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(&config).await,
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
