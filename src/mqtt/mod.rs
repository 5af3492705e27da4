//! MQTT 3.1.1, our own (rumqttc's blocking client builds a tokio runtime and paho-mqtt
//! crashed under broker kills): [`packet`] encodes and decodes (pure), [`Client`] is one
//! connection. The MQTT sink publishes with it, the fleet ingest subscribes with it.

mod client;
pub(crate) mod packet;
#[cfg(feature = "tls")]
pub(crate) mod tls;

use std::path::Path;
use std::time::Duration;

use crate::error::Result;
pub(crate) use client::{BrokerUrl, Client, split_url};

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

/// How a client reaches its broker: plain TCP, or TLS with these client settings.
#[derive(Clone)]
pub(crate) enum Security {
    Plain,
    #[cfg(feature = "tls")]
    Tls(std::sync::Arc<rustls::ClientConfig>),
}

/// The security `url` asks for: TLS (its trusted roots read once, here, with `ca_file`)
/// for `mqtts://`.
///
/// # Errors
/// `mqtts://` in a build without the `tls` feature; a CA file that cannot be read.
pub(crate) fn security(url: &BrokerUrl, ca_file: Option<&Path>) -> Result<Security> {
    if !url.tls {
        return Ok(Security::Plain);
    }
    #[cfg(feature = "tls")]
    {
        Ok(Security::Tls(tls::client_config(ca_file)?))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = ca_file;
        Err(crate::error::Error::Config {
            field: "mqtt",
            reason: format!("mqtts:// {}", crate::error::NO_TLS),
        })
    }
}
