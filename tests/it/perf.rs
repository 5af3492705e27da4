//! The correctness half of the benchmark (issue #7): a `--quick` run of each scenario of
//! `examples/bench` must deliver every event to every client exactly once, in order, and
//! serve every client. Wall-clock figures are printed by the benchmark, never asserted here;
//! the timeouts are hang guards.
//!
//! The benchmark binary does the work (hub and producer as child processes, raw-TCP SSE
//! clients) and prints one `BENCH_JSON {...}` line per scenario run; these tests parse them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde_json::Value;

/// Hang guard for one `--quick` scenario run (debug build, 2 shared cores).
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The benchmark example, built once per test run by the same cargo (debug profile), next to
/// the hub binary cargo built for these tests.
fn bench_exe() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_timelapse-events"));
        let dir = bin.parent().expect("the hub binary sits in a directory");
        let exe = dir.join("examples").join("bench");
        // Always ask cargo: it is a no-op when the example is up to date, and a stale one
        // would test old code.
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "bench", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .stdout(Stdio::null())
            .status()
            .expect("run cargo build --example bench");
        assert!(status.success(), "cargo build --example bench failed");
        assert!(exe.exists(), "{} missing after the build", exe.display());
        exe
    })
}

/// Runs `bench <scenario> --quick` and returns its JSON summaries. Scenario runs are
/// serialised: each starts its own hub and clients, and they would skew each other's hang
/// guards on two cores.
fn run(scenario: &str) -> Vec<Value> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let exe = bench_exe();
    // A failed run in another test must not stop this one: the lock guards no data.
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let child = Command::new(exe)
        .args([scenario, "--quick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the benchmark");
    let pid = child.id();
    // Read both pipes to the end on another thread (a full pipe would stall the child).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output()); // the receiver may have given up
    });
    let out = match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => out.expect("collect the benchmark output"),
        Err(_) => {
            // Best effort: the panic below reports the hang either way.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("bench {scenario} --quick still running after {RUN_LIMIT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {scenario} --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summaries: Vec<Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH_JSON "))
        .map(|j| serde_json::from_str(j).expect("BENCH_JSON line is JSON"))
        .collect();
    assert!(!summaries.is_empty(), "no BENCH_JSON line:\n{stdout}");
    summaries
}

fn num(s: &Value, key: &str) -> u64 {
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` missing or not a count in {s}"))
}

/// Every client served; every event delivered once to each, in order; nothing unexpected.
fn assert_exact_delivery(s: &Value) {
    let name = &s["scenario"];
    let (clients, events) = (num(s, "clients"), num(s, "events"));
    assert_eq!(num(s, "served"), clients, "{name}: clients served\n{s}");
    assert_eq!(num(s, "client_errors"), 0, "{name}: client errors\n{s}");
    assert_eq!(
        num(s, "deliveries"),
        clients * events,
        "{name}: deliveries\n{s}"
    );
    for key in ["lost", "duplicated", "out_of_order", "unexpected"] {
        assert_eq!(num(s, key), 0, "{name}: {key}\n{s}");
    }
}

#[test]
fn s1_external_producer_reaches_its_client_exactly_once_in_order() {
    for s in run("s1") {
        assert_exact_delivery(&s);
    }
}

#[test]
fn in_process_emitter_reaches_every_client_exactly_once_in_order() {
    for s in run("emitter") {
        assert_exact_delivery(&s);
    }
}

#[test]
fn s2_every_client_receives_every_event_none_compete_for_rows() {
    let runs = run("s2");
    assert!(runs.len() >= 2, "one run per client count: {runs:?}");
    for s in runs {
        assert_exact_delivery(&s);
    }
}

#[test]
fn s3_bursts_lose_nothing_and_keep_order() {
    for scenario in ["s3", "s3-fanout"] {
        for s in run(scenario) {
            assert_exact_delivery(&s);
        }
    }
}

#[test]
fn idle_clients_all_served_and_hear_heartbeats() {
    for s in run("idle") {
        assert_exact_delivery(&s);
        // `--quick` uses a 1 s heartbeat over 3 s: a client that heard none would show a
        // gap of 0 (no read after the prelude) — a hang guard, not a timing check.
        let gap = s["heartbeat_gap_max_ms"].as_f64().expect("gap reported");
        assert!(gap > 0.0, "no heartbeat reached the clients: {s}");
    }
}

#[test]
fn many_streams_are_all_served_and_their_threads_end() {
    for s in run("streams500") {
        assert_exact_delivery(&s);
        let (before, after) = (num(&s, "threads_before"), num(&s, "threads_after"));
        assert!(
            after <= before,
            "threads did not return to the baseline ({before}) after the clients left: {s}"
        );
    }
}

#[test]
fn a_burst_of_connects_is_all_served() {
    for s in run("burst") {
        assert_exact_delivery(&s);
    }
}

#[test]
fn rss_and_startup_scenarios_complete() {
    for s in run("rss10") {
        assert_exact_delivery(&s);
    }
    let starts = run("startup");
    assert_eq!(starts.len(), 2, "empty and filled database: {starts:?}");
    for s in starts {
        assert!(s["startup_ms"].as_f64().is_some(), "startup measured: {s}");
    }
}

#[test]
fn peer_mode_delivers_exactly_once_to_the_hub_and_to_nchan_when_present() {
    let runs = run("peer");
    // Four scenarios against the hub, and as many against nchan where nginx has it.
    assert!(
        runs.len() == 4 || runs.len() == 8,
        "one run per scenario and server: {runs:?}"
    );
    for s in runs {
        assert_exact_delivery(&s);
    }
}
