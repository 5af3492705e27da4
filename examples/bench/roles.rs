//! The two child roles of the benchmark binary.
//!
//! - `--role hub`: runs [`Hub::start`] on a database, prints `READY <addr> <start µs>`, then
//!   obeys stdin: `emit <rate> <count>` emits through the in-process [`Emitter`] (printing
//!   `EMITTED <count> <cpu s of the emitting thread>`), `quit` or end of input shuts the hub
//!   down. It also ends by itself after [`MAX_LIFETIME`].
//! - `--role producer`: an external producer: plain rusqlite INSERTs into `sse_events`, one
//!   autocommit each, with the connection's default pragmas (as Python's `sqlite3` would),
//!   paced to a rate; prints `PRODUCED <rows> <commit p50 µs> <commit p99 µs>`.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use timelapse_events::{Config, Hub, NewEvent};

use crate::BoxError;
use crate::child::HubParams;
use crate::client::unix_nanos;
use crate::procfs::cpu_s;

/// A hub child that lost its parent still ends.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

pub fn hub(db: &Path, p: &HubParams) -> Result<(), BoxError> {
    // Warnings (a cut-off stream, a poller error) are worth seeing on stderr; info is not.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init(); // fails only if a logger is set already
    std::thread::Builder::new()
        .name("bench-lifetime".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            std::thread::sleep(MAX_LIFETIME);
            eprintln!("bench hub: lifetime limit reached, exiting");
            std::process::exit(3);
        })?;
    let config = Config {
        db_path: db.to_owned(),
        bind: ([127, 0, 0, 1], p.port).into(),
        poll_interval: Duration::from_millis(p.poll_ms),
        batch_rows: p.batch_rows,
        watch_wal: p.watch_wal,
        heartbeat_interval: Duration::from_millis(p.heartbeat_ms),
        max_clients: p.max_clients,
        // Every bench client comes from loopback: one address may hold them all.
        max_conns: 2 * p.max_clients + 64,
        max_conns_per_addr: 2 * p.max_clients + 64,
        max_streams_per_addr: p.max_clients,
        ..Config::default()
    };
    let t0 = Instant::now();
    let hub = Hub::start(config)?;
    let start_us = t0.elapsed().as_micros();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {} {start_us}", hub.addr())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["emit", rate, count] => {
                let (rate, count): (f64, u64) = (rate.parse()?, count.parse()?);
                let before = cpu_s("/proc/thread-self/stat")?;
                let emitter = hub.emitter();
                pace(rate, count, |n| {
                    let data = json!({"n": n, "t": unix_nanos()});
                    emitter.emit(NewEvent::new("bench", data)).map(drop)
                })?;
                let used = cpu_s("/proc/thread-self/stat")? - before;
                writeln!(out, "EMITTED {count} {used}")?;
                out.flush()?;
            }
            ["quit"] => break,
            _ => return Err(format!("unknown hub command {line:?}").into()),
        }
    }
    hub.shutdown()?;
    Ok(())
}

pub fn producer(db: &Path, rate: f64, count: u64, synchronous: &str) -> Result<(), BoxError> {
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    match synchronous {
        "default" => {}
        "normal" | "full" => conn.pragma_update(None, "synchronous", synchronous)?,
        other => {
            return Err(
                format!("producer synchronous `{other}`: use default, normal or full").into(),
            );
        }
    }
    let mut insert =
        conn.prepare("INSERT INTO sse_events (event_type, event_data) VALUES ('bench', ?1)")?;
    let mut commit_ns: Vec<u64> = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    pace(rate, count, |n| {
        let data = json!({"n": n, "t": unix_nanos()}).to_string();
        let t0 = Instant::now();
        insert.execute([data])?;
        commit_ns.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
        Ok::<(), rusqlite::Error>(())
    })?;
    commit_ns.sort_unstable();
    let q = |p: f64| crate::report::pct(&commit_ns, p) as f64 / 1000.0;
    println!("PRODUCED {} {:.1} {:.1}", commit_ns.len(), q(0.50), q(0.99));
    Ok(())
}

/// Calls `produce(n)` for n in 0..count on a fixed schedule of `rate` per second (catching
/// up without sleeping when behind). Bounded by `count` and by three times the planned time
/// plus 30 s.
pub fn pace<E>(
    rate: f64,
    count: u64,
    mut produce: impl FnMut(u64) -> Result<(), E>,
) -> Result<(), BoxError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(format!("rate {rate} must be a positive number").into());
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let limit = period * u32::try_from(count).unwrap_or(u32::MAX) * 3 + Duration::from_secs(30);
    let start = Instant::now();
    for n in 0..count {
        let due = start + period * u32::try_from(n).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if now - start > limit {
            return Err(format!("producing took over {limit:?}; stopped at {n}").into());
        }
        produce(n)?;
    }
    Ok(())
}
