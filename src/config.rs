//! Every setting of the hub, with its default, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, NO_TLS, Result, quote};
use crate::event::Priority;

/// The default database file, relative to the working directory.
pub const DEFAULT_DB_PATH: &str = "timelapse-events.db";

/// Default of [`Config::max_cameras`]: a home has a handful of cameras; 64 leaves room
/// for ten times that, and 64 camera records are about 20 KiB of `/api/state`.
pub const DEFAULT_MAX_CAMERAS: usize = 64;
/// Default of [`Config::max_event_types`]: the hub itself reads five types and a home
/// setup adds a few dozen; 256 per-type counters are a few KiB of `/metrics` and stats.
pub const DEFAULT_MAX_EVENT_TYPES: usize = 256;
/// Largest accepted [`Config::max_cameras`] and [`Config::max_event_types`].
const MAX_DISTINCT_LIMIT: usize = 100_000;

/// SQLite's `synchronous` setting for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Durable against a crash of the process; a power cut may lose the last commits
    /// (WAL + NORMAL). The default.
    #[default]
    Normal,
    /// Durable against power loss: every commit waits for fsync.
    Full,
}

impl Synchronous {
    /// The pragma value.
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

impl FromStr for Synchronous {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Synchronous::Normal),
            "full" => Ok(Synchronous::Full),
            _ => Err(Error::Config {
                field: "synchronous",
                reason: format!("{} is not `normal` or `full`", quote(s)),
            }),
        }
    }
}

/// Settings of a [`Hub`](crate::Hub). Build one with `Config { field, ..Config::default() }`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite file. Defaults to `./timelapse-events.db`.
    pub db_path: PathBuf,
    /// Where the HTTP server listens. Defaults to `127.0.0.1:8080`.
    pub bind: SocketAddr,
    /// A bare `:` comment is sent after this much silence on a stream. Defaults to 15 s.
    pub heartbeat_interval: Duration,
    /// Most event streams held open at once; more get `503`. Defaults to 256.
    pub max_clients: usize,
    /// When set, `POST /api/events` needs `Authorization: Bearer <token>`. Defaults to none.
    pub token: Option<String>,
    /// Origins allowed by CORS (exact match, e.g. `http://192.168.1.20:3000`); a write from
    /// a page of any other origin gets `403`. Defaults to none.
    pub cors_origins: Vec<String>,
    /// When set, every read (`/api/state`, `/api/events`, `/api/events/stats`, `/metrics`,
    /// the dashboard and its files) needs this token, or `token`: as
    /// `Authorization: Bearer <token>`, or the cookie the dashboard's login form sets. It
    /// never authorises a write. Defaults to none (reads are open).
    pub read_token: Option<String>,
    /// More names (or addresses) a request's `Host` may carry, beyond loopback, `localhost`
    /// and, when listening beyond loopback, this machine's own names and addresses: e.g.
    /// the name a reverse proxy forwards. Others get `421`. Defaults to none.
    pub allowed_hosts: Vec<String>,
    /// SQLite `synchronous`. Defaults to [`Synchronous::Normal`].
    pub synchronous: Synchronous,
    /// How long a write waits for another connection's lock. Defaults to 5 s.
    pub busy_timeout: Duration,
    /// A stream whose client does not take a write within this long is dropped. Defaults to 10 s.
    pub send_timeout: Duration,
    /// Rows inserted by other processes are noticed through file notifications on the WAL
    /// (Linux inotify) when `watch_wal` is on and they work; the poller then also checks
    /// `PRAGMA data_version` every 2 s as a backstop. Without notifications it checks
    /// every `poll_interval`. Defaults to 5 ms.
    pub poll_interval: Duration,
    /// Use inotify on the `-wal` file to notice other processes' commits. Defaults to true
    /// (turned off only to measure the design we replace).
    pub watch_wal: bool,
    /// Most rows the poller dispatches in one transaction. Defaults to 512.
    pub batch_rows: usize,
    /// Threads answering HTTP requests (streams get threads of their own). Defaults to 4.
    pub http_workers: usize,
    /// Most client connections held at once (streams included); more are refused with a
    /// 503 as they arrive. Lowered to what the process's descriptor limit allows.
    /// Defaults to 1,024.
    pub max_conns: usize,
    /// Most connections from one client address (an IPv4 address or an IPv6 /64).
    /// Defaults to 64.
    pub max_conns_per_addr: usize,
    /// Most event streams from one client address; more get 429. Defaults to 32.
    pub max_streams_per_addr: usize,
    /// A request's head and body must arrive within this long of its first byte (and a
    /// new connection's first request within this long of its accept); else 408 and the
    /// connection closes. Defaults to 10 s.
    pub head_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed. Defaults to 30 s.
    pub idle_timeout: Duration,
    /// How long shutdown waits for streams to write their last bytes. Defaults to 1 s.
    pub shutdown_grace: Duration,
    /// The watchdog never calls a camera stale before this much silence, whatever its
    /// learned capture interval (3× that interval is the usual limit). Defaults to 60 s.
    pub stale_floor: Duration,
    /// Dispatched events older than this are deleted. Defaults to 7 days.
    pub retention_age: Option<Duration>,
    /// At most this many dispatched events are kept. Defaults to 1,000,000.
    pub retention_max_rows: Option<u64>,
    /// Oldest events are deleted while the database uses more than this. Defaults to 256 MiB.
    pub retention_max_db_bytes: Option<u64>,
    /// How often retention runs. Defaults to 60 s.
    pub retention_interval: Duration,
    /// Most cameras the live state holds (and 4 timelapses per camera). Events about a
    /// camera beyond it are still stored and streamed, but not folded into the state; they
    /// are counted. Defaults to [`DEFAULT_MAX_CAMERAS`] (64).
    pub max_cameras: usize,
    /// Most event types with counters of their own (`/metrics`, `/api/events/stats`).
    /// Events of a type beyond it are still stored and streamed, and counted together.
    /// Defaults to [`DEFAULT_MAX_EVENT_TYPES`] (256).
    pub max_event_types: usize,
    /// Outbound sinks (webhooks, ntfy), each with a cursor of its own in the database.
    /// Defaults to none.
    pub sinks: Vec<SinkConfig>,
    /// The dashboard's address as a phone should open it (ntfy's `click`). Defaults to
    /// none: `http://<bind>/`, with this machine's name for an unspecified address.
    pub public_url: Option<String>,
    /// The fleet ingest (`--mqtt-subscribe`): the broker whose other camera hosts' events
    /// this hub stores in its own log. Its `prefix` and `host_name` (this host, whose own
    /// topics are skipped) mean what they mean for the MQTT sink. Defaults to none.
    pub mqtt_subscribe: Option<MqttTarget>,
    /// Advertise the hub on the LAN with mDNS/DNS-SD (`_timelapse-events._tcp`,
    /// `_http._tcp`) when it listens beyond loopback. Defaults to true.
    pub mdns: bool,
    /// The name the hub goes by on the LAN: its mDNS instance and TXT `host` (the MQTT sink
    /// has its own `host_name`). Defaults to none: this machine's name.
    pub host_name: Option<String>,
    /// The directory the capture program writes its images into: with it,
    /// `GET /api/cameras/<id>/latest` serves the file a local camera's latest
    /// `image_captured` names (`thumbnail`, else `file_name`, relative to it), and only files
    /// inside it. It must exist; [`Hub::start`](crate::Hub::start) canonicalizes it once.
    /// Defaults to none (no such route).
    pub images_dir: Option<PathBuf>,
}

/// Where a sink delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// POST each event's JSON envelope (as the stream sends it) to `url`.
    Webhook {
        /// An `http://` URL.
        url: String,
        /// Extra request headers, e.g. `Authorization: Bearer ...` (values are secrets).
        headers: Vec<(String, String)>,
    },
    /// Publish to ntfy (JSON to the server root) on `topic`.
    Ntfy {
        /// The server's root, e.g. `http://ntfy.local/`.
        server: String,
        /// The topic, e.g. `camera-alerts`.
        topic: String,
    },
    /// Publish to an MQTT broker at QoS 1, with Home Assistant discovery.
    Mqtt(MqttTarget),
}

/// An MQTT sink's broker and topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    /// `mqtt://[user@]host[:port]` (port 1883 by default), or `mqtts://` (TLS, port 8883
    /// by default; only in a build with the `tls` feature).
    pub url: String,
    /// For `mqtts://`: a PEM file of CA certificates trusted besides the built-in roots
    /// (a home broker's own CA). Defaults to none.
    pub ca_file: Option<PathBuf>,
    /// The password (a secret: from a file or the environment).
    pub password: Option<String>,
    /// The MQTT client id. Defaults to `timelapse-events-<host>`.
    pub client_id: Option<String>,
    /// Topics start `<prefix>/<host>/`. Defaults to `timelapse`.
    pub prefix: String,
    /// The `<host>` in topics and ids. Defaults to the machine's name.
    pub host_name: Option<String>,
    /// Home Assistant's discovery prefix. Defaults to `homeassistant`.
    pub discovery_prefix: String,
}

impl MqttTarget {
    /// A target for `url` with the default prefixes.
    pub fn new(url: &str) -> MqttTarget {
        MqttTarget {
            url: url.to_owned(),
            ca_file: None,
            password: None,
            client_id: None,
            prefix: "timelapse".to_owned(),
            host_name: None,
            discovery_prefix: "homeassistant".to_owned(),
        }
    }
}

/// One outbound sink: a target, a filter and its delivery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Names its cursor in the database (`sink_cursors.name`) and its thread
    /// (`tle-sink-<name>`): at most 6 characters of a-z 0-9, e.g. `hook1`.
    pub name: String,
    /// Where it delivers.
    pub target: SinkTarget,
    /// Only these event types. Defaults to all (ntfy: `camera_stale` and
    /// `camera_status_changed`, of which only `offline`).
    pub types: Option<Vec<String>>,
    /// Only events of at least this priority. Defaults to [`Priority::Low`] (all).
    pub min_priority: Priority,
    /// Only events about these cameras (`data.camera_id`). Defaults to all.
    pub camera_ids: Option<Vec<i64>>,
    /// One delivery's whole time (connect, send, answer). Defaults to 10 s.
    pub timeout: Duration,
    /// Most events delivered but not yet recorded in the cursor: after a crash at most this
    /// many are sent again. Defaults to 32.
    pub window: usize,
    /// The first retry's delay (then doubled, jittered). Defaults to 0.5 s.
    pub retry_min: Duration,
    /// The longest retry delay. Defaults to 60 s.
    pub retry_max: Duration,
}

impl SinkConfig {
    /// A webhook sink named `name` posting to `url`, with the default settings.
    pub fn webhook(name: &str, url: &str, headers: Vec<(String, String)>) -> SinkConfig {
        SinkConfig::with_target(
            name,
            SinkTarget::Webhook {
                url: url.to_owned(),
                headers,
            },
        )
    }

    /// An ntfy sink named `name` from `http://server/topic`, with the default settings.
    ///
    /// # Errors
    /// [`Error::Config`] when `url` has no topic after the server.
    pub fn ntfy(name: &str, url: &str) -> Result<SinkConfig> {
        let (server, topic) = split_ntfy_url(url)?;
        let mut sink = SinkConfig::with_target(name, SinkTarget::Ntfy { server, topic });
        sink.types = Some(vec![
            "camera_stale".to_owned(),
            "camera_status_changed".to_owned(),
        ]);
        Ok(sink)
    }

    /// An MQTT sink named `name` with a window of 64 publishes in flight.
    pub fn mqtt(name: &str, target: MqttTarget) -> SinkConfig {
        let mut sink = SinkConfig::with_target(name, SinkTarget::Mqtt(target));
        sink.window = 64;
        sink
    }

    fn with_target(name: &str, target: SinkTarget) -> SinkConfig {
        SinkConfig {
            name: name.to_owned(),
            target,
            types: None,
            min_priority: Priority::Low,
            camera_ids: None,
            timeout: Duration::from_secs(10),
            window: 32,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Config {
                field: "sinks",
                reason: format!("sink {}: {reason}", quote(&self.name)),
            })
        };
        if self.name.is_empty()
            || self.name.len() > 6
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return bad("a name is 1 to 6 characters of a-z and 0-9".into());
        }
        let url = match &self.target {
            SinkTarget::Webhook { url, .. } => url,
            SinkTarget::Ntfy { server, .. } => server,
            SinkTarget::Mqtt(m) => {
                let tls = m.url.starts_with("mqtts://");
                if tls && !cfg!(feature = "tls") {
                    return bad(format!("{}: mqtts:// {NO_TLS}", quote(&m.url)));
                }
                if !tls && !m.url.starts_with("mqtt://") {
                    return bad(format!("{} is not an mqtt:// URL", quote(&m.url)));
                }
                if !tls && m.ca_file.is_some() {
                    return bad("a CA file is only for an mqtts:// broker".into());
                }
                let bad_part = |s: &str| s.is_empty() || s.contains(['/', '+', '#']);
                if bad_part(&m.prefix) || bad_part(&m.discovery_prefix) {
                    return bad("MQTT prefixes are non-empty and have no / + #".into());
                }
                &m.url
            }
        };
        if url.starts_with("https://") && !cfg!(feature = "tls") {
            return bad(format!("{}: https:// {NO_TLS}", quote(url)));
        }
        if !["http://", "https://", "mqtt://", "mqtts://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return bad(format!("{} is not an http:// or https:// URL", quote(url)));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
            return bad("timeout must be between 1 ms and 10 minutes".into());
        }
        if self.window == 0 || self.window > 1024 {
            return bad("window must be between 1 and 1024".into());
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return bad("retry delays must be positive, the first no longer than the last".into());
        }
        Ok(())
    }
}

/// `Name: value` as a header: a token name, a value of visible ASCII and spaces.
///
/// # Errors
/// [`Error::Config`] naming only the header, never its value (a secret).
pub fn parse_header(line: &str) -> Result<(String, String)> {
    let bad = |reason: &str| Error::Config {
        field: "webhook_header",
        // The value may be a secret: name only the header.
        reason: format!(
            "`{}`: {reason}",
            line.split(':').next().unwrap_or("").trim()
        ),
    };
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| bad("not `Name: value`"))?;
    let (name, value) = (name.trim(), value.trim());
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(bad("not a header name"));
    }
    if value.is_empty() || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(bad("the value must be non-empty printable ASCII"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// `http://ntfy.local/camera-alerts` → (`http://ntfy.local/`, `camera-alerts`); `https://`
/// alike (refused by the validation of a build without TLS).
fn split_ntfy_url(url: &str) -> Result<(String, String)> {
    let no_topic = || Error::Config {
        field: "ntfy",
        reason: format!("{} has no topic: use http://server/topic", quote(url)),
    };
    let (scheme, rest) = ["http://", "https://"]
        .into_iter()
        .find_map(|scheme| url.strip_prefix(scheme).map(|rest| (scheme, rest)))
        .ok_or_else(|| Error::Config {
            field: "ntfy",
            reason: format!("{} is not an http:// or https:// URL", quote(url)),
        })?;
    let rest = rest.trim_end_matches('/');
    let (host_path, topic) = rest.rsplit_once('/').ok_or_else(no_topic)?;
    let topic_ok = !topic.is_empty()
        && topic.len() <= 64
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !topic_ok || host_path.is_empty() {
        return Err(no_topic());
    }
    Ok((format!("{scheme}{host_path}/"), topic.to_owned()))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            heartbeat_interval: Duration::from_secs(15),
            max_clients: 256,
            token: None,
            cors_origins: Vec::new(),
            read_token: None,
            allowed_hosts: Vec::new(),
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(5),
            watch_wal: true,
            batch_rows: 512,
            http_workers: 4,
            max_conns: 1024,
            max_conns_per_addr: 64,
            max_streams_per_addr: 32,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
            stale_floor: Duration::from_secs(60),
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_max_rows: Some(1_000_000),
            retention_max_db_bytes: Some(256 * 1024 * 1024),
            retention_interval: Duration::from_secs(60),
            max_cameras: DEFAULT_MAX_CAMERAS,
            max_event_types: DEFAULT_MAX_EVENT_TYPES,
            sinks: Vec::new(),
            public_url: None,
            mqtt_subscribe: None,
            mdns: true,
            host_name: None,
            images_dir: None,
        }
    }
}

impl Config {
    /// This host's name among camera hosts: `host_name`, else the fleet's or an MQTT
    /// sink's `host_name` when set, else the machine's.
    pub fn this_host(&self) -> String {
        if let Some(h) = &self.host_name {
            return h.clone();
        }
        self.mqtt_subscribe
            .iter()
            .chain(self.sinks.iter().filter_map(|s| match &s.target {
                SinkTarget::Mqtt(m) => Some(m),
                _ => None,
            }))
            .find_map(|m| m.host_name.clone())
            .unwrap_or_else(crate::host::machine_name)
    }

    /// Refuses settings that cannot work.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = &self.mqtt_subscribe {
            crate::mqtt::split_url(&m.url)?;
        }
        let bad = |field, reason: &str| {
            Err(Error::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval > Duration::from_secs(3600)
        {
            return bad("heartbeat_interval", "must be between 1 ms and 1 hour");
        }
        if self.max_clients == 0 || self.max_clients > 10_000 {
            return bad("max_clients", "must be between 1 and 10000");
        }
        if let Some(t) = &self.token
            && (t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return bad("token", "must be non-empty printable ASCII without spaces");
        }
        if let Some(t) = &self.read_token
            && (t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return bad(
                "read_token",
                "must be non-empty printable ASCII without spaces",
            );
        }
        if self.read_token.is_some() && self.read_token == self.token {
            return bad("read_token", "must differ from token (it grants less)");
        }
        if let Some(h) = self.allowed_hosts.iter().find(|h| !plain_host(h)) {
            return bad(
                "allowed_hosts",
                &format!("`{h}` is not a host name or address (no scheme, port or path)"),
            );
        }
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = self.sinks.iter().find(|s| !names.insert(s.name.as_str())) {
            return bad(
                "sinks",
                &format!(
                    "two sinks are named {}: a sink's cursor belongs to its name, so names \
                     must be unique (the flags' sinks are hook1…, ntfy1…)",
                    quote(&twice.name)
                ),
            );
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must be above zero");
        }
        if self.batch_rows == 0 {
            return bad("batch_rows", "must be above zero");
        }
        if self.max_conns == 0 || self.max_conns_per_addr == 0 || self.max_streams_per_addr == 0 {
            return bad(
                "max_conns",
                "connection and stream limits must be above zero",
            );
        }
        if self.head_timeout.is_zero() || self.idle_timeout.is_zero() {
            return bad("head_timeout", "timeouts must be above zero");
        }
        if self.http_workers == 0 {
            return bad("http_workers", "must be above zero");
        }
        if self.stale_floor.is_zero() {
            return bad("stale_floor", "must be above zero");
        }
        if self.retention_interval.is_zero() {
            return bad("retention_interval", "must be above zero");
        }
        if self.send_timeout.is_zero() {
            return bad("send_timeout", "must be above zero");
        }
        if !(1..=MAX_DISTINCT_LIMIT).contains(&self.max_cameras) {
            return bad("max_cameras", "must be between 1 and 100000");
        }
        if !(1..=MAX_DISTINCT_LIMIT).contains(&self.max_event_types) {
            return bad("max_event_types", "must be between 1 and 100000");
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            sink.validate()?;
            if self.sinks[..i].iter().any(|s| s.name == sink.name) {
                return Err(Error::Config {
                    field: "sinks",
                    reason: format!("two sinks are named {}", quote(&sink.name)),
                });
            }
        }
        Ok(())
    }

    /// `images_dir` as the one canonical path the image route compares against (links
    /// followed), checked to be a directory; created when missing (the capture program,
    /// or `simulate_cameras`, may start after the hub).
    ///
    /// # Errors
    /// [`Error::Config`] when it cannot be created or is not a directory.
    pub(crate) fn resolve_images_dir(&mut self) -> Result<()> {
        let Some(dir) = &self.images_dir else {
            return Ok(());
        };
        let bad = |reason: String| Error::Config {
            field: "images_dir",
            reason: format!("{}: {reason}", dir.display()),
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it ({e})")))?;
            log::info!("created the images directory {}", dir.display());
        }
        let canonical = dir
            .canonicalize()
            .map_err(|e| bad(format!("cannot open it ({e})")))?;
        if !canonical.is_dir() {
            return Err(bad("not a directory".into()));
        }
        self.images_dir = Some(canonical);
        Ok(())
    }

    /// True when the hub listens only on a loopback address.
    pub fn is_loopback(&self) -> bool {
        self.bind.ip().is_loopback()
    }
}

/// A name or IP literal as `Host` carries it, without a port: `pi.example`, `10.0.0.9`,
/// `[fd00::1]`.
fn plain_host(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    match h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ntfy_url_splits_into_server_and_topic() {
        for (url, server, topic) in [
            (
                "http://ntfy.local/camera-alerts",
                "http://ntfy.local/",
                "camera-alerts",
            ),
            (
                "http://10.0.0.2:8080/cams/",
                "http://10.0.0.2:8080/",
                "cams",
            ),
            ("http://host/sub/path/t_1", "http://host/sub/path/", "t_1"),
            ("https://ntfy.sh/cams", "https://ntfy.sh/", "cams"),
        ] {
            let got = split_ntfy_url(url).expect(url);
            assert_eq!(got, (server.to_owned(), topic.to_owned()), "{url}");
        }
        for bad in [
            "http://ntfy.local",
            "http://ntfy.local/",
            "ftp://n/t",
            "n/t",
            "http://h/a b",
        ] {
            assert!(split_ntfy_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sinks_are_validated_by_name_url_and_settings() {
        let ok = SinkConfig::webhook("hook1", "http://127.0.0.1:9/x", vec![]);
        let config = |sinks: Vec<SinkConfig>| Config {
            sinks,
            ..Config::default()
        };
        assert!(config(vec![ok.clone()]).validate().is_ok());
        assert!(
            config(vec![ok.clone(), ok.clone()]).validate().is_err(),
            "same name"
        );
        let https = SinkConfig::webhook("hook1", "https://x/", vec![]);
        assert_eq!(
            config(vec![https]).validate().is_ok(),
            cfg!(feature = "tls"),
            "https:// only with TLS"
        );
        let long = SinkConfig::webhook("webhook1", "http://x/", vec![]);
        assert!(
            config(vec![long]).validate().is_err(),
            "thread names fit 15 bytes"
        );
        let zero = SinkConfig { window: 0, ..ok };
        assert!(config(vec![zero]).validate().is_err());
    }

    #[test]
    fn tls_urls_are_refused_without_the_tls_feature() {
        let config = |sink: SinkConfig| Config {
            sinks: vec![sink],
            ..Config::default()
        };
        let mqtts = SinkConfig::mqtt("mqtt1", MqttTarget::new("mqtts://broker.lan"));
        let webhook = SinkConfig::webhook("hook1", "https://hooks.example/x", vec![]);
        let ntfy = SinkConfig::ntfy("ntfy1", "https://ntfy.sh/cams").expect("an ntfy URL");
        for sink in [mqtts, webhook, ntfy] {
            let got = config(sink.clone()).validate();
            if cfg!(feature = "tls") {
                assert!(got.is_ok(), "{sink:?}: {got:?}");
            } else {
                let e = got.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(e.contains("--features tls"), "{sink:?}: {e}");
            }
        }
        let mut plain_ca = MqttTarget::new("mqtt://broker.lan");
        plain_ca.ca_file = Some("/etc/ca.pem".into());
        let got = config(SinkConfig::mqtt("mqtt1", plain_ca)).validate();
        assert!(got.is_err(), "a CA file on mqtt://");
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.max_clients, 256);
        assert!(c.is_loopback());
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: [(Config, &str); 8] = [
            (
                Config {
                    max_clients: 0,
                    ..Config::default()
                },
                "max_clients",
            ),
            (
                Config {
                    token: Some("a b".into()),
                    ..Config::default()
                },
                "token",
            ),
            (
                Config {
                    heartbeat_interval: Duration::ZERO,
                    ..Config::default()
                },
                "heartbeat_interval",
            ),
            (
                Config {
                    max_cameras: 0,
                    ..Config::default()
                },
                "max_cameras",
            ),
            (
                Config {
                    max_event_types: 100_001,
                    ..Config::default()
                },
                "max_event_types",
            ),
            (
                Config {
                    read_token: Some(String::new()),
                    ..Config::default()
                },
                "read_token",
            ),
            (
                Config {
                    token: Some("same".into()),
                    read_token: Some("same".into()),
                    ..Config::default()
                },
                "read_token",
            ),
            (
                Config {
                    allowed_hosts: vec!["http://pi.example:8080".into()],
                    ..Config::default()
                },
                "allowed_hosts",
            ),
        ];
        for (c, field) in cases {
            match c.validate() {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected config error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn synchronous_parses_case_insensitively() {
        assert_eq!("FULL".parse::<Synchronous>().ok(), Some(Synchronous::Full));
        assert_eq!(
            "normal".parse::<Synchronous>().ok(),
            Some(Synchronous::Normal)
        );
        assert!("off".parse::<Synchronous>().is_err());
    }
}
