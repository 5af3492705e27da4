//! What `GET /api/history` costs on a big database: builds a database of `--events`
//! dispatched `image_captured` events (default 1,000,000) over `--cameras` cameras and the
//! last 30 days, with their capture counters, starts a hub on it, and times `--requests`
//! requests to `/api/history` (one connection each, as a dashboard's poll is).
//!
//! ```text
//! cargo run --release --example bench_history                 # 1,000,000 events
//! cargo run --release --example bench_history -- --quick      # 20,000, a smoke run
//! ```
//!
//! The events are inserted directly, in transactions of 50,000, already dispatched; the
//! counters are computed from them by SQL, as the poller would have added them, and one
//! capture per camera then goes through the hub so that its state lists every camera.
//! Prints the figures, then one `BENCH_JSON {...}` line.

#[path = "common/cli.rs"]
mod cli;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use timelapse_events::{Config, Emitter, Hub, NewEvent};

use cli::BoxError;

/// Time `/api/history` on a database of many events.
#[derive(Debug, Parser)]
struct Args {
    /// A small run (for smoke tests): 20,000 events, 20 requests.
    #[arg(long)]
    quick: bool,
    /// Events in the database.
    #[arg(long, default_value_t = 1_000_000)]
    events: i64,
    /// Cameras the events are spread over.
    #[arg(long, default_value_t = 8)]
    cameras: i64,
    /// Requests timed.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Directory for the database (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    cli::exit(run(Args::parse()))
}

const DAYS: i64 = 30;

fn run(mut args: Args) -> Result<(), BoxError> {
    if args.quick {
        args.events = 20_000;
        args.requests = 20;
    }
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let db = tmp.path().join("events.db");
    drop(Emitter::open(&db)?); // creates the schema
    let built = Instant::now();
    build(&db, args.events, args.cameras)?;
    let build_s = built.elapsed().as_secs_f64();
    let config = Config {
        bind: ([127, 0, 0, 1], 0).into(),
        db_path: db.clone(),
        mdns: false,
        // Nothing deleted while the reads are timed (the counters would stay anyway).
        retention_age: None,
        ..Config::default()
    };
    let hub = Hub::start(config)?;
    for camera in 1..=args.cameras {
        hub.emitter()
            .emit(NewEvent::image_captured(camera, camera, 1, 1))?;
    }
    let addr = hub.addr();
    // The state's snapshot is published a moment after the last emit returns.
    let listed = Instant::now();
    let (first, doc) = loop {
        let body = get(addr, "/api/history")?;
        let doc: serde_json::Value = serde_json::from_str(&body)?;
        let n = doc["cameras"].as_array().map_or(0, Vec::len);
        if n as i64 >= args.cameras || listed.elapsed() > Duration::from_secs(10) {
            break (body, doc);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let cameras = doc["cameras"].as_array().map_or(0, Vec::len);
    let total: i64 = doc["cameras"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|c| c["total"].as_i64()).sum());
    if total != args.events + args.cameras {
        return Err(format!(
            "history counts {total}, expected {}",
            args.events + args.cameras
        )
        .into());
    }
    let mut times = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let t = Instant::now();
        get(addr, "/api/history")?;
        times.push(t.elapsed());
    }
    hub.shutdown()?;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(times[times.len() / 2]);
    let p99 = ms(times[(times.len() * 99 / 100).min(times.len() - 1)]);
    let bytes = std::fs::metadata(&db).map_or(0, |m| m.len());
    println!(
        "{} events over {} cameras ({cameras} listed), database {:.0} MiB, built in {build_s:.1} s",
        args.events,
        args.cameras,
        bytes as f64 / 1_048_576.0
    );
    println!(
        "GET /api/history, {} requests: median {median:.2} ms, p99 {p99:.2} ms, {} bytes",
        args.requests,
        first.len()
    );
    println!(
        "BENCH_JSON {}",
        json!({"events": args.events, "cameras": args.cameras, "requests": args.requests,
               "median_ms": median, "p99_ms": p99, "body_bytes": first.len()})
    );
    Ok(())
}

/// Inserts `events` dispatched captures spread evenly over the last [`DAYS`] days, then
/// their hour, day and total counters.
fn build(db: &std::path::Path, events: i64, cameras: i64) -> Result<(), BoxError> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let span = DAYS * 86_400;
    let chunk = 50_000;
    let mut seq = 0;
    while seq < events {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO sse_events (event_type, event_data, created_at, processed_at, seq) \
                 VALUES ('image_captured', json_object('camera_id', ?1, 'image_count', ?2), \
                         strftime('%Y-%m-%dT%H:%M:%fZ', ?3, 'unixepoch'), \
                         strftime('%Y-%m-%dT%H:%M:%fZ', ?3, 'unixepoch'), ?2)",
            )?;
            for _ in 0..chunk.min(events - seq) {
                seq += 1;
                let at = now - span + seq * span / events - 60;
                insert.execute(rusqlite::params![seq % cameras + 1, seq, at])?;
            }
        }
        tx.commit()?;
    }
    conn.execute_batch(
        "INSERT INTO capture_history (host, camera_id, span, start, captures) \
             SELECT '', c, s, CASE s WHEN 'hour' THEN t / 3600 * 3600 \
                                     WHEN 'day' THEN t / 86400 * 86400 ELSE 0 END AS st, \
                    count(*) FROM ( \
               SELECT json_extract(event_data, '$.camera_id') AS c, \
                      CAST(strftime('%s', created_at) AS INTEGER) AS t FROM sse_events) \
             CROSS JOIN (SELECT 'hour' AS s UNION ALL SELECT 'day' UNION ALL SELECT 'all') \
             GROUP BY c, s, st",
    )?;
    // As the retention thread keeps it: 48 hours of hours, 60 days of days.
    conn.execute(
        "DELETE FROM capture_history WHERE span = 'hour' AND start < ?1",
        [now / 3600 * 3600 - 48 * 3600],
    )?;
    Ok(())
}

/// One `GET` on a connection of its own; the body.
fn get(addr: SocketAddr, target: &str) -> Result<String, BoxError> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(format!("{target}: {}", out.lines().next().unwrap_or("")).into());
    }
    Ok(out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned())
}
