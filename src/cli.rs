//! Command-line interface: subcommands and flags, each flag also read from an environment
//! variable (`TIMELAPSE_EVENTS_*`). `serve` is run by `main.rs`, which owns signals.

use std::path::PathBuf;
use std::time::Duration;

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::Value;

use timelapse_events::{
    Config, ConfigFile, DEFAULT_DB_PATH, DbFileProblem, Emitter, Error, MqttTarget, NewEvent,
    Priority, Result, SinkConfig, Synchronous, admin, parse_header,
};

/// timelapse-events: SQLite-backed Server-Sent Events hub for timelapse cameras.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the command line, and for `serve --config` merges the file under it.
///
/// The file's values become command-line arguments for the flags that neither the command
/// line nor the environment set (`ArgMatches::value_source`), and the whole line is parsed
/// again: clap stays the one parser, so a value in the file means exactly what it means as a
/// flag, and the order flag > environment > file > default is clap's own. Each value is
/// first checked by its flag's own value parser, so that a refusal names the file's line.
///
/// # Errors
/// [`Error::ConfigFile`] naming the file, line and key. A bad command line exits 2 here,
/// with clap's usage message.
pub fn parse() -> Result<Cli> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let path = match matches.subcommand() {
        Some(("serve", serve)) => serve.get_one::<PathBuf>("config").cloned(),
        _ => None,
    };
    let Some(path) = path else {
        return Cli::from_arg_matches(&matches).map_err(usage);
    };
    let file = ConfigFile::read(&path)?;
    let mut extra = merge_args(&file, &matches)?;
    let mut full = argv;
    full.append(&mut extra);
    let matches = Cli::command().try_get_matches_from(full).map_err(usage)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(usage)?;
    if let Command::Serve(args) = &mut cli.command {
        args.file_sinks = file.sinks;
    }
    Ok(cli)
}

fn usage(e: clap::Error) -> Error {
    Error::Config {
        field: "command line",
        reason: first_line(&e),
    }
}

/// clap's message without its `error: ` and usage lines.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The arguments the file adds: `--flag=value` for each of its keys whose flag neither the
/// command line nor the environment set.
fn merge_args(file: &ConfigFile, matches: &clap::ArgMatches) -> Result<Vec<OsString>> {
    let cli = Cli::command();
    let serve_cmd = cli.find_subcommand("serve").ok_or_else(|| Error::Config {
        field: "command",
        reason: "no serve subcommand".into(),
    })?;
    let serve = matches.subcommand_matches("serve");
    let refuse = |line, key: &str, reason: String| Error::ConfigFile {
        path: file.path.clone(),
        line,
        key: key.to_owned(),
        reason,
    };
    let mut extra = Vec::new();
    for setting in &file.settings {
        let key = setting.key.as_str();
        let arg = serve_cmd
            .get_arguments()
            .find(|a| a.get_long().is_some_and(|l| l.replace('-', "_") == key))
            .filter(|a| a.get_id() != "config")
            .ok_or_else(|| {
                refuse(
                    setting.line,
                    key,
                    "unknown key: not a flag of `serve` (written as its long name) nor `sink`"
                        .into(),
                )
            })?;
        let long = arg.get_long().unwrap_or(key);
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        if setting.is_list && !repeatable {
            return Err(refuse(
                setting.line,
                key,
                format!("--{long} takes one value, not an array"),
            ));
        }
        for value in &setting.values {
            // The flag alone on a `serve` line: its own value parser (ranges included).
            let alone = ["timelapse-events", "serve", &format!("--{long}={value}")];
            Cli::command()
                .try_get_matches_from(alone)
                .map_err(|e| refuse(setting.line, key, first_line(&e)))?;
        }
        let source = serve.and_then(|m| m.value_source(arg.get_id().as_str()));
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            log::debug!("config file: --{long} is set on the command line or in the environment");
            continue;
        }
        extra.extend(
            setting
                .values
                .iter()
                .map(|v| format!("--{long}={v}").into()),
        );
    }
    Ok(extra)
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub: HTTP API, event streams and dashboard.
    Serve(Box<ServeArgs>),
    /// Store one event in an existing database (the hub dispatches it).
    Emit(EmitArgs),
    /// Print event statistics of a database as JSON (read-only).
    Stats(DbArgs),
    /// Print the outbound sinks' stored cursors and counts as JSON (read-only).
    Sinks(CheckArgs),
    /// Delete old dispatched events now (never pending ones).
    Cleanup(CleanupArgs),
    /// Check a database: integrity, schema version, counts, WAL size. Exits 1 on a problem.
    /// Read-only: never changes the file.
    Check(CheckArgs),
    /// Copy a (possibly running) database to a file with SQLite's online backup API.
    Backup(BackupArgs),
    /// Find the hubs on the LAN (mDNS/DNS-SD, `_timelapse-events._tcp`): one line per hub
    /// (host, addresses, port, version). Exits 0 when none answers.
    Discover(DiscoverArgs),
}

/// `discover` flags.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Seconds to listen for answers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub secs: u64,
    /// Print a JSON array: each hub's host, addresses, port, version and TXT keys.
    #[arg(long)]
    pub json: bool,
}

/// `check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// SQLite database file.
    #[arg(long, env = "TIMELAPSE_EVENTS_DB", default_value = DEFAULT_DB_PATH)]
    pub db: PathBuf,
}

/// `backup` flags.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// SQLite database file to copy.
    #[arg(long, env = "TIMELAPSE_EVENTS_DB", default_value = DEFAULT_DB_PATH)]
    pub db: PathBuf,
    /// Destination file (must not exist).
    #[arg(long)]
    pub to: PathBuf,
}

/// `cleanup` flags.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Database flags.
    #[command(flatten)]
    pub db: DbArgs,
    /// Delete dispatched events older than this: e.g. 90m, 24h, 7d (default: the hub's
    /// retention policy, 7d / 1,000,000 events / 256 MiB).
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<Duration>,
}

/// Parses `30s`, `90m`, `24h`, `7d` (a bare number is seconds).
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 90m, 24h, 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit `{unit}`: use s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| "duration too large".into())
}

/// Flags shared by every subcommand that opens the database.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// SQLite database file (only `serve` and `emit --create` create a missing one).
    #[arg(long, env = "TIMELAPSE_EVENTS_DB", default_value = DEFAULT_DB_PATH)]
    pub db: PathBuf,
    /// SQLite synchronous mode: `normal` (survives a crash of the hub) or `full` (also
    /// survives power loss; every commit waits for the disk).
    #[arg(long, env = "TIMELAPSE_EVENTS_SYNCHRONOUS", default_value = "normal", value_parser = parse_sync)]
    pub synchronous: Synchronous,
}

fn parse_sync(s: &str) -> std::result::Result<Synchronous, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of settings: any of these flags by its long name (`heartbeat_secs` or
    /// `heartbeat-secs`), and `[[sink]]` tables. Flags and environment variables win over it.
    #[arg(long, env = "TIMELAPSE_EVENTS_CONFIG")]
    pub config: Option<PathBuf>,
    /// The sinks of the config file, before the flags' own.
    #[arg(skip)]
    pub file_sinks: Vec<SinkConfig>,
    /// Database flags.
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on; use 0.0.0.0:8080 for the LAN.
    #[arg(long, env = "TIMELAPSE_EVENTS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    /// Seconds of silence before a heartbeat comment is sent on a stream.
    #[arg(long, env = "TIMELAPSE_EVENTS_HEARTBEAT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,
    /// Most event streams open at once; more get 503 with Retry-After.
    #[arg(long, env = "TIMELAPSE_EVENTS_MAX_CLIENTS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub max_clients: u64,
    /// Most client connections held at once, streams included (lowered to what the
    /// descriptor limit allows); more are refused with 503 as they arrive.
    #[arg(long, env = "TIMELAPSE_EVENTS_MAX_CONNS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_conns: u64,
    /// Most connections from one client address (IPv4 address or IPv6 /64).
    #[arg(long, env = "TIMELAPSE_EVENTS_MAX_CONNS_PER_ADDR", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_conns_per_addr: u64,
    /// Most event streams from one client address; more get 429.
    #[arg(long, env = "TIMELAPSE_EVENTS_MAX_STREAMS_PER_ADDR", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub max_streams_per_addr: u64,
    /// Seconds a client has to send a whole request (head and body) once it starts, and
    /// a new connection its first request; then 408 and the connection closes.
    #[arg(long, env = "TIMELAPSE_EVENTS_HEAD_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub head_timeout_secs: u64,
    /// Seconds an idle kept-alive connection stays open.
    #[arg(long, env = "TIMELAPSE_EVENTS_IDLE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_secs: u64,
    /// Bearer token required by POST /api/events (required for POST off loopback).
    #[arg(long, env = "TIMELAPSE_EVENTS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An origin allowed by CORS, e.g. http://192.168.1.20:3000 (repeatable; in the
    /// environment, comma-separated).
    #[arg(
        long = "cors-origin",
        env = "TIMELAPSE_EVENTS_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Token every read needs (API, event stream, dashboard): as a Bearer header, or the
    /// cookie the dashboard's login form sets. --token also grants reads; this one never
    /// grants writes.
    #[arg(long, env = "TIMELAPSE_EVENTS_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// Another name (or address) requests may carry in Host, e.g. a reverse proxy's
    /// (repeatable; in the environment, comma-separated). Loopback, localhost and, when
    /// listening beyond loopback, this machine's names and addresses are always allowed.
    #[arg(
        long = "allowed-host",
        env = "TIMELAPSE_EVENTS_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// The watchdog never calls a camera stale before this many seconds of silence.
    #[arg(long, env = "TIMELAPSE_EVENTS_STALE_FLOOR_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stale_floor_secs: u64,
    /// Keep dispatched events for this many days (0 = no age limit).
    #[arg(long, env = "TIMELAPSE_EVENTS_RETAIN_DAYS", default_value_t = 7)]
    pub retain_days: u64,
    /// Keep at most this many dispatched events (0 = no limit).
    #[arg(
        long,
        env = "TIMELAPSE_EVENTS_RETAIN_ROWS",
        default_value_t = 1_000_000
    )]
    pub retain_rows: u64,
    /// Delete oldest events while the database uses more than this many MiB (0 = no limit).
    #[arg(long, env = "TIMELAPSE_EVENTS_RETAIN_MIB", default_value_t = 256)]
    pub retain_mib: u64,
    /// How long the hub waits for another process's write lock before a write fails and
    /// is retried (SQLite's busy timeout), in milliseconds.
    #[arg(long, env = "TIMELAPSE_EVENTS_BUSY_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub busy_timeout_ms: u64,
    /// Most cameras the live state holds (and 4 timelapses each); events about more are
    /// stored and streamed, but not folded into /api/state (counted in stats and /metrics).
    #[arg(long, env = "TIMELAPSE_EVENTS_MAX_CAMERAS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_cameras: u64,
    /// Most event types counted one by one in stats and /metrics; events of more types
    /// are stored and streamed, and counted together.
    #[arg(long, env = "TIMELAPSE_EVENTS_MAX_EVENT_TYPES", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_event_types: u64,
    /// POST every event (its JSON envelope, as the stream sends it) to this http:// URL,
    /// at least once and in order (repeatable; in the environment, space-separated).
    #[arg(
        long = "webhook",
        env = "TIMELAPSE_EVENTS_WEBHOOKS",
        value_delimiter = ' '
    )]
    pub webhooks: Vec<String>,
    /// An extra header for every webhook request, as 'Name: value', e.g. 'Authorization:
    /// Bearer ...' (repeatable; in the environment, one per line). Prefer
    /// --webhook-header-file for secrets: a command line is visible to every local user.
    #[arg(
        long = "webhook-header",
        env = "TIMELAPSE_EVENTS_WEBHOOK_HEADERS",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub webhook_headers: Vec<String>,
    /// A file of extra webhook headers, one 'Name: value' per line (blank lines and lines
    /// starting with # are ignored).
    #[arg(long, env = "TIMELAPSE_EVENTS_WEBHOOK_HEADER_FILE")]
    pub webhook_header_file: Option<PathBuf>,
    /// Only these event types go to the webhooks (comma-separated; default: all).
    #[arg(long, env = "TIMELAPSE_EVENTS_WEBHOOK_TYPES", value_delimiter = ',')]
    pub webhook_types: Vec<String>,
    /// Only events of at least this priority go to the webhooks: low, normal, high or
    /// critical.
    #[arg(
        long,
        env = "TIMELAPSE_EVENTS_WEBHOOK_MIN_PRIORITY",
        default_value = "low"
    )]
    pub webhook_min_priority: String,
    /// Push stale and offline cameras to this ntfy topic, as http://server/topic
    /// (repeatable; in the environment, space-separated).
    #[arg(long = "ntfy", env = "TIMELAPSE_EVENTS_NTFY", value_delimiter = ' ')]
    pub ntfy: Vec<String>,
    /// The dashboard's address as a phone opens it, for ntfy's click action (default:
    /// http://<bind>/, with this machine's name for 0.0.0.0).
    #[arg(long, env = "TIMELAPSE_EVENTS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Publish every event to this MQTT broker, as mqtt://[user@]host[:port], with Home
    /// Assistant discovery; mqtts://[user@]host[:port] (TLS, port 8883) in a build with the
    /// `tls` feature.
    #[arg(long, env = "TIMELAPSE_EVENTS_MQTT")]
    pub mqtt: Option<String>,
    /// The MQTT password, read from this file (first line); or set
    /// TIMELAPSE_EVENTS_MQTT_PASSWORD in the environment.
    #[arg(long, env = "TIMELAPSE_EVENTS_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// For mqtts://: a PEM file of CA certificates to trust besides the built-in roots (a
    /// broker with its own CA).
    #[arg(long, env = "TIMELAPSE_EVENTS_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// The MQTT client id (default: timelapse-events-<host>).
    #[arg(long, env = "TIMELAPSE_EVENTS_MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,
    /// Topics start <prefix>/<host>/.
    #[arg(
        long,
        env = "TIMELAPSE_EVENTS_MQTT_PREFIX",
        default_value = "timelapse"
    )]
    pub mqtt_prefix: String,
    /// The <host> in MQTT topics and Home Assistant ids (default: this machine's name).
    #[arg(long, env = "TIMELAPSE_EVENTS_MQTT_HOST_NAME")]
    pub mqtt_host_name: Option<String>,
    /// Do not advertise the hub on the LAN with mDNS/DNS-SD (by default a hub listening
    /// beyond loopback announces itself as _timelapse-events._tcp and _http._tcp).
    #[arg(long, env = "TIMELAPSE_EVENTS_NO_MDNS", num_args = 0..=1, require_equals = true,
          default_value_t = false, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
    /// Home Assistant's MQTT discovery prefix.
    #[arg(
        long,
        env = "TIMELAPSE_EVENTS_MQTT_DISCOVERY_PREFIX",
        default_value = "homeassistant"
    )]
    pub mqtt_discovery_prefix: String,
    /// Store the events other camera hosts publish to this MQTT broker
    /// (mqtt://[user@]host[:port]; topics <prefix>/+/events/#, this host's own skipped),
    /// so that this hub streams, keeps and shows them too: the fleet's view.
    #[arg(long, env = "TIMELAPSE_EVENTS_MQTT_SUBSCRIBE")]
    pub mqtt_subscribe: Option<String>,
    /// Serve each local camera's latest image at /api/cameras/<id>/latest: the file its
    /// last image_captured names (thumbnail, else file_name), relative to this directory,
    /// and only files inside it. Must exist (default: no image route).
    #[arg(long, env = "TIMELAPSE_EVENTS_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
}

impl ServeArgs {
    /// The MQTT password: from `--mqtt-password-file` (its first line), else the
    /// environment only, since a command line is visible to every local user.
    fn mqtt_password(&self) -> Result<Option<String>> {
        Ok(match &self.mqtt_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                    op: "read the --mqtt-password-file",
                    source,
                })?;
                text.lines()
                    .next()
                    .map(|l| l.trim_end_matches('\r').to_owned())
            }
            None => std::env::var("TIMELAPSE_EVENTS_MQTT_PASSWORD").ok(),
        })
    }

    /// The fleet ingest `--mqtt-subscribe` describes, with the shared MQTT flags.
    fn mqtt_subscribe(&self) -> Result<Option<MqttTarget>> {
        let Some(url) = self.mqtt_subscribe.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let mut target = MqttTarget::new(url);
        target.password = self.mqtt_password()?;
        target.ca_file.clone_from(&self.mqtt_ca_file);
        target.prefix.clone_from(&self.mqtt_prefix);
        target.host_name.clone_from(&self.mqtt_host_name);
        Ok(Some(target))
    }

    /// The sinks these flags describe: `hook1`, `hook2`… in order, then `ntfy1`…
    fn sinks(&self) -> Result<Vec<SinkConfig>> {
        let mut lines = self.webhook_headers.clone();
        if let Some(path) = &self.webhook_header_file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                op: "read the --webhook-header-file",
                source,
            })?;
            lines.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        let headers = lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_header(l))
            .collect::<Result<Vec<_>>>()?;
        let min_priority: Priority = self.webhook_min_priority.parse()?;
        let types: Vec<String> = self
            .webhook_types
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        let mut sinks = Vec::new();
        for (i, url) in self.webhooks.iter().filter(|u| !u.is_empty()).enumerate() {
            let mut sink = SinkConfig::webhook(&format!("hook{}", i + 1), url, headers.clone());
            sink.min_priority = min_priority;
            sink.types = (!types.is_empty()).then(|| types.clone());
            sinks.push(sink);
        }
        for (i, url) in self.ntfy.iter().filter(|u| !u.is_empty()).enumerate() {
            sinks.push(SinkConfig::ntfy(&format!("ntfy{}", i + 1), url)?);
        }
        if let Some(url) = self.mqtt.as_deref().filter(|u| !u.is_empty()) {
            let mut target = MqttTarget::new(url);
            target.password = self.mqtt_password()?;
            target.ca_file.clone_from(&self.mqtt_ca_file);
            target.client_id.clone_from(&self.mqtt_client_id);
            target.prefix.clone_from(&self.mqtt_prefix);
            target.host_name.clone_from(&self.mqtt_host_name);
            target
                .discovery_prefix
                .clone_from(&self.mqtt_discovery_prefix);
            sinks.push(SinkConfig::mqtt("mqtt1", target));
        }
        Ok(sinks)
    }

    /// The hub config these flags describe.
    ///
    /// # Errors
    /// [`Error::Config`] for a value out of range.
    pub fn config(&self) -> Result<Config> {
        let config = Config {
            db_path: self.db.db.clone(),
            bind: self.bind,
            heartbeat_interval: Duration::from_secs(self.heartbeat_secs),
            max_clients: usize::try_from(self.max_clients).unwrap_or(usize::MAX),
            max_conns: usize::try_from(self.max_conns).unwrap_or(usize::MAX),
            max_conns_per_addr: usize::try_from(self.max_conns_per_addr).unwrap_or(usize::MAX),
            max_streams_per_addr: usize::try_from(self.max_streams_per_addr).unwrap_or(usize::MAX),
            head_timeout: Duration::from_secs(self.head_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            token: self.token.clone(),
            cors_origins: self.cors_origins.clone(),
            read_token: self.read_token.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            synchronous: self.db.synchronous,
            busy_timeout: Duration::from_millis(self.busy_timeout_ms),
            stale_floor: Duration::from_secs(self.stale_floor_secs),
            retention_age: (self.retain_days > 0)
                .then(|| Duration::from_secs(self.retain_days.saturating_mul(86_400))),
            retention_max_rows: (self.retain_rows > 0).then_some(self.retain_rows),
            retention_max_db_bytes: (self.retain_mib > 0)
                .then(|| self.retain_mib.saturating_mul(1024 * 1024)),
            max_cameras: usize::try_from(self.max_cameras).unwrap_or(usize::MAX),
            max_event_types: usize::try_from(self.max_event_types).unwrap_or(usize::MAX),
            sinks: self
                .file_sinks
                .iter()
                .cloned()
                .chain(self.sinks()?)
                .collect(),
            public_url: self.public_url.clone(),
            mqtt_subscribe: self.mqtt_subscribe()?,
            mdns: !self.no_mdns,
            host_name: self.mqtt_host_name.clone(),
            images_dir: self.images_dir.clone(),
            ..Config::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// `emit` flags.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// Database flags.
    #[command(flatten)]
    pub db: DbArgs,
    /// Event type: letters, digits and _ . : - (at most 64).
    #[arg(long = "type")]
    pub event_type: String,
    /// Payload: a JSON object.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// low, normal, high or critical.
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// Producer name.
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// Create the database if it is missing (without it, a missing file is an error: a
    /// mistyped --db must not store the event where no hub reads it).
    #[arg(long)]
    pub create: bool,
}

/// Runs a subcommand other than `serve`, printing its result to stdout.
///
/// # Errors
/// Whatever the subcommand hit; `main` prints it and exits 1.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(_) => Err(Error::Config {
            field: "command",
            reason: "serve is run by main".into(),
        }),
        Command::Emit(args) => {
            let data: Value = serde_json::from_str(&args.data).map_err(|e| Error::Invalid {
                field: "data",
                reason: format!("not JSON: {e}"),
            })?;
            let event = NewEvent::new(args.event_type, data)
                .with_priority(args.priority.parse::<Priority>()?)
                .with_source(args.source);
            let emitter = if args.create {
                Emitter::open_with(&args.db.db, args.db.synchronous)?
            } else {
                Emitter::open_existing(&args.db.db, args.db.synchronous)?
            };
            let id = emitter.emit(event)?;
            println!("{id}");
            Ok(())
        }
        Command::Stats(db) => {
            let stats = admin::stats(&db.db)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&stats).unwrap_or_default()
            );
            Ok(())
        }
        Command::Sinks(args) => {
            let cursors = admin::sinks(&args.db)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&cursors).unwrap_or_default()
            );
            Ok(())
        }
        Command::Cleanup(args) => {
            let deleted = admin::cleanup(&args.db.db, args.db.synchronous, args.older_than)?;
            println!("deleted {deleted} events");
            Ok(())
        }
        Command::Check(args) => admin::check(&args.db, |report| {
            println!(
                "{}",
                serde_json::to_string_pretty(report).unwrap_or_default()
            );
        }),
        Command::Backup(args) => {
            let pages = admin::backup(&args.db, &args.to)?;
            println!("backed up {pages} pages to {}", args.to.display());
            Ok(())
        }
        Command::Discover(args) => {
            let hubs = timelapse_events::discover(Duration::from_secs(args.secs))?;
            if args.json {
                let all: Vec<Value> = hubs
                    .iter()
                    .map(timelapse_events::FoundHub::to_json)
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else {
                for hub in &hubs {
                    let addrs: Vec<String> =
                        hub.addresses.iter().map(ToString::to_string).collect();
                    println!(
                        "{} {} port {} version {}",
                        hub.host,
                        addrs.join(","),
                        hub.port,
                        hub.version
                    );
                }
            }
            if hubs.is_empty() {
                eprintln!("no hub found");
            }
            Ok(())
        }
    }
}

/// What to do about `e`, in terms of this binary's flags, when that is clear: printed by
/// `main` after the error.
pub fn hint(e: &Error) -> Option<&'static str> {
    match e {
        Error::DbFile { problem, .. } => Some(match problem {
            DbFileProblem::InUse { .. } => {
                "run one hub per database: stop the other one (`systemctl stop \
                 timelapse-events` for the service), or give this one its own --db"
            }
            DbFileProblem::Deleted | DbFileProblem::Replaced => {
                "the hub exits 1 so that its supervisor (systemd) starts it again on the file \
                 now at that path"
            }
            DbFileProblem::PermissionDenied
            | DbFileProblem::ReadOnly
            | DbFileProblem::ReadOnlyDir
            | DbFileProblem::ReadOnlyWal => {
                "run as the hub's user (or one in its group), or fix the owner and mode of \
                 the database, its -wal and -shm files and its directory"
            }
            _ => {
                "give the hub's database with --db PATH or TIMELAPSE_EVENTS_DB (relative paths \
                 start in the current directory); only `serve` and `emit --create` create one"
            }
        }),
        Error::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => Some(
            "another process listens there (a hub already running?): stop it, or choose \
             another address with --bind or TIMELAPSE_EVENTS_BIND",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(file: &str, argv: &[&str]) -> Result<Vec<String>> {
        let file = ConfigFile::parse(std::path::Path::new("c.toml"), file)?;
        let mut all = vec!["timelapse-events", "serve"];
        all.extend(argv);
        let matches = Cli::command().try_get_matches_from(all).map_err(usage)?;
        let extra = merge_args(&file, &matches)?;
        Ok(extra
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn the_file_fills_in_only_the_flags_the_command_line_left_unset() -> Result<()> {
        let file = "bind = \"0.0.0.0:9\"\nheartbeat-secs = 2\nallowed_host = [\"a\", \"b\"]\n";
        assert_eq!(
            merged(file, &[])?,
            [
                "--bind=0.0.0.0:9",
                "--heartbeat-secs=2",
                "--allowed-host=a",
                "--allowed-host=b"
            ]
        );
        assert_eq!(
            merged(file, &["--heartbeat-secs", "7", "--allowed-host", "c"])?,
            ["--bind=0.0.0.0:9"]
        );
        Ok(())
    }

    #[test]
    fn the_file_is_refused_at_the_line_of_an_unknown_key_a_list_or_a_bad_value() {
        for (file, line, key) in [
            ("\nbind_addr = \"x\"\n", 2, "bind_addr"),
            ("config = \"other.toml\"\n", 1, "config"),
            ("bind = [\"127.0.0.1:1\"]\n", 1, "bind"),
            ("retain_days = -1\n", 1, "retain_days"),
        ] {
            match merged(file, &[]) {
                Err(Error::ConfigFile {
                    line: l, key: k, ..
                }) => {
                    assert_eq!((l, k.as_str()), (line, key), "{file:?}");
                }
                other => panic!("{file:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn durations_parse_with_units() {
        for (s, secs) in [
            ("30", 30),
            ("30s", 30),
            ("90m", 5400),
            ("24h", 86_400),
            ("7d", 604_800),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for bad in ["", "h", "1y", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_parse_as_name_and_value_and_errors_hide_the_value() {
        assert_eq!(
            parse_header("Authorization:  Bearer s3cret ").ok(),
            Some(("Authorization".into(), "Bearer s3cret".into()))
        );
        assert_eq!(
            parse_header("X-A: b:c").ok(),
            Some(("X-A".into(), "b:c".into()))
        );
        for bad in ["no colon", ": v", "Bad Name: v", "X-Empty:", "X: a\u{7f}"] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
        let e = parse_header("X-Token: s3cret\u{1}").expect_err("control char");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn webhook_and_ntfy_flags_make_named_sinks_with_their_filters() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io { op: "tmp", source })?;
        let file = dir.path().join("headers");
        std::fs::write(&file, "# secrets\n\nAuthorization: Bearer from-file\n").map_err(
            |source| Error::Io {
                op: "write",
                source,
            },
        )?;
        let cli = Cli::try_parse_from([
            "timelapse-events",
            "serve",
            "--webhook",
            "http://a/x",
            "--webhook",
            "http://b/y",
            "--webhook-header",
            "X-One: 1",
            "--webhook-header-file",
            file.to_str().unwrap_or(""),
            "--webhook-types",
            "camera_stale,image_captured",
            "--webhook-min-priority",
            "high",
            "--ntfy",
            "http://ntfy.local/camera-alerts",
        ])
        .map_err(|e| Error::Config {
            field: "cli",
            reason: e.to_string(),
        })?;
        let Command::Serve(args) = cli.command else {
            return Err(Error::Config {
                field: "cli",
                reason: "not serve".into(),
            });
        };
        let sinks = args.config()?.sinks;
        let names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["hook1", "hook2", "ntfy1"]);
        let want_headers = vec![
            ("X-One".to_owned(), "1".to_owned()),
            ("Authorization".to_owned(), "Bearer from-file".to_owned()),
        ];
        assert_eq!(
            sinks[1].target,
            timelapse_events::SinkTarget::Webhook {
                url: "http://b/y".into(),
                headers: want_headers
            }
        );
        assert_eq!(sinks[0].min_priority, Priority::High);
        assert_eq!(
            sinks[0].types.as_deref(),
            Some(&["camera_stale".to_owned(), "image_captured".to_owned()][..])
        );
        assert_eq!(
            sinks[2].target,
            timelapse_events::SinkTarget::Ntfy {
                server: "http://ntfy.local/".into(),
                topic: "camera-alerts".into()
            }
        );
        assert_eq!(
            sinks[2].min_priority,
            Priority::Low,
            "webhook filters are the webhooks' only"
        );
        Ok(())
    }

    #[test]
    fn no_mdns_is_a_flag_with_or_without_a_value_and_a_config_file_key() -> Result<()> {
        let mdns = |argv: &[&str]| -> Result<bool> {
            let mut all = vec!["timelapse-events", "serve"];
            all.extend(argv);
            let cli = Cli::try_parse_from(all).map_err(usage)?;
            let Command::Serve(args) = cli.command else {
                return Err(Error::Config {
                    field: "cli",
                    reason: "not serve".into(),
                });
            };
            Ok(args.config()?.mdns)
        };
        assert!(mdns(&[])?, "advertised by default");
        assert!(!mdns(&["--no-mdns"])?);
        assert!(!mdns(&["--no-mdns=true", "--bind", "0.0.0.0:8080"])?);
        assert!(mdns(&["--no-mdns=false"])?);
        let from_file = merged("no_mdns = true\n", &[])?;
        assert_eq!(from_file, ["--no-mdns=true"]);
        assert!(!mdns(
            &from_file.iter().map(String::as_str).collect::<Vec<_>>()
        )?);
        Ok(())
    }

    #[test]
    fn every_serve_flag_has_an_env_var() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").expect("serve exists");
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "--{id} has no environment variable"
            );
        }
    }
}
