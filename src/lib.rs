//! timelapse-events: a single-binary event hub for a timelapse camera host.
//!
//! # Data flow
//!
//! ```text
//!  capture threads ── Emitter ───────────────────┐ (queued, in arrival order)
//!  HTTP POST /api/events ── Emitter ─────────────┤
//!                                                ▼
//!  other processes ── INSERT ──► SQLite file ◄── poller thread: in one IMMEDIATE
//!                                (WAL), the      transaction, store what the Emitters
//!                                durable log     queued, take pending rows (priority
//!          inotify on -wal / data_version ──►    first), assign seq, mark dispatched
//!                                                │  Arc<Frame>, encoded once
//!                                                ▼
//!                                   Broadcast: one bounded queue per subscriber
//!                                                │
//!                                                ▼
//!                       stream threads ── text/event-stream ──► browsers, curl, scripts
//! ```
//!
//! A client that reconnects with `Last-Event-ID` is caught up from SQLite and then handed to
//! its live queue with no gap and no duplicate.
//!
//! Outbound sinks ([`SinkConfig`]: webhooks, ntfy) read the same log from SQLite, each from a
//! cursor of its own that moves only after the far side acknowledged: at least once, in order.
//!
//! The public API is small: [`Hub`], [`Config`] (with [`SinkConfig`] and [`SinkTarget`]),
//! [`Emitter`], [`NewEvent`], [`Event`], [`Priority`], [`EventId`], [`Cursor`] and [`Error`],
//! plus [`admin`] for maintenance of a database file without a hub (what the binary's
//! `stats`, `sinks` ([`SinkCursor`]), `cleanup`, `check` and `backup` run), and [`discover`]
//! ([`FoundHub`]), which finds the hubs on the LAN by mDNS. ARCHITECTURE.md gives the modules floor by floor and the threads.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
mod backoff;
mod bell;
mod broadcast;
mod checkpoint;
mod config;
mod config_file;
mod emitter;
mod error;
mod event;
mod fleet;
mod history;
mod host;
mod http;
mod hub;
mod limits;
mod mdns;
mod metrics;
mod mqtt;
mod notify;
mod poller;
mod retention;
mod sink;
mod sse;
mod state;
mod status;
mod store;
mod thread;
mod watch;
mod watchdog;

pub use config::{
    Config, DEFAULT_DB_PATH, DEFAULT_MAX_CAMERAS, DEFAULT_MAX_EVENT_TYPES, MqttTarget, SinkConfig,
    SinkTarget, Synchronous, parse_header,
};
pub use config_file::{ConfigFile, FileSetting};
pub use emitter::Emitter;
pub use error::{DbFileProblem, Error, Result};
pub use event::{Cursor, Event, EventId, NewEvent, Priority};
pub use hub::Hub;
pub use mdns::{FoundHub, SERVICE as MDNS_SERVICE, discover};
pub use store::SCHEMA_VERSION;
pub use store::history::HISTORY_READ_SQL;
pub use store::sinks::SinkCursor;
