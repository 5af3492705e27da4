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

/// The label of the series that counts the types beyond the cap together. No event type
/// can be spelled so (parentheses are not allowed in one).
const OTHER_TYPES: &str = "(other)";

/// Why dispatched events were not folded into the state ([`Metrics::not_folded`]).
pub(crate) const NOT_FOLDED_REASONS: [&str; 2] = ["camera_cap", "event_type_cap"];

/// Counters by event type: the first `max_types` types seen get a series each, the rest
/// share one, so that a producer sending many distinct types costs no memory.
#[derive(Default)]
struct ByType {
    named: BTreeMap<String, u64>,
    other: u64,
}

/// The hub's counters.
pub(crate) struct Metrics {
    max_types: usize,
    emitted: Mutex<ByType>,
    dispatched: Mutex<ByType>,
    not_folded: [AtomicU64; NOT_FOLDED_REASONS.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_SECS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Default for Metrics {
    /// Counters for 256 types (the hub passes its `max_event_types`).
    fn default() -> Self {
        Metrics::new(256)
    }
}

fn bump(map: &Mutex<ByType>, key: &str, max_types: usize) {
    // Counters only ever grow; a poisoned map is still a valid map.
    let mut m = map.lock().unwrap_or_else(PoisonError::into_inner);
    let room = m.named.len() < max_types;
    match m.named.get_mut(key) {
        Some(v) => *v += 1,
        None if room => {
            m.named.insert(key.to_owned(), 1);
        }
        None => m.other += 1,
    }
}

impl Metrics {
    /// Counters with a series of their own for at most `max_types` event types.
    pub(crate) fn new(max_types: usize) -> Metrics {
        Metrics {
            max_types,
            emitted: Mutex::default(),
            dispatched: Mutex::default(),
            not_folded: Default::default(),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn emitted(&self, event_type: &str) {
        bump(&self.emitted, event_type, self.max_types);
    }

    /// Adds dispatched events that were not folded into the state, by reason (in the
    /// order of [`NOT_FOLDED_REASONS`]).
    pub(crate) fn not_folded(&self, by_reason: [u64; NOT_FOLDED_REASONS.len()]) {
        for (counter, n) in self.not_folded.iter().zip(by_reason) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The [`Metrics::not_folded`] totals, named by reason.
    pub(crate) fn not_folded_totals(&self) -> [(&'static str, u64); NOT_FOLDED_REASONS.len()] {
        let mut out = NOT_FOLDED_REASONS.map(|r| (r, 0));
        for ((_, v), counter) in out.iter_mut().zip(&self.not_folded) {
            *v = counter.load(Ordering::Relaxed);
        }
        out
    }

    pub(crate) fn dispatched(&self, event_type: &str, latency_ms: i64) {
        bump(&self.dispatched, event_type, self.max_types);
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
                "Events stored through this hub (HTTP and in-process), by type (types past \
                 --max-event-types as type=\"(other)\").",
            ),
            (
                "tle_events_dispatched_total",
                &self.dispatched,
                "Events dispatched to the stream, by type (types past --max-event-types as \
                 type=\"(other)\").",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let m = map.lock().unwrap_or_else(PoisonError::into_inner);
            for (t, v) in &m.named {
                // Event types are [A-Za-z0-9_.:-]: nothing in them needs escaping in a label.
                let _ = writeln!(out, "{name}{{type=\"{t}\"}} {v}");
            }
            if m.other > 0 {
                let _ = writeln!(out, "{name}{{type=\"{OTHER_TYPES}\"}} {}", m.other);
            }
        }
        let n = "tle_events_not_folded_total";
        let _ = writeln!(
            out,
            "# HELP {n} Dispatched events not folded into the state (or not counted by \
             type), by reason: over --max-cameras or --max-event-types.\n# TYPE {n} counter"
        );
        for (reason, v) in self.not_folded_totals() {
            let _ = writeln!(out, "{n}{{reason=\"{reason}\"}} {v}");
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

    #[test]
    fn types_past_the_cap_share_one_series() {
        let m = Metrics::new(2);
        for t in ["a", "b", "c", "a", "d", "c"] {
            m.dispatched(t, 0);
            m.emitted(t);
        }
        m.not_folded([3, 0]);
        m.not_folded([1, 4]);
        let text = m.render(&[], &[]);
        for line in [
            "tle_events_dispatched_total{type=\"a\"} 2",
            "tle_events_dispatched_total{type=\"b\"} 1",
            "tle_events_dispatched_total{type=\"(other)\"} 3",
            "tle_events_emitted_total{type=\"(other)\"} 3",
            "tle_events_not_folded_total{reason=\"camera_cap\"} 4",
            "tle_events_not_folded_total{reason=\"event_type_cap\"} 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(!text.contains("type=\"c\""), "{text}");
    }
}
