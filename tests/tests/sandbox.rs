//! The sandbox's promises, through the `tollgate` binary started as a user starts it: a looping,
//! sleeping, memory-hungry, log-flooding or header-flooding plugin fails only its own calls,
//! within its limits, while other routes keep being served; a gateway out of instance slots
//! answers 503 at once; SIGTERM ends the process while a plugin loops.
//!
//! Nothing here keeps a runtime alive on the process's behalf: the gateway under test is a child
//! process, so a dead epoch ticker or a limit that only a test harness enforces shows up as a
//! hang or a wrong answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tollgate_tests::binary::Tollgate;
use tollgate_tests::clients::{Reply, plain_get};
use tollgate_tests::echo_upstream;
use tollgate_tests::guests;

/// A plain listener, the echo service, a healthy catch-all route and a `/bad` route guarded by
/// the misbehaving guest in `mode`, with `extra` lines for that plugin and `head` before it all.
fn config(echo: SocketAddr, head: &str, mode: &str, extra: &str) -> String {
    config_with(echo, head, &format!("mode = \"{mode}\""), extra)
}

/// [`config`] with the misbehaving guest's whole `config` table (`mode = "sleep", phase = "log"`).
fn config_with(echo: SocketAddr, head: &str, plugin_config: &str, extra: &str) -> String {
    format!(
        r#"{head}
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
name = "misbehave"
path = "{path}"
route = "bad"
config = {{ {plugin_config} }}
{extra}
"#,
        path = guests::MISBEHAVE
    )
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    plain_get(addr, "localhost", path)
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

/// Sends `count` GETs of `path` one after another and returns their statuses.
async fn serial(addr: SocketAddr, path: &'static str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(get(addr, path).await.status);
    }
    statuses
}

/// Sends `bad` requests to `/bad` at once, whose plugin `misbehaves` (loops, sleeps) under a
/// 100ms time limit, and `healthy` ones to `/` one after another meanwhile: each bad one is a 500,
/// ended by its deadline long before the client's own (10 s), each healthy one a 200, and the
/// timeout is logged at warn.
async fn time_limit_ends_bad_requests_while_others_serve(
    gateway: &Tollgate,
    misbehaves: &str,
    bad: usize,
    healthy: usize,
) {
    let addr = gateway.addr("http");
    let bad: Vec<_> = (0..bad)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = get(addr, "/bad").await;
                (reply.status, started.elapsed())
            })
        })
        .collect();
    let healthy = tokio::spawn(serial(addr, "/", healthy));
    let mut slowest = Duration::ZERO;
    for request in bad {
        let (status, took) = request.await.unwrap();
        assert_eq!(
            status, 500,
            "a plugin that {misbehaves}: its request is a 500"
        );
        slowest = slowest.max(took);
    }
    let statuses = healthy.await.unwrap();
    assert!(
        statuses.iter().all(|status| *status == 200),
        "the healthy route kept answering 200: {statuses:?}"
    );
    // A dead limit hangs until the client gives up.
    assert!(
        slowest < Duration::from_secs(5),
        "requests whose plugin {misbehaves} were ended by their 100ms limit (slowest took \
         {slowest:?})"
    );
    eprintln!(
        "slowest request whose plugin {misbehaves} answered in {slowest:?} (time_limit 100ms)"
    );
    assert!(
        gateway.wait_for_stderr(Duration::from_secs(5), timeout_warning),
        "the timeout was logged at warn"
    );
}

fn timeout_warning(line: &str) -> bool {
    line.contains("WARN") && line.contains("exceeded its time limit")
}

/// The log phase runs once the client has its response: a log plugin that sleeps until its
/// deadline holds no response back (each would take 3.5 s otherwise), and its time limit still
/// ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_plugin_that_sleeps_does_not_hold_back_its_response() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(
        dir.path(),
        &config_with(
            echo,
            "",
            r#"mode = "sleep", phase = "log""#,
            "time_limit = \"3s\"",
        ),
    );
    let addr = gateway.addr("http");
    for _ in 0..3 {
        let started = Instant::now();
        let reply = get(addr, "/bad").await;
        let took = started.elapsed();
        assert_eq!(
            reply.status, 200,
            "the log phase cannot change the response"
        );
        assert!(
            took < Duration::from_secs(3),
            "answered before its log plugin's 3 s limit, not after it: {took:?}"
        );
    }
    assert!(
        gateway.wait_for_stderr(Duration::from_secs(10), timeout_warning),
        "the log plugin's time limit ended it, logged at warn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_looping_plugin_fails_each_of_its_requests_at_its_time_limit_while_other_routes_serve() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(
        dir.path(),
        &config(echo, "", "loop", "time_limit = \"100ms\""),
    );
    // Idle long enough for the epoch ticker to park (100 ticks without a call): the looping
    // calls must wake it, or nothing would end them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // More looping requests at once than the runtime has worker threads: before plugin calls
    // yielded at each epoch tick, these alone would hold every worker.
    time_limit_ends_bad_requests_while_others_serve(&gateway, "loops", 6, 50).await;
    let warnings = gateway
        .stderr()
        .into_iter()
        .filter(|line| timeout_warning(line))
        .count();
    assert!(
        warnings <= 5,
        "timeouts are rate-limited per plugin and kind: {warnings} warnings for 6 failures"
    );
}

/// With one connection thread (`workers = 1`) every connection shares it with the looping calls:
/// they yield at each epoch tick and queue for the slow lane, so the other connections on the
/// thread are still served, and the limit still ends each looping call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_looping_plugin_on_the_only_connection_thread_leaves_the_others_served() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(
        dir.path(),
        &config(echo, "workers = 1", "loop", "time_limit = \"100ms\""),
    );
    let threads = gateway.thread_names();
    let connection_threads: Vec<_> = threads.iter().filter(|t| t.starts_with("conn-")).collect();
    assert_eq!(
        connection_threads,
        ["conn-0"],
        "workers = 1 starts one connection thread: {threads:?}"
    );
    time_limit_ends_bad_requests_while_others_serve(&gateway, "loops", 4, 30).await;
}

/// A sleep uses no CPU and waits in the host, where no epoch tick reaches it: only a wall-clock
/// deadline on the call itself ends it (at its time limit plus the 500 ms wait grace), and gives
/// its instance slot back: with 2 slots, request after request still reaches the plugin (a 500,
/// not the 503 of a gateway out of slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_sleeping_in_a_wasi_call_fails_its_request_at_its_time_limit_and_the_wait_grace() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(
        dir.path(),
        &config(
            echo,
            "[runtime]\nmax_instances = 2\n",
            "sleep",
            "time_limit = \"100ms\"",
        ),
    );
    time_limit_ends_bad_requests_while_others_serve(&gateway, "sleeps an hour", 2, 20).await;
    for _ in 0..4 {
        assert_eq!(
            get(gateway.addr("http"), "/bad").await.status,
            500,
            "the sleeping calls gave their slots back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_the_drain_time_while_a_plugin_loops() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Tollgate::run(dir.path(), &config(echo, "", "loop", "time_limit = \"3s\""));
    let addr = gateway.addr("http");
    let in_flight = tokio::spawn(async move { get(addr, "/bad").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("TERM");
    let (status, gateway) = tokio::task::spawn_blocking(move || {
        let status = gateway.wait(Duration::from_secs(30));
        (status, gateway)
    })
    .await
    .unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "tollgate did not exit after SIGTERM; stderr:\n{}",
            gateway.stderr().join("\n")
        )
    });
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(
        in_flight.await.unwrap(),
        500,
        "the in-flight request was answered (its plugin timed out) before exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_hogs_are_stopped_and_the_process_stays_under_the_plugin_memory_budget() {
    const BUDGET: u64 = 192 << 20;
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(
        dir.path(),
        &config(
            echo,
            "[runtime]\nmemory_budget = \"192MiB\"\n",
            "grow",
            // Time enough to reach the cap in the slow lane, which long calls share.
            "memory_limit = \"64MiB\"\ntime_limit = \"20s\"",
        ),
    );
    let addr = gateway.addr("http");
    // Anonymous memory: what plugins can make the process hold. (The binary's code pages in as
    // new paths run, a megabyte or two, whatever plugins do.)
    let baseline = gateway.anon_rss_bytes();
    let hogs: Vec<_> = (0..4)
        .map(|_| tokio::spawn(serial(addr, "/bad", 2)))
        .collect();
    let mut peak = 0;
    let mut peak_total = 0;
    let sampling = async {
        loop {
            peak = peak.max(gateway.anon_rss_bytes());
            peak_total = peak_total.max(gateway.rss_bytes());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let finished = async {
        let mut statuses = Vec::new();
        for hog in hogs {
            statuses.extend(hog.await.unwrap());
        }
        statuses
    };
    let statuses = tokio::select! {
        statuses = finished => statuses,
        _ = sampling => unreachable!(),
    };
    for status in &statuses {
        assert!(
            *status == 500 || *status == 503,
            "a memory hog's request fails with 500 (its cap) or 503 (the budget): {statuses:?}"
        );
    }
    assert_eq!(get(addr, "/").await.status, 200, "the gateway still serves");
    eprintln!(
        "anonymous RSS: {} KiB at start, {} KiB at peak (all of RSS {} KiB at peak), plugin \
         memory budget {} KiB",
        baseline >> 10,
        peak >> 10,
        peak_total >> 10,
        BUDGET >> 10
    );
    // The budget bounds what plugins hold, and the hogs fill it; the host's own state for the
    // requests in flight (stores, the pages of fiber stacks their calls touched, log lines) comes
    // on top, well under HOST_ALLOWANCE.
    const HOST_ALLOWANCE: u64 = 4 << 20;
    assert!(
        peak.saturating_sub(baseline) < BUDGET + HOST_ALLOWANCE,
        "plugin memory stayed under the budget: peak anonymous RSS {peak} bytes, {baseline} at \
         start"
    );
    assert!(
        gateway.wait_for_stderr(Duration::from_secs(5), |line| line
            .contains("exceeded its memory limit")),
        "the cap was named in a warning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_flooding_its_output_is_capped_per_call_and_cannot_forge_log_lines() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(
        dir.path(),
        &config(echo, "", "flood", "time_limit = \"30s\""),
    );
    let addr = gateway.addr("http");
    let before = gateway.stderr().len();
    for _ in 0..3 {
        assert_eq!(get(addr, "/bad").await.status, 200);
    }
    assert_eq!(get(addr, "/").await.status, 200);
    // The process writes asynchronously: wait for the report of the last flood call.
    let dropped = |line: &str| line.contains("WARN") && line.contains("bytes were dropped");
    assert!(
        gateway.wait_for_stderr(Duration::from_secs(5), dropped),
        "the dropped output was reported"
    );
    let lines = gateway.stderr();
    let written: Vec<&String> = lines[before..].iter().collect();
    let bytes: usize = written.iter().map(|line| line.len() + 1).sum();
    eprintln!(
        "3 requests of 10,000 flood lines each left {} log lines ({bytes} bytes)",
        written.len()
    );
    assert!(
        bytes < 3 * 64 * 1024,
        "the plugin's output was capped per call: {bytes} bytes of log for 3 calls"
    );
    assert!(
        !written
            .iter()
            .any(|line| line.starts_with("2026-01-01T00:00:00Z")),
        "no forged log line"
    );
    assert!(
        written.iter().any(|line| line.contains("flood 0\\n")),
        "the first lines were kept, newlines escaped"
    );
    assert!(
        written
            .iter()
            .any(|line| line.contains("WARN") && line.contains("bytes were dropped")),
        "the dropped output was reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_setting_thirty_thousand_headers_is_refused_and_nothing_panics() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(
        dir.path(),
        &config(echo, "", "headers", "time_limit = \"5s\""),
    );
    let addr = gateway.addr("http");
    let reply = get(addr, "/bad").await;
    assert_eq!(reply.status, 200);
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(
        body.starts_with("refused at header") && body.contains("too many headers"),
        "the host answered invalid-argument past its bound: {body}"
    );
    assert_eq!(get(addr, "/").await.status, 200, "the gateway still serves");
    assert!(
        !gateway
            .stderr()
            .iter()
            .any(|line| line.contains("panicked")),
        "no worker panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_instance_slots_a_request_gets_503_with_retry_after_and_fail_open_is_not_skipped() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // Two slots: two looping requests hold both for up to 2 s each.
    let extra = format!(
        "time_limit = \"2s\"\n\n[[plugins]]\nname = \"tagger\"\npath = \"{}\"\nroute = \"healthy\"\n\
         fail_open = true\nconfig = {{ actions = {{ access = [{{ call = \"set_request_header\", \
         name = \"x-tagged\", value = \"yes\" }}] }} }}\n",
        guests::SCRIPTED
    );
    let gateway = Tollgate::run(
        dir.path(),
        &config(echo, "[runtime]\nmax_instances = 2\n", "loop", &extra),
    );
    let addr = gateway.addr("http");
    let looping: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/bad").await.status }))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = get(addr, "/").await;
    assert_eq!(
        refused.status, 503,
        "no slot left: 503, not a skipped plugin"
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    for request in looping {
        assert_eq!(request.await.unwrap(), 500);
    }
    let served = get(addr, "/").await;
    assert_eq!(served.status, 200);
    assert_eq!(
        served.upstream_header("x-tagged").as_deref(),
        Some("yes"),
        "with slots free again the fail-open plugin ran"
    );
}

/// Sends `count` GETs of `path`, `parallel` at a time, and returns every reply's status and body.
async fn replies(
    addr: SocketAddr,
    path: &'static str,
    count: usize,
    parallel: usize,
) -> Vec<String> {
    let mut seen = Vec::with_capacity(count);
    for _ in 0..count.div_ceil(parallel) {
        let batch: Vec<_> = (0..parallel)
            .map(|_| tokio::spawn(async move { get(addr, path).await }))
            .collect();
        for reply in batch {
            let reply = reply.await.unwrap();
            seen.push(format!(
                "{} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_never_reads_what_an_earlier_request_wrote_into_plugin_memory() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // The same guest twice: once snapshotted after configure, once (it prints at configure, so
    // a WASI stream stays open) configuring every instance. Each request checks its memory is
    // the initial image, then overwrites 320 KiB of it.
    let extra = format!(
        "\n[[routes]]\nname = \"unsnapshotted\"\npaths = [\"/fallback\"]\nservice = \"echo\"\n\n\
         [[plugins]]\nname = \"scribble-fallback\"\npath = \"{}\"\nroute = \"unsnapshotted\"\n\
         config = {{ mode = \"scribble\", stdout_at_configure = true }}\n",
        guests::MISBEHAVE
    );
    let gateway = Tollgate::run(dir.path(), &config(echo, "", "scribble", &extra));
    let addr = gateway.addr("http");
    for path in ["/bad", "/fallback"] {
        for seen in replies(addr, path, 200, 4).await {
            assert_eq!(
                seen, "200 initial image",
                "{path}: a fresh instance saw {seen}"
            );
        }
    }
    let fallback = |line: &str| line.contains("no configured snapshot");
    let lines = gateway.stderr();
    let warned: Vec<&String> = lines.iter().filter(|line| fallback(line)).collect();
    assert_eq!(
        warned.len(),
        1,
        "one fallback, logged once at load: {warned:?}"
    );
    assert!(
        warned[0].contains("scribble-fallback") && warned[0].contains("WASI resources"),
        "the log names the plugin and why: {}",
        warned[0]
    );
}

/// The serving process runs with transparent huge pages off: with them, the pages mimalloc gives
/// back were collapsed into huge pages again and RSS drifted by up to 20% a minute (the soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_with_transparent_huge_pages_off() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(dir.path(), &config(echo, "", "loop", ""));
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    // Kernels before 5.0 do not show it; every kernel this runs on in CI does.
    assert_eq!(thp, Some("0"), "THP_enabled in /proc/<pid>/status");
}

/// The epoch ticker sleeps while no plugin call is in flight: an idle gateway wakes it about once
/// a second (to see whether its engine is gone), not a thousand times, nor a hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_leaves_the_epoch_ticker_parked() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Tollgate::run(dir.path(), &config(echo, "", "ok", ""));
    // A plugin call wakes the ticker; then the gateway is left idle.
    assert_eq!(get(gateway.addr("http"), "/bad").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = gateway.voluntary_switches_of_thread("tollgate-epoch");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let wake_ups = gateway.voluntary_switches_of_thread("tollgate-epoch") - before;
    assert!(
        wake_ups <= 6,
        "{wake_ups} wake-ups of the idle ticker in 3 s (ticking would be 3,000)"
    );
}

/// A plugin that imports from WASI only what Rust's panic path needs is componentized with the
/// gateway's small WASI adapter: what it prints still reaches the log as its stdout and stderr,
/// and a panic's message too, next to the 500 of its failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_on_the_small_wasi_adapter_still_writes_to_the_log_and_says_why_it_panicked() {
    let module = std::fs::read(guests::HEADER_STAMP).unwrap();
    assert!(
        tollgate::runtime::gets_small_adapter(&module),
        "header-stamp must import no more of WASI than the small adapter provides"
    );
    let misbehave = std::fs::read(guests::MISBEHAVE).unwrap();
    assert!(
        !tollgate::runtime::gets_small_adapter(&misbehave),
        "misbehave sleeps (poll_oneoff): the standard adapter"
    );
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // The sandbox config (its `/bad` route's plugin does nothing), and two routes of this test.
    let config = format!(
        r#"{}
[[routes]]
name = "say"
paths = ["/say"]
service = "echo"

[[routes]]
name = "panic"
paths = ["/panic"]
service = "echo"

[[plugins]]
name = "sayer"
path = "{stamp}"
route = "say"
config = {{ say = "hello from the small adapter" }}

[[plugins]]
name = "panicker"
path = "{stamp}"
route = "panic"
config = {{ panic = true }}
"#,
        config(echo, "", "ok", ""),
        stamp = guests::HEADER_STAMP
    );
    let gateway = Tollgate::run(dir.path(), &config);
    let addr = gateway.addr("http");
    let said = get(addr, "/say").await;
    assert_eq!(said.status, 200);
    assert_eq!(said.header("x-stamp"), Some("1"));
    // Rust's stderr is unbuffered: `eprintln!` writes its pieces one by one, and each write
    // ends a log line (as with the standard adapter), so the text is a line of its own there.
    for stream in ["stdout", "stderr"] {
        assert!(
            gateway.wait_for_stderr(Duration::from_secs(5), |line| {
                line.contains("hello from the small adapter")
                    && line.contains("plugin=sayer")
                    && line.contains(&format!("stream=\"{stream}\""))
            }),
            "the plugin's {stream} reached the log:\n{}",
            gateway.stderr().join("\n")
        );
    }
    assert_eq!(get(addr, "/panic").await.status, 500);
    assert!(
        gateway.wait_for_stderr(Duration::from_secs(5), |line| {
            line.contains("header-stamp panics on purpose") && line.contains("plugin=panicker")
        }),
        "the panic message reached the log:\n{}",
        gateway.stderr().join("\n")
    );
}
