//! Command-line interface: subcommands and flags, each flag also read from an environment
//! variable (`TIMELAPSE_EVENTS_*`). `serve` is run by `main.rs`, which owns signals.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use timelapse_events::{
    Config, DEFAULT_DB_PATH, DbFileProblem, Emitter, Error, NewEvent, Priority, Result,
    Synchronous, admin,
};

/// timelapse-events: SQLite-backed Server-Sent Events hub for timelapse cameras.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub: HTTP API, event streams and dashboard.
    Serve(ServeArgs),
    /// Store one event in an existing database (the hub dispatches it).
    Emit(EmitArgs),
    /// Print event statistics of a database as JSON (read-only).
    Stats(DbArgs),
    /// Delete old dispatched events now (never pending ones).
    Cleanup(CleanupArgs),
    /// Check a database: integrity, schema version, counts, WAL size. Exits 1 on a problem.
    /// Read-only: never changes the file.
    Check(CheckArgs),
    /// Copy a (possibly running) database to a file with SQLite's online backup API.
    Backup(BackupArgs),
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
}

impl ServeArgs {
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
