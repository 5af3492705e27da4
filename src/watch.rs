//! The WAL watcher thread (`tle-watch`): turns writes to the database's `-wal` file, by any
//! process, into a nudge for the poller, through Linux inotify. With it the poller needs no
//! fast polling: an idle hub wakes a few times a second instead of 200 (measured: the 5 ms
//! `data_version` poll alone was 1.9 % of a core), and rows from other processes are picked
//! up within a millisecond or two. Where inotify is unavailable (another OS, a network file
//! system, the limit on watches reached), the poller falls back to `Config::poll_interval`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::error::{Error, Result};

/// After a nudge, how long the watcher lets further file events gather before reading them.
const COALESCE: std::time::Duration = std::time::Duration::from_micros(500);

/// How long one wait for file events lasts before the thread looks at its stop channel.
const STOP_CHECK_MS: u16 = 250;

/// An inotify watch on the `-wal` file, made before the thread starts so the hub knows at
/// start-up whether it can rely on it.
pub(crate) struct WalWatch {
    inotify: Inotify,
    path: PathBuf,
}

impl WalWatch {
    /// Watches `<db>-wal` for writes.
    pub(crate) fn new(db_path: &Path) -> Result<WalWatch> {
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
        Ok(WalWatch { inotify, path })
    }

    /// Nudges `wake` after every burst of writes until `stop` is dropped.
    pub(crate) fn run(self, wake: &Sender<()>, stop: &Receiver<()>) -> Result<()> {
        log::debug!("watching {} for commits", self.path.display());
        loop {
            if matches!(stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return Ok(());
            }
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(STOP_CHECK_MS)) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => {
                    // Full means a wake-up is already pending.
                    let _ = wake.try_send(());
                    // A commit is several writes, each an event: let the rest of this
                    // commit (and others close behind it) arrive, then read them all at
                    // once, so a burst costs one wake-up here, not one per write.
                    // The first event may come before its commit is visible (SQLite
                    // publishes a commit in shared memory after its last write), so
                    // whatever arrived meanwhile earns a second nudge, after the wait.
                    std::thread::sleep(COALESCE);
                    match self.inotify.read_events() {
                        Ok(events) if !events.is_empty() => {
                            let _ = wake.try_send(());
                        }
                        Ok(_) | Err(Errno::EAGAIN) => {}
                        Err(e) => return Err(io_error(e)),
                    }
                }
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

fn io_error(e: Errno) -> Error {
    Error::Io {
        op: "read WAL file events",
        source: std::io::Error::from(e),
    }
}
