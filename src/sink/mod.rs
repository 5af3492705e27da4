//! Outbound sinks: one `tle-sink-<name>` thread per configured sink (started and stopped
//! by `Hub`), each one more reader of the event log with a cursor of its own in
//! `sink_cursors`.
//!
//! A sink reads dispatched events after its cursor in seq order, keeps those its
//! [`SinkFilter`] (and its transport) wants, delivers them one at a time and records the
//! cursor only once the far side has acknowledged: at least once, in order, nothing
//! skipped. The cursor is written every `window` deliveries (and whenever the sink catches
//! up or stops), so a crash sends at most `window` events again ([`Window`]).
//! A delivery that fails for a reason that may pass (a 5xx, a timeout, a refused connection)
//! is retried, the same event, after a jittered exponential delay ([`Backoff`]); one the far
//! side refuses for good (another 4xx) is skipped and counted. Events retention's size limit
//! deleted before the sink reached them are recorded as a gap.
//!
//! Wake-up: a sink that has caught up waits on the poller's [`Bell`], rung after each
//! dispatched batch (a `try_send` per sink: the poller, the hot path of every stream, does no
//! other sink work), and at most [`IDLE_POLL`], after which it asks the database for the
//! stream head anyway (one indexed `max(seq)`) and lets its transport keep its connection.

mod mqtt;
mod webhook;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{Value, json};

use crate::backoff::Backoff;
use crate::bell::Bell;
use crate::config::{Config, SinkConfig, SinkTarget};
use crate::error::Result;
use crate::event::{Event, Priority};
use crate::state::CameraState;
use crate::store::{self, Store, events};
use crate::thread::spawn_named;

/// How often a sink that has caught up asks for the stream head.
pub(crate) const IDLE_POLL: Duration = Duration::from_millis(250);
/// Most events read from the database at once.
const PAGE_ROWS: i64 = 256;
/// A cursor with deliveries not yet recorded is written at least this often.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// What a sink delivers: types, a minimum priority, cameras. (`sse::Filter` takes one
/// camera and no priority, so the sink has its own.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkFilter {
    pub(crate) types: Option<Vec<String>>,
    pub(crate) min_priority: Priority,
    pub(crate) camera_ids: Option<Vec<i64>>,
}

impl SinkFilter {
    pub(crate) fn of(sink: &SinkConfig) -> SinkFilter {
        SinkFilter {
            types: sink.types.clone(),
            min_priority: sink.min_priority,
            camera_ids: sink.camera_ids.clone(),
        }
    }

    pub(crate) fn matches(&self, event: &Event) -> bool {
        if let Some(types) = &self.types
            && !types.contains(&event.event_type)
        {
            return false;
        }
        if event.priority < self.min_priority {
            return false;
        }
        match &self.camera_ids {
            Some(ids) => event.camera_id().is_some_and(|id| ids.contains(&id)),
            None => true,
        }
    }

    /// Whether camera `id` is this sink's (no camera filter: every one).
    pub(crate) fn has_camera(&self, id: i64) -> bool {
        self.camera_ids.as_ref().is_none_or(|ids| ids.contains(&id))
    }
}

/// The bookkeeping between the far side's acknowledgements and the stored cursor: events
/// handled (delivered, skipped or filtered out) in seq order, the seq the cursor may move
/// to, and how many deliveries it does not record yet (at most `max`: what a crash would
/// send again).
#[derive(Debug)]
pub(crate) struct Window {
    max: usize,
    handled_through: i64,
    recorded: i64,
    delivered: u64,
    skipped: u64,
}

impl Window {
    pub(crate) fn new(cursor: i64, max: usize) -> Window {
        Window {
            max,
            handled_through: cursor,
            recorded: cursor,
            delivered: 0,
            skipped: 0,
        }
    }

    /// `seq` was acknowledged by the far side.
    pub(crate) fn delivered(&mut self, seq: i64) {
        self.handled_through = self.handled_through.max(seq);
        self.delivered += 1;
    }

    /// `seq` was refused for good, and is skipped.
    pub(crate) fn skipped(&mut self, seq: i64) {
        self.handled_through = self.handled_through.max(seq);
        self.skipped += 1;
    }

    /// `seq` (or everything through it) is not for this sink.
    pub(crate) fn passed(&mut self, seq: i64) {
        self.handled_through = self.handled_through.max(seq);
    }

    /// Whether the cursor must be written before the next delivery.
    pub(crate) fn full(&self) -> bool {
        usize::try_from(self.delivered + self.skipped).unwrap_or(usize::MAX) >= self.max
    }

    /// How many more deliveries may go before the cursor must be written (at least 1).
    pub(crate) fn room(&self) -> usize {
        let used = usize::try_from(self.delivered + self.skipped).unwrap_or(usize::MAX);
        self.max.saturating_sub(used).max(1)
    }

    /// Whether anything is not yet recorded.
    pub(crate) fn dirty(&self) -> bool {
        self.handled_through > self.recorded
    }

    /// What to record: (cursor, delivered, skipped) since the last record.
    pub(crate) fn pending(&self) -> (i64, u64, u64) {
        (self.handled_through, self.delivered, self.skipped)
    }

    /// The pending record was written.
    pub(crate) fn recorded(&mut self) {
        self.recorded = self.handled_through;
        self.delivered = 0;
        self.skipped = 0;
    }

    /// Reads again from `seq` (events already acknowledged once): the read position moves
    /// back, the recorded cursor does not (a crash now does not send them a third time).
    pub(crate) fn resend_from(&mut self, seq: i64) {
        self.handled_through = self.handled_through.min(seq - 1);
    }

    /// Whether the read position is behind what is recorded (a resend).
    pub(crate) fn resending(&self) -> bool {
        self.handled_through < self.recorded
    }

    /// A gap: retention deleted everything through `pruned`.
    pub(crate) fn jump(&mut self, pruned: i64) {
        self.handled_through = self.handled_through.max(pruned);
        self.recorded = self.recorded.max(pruned);
    }

    pub(crate) fn cursor(&self) -> i64 {
        self.handled_through
    }
}

/// What one delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The far side acknowledged it.
    Delivered,
    /// The far side refused it for good (the reason): skip it.
    Refused(String),
    /// It may pass (the reason): try again later.
    Failed(String),
}

/// How a sink reaches its far side.
pub(crate) trait Transport: Send {
    /// Beyond the filter: whether this event is for the far side at all.
    fn wants(&self, _event: &Event) -> bool {
        true
    }
    /// Delivers one event, blocking for at most the sink's timeout.
    fn deliver(&mut self, event: &Event) -> Outcome;
    /// Delivers several in order, some of them in flight at once: the outcomes of an
    /// unbroken run from the first, ending at the first `Failed` (the rest were not
    /// acknowledged and are sent again). By default, one `deliver` after another.
    fn deliver_batch(&mut self, events: &[&Event]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let outcome = self.deliver(event);
            let failed = matches!(outcome, Outcome::Failed(_));
            outcomes.push(outcome);
            if failed {
                break;
            }
        }
        outcomes
    }
    /// Whether it publishes the cameras' state: then the runner hands it, from the hub's
    /// persisted state (never folded from the sink's own, filtered events), every camera
    /// at the start and each camera a batch touched after the batch.
    fn follows_state(&self) -> bool {
        false
    }
    /// The hub's current state of these cameras.
    fn cameras(&mut self, _cameras: Vec<CameraState>) {}
    /// Cameras a batch touched that the hub's state no longer has (forgotten): whatever
    /// the transport published about them is to be withdrawn.
    fn gone(&mut self, _camera_ids: Vec<i64>) {}
    /// After a reconnect, the seq from which to send again events already acknowledged by
    /// a far side that may have lost them (an MQTT broker's unwritten memory); taken once.
    fn take_resend(&mut self) -> Option<i64> {
        None
    }
    /// For a transport with a standing connection (MQTT): whether it is up, or why not.
    /// `None` for one that connects per delivery (webhooks): then deliveries alone say.
    fn link(&self) -> Option<std::result::Result<(), String>> {
        None
    }
    /// Called about every [`IDLE_POLL`] while caught up (keep-alives, incoming messages).
    fn idle(&mut self) {}
    /// The sink stops: say goodbye.
    fn close(&mut self) {}
}

#[derive(Debug, Default)]
struct Times {
    connected_since: Option<String>,
    /// Since the first failed delivery after the last success (none: not failing, which
    /// includes a sink that has had nothing to deliver yet).
    failing_since: Option<String>,
    last_success_at: Option<String>,
    last_error: Option<String>,
}

/// One sink's figures, shared between its thread and `/api/sinks`, stats and `/metrics`.
#[derive(Debug)]
pub(crate) struct SinkStatus {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) target: String,
    pub(crate) cursor: AtomicI64,
    pub(crate) head: AtomicI64,
    pub(crate) delivered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) lost: AtomicU64,
    times: Mutex<Times>,
}

fn now_text() -> String {
    jiff::Timestamp::now().to_string()
}

impl SinkStatus {
    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        // Three strings, each written whole: poisoning cannot leave them half-written.
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Behind the head by this many seqs.
    pub(crate) fn lag(&self) -> i64 {
        (self.head.load(Relaxed) - self.cursor.load(Relaxed)).max(0)
    }

    /// The `/api/sinks` entry.
    pub(crate) fn to_json(&self) -> Value {
        let t = self.times();
        json!({
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "connected": t.connected_since.is_some(),
            "connected_since": t.connected_since,
            "failing": t.failing_since.is_some(),
            "failing_since": t.failing_since,
            "last_success_at": t.last_success_at,
            "last_error": t.last_error,
            "cursor": self.cursor.load(Relaxed),
            "head": self.head.load(Relaxed),
            "lag": self.lag(),
            "delivered": self.delivered.load(Relaxed),
            "retried": self.retried.load(Relaxed),
            "skipped": self.skipped.load(Relaxed),
            "gaps": self.gaps.load(Relaxed),
            "lost": self.lost.load(Relaxed),
        })
    }
}

/// The sinks' Prometheus series (empty without sinks). Names are a-z0-9 (validated), so
/// label values need no escaping.
pub(crate) fn render_metrics(statuses: &[Arc<SinkStatus>]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if statuses.is_empty() {
        return out;
    }
    type Read = fn(&SinkStatus) -> f64;
    let series: [(&str, &str, &str, Read); 8] = [
        (
            "tle_sink_delivered_total",
            "counter",
            "Events a sink delivered (acknowledged).",
            |s| s.delivered.load(Relaxed) as f64,
        ),
        (
            "tle_sink_retried_total",
            "counter",
            "Deliveries that failed and were tried again (5xx, timeouts, network).",
            |s| s.retried.load(Relaxed) as f64,
        ),
        (
            "tle_sink_skipped_total",
            "counter",
            "Events the far side refused for good (4xx), skipped.",
            |s| s.skipped.load(Relaxed) as f64,
        ),
        (
            "tle_sink_gaps_total",
            "counter",
            "Times retention's size limit deleted events before a sink delivered them.",
            |s| s.gaps.load(Relaxed) as f64,
        ),
        (
            "tle_sink_lost_total",
            "counter",
            "Seqs lost in those gaps.",
            |s| s.lost.load(Relaxed) as f64,
        ),
        (
            "tle_sink_cursor",
            "gauge",
            "The seq a sink has delivered through (stored).",
            |s| s.cursor.load(Relaxed) as f64,
        ),
        (
            "tle_sink_lag",
            "gauge",
            "Seqs between a sink's cursor and the stream head.",
            |s| s.lag() as f64,
        ),
        (
            "tle_sink_connected",
            "gauge",
            "1 while a sink's last delivery succeeded.",
            |s| f64::from(u8::from(s.times().connected_since.is_some())),
        ),
    ];
    for (name, kind, help, read) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}"); // a String never fails
        for s in statuses {
            let _ = writeln!(
                out,
                "{name}{{sink=\"{}\",kind=\"{}\"}} {}",
                s.name,
                s.kind,
                read(s)
            );
        }
    }
    out
}

/// The running sinks: their threads, their stop channel, their figures.
pub(crate) struct Sinks {
    stop: Option<crossbeam_channel::Sender<()>>,
    threads: Vec<(String, JoinHandle<Result<()>>)>,
    statuses: Arc<Vec<Arc<SinkStatus>>>,
}

/// The target as shown: scheme, host, port and path; no user, password or query string.
pub(crate) fn shown_target(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

fn kind_and_target(sink: &SinkConfig) -> (&'static str, String) {
    match &sink.target {
        SinkTarget::Webhook { url, .. } => ("webhook", shown_target(url)),
        SinkTarget::Ntfy { server, topic } => ("ntfy", shown_target(&format!("{server}{topic}"))),
        SinkTarget::Mqtt(m) => ("mqtt", shown_target(&m.url)),
    }
}

/// The dashboard's address for ntfy's `click`.
fn public_url(config: &Config) -> String {
    if let Some(u) = &config.public_url {
        return u.clone();
    }
    let addr = config.bind;
    if addr.ip().is_unspecified() {
        let name = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("http://{name}:{}/", addr.port())
    } else {
        format!("http://{addr}/")
    }
}

impl Sinks {
    /// Registers each sink's cursor (a new sink starts at the head: it delivers what comes
    /// from now on, not the history), then starts its thread.
    ///
    /// # Errors
    /// The database cannot be written, or a thread cannot start (those started stop again).
    pub(crate) fn start(config: &Config, store: &Store, dispatched: &Bell) -> Result<Sinks> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut sinks = Sinks {
            stop: Some(stop_tx),
            threads: Vec::new(),
            statuses: Arc::default(),
        };
        if config.sinks.is_empty() {
            return Ok(sinks);
        }
        let conn = store.conn()?;
        let head = events::head_seq(&conn)?;
        let mut statuses = Vec::new();
        let mut runners = Vec::new();
        for sink in &config.sinks {
            let (kind, target) = kind_and_target(sink);
            let row = store::sinks::register(&conn, &sink.name, kind, &target, head)?;
            let status = Arc::new(SinkStatus {
                name: sink.name.clone(),
                kind,
                target: target.clone(),
                cursor: AtomicI64::new(row.seq),
                head: AtomicI64::new(head),
                delivered: AtomicU64::new(u64::try_from(row.delivered).unwrap_or(0)),
                retried: AtomicU64::new(0),
                skipped: AtomicU64::new(u64::try_from(row.skipped).unwrap_or(0)),
                gaps: AtomicU64::new(u64::try_from(row.gaps).unwrap_or(0)),
                lost: AtomicU64::new(u64::try_from(row.lost).unwrap_or(0)),
                times: Mutex::default(),
            });
            log::info!(
                "sink {} ({kind} to {target}) resumes after seq {} (head {head})",
                sink.name,
                row.seq
            );
            statuses.push(status.clone());
            let transport = match mqtt::target(sink) {
                Some(m) => mqtt::transport(sink, m)?,
                None => webhook::transport(sink, &public_url(config)).ok_or_else(|| {
                    crate::error::Error::Config {
                        field: "sinks",
                        reason: format!("sink {}: no transport for its kind", sink.name),
                    }
                })?,
            };
            runners.push(Runner {
                name: sink.name.clone(),
                filter: SinkFilter::of(sink),
                window: Window::new(row.seq, sink.window),
                backoff: Backoff::new(
                    sink.retry_min,
                    sink.retry_max,
                    // Differs per process, cursor and sink, so that retries spread apart.
                    u64::from(std::process::id()) << 20
                        ^ row.seq.unsigned_abs()
                        ^ (statuses.len() as u64) << 40,
                ),
                transport,
                status,
                stop: stop_rx.clone(),
                dispatched: dispatched.listen(),
                state_loaded: false,
            });
        }
        drop(conn);
        sinks.statuses = Arc::new(statuses);
        for runner in runners {
            let name = runner.name.clone();
            let store = store.clone();
            let handle = spawn_named(&format!("sink-{name}"), None, move || runner.run(&store))?;
            sinks.threads.push((name, handle));
        }
        Ok(sinks)
    }

    /// Every sink's figures, in configured order.
    pub(crate) fn statuses(&self) -> Arc<Vec<Arc<SinkStatus>>> {
        self.statuses.clone()
    }

    /// Stops every sink thread and waits for it: each records its cursor first. A delivery
    /// under way is waited for (at most the sink's timeout).
    pub(crate) fn stop(&mut self) -> Result<()> {
        drop(self.stop.take());
        let mut first = Ok(());
        for (name, handle) in self.threads.drain(..) {
            if let Err(e) = crate::thread::join_thread(&format!("tle-sink-{name}"), handle) {
                log::error!("{}", e.chain());
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// The healthy/failing state a sink logs on change only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Delivering,
    Failing,
}

struct Runner {
    name: String,
    filter: SinkFilter,
    window: Window,
    backoff: Backoff,
    transport: Box<dyn Transport>,
    status: Arc<SinkStatus>,
    stop: Receiver<()>,
    /// A message when the poller dispatched something since the last look.
    dispatched: Receiver<()>,
    /// Whether a transport that follows the state has had every camera.
    state_loaded: bool,
}

/// Whether `stop` asked (its sender dropped) during a wait of `d`.
fn stopped_within(stop: &Receiver<()>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

impl Runner {
    fn run(mut self, store: &Store) -> Result<()> {
        // A sink may be late by a few milliseconds; a stream should not be.
        crate::thread::lower_priority(&format!("tle-sink-{}", self.name));
        let mut health = Health::Unknown;
        let mut db_failing = false;
        let mut last_record = Instant::now();
        loop {
            match self.round(store, &mut health, &mut last_record) {
                Ok(true) => {
                    db_failing = false;
                }
                Ok(false) => {
                    // Caught up: record what is pending, then wait for more.
                    self.record_logged(store);
                    db_failing = false;
                    self.transport.idle();
                    if let Some(link) = self.transport.link() {
                        self.note_link(link);
                    }
                    if self.stop_or_news_within(IDLE_POLL) {
                        break;
                    }
                }
                Err(e) => {
                    if !db_failing {
                        log::warn!("sink {}: {}; trying again", self.name, e.chain());
                        db_failing = true;
                    }
                    if stopped_within(&self.stop, IDLE_POLL * 4) {
                        break;
                    }
                }
            }
            if self.stop_asked() {
                break;
            }
        }
        self.record_logged(store);
        self.transport.close();
        log::info!(
            "sink {} stopped after seq {}",
            self.name,
            self.window.cursor()
        );
        Ok(())
    }

    /// Waits for the poller's next batch, the stop (true), or `d`.
    fn stop_or_news_within(&self, d: Duration) -> bool {
        crossbeam_channel::select! {
            recv(self.stop) -> _ => true,
            recv(self.dispatched) -> _ => false,
            default(d) => false,
        }
    }

    fn stop_asked(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    fn record_logged(&mut self, store: &Store) {
        if let Err(e) = self.record(store) {
            log::warn!(
                "sink {}: cannot record its cursor: {}",
                self.name,
                e.chain()
            );
        }
    }

    fn record(&mut self, store: &Store) -> Result<()> {
        if !self.window.dirty() {
            return Ok(());
        }
        let (seq, delivered, skipped) = self.window.pending();
        store::sinks::advance(&*store.conn()?, &self.name, seq, delivered, skipped)?;
        self.window.recorded();
        self.status.cursor.store(seq, Relaxed);
        log::debug!("sink {} recorded its cursor at seq {seq}", self.name);
        Ok(())
    }

    /// One page: returns whether there was anything to read.
    fn round(
        &mut self,
        store: &Store,
        health: &mut Health,
        last_record: &mut Instant,
    ) -> Result<bool> {
        if let Some(seq) = self.transport.take_resend() {
            log::info!(
                "sink {}: sending again from seq {seq}: the far side acknowledged it shortly before the connection broke and may not have kept it",
                self.name
            );
            self.window.resend_from(seq);
        }
        let (head, pruned, page) = {
            let conn = store.conn()?;
            let head = events::head_seq(&conn)?;
            let pruned = events::pruned_seq(&conn)?;
            let after = self.window.cursor().max(pruned);
            let upto = head.min(after + PAGE_ROWS);
            let limit = usize::try_from(PAGE_ROWS).unwrap_or(256);
            (
                head,
                pruned,
                events::replay(&conn, store.log_id(), after, upto, limit)?,
            )
        };
        self.status.head.store(head, Relaxed);
        if self.transport.follows_state() && !self.state_loaded {
            let all = store::state_rows::cameras(&*store.conn()?, None)?;
            let mine = all
                .into_iter()
                .filter(|c| self.filter.has_camera(c.camera_id))
                .collect();
            self.transport.cameras(mine);
            self.state_loaded = true;
        }
        let cursor = self.window.cursor();
        if cursor < pruned && self.window.resending() {
            // A resend that reaches back over deleted rows: nothing of the recorded is lost.
            self.window.jump(pruned);
        } else if cursor < pruned {
            // Only the size limit deletes past an enabled sink's cursor.
            self.record(store)?;
            let lost = store::sinks::record_gap(&*store.conn()?, &self.name, pruned)?;
            self.window.jump(pruned);
            self.status.cursor.store(pruned, Relaxed);
            self.status.gaps.fetch_add(1, Relaxed);
            self.status
                .lost
                .fetch_add(u64::try_from(lost).unwrap_or(0), Relaxed);
            log::warn!(
                "sink {}: retention's size limit deleted seqs {} to {pruned} before they were delivered ({lost} lost); carrying on from seq {}",
                self.name,
                cursor + 1,
                pruned + 1
            );
        }
        let after = self.window.cursor();
        if head <= after {
            return Ok(false);
        }
        let upto = head.min(after + PAGE_ROWS);
        let wanted: Vec<bool> = page
            .iter()
            .map(|e| self.filter.matches(e) && self.transport.wants(e))
            .collect();
        let mut i = 0;
        while i < page.len() {
            if self.window.full() || last_record.elapsed() >= RECORD_EVERY {
                self.record(store)?;
                *last_record = Instant::now();
            }
            // The next batch: up to the window's room of wanted events, and the passed
            // ones among them.
            let room = self.window.room();
            let mut end = i;
            let mut batch: Vec<&Event> = Vec::new();
            while end < page.len() && batch.len() < room {
                if wanted[end] {
                    batch.push(&page[end]);
                }
                end += 1;
            }
            let mut outcomes = if batch.is_empty() {
                Vec::new()
            } else {
                self.transport.deliver_batch(&batch)
            }
            .into_iter();
            // Applied in seq order: nothing after the first unacknowledged one moves the
            // cursor.
            for (event, want) in page[i..end].iter().zip(&wanted[i..end]) {
                if !want {
                    self.window.passed(event.cursor.seq);
                    continue;
                }
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| Outcome::Failed("not acknowledged".into()));
                if !self.settle(event, outcome, health) {
                    // Failed (and waited), or stopping: read again from the cursor, so that a
                    // gap retention made meanwhile is seen, and the head is fresh.
                    return Ok(true);
                }
            }
            self.follow_state(store, &page[i..end])?;
            i = end;
        }
        // Every row through `upto` was in the page (seqs are unique): rows replay could
        // not read are passed too.
        self.window.passed(upto);
        Ok(true)
    }

    /// Hands a transport that follows the state the hub's state of the cameras `events`
    /// touched (those its filter has), whether or not it wanted the events themselves.
    fn follow_state(&mut self, store: &Store, events: &[Event]) -> Result<()> {
        if !self.transport.follows_state() {
            return Ok(());
        }
        let mut ids: Vec<i64> = events
            .iter()
            .filter(|e| e.host.is_none())
            .filter_map(Event::camera_id)
            .filter(|id| self.filter.has_camera(*id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            let cameras = store::state_rows::cameras(&*store.conn()?, Some(&ids))?;
            let gone: Vec<i64> = ids
                .into_iter()
                .filter(|id| !cameras.iter().any(|c| c.camera_id == *id))
                .collect();
            self.transport.cameras(cameras);
            if !gone.is_empty() {
                self.transport.gone(gone);
            }
        }
        Ok(())
    }

    /// Settles one event's outcome: true once delivered or refused; false when it failed (after
    /// the backoff's wait, or when asked to stop during it).
    fn settle(&mut self, event: &Event, outcome: Outcome, health: &mut Health) -> bool {
        let seq = event.cursor.seq;
        match outcome {
            Outcome::Delivered => {
                log::debug!("sink {} delivered seq {seq}", self.name);
                self.window.delivered(seq);
                self.status.delivered.fetch_add(1, Relaxed);
                self.succeeded(health);
                true
            }
            Outcome::Refused(reason) => {
                log::warn!("sink {}: seq {seq} refused, skipped: {reason}", self.name);
                self.window.skipped(seq);
                self.status.skipped.fetch_add(1, Relaxed);
                self.times().last_error = Some(format!("seq {seq} skipped: {reason}"));
                // The far side answered: it is reachable.
                self.succeeded(health);
                true
            }
            Outcome::Failed(reason) => {
                self.status.retried.fetch_add(1, Relaxed);
                let delay = self.backoff.next_delay();
                if *health != Health::Failing {
                    log::warn!(
                        "sink {}: delivery failing ({reason}); retrying seq {seq} with backoff up to {:?}",
                        self.name,
                        self.backoff.max()
                    );
                    *health = Health::Failing;
                } else {
                    log::debug!(
                        "sink {}: still failing ({reason}); next try in {delay:?}",
                        self.name
                    );
                }
                {
                    let mut t = self.times();
                    t.connected_since = None;
                    if t.failing_since.is_none() {
                        t.failing_since = Some(now_text());
                    }
                    t.last_error = Some(reason);
                }
                // A stop during the wait is seen by `run` right after.
                let _ = stopped_within(&self.stop, delay);
                false
            }
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.status.times()
    }

    /// A standing connection's state while idle, for `connected` in `/api/sinks`.
    fn note_link(&self, link: std::result::Result<(), String>) {
        let mut t = self.times();
        match link {
            Ok(()) if t.connected_since.is_none() => t.connected_since = Some(now_text()),
            Err(reason) if t.connected_since.is_some() => {
                t.connected_since = None;
                t.last_error = Some(reason);
            }
            _ => {}
        }
    }

    fn succeeded(&mut self, health: &mut Health) {
        self.backoff.reset();
        let now = now_text();
        let mut t = self.times();
        if t.connected_since.is_none() {
            t.connected_since = Some(now.clone());
        }
        t.failing_since = None;
        t.last_success_at = Some(now);
        drop(t);
        if *health != Health::Delivering {
            log::info!("sink {}: delivering", self.name);
            *health = Health::Delivering;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_filter_checks_type_priority_and_camera() {
        let mut e = Event::for_test(1, "camera_stale", "t", json!({"camera_id": 3}));
        e.priority = Priority::High;
        let f = |types: Option<&[&str]>, min, cams: Option<&[i64]>| SinkFilter {
            types: types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
            min_priority: min,
            camera_ids: cams.map(<[i64]>::to_vec),
        };
        for (filter, want) in [
            (f(None, Priority::Low, None), true),
            (f(Some(&["camera_stale"]), Priority::Low, None), true),
            (f(Some(&["image_captured"]), Priority::Low, None), false),
            (f(None, Priority::High, None), true),
            (f(None, Priority::Critical, None), false),
            (f(None, Priority::Low, Some(&[1, 3])), true),
            (f(None, Priority::Low, Some(&[1])), false),
        ] {
            assert_eq!(filter.matches(&e), want, "{filter:?}");
        }
        let no_camera = Event::for_test(2, "x", "t", json!({}));
        assert!(!f(None, Priority::Low, Some(&[3])).matches(&no_camera));
    }

    #[test]
    fn a_resend_moves_the_read_position_back_but_never_the_recorded_cursor() {
        let mut w = Window::new(10, 8);
        for seq in 11..=14 {
            w.delivered(seq);
        }
        w.recorded();
        w.resend_from(12);
        assert_eq!(w.cursor(), 11, "reads again from 12");
        assert!(
            w.resending() && !w.dirty(),
            "nothing to record while behind it"
        );
        w.delivered(12);
        w.delivered(13);
        assert!(!w.dirty());
        w.delivered(14);
        w.delivered(15);
        assert!(w.dirty() && !w.resending());
        assert_eq!(w.pending().0, 15);
        w.resend_from(20);
        assert_eq!(w.cursor(), 15, "a resend never moves forward");
    }

    #[test]
    fn the_window_records_only_what_was_handled_and_bounds_the_unrecorded() {
        let mut w = Window::new(10, 3);
        assert!(!w.dirty());
        w.passed(11);
        w.delivered(12);
        w.skipped(13);
        assert!(!w.full());
        w.delivered(14);
        assert!(w.full(), "3 deliveries not recorded");
        assert_eq!(w.pending(), (14, 2, 1));
        w.recorded();
        assert!(!w.dirty() && !w.full());
        w.jump(20);
        assert_eq!(w.cursor(), 20);
        assert!(
            !w.dirty(),
            "a gap is recorded by record_gap, not by the window"
        );
        w.passed(19);
        assert_eq!(w.cursor(), 20, "never back");
        let mut w = Window::new(0, 4);
        assert_eq!(w.room(), 4);
        w.delivered(1);
        w.skipped(2);
        assert_eq!(
            w.room(),
            2,
            "a batch never takes the unrecorded past the window"
        );
        w.delivered(3);
        w.delivered(4);
        assert_eq!(w.room(), 1, "full: one at a time until recorded");
        w.recorded();
        assert_eq!(w.room(), 4);
    }

    #[test]
    fn shown_targets_drop_credentials_and_queries() {
        for (url, shown) in [
            ("http://u:pw@h:8080/p?token=x", "http://h:8080/p"),
            ("http://h", "http://h/"),
            ("http://h/a/b#frag", "http://h/a/b"),
            ("http://h?x=1", "http://h/"),
        ] {
            assert_eq!(shown_target(url), shown, "{url}");
        }
    }
}
