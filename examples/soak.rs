//! Soak test: a hub under simulated cameras, churning clients and retention with small limits,
//! for a given time, reporting the hub's RSS, file descriptors, threads, WAL size and database
//! size at the start, periodically and at the end. Not part of `cargo test`.
//!
//! ```text
//! cargo run --release --example soak                   # 10 minutes
//! cargo run --release --example soak -- --minutes 5 --cameras 8 --clients 30
//! ```
//!
//! The hub runs in a child process (this program started again with `--hub`), so what
//! /proc reports for it is the hub alone. Cameras write into its database file through
//! [`Emitter::open`], as capture programs on the camera host do; clients connect to
//! `/api/events`, read for a few seconds (some resume with `Last-Event-ID`, some stop
//! reading for a while), and leave. Nothing may grow without bound: compare the figures
//! after the warm-up with the last ones.

#[path = "common/cli.rs"]
mod cli;
#[allow(dead_code)] // ProcStats only
#[path = "common/procfs.rs"]
mod procfs;
#[allow(dead_code)] // the incremental Parser, Dechunker and Head only
#[path = "common/sse.rs"]
mod sse;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use timelapse_events::{Config, Emitter, Hub, NewEvent};

use cli::BoxError;

/// Soak test for timelapse-events.
#[derive(Debug, Parser)]
struct Args {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Simulated cameras, each capturing every `--interval-ms`.
    #[arg(long, default_value_t = 8)]
    cameras: u32,
    /// Milliseconds between two captures of one camera.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Client threads, each connecting, reading a while and leaving, again and again.
    #[arg(long, default_value_t = 20)]
    clients: u32,
    /// Seconds between two reports.
    #[arg(long, default_value_t = 30)]
    report_secs: u64,
    /// Internal: run the hub on this database and print its address.
    #[arg(long, hide = true)]
    hub: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::exit(match &args.hub {
        Some(db) => run_hub(db),
        None => run(&args),
    })
}

/// The child: a hub with small retention limits, stopped when stdin closes.
fn run_hub(db: &Path) -> Result<(), BoxError> {
    let config = Config {
        db_path: db.to_owned(),
        bind: ([127, 0, 0, 1], 0).into(),
        heartbeat_interval: Duration::from_secs(2),
        send_timeout: Duration::from_secs(3),
        retention_age: Some(Duration::from_secs(120)),
        retention_max_rows: Some(5_000),
        retention_max_db_bytes: Some(4 * 1024 * 1024),
        retention_interval: Duration::from_secs(5),
        ..Config::default()
    };
    let hub = Hub::start(config)?;
    println!("{}", hub.addr());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    // Blocks until the parent closes our stdin (or dies).
    let _ = std::io::stdin().read_to_end(&mut sink);
    hub.shutdown()?;
    Ok(())
}

#[derive(Default)]
struct Counters {
    emitted: AtomicU64,
    emit_errors: AtomicU64,
    connects: AtomicU64,
    refused: AtomicU64,
    events_read: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    threads: u64,
    wal: u64,
    db: u64,
}

fn sample(pid: u32, db: &Path) -> Sample {
    let proc = procfs::ProcStats::read(pid).unwrap_or_default();
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    Sample {
        rss_kib: proc.rss_kib,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |r| r.count()),
        threads: proc.threads,
        wal: size(PathBuf::from(wal)),
        db: size(db.to_owned()),
    }
}

fn report(label: &str, s: Sample, c: &Counters) {
    println!(
        "{label:>8}  rss {:>6} KiB  fds {:>4}  threads {:>4}  wal {:>8} B  db {:>8} B  | \
         emitted {} (errors {})  connects {} (refused {})  events read {}",
        s.rss_kib,
        s.fds,
        s.threads,
        s.wal,
        s.db,
        c.emitted.load(Ordering::Relaxed),
        c.emit_errors.load(Ordering::Relaxed),
        c.connects.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.events_read.load(Ordering::Relaxed),
    );
}

fn run(args: &Args) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("soak.db");
    let mut hub = Command::new(std::env::current_exe()?)
        .arg("--hub")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()?;
    let mut line = String::new();
    BufReader::new(hub.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr: SocketAddr = line.trim().parse()?;
    let pid = hub.id();
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    println!(
        "soak: hub pid {pid} on {addr}, {} cameras every {} ms, {} churning clients, {:.1} min",
        args.cameras, args.interval_ms, args.clients, args.minutes
    );
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = sample(pid, &db);
    report("start", start, &counters);

    let emitter = Emitter::open(&db)?;
    let mut threads = Vec::new();
    for camera in 1..=args.cameras {
        let (emitter, stop, c) = (emitter.clone(), stop.clone(), counters.clone());
        let interval = Duration::from_millis(args.interval_ms);
        threads.push(thread::spawn(move || {
            camera_loop(camera, &emitter, interval, &stop, &c)
        }));
    }
    for n in 0..args.clients {
        let (stop, c) = (stop.clone(), counters.clone());
        threads.push(thread::spawn(move || client_loop(addr, n, &stop, &c)));
    }

    let began = Instant::now();
    let mut samples = vec![(Duration::ZERO, start)];
    while began.elapsed() < run_for {
        let left = run_for.saturating_sub(began.elapsed());
        thread::sleep(left.min(Duration::from_secs(args.report_secs)));
        let s = sample(pid, &db);
        samples.push((began.elapsed(), s));
        report(
            &format!("{:.0}s", began.elapsed().as_secs_f64()),
            s,
            &counters,
        );
        if let Ok(Some(status)) = hub.try_wait() {
            return Err(format!("the hub exited: {status}").into());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join(); // a client or camera thread that panicked has printed why
    }
    // Clients are gone: give the hub a few heartbeats to notice, then the final figures.
    thread::sleep(Duration::from_secs(6));
    let end = sample(pid, &db);
    report("end", end, &counters);
    drop(hub.stdin.take()); // the hub shuts down
    let status = hub.wait()?;
    // Growth: the sample after a fifth of the run (warm-up done) against the last one.
    let warm = samples[samples.len() / 5].1;
    let last = samples.last().map_or(end, |s| s.1);
    println!(
        "after warm-up -> last: rss {} -> {} KiB, fds {} -> {}, threads {} -> {}, wal {} -> {} B, db {} -> {} B; \
         idle after clients left: fds {}, threads {}; hub exited {status}",
        warm.rss_kib,
        last.rss_kib,
        warm.fds,
        last.fds,
        warm.threads,
        last.threads,
        warm.wal,
        last.wal,
        warm.db,
        last.db,
        end.fds,
        end.threads,
    );
    Ok(())
}

fn camera_loop(
    camera: u32,
    emitter: &Emitter,
    interval: Duration,
    stop: &AtomicBool,
    c: &Counters,
) {
    let mut image = 0u64;
    let _ = emitter.emit(NewEvent::camera_status_changed(
        camera.into(),
        "online",
        "healthy",
    ));
    while !stop.load(Ordering::Relaxed) {
        image += 1;
        let event = NewEvent::new(
            "image_captured",
            json!({"camera_id": camera, "image_count": image, "file_name": format!("cam{camera}_{image:06}.jpg")}),
        );
        match emitter.emit(event) {
            Ok(_) => c.emitted.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.emit_errors.fetch_add(1, Ordering::Relaxed),
        };
        thread::sleep(interval);
    }
}

/// Connects, reads for 1-6 s (every fifth visit: stops reading for 5 s first), leaves, and
/// comes back, resuming from its last id half of the time.
fn client_loop(addr: SocketAddr, n: u32, stop: &AtomicBool, c: &Counters) {
    let mut visit = 0u32;
    let mut last_id: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        visit += 1;
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            c.refused.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_secs(1));
            continue;
        };
        let mut req = String::from("GET /api/events HTTP/1.1\r\nHost: localhost\r\n");
        if visit.is_multiple_of(2)
            && let Some(id) = &last_id
        {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            continue;
        }
        c.connects.fetch_add(1, Ordering::Relaxed);
        if (visit + n).is_multiple_of(5) {
            thread::sleep(Duration::from_secs(5)); // a client that stops reading
        }
        let stay = Duration::from_millis(1000 + u64::from((n * 7919 + visit * 104_729) % 5000));
        let until = Instant::now() + stay;
        // The head came at once; a client that stopped reading finds it waiting.
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reader = BufReader::new(&s);
        let Ok(head) = sse::Head::read(&mut reader) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        // An HTTP/1.1 stream is chunked; a refusal's plain body holds no events.
        let mut chunks = head.chunked().then(sse::Dechunker::default);
        let mut parser = sse::Parser::default();
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    let Some(Ok(body)) = chunks.as_mut().map(|c| c.feed(&buf[..k])) else {
                        break;
                    };
                    for item in parser.feed(&body) {
                        if let sse::Item::Message(m) = item {
                            last_id = Some(m.id);
                            c.events_read.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(_) => {}
            }
        }
    }
}
