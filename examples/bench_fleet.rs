//! Fleet scale benchmark (not a test): camera hosts publishing through one Mosquitto into one
//! fleet hub (`serve --mqtt-subscribe`) with 100 stream clients. Prints the events/s the
//! clients got, end-to-end latency p50/p99/max over every client's receipts, loss and
//! duplicates per client, and the fleet hub's CPU, peak RSS and threads.
//!
//! `cargo run --release --example bench_fleet [HOSTS] [CAMERAS] [RATE] [SECS]`
//! (defaults 50 4 1 30): HOSTS camera hosts of CAMERAS cameras, each camera one
//! `image_captured` every 1/RATE s for SECS s, then a burst of 10× that rate for SECS/3 s.
//!
//! Two of the hosts are real: `timelapse-events serve --mqtt` processes (the release binary,
//! built first when run by cargo), their events written into their databases with
//! [`Emitter`](timelapse_events::Emitter), `"t"` taken just before the commit; their figure
//! is a true camera-host commit → fleet client latency. The others are simulated: a thread
//! per host speaks MQTT 3.1.1 itself (CONNECT, then PUBLISH at QoS 1, PUBACKs read without
//! waiting) with payloads in the MQTT sink's format; their `"t"` is the moment the host
//! publishes. A thread is the cheaper host: about 64 µs of CPU a message, the payload's
//! making included, where 48 `mosquitto_pub -l` processes took 77–96 µs a message (at 40 and
//! 4 a second each) without the writer feeding their stdin, and 200 MiB of RSS together. And
//! neither is a hub: 50 hub processes would measure the two cores' contention, not the fleet
//! hub.
//!
//! The broker (its own, `set_tcp_nodelay true`, queue unbounded), the hosts, the clients and
//! the fleet hub share the machine: a latency includes the client thread's own scheduling.
//! Needs `mosquitto` installed (not running); without it, it says so and exits 0.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/procfs.rs"]
mod procfs;
#[allow(dead_code)] // the incremental Parser, Dechunker and Head only
#[path = "common/sse.rs"]
mod sse;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use timelapse_events::{Emitter, NewEvent};

use cli::BoxError;
use procfs::ProcStats;

/// Stream clients on the fleet hub.
const CLIENTS: usize = 100;
/// Hosts that are real hub processes (of HOSTS).
const REAL_HOSTS: usize = 2;
/// The burst's rate, as a multiple of RATE.
const BURST: f64 = 10.0;
/// How long the clients may take to get everything after the last publish (hang guard).
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// How long the clients keep reading once complete, for a late duplicate.
const DUP_WATCH: Duration = Duration::from_secs(1);
/// Hang guard for a hub's start, the broker's answers and the fleet's subscription.
const START_WAIT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut next = |d: f64| args.next().and_then(|a| a.parse().ok()).unwrap_or(d);
    let plan = Plan {
        hosts: (next(50.0) as usize).max(1),
        cameras: (next(4.0) as usize).max(1),
        rate: next(1.0).max(0.01),
        secs: next(30.0).max(1.0),
    };
    if Command::new(mosquitto_bin())
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        println!("bench_fleet: skipped, mosquitto is not installed");
        return ExitCode::SUCCESS;
    }
    cli::exit(run(&plan))
}

/// What to publish: every camera the same number of events, spread evenly between cameras.
struct Plan {
    hosts: usize,
    cameras: usize,
    rate: f64,
    secs: f64,
}

impl Plan {
    fn burst_secs(&self) -> f64 {
        self.secs / 3.0
    }
    /// Events of one camera before the burst.
    fn steady(&self) -> u32 {
        (self.rate * self.secs).round() as u32
    }
    fn per_camera(&self) -> u32 {
        self.steady() + (self.rate * BURST * self.burst_secs()).round() as u32
    }
    fn real(&self) -> usize {
        REAL_HOSTS.min(self.hosts)
    }
    fn total(&self) -> u64 {
        (self.hosts * self.cameras) as u64 * u64::from(self.per_camera())
    }
    fn host_name(&self, h: usize) -> String {
        if h < self.real() {
            format!("real-{}", h + 1)
        } else {
            format!("sim-{:02}", h + 1 - self.real())
        }
    }
    /// Host `h`'s events in time order: (due after the start, camera id, n).
    fn schedule(&self, h: usize) -> Vec<(Duration, u32, u32)> {
        let all = (self.hosts * self.cameras) as f64;
        let mut out = Vec::new();
        for c in 0..self.cameras {
            // Camera k of all starts k/all of a period late: the load is even, not in steps.
            let offset = (h * self.cameras + c) as f64 / all / self.rate;
            for n in 0..self.per_camera() {
                let at = if n < self.steady() {
                    offset + f64::from(n) / self.rate
                } else {
                    let j = f64::from(n - self.steady());
                    self.secs + (offset + j / self.rate) / BURST
                };
                out.push((Duration::from_secs_f64(at), c as u32 + 1, n));
            }
        }
        out.sort_unstable();
        out
    }
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// This thread's CPU seconds so far, to the nanosecond (`/proc/<pid>/stat` counts in 10 ms
/// ticks, more than a simulated host uses in a short run).
fn thread_cpu_s() -> Result<f64, BoxError> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = text
        .split_whitespace()
        .next()
        .ok_or("empty schedstat")?
        .parse()?;
    Ok(ns as f64 / 1e9)
}

fn sleep_until(t: Instant) {
    if let Some(wait) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

fn mosquitto_bin() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// A child process of ours, killed and reaped when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill(); // ours; it may have gone already
        let _ = self.0.wait();
    }
}

fn broker(dir: &Path) -> Result<(Proc, u16), BoxError> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nset_tcp_nodelay true\n"
        ),
    )?;
    let b = Proc(
        Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let until = Instant::now() + START_WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            return Err("mosquitto did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((b, port))
}

/// The hub binary beside this example (target/<profile>/examples/..), built first when cargo
/// runs us, so that it is never stale.
fn hub_binary() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot place the hub binary")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--bin", "timelapse-events"]);
        build.args([
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        if !build.status()?.success() {
            return Err("cargo build --bin timelapse-events failed".into());
        }
    }
    let bin = profile_dir.join("timelapse-events");
    if !bin.exists() {
        return Err(format!("{} is missing: cargo build --release first", bin.display()).into());
    }
    Ok(bin)
}

/// A hub process: `serve --db <db> --bind 127.0.0.1:0 <extra>`, and its address.
fn hub(bin: &Path, db: &Path, extra: &[&str]) -> Result<(Proc, SocketAddr), BoxError> {
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--bind", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let p = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log to the end, so that the hub never blocks on a full pipe.
    std::thread::Builder::new()
        .name("hub-log".into())
        .spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(Ok(addr)) = rest.split_whitespace().next().map(str::parse)
                {
                    let _ = tx.send(addr);
                }
            }
        })?;
    let addr = rx
        .recv_timeout(START_WAIT)
        .map_err(|_| format!("the hub on {} did not start", db.display()))?;
    Ok((p, addr))
}

/// A GET's JSON body (`Connection: close`).
fn get_json(addr: SocketAddr, path: &str) -> Result<Value, BoxError> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::new(s);
    let head = sse::Head::read(&mut r)?;
    let mut body = Vec::new();
    r.read_to_end(&mut body)?;
    if head.chunked() {
        body = sse::Dechunker::default().feed(&body)?;
    }
    Ok(serde_json::from_slice(&body)?)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> Result<(), BoxError> {
    let until = Instant::now() + START_WAIT;
    while !ok() {
        if Instant::now() > until {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A simulated camera host: MQTT 3.1.1, just what the MQTT sink sends.

fn mqtt_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet: fixed header byte, remaining length (variable-length integer), body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// PUBLISH at QoS 1 (`retain` for the availability).
fn publish(topic: &str, id: u16, payload: &[u8], retain: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    mqtt_string(&mut body, topic.as_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(payload);
    packet(0x32 | u8::from(retain), &body)
}

struct SimHost {
    name: String,
    log_id: u32,
    stream: TcpStream,
    next_id: u16,
    sent: u64,
    /// PUBACK bytes read (4 a PUBACK; nothing else comes: we subscribe to nothing).
    acked_bytes: u64,
}

impl SimHost {
    /// Connects (clean session, no keep-alive: the run is short) and says it is online.
    fn connect(port: u16, name: String, log_id: u32) -> Result<SimHost, BoxError> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(START_WAIT))?;
        let mut body = Vec::new();
        mqtt_string(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 0]); // level 4, clean session, keep-alive off
        mqtt_string(&mut body, format!("bench-fleet-{name}").as_bytes());
        stream.write_all(&packet(0x10, &body))?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack)?;
        if connack != [0x20, 2, 0, 0] {
            return Err(format!("{name}: the broker refused the connection: {connack:?}").into());
        }
        let mut host = SimHost {
            name,
            log_id,
            stream,
            next_id: 0,
            sent: 0,
            acked_bytes: 0,
        };
        let topic = format!("timelapse/{}/availability", host.name);
        host.send(&topic, b"online", true)?;
        Ok(host)
    }

    fn send(&mut self, topic: &str, payload: &[u8], retain: bool) -> Result<(), BoxError> {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.stream
            .write_all(&publish(topic, self.next_id, payload, retain))?;
        self.sent += 1;
        Ok(())
    }

    /// Reads the PUBACKs that are there, without waiting.
    fn drain_acks(&mut self) -> Result<(), BoxError> {
        let mut buf = [0u8; 4096];
        loop {
            match rustix::net::recv(&self.stream, &mut buf[..], rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Err(format!("{}: the broker hung up", self.name).into()),
                Ok((n, _)) => self.acked_bytes += n as u64,
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The events of `schedule`, each published when due with `"t"` the moment it is; then
    /// every PUBACK waited for. Returns the events published and the thread's CPU seconds.
    fn run(
        mut self,
        start: Instant,
        schedule: &[(Duration, u32, u32)],
    ) -> Result<(u64, f64), BoxError> {
        let mut seq: i64 = 0;
        for &(due, camera, n) in schedule {
            sleep_until(start + due);
            seq += 1;
            let timestamp = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            // The sink's payload: the envelope (id = seq in a log that only grows) plus host
            // and cursor.
            let payload = json!({
                "id": seq,
                "type": "image_captured",
                "data": {"camera_id": camera, "image_count": n, "n": n, "t": unix_nanos()},
                "priority": "normal",
                "source": format!("camera-{camera}"),
                "timestamp": timestamp,
                "host": self.name,
                "cursor": format!("{:08x}-{seq}", self.log_id),
            })
            .to_string();
            let topic = format!("timelapse/{}/events/image_captured", self.name);
            self.send(&topic, payload.as_bytes(), false)?;
            self.drain_acks()?;
        }
        let mut buf = [0u8; 4096];
        while self.acked_bytes < 4 * self.sent {
            let n = self.stream.read(&mut buf)?; // START_WAIT's timeout
            if n == 0 {
                return Err(format!("{}: the broker hung up", self.name).into());
            }
            self.acked_bytes += n as u64;
        }
        // Less the availability.
        Ok((self.sent - 1, thread_cpu_s()?))
    }
}

/// A real camera host's capture programs: its events into its database, `"t"` just before
/// each commit. Returns the events written and the thread's CPU seconds.
fn real_host(
    db: &Path,
    start: Instant,
    schedule: &[(Duration, u32, u32)],
) -> Result<(u64, f64), BoxError> {
    let em = Emitter::open(db)?;
    for &(due, camera, n) in schedule {
        sleep_until(start + due);
        em.emit(
            NewEvent::new(
                "image_captured",
                json!({"camera_id": camera, "image_count": n, "n": n, "t": unix_nanos()}),
            )
            .with_source(format!("camera-{camera}")),
        )?;
    }
    Ok((schedule.len() as u64, thread_cpu_s()?))
}

// ---------------------------------------------------------------------------------------
// A stream client of the fleet hub.

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Receipts of each (host, camera, n), flat: [(host * cameras + camera - 1) * per_camera + n].
    counts: Vec<u8>,
    /// Receipts of no event we published (unknown host or camera, n out of range).
    strays: u64,
    /// Latencies (µs) of [real, simulated] hosts' events, [steady, burst].
    lat: [[Vec<u32>; 2]; 2],
    /// When (unix ns) the last event of [steady, burst] arrived.
    last_at: [i64; 2],
}

/// The number after `key` (e.g. `"n":`) in a compact JSON text.
fn number_after(s: &str, key: &str) -> Option<i64> {
    let rest = &s[s.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn host_of(s: &str) -> Option<&str> {
    let key = "\"host\":\"";
    let rest = &s[s.find(key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

struct Client {
    reader: BufReader<TcpStream>,
    chunks: Option<sse::Dechunker>,
}

/// Connects, resuming from the start of the fleet's log (nothing is lost to a subscription
/// still under way), and reads the response head.
fn connect_client(addr: SocketAddr, stream_id: &str) -> Result<Client, BoxError> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
         Last-Event-ID: {stream_id}-0\r\n\r\n"
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::with_capacity(64 * 1024, s);
    let head = sse::Head::read(&mut reader)?;
    if head.status != 200 {
        return Err(format!("the fleet hub answered the stream with {}", head.status).into());
    }
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(Client {
        chunks: head.chunked().then(sse::Dechunker::default),
        reader,
    })
}

struct Shape {
    hosts: HashMap<String, usize>,
    real: usize,
    cameras: usize,
    per_camera: u32,
    steady: u32,
}

fn read_client(
    mut c: Client,
    shape: &Shape,
    got: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Seen, BoxError> {
    let mut seen = Seen {
        counts: vec![0; shape.hosts.len() * shape.cameras * shape.per_camera as usize],
        ..Seen::default()
    };
    let mut parser = sse::Parser::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut checked = false;
    while !stop.load(Relaxed) {
        let k = match c.reader.read(&mut buf) {
            Ok(0) => return Err("the fleet hub ended a stream".into()),
            Ok(k) => k,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let body = match c.chunks.as_mut() {
            Some(d) => d.feed(&buf[..k])?,
            None => buf[..k].to_vec(),
        };
        for item in parser.feed(&body) {
            let sse::Item::Message(m) = item else {
                continue;
            };
            let now = unix_nanos();
            let d = &m.data;
            let (host, camera, n, t) = (
                host_of(d).and_then(|h| shape.hosts.get(h)).copied(),
                number_after(d, "\"camera_id\":"),
                number_after(d, "\"n\":"),
                number_after(d, "\"t\":"),
            );
            if !checked {
                // The quick reading agrees with a JSON parser's (once: it costs).
                let v: Value = serde_json::from_str(d)?;
                let h = v["host"].as_str().and_then(|h| shape.hosts.get(h)).copied();
                let data = &v["data"];
                if (
                    h,
                    data["camera_id"].as_i64(),
                    data["n"].as_i64(),
                    data["t"].as_i64(),
                ) != (host, camera, n, t)
                {
                    return Err(format!("misread event data {d}").into());
                }
                checked = true;
            }
            got.fetch_add(1, Relaxed);
            let (Some(h), Some(cam), Some(n), Some(t)) = (host, camera, n, t) else {
                seen.strays += 1;
                continue;
            };
            let (Ok(cam), Ok(n)) = (usize::try_from(cam - 1), u32::try_from(n)) else {
                seen.strays += 1;
                continue;
            };
            if cam >= shape.cameras || n >= shape.per_camera {
                seen.strays += 1;
                continue;
            }
            let slot = (h * shape.cameras + cam) * shape.per_camera as usize + n as usize;
            seen.counts[slot] = seen.counts[slot].saturating_add(1);
            let phase = usize::from(n >= shape.steady);
            let kind = usize::from(h >= shape.real);
            let us = u32::try_from((now - t).max(0) / 1000).unwrap_or(u32::MAX);
            seen.lat[kind][phase].push(us);
            seen.last_at[phase] = seen.last_at[phase].max(now);
        }
    }
    Ok(seen)
}

// ---------------------------------------------------------------------------------------
// Figures.

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1e3
}

fn latency_line(v: &mut [u32]) -> String {
    v.sort_unstable();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} receipts)",
        pct(v, 0.5),
        pct(v, 0.99),
        pct(v, 1.0),
        v.len()
    )
}

/// A process's CPU between two readings, as % of one core.
fn cpu_pct(a: &ProcStats, b: &ProcStats, secs: f64) -> f64 {
    (b.cpu_s - a.cpu_s) / secs * 100.0
}

fn run(plan: &Plan) -> Result<(), BoxError> {
    let bin = hub_binary()?;
    let dir = tempfile::tempdir()?;
    let (broker, port) = broker(dir.path())?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let (fleet, fleet_addr) = hub(
        &bin,
        &dir.path().join("fleet.db"),
        &[
            "--mqtt-subscribe",
            &url,
            "--mqtt-host-name",
            "fleet",
            "--max-streams-per-addr",
            "200",
            "--max-conns-per-addr",
            "300",
            "--max-clients",
            "300",
        ],
    )?;
    wait_for("the fleet's subscription", || {
        get_json(fleet_addr, "/api/hosts").is_ok_and(|v| v["fleet"]["connected"] == json!(true))
    })?;
    let names: Vec<String> = (0..plan.hosts).map(|h| plan.host_name(h)).collect();
    let mut real = Vec::new();
    for name in &names[..plan.real()] {
        let db = dir.path().join(format!("{name}.db"));
        let (p, _) = hub(&bin, &db, &["--mqtt", &url, "--mqtt-host-name", name])?;
        real.push((p, db));
    }
    let mut sims = Vec::new();
    for (h, name) in names.iter().enumerate().skip(plan.real()) {
        sims.push(SimHost::connect(
            port,
            name.clone(),
            0x5100_0000 + h as u32,
        )?);
    }
    // Every host said it is online (the real ones once their sinks connected).
    wait_for("every host's availability at the fleet hub", || {
        get_json(fleet_addr, "/api/hosts").is_ok_and(|v| {
            v["hosts"].as_array().map_or(0, |a| {
                a.iter().filter(|h| h["online"] == json!(true)).count()
            }) >= plan.hosts
        })
    })?;
    let stream_id = get_json(fleet_addr, "/api/state")?["cursor"]
        .as_str()
        .and_then(|c| c.split('-').next())
        .ok_or("no cursor in the fleet's state")?
        .to_owned();
    let shape = Arc::new(Shape {
        hosts: names.iter().cloned().zip(0..).collect(),
        real: plan.real(),
        cameras: plan.cameras,
        per_camera: plan.per_camera(),
        steady: plan.steady(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let c = connect_client(fleet_addr, &stream_id)?;
        let (shape, stop) = (shape.clone(), stop.clone());
        let got = Arc::new(AtomicU64::new(0));
        let g = got.clone();
        let t = std::thread::Builder::new()
            .name("fleet-client".into())
            .spawn(move || read_client(c, &shape, &g, &stop))?;
        clients.push((t, got));
    }
    // The fleet hub's peak RSS and threads, sampled.
    let peak: Arc<Mutex<(u64, u64)>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), fleet.pid());
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                while sampling.load(Relaxed) {
                    if let Ok(s) = ProcStats::read(pid) {
                        let mut p = peak.lock().unwrap_or_else(PoisonError::into_inner);
                        *p = (p.0.max(s.rss_kib), p.1.max(s.threads));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })?
    };
    std::thread::sleep(Duration::from_millis(300)); // every client subscribed
    let rest = ProcStats::read(fleet.pid())?;
    println!(
        "fleet: {} hosts ({} real hub processes, {} simulated) × {} cameras, {:.2} events/s a \
         camera for {:.0} s ({:.0} events/s), then {BURST}× for {:.1} s ({:.0} events/s); \
         {CLIENTS} stream clients; fleet hub with them connected, before the first event: {:.1} MiB RSS, {} threads; load average {}",
        plan.hosts,
        plan.real(),
        plan.hosts - plan.real(),
        plan.cameras,
        plan.rate,
        plan.secs,
        plan.rate * (plan.hosts * plan.cameras) as f64,
        plan.burst_secs(),
        plan.rate * BURST * (plan.hosts * plan.cameras) as f64,
        rest.rss_kib as f64 / 1024.0,
        rest.threads,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let start = Instant::now() + Duration::from_millis(200);
    let start_unix = unix_nanos() + 200_000_000;
    let mut publishers: Vec<JoinHandle<Result<(u64, f64), BoxError>>> = Vec::new();
    for (h, (_, db)) in real.iter().enumerate() {
        let (db, schedule) = (db.clone(), plan.schedule(h));
        publishers.push(
            std::thread::Builder::new()
                .name("real-host".into())
                .spawn(move || real_host(&db, start, &schedule))?,
        );
    }
    for (i, sim) in sims.into_iter().enumerate() {
        let schedule = plan.schedule(plan.real() + i);
        publishers.push(
            std::thread::Builder::new()
                .name("sim-host".into())
                .spawn(move || sim.run(start, &schedule))?,
        );
    }
    sleep_until(start);
    let before = ProcStats::read(fleet.pid())?;
    let broker_before = ProcStats::read(broker.pid())?;
    let real_before: Vec<ProcStats> = real
        .iter()
        .map(|(p, _)| ProcStats::read(p.pid()))
        .collect::<Result<_, _>>()?;
    sleep_until(start + Duration::from_secs_f64(plan.secs));
    let at_burst = ProcStats::read(fleet.pid())?;
    // Events and CPU seconds of the [real hosts' emitters, simulated hosts].
    let (mut published_by, mut host_cpu) = ([0; 2], [0.0; 2]);
    for (i, p) in publishers.into_iter().enumerate() {
        let (n, cpu) = p.join().map_err(|_| "a host panicked")??;
        published_by[usize::from(i >= plan.real())] += n;
        host_cpu[usize::from(i >= plan.real())] += cpu;
    }
    let published = published_by[0] + published_by[1];
    let published_at = Instant::now();
    let total = plan.total();
    let until = published_at + DRAIN_WAIT;
    while Instant::now() < until && clients.iter().any(|(_, g)| g.load(Relaxed) < total) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained = published_at.elapsed();
    let after = ProcStats::read(fleet.pid())?;
    let wall = start.elapsed().as_secs_f64();
    let broker_after = ProcStats::read(broker.pid())?;
    let real_cpu: f64 = real
        .iter()
        .zip(&real_before)
        .map(|((p, _), b)| ProcStats::read(p.pid()).map(|a| cpu_pct(b, &a, wall)))
        .sum::<Result<f64, _>>()?;
    let client_cpu = procfs::threads_cpu_s(&["fleet-client"])? / wall * 100.0;
    let (emit_cpu, sim_cpu) = (host_cpu[0] / wall * 100.0, host_cpu[1] / wall * 100.0);
    std::thread::sleep(DUP_WATCH);
    stop.store(true, Relaxed);
    sampling.store(false, Relaxed);
    let _ = sampler.join();
    let mut seen = Vec::new();
    for (t, _) in clients {
        seen.push(t.join().map_err(|_| "a client panicked")??);
    }
    let peak = *peak.lock().unwrap_or_else(PoisonError::into_inner);
    let fleet_counts = get_json(fleet_addr, "/api/hosts")?["fleet"].clone();

    // Every client: each event once?
    let (mut lost, mut dup, mut strays, mut complete) = (0u64, 0u64, 0u64, 0usize);
    let mut received = Vec::new();
    for s in &seen {
        let l = s.counts.iter().filter(|&&c| c == 0).count() as u64;
        let d: u64 = s
            .counts
            .iter()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum();
        received.push(s.counts.iter().map(|&c| u64::from(c)).sum::<u64>());
        lost += l;
        dup += d;
        strays += s.strays;
        complete += usize::from(l == 0 && d == 0 && s.strays == 0);
    }
    let (lo, hi) = (
        received.iter().min().copied().unwrap_or(0),
        received.iter().max().copied().unwrap_or(0),
    );
    println!(
        "delivery: {published} events published ({total} planned), {CLIENTS} clients got \
         {lo}..{hi} each; {complete} of {CLIENTS} got every event exactly once; over all \
         clients {lost} missing, {dup} duplicates, {strays} strays; the last client was complete \
         {:.0} ms after the last publish; fleet ingest {fleet_counts}",
        drained.as_secs_f64() * 1e3
    );
    // Events/s each phase reached the clients: its events over the time from its start to
    // the moment the last client had its last event.
    let cams = (plan.hosts * plan.cameras) as f64;
    let phases = [
        ("steady", 0.0, f64::from(plan.steady()) * cams),
        (
            "burst",
            plan.secs,
            f64::from(plan.per_camera() - plan.steady()) * cams,
        ),
    ];
    for (i, (name, from, events)) in phases.iter().enumerate() {
        let last = seen.iter().map(|s| s.last_at[i]).max().unwrap_or(0);
        let secs = (last - start_unix) as f64 / 1e9 - from;
        let mut sim: Vec<u32> = seen
            .iter()
            .flat_map(|s| s.lat[1][i].iter().copied())
            .collect();
        let mut real: Vec<u32> = seen
            .iter()
            .flat_map(|s| s.lat[0][i].iter().copied())
            .collect();
        println!(
            "{name}: {events:.0} events in {secs:.2} s = {:.0} events/s at every client ({:.0} \
             deliveries/s over {CLIENTS}); latency, simulated host's publish → fleet client: {}; \
             real camera host's commit → fleet client: {}",
            events / secs,
            events / secs * CLIENTS as f64,
            latency_line(&mut sim),
            latency_line(&mut real),
        );
    }
    let steady_secs = plan.secs;
    let rest_secs = wall - steady_secs;
    println!(
        "fleet hub: CPU {:.1} % of one core over the run ({:.1} % steady, {:.1} % burst and \
         drain), peak RSS {:.1} MiB (VmHWM {:.1} MiB), peak {} threads (before the first event {}); the others on the 2 cores: \
         broker {:.1} %, {} real camera hubs {:.1} % (their emitters {:.1} %), {} simulated \
         hosts {:.1} % ({:.0} µs a message), {CLIENTS} clients {:.1} %",
        cpu_pct(&before, &after, wall),
        cpu_pct(&before, &at_burst, steady_secs),
        cpu_pct(&at_burst, &after, rest_secs),
        peak.0 as f64 / 1024.0,
        after.hwm_kib as f64 / 1024.0,
        peak.1,
        rest.threads,
        cpu_pct(&broker_before, &broker_after, wall),
        plan.real(),
        real_cpu,
        emit_cpu,
        plan.hosts - plan.real(),
        sim_cpu,
        host_cpu[1] / published_by[1].max(1) as f64 * 1e6,
        client_cpu,
    );
    drop((fleet, real, broker));
    if lost + dup + strays > 0 {
        return Err(format!("{lost} missing, {dup} duplicates, {strays} strays").into());
    }
    Ok(())
}
