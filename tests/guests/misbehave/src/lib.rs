//! Test guest: a plugin that misbehaves on purpose, to test the sandbox's limits.
//!
//! Configuration: `{"phase": "access", "mode": "loop" | "sleep" | "work" | "grow" | "trap" |
//! "scribble" | "ok", "iterations": 0, "when_header": "x-misbehave", "stdout_at_configure": false}`
//!
//! - `loop` spins forever (the call deadline must stop it);
//! - `sleep` sleeps an hour in a WASI call, using no CPU (the call deadline must stop it too,
//!   although no epoch tick reaches a call waiting in the host);
//! - `work` counts to `iterations` and returns: a healthy call that takes a few milliseconds;
//! - `grow` allocates and touches 1 MiB after 1 MiB without end (the memory cap must stop it);
//! - `trap` panics, which in wasm ends in an `unreachable` trap;
//! - `flood` writes 5,000 log lines, each with embedded newlines that try to forge host log
//!   lines, through the log API and to stderr (the per-call output cap must hold it);
//! - `headers` sets 30,000 distinct request headers (the host must refuse past its bound, not
//!   panic), then answers 200 with the host's refusal message as the body;
//! - `scribble` checks that its memory is the image it started from (a 64 KiB static still
//!   zero, a 256 KiB heap buffer still holding the pattern `configure` wrote), then overwrites
//!   both: it answers 200 `initial image` when they were, 409 naming what it saw otherwise, so a
//!   request that could read an earlier one's memory says so;
//! - `ok` does nothing.
//!
//! With `"stdout_at_configure": true`, `configure` prints a line to stdout, which leaves a WASI
//! stream open in the host: such a plugin cannot be snapshotted after `configure`.
//!
//! It declares every request phase and misbehaves only in `phase` (default `access`; `configure`
//! misbehaves in `configure` itself, so at load), and, when
//! `when_header` is given, only for requests that carry that header, so the same plugin can serve
//! a bad request and then a good one.

use std::sync::Mutex;

use serde::Deserialize;
use tollgate_sdk::{Phase, PhaseResult, Plugin, log, request, response};

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Loop,
    Sleep,
    Work,
    Grow,
    Trap,
    Flood,
    Headers,
    Scribble,
    Ok,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    phase: Option<String>,
    mode: Mode,
    #[serde(default)]
    iterations: u64,
    #[serde(default)]
    when_header: Option<String>,
    #[serde(default)]
    stdout_at_configure: bool,
}

/// Zero in the image; every `scribble` call fills it.
static SCRIBBLED: Mutex<[u8; 64 << 10]> = Mutex::new([0; 64 << 10]);
/// Allocated and filled with [`CONFIGURED`] by `configure`; every `scribble` call overwrites it.
static HEAP: Mutex<Vec<u8>> = Mutex::new(Vec::new());
const CONFIGURED: u8 = 0xC0;
const SCRIBBLE: u8 = 0x5A;

/// The configured plugin.
#[derive(Debug)]
pub struct Misbehave {
    phase: Phase,
    mode: Mode,
    iterations: u64,
    when_header: Option<String>,
}

#[tollgate_sdk::plugin]
impl Plugin for Misbehave {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config)
            .map_err(|err| format!("invalid misbehave config: {err}"))?;
        let name = config.phase.as_deref().unwrap_or("access");
        if name == "configure" {
            misbehave(config.mode, config.iterations, name)
                .map_err(|err| err.message().to_owned())?;
        }
        let phase = Phase::from_name(name)
            .ok_or_else(|| format!("invalid misbehave config: unknown phase {name:?}"))?;
        if config.stdout_at_configure {
            println!("misbehave: configured");
        }
        if matches!(config.mode, Mode::Scribble) {
            *lock(&HEAP) = vec![CONFIGURED; 256 << 10];
        }
        Ok(Misbehave {
            phase,
            mode: config.mode,
            iterations: config.iterations,
            when_header: config.when_header,
        })
    }

    fn rewrite(&mut self) -> PhaseResult {
        self.maybe_misbehave(Phase::Rewrite)
    }

    fn access(&mut self) -> PhaseResult {
        self.maybe_misbehave(Phase::Access)
    }

    fn balancer(&mut self) -> PhaseResult {
        self.maybe_misbehave(Phase::Balancer)
    }

    fn header_filter(&mut self) -> PhaseResult {
        self.maybe_misbehave(Phase::HeaderFilter)
    }

    fn body_filter(&mut self, _chunk: &[u8], _end_of_stream: bool) -> PhaseResult {
        self.maybe_misbehave(Phase::BodyFilter)
    }

    fn log(&mut self) -> PhaseResult {
        self.maybe_misbehave(Phase::Log)
    }
}

impl Misbehave {
    fn maybe_misbehave(&self, phase: Phase) -> PhaseResult {
        if phase != self.phase {
            return Ok(());
        }
        if let Some(name) = &self.when_header
            && request::header(name)?.is_none()
        {
            return Ok(());
        }
        misbehave(self.mode, self.iterations, &format!("{phase} phase"))
    }
}

/// Misbehaves as `mode` says, in the call named `call`.
fn misbehave(mode: Mode, iterations: u64, call: &str) -> PhaseResult {
    match mode {
        Mode::Loop => spin(),
        Mode::Work => {
            let mut counter: u64 = 0;
            while counter < iterations {
                counter = std::hint::black_box(counter + 1);
            }
            Ok(())
        }
        Mode::Sleep => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(())
        }
        Mode::Grow => grow(),
        Mode::Trap => panic!("misbehave: trapping on purpose in {call}"),
        Mode::Flood => {
            flood();
            Ok(())
        }
        Mode::Headers => many_headers(),
        Mode::Scribble => scribble(),
        Mode::Ok => Ok(()),
    }
}

/// Answers whether this instance's memory is its initial image, then dirties it.
fn scribble() -> PhaseResult {
    let mut scribbled = lock(&SCRIBBLED);
    let mut heap = lock(&HEAP);
    let dirty_static = scribbled.iter().filter(|byte| **byte != 0).count();
    let dirty_heap = heap.iter().filter(|byte| **byte != CONFIGURED).count();
    let configured = heap.len();
    scribbled.fill(SCRIBBLE);
    heap.fill(SCRIBBLE);
    if dirty_static == 0 && dirty_heap == 0 && configured == 256 << 10 {
        response::exit(200, &[], b"initial image")?;
    } else {
        let seen = format!(
            "saw {dirty_static} written static bytes, {dirty_heap} changed heap bytes, \
             a heap of {configured} bytes"
        );
        response::exit(409, &[], seen.as_bytes())?;
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn flood() {
    for line in 0..5_000 {
        let forged = format!(
            "flood {line}\n2026-01-01T00:00:00Z  INFO tollgate: forged line {line}\r\u{1b}[2K"
        );
        log::info(&forged);
        eprintln!("{forged}");
    }
}

fn many_headers() -> PhaseResult {
    for index in 0..30_000 {
        if let Err(refused) = request::set_header(&format!("x-many-{index}"), "value") {
            let body = format!("refused at header {index}: {refused}");
            response::exit(200, &[], body.as_bytes())?;
            return Ok(());
        }
    }
    response::exit(200, &[], b"all 30000 headers accepted")?;
    Ok(())
}

fn grow() -> ! {
    const MIB: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // A non-zero fill writes every page, so the memory is really used, not just reserved.
        hoard.push(vec![0xA5; MIB]);
        std::hint::black_box(&hoard);
    }
}
