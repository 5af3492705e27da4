//! The WAL watcher thread (`tle-watch`): turns writes to the database's `-wal` file, by any
//! process, into a nudge for the poller, through Linux inotify (and the database file's
//! removal or renaming, so that the poller checks its identity at once). With it the poller needs no
//! fast polling: an idle hub wakes a few times a second instead of 200 (measured: the 5 ms
//! `data_version` poll alone was 1.9 % of a core), and rows from other processes are picked
//! up within a millisecond or two. Where inotify is unavailable (another OS, a network file
//! system, the limit on watches reached), the poller falls back to `Config::poll_interval`.
//!
//! The thread sleeps in `poll` until the file changes or its [`WatchStop`] is dropped: an
//! idle hub's watcher does not wake at all.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crossbeam_channel::Sender;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use rustix::event::{EventfdFlags, eventfd};

use crate::error::{Error, Result};

/// After a nudge, how long the watcher lets further file events gather before reading them.
const COALESCE: std::time::Duration = std::time::Duration::from_micros(500);

/// Room for 256 of the events a watch on one file reports (16 bytes each, no name); more
/// stay queued for the next read. Kept, not made per read: nix's `read_events` zeroes a
/// 4 KiB buffer and allocates a `Vec` on each call (measured: 3.2 % of the hub's
/// instructions in `memset` under fan-out).
const EVENT_BUF_BYTES: usize = 4096;

/// An inotify watch on the `-wal` file, made before the thread starts so the hub knows at
/// start-up whether it can rely on it.
pub(crate) struct WalWatch {
    inotify: Inotify,
    path: PathBuf,
    /// Readable once the [`WatchStop`] is dropped.
    stop: OwnedFd,
    buf: Vec<u8>,
}

/// Stops the watcher when dropped (it writes to the eventfd the watcher polls beside the
/// watch).
pub(crate) struct WatchStop {
    fd: OwnedFd,
}

impl Drop for WatchStop {
    fn drop(&mut self) {
        // An eventfd write of a non-zero count only fails if the counter would overflow,
        // which a single write cannot do; and the watcher then also ends when it next
        // wakes and finds the poller gone.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }
}

impl WalWatch {
    /// Watches `<db>-wal` for writes; the [`WatchStop`] ends [`WalWatch::run`].
    pub(crate) fn new(db_path: &Path) -> Result<(WalWatch, WatchStop)> {
        let mut path = db_path.as_os_str().to_owned();
        path.push("-wal");
        let path = PathBuf::from(path);
        let fail = |e: Errno| Error::Io {
            op: "watch the WAL file",
            source: std::io::Error::from(e),
        };
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(fail)?;
        inotify
            .add_watch(&path, AddWatchFlags::IN_MODIFY)
            .map_err(fail)?;
        // The database file itself, for being removed (its link count drops: IN_ATTRIB),
        // renamed or freed: the poller then checks its identity at once, not at its next
        // idle look.
        inotify
            .add_watch(
                db_path,
                AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_DELETE_SELF,
            )
            .map_err(fail)?;
        let stop_fail = |source: std::io::Error| Error::Io {
            op: "make the WAL watcher's stop signal",
            source,
        };
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| stop_fail(e.into()))?;
        let fd = stop.try_clone().map_err(stop_fail)?;
        let watch = WalWatch {
            inotify,
            path,
            stop,
            buf: vec![0; EVENT_BUF_BYTES],
        };
        Ok((watch, WatchStop { fd }))
    }

    /// Nudges `wake` after every burst of writes until the [`WatchStop`] is dropped (or the
    /// poller is gone).
    pub(crate) fn run(mut self, wake: &Sender<()>) -> Result<()> {
        log::debug!("watching {} for commits", self.path.display());
        loop {
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(io_error(e.into())),
            }
            if fds[1].any().unwrap_or(true) {
                return Ok(());
            }
            // Full means a wake-up is already pending; disconnected, the poller has ended.
            if let Err(crossbeam_channel::TrySendError::Disconnected(())) = wake.try_send(()) {
                return Ok(());
            }
            // A commit is several writes, each an event: let the rest of this commit (and
            // others close behind it) arrive, then read them all at once, so a burst costs
            // one wake-up here, not one per write. The first event may come before its
            // commit is visible (SQLite publishes a commit in shared memory after its last
            // write), so whatever arrived meanwhile earns a second nudge, after the wait.
            std::thread::sleep(COALESCE);
            // Only whether anything arrived matters: the poller looks at what changed.
            match rustix::io::read(self.inotify.as_fd(), &mut self.buf[..]) {
                Ok(n) if n > 0 => {
                    let _ = wake.try_send(());
                }
                Ok(_) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io_error(e.into())),
            }
        }
    }
}

fn io_error(source: std::io::Error) -> Error {
    Error::Io {
        op: "read WAL file events",
        source,
    }
}
