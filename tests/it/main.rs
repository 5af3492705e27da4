//! One integration-test binary: real SQLite files in temp dirs, real TCP to hubs on
//! ephemeral loopback ports, real threads and real processes.

mod support;

mod browser;
mod caps;
mod cli;
mod config;
mod discovery;
mod door;
mod examples;
mod faults;
mod fleet;
mod history;
mod hostile;
mod identity;
mod images;
mod lan;
mod mqtt;
#[cfg(feature = "tls")]
mod mqtt_tls;
mod owner;
mod package;
mod perf;
mod pipeline;
mod production;
mod real_clients;
mod sinks;
mod state;
mod stream;
mod systemd;
