//! Counters for `GET /metrics` (Prometheus text format 0.0.4). Updated by the writer and
//! the poller; rendered on request. Locks are held only to bump or copy a map.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Upper bounds of the dispatch-latency histogram, in seconds.
const LATENCY_BUCKETS_SECS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The hub's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    emitted: Mutex<BTreeMap<String, u64>>,
    dispatched: Mutex<BTreeMap<String, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_SECS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str, n: u64) {
    // Counters only ever grow; a poisoned map is still a valid map.
    let mut m = map.lock().unwrap_or_else(PoisonError::into_inner);
    match m.get_mut(key) {
        Some(v) => *v += n,
        None => {
            m.insert(key.to_owned(), n);
        }
    }
}

impl Metrics {
    pub(crate) fn emitted(&self, event_type: &str) {
        bump(&self.emitted, event_type, 1);
    }

    pub(crate) fn dispatched(&self, event_type: &str, latency_ms: i64) {
        bump(&self.dispatched, event_type, 1);
        let secs = latency_ms.max(0) as f64 / 1000.0;
        for (i, le) in LATENCY_BUCKETS_SECS.iter().enumerate() {
            if secs <= *le {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(latency_ms.max(0)).unwrap_or(0) * 1000,
            Ordering::Relaxed,
        );
    }

    /// Renders every metric; `gauges` are (name, help, value) read by the caller.
    pub(crate) fn render(
        &self,
        counters: &[(&str, &str, u64)],
        gauges: &[(&str, &str, f64)],
    ) -> String {
        let mut out = String::new();
        for (name, map, help) in [
            (
                "tle_events_emitted_total",
                &self.emitted,
                "Events stored through this hub (HTTP and in-process), by type.",
            ),
            (
                "tle_events_dispatched_total",
                &self.dispatched,
                "Events dispatched to the stream, by type.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (t, v) in map.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                // Event types are [A-Za-z0-9_.:-]: nothing in them needs escaping in a label.
                let _ = writeln!(out, "{name}{{type=\"{t}\"}} {v}");
            }
        }
        let h = "tle_dispatch_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {h} Time from created_at to dispatch.\n# TYPE {h} histogram"
        );
        for (i, le) in LATENCY_BUCKETS_SECS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{h}_bucket{{le=\"{le}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{h}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{h}_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{h}_count {count}");
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.dispatched("a", 0);
        m.dispatched("a", 3);
        m.dispatched("b", 10_000);
        let text = m.render(&[], &[]);
        assert!(
            text.contains("tle_events_dispatched_total{type=\"a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tle_dispatch_latency_seconds_bucket{le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tle_dispatch_latency_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tle_dispatch_latency_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tle_dispatch_latency_seconds_count 3"),
            "{text}"
        );
    }
}
