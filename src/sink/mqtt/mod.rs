//! The MQTT transport: a thin MQTT 3.1.1 QoS 1 publisher over a std `TcpStream` (our own,
//! [`packet`]: rumqttc's blocking client builds a tokio runtime and paho-mqtt crashed under
//! broker kills), run on its sink's `tle-sink-<name>` thread.
//!
//! A clean session is enough: our cursor is the session. Each batch of up to `window`
//! events is published at QoS 1, then the PUBACKs are read; the events acknowledged in an
//! unbroken run from the first are delivered, and the rest are sent again after a
//! reconnect (so a broker that dies costs at most one window of duplicates). After every
//! connect it publishes a retained `online` (the will is a retained `offline`), subscribes
//! to Home Assistant's birth topic, and sends every known camera's discovery configs and
//! state again.

pub(crate) mod packet;
pub(crate) mod topics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use packet::{Connect, Incoming, Will};
use topics::Topics;

use super::{Outcome, Transport};
use crate::config::{MqttTarget, SinkConfig, SinkTarget};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::state::{CameraState, camera_json};

/// The keep-alive asked of the broker; we ping after half of it without traffic.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// The largest packet we accept from the broker (birth messages are a few bytes).
const MAX_INCOMING_BYTES: usize = 64 * 1024;
/// How often an idle, disconnected sink tries to connect (so availability comes back).
const IDLE_CONNECT_EVERY: Duration = Duration::from_secs(2);

fn mqtt_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Mqtt {
        op,
        reason: e.to_string(),
    }
}

/// `mqtt://[user@]host[:port]` → (user, host:port).
pub(crate) fn split_url(url: &str) -> Result<(Option<String>, String)> {
    let bad = |reason: &str| Error::Config {
        field: "mqtt",
        reason: format!("{}: {reason}", crate::sink::shown_target(url)),
    };
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| bad("not an mqtt:// URL"))?;
    let rest = rest.trim_end_matches('/');
    let (user, host) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u.split(':').next().unwrap_or(u).to_owned()), h),
        None => (None, rest),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad("no host"));
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host.ends_with(']');
    let addr = if has_port {
        host.to_owned()
    } else {
        format!("{host}:1883")
    };
    Ok((user.filter(|u| !u.is_empty()), addr))
}

/// One connection to the broker.
pub(crate) struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: u16,
    last_sent: Instant,
}

impl Client {
    /// Connects, sends CONNECT and waits for an accepting CONNACK.
    ///
    /// # Errors
    /// The broker cannot be reached, does not answer within `timeout`, or refuses us.
    pub(crate) fn connect(addr: &str, connect: &Connect, timeout: Duration) -> Result<Client> {
        let sock = addr
            .to_socket_addrs()
            .map_err(mqtt_err("resolve the broker"))?
            .next()
            .ok_or_else(|| Error::Mqtt {
                op: "resolve the broker",
                reason: format!("{addr} has no address"),
            })?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(mqtt_err("connect to the broker"))?;
        stream
            .set_nodelay(true)
            .map_err(mqtt_err("set TCP_NODELAY"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(mqtt_err("set a write timeout"))?;
        let mut client = Client {
            stream,
            buf: Vec::with_capacity(4096),
            next_id: 0,
            last_sent: Instant::now(),
        };
        client.send(&connect.encode()?)?;
        let deadline = Instant::now() + timeout;
        loop {
            match client.read(deadline)? {
                Some(Incoming::ConnAck { code: 0, .. }) => return Ok(client),
                Some(Incoming::ConnAck { code, .. }) => {
                    return Err(Error::Mqtt {
                        op: "connect to the broker",
                        reason: format!("refused: {}", packet::connack_reason(code)),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(Error::Mqtt {
                        op: "read CONNACK",
                        reason: format!("no answer within {timeout:?}"),
                    });
                }
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(mqtt_err("write to the broker"))?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// A fresh non-zero packet id.
    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Publishes; returns the packet id a QoS 1 PUBACK will carry.
    pub(crate) fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
    ) -> Result<u16> {
        let id = if qos > 0 { self.id() } else { 0 };
        let bytes = packet::publish(topic, payload, qos, retain, id)?;
        self.send(&bytes)?;
        Ok(id)
    }

    /// Subscribes to one filter (its SUBACK arrives among the reads).
    pub(crate) fn subscribe(&mut self, filter: &str, qos: u8) -> Result<()> {
        let id = self.id();
        let bytes = packet::subscribe(id, filter, qos)?;
        self.send(&bytes)
    }

    /// The next packet, or `None` at `deadline`. A QoS 1 PUBLISH to us is acknowledged
    /// here.
    ///
    /// # Errors
    /// The connection broke or the broker sent bytes that are no packet.
    pub(crate) fn read(&mut self, deadline: Instant) -> Result<Option<Incoming>> {
        loop {
            if let Some((p, used)) = packet::decode(&self.buf, MAX_INCOMING_BYTES)? {
                self.buf.drain(..used);
                if let Incoming::Publish {
                    packet_id: Some(id),
                    ..
                } = &p
                {
                    let ack = packet::puback(*id);
                    self.send(&ack)?;
                }
                return Ok(Some(p));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A zero timeout means "block forever" to std: at least 1 ms.
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(mqtt_err("set a read timeout"))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Error::Mqtt {
                        op: "read from the broker",
                        reason: "the broker closed the connection".into(),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(mqtt_err("read from the broker")(e)),
            }
        }
    }

    /// Says goodbye (the broker then does not publish the will).
    pub(crate) fn disconnect(mut self) {
        // Best effort: the socket closes on drop anyway.
        let _ = self.send(&packet::DISCONNECT);
    }
}

/// The MQTT sink's transport.
pub(crate) struct Mqtt {
    name: String,
    addr: String,
    connect: Connect,
    topics: Topics,
    timeout: Duration,
    client: Option<Client>,
    /// The hub's state of each camera, as the runner last handed it (never folded from
    /// this sink's own events, which a filter or a restart leaves partial).
    cameras: BTreeMap<i64, CameraState>,
    /// Cameras whose discovery was sent on this connection.
    announced: BTreeSet<i64>,
    /// The state body last published per camera on this connection (sent again only
    /// when it changes).
    published: HashMap<i64, String>,
    last_try: Option<Instant>,
    /// Why the last connection ended or the last connect failed.
    down_because: Option<String>,
}

/// The machine's name, for topics when none is set.
fn machine_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .and_then(|h| h.split('.').next().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The transport for an MQTT sink.
///
/// # Errors
/// The URL is not `mqtt://[user@]host[:port]`.
pub(crate) fn transport(sink: &SinkConfig, m: &MqttTarget) -> Result<Box<dyn Transport>> {
    let (user, addr) = split_url(&m.url)?;
    let host = m.host_name.clone().unwrap_or_else(machine_name);
    let topics = Topics::new(&m.prefix, &host, &m.discovery_prefix);
    let connect = Connect {
        client_id: m
            .client_id
            .clone()
            .unwrap_or_else(|| format!("timelapse-events-{}", topics::id_part(&host))),
        keep_alive_secs: u16::try_from(KEEP_ALIVE.as_secs()).unwrap_or(30),
        username: user,
        password: m.password.clone(),
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
        connect,
        topics,
        timeout: sink.timeout,
        client: None,
        cameras: BTreeMap::new(),
        announced: BTreeSet::new(),
        published: HashMap::new(),
        last_try: None,
        down_because: None,
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
    /// Connected, with `online`, the birth subscription, and every known camera's
    /// discovery and state sent.
    fn ensure_connected(&mut self) -> Result<&mut Client> {
        if self.client.is_none() {
            self.last_try = Some(Instant::now());
            let mut client = Client::connect(&self.addr, &self.connect, self.timeout)?;
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
        let mut outcomes = vec![Outcome::Delivered; through];
        if through < events.len() {
            outcomes.push(Outcome::Failed(format!(
                "no PUBACK within {:?}",
                self.timeout
            )));
            // A broker that does not answer is replaced by a fresh connection.
            self.client = None;
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
                self.client = None;
                vec![Outcome::Failed(e.to_string())]
            }
        }
    }

    fn follows_state(&self) -> bool {
        true
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
            self.client = None;
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
                if client.last_sent.elapsed() >= KEEP_ALIVE / 2 {
                    client.send(&packet::PINGREQ)?;
                }
                // A deadline already passed would not look at the socket: 1 ms.
                match client.read(Instant::now() + Duration::from_millis(1))? {
                    Some(p) => self.incoming(&p, &mut acked)?,
                    None => return Ok(()),
                }
            }
        })();
        if let Err(e) = result {
            if self.client.take().is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_user_and_address() -> Result<()> {
        for (url, user, addr) in [
            ("mqtt://broker", None, "broker:1883"),
            ("mqtt://broker:1884", None, "broker:1884"),
            ("mqtt://ha@broker/", Some("ha"), "broker:1883"),
            (
                "mqtt://ha:secret@10.0.0.2:1999",
                Some("ha"),
                "10.0.0.2:1999",
            ),
            ("mqtt://[::1]:1883", None, "[::1]:1883"),
        ] {
            assert_eq!(
                split_url(url)?,
                (user.map(str::to_owned), addr.to_owned()),
                "{url}"
            );
        }
        for bad in ["http://x", "mqtt://", "mqtt://u@"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
