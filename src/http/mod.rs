//! The HTTP side: [`server`] is the one wall between the network and our handlers (listener,
//! door, workers, limits, the stream writer); [`routes`] turns a [`request::Request`] into an
//! answer; [`stream`] starts each event stream and is the source the writer follows; [`reply`] holds responses as values and the
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
pub(crate) use server::{Listener, Server, StreamWriter, WriterHandle};

/// Starts serving `ctx`'s routes on `listener` (bound by [`Listener::bind`]); following
/// streams are written by `writer`.
///
/// # Errors
/// A thread cannot start.
pub(crate) fn start(
    ctx: Arc<Ctx>,
    listener: Listener,
    fatal: Fatal,
    writer: &WriterHandle,
) -> Result<Server> {
    let config = ctx.config.clone();
    // Before the first request can arrive: the Host check needs the bound port.
    let _ = ctx.bound.set(listener.addr()?); // Err: already set, to the same listener
    Server::start(
        &config,
        listener,
        Box::new(move |rq| routes::handle(rq, &ctx)),
        fatal,
        writer.0.clone(),
    )
}
