//! What a scenario run reports: one human line and one `BENCH_JSON {...}` line (parsed by
//! tests/it/perf.rs), plus seed-vs-normal ratios.

use serde::Serialize;

use crate::client::Seen;
use crate::procfs::ProcStats;

/// The figures of one scenario run. Absent figures are left out of the JSON.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    /// `normal` or `seed` (the old design's poll interval and batch size).
    pub mode: &'static str,
    pub clients: usize,
    pub served: usize,
    /// Events produced (each client should receive all of them).
    pub events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Events that did not parse or carried an unknown sequence number.
    pub unexpected: u64,
    /// Clients that failed (connect, status, framing) or were ended by the hub.
    pub client_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Hub CPU seconds over the measured window (emitting thread excluded).
    pub hub_cpu_s: f64,
    /// The same as a percentage of one core over the window.
    pub hub_cpu_pct: f64,
    pub window_s: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub threads: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_gap_max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_start_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer_commit_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer_commit_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_mib: Option<f64>,
    /// Peer mode: server CPU microseconds per delivered event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_delivery: Option<f64>,
    /// Peer mode: context switches per second of every thread of the server process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wakeups_per_s: Option<f64>,
    /// Peer mode: open descriptors of the server process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<u64>,
    /// Peer mode, many streams: threads, descriptors and KiB of RSS each open stream adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads_per_stream: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds_per_stream: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib_per_stream: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Summary {
    /// A normal-mode run of `scenario`, no figures yet.
    pub fn new(scenario: &str) -> Summary {
        Summary {
            scenario: scenario.to_owned(),
            mode: "normal",
            ..Summary::default()
        }
    }

    /// The hub's memory and threads as `p` read them, and `cpu_s` CPU seconds over `window_s`
    /// (left at 0 when `window_s` is 0: no CPU was measured).
    pub fn add_hub(&mut self, p: &ProcStats, cpu_s: f64, window_s: f64) {
        if window_s > 0.0 {
            self.hub_cpu_s = cpu_s;
            self.hub_cpu_pct = 100.0 * cpu_s / window_s;
            self.window_s = window_s;
        }
        self.rss_mib = mib(p.rss_kib);
        self.peak_rss_mib = mib(p.hwm_kib);
        self.threads = p.threads;
    }

    /// Adds up what the clients saw (`events` each).
    pub fn add_clients(&mut self, seen: &[Seen], events: u64) {
        self.clients = seen.len();
        self.events = events;
        let mut lat: Vec<i64> = Vec::new();
        let mut gap = std::time::Duration::ZERO;
        for s in seen {
            self.served += usize::from(s.served);
            self.deliveries += s.distinct;
            self.duplicated += s.duplicated;
            self.out_of_order += s.out_of_order;
            self.unexpected += s.unexpected;
            self.client_errors += u64::from(s.error.is_some() || s.ended_by_server);
            lat.extend_from_slice(&s.latencies_ns);
            gap = gap.max(s.max_gap);
            if let Some(e) = &s.error {
                eprintln!("  client error: {e}");
            }
        }
        self.lost = (events * seen.len() as u64).saturating_sub(self.deliveries);
        self.heartbeat_gap_max_ms = Some(ms(gap.as_nanos() as f64));
        if !lat.is_empty() {
            let mut lat: Vec<u64> = lat.into_iter().map(|l| l.max(0) as u64).collect();
            lat.sort_unstable();
            self.p50_ms = Some(ms(pct(&lat, 0.50) as f64));
            self.p90_ms = Some(ms(pct(&lat, 0.90) as f64));
            self.p99_ms = Some(ms(pct(&lat, 0.99) as f64));
            self.max_ms = lat.last().map(|&m| ms(m as f64));
        }
    }

    /// One human-readable line, then the JSON line.
    pub fn print(&self) {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        println!(
            "{:<22} {:<6} clients {:>3}/{:<3} events {:>6} deliveries {:>7} lost {} dup {} ooo {} | \
             ms p50 {} p90 {} p99 {} max {} | hub cpu {:.2}s ({:.2}%) rss {:.1} MiB peak {:.1} MiB threads {}",
            self.scenario,
            self.mode,
            self.served,
            self.clients,
            self.events,
            self.deliveries,
            self.lost,
            self.duplicated,
            self.out_of_order,
            f(self.p50_ms),
            f(self.p90_ms),
            f(self.p99_ms),
            f(self.max_ms),
            self.hub_cpu_s,
            self.hub_cpu_pct,
            self.rss_mib,
            self.peak_rss_mib,
            self.threads
        );
        let extra: Vec<String> = [
            ("heartbeat gap max ms", self.heartbeat_gap_max_ms),
            ("startup ms", self.startup_ms),
            ("startup max ms", self.startup_max_ms),
            ("Hub::start ms", self.hub_start_ms),
            ("producer commit p50 ms", self.producer_commit_p50_ms),
            ("producer commit p99 ms", self.producer_commit_p99_ms),
            ("db MiB", self.db_mib),
            ("cpu us/delivery", self.cpu_us_per_delivery),
            ("wakeups/s", self.wakeups_per_s),
            ("threads/stream", self.threads_per_stream),
            ("fds/stream", self.fds_per_stream),
            ("KiB/stream", self.rss_kib_per_stream),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v:.2}")))
        .chain(self.threads_before.map(|t| format!("threads before {t}")))
        .chain(self.threads_after.map(|t| format!("threads after {t}")))
        .chain(self.fds.map(|f| format!("fds {f}")))
        .chain(self.note.clone())
        .collect();
        if !extra.is_empty() {
            println!("{:<22} {}", "", extra.join(", "));
        }
        match serde_json::to_string(self) {
            Ok(json) => println!("BENCH_JSON {json}"),
            Err(e) => eprintln!("cannot encode the summary: {e}"),
        }
    }
}

/// Prints how many times better (lower) the normal run is than the seed run.
pub fn print_ratio(seed: &Summary, normal: &Summary) {
    let r = |s: Option<f64>, n: Option<f64>| match (s, n) {
        (Some(s), Some(n)) if n > 0.0 => format!("{:.1}x", s / n),
        _ => "-".to_owned(),
    };
    println!(
        "{:<22} seed/normal: p50 {} p99 {} max {} cpu {}",
        seed.scenario,
        r(seed.p50_ms, normal.p50_ms),
        r(seed.p99_ms, normal.p99_ms),
        r(seed.max_ms, normal.max_ms),
        r(Some(seed.hub_cpu_s), Some(normal.hub_cpu_s)),
    );
}

/// Nearest-rank percentile of sorted values.
pub fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(ns: f64) -> f64 {
    (ns / 1e4).round() / 100.0
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}
