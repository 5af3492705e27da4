//! `bench peer` (issue #17): the same scenarios against the hub and against nginx + nchan
//! (Debian's `nginx-light` and `libnginx-mod-nchan`, configured by `nginx-nchan.conf.tmpl`
//! beside this file), interleaved (hub, nchan, hub, nchan… for `--rounds` rounds), with the
//! same clients and the same HTTP POST producer for both: one kept-alive connection POSTing
//! `{"type": "bench", "data": {"n": …, "t": …}}` to the hub's `POST /api/events` and to
//! nchan's `POST /pub`, `t` taken just before each POST. Every run gets a fresh server (the
//! hub a fresh database). What is measured is the server's process, from /proc: the hub's,
//! and nchan's worker (its master only waits for signals): CPU, RSS, threads, descriptors
//! and voluntary context switches (wake-ups) of every thread. Prints each run, then a table
//! of the medians and the hub/nchan ratios. Where nginx or the module is missing, the nchan
//! side is skipped with a message and the hub's runs alone are made.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{HubChild, HubParams};
use crate::cli::BoxError;
use crate::client::unix_nanos;
use crate::procfs::ProcStats;
use crate::report::Summary;
use crate::{DUP_GRACE, Fleet, HUB_START_WAIT, HUB_STOP_WAIT, SETTLE_WAIT};

/// The configuration the issue's figures came from; `@DIR@` and `@PORT@` are filled in.
const TEMPLATE: &str = include_str!("nginx-nchan.conf.tmpl");
/// Where Debian's `libnginx-mod-nchan` puts the module the template loads.
const NCHAN_MODULE: &str = "/usr/share/nginx/modules/ngx_nchan_module.so";
/// Both servers' keep-alive interval (the template's `nchan_eventsource_ping_interval`).
const HEARTBEAT_MS: u64 = 15_000;
/// How long nginx may take to listen and start its worker (hang guard).
const NGINX_START_WAIT: Duration = Duration::from_secs(10);

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hub,
    Nchan,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Hub => "hub",
            Kind::Nchan => "nchan",
        }
    }
}

/// What a scenario does to the server.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// `clients` streams, then `count` events POSTed at `rate` per second.
    Delivery {
        clients: usize,
        rate: f64,
        count: u64,
    },
    /// `clients` streams and no events for `secs`.
    Idle { clients: usize, secs: u64 },
    /// `n` open streams: memory, threads and descriptors each adds.
    Streams { n: usize },
}

struct Scenario {
    name: String,
    load: Load,
}

impl Scenario {
    fn new(name: impl Into<String>, load: Load) -> Scenario {
        Scenario {
            name: name.into(),
            load,
        }
    }
}

/// The issue's scenarios, or a small run of each for tests.
fn scenarios(quick: bool) -> Vec<Scenario> {
    let delivery = |clients, rate, count| Load::Delivery {
        clients,
        rate,
        count,
    };
    if quick {
        return vec![
            Scenario::new("peer-1x100", delivery(1, 100.0, 40)),
            Scenario::new("peer-5x500", delivery(5, 500.0, 200)),
            Scenario::new(
                "peer-idle5",
                Load::Idle {
                    clients: 5,
                    secs: 2,
                },
            ),
            Scenario::new("peer-streams20", Load::Streams { n: 20 }),
        ];
    }
    vec![
        Scenario::new("peer-1x20", delivery(1, 20.0, 200)),
        Scenario::new("peer-100x20", delivery(100, 20.0, 200)),
        Scenario::new("peer-20x1000", delivery(20, 1000.0, 10_000)),
        Scenario::new("peer-200x200", delivery(200, 200.0, 2_000)),
        Scenario::new(
            "peer-idle100",
            Load::Idle {
                clients: 100,
                secs: 30,
            },
        ),
        Scenario::new("peer-streams1000", Load::Streams { n: 1000 }),
        Scenario::new("peer-streams2000", Load::Streams { n: 2000 }),
    ]
}

/// Runs every scenario `rounds` times against each server, interleaved, and prints each run
/// and then the table of medians and ratios.
pub fn run(quick: bool, rounds: usize) -> Result<(), BoxError> {
    let kinds: &[Kind] = match nchan_missing() {
        None => &[Kind::Hub, Kind::Nchan],
        Some(why) => {
            println!(
                "peer: the nginx + nchan side is skipped: {why} (Debian: apt-get install \
                 nginx-light libnginx-mod-nchan); running the hub's side alone"
            );
            &[Kind::Hub]
        }
    };
    let rounds = if quick { 1 } else { rounds.max(1) };
    let list = scenarios(quick);
    let mut runs: Vec<(usize, Kind, Summary)> = Vec::new();
    for (i, scenario) in list.iter().enumerate() {
        for _ in 0..rounds {
            for &kind in kinds {
                let s = run_one(scenario, kind)
                    .map_err(|e| format!("{} against {}: {e}", scenario.name, kind.name()))?;
                s.print();
                runs.push((i, kind, s));
            }
        }
    }
    print_table(&list, &runs, rounds);
    Ok(())
}

/// Why the nchan side cannot run here, if it cannot.
fn nchan_missing() -> Option<String> {
    let version = Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !version.is_ok_and(|s| s.success()) {
        return Some("no `nginx` on PATH".into());
    }
    if !Path::new(NCHAN_MODULE).exists() {
        return Some(format!("no nchan module at {NCHAN_MODULE}"));
    }
    None
}

fn run_one(scenario: &Scenario, kind: Kind) -> Result<Summary, BoxError> {
    let max_clients = match scenario.load {
        Load::Delivery { clients, .. } | Load::Idle { clients, .. } => clients,
        Load::Streams { n } => n,
    } + 100;
    let server = Server::start(kind, max_clients)?;
    let mut s = match scenario.load {
        Load::Delivery {
            clients,
            rate,
            count,
        } => delivery(&server, &scenario.name, clients, rate, count),
        Load::Idle { clients, secs } => idle(&server, &scenario.name, clients, secs),
        Load::Streams { n } => streams(&server, &scenario.name, n),
    }?;
    server.stop()?;
    s.mode = kind.name();
    Ok(s)
}

/// A running server: the hub as a bench child, or nginx's master with its one worker.
struct Server {
    kind: Kind,
    addr: SocketAddr,
    /// The process measured: the hub, or nchan's worker.
    pid: u32,
    running: Running,
}

enum Running {
    Hub {
        hub: HubChild,
        _dir: tempfile::TempDir,
    },
    Nchan(Nginx),
}

impl Server {
    fn start(kind: Kind, max_clients: usize) -> Result<Server, BoxError> {
        match kind {
            Kind::Hub => {
                let dir = tempfile::Builder::new().prefix("bench-").tempdir()?;
                let params = HubParams {
                    heartbeat_ms: HEARTBEAT_MS,
                    max_clients,
                    ..HubParams::normal()
                };
                let hub = HubChild::spawn(&dir.path().join("events.db"), &params, HUB_START_WAIT)?;
                Ok(Server {
                    kind,
                    addr: hub.addr,
                    pid: hub.pid,
                    running: Running::Hub { hub, _dir: dir },
                })
            }
            Kind::Nchan => {
                let nginx = Nginx::start()?;
                Ok(Server {
                    kind,
                    addr: nginx.addr,
                    pid: nginx.worker,
                    running: Running::Nchan(nginx),
                })
            }
        }
    }

    /// Where subscribers connect.
    fn stream_target(&self) -> &'static str {
        match self.kind {
            Kind::Hub => "/api/events",
            Kind::Nchan => "/sub",
        }
    }

    /// Where the producer POSTs.
    fn publish_url(&self) -> String {
        let path = match self.kind {
            Kind::Hub => "/api/events",
            Kind::Nchan => "/pub",
        };
        format!("http://{}{path}", self.addr)
    }

    fn stop(self) -> Result<(), BoxError> {
        match self.running {
            Running::Hub { hub, _dir } => hub.stop(HUB_STOP_WAIT),
            Running::Nchan(nginx) => nginx.stop(),
        }
    }
}

/// `nginx -c <dir>/nginx.conf -p <dir>/` in the foreground (`daemon off`), from the template,
/// on a port of its own; stopped (SIGTERM to the master, then SIGKILL) when dropped.
struct Nginx {
    master: Child,
    worker: u32,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Result<Nginx, BoxError> {
        let dir = tempfile::Builder::new().prefix("bench-nchan-").tempdir()?;
        std::fs::create_dir(dir.path().join("logs"))?;
        std::fs::create_dir(dir.path().join("tmp"))?;
        let port = crate::free_port()?;
        let root = dir.path().to_str().ok_or("temp dir is not UTF-8")?;
        let conf = TEMPLATE
            .replace("@DIR@", root)
            .replace("@PORT@", &port.to_string());
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let master = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(format!("{root}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut nginx = Nginx {
            worker: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            master,
            dir,
        };
        let deadline = Instant::now() + NGINX_START_WAIT;
        loop {
            if let Some(status) = nginx.master.try_wait()? {
                let log = std::fs::read_to_string(nginx.dir.path().join("logs/error.log"))
                    .unwrap_or_default();
                return Err(format!("nginx exited with {status}: {log}").into());
            }
            if nginx.worker == 0 {
                nginx.worker = child_of(nginx.master.id()).unwrap_or(0);
            }
            let listening =
                std::net::TcpStream::connect_timeout(&nginx.addr, Duration::from_millis(100))
                    .is_ok();
            if nginx.worker != 0 && listening {
                return Ok(nginx);
            }
            if Instant::now() >= deadline {
                return Err(format!("nginx not serving within {NGINX_START_WAIT:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> Result<(), BoxError> {
        self.end()
    }

    /// SIGTERM to the master (it stops its worker), SIGKILL after 5 s.
    fn end(&mut self) -> Result<(), BoxError> {
        if self.master.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.master.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or("nginx's pid")?;
        // It may have exited in between; the wait below tells.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.master.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = self.master.kill(); // it may exit by itself in between
                let _ = self.master.wait(); // reaps it
                return Err("nginx did not stop within 5 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            eprintln!("peer: {e}");
        }
    }
}

/// A process whose parent is `parent` (nginx's one worker).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name: state, then the parent's pid.
        let (_, rest) = stat.rsplit_once(')')?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// One reading of the measured process: /proc/<pid>'s figures, its descriptors, and the
/// voluntary context switches of each of its threads (a thread that blocks and is woken
/// again counts one).
struct Sample {
    stats: ProcStats,
    fds: u64,
    /// Thread name (trailing digits as `N`) to (threads, voluntary switches so far).
    switches: BTreeMap<String, (u64, u64)>,
}

impl Sample {
    fn read(pid: u32) -> Result<Sample, BoxError> {
        let stats = ProcStats::read(pid)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        let mut switches = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let dir = task?.path();
            // A thread may end while it is read: it no longer counts.
            let (Ok(comm), Ok(status)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            let voluntary: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let name = comm
                .trim_end()
                .trim_end_matches(|c: char| c.is_ascii_digit());
            let name = if name.len() < comm.trim_end().len() {
                format!("{name}N")
            } else {
                name.to_owned()
            };
            let e = switches.entry(name).or_insert((0, 0));
            e.0 += 1;
            e.1 += voluntary;
        }
        Ok(Sample {
            stats,
            fds,
            switches,
        })
    }

    fn total_switches(&self) -> u64 {
        self.switches.values().map(|&(_, s)| s).sum()
    }
}

/// Wake-ups per second between two samples, in all, and by thread name (largest first).
fn wakeups(before: &Sample, after: &Sample, secs: f64) -> (f64, String) {
    let total = after
        .total_switches()
        .saturating_sub(before.total_switches()) as f64
        / secs;
    let mut by_name: Vec<(String, u64, f64)> = after
        .switches
        .iter()
        .map(|(name, &(threads, s))| {
            let was = before.switches.get(name).map_or(0, |&(_, s)| s);
            (name.clone(), threads, s.saturating_sub(was) as f64 / secs)
        })
        .filter(|(_, _, per_s)| *per_s > 0.0)
        .collect();
    by_name.sort_by(|a, b| b.2.total_cmp(&a.2));
    let by_name = by_name
        .iter()
        .map(|(name, threads, per_s)| format!("{name} x{threads} {per_s:.2}/s"))
        .collect::<Vec<_>>()
        .join(", ");
    (total, by_name)
}

/// POSTs `count` events at `rate` to `url` over one kept-alive connection; returns each
/// POST's time to its answer, in ns, sorted.
fn produce(url: &str, rate: f64, count: u64) -> Result<Vec<u64>, BoxError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10))) // a hang guard
        .build()
        .into();
    let mut took = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    crate::roles::pace(rate, count, |n| {
        let body = format!(
            r#"{{"type":"bench","data":{{"n":{n},"t":{}}}}}"#,
            unix_nanos()
        );
        let t0 = Instant::now();
        let mut answer = agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.as_str())?;
        // Read to the end, so that the connection is reused.
        answer.body_mut().read_to_vec()?;
        took.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
        Ok::<(), ureq::Error>(())
    })?;
    took.sort_unstable();
    Ok(took)
}

fn delivery(
    server: &Server,
    name: &str,
    clients: usize,
    rate: f64,
    count: u64,
) -> Result<Summary, BoxError> {
    let planned = Duration::from_secs_f64(count as f64 / rate);
    let target = server.stream_target();
    let fleet = Fleet::connect(
        server.addr,
        target,
        clients,
        count,
        planned * 3 + SETTLE_WAIT * 4,
    )?;
    fleet.wait_served(SETTLE_WAIT)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = Sample::read(server.pid)?;
    let t0 = Instant::now();
    let posts = produce(&server.publish_url(), rate, count)?;
    fleet.wait_complete(SETTLE_WAIT);
    std::thread::sleep(DUP_GRACE);
    let after = Sample::read(server.pid)?;
    let window = t0.elapsed().as_secs_f64();
    let seen = fleet.finish();
    let mut s = Summary {
        rate_per_s: Some(rate),
        ..Summary::new(name)
    };
    s.add_clients(&seen, count);
    let cpu_s = after.stats.cpu_s - before.stats.cpu_s;
    s.add_hub(&after.stats, cpu_s, window);
    if s.deliveries > 0 {
        s.cpu_us_per_delivery = Some(round2(cpu_s * 1e6 / s.deliveries as f64));
    }
    s.wakeups_per_s = Some(round2(wakeups(&before, &after, window).0));
    s.fds = Some(after.fds);
    // The producer's figures here are each POST's round trip.
    let q = |p: f64| crate::report::pct(&posts, p) as f64 / 1e6;
    s.producer_commit_p50_ms = Some(round2(q(0.50)));
    s.producer_commit_p99_ms = Some(round2(q(0.99)));
    Ok(s)
}

fn idle(server: &Server, name: &str, clients: usize, secs: u64) -> Result<Summary, BoxError> {
    let window = Duration::from_secs(secs);
    let target = server.stream_target();
    let fleet = Fleet::connect(server.addr, target, clients, 0, window + SETTLE_WAIT * 2)?;
    fleet.wait_served(SETTLE_WAIT)?;
    std::thread::sleep(Duration::from_millis(500));
    let before = Sample::read(server.pid)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after = Sample::read(server.pid)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let seen = fleet.finish();
    let mut s = Summary::new(name);
    s.add_clients(&seen, 0);
    s.heartbeat_gap_max_ms = None; // a 15 s keep-alive may not fall inside the window
    s.add_hub(
        &after.stats,
        after.stats.cpu_s - before.stats.cpu_s,
        elapsed,
    );
    let (total, by_name) = wakeups(&before, &after, elapsed);
    s.wakeups_per_s = Some(round2(total));
    s.fds = Some(after.fds);
    s.note = Some(format!(
        "keep-alive every {HEARTBEAT_MS} ms; wake-ups by thread: {by_name}"
    ));
    Ok(s)
}

fn streams(server: &Server, name: &str, n: usize) -> Result<Summary, BoxError> {
    std::thread::sleep(Duration::from_millis(200));
    let baseline = Sample::read(server.pid)?;
    let t0 = Instant::now();
    let target = server.stream_target();
    let fleet = Fleet::connect(server.addr, target, n, 0, SETTLE_WAIT * 6)?;
    let served = fleet.wait_served(SETTLE_WAIT * 4);
    let connect_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let held = Sample::read(server.pid)?;
    let seen = fleet.finish();
    let mut s = Summary::new(name);
    s.add_clients(&seen, 0);
    s.heartbeat_gap_max_ms = None;
    s.add_hub(&held.stats, 0.0, 0.0);
    s.fds = Some(held.fds);
    let per = |held: u64, base: u64| round2((held as f64 - base as f64) / n as f64);
    s.threads_per_stream = Some(per(held.stats.threads, baseline.stats.threads));
    s.fds_per_stream = Some(per(held.fds, baseline.fds));
    s.rss_kib_per_stream = Some(per(held.stats.rss_kib, baseline.stats.rss_kib));
    s.threads_before = Some(baseline.stats.threads);
    s.note = Some(format!(
        "all connected (one after another) in {connect_s:.2} s; baseline RSS {:.1} MiB{}",
        baseline.stats.rss_kib as f64 / 1024.0,
        served.err().map_or(String::new(), |e| format!("; {e}"))
    ));
    Ok(s)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

type Metric = (&'static str, fn(&Summary) -> Option<f64>);

/// The figures the table shows for a load.
fn metrics(load: Load) -> Vec<Metric> {
    match load {
        Load::Delivery { .. } => vec![
            ("p50 ms", |s| s.p50_ms),
            ("p99 ms", |s| s.p99_ms),
            ("max ms", |s| s.max_ms),
            ("CPU % of a core", |s| Some(s.hub_cpu_pct)),
            ("CPU µs per delivered event", |s| s.cpu_us_per_delivery),
            ("wake-ups/s", |s| s.wakeups_per_s),
        ],
        Load::Idle { .. } => vec![
            ("CPU % of a core", |s| Some(s.hub_cpu_pct)),
            ("wake-ups/s", |s| s.wakeups_per_s),
            ("RSS MiB", |s| Some(s.rss_mib)),
        ],
        Load::Streams { .. } => vec![
            ("RSS MiB", |s| Some(s.rss_mib)),
            ("threads per stream", |s| s.threads_per_stream),
            ("fds per stream", |s| s.fds_per_stream),
            ("RSS KiB per stream", |s| s.rss_kib_per_stream),
        ],
    }
}

fn print_table(list: &[Scenario], runs: &[(usize, Kind, Summary)], rounds: usize) {
    println!();
    println!(
        "medians of {rounds} interleaved round(s); hub/nchan ratio (lower is better for the hub)"
    );
    println!("| scenario | figure | hub | nginx + nchan | hub/nchan |");
    println!("| --- | --- | --- | --- | --- |");
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    for (i, scenario) in list.iter().enumerate() {
        let of = |kind: Kind| runs.iter().filter(move |(j, k, _)| *j == i && *k == kind);
        for (label, get) in metrics(scenario.load) {
            let hub = median(of(Kind::Hub).filter_map(|(_, _, s)| get(s)).collect());
            let nchan = median(of(Kind::Nchan).filter_map(|(_, _, s)| get(s)).collect());
            let ratio = match (hub, nchan) {
                (Some(h), Some(n)) if n > 0.0 => format!("{:.1}×", h / n),
                _ => "-".to_owned(),
            };
            println!(
                "| {} | {label} | {} | {} | {ratio} |",
                scenario.name,
                fmt(hub),
                fmt(nchan)
            );
        }
    }
    for kind in [Kind::Hub, Kind::Nchan] {
        let mine: Vec<&Summary> = runs
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(_, _, s)| s)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let sum = |f: fn(&Summary) -> u64| mine.iter().map(|s| f(s)).sum::<u64>();
        println!(
            "{}: {} runs, lost {}, duplicated {}, out of order {}, unexpected {}, client errors {}",
            kind.name(),
            mine.len(),
            sum(|s| s.lost),
            sum(|s| s.duplicated),
            sum(|s| s.out_of_order),
            sum(|s| s.unexpected),
            sum(|s| s.client_errors),
        );
    }
}
