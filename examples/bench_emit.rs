//! Emit throughput and latency: how many events per second [`Emitter::emit`] stores from 1
//! and 4 threads, with `synchronous` NORMAL and FULL, and how long one `emit` takes.
//!
//! Each case gets a fresh database in a temp dir (on the same file system as `--dir`, by
//! default the system temp dir: fsync cost depends on it). Every thread emits back to back;
//! `emit` returns only once the event is committed, so with T threads at most T events can
//! share one group commit.
//!
//! ```text
//! cargo run --release --example bench_emit                 # the full run, ~20 s
//! cargo run --release --example bench_emit -- --quick      # a smoke run
//! ```
//!
//! Prints a table, then one `BENCH_JSON {...}` line per case for scripts. Targets
//! (issue #2): 4 threads NORMAL ≥ 50,000 events/s, FULL ≥ 20,000 events/s.

#[path = "common/cli.rs"]
mod cli;
#[allow(dead_code)] // cpu_s and threads_cpu_s, not ProcStats
#[path = "common/procfs.rs"]
mod procfs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use serde_json::json;
use timelapse_events::{Config, Emitter, Hub, NewEvent, Synchronous};

use cli::BoxError;

/// Emit throughput and latency of the in-process Emitter.
#[derive(Debug, Parser)]
struct Args {
    /// A small run (for smoke tests): 2,000 events per case.
    #[arg(long)]
    quick: bool,
    /// Directory for the temporary databases (its file system decides what fsync costs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events per case (overrides the default: 100,000 NORMAL, 40,000 FULL).
    #[arg(long)]
    events: Option<u64>,
    /// Events per call: 1 uses `emit`, more uses `emit_batch` (latency is then per call).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Use a standalone `Emitter::open` (another process's view) instead of a running hub's.
    #[arg(long)]
    standalone: bool,
}

/// A case stops early after this long, whatever its event count (the loop is bounded).
const CASE_LIMIT: Duration = Duration::from_secs(15);
/// Emits before the clock starts: opens the statement cache, grows the WAL.
const WARM_UP: u64 = 500;
/// The threads that commit: `tle-writer` for a standalone emitter, the hub's `tle-poller`
/// (which stores and dispatches) otherwise.
const WRITERS: &[&str] = &["tle-writer", "tle-poller"];

fn main() -> ExitCode {
    let args = Args::parse();
    cli::exit(run(&args))
}

/// One case's figures; the JSON line is these (but `secs`), `bench` and `events_per_s`.
#[derive(Serialize)]
struct Outcome {
    synchronous: &'static str,
    threads: usize,
    events: u64,
    #[serde(skip)]
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    cpu_s: f64,
    writer_cpu_s: f64,
}

fn run(args: &Args) -> Result<(), BoxError> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("bench-emit-")
        .tempdir_in(&base)?;
    println!(
        "bench_emit: databases in {} ({} CPUs)",
        dir.path().display(),
        thread::available_parallelism().map_or(0, usize::from)
    );
    let mut outcomes = Vec::new();
    for sync in [Synchronous::Normal, Synchronous::Full] {
        let count = match (args.quick, args.events, sync) {
            (_, Some(n), _) => n,
            (true, None, _) => 2_000,
            (false, None, Synchronous::Normal) => 100_000,
            (false, None, Synchronous::Full) => 40_000,
        };
        for threads in [1, 4] {
            let path = dir
                .path()
                .join(format!("{}-{threads}.db", sync.as_str().to_lowercase()));
            outcomes.push(case(&path, sync, threads, count, args)?);
        }
    }
    println!(
        "\n{:<7} {:>7} {:>8} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "sync", "threads", "events", "events/s", "p50 µs", "p99 µs", "max µs", "CPU s", "writer s"
    );
    for o in &outcomes {
        println!(
            "{:<7} {:>7} {:>8} {:>11.0} {:>9.1} {:>9.1} {:>9.0} {:>9.2} {:>10.2}",
            o.synchronous,
            o.threads,
            o.events,
            o.events as f64 / o.secs,
            o.p50_us,
            o.p99_us,
            o.max_us,
            o.cpu_s,
            o.writer_cpu_s
        );
    }
    for o in &outcomes {
        let mut line = serde_json::to_value(o)?;
        line["bench"] = json!("emit");
        line["events_per_s"] = json!((o.events as f64 / o.secs).round());
        println!("BENCH_JSON {line}");
    }
    Ok(())
}

fn case(
    path: &std::path::Path,
    sync: Synchronous,
    threads: usize,
    count: u64,
    args: &Args,
) -> Result<Outcome, BoxError> {
    // The hub's own emitter by default: its poller stores each group and dispatches it in
    // the same transaction, as in production.
    let hub = if args.standalone {
        None
    } else {
        Some(Hub::start(Config {
            db_path: path.to_owned(),
            bind: ([127, 0, 0, 1], 0).into(),
            synchronous: sync,
            ..Config::default()
        })?)
    };
    let emitter = match &hub {
        Some(h) => h.emitter(),
        None => Emitter::open_with(path, sync)?,
    };
    let batch = args.batch.max(1);
    for i in 0..WARM_UP {
        emitter.emit(event(0, i))?;
    }
    let per_thread = count / threads as u64;
    let barrier = Barrier::new(threads + 1);
    let cpu_before = procfs::cpu_s("/proc/self/stat")?;
    let writer_before = procfs::threads_cpu_s(WRITERS)?;
    let (secs, mut lat) = thread::scope(|s| -> Result<(f64, Vec<u32>), BoxError> {
        let mut handles = Vec::new();
        for t in 0..threads {
            let (emitter, barrier) = (emitter.clone(), &barrier);
            handles.push(s.spawn(move || -> Result<Vec<u32>, String> {
                let mut lat = Vec::with_capacity(per_thread as usize);
                barrier.wait();
                let stop_at = Instant::now() + CASE_LIMIT;
                let mut i = 0;
                while i < per_thread {
                    let t0 = Instant::now();
                    if batch == 1 {
                        emitter
                            .emit(event(t as i64 + 1, i))
                            .map_err(|e| e.to_string())?;
                    } else {
                        let evs = (i..i + batch).map(|n| event(t as i64 + 1, n)).collect();
                        emitter.emit_batch(evs).map_err(|e| e.to_string())?;
                    }
                    i += batch;
                    let now = Instant::now();
                    let us = u32::try_from((now - t0).as_nanos()).unwrap_or(u32::MAX);
                    // One latency sample per event, so counts and rates stay per event.
                    lat.extend(std::iter::repeat_n(us, batch as usize));
                    if now > stop_at {
                        break;
                    }
                }
                Ok(lat)
            }));
        }
        barrier.wait();
        let started = Instant::now();
        let mut all = Vec::with_capacity(count as usize);
        for h in handles {
            let lat = h.join().map_err(|_| "an emitting thread panicked")??;
            all.extend(lat);
        }
        Ok((started.elapsed().as_secs_f64(), all))
    })?;
    let cpu_s = procfs::cpu_s("/proc/self/stat")? - cpu_before;
    let writer_cpu_s = procfs::threads_cpu_s(WRITERS)? - writer_before;
    drop(emitter); // stops a standalone writer
    if let Some(h) = hub {
        h.shutdown()?;
    }
    lat.sort_unstable();
    let q = |p: f64| pct(&lat, p) as f64 / 1000.0;
    let o = Outcome {
        synchronous: sync.as_str(),
        threads,
        events: lat.len() as u64,
        secs,
        p50_us: q(0.50),
        p99_us: q(0.99),
        max_us: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        cpu_s,
        writer_cpu_s,
    };
    println!(
        "{:<6} {} thread(s): {} events in {:.2} s = {:.0} events/s",
        sync.as_str(),
        threads,
        o.events,
        secs,
        o.events as f64 / secs
    );
    Ok(o)
}

fn event(camera: i64, i: u64) -> NewEvent {
    NewEvent::image_captured(camera, 7, i as i64, 3)
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
