//! MQTT 3.1.1, our own (rumqttc's blocking client builds a tokio runtime and paho-mqtt
//! crashed under broker kills): [`packet`] encodes and decodes (pure), [`Client`] is one
//! connection. The MQTT sink publishes with it, the fleet ingest subscribes with it.

mod client;
pub(crate) mod packet;

use std::time::Duration;

pub(crate) use client::{Client, split_url};

/// The keep-alive asked of the broker; a client pings after half of it without traffic.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A topic level made safe: `/`, `+`, `#` and spaces become `_` (a level never splits).
pub(crate) fn level(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | ' ') {
                '_'
            } else {
                c
            }
        })
        .collect()
}
