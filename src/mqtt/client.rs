//! Our MQTT 3.1.1 client over a std `TcpStream` (or, with the `tls` feature, rustls over
//! it: [`super::tls`]), for QoS 0 and 1: the sink's publisher and the fleet's subscriber.
//! Blocking, with deadlines, on the thread that owns it.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::packet::{self, Connect, Incoming};
#[cfg(feature = "tls")]
use super::tls;
use super::{KEEP_ALIVE, Security};
use crate::error::{Error, Result};

/// The largest packet we accept from the broker (a remote event is at most a few KiB).
const MAX_INCOMING_BYTES: usize = 256 * 1024;

pub(crate) fn mqtt_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Mqtt {
        op,
        reason: e.to_string(),
    }
}

/// A broker's address from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    pub(crate) user: Option<String>,
    /// `host:port`.
    pub(crate) addr: String,
    /// `mqtts://`.
    pub(crate) tls: bool,
}

/// `mqtt://[user@]host[:port]` (port 1883) or `mqtts://…` (port 8883).
pub(crate) fn split_url(url: &str) -> Result<BrokerUrl> {
    // The URL may hold a password: the reason names only what is wrong.
    let bad = |reason: &str| Error::Config {
        field: "mqtt",
        reason: format!("the MQTT URL: {reason}"),
    };
    let (rest, tls) = match url.strip_prefix("mqtts://") {
        Some(rest) => (rest, true),
        None => (
            url.strip_prefix("mqtt://")
                .ok_or_else(|| bad("not an mqtt:// or mqtts:// URL"))?,
            false,
        ),
    };
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
        format!("{host}:{}", if tls { 8883 } else { 1883 })
    };
    Ok(BrokerUrl {
        user: user.filter(|u| !u.is_empty()),
        addr,
        tls,
    })
}

/// The byte stream to the broker; the timeouts are set on the socket under it.
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => &s.sock,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes),
            // rustls buffers: only the flush reports a failed write to the socket.
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

/// One connection to the broker.
pub(crate) struct Client {
    stream: Stream,
    buf: Vec<u8>,
    next_id: u16,
    last_sent: Instant,
    /// Whether [`Client::read`] acknowledges a QoS 1 PUBLISH as it arrives; a reader that
    /// must store first turns it off and calls [`Client::ack`] after its commit.
    auto_ack: bool,
    /// Bytes of an oversized PUBLISH still to be thrown away as they arrive.
    skip: usize,
}

impl Client {
    /// Connects, sends CONNECT and waits for an accepting CONNACK.
    ///
    /// # Errors
    /// The broker cannot be reached, does not answer within `timeout`, or refuses us (or,
    /// over TLS, its certificate is not trusted).
    pub(crate) fn connect(
        addr: &str,
        security: &Security,
        connect: &Connect,
        timeout: Duration,
    ) -> Result<Client> {
        // Each address in turn: `localhost` may give ::1 first to a broker on 127.0.0.1.
        let mut stream = Err(Error::Mqtt {
            op: "resolve the broker",
            reason: format!("{addr} has no address"),
        });
        for sock in addr
            .to_socket_addrs()
            .map_err(mqtt_err("resolve the broker"))?
        {
            stream = TcpStream::connect_timeout(&sock, timeout)
                .map_err(mqtt_err("connect to the broker"));
            if stream.is_ok() {
                break;
            }
        }
        let stream = stream?;
        stream
            .set_nodelay(true)
            .map_err(mqtt_err("set TCP_NODELAY"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(mqtt_err("set a write timeout"))?;
        let stream = match security {
            Security::Plain => Stream::Plain(stream),
            #[cfg(feature = "tls")]
            Security::Tls(config) => {
                // The handshake's reads; `read` sets its own before each read.
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(mqtt_err("set a read timeout"))?;
                Stream::Tls(Box::new(tls::connect(config, addr, stream)?))
            }
        };
        let mut client = Client {
            stream,
            buf: Vec::with_capacity(4096),
            next_id: 0,
            last_sent: Instant::now(),
            auto_ack: true,
            skip: 0,
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

    /// From now on a QoS 1 PUBLISH to us is acknowledged only by [`Client::ack`].
    pub(crate) fn manual_acks(&mut self) {
        self.auto_ack = false;
    }

    /// Acknowledges a QoS 1 PUBLISH (its packet id).
    pub(crate) fn ack(&mut self, packet_id: u16) -> Result<()> {
        self.send(&packet::puback(packet_id))
    }

    /// A PINGREQ when nothing was sent for half the keep-alive (the broker drops a client
    /// silent for 1.5 times it).
    pub(crate) fn keep_alive(&mut self) -> Result<()> {
        if self.last_sent.elapsed() >= KEEP_ALIVE / 2 {
            self.send(&packet::PINGREQ)?;
        }
        Ok(())
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
    /// here, unless [`Client::manual_acks`].
    ///
    /// # Errors
    /// The connection broke or the broker sent bytes that are no packet.
    pub(crate) fn read(&mut self, deadline: Instant) -> Result<Option<Incoming>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.buf.drain(..n);
                self.skip -= n;
            }
            if self.skip == 0
                && let Some((p, used)) = packet::decode(&self.buf, MAX_INCOMING_BYTES)?
            {
                self.buf.drain(..used);
                let id = match &p {
                    Incoming::TooBig {
                        skip, packet_id, ..
                    } => {
                        self.skip = *skip;
                        *packet_id
                    }
                    Incoming::Publish { packet_id, .. } => *packet_id,
                    _ => None,
                };
                if let Some(id) = id
                    && self.auto_ack
                {
                    self.send(&packet::puback(id))?;
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
                .socket()
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
        #[cfg(feature = "tls")]
        if let Stream::Tls(s) = &mut self.stream {
            tls::close(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_user_address_and_tls() -> Result<()> {
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
            ("mqtts://broker", None, "broker:8883"),
            ("mqtts://ha@broker:8884", Some("ha"), "broker:8884"),
        ] {
            let tls = url.starts_with("mqtts://");
            assert_eq!(
                split_url(url)?,
                BrokerUrl {
                    user: user.map(str::to_owned),
                    addr: addr.to_owned(),
                    tls
                },
                "{url}"
            );
        }
        for bad in ["http://x", "mqtt://", "mqtt://u@", "mqtts://"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
