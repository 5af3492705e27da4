//! The HTTP side: [`server`] is the one wall between the network and our handlers (listener,
//! door, workers, limits); [`routes`] turns a [`request::Request`] into an answer; [`stream`] runs
//! each event stream on a thread of its own; [`reply`] holds responses as values and the
//! one mapping from errors to statuses; [`dashboard`] serves the compiled-in page; [`ctx`]
//! holds what handlers share; [`guard`] holds the pure checks against other sites' pages
//! (`Host`, `Origin`, tokens); [`images`] serves a camera's latest image from
//! `--images-dir`, only files inside it.

mod ctx;
mod dashboard;
mod guard;
mod images;
mod peers;
mod reply;
mod request;
mod routes;
mod server;
mod stream;

use std::sync::Arc;

use crate::error::Result;
use crate::thread::Fatal;

pub(crate) use ctx::{Ctx, stream_peers, streams};
pub(crate) use server::{Departures, Listener, Server};

/// Starts serving `ctx`'s routes on `listener` (bound by [`Listener::bind`]); streams learn
/// from `departures` when their client left (without it, they ask every 500 ms).
///
/// # Errors
/// A thread cannot start.
pub(crate) fn start(
    ctx: Arc<Ctx>,
    listener: Listener,
    fatal: Fatal,
    departures: Option<&Departures>,
) -> Result<Server> {
    let config = ctx.config.clone();
    // Before the first request can arrive: the Host check needs the bound port.
    let _ = ctx.bound.set(listener.addr()?); // Err: already set, to the same listener
    Server::start(
        &config,
        listener,
        Box::new(move |rq| routes::handle(rq, &ctx)),
        fatal,
        departures.map(Departures::watch),
    )
}
