//! MQTT sink benchmark (not a test): events/s from the hub to a Mosquitto of its own, and a
//! stream client's dispatch latency (emit → SSE frame) with and without the sink.
//!
//! Three parts: paced rounds without and with the sink, interleaved, for the stream's
//! latency (medians of the rounds' p50 and p99, and their ratio); one unpaced run, where the
//! emitter is the limit; and a backlog (events written while the hub was down), where the
//! sink is: its rate is the sink's own, from the restart to the subscriber's last message.
//!
//! `cargo run --release --example bench_mqtt [EVENTS] [RATE_PER_SEC] [ROUNDS] [BACKLOG]`
//! (defaults 10000, 5000, 3, 50000).
//! Needs `mosquitto` and `mosquitto_sub` installed (not running: it starts its own).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use timelapse_events::{Config, Hub, MqttTarget, NewEvent, SinkConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let events = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rate = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000.0);
    let rounds = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let backlog = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    match run(events, rate, rounds, backlog) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_mqtt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill(); // ours; it may have gone already
        let _ = self.0.wait();
    }
}

fn broker(dir: &std::path::Path) -> Result<(Broker, u16), BoxError> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nset_tcp_nodelay true\n"
        ),
    )?;
    let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let b = Broker(child);
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            return Err("mosquitto did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((b, port))
}

/// The stream's emit→frame latencies (ns) of `n` events, read on a thread.
fn stream(addr: SocketAddr, n: usize) -> Result<std::thread::JoinHandle<Vec<i64>>, BoxError> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(std::thread::Builder::new()
        .name("bench-stream".into())
        .spawn(move || {
            let mut lat = Vec::with_capacity(n);
            let mut lines = BufReader::new(s).lines();
            while lat.len() < n {
                let Some(Ok(line)) = lines.next() else { break };
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                if let Ok(v) = serde_json::from_str::<Value>(data.trim())
                    && let Some(t) = v["data"]["t"].as_i64()
                {
                    lat.push(unix_nanos() - t);
                }
            }
            lat
        })?)
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1e6
}

/// A hub on loopback with its database in `dir`, and an MQTT sink when `mqtt_port` is set.
fn config(dir: &std::path::Path, mqtt_port: Option<u16>) -> Config {
    let mut config = Config {
        bind: ([127, 0, 0, 1], 0).into(),
        db_path: dir.join("events.db"),
        ..Config::default()
    };
    if let Some(port) = mqtt_port {
        let mut target = MqttTarget::new(&format!("mqtt://127.0.0.1:{port}"));
        target.host_name = Some("bench".into());
        config.sinks = vec![SinkConfig::mqtt("mqtt1", target)];
    }
    config
}

/// A QoS 1 subscriber to the bench host's events that exits after `n` of them.
fn subscriber(port: u16, n: usize) -> Result<Child, BoxError> {
    Ok(Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "timelapse/bench/events/#", "-C", &n.to_string()])
        .args(["-W", "300"])
        .stdout(Stdio::null())
        .spawn()?)
}

/// The stream's latency percentiles (ms) of one run.
struct Latency {
    p50: f64,
    p99: f64,
}

fn one(events: usize, rate: f64, mqtt_port: Option<u16>) -> Result<Latency, BoxError> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(config(dir.path(), mqtt_port))?;
    let sub = match mqtt_port {
        Some(port) => Some(subscriber(port, events)?),
        None => None,
    };
    std::thread::sleep(Duration::from_millis(500)); // subscriber and sink connected
    let reader = stream(hub.addr(), events)?;
    std::thread::sleep(Duration::from_millis(200));
    let em = hub.emitter();
    let start = Instant::now();
    for i in 0..events {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        em.emit(NewEvent::new(
            "image_captured",
            json!({"camera_id": 1 + (i % 4), "t": unix_nanos()}),
        ))?;
    }
    let emitted = start.elapsed();
    let mut lat = reader.join().map_err(|_| "stream reader panicked")?;
    lat.sort_unstable();
    let label = if mqtt_port.is_some() {
        "with the MQTT sink"
    } else {
        "without a sink"
    };
    let sunk = match sub {
        Some(mut child) => {
            let status = child.wait()?;
            let secs = start.elapsed().as_secs_f64();
            // The emitter is the limit here: how long after the last emit the subscriber had
            // everything says whether the sink kept up.
            format!(
                "; MQTT: {events} events at the subscriber after {secs:.2} s ({:.0} events/s end to end, \
                 the last {:.0} ms after the last emit; sub {status})",
                events as f64 / secs,
                (secs - emitted.as_secs_f64()) * 1e3
            )
        }
        None => String::new(),
    };
    println!(
        "{label}: {events} events emitted at {:.0}/s; stream latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} frames){sunk}",
        events as f64 / emitted.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        lat.len()
    );
    hub.shutdown()?;
    Ok(Latency {
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
    })
}

/// `events` written while the hub is down, then a restart: how fast the sink drains them to
/// a subscriber (the poller dispatches the backlog first, in batches).
fn backlog(events: usize, port: u16) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    // A first start registers the sink's cursor at the (empty) head.
    Hub::start(config(dir.path(), Some(port)))?.shutdown()?;
    let em = timelapse_events::Emitter::open(dir.path().join("events.db"))?;
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        em.emit_batch(
            chunk
                .iter()
                .map(|i| NewEvent::new("image_captured", json!({"camera_id": 1 + (i % 4)})))
                .collect(),
        )?;
    }
    drop(em);
    let mut sub = subscriber(port, events)?;
    std::thread::sleep(Duration::from_millis(300)); // subscribed
    let start = Instant::now();
    let hub = Hub::start(config(dir.path(), Some(port)))?;
    let status = sub.wait()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "backlog: {events} events written while the hub was down reached the subscriber {secs:.2} s \
         after the restart: {:.0} events/s through the MQTT sink (sub {status})",
        events as f64 / secs
    );
    hub.shutdown()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run(events: usize, rate: f64, rounds: usize, backlog_events: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (_broker, port) = broker(dir.path())?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        without.push(one(events, rate, None)?);
        with.push(one(events, rate, Some(port))?);
    }
    let p = |v: &[Latency], f: fn(&Latency) -> f64| median(v.iter().map(f).collect());
    let (p50_0, p99_0) = (p(&without, |l| l.p50), p(&without, |l| l.p99));
    let (p50_1, p99_1) = (p(&with, |l| l.p50), p(&with, |l| l.p99));
    println!(
        "stream latency, medians of {} interleaved rounds at {rate:.0} events/s: without a sink \
         p50 {p50_0:.2} ms p99 {p99_0:.2} ms; with the MQTT sink p50 {p50_1:.2} ms p99 {p99_1:.2} ms \
         (p99 {:+.0} %)",
        rounds.max(1),
        (p99_1 / p99_0 - 1.0) * 100.0
    );
    // Throughput unpaced: as fast as the emitter goes.
    one(events, 1e9, Some(port))?;
    backlog(backlog_events, port)?;
    Ok(())
}
