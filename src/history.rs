//! Capture history: how many `image_captured` events each camera had per UTC hour and day,
//! as counters that outlive the events (retention deletes events, never these). Pure: the
//! poller tallies each batch here in memory, and `store/history.rs` writes the tally in the
//! dispatch transaction (one UPSERT per bucket) and reads it back for `/api/history`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::event::Event;
use crate::state::{IMAGE_CAPTURED, parse_utc_ms};

/// Seconds in an hour bucket.
pub(crate) const HOUR_SECS: i64 = 3600;
/// Seconds in a day bucket (UTC days).
pub(crate) const DAY_SECS: i64 = 24 * HOUR_SECS;
/// Hour buckets `/api/history` shows: the current one and the 23 before it.
pub(crate) const HOURS_SHOWN: usize = 24;
/// Day buckets `/api/history` shows: today and the 29 days before.
pub(crate) const DAYS_SHOWN: usize = 30;
/// Hour buckets older than this are deleted.
pub(crate) const HOURS_KEPT_SECS: i64 = 48 * HOUR_SECS;
/// Day buckets older than this are deleted.
pub(crate) const DAYS_KEPT_SECS: i64 = 60 * DAY_SECS;

/// What a counter counts: an hour, a day, or every capture since counting began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Span {
    Hour,
    Day,
    /// The camera's running total (one row, `start` 0): never pruned.
    All,
}

impl Span {
    /// The name in `capture_history.span` (its `CHECK`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Span::Hour => "hour",
            Span::Day => "day",
            Span::All => "all",
        }
    }

    /// The span `as_str` names.
    pub(crate) fn parse(s: &str) -> Option<Span> {
        match s {
            "hour" => Some(Span::Hour),
            "day" => Some(Span::Day),
            "all" => Some(Span::All),
            _ => None,
        }
    }

    /// Unix seconds of the start of the bucket `unix_secs` falls in.
    pub(crate) fn start(self, unix_secs: i64) -> i64 {
        match self {
            Span::Hour => unix_secs.div_euclid(HOUR_SECS) * HOUR_SECS,
            Span::Day => unix_secs.div_euclid(DAY_SECS) * DAY_SECS,
            Span::All => 0,
        }
    }
}

/// One counter: (host, `''` for this one; camera id; span; bucket start in Unix seconds).
pub(crate) type Bucket = (String, i64, Span, i64);

/// One batch's captures per bucket, to be added to the stored counters.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    counts: BTreeMap<Bucket, i64>,
    /// Cameras forgotten in the batch, in order: their stored counters are to be deleted.
    forgotten: Vec<(String, i64)>,
}

impl Tally {
    /// Counts `e` when it is an `image_captured` with a camera id and a readable time.
    pub(crate) fn add(&mut self, e: &Event) {
        if e.event_type != IMAGE_CAPTURED {
            return;
        }
        let (Some(camera), Some(ms)) = (e.camera_id(), parse_utc_ms(&e.created_at)) else {
            return;
        };
        let host = e.host.clone().unwrap_or_default();
        let secs = ms.div_euclid(1000);
        for span in [Span::Hour, Span::Day, Span::All] {
            *self
                .counts
                .entry((host.clone(), camera, span, span.start(secs)))
                .or_insert(0) += 1;
        }
    }

    /// A camera was forgotten: what the batch counted for it before goes too, and its
    /// stored counters are to be deleted (before this tally's later counts are added).
    pub(crate) fn forget(&mut self, host: Option<&str>, camera_id: i64) {
        let host = host.unwrap_or_default().to_owned();
        self.counts
            .retain(|(h, c, _, _), _| !(*h == host && *c == camera_id));
        self.forgotten.push((host, camera_id));
    }

    /// The counts to add, one per bucket, in key order.
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (&Bucket, i64)> {
        self.counts.iter().map(|(k, n)| (k, *n))
    }

    /// The cameras whose stored counters are to be deleted.
    pub(crate) fn forgotten(&self) -> &[(String, i64)] {
        &self.forgotten
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.forgotten.is_empty()
    }
}

/// The buckets `/api/history` shows at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub now_ms: i64,
    /// Start of the oldest hour shown (Unix seconds).
    pub first_hour: i64,
    /// Start of the oldest day shown.
    pub first_day: i64,
}

impl Window {
    /// The window ending with the hour and day `now_ms` falls in.
    pub(crate) fn at(now_ms: i64) -> Window {
        let secs = now_ms.div_euclid(1000);
        Window {
            now_ms,
            first_hour: Span::Hour.start(secs) - (HOURS_SHOWN as i64 - 1) * HOUR_SECS,
            first_day: Span::Day.start(secs) - (DAYS_SHOWN as i64 - 1) * DAY_SECS,
        }
    }

    /// One camera's `hourly`, `daily` (oldest first, zeros where nothing was counted) and
    /// `total`, from its stored counters `(span, start, captures)`.
    pub(crate) fn camera(&self, rows: &[(Span, i64, i64)]) -> (Vec<i64>, Vec<i64>, i64) {
        let mut hourly = vec![0; HOURS_SHOWN];
        let mut daily = vec![0; DAYS_SHOWN];
        let mut total = 0;
        let slot = |start: i64, first: i64, width: i64, len: usize| {
            let offset = start.checked_sub(first)?;
            if offset % width != 0 {
                return None;
            }
            usize::try_from(offset / width).ok().filter(|i| *i < len)
        };
        for &(span, start, n) in rows {
            match span {
                Span::Hour => {
                    if let Some(i) = slot(start, self.first_hour, HOUR_SECS, HOURS_SHOWN) {
                        hourly[i] += n;
                    }
                }
                Span::Day => {
                    if let Some(i) = slot(start, self.first_day, DAY_SECS, DAYS_SHOWN) {
                        daily[i] += n;
                    }
                }
                Span::All => total += n,
            }
        }
        (hourly, daily, total)
    }

    /// The document's head: `now`, and where `hours` and `days` start.
    pub(crate) fn head(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("now".into(), Value::String(utc_ms_text(self.now_ms)));
        m.insert(
            "hours".into(),
            json!({"start": utc_text(self.first_hour), "count": HOURS_SHOWN}),
        );
        m.insert(
            "days".into(),
            json!({"start": utc_text(self.first_day), "count": DAYS_SHOWN}),
        );
        m
    }
}

/// Counters that start before these (hour, day) are old enough to delete at `now_ms`.
pub(crate) fn prune_before(now_ms: i64) -> (i64, i64) {
    let secs = now_ms.div_euclid(1000);
    (
        Span::Hour.start(secs) - HOURS_KEPT_SECS,
        Span::Day.start(secs) - DAYS_KEPT_SECS,
    )
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_text(unix_secs: i64) -> String {
    jiff::Timestamp::from_second(unix_secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.sssZ`, as the events' `created_at` reads.
pub(crate) fn utc_ms_text(unix_ms: i64) -> String {
    let secs = utc_text(unix_ms.div_euclid(1000));
    match secs.strip_suffix('Z') {
        Some(s) => format!("{s}.{:03}Z", unix_ms.rem_euclid(1000)),
        None => secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shot(seq: i64, camera: i64, at: &str) -> Event {
        Event::for_test(seq, IMAGE_CAPTURED, at, json!({"camera_id": camera}))
    }

    #[test]
    fn buckets_start_at_utc_hours_and_days() {
        let t = parse_utc_ms("2026-12-01T18:04:05.123Z").unwrap_or_default() / 1000;
        assert_eq!(utc_text(Span::Hour.start(t)), "2026-12-01T18:00:00Z");
        assert_eq!(utc_text(Span::Day.start(t)), "2026-12-01T00:00:00Z");
        assert_eq!(Span::All.start(t), 0);
        // Before 1970 still floors down, not toward zero.
        assert_eq!(Span::Hour.start(-1), -HOUR_SECS);
        for s in [Span::Hour, Span::Day, Span::All] {
            assert_eq!(Span::parse(s.as_str()), Some(s));
        }
        assert_eq!(Span::parse("week"), None);
        assert_eq!(utc_ms_text(1_795_687_200_123), "2026-11-26T10:00:00.123Z");
        assert_eq!(utc_ms_text(5), "1970-01-01T00:00:00.005Z");
    }

    #[test]
    fn a_batch_tallies_each_capture_once_per_span_and_only_captures() {
        let mut t = Tally::default();
        t.add(&shot(1, 1, "2026-12-01T18:04:05.123Z"));
        t.add(&shot(2, 1, "2026-12-01T18:59:59.999Z"));
        t.add(&shot(3, 1, "2026-12-01T19:00:00.000Z"));
        let mut theirs = shot(4, 1, "2026-12-01T19:00:00.000Z");
        theirs.host = Some("garden".into());
        t.add(&theirs);
        t.add(&Event::for_test(
            5,
            "camera_stale",
            "2026-12-01T19:00:00.000Z",
            json!({"camera_id": 1}),
        ));
        t.add(&Event::for_test(
            6,
            IMAGE_CAPTURED,
            "2026-12-01T19:00:00.000Z",
            json!({"no_camera": 1}),
        ));
        let h18 = parse_utc_ms("2026-12-01T18:00:00Z").unwrap_or_default() / 1000;
        let day = parse_utc_ms("2026-12-01T00:00:00Z").unwrap_or_default() / 1000;
        let got: Vec<(String, i64, Span, i64, i64)> = t
            .buckets()
            .map(|((h, c, s, start), n)| (h.clone(), *c, *s, *start, n))
            .collect();
        let ours = |s, start, n| (String::new(), 1, s, start, n);
        let garden = |s, start, n| ("garden".to_owned(), 1, s, start, n);
        assert_eq!(
            got,
            [
                ours(Span::Hour, h18, 2),
                ours(Span::Hour, h18 + HOUR_SECS, 1),
                ours(Span::Day, day, 3),
                ours(Span::All, 0, 3),
                garden(Span::Hour, h18 + HOUR_SECS, 1),
                garden(Span::Day, day, 1),
                garden(Span::All, 0, 1),
            ]
        );
        t.forget(None, 1);
        assert_eq!(t.buckets().count(), 3, "garden's camera 1 stays");
        assert_eq!(t.forgotten(), [(String::new(), 1)]);
        assert!(!t.is_empty());
        assert!(Tally::default().is_empty());
    }

    #[test]
    fn a_window_lays_counters_out_oldest_first_with_zeros_for_gaps() {
        let now = parse_utc_ms("2026-12-01T18:04:05.123Z").unwrap_or_default();
        let w = Window::at(now);
        let head = Value::Object(w.head());
        assert_eq!(
            head,
            json!({
                "now": "2026-12-01T18:04:05.123Z",
                "hours": {"start": "2026-11-30T19:00:00Z", "count": 24},
                "days": {"start": "2026-11-02T00:00:00Z", "count": 30},
            })
        );
        let hour = |h: i64| w.first_hour + h * HOUR_SECS;
        let rows = [
            (Span::Hour, hour(23), 5),                   // the current hour
            (Span::Hour, hour(18), 2),                   // five hours ago
            (Span::Hour, hour(-1), 9),                   // before the window
            (Span::Hour, hour(24), 9),                   // after it (a clock ahead)
            (Span::Hour, hour(3) + 1, 9),                // not a bucket start
            (Span::Day, w.first_day + 29 * DAY_SECS, 7), // today
            (Span::Day, w.first_day, 1),
            (Span::All, 0, 1234),
        ];
        let (hourly, daily, total) = w.camera(&rows);
        let mut want_h = vec![0; 24];
        want_h[23] = 5;
        want_h[18] = 2;
        let mut want_d = vec![0; 30];
        want_d[29] = 7;
        want_d[0] = 1;
        assert_eq!((hourly, daily, total), (want_h, want_d, 1234));
        assert_eq!(w.camera(&[]), (vec![0; 24], vec![0; 30], 0));
        let (h, d) = prune_before(now);
        assert_eq!(utc_text(h), "2026-11-29T18:00:00Z");
        assert_eq!(utc_text(d), "2026-10-02T00:00:00Z");
    }
}
