//! `soak`: a mixed load against the `tollgate` binary for some minutes, reporting per minute the
//! throughput, the answers by status and the errors by kind of each kind of traffic, and the
//! gateway's RSS. Run by `scripts/soak [MINUTES]` (default 10), which builds what it needs.
//!
//! Traffic, all over HTTPS with a client certificate chain (leaf + intermediate), from `oha`:
//! - `keepalive`: 8 keep-alive connections to `/`, through tls-handshake-modifier (certificate
//!   phase) and tls-metadata-headers;
//! - `handshakes`: 2 connections without keep-alive (a full handshake per request) to `/secure`,
//!   guarded by mtls-auth;
//! - `misbehaving`: 5 requests/s to `/bad`, whose plugin loops until its 20 ms limit (500s are
//!   the expected answer there);
//! - `hog`: 5 requests/s to `/hog`, whose plugin grows its memory until its 16 MiB cap.
//!
//! Exits 1 when a healthy route (keepalive, handshakes) saw any error or non-200 answer, or the
//! RSS grew by more than 5% from the end of the first (warm-up) minute to the end. The RSS that
//! counts is read at rest, a second after each minute's load stopped: the memory of the calls
//! still in flight (the hog's instance alone holds up to 16 MiB) is bounded by the plugins'
//! limits and comes and goes with them, so read under load it moves by 15% from one reading to
//! the next and hides any growth. Each minute's RSS halfway through its load is printed too.
//!
//! `soak isolation [RUNS]` measures instead what a looping plugin costs the other routes: the
//! healthy route's keep-alive throughput alone, then while 8 connections hit the looping route
//! (time limit 100 ms), alternating, RUNS (default 3) times 10 s each; it prints each figure,
//! the medians, their ratio, and the looping requests' status counts and slowest answer.
//!
//! `soak metrics [RUNS]` measures what metrics cost the request path: no-plugin keep-alive
//! throughput (8 connections, plaintext) of a gateway without `[admin]` (metrics off) and of one
//! with it (on), alternating, RUNS (default 5) times 10 s each; it prints each figure and the
//! medians.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tollgate_tests::binary::{Tollgate, tollgate_binary};
use tollgate_tests::{PkiFiles, TestPki, guests};

/// One kind of traffic: name, path, oha arguments.
struct Traffic {
    name: &'static str,
    path: &'static str,
    args: &'static [&'static str],
    healthy: bool,
}

const TRAFFIC: [Traffic; 4] = [
    Traffic {
        name: "keepalive",
        path: "/",
        args: &["-c", "8"],
        healthy: true,
    },
    Traffic {
        name: "handshakes",
        path: "/secure",
        args: &["-c", "2", "--disable-keepalive"],
        healthy: true,
    },
    Traffic {
        name: "misbehaving",
        path: "/bad",
        args: &["-c", "1", "-q", "5"],
        healthy: false,
    },
    Traffic {
        name: "hog",
        path: "/hog",
        args: &["-c", "1", "-q", "5"],
        healthy: false,
    },
];

fn config(pki: &PkiFiles, echo: std::net::SocketAddr) -> String {
    format!(
        r#"
[access_log]
target = "access.log"

[[listeners]]
name = "https"
address = "127.0.0.1:0"
[[listeners.certificates]]
cert = "{server_cert}"
key = "{server_key}"

[[services]]
name = "echo"
targets = ["{echo}"]

[[routes]]
name = "open"
paths = ["/"]
service = "echo"

[[routes]]
name = "secure"
paths = ["/secure"]
service = "echo"

[[routes]]
name = "bad"
paths = ["/bad"]
service = "echo"

[[routes]]
name = "hog"
paths = ["/hog"]
service = "echo"

[[plugins]]
name = "tls-handshake-modifier"
path = "{handshake}"

[[plugins]]
name = "tls-metadata-headers"
path = "{metadata}"
route = "open"

[[plugins]]
name = "mtls-auth"
path = "{mtls}"
route = "secure"
[plugins.config]
skip_consumer_lookup = true
ca_certificates = """
{ca_bundle}"""

[[plugins]]
name = "misbehave"
path = "{misbehave}"
route = "bad"
time_limit = "20ms"
config = {{ mode = "loop" }}

[[plugins]]
name = "hog"
path = "{misbehave}"
route = "hog"
memory_limit = "16MiB"
config = {{ mode = "grow" }}
"#,
        server_cert = pki.server_cert.display(),
        server_key = pki.server_key.display(),
        handshake = guests::TLS_HANDSHAKE_MODIFIER,
        metadata = guests::TLS_METADATA_HEADERS,
        mtls = guests::MTLS_AUTH,
        misbehave = guests::MISBEHAVE,
        ca_bundle = std::fs::read_to_string(&pki.ca_bundle).expect("CA bundle"),
    )
}

/// How oha reports the requests it cancels itself when its `-z` duration ends.
const OHA_CUTOFF: &str = "aborted due to deadline";

/// What one oha run reported.
#[derive(Debug, Default)]
struct Run {
    rps: f64,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

fn oha(pki: &PkiFiles, port: u16, traffic: &Traffic, seconds: u64) -> std::process::Child {
    let oha = std::env::var("OHA").unwrap_or_else(|_| "oha".to_owned());
    Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "-z"])
        .arg(format!("{seconds}s"))
        .args(traffic.args)
        .arg("--cacert")
        .arg(&pki.root)
        .arg("--cert")
        .arg(&pki.client_chain)
        .arg("--key")
        .arg(&pki.client_key)
        .arg(format!("https://localhost:{port}{}", traffic.path))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oha runs (scripts/soak installs it)")
}

fn parse(output: std::process::Output) -> Run {
    let json: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "oha's output is not JSON ({err}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let counts = |value: &Value| -> BTreeMap<String, u64> {
        value
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(key, count)| (key.clone(), count.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    Run {
        rps: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        statuses: counts(&json["statusCodeDistribution"]),
        errors: counts(&json["errorDistribution"]),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("isolation") {
        let runs = args
            .next()
            .map_or(3, |n| n.parse().expect("runs: a whole number"));
        return isolation(runs);
    }
    if first.as_deref() == Some("metrics") {
        let runs = args
            .next()
            .map_or(5, |n| n.parse().expect("runs: a whole number"));
        return metrics_overhead(runs);
    }
    let minutes: u64 = first
        .map(|m| m.parse().expect("minutes: a whole number"))
        .unwrap_or(10);
    let (runtime, echo) = start_echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new().write(dir.path()).expect("PKI written");
    println!("tollgate: {}", tollgate_binary().display());
    // Debug for the store: it says which calls ran long enough for the slow lane.
    let gateway = Tollgate::run_with(
        dir.path(),
        &config(&pki, echo),
        &[("RUST_LOG", "info,tollgate::runtime::store=debug")],
    );
    let started = std::time::SystemTime::now();
    let port = gateway.addr("https").port();
    println!(
        "soak: {minutes} minute(s) against port {port}; RSS at start {} MiB",
        gateway.rss_bytes() >> 20
    );
    println!(
        "{:>6} {:>8} {:>8} | {}",
        "minute",
        "RSS MiB",
        "in load",
        TRAFFIC
            .iter()
            .map(|t| format!("{:>24}", format!("{} req/s", t.name)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut failures = Vec::new();
    let mut rss_after_warmup = 0;
    let mut last_rss = 0;
    for minute in 1..=minutes {
        let children: Vec<_> = TRAFFIC
            .iter()
            .map(|traffic| oha(&pki, port, traffic, 60))
            .collect();
        std::thread::sleep(Duration::from_secs(30));
        let loaded_rss = gateway.rss_bytes();
        let runs: Vec<Run> = children
            .into_iter()
            .map(|child| parse(child.wait_with_output().expect("oha finished")))
            .collect();
        // At rest: every call in flight when the load stopped has ended (time limits ≤ 100 ms).
        std::thread::sleep(Duration::from_secs(1));
        last_rss = gateway.rss_bytes();
        if minute == 1 {
            rss_after_warmup = last_rss;
        }
        println!(
            "{minute:>6} {:>8} {:>8} | {}",
            last_rss >> 20,
            loaded_rss >> 20,
            runs.iter()
                .map(|run| format!("{:>24.0}", run.rps))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (traffic, run) in TRAFFIC.iter().zip(&runs) {
            println!(
                "         {:<12} statuses {:?} errors {:?}",
                traffic.name, run.statuses, run.errors
            );
            let bad_statuses: u64 = run
                .statuses
                .iter()
                .filter(|(status, _)| status.as_str() != "200")
                .map(|(_, count)| count)
                .sum();
            // oha cancels the requests in flight when its duration ends: not the gateway's.
            let errors: u64 = run
                .errors
                .iter()
                .filter(|(kind, _)| kind.as_str() != OHA_CUTOFF)
                .map(|(_, count)| count)
                .sum();
            if traffic.healthy && (bad_statuses > 0 || errors > 0) {
                failures.push(format!(
                    "minute {minute}: {} saw {bad_statuses} non-200 answers and {errors} errors",
                    traffic.name
                ));
            }
        }
    }
    let growth = if rss_after_warmup > 0 {
        (last_rss as f64 - rss_after_warmup as f64) / rss_after_warmup as f64 * 100.0
    } else {
        0.0
    };
    println!(
        "RSS after warm-up {} MiB, at the end {} MiB: {growth:+.1}%",
        rss_after_warmup >> 20,
        last_rss >> 20
    );
    if minutes > 1 && growth > 5.0 {
        failures.push(format!("RSS grew {growth:.1}% after warm-up (limit 5%)"));
    }
    // What the gateway warned about, by plugin and kind (its warnings are rate-limited, so
    // these count distinct bursts, not requests).
    let mut warnings: BTreeMap<String, u64> = BTreeMap::new();
    for line in gateway.stderr() {
        if line.contains(" WARN ") {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(key))
                    .unwrap_or("-")
                    .to_owned()
            };
            *warnings
                .entry(format!(
                    "plugin={} kind={}",
                    field("plugin="),
                    field("kind=")
                ))
                .or_default() += 1;
        }
    }
    println!("gateway warnings (rate-limited) by plugin and kind: {warnings:?}");
    // Calls found long-running (the slow lane's), by plugin; the healthy plugins' ones in full.
    let mut long_calls: BTreeMap<String, u64> = BTreeMap::new();
    let mut healthy_long = Vec::new();
    for line in gateway.stderr() {
        if !line.contains("long-running plugin call") {
            continue;
        }
        let plugin = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("plugin="))
            .unwrap_or("-")
            .to_owned();
        if !matches!(plugin.as_str(), "misbehave" | "hog") && healthy_long.len() < 20 {
            healthy_long.push(line.clone());
        }
        *long_calls.entry(plugin).or_default() += 1;
    }
    println!("calls found long-running (slow lane) by plugin: {long_calls:?}");
    for line in &healthy_long {
        println!("  {line}");
    }
    // Why healthy routes answered anything but 200, from the access log's plugin_errors.
    let text = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    // Each cause's count, and when its first few happened (seconds into the soak).
    let mut causes: BTreeMap<String, (u64, Vec<u64>)> = BTreeMap::new();
    let started_ms = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let route = entry["route"]["name"].as_str().unwrap_or("-");
        if !matches!(route, "open" | "secure") || entry["response"]["status"] == 200 {
            continue;
        }
        let errors = entry["plugin_errors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let cause = errors
            .iter()
            .map(|err| format!("{} in {}: {}", err["plugin"], err["phase"], err["message"]))
            .collect::<Vec<_>>()
            .join("; ");
        let (count, times) = causes
            .entry(format!("{route} {}: {cause}", entry["response"]["status"]))
            .or_default();
        *count += 1;
        if times.len() < 10 {
            let at = entry["started_at"].as_u64().unwrap_or(0);
            times.push(at.saturating_sub(started_ms) / 1000);
        }
    }
    println!(
        "access log: {lines} lines; healthy routes' non-200 answers by cause (count, first \
         seconds into the soak): {causes:?}"
    );
    // `exit` skips destructors: stop the gateway first.
    drop(gateway);
    if failures.is_empty() {
        println!("soak: ok");
    } else {
        for failure in &failures {
            println!("soak: FAILED: {failure}");
        }
        std::process::exit(1);
    }
    drop(runtime);
}

/// The echo upstream on a runtime of its own, for as long as the returned runtime lives.
fn start_echo() -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let echo = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(tollgate::proxy::echo::serve_echo(
            listener,
            std::future::pending(),
        ));
        addr
    });
    (runtime, echo)
}

fn plain_oha(url: &str, args: &[&str], seconds: u64) -> std::process::Child {
    let oha = std::env::var("OHA").unwrap_or_else(|_| "oha".to_owned());
    Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "-z"])
        .arg(format!("{seconds}s"))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oha runs (scripts/soak installs it)")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Healthy-route throughput alone and beside a looping plugin, alternating.
fn isolation(runs: usize) {
    let (_runtime, echo) = start_echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        r#"
[access_log]
target = "access.log"

[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[services]]
name = "echo"
targets = ["{echo}"]

[[routes]]
name = "healthy"
paths = ["/"]
service = "echo"

[[routes]]
name = "bad"
paths = ["/bad"]
service = "echo"

[[plugins]]
name = "looping"
path = "{misbehave}"
route = "bad"
time_limit = "100ms"
config = {{ mode = "loop" }}
"#,
        misbehave = guests::MISBEHAVE
    );
    let gateway = Tollgate::run(dir.path(), &config);
    let base = format!("http://127.0.0.1:{}", gateway.addr("http").port());
    let healthy_url = format!("{base}/");
    let bad_url = format!("{base}/bad");
    let (mut solo, mut beside) = (Vec::new(), Vec::new());
    let mut slowest_loop: f64 = 0.0;
    // Each run's 99th and 99.9th percentile of the looping route's answer times.
    let mut loop_tails = Vec::new();
    let mut loop_statuses: BTreeMap<String, u64> = BTreeMap::new();
    for run in 1..=runs {
        let alone = parse(
            plain_oha(&healthy_url, &["-c", "8"], 10)
                .wait_with_output()
                .expect("oha"),
        );
        let looping = plain_oha(&bad_url, &["-c", "8"], 10);
        let with = parse(
            plain_oha(&healthy_url, &["-c", "8"], 10)
                .wait_with_output()
                .expect("oha"),
        );
        let looping = looping.wait_with_output().expect("oha");
        let json: Value = serde_json::from_slice(&looping.stdout).unwrap_or_default();
        slowest_loop = slowest_loop.max(json["summary"]["slowest"].as_f64().unwrap_or(0.0));
        let percentile = |p: &str| json["latencyPercentiles"][p].as_f64().unwrap_or(0.0) * 1000.0;
        loop_tails.push(format!(
            "{:.0}/{:.0}",
            percentile("p99"),
            percentile("p99.9")
        ));
        for (status, count) in parse(looping).statuses {
            *loop_statuses.entry(status).or_default() += count;
        }
        println!(
            "run {run}: healthy alone {:.0} req/s (statuses {:?}), beside the looping route \
             {:.0} req/s (statuses {:?})",
            alone.rps, alone.statuses, with.rps, with.statuses
        );
        solo.push(alone.rps);
        beside.push(with.rps);
    }
    let (solo, beside) = (median(&mut solo), median(&mut beside));
    println!(
        "median healthy throughput: alone {solo:.0} req/s, beside the looping route \
         {beside:.0} req/s, ratio {:.2}",
        beside / solo
    );
    println!(
        "looping route: statuses {loop_statuses:?}, slowest answer {:.0} ms (time_limit 100 ms); \
         p99/p99.9 per run (ms): {}",
        slowest_loop * 1000.0,
        loop_tails.join(", ")
    );
}

/// No-plugin keep-alive throughput with metrics off (no `[admin]`) and on, alternating runs of
/// 10 s against two gateways started from the same config, then the medians.
fn metrics_overhead(runs: usize) {
    let (_runtime, echo) = start_echo();
    let config = |admin: &str| {
        format!(
            r#"{admin}
[access_log]
target = "access.log"

[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[services]]
name = "echo"
targets = ["{echo}"]

[[routes]]
name = "plain"
paths = ["/"]
service = "echo"
"#
        )
    };
    let (off_dir, on_dir) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let off = Tollgate::run(off_dir.path(), &config(""));
    let on = Tollgate::run(
        on_dir.path(),
        &config("[admin]\naddress = \"127.0.0.1:0\"\n"),
    );
    let url = |gateway: &Tollgate| format!("http://127.0.0.1:{}/", gateway.addr("http").port());
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        // Only one gateway is under load at a time; the order alternates.
        let measure = |gateway: &Tollgate| {
            parse(
                plain_oha(&url(gateway), &["-c", "8"], 10)
                    .wait_with_output()
                    .expect("oha"),
            )
        };
        let (a, b) = if run % 2 == 1 {
            let a = measure(&off);
            (a, measure(&on))
        } else {
            let b = measure(&on);
            (measure(&off), b)
        };
        println!(
            "run {run}: metrics off {:.0} req/s {:?}, on {:.0} req/s {:?}",
            a.rps, a.statuses, b.rps, b.statuses
        );
        without.push(a.rps);
        with.push(b.rps);
    }
    let (without, with) = (median(&mut without), median(&mut with));
    println!(
        "median no-plugin keep-alive throughput: metrics off {without:.0} req/s, on {with:.0} \
         req/s, ratio {:.3}",
        with / without
    );
}
