//! Reload without dropping anything, through the `tollgate` binary: while oha keeps sending
//! keep-alive and new-connection traffic (plaintext and TLS), the config changes several times
//! (routes, a plugin's config, a plugin file's content, the server certificate, a listener added
//! and removed), by SIGHUP and by `tollgate reload`; no request fails and responses switch to the
//! new behaviour. A broken config (a junk or missing plugin file, a plugin that loops in
//! `configure`) changes nothing and is reported with file, line and field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tollgate_tests::binary::{Tollgate, echo_route_config, tollgate_binary};
use tollgate_tests::clients::{plain_get, s_client};
use tollgate_tests::echo_upstream;
use tollgate_tests::{TestPki, guests};

/// How oha reports the requests it cancels itself when its `-z` duration ends.
const OHA_CUTOFF: &str = "aborted due to deadline";

/// Generation `generation` of the config: route `/gen<generation>`, plugin `gen` stamping
/// `x-gen: <generation>`, the swapped plugin file, and with `extra` a third listener.
fn config(echo: SocketAddr, generation: u32, extra: bool, gen_path: &str) -> String {
    let extra = if extra {
        "[[listeners]]\nname = \"extra\"\naddress = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        r#"pid_file = "tollgate.pid"

[[listeners]]
name = "http"
address = "127.0.0.1:0"
keepalive_timeout = "{keepalive}s"

[[listeners]]
name = "https"
address = "127.0.0.1:0"
[[listeners.certificates]]
cert = "pki/server.pem"
key = "pki/server.key"

{extra}
[[services]]
name = "echo"
targets = ["{echo}"]

[[routes]]
name = "load"
paths = ["/load"]
service = "echo"

[[routes]]
name = "gen{generation}"
paths = ["/gen{generation}"]
service = "echo"

[[plugins]]
name = "gen"
path = "{gen_path}"
config = {{ actions = {{ header_filter = [{{ call = "set_response_header", name = "x-gen", value = "{generation}" }}] }} }}

[[plugins]]
name = "swapped"
path = "plugin.wasm"
config = {{ actions = {{}} }}
"#,
        keepalive = 60 + generation,
        gen_path = if gen_path.is_empty() {
            guests::SCRIPTED
        } else {
            gen_path
        },
    )
}

fn oha(url: &str, args: &[&str], seconds: u64) -> Child {
    let oha = std::env::var("OHA").ok().unwrap_or_else(|| {
        let installed =
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".local/oha/bin/oha");
        if installed.is_file() {
            installed.display().to_string()
        } else {
            "oha".to_owned()
        }
    });
    Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "-z"])
        .arg(format!("{seconds}s"))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oha runs (scripts/test installs it)")
}

/// Counts by key (a status, an error).
type Counts = Vec<(String, u64)>;

/// oha's total and counts by status and by error, its own cut-off at the deadline left out.
fn oha_result(child: Child) -> (u64, Counts, Counts) {
    let output = child.wait_with_output().expect("oha finished");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "oha's output is not JSON ({err}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let counts = |value: &Value| -> Counts {
        value
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(key, count)| (key.clone(), count.as_u64().unwrap_or(0)))
                    .filter(|(key, _)| key != OHA_CUTOFF)
                    .collect()
            })
            .unwrap_or_default()
    };
    let statuses = counts(&json["statusCodeDistribution"]);
    let total = statuses.iter().map(|(_, n)| n).sum();
    (total, statuses, counts(&json["errorDistribution"]))
}

/// Waits for the `count`-th line saying `what`.
fn wait_for_count(gateway: &Tollgate, what: &str, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let lines = gateway.stderr();
        if lines.iter().filter(|line| line.contains(what)).count() >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {count} lines with {what:?}; stderr:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address the listener `name` reported last.
fn listening(gateway: &Tollgate, name: &str) -> SocketAddr {
    let needle = format!("listener={name} ");
    gateway
        .stderr()
        .iter()
        .rev()
        .filter(|line| line.contains(" listening") && line.contains(&needle))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
                .and_then(|addr| addr.parse().ok())
        })
        .unwrap_or_else(|| panic!("no listening line for {name}"))
}

/// The certificate the TLS listener at `addr` serves, as PEM.
async fn served_certificate(addr: SocketAddr) -> String {
    let output = s_client(addr, &["-servername", "localhost"], b"").await;
    let text = output.all();
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from s_client:\n{text}"));
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .expect("PEM end")
        + start;
    text[start..end + "-----END CERTIFICATE-----".len()].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_drop_nothing_and_switch_behaviour() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path();
    std::fs::create_dir(path.join("pki")).expect("pki dir");
    TestPki::new().write(&path.join("pki")).expect("pki");
    std::fs::copy(guests::SCRIPTED, path.join("plugin.wasm")).expect("plugin copied");
    let gateway = tokio::task::block_in_place(|| Tollgate::run(path, &config(echo, 1, false, "")));
    let http = gateway.addr("http");
    let https = gateway.addr("https");
    assert_eq!(
        std::fs::read_to_string(path.join("tollgate.pid"))
            .expect("pid file")
            .trim(),
        gateway.pid().to_string()
    );

    let seconds = 40;
    let load = format!("http://{http}/load");
    let tls_load = format!("https://localhost:{}/load", https.port());
    let keep_alive = oha(&load, &["-c", "3"], seconds);
    let new_connections = oha(&load, &["-c", "2", "--disable-keepalive"], seconds);
    let new_handshakes = oha(
        &tls_load,
        &["-c", "2", "--disable-keepalive", "--insecure"],
        seconds,
    );
    let started = std::time::Instant::now();

    let get = async |addr: SocketAddr, path: &str| {
        plain_get(addr, "localhost", path)
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    };
    let reply = get(http, "/gen1").await;
    assert_eq!(
        reply.status,
        200,
        "GET /gen1 under load answered {}: {}\ngateway log:\n{}",
        reply.status,
        String::from_utf8_lossy(&reply.body),
        gateway.stderr().join("\n")
    );
    assert_eq!(reply.header("x-gen"), Some("1"));
    assert_eq!(
        reply.header("x-stamp"),
        None,
        "scripted is the swapped file"
    );

    let mut extra_addr = None;
    for generation in 2..=5u32 {
        // Even generations: the swapped file becomes header-stamp and the extra listener opens;
        // odd ones: back to scripted, the extra listener closes. Every time: a new route, a new
        // plugin config, a new server certificate.
        let even = generation % 2 == 0;
        let swapped = if even {
            guests::HEADER_STAMP
        } else {
            guests::SCRIPTED
        };
        std::fs::copy(swapped, path.join("plugin.wasm")).expect("plugin copied");
        let pki = TestPki::new().write(&path.join("pki")).expect("pki");
        std::fs::write(&gateway.config, config(echo, generation, even, ""))
            .expect("config written");
        if generation == 3 {
            let output = Command::new(tollgate_binary())
                .args(["reload", "--config"])
                .arg(&gateway.config)
                .output()
                .expect("tollgate reload runs");
            assert!(
                output.status.success(),
                "tollgate reload: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        } else {
            gateway.signal("HUP");
        }
        tokio::task::block_in_place(|| {
            wait_for_count(&gateway, " reloaded", generation as usize - 1);
        });

        let reply = get(http, &format!("/gen{generation}")).await;
        assert_eq!(reply.status, 200, "the new route serves");
        assert_eq!(reply.header("x-gen"), Some(generation.to_string().as_str()));
        assert_eq!(
            reply.header("x-stamp").is_some(),
            even,
            "the swapped plugin"
        );
        let old = get(http, &format!("/gen{}", generation - 1)).await;
        assert_eq!(old.status, 404, "the old route is gone");
        let certificate = served_certificate(https).await;
        assert_eq!(
            certificate.trim(),
            std::fs::read_to_string(&pki.server_cert)
                .expect("server cert")
                .trim(),
            "the renewed certificate is served"
        );
        if even {
            let addr = tokio::task::block_in_place(|| listening(&gateway, "extra"));
            assert_eq!(get(addr, "/load").await.status, 200, "the added listener");
            extra_addr = Some(addr);
        } else if let Some(addr) = extra_addr.take() {
            assert!(
                tokio::net::TcpStream::connect(addr).await.is_err(),
                "the removed listener is closed"
            );
        }
    }

    // A broken plugin file: the reload fails at the plugin's path, and nothing changes.
    std::fs::write(path.join("plugin.wasm"), b"not wasm").expect("junk written");
    let broken = config(echo, 6, false, "");
    std::fs::write(&gateway.config, &broken).expect("config written");
    gateway.signal("HUP");
    let line = broken
        .lines()
        .position(|line| line == "path = \"plugin.wasm\"")
        .expect("swapped plugin line")
        + 1;
    let expected = format!("{}:{line}:", gateway.config.display());
    tokio::task::block_in_place(|| {
        wait_for_count(&gateway, "reload failed, the running config stays", 1);
    });
    let failed = gateway
        .stderr()
        .into_iter()
        .find(|l| l.contains("reload failed"))
        .expect("failure line");
    assert!(
        failed.contains(&expected) && failed.contains("plugins[1].path"),
        "file, line and field: {failed} (wanted {expected} and plugins[1].path)"
    );
    // A missing plugin file: caught by the checker, also reported with its line.
    let missing = config(echo, 7, false, "missing.wasm");
    std::fs::write(&gateway.config, &missing).expect("config written");
    gateway.signal("HUP");
    tokio::task::block_in_place(|| {
        wait_for_count(&gateway, "reload failed, the running config stays", 2);
    });
    assert!(
        gateway
            .stderr()
            .iter()
            .any(|l| l.contains("reload failed") && l.contains("plugins[0].path")),
        "the missing file is reported"
    );
    // A plugin that loops in `configure`: the reload fails at its time limit, at full speed (no
    // request waits on a load), while the load goes on being served.
    std::fs::copy(guests::SCRIPTED, path.join("plugin.wasm")).expect("plugin copied");
    let stuck = format!(
        "{}\n[[plugins]]\nname = \"stuck\"\npath = \"{}\"\n\
         config = {{ phase = \"configure\", mode = \"loop\" }}\ntime_limit = \"100ms\"\n",
        config(echo, 8, false, ""),
        guests::MISBEHAVE
    );
    std::fs::write(&gateway.config, &stuck).expect("config written");
    gateway.signal("HUP");
    tokio::task::block_in_place(|| {
        wait_for_count(&gateway, "reload failed, the running config stays", 3);
    });
    assert!(
        gateway.stderr().iter().any(|l| l.contains("reload failed")
            && l.contains("plugins[2].time_limit")
            && l.contains("plugin stuck failed in configure: exceeded its time limit of 100ms")),
        "the looping configure is reported at its time limit:\n{}",
        gateway.stderr().join("\n")
    );
    let reply = get(http, "/gen5").await;
    assert_eq!(reply.status, 200, "generation 5 still serves");
    assert_eq!(reply.header("x-gen"), Some("5"));
    assert_eq!(get(http, "/gen6").await.status, 404);

    assert!(
        started.elapsed() < Duration::from_secs(seconds),
        "the reloads took longer than the load ({:?}); raise `seconds`",
        started.elapsed()
    );
    for (name, child) in [
        ("keep-alive", keep_alive),
        ("new connections", new_connections),
        ("new TLS handshakes", new_handshakes),
    ] {
        let (total, statuses, errors) = tokio::task::block_in_place(|| oha_result(child));
        assert!(total > 0, "{name}: no requests");
        assert!(
            errors.is_empty() && statuses.iter().all(|(status, _)| status == "200"),
            "{name}: {total} requests, statuses {statuses:?}, errors {errors:?}"
        );
        eprintln!("{name}: {total} requests, all 200");
    }

    let mut gateway = gateway;
    gateway.signal("TERM");
    assert!(
        tokio::task::block_in_place(|| gateway.wait(Duration::from_secs(30))).is_some(),
        "tollgate exits on SIGTERM"
    );
    assert!(
        !path.join("tollgate.pid").exists(),
        "the pid file is removed"
    );
}

/// `workers` is fixed for the life of the process, like `[runtime]`: a reload that changes it
/// says so at warn, applies the rest of the file (the new route answers) and keeps the
/// connection threads it started with.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_workers_warns_and_keeps_the_running_threads() {
    let echo = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        |workers: u32, path: &str| echo_route_config(&format!("workers = {workers}"), echo, path);
    let connection_threads = |gateway: &Tollgate| {
        let mut threads: Vec<_> = gateway
            .thread_names()
            .into_iter()
            .filter(|name| name.starts_with("conn-"))
            .collect();
        threads.sort();
        threads
    };
    let gateway = tokio::task::block_in_place(|| Tollgate::run(dir.path(), &config(1, "/before")));
    let http = gateway.addr("http");
    assert_eq!(
        plain_get(http, "localhost", "/before")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(connection_threads(&gateway), ["conn-0"]);

    std::fs::write(dir.path().join("tollgate.toml"), config(3, "/after")).unwrap();
    gateway.signal("HUP");
    assert!(
        tokio::task::block_in_place(|| gateway.wait_for_stderr(Duration::from_secs(30), |line| {
            line.contains("WARN") && line.contains("workers") && line.contains("next restart")
        })),
        "the change to workers is reported: {:?}",
        gateway.stderr()
    );
    assert!(
        tokio::task::block_in_place(
            || gateway.wait_for_stderr(Duration::from_secs(30), |line| line.contains(" reloaded"))
        ),
        "the rest of the file is applied: {:?}",
        gateway.stderr()
    );
    assert_eq!(
        plain_get(http, "localhost", "/after").await.unwrap().status,
        200
    );
    assert_eq!(
        plain_get(http, "localhost", "/before")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        connection_threads(&gateway),
        ["conn-0"],
        "the running threads stay until a restart"
    );
}
