//! [`Ctx`]: the handles every request handler may use.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use super::peers::PeerSlots;
use crate::broadcast::Broadcast;
use crate::config::Config;
use crate::emitter::Emitter;
use crate::fleet::FleetStatus;
use crate::host::Machine;
use crate::metrics::Metrics;
use crate::sink::SinkStatus;
use crate::state::StateCache;
use crate::status::PollerStatus;
use crate::store::Store;
use crate::thread::Group;

/// Everything a request handler may use. Cheap to share: all handles.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) emitter: Emitter,
    pub(crate) broadcast: Arc<Broadcast>,
    pub(crate) status: Arc<PollerStatus>,
    /// The stream threads (`--max-clients` places); the hub waits for them at shutdown.
    pub(crate) streams: Arc<Group>,
    /// Streams per client address (`--max-streams-per-addr`).
    pub(crate) stream_peers: Arc<PeerSlots>,
    pub(crate) cache: Arc<StateCache>,
    pub(crate) metrics: Arc<Metrics>,
    /// The listener's address, set by [`super::start`] once the server runs (with port 0,
    /// only the socket knows the port a `Host` header must name).
    pub(crate) bound: OnceLock<SocketAddr>,
    /// This machine's names and addresses, for the `Host` check beyond loopback.
    pub(crate) machine: Machine,
    /// Each outbound sink's figures, in configured order.
    pub(crate) sinks: Arc<Vec<Arc<SinkStatus>>>,
    /// The fleet ingest's figures and the remote hosts it heard, with `--mqtt-subscribe`.
    pub(crate) fleet: Option<Arc<FleetStatus>>,
}

/// The stream threads' group, sized by `--max-clients`.
pub(crate) fn streams(config: &Config) -> Arc<Group> {
    Group::new("stream", config.max_clients)
}

/// The per-address stream places, sized by `--max-streams-per-addr` (the total is the
/// streams' [`Group`]'s to keep).
pub(crate) fn stream_peers(config: &Config) -> Arc<PeerSlots> {
    PeerSlots::new(config.max_streams_per_addr, usize::MAX)
}
