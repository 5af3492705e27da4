//! End-to-end benchmark of the hub (issue #7): delivery latency, loss, duplicates and order
//! to raw-TCP SSE clients, hub CPU, memory and threads, idle cost, many streams, start-up.
//!
//! The hub runs as a child process (this binary with `--role hub`), so `/proc/<pid>` gives
//! its CPU, peak RSS and thread count apart from the load generator. Events come either
//! from an *external producer* (another child, `--role producer`, doing one rusqlite INSERT
//! per event, exactly the public `sse_events` contract) or from the hub's in-process
//! [`Emitter`](timelapse_events::Emitter). Each event carries `{"n": <sequence>, "t": <unix
//! ns just before it was stored>}`; every client checks that it got each `n` once, in order,
//! and how long after `t` it arrived. Clients resume from cursor `<stream>-0`, so an event
//! dispatched while a client was still subscribing is replayed, not lost: "lost" is real loss.
//!
//! ```text
//! cargo run --release --example bench -- all                 # every scenario, ~3 min
//! cargo run --release --example bench -- s1 --seed-mode      # S1, and the old design's figures
//! cargo run --release --example bench -- all --quick         # a small run of each (tests use it)
//! cargo run --release --example bench -- peer --rounds 3     # side by side with nginx + nchan, ~25 min
//! ```
//!
//! Scenarios: s1, emitter, s2, s3, s3-fanout, idle, streams500, burst, rss10, startup, and
//! `peer` (not part of `all`): the issue #17 scenarios against the hub and nginx + nchan,
//! interleaved, with hub/nchan ratios (see `peer.rs`).
//! Clients connect one after another (each once the previous was served), except in
//! `burst`, where they all connect at once (see `Fleet::connect_with` for why). `--seed-mode` also runs the delivery and idle scenarios with the old
//! design's parameters (0.5 s poll, 50 rows a batch; external producers only, which get no
//! wake-up nudge) and prints seed/normal ratios from the same run. Every scenario prints a
//! human line and a `BENCH_JSON {...}` line.
//!
//! Note: the machine this is measured on has 2 cores shared by the hub, the producer and the
//! clients; a latency figure includes the client's own scheduling delay.

mod child;
#[path = "../common/cli.rs"]
mod cli;
mod client;
mod peer;
#[allow(dead_code)] // ProcStats and cpu_s, not threads_cpu_s
#[path = "../common/procfs.rs"]
mod procfs;
mod report;
mod roles;
#[allow(dead_code)] // the incremental Parser, Dechunker and Head only
#[path = "../common/sse.rs"]
mod sse;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use child::{HubChild, HubParams, Produced, ProducerChild};
use cli::BoxError;
use client::{Progress, Seen, Spec};
use report::Summary;

/// How long a hub may take to start and report its address (hang guard).
const HUB_START_WAIT: Duration = Duration::from_secs(30);
/// How long a hub may take to shut down (hang guard).
const HUB_STOP_WAIT: Duration = Duration::from_secs(15);
/// How long clients may take to be served, and events to arrive after the last was produced.
const SETTLE_WAIT: Duration = Duration::from_secs(15);
/// Extra time clients keep reading after they are complete, to catch late duplicates.
const DUP_GRACE: Duration = Duration::from_millis(300);
/// How long clients that all connect at once get to be served.
const BURST_WAIT: Duration = Duration::from_secs(5);
/// How long a staggered connect waits for one client to be served before the next.
const STAGGER_WAIT: Duration = Duration::from_secs(5);
/// Client thread stack: a client keeps its buffers on the heap.
const CLIENT_STACK_BYTES: usize = 128 * 1024;

/// End-to-end benchmark of the timelapse-events hub.
#[derive(Debug, Parser)]
struct Args {
    /// A scenario, or `all`.
    #[arg(value_enum)]
    scenario: Option<Which>,
    /// Also run the old design's parameters (0.5 s poll, 50 rows a batch) and print ratios.
    #[arg(long)]
    seed_mode: bool,
    /// Shrink every scenario (for tests and smoke runs).
    #[arg(long)]
    quick: bool,
    /// Rounds of the `peer` scenario (each runs every scenario against the hub, then
    /// nchan); the table gives the medians. `--quick` makes it 1.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Heartbeat interval of the `idle` scenario, in seconds.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// `synchronous` of the external producer's connection: `default` leaves SQLite's
    /// default (FULL, as Python's sqlite3 or the sqlite3 shell would), or `normal`/`full`.
    #[arg(long, default_value = "default")]
    producer_synchronous: String,
    /// Child role (internal): `hub` or `producer`.
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    #[arg(long, hide = true)]
    db: Option<PathBuf>,
    #[command(flatten)]
    hub: HubParams,
    #[arg(long, hide = true, default_value_t = 20.0)]
    rate: f64,
    #[arg(long, hide = true, default_value_t = 0)]
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Hub,
    Producer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    All,
    S1,
    Emitter,
    S2,
    S3,
    S3Fanout,
    Idle,
    Streams500,
    Burst,
    Rss10,
    Startup,
    /// Side by side with nginx + nchan (not part of `all`).
    Peer,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::exit(run(&args))
}

fn run(args: &Args) -> Result<(), BoxError> {
    if let Some(role) = args.role {
        let db = args.db.as_deref().ok_or("--role needs --db")?;
        return match role {
            Role::Hub => roles::hub(db, &args.hub),
            Role::Producer => {
                roles::producer(db, args.rate, args.count, &args.producer_synchronous)
            }
        };
    }
    let which = args
        .scenario
        .ok_or("name a scenario, or `all` (see --help)")?;
    // Set once, here, before any child starts.
    let _ = child::PRODUCER_SYNCHRONOUS.set(args.producer_synchronous.clone());
    let _ = child::NORMAL_POLL_MS.set(args.hub.poll_ms);
    let all = which == Which::All;
    let q = args.quick;
    let seed = args.seed_mode;
    let started = Instant::now();
    let mut failed = 0;
    let mut check = |r: Result<(), BoxError>, name: &str| {
        if let Err(e) = r {
            eprintln!("scenario {name} failed: {e}");
            failed += 1;
        }
    };
    if all || which == Which::S1 {
        let (rate, count) = if q { (100.0, 40) } else { (20.0, 200) };
        check(delivery_pair("s1", 1, rate, count, seed), "s1");
    }
    if all || which == Which::Emitter {
        let (clients, rate, count) = if q { (3, 200.0, 60) } else { (10, 100.0, 1000) };
        let r = delivery(
            "emitter",
            &HubParams::normal(),
            clients,
            rate,
            count,
            Source::InProcess,
        )
        .map(|s| s.print());
        check(r, "emitter");
        if seed {
            println!(
                "emitter                seed mode n/a: the hub's own emits are dispatched in their own commit"
            );
        }
    }
    if all || which == Which::S2 {
        let (sizes, rate, count): (&[usize], f64, u64) = if q {
            (&[4, 20], 100.0, 40)
        } else {
            (&[4, 20, 100], 20.0, 200)
        };
        for &n in sizes {
            let name = format!("s2-{n}");
            check(delivery_pair(&name, n, rate, count, seed), &name);
        }
    }
    if all || which == Which::S3 {
        let count = if q { 300 } else { 2000 };
        check(delivery_pair("s3", 1, 500.0, count, seed), "s3");
    }
    if all || which == Which::S3Fanout {
        let (clients, rate, count) = if q {
            (5, 500.0, 500)
        } else {
            (20, 1000.0, 10_000)
        };
        check(
            delivery_pair("s3-fanout", clients, rate, count, seed),
            "s3-fanout",
        );
    }
    if all || which == Which::Idle {
        let (clients, secs, hb) = if q {
            (10, 3, 1)
        } else {
            (100, 60, args.heartbeat_secs)
        };
        check(idle_pair(clients, secs, hb, seed), "idle");
    }
    if all || which == Which::Streams500 {
        let n = if q { 50 } else { 500 };
        check(many_streams(n, true).map(|s| s.print()), "streams500");
    }
    if all || which == Which::Burst {
        let n = if q { 20 } else { 50 };
        check(many_streams(n, false).map(|s| s.print()), "burst");
    }
    if all || which == Which::Rss10 {
        let settle = if q { 1 } else { 3 };
        check(rss_idle(10, settle).map(|s| s.print()), "rss10");
    }
    if all || which == Which::Startup {
        let rows = if q { 10_000 } else { 1_000_000 };
        for r in [0, rows] {
            check(
                startup(r, if q { 2 } else { 5 }).map(|s| s.print()),
                "startup",
            );
        }
    }
    if which == Which::Peer {
        check(peer::run(q, args.rounds), "peer");
    }
    println!("bench finished in {:.1} s", started.elapsed().as_secs_f64());
    if failed > 0 {
        return Err(format!("{failed} scenario(s) failed").into());
    }
    Ok(())
}

/// Where events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Another process doing INSERTs: found by the poller's `data_version` check.
    External,
    /// The hub's own Emitter: the writer nudges the poller.
    InProcess,
}

/// Runs an external-producer delivery scenario, and in seed mode the old design's too.
fn delivery_pair(
    name: &str,
    clients: usize,
    rate: f64,
    count: u64,
    seed: bool,
) -> Result<(), BoxError> {
    pair(seed, |p| {
        delivery(name, &p, clients, rate, count, Source::External)
    })
}

/// Runs a scenario with the normal parameters, and in seed mode with the old design's too;
/// prints both and the ratios.
fn pair(seed: bool, run: impl Fn(HubParams) -> Result<Summary, BoxError>) -> Result<(), BoxError> {
    let normal = run(HubParams::normal())?;
    normal.print();
    if seed {
        let mut old = run(HubParams::seed())?;
        old.mode = "seed";
        old.print();
        report::print_ratio(&old, &normal);
    }
    Ok(())
}

/// A fresh database and hub, `clients` streams, then `count` events at `rate`.
fn delivery(
    name: &str,
    params: &HubParams,
    clients: usize,
    rate: f64,
    count: u64,
    source: Source,
) -> Result<Summary, BoxError> {
    let (_dir, db, mut hub) = fresh_hub(params)?;
    let planned = Duration::from_secs_f64(count as f64 / rate);
    let target = format!("/api/events?last_event_id={}-0", stream_id(&db)?);
    let fleet = Fleet::connect(hub.addr, &target, clients, count, planned + SETTLE_WAIT * 4)?;
    fleet.wait_served(SETTLE_WAIT)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = hub.stats()?;
    let t0 = Instant::now();
    let (produced, emit_cpu) = match source {
        Source::External => {
            let p = ProducerChild::spawn(&db, rate, count)?.finish(planned * 3 + SETTLE_WAIT)?;
            if p.rows != count {
                return Err(format!("producer stored {} of {count} rows", p.rows).into());
            }
            (p, 0.0)
        }
        Source::InProcess => {
            hub.command(&format!("emit {rate} {count}"))?;
            let line = hub.expect_line("EMITTED", planned * 3 + SETTLE_WAIT)?;
            let cpu: f64 = line
                .split_whitespace()
                .nth(2)
                .ok_or("short EMITTED line")?
                .parse()?;
            (Produced::default(), cpu)
        }
    };
    fleet.wait_complete(SETTLE_WAIT);
    std::thread::sleep(DUP_GRACE);
    let after = hub.stats()?;
    let window = t0.elapsed().as_secs_f64();
    let seen = fleet.finish();
    hub.stop(HUB_STOP_WAIT)?;
    let mut s = Summary {
        rate_per_s: Some(rate),
        ..Summary::new(name)
    };
    s.add_clients(&seen, count);
    let cpu_s = (after.cpu_s - before.cpu_s - emit_cpu).max(0.0);
    s.add_hub(&after, cpu_s, window);
    if source == Source::External {
        s.producer_commit_p50_ms = Some(produced.commit_p50_us / 1000.0);
        s.producer_commit_p99_ms = Some(produced.commit_p99_us / 1000.0);
    }
    Ok(s)
}

/// S4: `clients` idle streams for `secs`: hub CPU and the longest gap between heartbeats.
fn idle_pair(clients: usize, secs: u64, heartbeat_secs: u64, seed: bool) -> Result<(), BoxError> {
    let heartbeat_ms = heartbeat_secs * 1000;
    pair(seed, |p| {
        idle(clients, secs, &HubParams { heartbeat_ms, ..p })
    })
}

fn idle(clients: usize, secs: u64, params: &HubParams) -> Result<Summary, BoxError> {
    let (_dir, _, hub) = fresh_hub(params)?;
    let window = Duration::from_secs(secs);
    let fleet = Fleet::connect(
        hub.addr,
        "/api/events",
        clients,
        0,
        window + SETTLE_WAIT * 2,
    )?;
    fleet.wait_served(SETTLE_WAIT)?;
    std::thread::sleep(Duration::from_millis(500));
    let before = hub.stats()?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after = hub.stats()?;
    let elapsed = t0.elapsed().as_secs_f64();
    let seen = fleet.finish();
    hub.stop(HUB_STOP_WAIT)?;
    let mut s = Summary {
        note: Some(format!("heartbeat {} ms", params.heartbeat_ms)),
        ..Summary::new("idle")
    };
    s.add_clients(&seen, 0);
    s.add_hub(&after, after.cpu_s - before.cpu_s, elapsed);
    Ok(s)
}

/// `n` streams at once: all served? memory, threads, and threads back to the baseline after
/// the clients leave (a 1 s heartbeat makes the hub notice departures quickly).
fn many_streams(n: usize, stagger: bool) -> Result<Summary, BoxError> {
    let params = HubParams {
        heartbeat_ms: 1000,
        max_clients: n + 100,
        ..HubParams::normal()
    };
    let (_dir, _, hub) = fresh_hub(&params)?;
    std::thread::sleep(Duration::from_millis(200));
    let baseline = hub.stats()?;
    let fleet = Fleet::connect_with(hub.addr, "/api/events", n, 0, SETTLE_WAIT * 3, stagger)?;
    let served = fleet.wait_served(if stagger { SETTLE_WAIT } else { BURST_WAIT });
    std::thread::sleep(Duration::from_secs(1));
    let held = hub.stats()?;
    let seen = fleet.finish();
    let left_at = Instant::now();
    let mut after = hub.stats()?;
    while after.threads > baseline.threads && left_at.elapsed() < SETTLE_WAIT {
        std::thread::sleep(Duration::from_millis(50));
        after = hub.stats()?;
    }
    let back_in = left_at.elapsed();
    hub.stop(HUB_STOP_WAIT)?;
    let mut s = Summary::new(&format!("{}{n}", if stagger { "streams" } else { "burst" }));
    s.add_clients(&seen, 0);
    s.heartbeat_gap_max_ms = None;
    s.add_hub(&held, 0.0, 0.0);
    s.threads_before = Some(baseline.threads);
    s.threads_after = Some(after.threads);
    s.note = Some(format!(
        "threads back to {} within {:.1} s of the clients leaving{}",
        after.threads,
        back_in.as_secs_f64(),
        served.err().map_or(String::new(), |e| format!("; {e}"))
    ));
    Ok(s)
}

/// RSS of a hub holding 10 idle streams.
fn rss_idle(clients: usize, settle_secs: u64) -> Result<Summary, BoxError> {
    let (_dir, _, hub) = fresh_hub(&HubParams::normal())?;
    let fleet = Fleet::connect(hub.addr, "/api/events", clients, 0, SETTLE_WAIT * 2)?;
    fleet.wait_served(SETTLE_WAIT)?;
    std::thread::sleep(Duration::from_secs(settle_secs));
    let held = hub.stats()?;
    let seen = fleet.finish();
    hub.stop(HUB_STOP_WAIT)?;
    let mut s = Summary::new(&format!("rss{clients}"));
    s.add_clients(&seen, 0);
    s.heartbeat_gap_max_ms = None;
    s.add_hub(&held, 0.0, 0.0);
    Ok(s)
}

/// Start-up to the first served request (`GET /health` answered 200), from process spawn,
/// over a database holding `rows` dispatched events; median and max of `runs`.
fn startup(rows: u64, runs: usize) -> Result<Summary, BoxError> {
    let dir = tempfile::Builder::new().prefix("bench-").tempdir()?;
    let db = dir.path().join("events.db");
    // The hub creates the schema; then the rows go in as already dispatched.
    HubChild::spawn(&db, &HubParams::normal(), HUB_START_WAIT)?.stop(HUB_STOP_WAIT)?;
    if rows > 0 {
        fill(&db, rows)?;
    }
    let db_bytes = std::fs::metadata(&db)?.len();
    let mut firsts = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..runs {
        let port = free_port()?;
        let params = HubParams {
            port,
            ..HubParams::normal()
        };
        let mut hub = HubChild::launch(&db, &params)?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let first = loop {
            if health_ok(addr) {
                break hub.spawned.elapsed();
            }
            if hub.spawned.elapsed() > HUB_START_WAIT {
                return Err("the hub did not answer /health in time".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        hub.ready(HUB_START_WAIT)?;
        firsts.push(first.as_secs_f64() * 1000.0);
        starts.push(hub.start_us as f64 / 1000.0);
        hub.stop(HUB_STOP_WAIT)?;
    }
    firsts.sort_by(f64::total_cmp);
    starts.sort_by(f64::total_cmp);
    let name = match rows {
        0 => "startup-empty".to_owned(),
        _ => format!("startup-{rows}"),
    };
    Ok(Summary {
        startup_ms: Some(round2(firsts[firsts.len() / 2])),
        startup_max_ms: firsts.last().copied().map(round2),
        hub_start_ms: Some(round2(starts[starts.len() / 2])),
        db_rows: Some(rows),
        db_mib: Some(round2(db_bytes as f64 / 1048576.0)),
        ..Summary::new(&name)
    })
}

/// A fresh database in a temp dir (removed when dropped) and a hub started on it.
fn fresh_hub(params: &HubParams) -> Result<(tempfile::TempDir, PathBuf, HubChild), BoxError> {
    let dir = tempfile::Builder::new().prefix("bench-").tempdir()?;
    let db = dir.path().join("events.db");
    let hub = HubChild::spawn(&db, params, HUB_START_WAIT)?;
    Ok((dir, db, hub))
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Inserts `rows` events as if already dispatched (seq and processed_at set), in one
/// transaction: the database a hub that ran for months would hold.
fn fill(db: &Path, rows: u64) -> Result<(), BoxError> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO sse_events (event_type, event_data, processed_at, seq, source) \
             VALUES ('image_captured', ?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?2, ?3)",
        )?;
        for i in 1..=i64::try_from(rows)? {
            let camera = i % 8 + 1;
            let data = format!(
                r#"{{"camera_id":{camera},"timelapse_id":{},"image_count":{i},"day_number":{}}}"#,
                camera + 100,
                i / 10_000
            );
            insert.execute(rusqlite::params![data, i, format!("camera-{camera}")])?;
        }
    }
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// One `GET /health` (ureq); true on a 200.
fn health_ok(addr: std::net::SocketAddr) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_millis(100)))
        .timeout_global(Some(Duration::from_secs(5))) // a hang guard
        .build()
        .into();
    let answer = agent.get(format!("http://{addr}/health")).call();
    answer.is_ok_and(|r| r.status() == 200)
}

/// The database's stream id, for a `<stream>-0` cursor (resume from the very start).
fn stream_id(db: &Path) -> Result<String, BoxError> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(conn.query_row(
        "SELECT value FROM hub_meta WHERE key = 'stream_id'",
        [],
        |r| r.get(0),
    )?)
}

/// The clients of one run, each on its own thread.
struct Fleet {
    handles: Vec<JoinHandle<Seen>>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl Fleet {
    fn connect(
        addr: std::net::SocketAddr,
        target: &str,
        n: usize,
        expect: u64,
        limit: Duration,
    ) -> Result<Fleet, BoxError> {
        Fleet::connect_with(addr, target, n, expect, limit, true)
    }

    /// `stagger`: each client connects once the one before it was served. Without it, all
    /// connect at once, which tiny_http 0.12's task pool does not survive: its `spawn`
    /// counts a thread as idle until that thread has woken up, so a burst of connections
    /// queues tasks behind threads that are about to take a stream for life; those
    /// connections are accepted but never read (measured: 4 of 30 served, Recv-Q full).
    fn connect_with(
        addr: std::net::SocketAddr,
        target: &str,
        n: usize,
        expect: u64,
        limit: Duration,
        stagger: bool,
    ) -> Result<Fleet, BoxError> {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let deadline = Instant::now() + limit;
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let spec = Spec {
                addr,
                target: target.to_owned(),
                expect,
                stop: stop.clone(),
                deadline,
                progress: progress.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("client-{i}"))
                .stack_size(CLIENT_STACK_BYTES)
                .spawn(move || client::run(&spec));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(format!("cannot start client {i}: {e}").into());
                }
            }
            if stagger {
                // See Connect::Staggered: wait for this one before the next connects.
                let until = Instant::now() + STAGGER_WAIT;
                while progress.served.load(Ordering::SeqCst) + progress.ended.load(Ordering::SeqCst)
                    <= i as u64
                    && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        Ok(Fleet {
            handles,
            stop,
            progress,
        })
    }

    fn count(&self, f: impl Fn(&Progress) -> &std::sync::atomic::AtomicU64) -> usize {
        usize::try_from(f(&self.progress).load(Ordering::SeqCst)).unwrap_or(usize::MAX)
    }

    /// Waits until every client got its prelude (or gave up).
    fn wait_served(&self, wait: Duration) -> Result<(), BoxError> {
        let deadline = Instant::now() + wait;
        let n = self.handles.len();
        while self.count(|p| &p.served) < n {
            if Instant::now() >= deadline || self.count(|p| &p.ended) > 0 {
                return Err(format!(
                    "{} of {n} clients served within {wait:?}",
                    self.count(|p| &p.served)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until every client has every event (or `wait` passes).
    fn wait_complete(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let n = self.handles.len();
        while self.count(|p| &p.complete) < n
            && self.count(|p| &p.ended) == 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Hangs every client up and collects what each saw.
    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Seen {
                    error: Some("client thread panicked".into()),
                    ..Seen::default()
                })
            })
            .collect()
    }
}
