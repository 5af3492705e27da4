//! The fleet ingest: with `serve --mqtt-subscribe URL` one `tle-fleet` thread subscribes, at
//! QoS 1, to the other camera hosts' event topics (`<prefix>/+/events/#`, this host's own
//! skipped) and their availability (`<prefix>/+/availability`), and stores each remote event
//! in this hub's log. The poller then dispatches it like a local one: it streams, replays,
//! resumes, feeds the state and the sinks.
//!
//! At least once, never twice. The session is kept by the broker (a fixed client id, clean
//! session off), so what is published while this hub is away waits for it. A PUBLISH is
//! acknowledged only after the transaction that stored it committed: a crash before that
//! has the broker send it again. And every copy after the first is a no-op by the schema's
//! unique (origin_host, origin_cursor), whoever sent it again (the broker, or a camera host
//! whose sink replays its window after a restart).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Value, json};

use crate::backoff::Backoff;
use crate::config::{Config, MqttTarget};
use crate::error::{Error, Result};
use crate::event::{NewEvent, Priority};
use crate::mqtt::packet::{Connect, Incoming};
use crate::mqtt::{BrokerUrl, Client, KEEP_ALIVE, Security, level, split_url};
use crate::state::parse_utc_ms;
use crate::store::{Store, events};
use crate::thread::spawn_named;

/// Most remote events stored in one transaction.
const BATCH: usize = 256;
/// Once a batch has begun, how long a read waits for the next message before the batch is
/// stored: the broker sends a few (Mosquitto: 20) before it waits for our acknowledgements.
const GATHER: Duration = Duration::from_millis(2);
/// How long a read waits when nothing is pending (the stop request is seen this often).
const IDLE_READ: Duration = Duration::from_millis(250);
/// The broker's answers (CONNACK) are waited for this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What one message on the subscribed topics is.
#[derive(Debug, PartialEq)]
pub(crate) enum Message {
    /// An event of another host, to store.
    Event(events::Remote),
    /// A host's retained `online` / `offline`.
    Availability { host: String, online: bool },
    /// This host's own topic (its sink publishes there): not for us.
    Own,
    /// Not an event we can store, with why.
    Ignored(String),
}

/// Reads one message: `<prefix>/<host>/events/<type>` with the MQTT sink's payload (the
/// stream's envelope plus `host` and `cursor`), or `<prefix>/<host>/availability`.
pub(crate) fn parse(prefix: &str, own: &str, topic: &str, payload: &[u8]) -> Message {
    let mut levels = topic.split('/');
    let (Some(p), Some(host_level), Some(kind)) = (levels.next(), levels.next(), levels.next())
    else {
        return Message::Ignored(format!("topic {topic} is not <prefix>/<host>/…"));
    };
    if p != prefix {
        return Message::Ignored(format!("topic {topic} is not under {prefix}/"));
    }
    if host_level == level(own) {
        return Message::Own;
    }
    match kind {
        "availability" => {
            return match payload {
                b"online" => Message::Availability {
                    host: host_level.to_owned(),
                    online: true,
                },
                b"offline" => Message::Availability {
                    host: host_level.to_owned(),
                    online: false,
                },
                _ => Message::Ignored("availability is neither online nor offline".into()),
            };
        }
        "events" => {}
        _ => return Message::Ignored(format!("topic {topic} is not an event topic")),
    }
    let v: Value = match serde_json::from_slice(payload) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Message::Ignored("the payload is not a JSON object".into()),
        Err(e) => return Message::Ignored(format!("the payload is not JSON: {e}")),
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str);
    let host = text("host").unwrap_or(host_level).to_owned();
    if host.is_empty() || host.len() > 64 || host == own {
        return Message::Ignored(format!("host {host:?} cannot be stored as another host"));
    }
    let Some(cursor) = text("cursor").filter(|c| (3..=40).contains(&c.len())) else {
        return Message::Ignored("no cursor: a publisher older than the fleet".into());
    };
    let Some(event_type) = text("type") else {
        return Message::Ignored("no type".into());
    };
    let data = v.get("data").cloned().unwrap_or_else(|| json!({}));
    let priority = match text("priority").map(str::parse::<Priority>) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return Message::Ignored(e.to_string()),
        None => Priority::Normal,
    };
    let mut event = NewEvent::new(event_type, data).with_priority(priority);
    if let Some(source) = text("source") {
        event = event.with_source(source);
    }
    if let Err(e) = event.validate() {
        return Message::Ignored(e.to_string());
    }
    // SQLite's own format only (what every hub writes), so that age and order comparisons
    // on created_at hold; anything else is stored as now.
    let created_at = text("timestamp")
        .filter(|t| t.len() == 24 && t.ends_with('Z') && parse_utc_ms(t).is_some())
        .map(str::to_owned);
    Message::Event(events::Remote {
        host,
        cursor: cursor.to_owned(),
        event,
        created_at,
    })
}

/// One remote host, as the ingest last heard it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostSeen {
    /// Its retained availability (`None` before it was heard).
    pub(crate) online: Option<bool>,
    /// When its last event or `online` arrived (RFC 3339); the will's `offline`, sent by
    /// the broker when the host has gone quiet, leaves it.
    pub(crate) last_heard_at: Option<String>,
    /// Its events stored here since this hub started.
    pub(crate) events: u64,
}

/// The ingest's figures, shared with the HTTP workers.
#[derive(Debug, Default)]
pub(crate) struct FleetStatus {
    pub(crate) connected: AtomicBool,
    pub(crate) stored: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) ignored: AtomicU64,
    hosts: Mutex<BTreeMap<String, HostSeen>>,
}

impl FleetStatus {
    /// Every remote host heard from, by name.
    pub(crate) fn hosts(&self) -> BTreeMap<String, HostSeen> {
        self.hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records news of `host`; `from_it` when the host itself spoke (an event, its
    /// `online`), not the broker for it (the will's `offline`).
    fn heard(&self, host: &str, from_it: bool, f: impl FnOnce(&mut HostSeen)) {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded: a broker full of hostile topics cannot grow it without end.
        if hosts.len() >= 1024 && !hosts.contains_key(host) {
            return;
        }
        let seen = hosts.entry(host.to_owned()).or_default();
        if from_it {
            seen.last_heard_at = Some(jiff::Timestamp::now().to_string());
        }
        f(seen);
    }
}

/// The running ingest (none without `--mqtt-subscribe`).
pub(crate) struct Fleet {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
    status: Arc<FleetStatus>,
}

impl Fleet {
    /// Starts `tle-fleet` when `config.mqtt_subscribe` is set.
    ///
    /// # Errors
    /// The URL is not `mqtt://…`, or the thread cannot start.
    pub(crate) fn start(config: &Config, store: &Store) -> Result<Fleet> {
        let status = Arc::new(FleetStatus::default());
        let Some(target) = &config.mqtt_subscribe else {
            return Ok(Fleet {
                stop: None,
                thread: None,
                status,
            });
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let ingest = Ingest::new(target, store.clone(), status.clone(), stop_rx)?;
        let thread = spawn_named("fleet", None, move || ingest.run())?;
        Ok(Fleet {
            stop: Some(stop_tx),
            thread: Some(thread),
            status,
        })
    }

    pub(crate) fn status(&self) -> Arc<FleetStatus> {
        self.status.clone()
    }

    /// Whether an ingest runs.
    pub(crate) fn enabled(&self) -> bool {
        self.thread.is_some()
    }

    /// Stops the thread (after the batch under way is stored and acknowledged) and waits.
    pub(crate) fn stop(&mut self) -> Result<()> {
        drop(self.stop.take());
        match self.thread.take() {
            Some(t) => crate::thread::join_thread("tle-fleet", t),
            None => Ok(()),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A hub that failed to start drops it: the thread ends with the channel.
        drop(self.stop.take());
    }
}

struct Ingest {
    addr: String,
    security: Security,
    connect: Connect,
    prefix: String,
    own: String,
    store: Store,
    status: Arc<FleetStatus>,
    stop: Receiver<()>,
}

impl Ingest {
    fn new(
        m: &MqttTarget,
        store: Store,
        status: Arc<FleetStatus>,
        stop: Receiver<()>,
    ) -> Result<Ingest> {
        let url = split_url(&m.url)?;
        let security = crate::mqtt::security(&url, m.ca_file.as_deref())?;
        let BrokerUrl { user, addr, .. } = url;
        let own = m
            .host_name
            .clone()
            .unwrap_or_else(crate::host::machine_name);
        let connect = Connect {
            // Fixed, so that the broker keeps this hub's session (and queue) between runs.
            client_id: m
                .client_id
                .clone()
                .unwrap_or_else(|| format!("timelapse-events-fleet-{}", level(&own))),
            clean_session: false,
            keep_alive_secs: u16::try_from(KEEP_ALIVE.as_secs()).unwrap_or(30),
            username: user,
            password: m.password.clone(),
            will: None,
        };
        Ok(Ingest {
            addr,
            security,
            connect,
            prefix: m.prefix.clone(),
            own,
            store,
            status,
            stop,
        })
    }

    fn stop_asked(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    fn run(self) -> Result<()> {
        let mut backoff = Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            u64::from(std::process::id()),
        );
        let mut failing = false;
        log::info!(
            "fleet: storing other hosts' events from {}/+/events/# at {}",
            self.prefix,
            self.addr
        );
        loop {
            let outcome = self.session(&mut || {
                backoff.reset();
                failing = false;
            });
            self.status.connected.store(false, Relaxed);
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    if failing {
                        log::debug!("fleet: still cannot subscribe: {}", e.chain());
                    } else {
                        log::warn!(
                            "fleet: subscription lost ({}); reconnecting with backoff up to 30 s",
                            e.chain()
                        );
                        failing = true;
                    }
                    if !matches!(
                        self.stop.recv_timeout(backoff.next_delay()),
                        Err(RecvTimeoutError::Timeout)
                    ) {
                        break;
                    }
                }
            }
        }
        log::info!(
            "fleet ingest stopped: {} remote events stored, {} duplicates skipped",
            self.status.stored.load(Relaxed),
            self.status.duplicates.load(Relaxed)
        );
        Ok(())
    }

    /// One connection: subscribe, then store and acknowledge until the stop (`Ok`) or an
    /// error. `connected` runs once the subscription is sent.
    fn session(&self, connected: &mut dyn FnMut()) -> Result<()> {
        let mut client = Client::connect(&self.addr, &self.security, &self.connect, TIMEOUT)?;
        client.manual_acks();
        client.subscribe(&format!("{}/+/events/#", self.prefix), 1)?;
        client.subscribe(&format!("{}/+/availability", self.prefix), 1)?;
        self.status.connected.store(true, Relaxed);
        connected();
        log::info!("fleet: subscribed at {}", self.addr);
        let mut conn = self.store.dedicated()?;
        let mut batch: Vec<(Option<u16>, events::Remote)> = Vec::new();
        loop {
            if self.stop_asked() {
                self.store_batch(&mut conn, &mut client, &mut batch)?;
                client.disconnect();
                return Ok(());
            }
            client.keep_alive()?;
            let wait = if batch.is_empty() { IDLE_READ } else { GATHER };
            let packet = client.read(Instant::now() + wait)?;
            match packet {
                Some(Incoming::Publish {
                    topic,
                    payload,
                    packet_id,
                    ..
                }) => match parse(&self.prefix, &self.own, &topic, &payload) {
                    Message::Event(remote) => batch.push((packet_id, remote)),
                    other => {
                        self.note(&other, &topic);
                        if let Some(id) = packet_id {
                            client.ack(id)?;
                        }
                    }
                },
                Some(Incoming::TooBig {
                    topic,
                    packet_id,
                    len,
                    ..
                }) => {
                    // Acknowledged, or the broker would send it again after every reconnect.
                    self.note(
                        &Message::Ignored(format!("a {len}-byte message is over the limit")),
                        &topic,
                    );
                    if let Some(id) = packet_id {
                        client.ack(id)?;
                    }
                }
                Some(Incoming::SubAck { codes, .. }) if codes.contains(&0x80) => {
                    return Err(Error::Mqtt {
                        op: "subscribe",
                        reason: "the broker refused the subscription".into(),
                    });
                }
                Some(_) => {}
                None => self.store_batch(&mut conn, &mut client, &mut batch)?,
            }
            if batch.len() >= BATCH {
                self.store_batch(&mut conn, &mut client, &mut batch)?;
            }
        }
    }

    fn note(&self, m: &Message, topic: &str) {
        match m {
            Message::Availability { host, online } => {
                log::debug!(
                    "fleet: host {host} is {}",
                    if *online { "online" } else { "offline" }
                );
                self.status
                    .heard(host, *online, |h| h.online = Some(*online));
            }
            Message::Ignored(why) => {
                self.status.ignored.fetch_add(1, Relaxed);
                log::warn!("fleet: ignoring a message on {topic}: {why}");
            }
            Message::Own | Message::Event(_) => {}
        }
    }

    /// Stores the batch in one transaction, then acknowledges each of its messages.
    fn store_batch(
        &self,
        conn: &mut rusqlite::Connection,
        client: &mut Client,
        batch: &mut Vec<(Option<u16>, events::Remote)>,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<events::Remote> = batch.iter().map(|(_, r)| r.clone()).collect();
        // Not acknowledged on an error: the broker sends them again on the next session.
        let new = events::insert_remote(conn, &rows)?;
        let dups = rows.len() - new;
        self.status
            .stored
            .fetch_add(u64::try_from(new).unwrap_or(0), Relaxed);
        self.status
            .duplicates
            .fetch_add(u64::try_from(dups).unwrap_or(0), Relaxed);
        log::debug!("fleet: stored {new} remote events ({dups} already here)");
        for (id, remote) in batch.drain(..) {
            self.status.heard(&remote.host, true, |h| h.events += 1);
            if let Some(id) = id {
                client.ack(id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_payload(host: &str, cursor: Option<&str>) -> Vec<u8> {
        let mut v = json!({
            "id": 7, "type": "image_captured", "data": {"camera_id": 2},
            "priority": "high", "source": "camera-2",
            "timestamp": "2026-12-01T10:00:00.123Z", "host": host,
        });
        if let Some(c) = cursor {
            v["cursor"] = json!(c);
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn an_event_of_another_host_is_read_with_its_origin() {
        let m = parse(
            "timelapse",
            "fleet",
            "timelapse/garden/events/image_captured",
            &event_payload("garden", Some("0a0b0c0d-7")),
        );
        let Message::Event(r) = m else {
            panic!("an event: {m:?}");
        };
        assert_eq!(
            (r.host.as_str(), r.cursor.as_str()),
            ("garden", "0a0b0c0d-7")
        );
        assert_eq!(r.event.event_type, "image_captured");
        assert_eq!(r.event.priority, Priority::High);
        assert_eq!(r.event.source, "camera-2");
        assert_eq!(r.event.data, json!({"camera_id": 2}));
        assert_eq!(r.created_at.as_deref(), Some("2026-12-01T10:00:00.123Z"));
    }

    #[test]
    fn own_topics_availability_and_bad_messages_are_told_apart() {
        let p = |topic: &str, payload: &[u8]| parse("timelapse", "fleet", topic, payload);
        assert_eq!(
            p(
                "timelapse/fleet/events/x",
                &event_payload("fleet", Some("a-1"))
            ),
            Message::Own
        );
        assert_eq!(
            p("timelapse/garden/availability", b"offline"),
            Message::Availability {
                host: "garden".into(),
                online: false
            }
        );
        for (topic, payload, why) in [
            (
                "timelapse/garden/events/x",
                event_payload("garden", None),
                "no cursor",
            ),
            (
                "timelapse/garden/events/x",
                b"[1]".to_vec(),
                "not a JSON object",
            ),
            ("timelapse/garden/events/x", b"{".to_vec(), "not JSON"),
            (
                "other/garden/events/x",
                event_payload("garden", Some("a-1")),
                "not under",
            ),
            (
                "timelapse/garden/cameras/1/state",
                b"{}".to_vec(),
                "not an event topic",
            ),
            (
                "timelapse/garden/events/x",
                event_payload("fleet", Some("a-1")),
                "cannot be stored",
            ),
        ] {
            let m = p(topic, &payload);
            assert!(
                matches!(&m, Message::Ignored(r) if r.contains(why)),
                "{topic}: {m:?} should say {why:?}"
            );
        }
        let bad_type = json!({"type": "has space", "data": {}, "cursor": "a-1"}).to_string();
        assert!(matches!(
            p("timelapse/garden/events/x", bad_type.as_bytes()),
            Message::Ignored(_)
        ));
        let odd_time = json!({"type": "t", "cursor": "a-12", "timestamp": "yesterday"});
        let Message::Event(r) = p("timelapse/garden/events/t", odd_time.to_string().as_bytes())
        else {
            panic!("stored, with the time of storing");
        };
        assert_eq!(r.created_at, None);
    }
}
