//! The MQTT transport: a QoS 1 publisher on our own client ([`crate::mqtt`]; `mqtts://`
//! over rustls with the `tls` feature), run on its sink's `tle-sink-<name>` thread.
//!
//! A clean session is enough: our cursor is the session. Each batch of up to `window`
//! events is published at QoS 1, then the PUBACKs are read; the events acknowledged in an
//! unbroken run from the first are delivered, and the rest are sent again after a
//! reconnect (so a broker that dies costs at most one window of duplicates). After every
//! connect it publishes a retained `online` (the will is a retained `offline`), subscribes
//! to Home Assistant's birth topic, and sends every known camera's discovery configs and
//! state again.

pub(crate) mod topics;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use topics::Topics;

use super::{Outcome, Transport};
use crate::config::{MqttTarget, SinkConfig, SinkTarget};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::mqtt::packet::{Connect, Incoming, Will};
use crate::mqtt::{BrokerUrl, Client, KEEP_ALIVE, Security, split_url};
use crate::state::{CameraState, camera_json};
/// A broker acknowledges a QoS 1 PUBLISH once it holds it in memory; Mosquitto writes its
/// store only every autosave, so one SIGKILLed loses what it acknowledged but had neither
/// written nor forwarded. What the broker acknowledged this long before a lost connection
/// is sent again after the next connect (at most a window of it).
const RESEND_HORIZON: Duration = Duration::from_secs(2);
/// How often an idle, disconnected sink tries to connect (so availability comes back).
const IDLE_CONNECT_EVERY: Duration = Duration::from_secs(2);

/// The MQTT sink's transport.
pub(crate) struct Mqtt {
    name: String,
    addr: String,
    security: Security,
    connect: Connect,
    topics: Topics,
    timeout: Duration,
    client: Option<Client>,
    /// The hub's state of each camera, as the runner last handed it (never folded from
    /// this sink's own events, which a filter or a restart leaves partial).
    cameras: BTreeMap<i64, CameraState>,
    /// Cameras whose discovery was sent on this connection.
    announced: BTreeSet<i64>,
    /// Forgotten cameras whose retained topics are still to be cleared (when a connection
    /// is up again).
    to_clear: BTreeSet<i64>,
    /// The state body last published per camera on this connection (sent again only
    /// when it changes).
    published: HashMap<i64, String>,
    last_try: Option<Instant>,
    /// Why the last connection ended or the last connect failed.
    down_because: Option<String>,
    /// The seqs acknowledged on this connection, newest last (at most `window`), with when.
    acked: VecDeque<(Instant, i64)>,
    /// Most of them kept (the sink's window).
    window: usize,
    /// After a lost connection: send again from this seq (see [`RESEND_HORIZON`]).
    resend_from: Option<i64>,
}

/// The transport for an MQTT sink.
///
/// # Errors
/// The URL is not `mqtt://[user@]host[:port]`.
pub(crate) fn transport(sink: &SinkConfig, m: &MqttTarget) -> Result<Box<dyn Transport>> {
    let url = split_url(&m.url)?;
    let security = crate::mqtt::security(&url, m.ca_file.as_deref())?;
    let BrokerUrl { user, addr, .. } = url;
    let host = m
        .host_name
        .clone()
        .unwrap_or_else(crate::host::machine_name);
    let topics = Topics::new(&m.prefix, &host, &m.discovery_prefix);
    let connect = Connect {
        client_id: m
            .client_id
            .clone()
            .unwrap_or_else(|| format!("timelapse-events-{}", topics::id_part(&host))),
        keep_alive_secs: u16::try_from(KEEP_ALIVE.as_secs()).unwrap_or(30),
        username: user,
        password: m.password.clone(),
        clean_session: true,
        will: Some(Will {
            topic: topics.availability(),
            payload: b"offline".to_vec(),
            qos: 1,
            retain: true,
        }),
    };
    Ok(Box::new(Mqtt {
        name: sink.name.clone(),
        addr,
        security,
        connect,
        topics,
        timeout: sink.timeout,
        client: None,
        cameras: BTreeMap::new(),
        to_clear: BTreeSet::new(),
        announced: BTreeSet::new(),
        published: HashMap::new(),
        last_try: None,
        down_because: None,
        acked: VecDeque::new(),
        window: sink.window,
        resend_from: None,
    }))
}

/// Whether a sink target is MQTT (its transport is built here).
pub(crate) fn target(sink: &SinkConfig) -> Option<&MqttTarget> {
    match &sink.target {
        SinkTarget::Mqtt(m) => Some(m),
        _ => None,
    }
}

impl Mqtt {
    /// Drops the connection; what the broker acknowledged within [`RESEND_HORIZON`] before
    /// is to be sent again.
    fn drop_connection(&mut self) {
        if self.client.take().is_none() {
            return;
        }
        let now = Instant::now();
        self.resend_from = self
            .acked
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= RESEND_HORIZON)
            .map(|(_, seq)| *seq)
            .min();
        self.acked.clear();
    }

    /// Connected, with `online`, the birth subscription, and every known camera's
    /// discovery and state sent.
    fn ensure_connected(&mut self) -> Result<&mut Client> {
        if self.client.is_none() {
            self.last_try = Some(Instant::now());
            let mut client =
                Client::connect(&self.addr, &self.security, &self.connect, self.timeout)?;
            client.publish(&self.topics.availability(), b"online", 1, true)?;
            client.subscribe(&self.topics.birth(), 1)?;
            log::info!(
                "sink {}: connected to the MQTT broker at {}",
                self.name,
                self.addr
            );
            self.announced.clear();
            self.client = Some(client);
            self.announce_all()?;
        }
        self.client.as_mut().ok_or_else(|| Error::Mqtt {
            op: "connect",
            reason: "no connection".into(),
        })
    }

    /// Sends discovery and state of every known camera (after a connect or a birth).
    fn announce_all(&mut self) -> Result<()> {
        self.announced.clear();
        self.published.clear();
        self.clear_gone()?;
        let ids: Vec<i64> = self.cameras.keys().copied().collect();
        for id in ids {
            self.announce(id)?;
            self.publish_state(id)?;
        }
        Ok(())
    }

    fn announce(&mut self, camera_id: i64) -> Result<()> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        for (topic, config) in self.topics.discovery(camera_id) {
            client.publish(&topic, config.to_string().as_bytes(), 1, true)?;
        }
        self.announced.insert(camera_id);
        Ok(())
    }

    /// Publishes a camera's retained state, unless this connection already has it.
    fn publish_state(&mut self, camera_id: i64) -> Result<()> {
        let (Some(client), Some(camera)) = (self.client.as_mut(), self.cameras.get(&camera_id))
        else {
            return Ok(());
        };
        let body = camera_json(camera).to_string();
        if self.published.get(&camera_id) == Some(&body) {
            return Ok(());
        }
        client.publish(
            &self.topics.camera_state(camera_id),
            body.as_bytes(),
            1,
            true,
        )?;
        self.published.insert(camera_id, body);
        Ok(())
    }

    /// Withdraws what was retained about forgotten cameras: an empty retained message
    /// clears a topic, and Home Assistant removes an entity whose config is cleared.
    fn clear_gone(&mut self) -> Result<()> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        while let Some(&id) = self.to_clear.first() {
            client.publish(&self.topics.camera_state(id), b"", 1, true)?;
            for (topic, _) in self.topics.discovery(id) {
                client.publish(&topic, b"", 1, true)?;
            }
            self.to_clear.remove(&id);
            log::info!(
                "sink {}: camera {id} forgotten: its retained topics cleared",
                self.name
            );
        }
        Ok(())
    }

    /// Takes the hub's state of some cameras and, when connected, announces the new ones
    /// and publishes what changed.
    fn take_cameras(&mut self, cameras: Vec<CameraState>) -> Result<()> {
        let ids: Vec<i64> = cameras.iter().map(|c| c.camera_id).collect();
        for c in cameras {
            self.cameras.insert(c.camera_id, c);
        }
        if self.client.is_none() {
            return Ok(());
        }
        for id in ids {
            if !self.announced.contains(&id) {
                self.announce(id)?;
            }
            self.publish_state(id)?;
        }
        Ok(())
    }

    /// Handles one packet from the broker: a birth message re-announces everything.
    fn incoming(&mut self, p: &Incoming, acked: &mut BTreeSet<u16>) -> Result<()> {
        match p {
            Incoming::PubAck(id) => {
                acked.insert(*id);
            }
            Incoming::Publish { topic, payload, .. }
                if *topic == self.topics.birth() && payload.as_slice() == b"online" =>
            {
                log::info!(
                    "sink {}: Home Assistant is online; sending discovery again",
                    self.name
                );
                self.announce_all()?;
            }
            Incoming::SubAck { codes, .. } if codes.contains(&0x80) => {
                log::warn!(
                    "sink {}: the broker refused the subscription to {}",
                    self.name,
                    self.topics.birth()
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn publish_batch(&mut self, events: &[&Event]) -> Result<Vec<Outcome>> {
        self.ensure_connected()?;
        let mut ids: HashMap<u16, usize> = HashMap::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let body = self.topics.payload(e);
            let topic = self.topics.event(&e.event_type);
            let client = self.ensure_connected()?;
            let id = client.publish(&topic, body.as_bytes(), 1, false)?;
            ids.insert(id, i);
        }
        let mut acked = BTreeSet::new();
        let deadline = Instant::now() + self.timeout;
        let mut done = vec![false; events.len()];
        let mut through = 0;
        while through < events.len() {
            let Some(client) = self.client.as_mut() else {
                break;
            };
            let Some(p) = client.read(deadline)? else {
                break;
            };
            self.incoming(&p, &mut acked)?;
            for id in std::mem::take(&mut acked) {
                if let Some(&i) = ids.get(&id) {
                    done[i] = true;
                }
            }
            while through < events.len() && done[through] {
                through += 1;
            }
        }
        let now = Instant::now();
        for e in &events[..through] {
            if self.acked.len() >= self.window.max(1) {
                self.acked.pop_front();
            }
            self.acked.push_back((now, e.cursor.seq));
        }
        let mut outcomes = vec![Outcome::Delivered; through];
        if through < events.len() {
            outcomes.push(Outcome::Failed(format!(
                "no PUBACK within {:?}",
                self.timeout
            )));
            // A broker that does not answer is replaced by a fresh connection.
            self.drop_connection();
        }
        Ok(outcomes)
    }
}

impl Transport for Mqtt {
    /// This host's own events only: one from another host (stored by the fleet ingest) is
    /// that host's to publish, and sending it again under our name would loop.
    fn wants(&self, event: &Event) -> bool {
        event.host.is_none()
    }

    fn deliver(&mut self, event: &Event) -> Outcome {
        self.deliver_batch(&[event])
            .pop()
            .unwrap_or_else(|| Outcome::Failed("nothing published".into()))
    }

    fn deliver_batch(&mut self, events: &[&Event]) -> Vec<Outcome> {
        match self.publish_batch(events) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                self.drop_connection();
                vec![Outcome::Failed(e.to_string())]
            }
        }
    }

    fn follows_state(&self) -> bool {
        true
    }

    fn take_resend(&mut self) -> Option<i64> {
        self.resend_from?;
        // Connected first, so that the resent events go before anything newer.
        if self.client.is_none() && self.ensure_connected().is_err() {
            return None;
        }
        self.resend_from.take()
    }

    fn link(&self) -> Option<std::result::Result<(), String>> {
        Some(match &self.client {
            Some(_) => Ok(()),
            None => Err(self
                .down_because
                .clone()
                .unwrap_or_else(|| "not connected to the broker".into())),
        })
    }

    fn cameras(&mut self, cameras: Vec<CameraState>) {
        if let Err(e) = self.take_cameras(cameras) {
            // Sent again with everything after the next connect.
            self.drop_connection();
            log::warn!("sink {}: MQTT connection lost: {e}", self.name);
        }
    }

    fn gone(&mut self, camera_ids: Vec<i64>) {
        for id in camera_ids {
            // Only what this sink announced or was handed: a camera over the hub's cap
            // never had topics of ours.
            if self.cameras.remove(&id).is_some() {
                self.announced.remove(&id);
                self.published.remove(&id);
                self.to_clear.insert(id);
            }
        }
        if let Err(e) = self.clear_gone() {
            self.drop_connection();
            log::warn!("sink {}: MQTT connection lost: {e}", self.name);
        }
    }

    fn idle(&mut self) {
        let result = (|| -> Result<()> {
            if self.client.is_none() {
                if self
                    .last_try
                    .is_some_and(|t| t.elapsed() < IDLE_CONNECT_EVERY)
                {
                    return Ok(());
                }
                self.ensure_connected()?;
            }
            let mut acked = BTreeSet::new();
            loop {
                let Some(client) = self.client.as_mut() else {
                    return Ok(());
                };
                client.keep_alive()?;
                // A deadline already passed would not look at the socket: 1 ms.
                match client.read(Instant::now() + Duration::from_millis(1))? {
                    Some(p) => self.incoming(&p, &mut acked)?,
                    None => return Ok(()),
                }
            }
        })();
        if let Err(e) = result {
            if self.client.is_some() {
                self.drop_connection();
                log::warn!("sink {}: MQTT connection lost: {e}", self.name);
            } else {
                log::debug!("sink {}: cannot connect: {e}", self.name);
            }
            self.down_because = Some(e.to_string());
        }
    }

    fn close(&mut self) {
        if let Some(client) = self.client.take() {
            // A clean stop says offline itself: the will is only for a crash.
            let mut client = client;
            let _ = client.publish(&self.topics.availability(), b"offline", 0, true); // best effort on the way out
            client.disconnect();
        }
    }
}
