//! MQTT 3.1.1 packets, encoded and decoded as pure functions: only what a QoS 1 publisher
//! with a will and one subscription needs (CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE,
//! SUBACK, PINGREQ, PINGRESP, DISCONNECT). Spec: OASIS MQTT Version 3.1.1, section 2
//! (fixed header, remaining length) and 3 (each packet).
//!
//! The broker's bytes are outside input: decoding never panics, it answers `Ok(None)` for
//! "not a whole packet yet" and an error for bytes that cannot be one.

use crate::error::{Error, Result};

/// The largest remaining length the varint can carry (4 bytes, spec 2.2.3).
pub(crate) const MAX_REMAINING: usize = 268_435_455;

fn bad(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Mqtt {
        op,
        reason: reason.into(),
    }
}

/// Appends `len` as the remaining-length varint (7 bits a byte, low first).
///
/// # Errors
/// `len` is above [`MAX_REMAINING`].
pub(crate) fn put_remaining(out: &mut Vec<u8>, mut len: usize) -> Result<()> {
    if len > MAX_REMAINING {
        return Err(bad("encode a packet", format!("{len} bytes is too long")));
    }
    loop {
        let mut byte = (len % 128) as u8; // < 128
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

/// Reads a remaining-length varint: `Ok(None)` when more bytes are needed, else the
/// length and how many bytes it took.
///
/// # Errors
/// More than four bytes (spec 2.2.3: "malformed").
pub(crate) fn get_remaining(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut len = 0usize;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        len += usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((len, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(bad("read a packet", "remaining length longer than 4 bytes"));
    }
    Ok(None)
}

/// Appends a UTF-8 string with its 2-byte length.
///
/// # Errors
/// Longer than 65,535 bytes.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) -> Result<()> {
    let len = u16::try_from(s.len())
        .map_err(|_| bad("encode a packet", format!("a {}-byte string", s.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

fn get_u16(buf: &[u8], at: usize, op: &'static str) -> Result<u16> {
    match buf.get(at..at + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(bad(op, "packet too short")),
    }
}

fn packet(first: u8, body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_remaining(&mut out, body.len())?;
    out.extend_from_slice(body);
    Ok(out)
}

/// The will a broker publishes when we vanish without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
}

/// CONNECT's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    pub(crate) client_id: String,
    /// A publisher whose cursor is its session asks for a clean one; a subscriber that must
    /// not miss what arrives while it is away keeps its session (and its client id).
    pub(crate) clean_session: bool,
    pub(crate) keep_alive_secs: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) will: Option<Will>,
}

impl Connect {
    /// The CONNECT packet (spec 3.1).
    ///
    /// # Errors
    /// A field is longer than a string can be.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT")?;
        body.push(4); // protocol level 3.1.1
        let mut flags = if self.clean_session { 0x02 } else { 0 };
        if let Some(w) = &self.will {
            flags |= 0x04 | ((w.qos & 0x03) << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.username.is_some() {
            flags |= 0x80;
            if self.password.is_some() {
                flags |= 0x40; // 3.1.2.9: no password without a user name
            }
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive_secs.to_be_bytes());
        put_str(&mut body, self.client_id.as_bytes())?;
        if let Some(w) = &self.will {
            put_str(&mut body, w.topic.as_bytes())?;
            put_str(&mut body, &w.payload)?;
        }
        if let Some(u) = &self.username {
            put_str(&mut body, u.as_bytes())?;
            if let Some(p) = &self.password {
                put_str(&mut body, p.as_bytes())?;
            }
        }
        packet(0x10, &body)
    }
}

/// A PUBLISH (spec 3.3); `packet_id` is required (non-zero) for QoS 1 and ignored for 0.
///
/// # Errors
/// The topic is too long, or the packet too large.
pub(crate) fn publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    packet_id: u16,
) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    put_str(&mut body, topic.as_bytes())?;
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | ((qos & 0x03) << 1) | u8::from(retain), &body)
}

/// A PUBACK for a QoS 1 PUBLISH the broker sent us (spec 3.4).
pub(crate) fn puback(packet_id: u16) -> Vec<u8> {
    let [hi, lo] = packet_id.to_be_bytes();
    vec![0x40, 2, hi, lo]
}

/// A SUBSCRIBE for one topic filter (spec 3.8; its fixed header's flags are 0010).
///
/// # Errors
/// The filter is too long.
pub(crate) fn subscribe(packet_id: u16, filter: &str, qos: u8) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_str(&mut body, filter.as_bytes())?;
    body.push(qos & 0x03);
    packet(0x82, &body)
}

/// PINGREQ (spec 3.12).
pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0];
/// DISCONNECT (spec 3.14).
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0];

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// CONNACK: the return code (0 accepted; 1–5 refused, spec 3.2.2.3).
    ConnAck {
        session_present: bool,
        code: u8,
    },
    /// PUBACK for our QoS 1 PUBLISH.
    PubAck(u16),
    /// SUBACK: per filter the granted QoS, or 0x80 for a refusal.
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    /// A message on a topic we subscribed to.
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        packet_id: Option<u16>,
    },
    PingResp,
    /// A PUBLISH over the size limit: its head only. The reader skips its `skip` remaining
    /// bytes as they come; the caller may acknowledge it (a QoS 1 message that is never
    /// acknowledged would come back after every reconnect).
    TooBig {
        topic: String,
        packet_id: Option<u16>,
        len: usize,
        skip: usize,
    },
    /// Any other packet type a broker should not send a client (ignored, not fatal).
    Other(u8),
}

/// What CONNACK's refusal codes mean (spec table 3.1).
pub(crate) fn connack_reason(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorised",
        _ => "unknown return code",
    }
}

/// Decodes the first packet in `buf`: `Ok(None)` until it is whole, else the packet and
/// the bytes it took.
///
/// # Errors
/// Bytes that cannot be a packet: a bad varint, lengths past the packet's end, a topic that
/// is not UTF-8, or a packet larger than `max_bytes`.
pub(crate) fn decode(buf: &[u8], max_bytes: usize) -> Result<Option<(Incoming, usize)>> {
    const OP: &str = "read a packet";
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((len, len_bytes)) = get_remaining(&buf[1..])? else {
        return Ok(None);
    };
    let start = 1 + len_bytes;
    if len > max_bytes {
        if first >> 4 != 3 {
            return Err(bad(OP, format!("a {len}-byte packet is over our limit")));
        }
        // A PUBLISH: its topic and packet id, then the rest is skipped.
        let head = &buf[start..];
        let Some(topic_len) = head
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return Ok(None);
        };
        let qos = (first >> 1) & 0x03;
        let id_len = if qos > 0 { 2 } else { 0 };
        let Some(rest) = head.get(2..2 + topic_len + id_len) else {
            return Ok(None);
        };
        let topic = String::from_utf8_lossy(&rest[..topic_len]).into_owned();
        let packet_id =
            (qos > 0).then(|| u16::from_be_bytes([rest[topic_len], rest[topic_len + 1]]));
        let used = 2 + topic_len + id_len;
        return Ok(Some((
            Incoming::TooBig {
                topic,
                packet_id,
                len,
                skip: len.saturating_sub(used),
            },
            start + used,
        )));
    }
    let Some(body) = buf.get(start..start + len) else {
        return Ok(None);
    };
    let kind = first >> 4;
    let packet = match kind {
        2 => match body {
            [flags, code] => Incoming::ConnAck {
                session_present: flags & 1 == 1,
                code: *code,
            },
            _ => return Err(bad(OP, "CONNACK is not 2 bytes")),
        },
        4 => Incoming::PubAck(get_u16(body, 0, OP)?),
        9 => Incoming::SubAck {
            packet_id: get_u16(body, 0, OP)?,
            codes: body.get(2..).unwrap_or_default().to_vec(),
        },
        3 => {
            let qos = (first >> 1) & 0x03;
            let topic_len = usize::from(get_u16(body, 0, OP)?);
            let topic = body
                .get(2..2 + topic_len)
                .ok_or_else(|| bad(OP, "PUBLISH topic past its end"))?;
            let topic = std::str::from_utf8(topic)
                .map_err(|_| bad(OP, "PUBLISH topic is not UTF-8"))?
                .to_owned();
            let mut at = 2 + topic_len;
            let packet_id = if qos > 0 {
                let id = get_u16(body, at, OP)?;
                at += 2;
                Some(id)
            } else {
                None
            };
            Incoming::Publish {
                topic,
                payload: body.get(at..).unwrap_or_default().to_vec(),
                qos,
                retain: first & 1 == 1,
                packet_id,
            }
        }
        13 => Incoming::PingResp,
        other => Incoming::Other(other),
    };
    Ok(Some((packet, start + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_publish_is_its_head_and_the_bytes_to_skip() -> Result<()> {
        let bytes = publish("t/x", &[7u8; 5000], 1, false, 42)?;
        let Some((p, used)) = decode(&bytes[..20], 1024)? else {
            panic!("the head is enough");
        };
        assert_eq!(
            p,
            Incoming::TooBig {
                topic: "t/x".into(),
                packet_id: Some(42),
                len: 2 + 3 + 2 + 5000,
                skip: 5000
            }
        );
        assert_eq!(used + 5000, bytes.len(), "head, then the payload to skip");
        assert!(decode(&bytes[..4], 1024)?.is_none(), "waits for the topic");
        let mut ack = bytes.clone();
        ack[0] = 0x40; // a PUBACK of that size is no PUBLISH: an error
        assert!(decode(&ack, 1024).is_err());
        Ok(())
    }

    #[test]
    fn remaining_lengths_round_trip_at_every_boundary() -> Result<()> {
        for (len, bytes) in [
            (0usize, vec![0x00]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xFF, 0xFF, 0x7F]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING, vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            put_remaining(&mut out, len)?;
            assert_eq!(out, bytes, "{len}");
            assert_eq!(get_remaining(&bytes)?, Some((len, bytes.len())), "{len}");
            assert_eq!(get_remaining(&bytes[..bytes.len() - 1])?, None, "{len} cut");
        }
        assert!(put_remaining(&mut Vec::new(), MAX_REMAINING + 1).is_err());
        assert!(get_remaining(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        Ok(())
    }

    #[test]
    fn strings_carry_their_length() -> Result<()> {
        let mut out = Vec::new();
        put_str(&mut out, b"MQTT")?;
        assert_eq!(out, [0, 4, b'M', b'Q', b'T', b'T']);
        assert!(put_str(&mut Vec::new(), &vec![b'x'; 65_536]).is_err());
        Ok(())
    }

    #[test]
    fn connect_carries_will_user_and_password_in_order() -> Result<()> {
        let c = Connect {
            client_id: "id".into(),
            keep_alive_secs: 30,
            username: Some("u".into()),
            password: Some("p".into()),
            clean_session: true,
            will: Some(Will {
                topic: "t/a".into(),
                payload: b"offline".to_vec(),
                qos: 1,
                retain: true,
            }),
        };
        let got = c.encode()?;
        let mut want = vec![0x10, 0];
        want.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4]);
        want.push(0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02);
        want.extend_from_slice(&[0, 30, 0, 2, b'i', b'd', 0, 3, b't', b'/', b'a', 0, 7]);
        want.extend_from_slice(b"offline");
        want.extend_from_slice(&[0, 1, b'u', 0, 1, b'p']);
        want[1] = (want.len() - 2) as u8;
        assert_eq!(got, want);
        let bare = Connect {
            username: None,
            password: Some("ignored".into()),
            clean_session: true,
            will: None,
            ..c
        }
        .encode()?;
        assert_eq!(bare[9], 0x02, "clean session only");
        assert_eq!(bare.len(), 2 + 10 + 4, "no will, no user, no password");
        Ok(())
    }

    #[test]
    fn publishes_set_qos_retain_and_the_packet_id_only_for_qos_1() -> Result<()> {
        assert_eq!(
            publish("a/b", b"hi", 1, true, 0x0102)?,
            [0x33, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'h', b'i']
        );
        assert_eq!(
            publish("a", b"", 0, false, 7)?,
            [0x30, 3, 0, 1, b'a'],
            "QoS 0 has no id"
        );
        let big = publish("t", &[0; 200], 1, false, 1)?;
        assert_eq!(&big[..3], [0x32, 0xCD, 0x01], "a two-byte length: 205");
        Ok(())
    }

    #[test]
    fn small_packets_are_as_the_spec_draws_them() -> Result<()> {
        assert_eq!(puback(0xABCD), [0x40, 2, 0xAB, 0xCD]);
        assert_eq!(
            subscribe(5, "homeassistant/status", 1)?[..6],
            [0x82, 25, 0, 5, 0, 20]
        );
        assert_eq!(PINGREQ, [0xC0, 0]);
        assert_eq!(DISCONNECT, [0xE0, 0]);
        Ok(())
    }

    #[test]
    fn decoding_waits_for_whole_packets_and_reads_each_kind() -> Result<()> {
        let max = 1 << 20;
        let table: [(&[u8], Incoming); 6] = [
            (
                &[0x20, 2, 1, 0],
                Incoming::ConnAck {
                    session_present: true,
                    code: 0,
                },
            ),
            (&[0x40, 2, 0, 9], Incoming::PubAck(9)),
            (
                &[0x90, 3, 0, 4, 1],
                Incoming::SubAck {
                    packet_id: 4,
                    codes: vec![1],
                },
            ),
            (&[0xD0, 0], Incoming::PingResp),
            (
                &[0x33, 7, 0, 1, b's', 0, 2, b'o', b'n'],
                Incoming::Publish {
                    topic: "s".into(),
                    payload: b"on".to_vec(),
                    qos: 1,
                    retain: true,
                    packet_id: Some(2),
                },
            ),
            (&[0xB0, 2, 0, 1], Incoming::Other(11)),
        ];
        for (bytes, want) in table {
            assert_eq!(decode(bytes, max)?, Some((want.clone(), bytes.len())));
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut], max)?, None, "{want:?} cut at {cut}");
            }
            let mut two = bytes.to_vec();
            two.extend_from_slice(&[0xD0, 0]);
            assert_eq!(decode(&two, max)?.map(|(_, n)| n), Some(bytes.len()));
        }
        Ok(())
    }

    #[test]
    fn broken_packets_are_errors_not_panics() {
        for bytes in [
            &[0x20, 1, 0][..],
            &[0x40, 1, 0],
            &[0x30, 3, 0, 9, b'x'],
            &[0x30, 3, 0, 1, 0xFF],
            &[0x32, 3, 0, 1, b'x'],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ] {
            assert!(decode(bytes, 1 << 20).is_err(), "{bytes:?}");
        }
        assert!(
            decode(&[0x90, 0x80, 0x01], 64).is_err(),
            "a SUBACK over the limit (a PUBLISH is skipped instead)"
        );
    }
}
