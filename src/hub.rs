//! [`Hub`]: wires the store, poller, broadcast and HTTP server together and owns
//! every thread it starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::config::Config;
use crate::emitter::Emitter;
use crate::error::Result;
use crate::fleet::Fleet;
use crate::http::{self, Ctx, Listener, Server, StreamWriter};
use crate::mdns::Advert;
use crate::metrics::Metrics;
use crate::notify::{self, Notifier};
use crate::poller::{self, Outputs, Pace, Poller};
use crate::retention;
use crate::sink::Sinks;
use crate::state::Limits;
use crate::store::identity::DbLock;
use crate::store::{OpenMode, SCHEMA_VERSION, Store, events};
use crate::thread::{Fatal, Group, join_thread, spawn_critical, spawn_named};
use crate::watch::{WalWatch, WatchStop};

/// The poller's backstop check when WAL notifications work (they do the real waking).
const WATCHED_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A running hub. Stop it with [`Hub::shutdown`] (dropping it does the same, best effort).
///
/// ```no_run
/// use timelapse_events::{Config, Hub, NewEvent};
/// let hub = Hub::start(Config::default())?;
/// hub.emitter().emit(NewEvent::camera_status_changed(1, "online", "healthy"))?;
/// hub.shutdown()?;
/// # Ok::<(), timelapse_events::Error>(())
/// ```
pub struct Hub {
    config: Config,
    store: Store,
    emitter: Emitter,
    poller: Option<JoinHandle<Result<()>>>,
    retention: Option<JoinHandle<Result<()>>>,
    checkpointer: Option<JoinHandle<Result<()>>>,
    watcher: Option<JoinHandle<Result<()>>>,
    /// Dropped to stop `tle-watch` (it sleeps in `poll` on the WAL and on this, no timeout).
    watch_stop: Option<WatchStop>,
    /// The `tle-sink-<name>` threads.
    sinks: Sinks,
    /// The `tle-fleet` thread, with `--mqtt-subscribe`.
    fleet: Fleet,
    poller_stop: Option<Sender<()>>,
    out: Outputs,
    streams: Arc<Group>,
    /// `tle-streams`, which writes every following stream; stopped after the streams
    /// have ended (or their grace is up).
    writer: Option<StreamWriter>,
    http: Option<Server>,
    addr: SocketAddr,
    failures: Receiver<String>,
    /// The poller's longest quiet while it is alive (see [`poller::max_quiet`]).
    poller_quiet: Duration,
    /// systemd's notify socket, once [`Hub::notify_systemd`] found one.
    notifier: Option<Arc<Notifier>>,
    /// The `tle-notify` watchdog pinger and its stop channel.
    pinger: Option<(Sender<()>, JoinHandle<Result<()>>)>,
    /// The mDNS advertisement (mdns-sd's `mDNS_daemon` thread), when listening beyond
    /// loopback and not turned off.
    mdns: Option<Advert>,
    /// Set once stop_all has run (Drop calls it again after `shutdown`).
    stopped: bool,
    /// This hub's lock on its database; the last field, so it is released only after
    /// everything above has stopped and dropped.
    _lock: DbLock,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Binds the listener, then opens (creating if need be) the database, starts the poller,
    /// the sinks (`config.sinks`), retention, WAL watcher and HTTP workers, and returns once they run (so a client may
    /// connect at once). Beyond loopback it then advertises itself with mDNS (unless
    /// `config.mdns` is off); a failure there is a warning, not an error.
    ///
    /// # Errors
    /// A bad config; an address that cannot be bound ([`Error::Bind`](crate::Error::Bind),
    /// found before the database is touched, so nothing is created or migrated); a database
    /// that cannot be opened or written ([`Error::DbFile`](crate::Error::DbFile)), that
    /// another hub serves (its `<db>.lock` is held: `DbFileProblem::InUse`), or that is
    /// newer than this binary; or a thread that cannot start.
    pub fn start(mut config: Config) -> Result<Hub> {
        config.validate()?;
        config.resolve_images_dir()?;
        crate::limits::raise_fd_limit();
        let listener = Listener::bind(&config)?;
        crate::store::preflight(&config.db_path, OpenMode::Create)?;
        crate::store::create_with_umask(&config.db_path);
        // Before the database is opened (and maybe migrated): a second hub touches nothing.
        let lock = DbLock::acquire(&config.db_path)?;
        log::debug!("holding the lock on {}", lock.path().display());
        let store = Store::open(&config.db_path, config.synchronous, config.busy_timeout)?;
        let (wake_tx, wake_rx) = bounded(1);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (fatal, failures) = Fatal::channel();
        let (emitter, intake) = Emitter::channel();
        let out = Outputs {
            metrics: Arc::new(Metrics::new(config.max_event_types)),
            ..Outputs::default()
        };
        // File notifications when they work; fast polling when they do not.
        let watch = if config.watch_wal {
            WalWatch::new(&config.db_path)
                .map_err(|e| {
                    let every = config.poll_interval;
                    log::warn!("{}; polling every {every:?} instead", e.chain());
                })
                .ok()
        } else {
            None
        };
        let pace = Pace {
            poll_interval: if watch.is_some() {
                config.poll_interval.max(WATCHED_POLL_INTERVAL)
            } else {
                config.poll_interval
            },
            watched: watch.is_some(),
            batch_rows: config.batch_rows,
            stale_floor: config.stale_floor,
            limits: Limits::new(config.max_cameras, config.max_event_types),
        };
        let (watcher, watch_stop) = match watch {
            Some((w, stop)) => (
                Some(spawn_critical("watch", Some(fatal.clone()), move || {
                    w.run(&wake_tx)
                })?),
                Some(stop),
            ),
            None => (None, None),
        };
        // Loads the state before any request is served, so /api/state always has an answer.
        let poller = Poller::open(&store, &pace, out.clone(), intake, wake_rx, stop_rx.clone())?;
        let checkpointer = {
            let (store, stop) = (store.clone(), stop_rx.clone());
            let dispatched = out.dispatched.listen();
            spawn_critical("checkpoint", Some(fatal.clone()), move || {
                crate::checkpoint::run(&store, &stop, &dispatched)
            })?
        };
        // Registers the sinks' cursors before retention's first round, which they hold.
        // (On an error below, dropping `sinks` drops its stop channel: its threads end.)
        let sinks = Sinks::start(&config, &store, &out.dispatched)?;
        let fleet = Fleet::start(&config, &store)?;
        let retention = {
            let (store, stop) = (store.clone(), stop_rx);
            let (policy, interval) = (retention::policy(&config), config.retention_interval);
            let names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
            spawn_critical("retention", Some(fatal.clone()), move || {
                retention::run(&store, policy, &names, interval, &stop)
            })?
        };
        let poller_quiet = poller::max_quiet(pace.poll_interval);
        let poller = spawn_critical("poller", Some(fatal.clone()), move || poller.run())?;
        let streams = http::streams(&config);
        let writer = StreamWriter::start(
            config.heartbeat_interval,
            config.send_timeout,
            fatal.clone(),
        )?;
        let writer_handle = writer.handle();
        let ctx = Arc::new(Ctx {
            config: config.clone(),
            store: store.clone(),
            emitter: emitter.clone(),
            broadcast: out.broadcast.clone(),
            status: out.status.clone(),
            streams: streams.clone(),
            stream_peers: http::stream_peers(&config),
            cache: out.cache.clone(),
            metrics: out.metrics.clone(),
            bound: std::sync::OnceLock::new(),
            machine: crate::host::Machine::read(),
            sinks: sinks.statuses(),
            fleet: fleet.enabled().then(|| fleet.status()),
        });
        let mut hub = Hub {
            config,
            store,
            emitter,
            poller: Some(poller),
            retention: Some(retention),
            checkpointer: Some(checkpointer),
            watcher,
            watch_stop,
            sinks,
            fleet,
            poller_stop: Some(stop_tx),
            out,
            streams,
            writer: Some(writer),
            http: None,
            addr: ([0, 0, 0, 0], 0).into(),
            failures,
            poller_quiet,
            notifier: None,
            pinger: None,
            mdns: None,
            stopped: false,
            _lock: lock,
        };
        // On failure here, `hub` drops and stops what already runs.
        let server = http::start(ctx, listener, fatal, &writer_handle)?;
        hub.addr = server.addr();
        hub.http = Some(server);
        // Only now that the port is known (and taken): never a failed start.
        hub.mdns = Advert::start(&hub.config, hub.addr);
        let counts = events::counts(&*hub.store.conn()?)?;
        log::info!(
            "timelapse-events listening on http://{} (database {}, schema version {}, {} events dispatched, {} pending)",
            hub.addr,
            hub.store.path().display(),
            SCHEMA_VERSION,
            counts.dispatched,
            counts.pending
        );
        Ok(hub)
    }

    /// The address the HTTP server is bound to (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle for producing events in this process.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    /// Receives a message when a thread the hub cannot run without has died (the poller,
    /// retention, the WAL watcher), or when the hub must restart to free resources a hostile
    /// client tied up. `serve` then shuts down and exits 1, so a supervisor restarts it.
    pub fn failures(&self) -> Receiver<String> {
        self.failures.clone()
    }

    /// Tells systemd (`Type=notify`) that the hub is ready, and, if `WatchdogSec=` is set,
    /// starts the `tle-notify` thread, which sends `WATCHDOG=1` every half timeout, but
    /// only while the poller goes round its loop and the HTTP server takes connections: a
    /// wedged hub goes quiet and systemd restarts it. [`Hub::shutdown`] sends `STOPPING=1`.
    /// Call it once, when the hub should count as started (`serve` does, right after
    /// [`Hub::start`]). Returns false, doing nothing, without `$NOTIFY_SOCKET`.
    ///
    /// # Errors
    /// `$NOTIFY_SOCKET` is unusable, `READY=1` cannot be sent, or the thread cannot start.
    pub fn notify_systemd(&mut self) -> Result<bool> {
        let Some(notifier) = Notifier::from_env()? else {
            return Ok(false);
        };
        let notifier = Arc::new(notifier);
        notifier.send(&format!(
            "READY=1\nSTATUS=listening on http://{}",
            self.addr
        ))?;
        self.notifier = Some(notifier.clone());
        let Some(timeout) = notify::watchdog_interval() else {
            log::info!("told systemd the hub is ready (no watchdog)");
            return Ok(true);
        };
        let Some(accept) = self.http.as_ref().map(Server::liveness) else {
            return Ok(true); // stopping already
        };
        let status = self.out.status.clone();
        // Never quicker than the poller's own longest quiet, or an alive poller in backoff
        // would get the hub restarted.
        let quiet = self.poller_quiet.max(timeout);
        let healthy = move || {
            let since = status.since_beat();
            if since > quiet {
                return Err(format!(
                    "the poller has not gone round its loop for {since:.1?} (stuck in the database?)"
                ));
            }
            if !accept.alive() {
                return Err("the HTTP server is not answering connections".to_owned());
            }
            Ok(())
        };
        let every = timeout / 2;
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let pinger = spawn_named("notify", Some(64 * 1024), move || {
            notify::ping(&notifier, every, &stop_rx, healthy);
            Ok(())
        })?;
        self.pinger = Some((stop_tx, pinger));
        log::info!("told systemd the hub is ready; watchdog ping every {every:?}");
        Ok(true)
    }

    /// The config the hub runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops everything, in this order: the mDNS advertisement (goodbye packets, then its
    /// daemon); HTTP workers (no new requests or streams), and the
    /// uploads in progress (waited for up to `shutdown_grace`, so they are answered); the
    /// sinks (each records its cursor, after the delivery under way: at most its timeout); the
    /// poller (finishes its batch, then stores, dispatches and answers every queued emit;
    /// rows it did not reach stay pending and are dispatched at the next start); the
    /// broadcast (each stream writes its final chunk and ends; waited for up to
    /// `shutdown_grace`); then a WAL checkpoint.
    ///
    /// # Errors
    /// The first error a thread ended with (later ones are logged).
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<()> {
        let mut first: Result<()> = Ok(());
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                if first.is_ok() {
                    first = Err(e);
                } else {
                    log::error!("{}", e.chain());
                }
            }
        };
        if let Some(n) = self.notifier.take()
            && let Err(e) = n.send("STOPPING=1")
        {
            log::warn!("{}", e.chain());
        }
        if let Some((stop, pinger)) = self.pinger.take() {
            drop(stop);
            keep(join_thread("notify", pinger));
        }
        // Goodbyes first: the LAN stops being pointed at a hub that is going away.
        if let Some(advert) = self.mdns.take() {
            advert.stop();
        }
        if let Some(mut http) = self.http.take() {
            keep(http.stop(Instant::now() + self.config.shutdown_grace));
        }
        // The ingest stores and acknowledges its batch under way, then ends.
        keep(self.fleet.stop());
        // Each sink records its cursor and ends (after the delivery under way, if any).
        keep(self.sinks.stop());
        // Disconnects the poller's and retention's select!; the poller stores and answers
        // the emits already queued before it ends.
        drop(self.poller_stop.take());
        if let Some(p) = self.poller.take() {
            keep(join_thread("poller", p));
        }
        if let Some(c) = self.checkpointer.take() {
            keep(join_thread("checkpoint", c));
        }
        if let Some(r) = self.retention.take() {
            keep(join_thread("retention", r));
        }
        drop(self.watch_stop.take());
        if let Some(w) = self.watcher.take() {
            keep(join_thread("watch", w));
        }
        self.out.broadcast.close();
        let left = self
            .streams
            .wait(Instant::now() + self.config.shutdown_grace);
        if left > 0 {
            log::warn!(
                "{left} streams still writing at shutdown (their send timeout will end them)"
            );
        }
        if let Some(w) = self.writer.take() {
            keep(w.stop());
        }
        if !self.stopped {
            self.stopped = true;
            keep(self.store.checkpoint());
            log::info!("timelapse-events stopped");
        }
        first
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Err(e) = self.stop_all() {
            log::error!("hub stopped with error: {}", e.chain());
        }
    }
}

/// The one /proc reader of the tests, benchmarks and examples.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../examples/common/procfs.rs"]
mod procfs;

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the WAL watcher (inotify unavailable, or turned off) the poller only
    /// polls: no wake-up channel may leave it spinning. The one Hub in this test binary,
    /// so its `tle-poller` is the only one. A spinning poller burns about a core-second
    /// per second; a polling one a few milliseconds.
    #[test]
    fn an_idle_poller_without_the_watcher_sleeps() {
        let dir = tempfile::tempdir().expect("tmp");
        let hub = Hub::start(Config {
            db_path: dir.path().join("events.db"),
            bind: ([127, 0, 0, 1], 0).into(),
            watch_wal: false,
            ..Config::default()
        })
        .expect("hub starts");
        hub.emitter()
            .emit(crate::NewEvent::new("warm_up", serde_json::json!({})))
            .expect("emit");
        let cpu_s = || super::procfs::threads_cpu_s(&["tle-poller"]).expect("/proc/self/task");
        let before = cpu_s();
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_s() - before;
        hub.shutdown().expect("shutdown");
        assert!(used < 0.25, "the idle poller used {used} s of CPU in 1 s");
    }
}
