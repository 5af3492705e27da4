//! The HTTP side: [`server`] is the one wall around tiny_http (listener, workers, and its
//! workarounds); [`routes`] turns a [`request::Request`] into an answer; [`stream`] runs
//! each event stream on a thread of its own; [`reply`] holds responses as values and the
//! one mapping from errors to statuses; [`dashboard`] serves the compiled-in page; [`ctx`]
//! holds what handlers share.

mod ctx;
mod dashboard;
mod reply;
mod request;
mod routes;
mod server;
mod stream;

use std::sync::Arc;

use crate::error::Result;
use crate::thread::Fatal;

pub(crate) use ctx::{Ctx, streams};
pub(crate) use server::Server;

/// Binds and starts serving `ctx`'s routes.
///
/// # Errors
/// The address cannot be bound, or a thread cannot start.
pub(crate) fn start(ctx: Arc<Ctx>, fatal: Fatal) -> Result<Server> {
    let config = ctx.config.clone();
    Server::start(&config, Box::new(move |rq| routes::handle(rq, &ctx)), fatal)
}
