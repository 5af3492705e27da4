//! [`Ctx`]: the handles every request handler may use.

use std::sync::Arc;

use crate::broadcast::Broadcast;
use crate::config::Config;
use crate::emitter::Emitter;
use crate::metrics::Metrics;
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
    pub(crate) cache: Arc<StateCache>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The stream threads' group, sized by `--max-clients`.
pub(crate) fn streams(config: &Config) -> Arc<Group> {
    Group::new("stream", config.max_clients)
}
