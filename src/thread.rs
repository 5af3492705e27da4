//! The bottom floor for threads: named spawning, the `Fatal` channel through which a thread
//! the hub cannot run without reports its death, joining, and [`Group`], a bounded set of
//! short-lived threads (event streams, slow request bodies) that shutdown waits for.
//! Imports nothing of ours but `error`, so every floor above may use it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::error::{Error, Result};

/// Spawns a named thread `tle-<name>` (visible in `top -H` and panics).
pub(crate) fn spawn_named<F>(
    name: &str,
    stack_bytes: Option<usize>,
    f: F,
) -> Result<JoinHandle<Result<()>>>
where
    F: FnOnce() -> Result<()> + Send + 'static,
{
    let full = format!("tle-{name}");
    let mut b = std::thread::Builder::new().name(full.clone());
    if let Some(bytes) = stack_bytes {
        b = b.stack_size(bytes);
    }
    b.spawn(f)
        .map_err(|source| Error::Spawn { name: full, source })
}

/// How much nicer than the rest of the process [`lower_priority`] makes a thread.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by [`BACKGROUND_NICE`], for work that may wait
/// (the sinks), so that it yields a busy core to the streams' dispatch. On Linux the nice
/// value belongs to the thread: `setpriority(PRIO_PROCESS, 0, …)` changes only the caller.
pub(crate) fn lower_priority(name: &str) {
    let now = rustix::process::getpriority_process(None).unwrap_or(0);
    let nice = (now + BACKGROUND_NICE).min(19);
    match rustix::process::setpriority_process(None, nice) {
        Ok(()) => log::debug!("{name} runs at nice {nice}"),
        Err(e) => log::debug!("{name} keeps nice {now}: {e}"),
    }
}

/// Where long-lived threads report that they died, so `serve` can exit non-zero (and systemd
/// restart it) instead of running on without them.
#[derive(Clone)]
pub(crate) struct Fatal(Sender<String>);

impl Fatal {
    /// A reporter, and the channel `Hub::failures` hands out.
    pub(crate) fn channel() -> (Fatal, crossbeam_channel::Receiver<String>) {
        let (tx, rx) = crossbeam_channel::bounded(16);
        (Fatal(tx), rx)
    }

    pub(crate) fn report(&self, what: String) {
        log::error!("fatal: {what}");
        // Full means earlier reports are waiting; one is enough to stop the hub.
        let _ = self.0.try_send(what);
    }
}

/// [`spawn_named`] for a thread the hub cannot run without: an error it returns or a panic
/// is reported to `fatal` as well as to its joiner.
pub(crate) fn spawn_critical<F>(
    name: &str,
    fatal: Option<Fatal>,
    f: F,
) -> Result<JoinHandle<Result<()>>>
where
    F: FnOnce() -> Result<()> + Send + 'static,
{
    let label = format!("tle-{name}");
    spawn_named(name, None, move || {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if let Some(f) = &fatal {
                    f.report(format!("{label} ended: {}", e.chain()));
                }
                Err(e)
            }
            Err(panic) => {
                if let Some(f) = &fatal {
                    f.report(format!("{label} panicked: {}", panic_text(&*panic)));
                }
                std::panic::resume_unwind(panic)
            }
        }
    })
}

/// The message of a panic payload.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Joins a thread; a panic or an error it returned becomes an `Err`.
pub(crate) fn join_thread(name: &str, handle: JoinHandle<Result<()>>) -> Result<()> {
    match handle.join() {
        Ok(r) => r,
        Err(panic) => Err(Error::Thread {
            name: name.to_owned(),
            reason: panic_text(&*panic),
        }),
    }
}

/// At most `max` of one kind at once (event streams, `--max-clients`): a place is reserved
/// before anything starts, so a refusal can be answered first, and given back when it
/// drops. Threads started for them ([`Group::spawn`]: a stream's catch-up) are kept until
/// joined by [`Group::wait`].
pub(crate) struct Group {
    name: &'static str,
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
    handles: Mutex<Vec<JoinHandle<Result<()>>>>,
}

/// A reserved place in a [`Group`]; given back on drop.
pub(crate) struct Reserved(Arc<Group>);

impl Drop for Reserved {
    fn drop(&mut self) {
        *self.0.count() -= 1;
        self.0.freed.notify_all();
    }
}

impl Group {
    pub(crate) fn new(name: &'static str, max: usize) -> Arc<Group> {
        Arc::new(Group {
            name,
            max,
            used: Mutex::new(0),
            freed: Condvar::new(),
            handles: Mutex::new(Vec::new()),
        })
    }

    fn count(&self) -> MutexGuard<'_, usize> {
        // A counter: poisoning cannot leave it half-written.
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `tle-<name>`, kept until [`Group::wait`] joins it. What it runs for should
    /// hold a place ([`Group::try_reserve`]) and give it back when done.
    ///
    /// # Errors
    /// The thread cannot start.
    pub(crate) fn spawn<F>(&self, name: &str, stack_bytes: usize, f: F) -> Result<()>
    where
        F: FnOnce() -> Result<()> + Send + 'static,
    {
        let handle = spawn_named(name, Some(stack_bytes), f)?;
        self.keep(handle);
        Ok(())
    }

    /// A place, unless `max` are held.
    pub(crate) fn try_reserve(self: &Arc<Self>) -> Option<Reserved> {
        let mut used = self.count();
        if *used >= self.max {
            return None;
        }
        *used += 1;
        Some(Reserved(self.clone()))
    }

    /// Places held right now.
    pub(crate) fn active(&self) -> usize {
        *self.count()
    }

    fn keep(&self, handle: JoinHandle<Result<()>>) {
        // A Vec of handles: poisoning cannot leave it half-written.
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    /// Waits (until `deadline`) for every place to be free, joins the threads that ended,
    /// and returns how many places were still held (left to end on their own).
    pub(crate) fn wait(&self, deadline: Instant) -> usize {
        let mut used = self.count();
        while *used > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let held = *used;
        drop(used);
        let handles =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(PoisonError::into_inner));
        for h in handles {
            // A thread gives its place back (or hands it on) as its last act, so once every
            // place is free the threads are returning: join them, even if one is not marked
            // finished yet. Others are left to end on their own.
            if (held == 0 || h.is_finished())
                && let Err(e) = join_thread(self.name, h)
            {
                log::warn!("{}", e.chain());
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_group_refuses_past_its_max_and_waits_for_its_threads() {
        let group = Group::new("test-group", 2);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
        for _ in 0..2 {
            let go = go_rx.clone();
            let place = group.try_reserve().expect("a free place");
            group
                .spawn("test", 64 * 1024, move || {
                    let _place = place;
                    let _ = go.recv();
                    Ok(())
                })
                .expect("spawn");
        }
        assert!(group.try_reserve().is_none(), "a third place past max 2");
        assert_eq!(group.active(), 2);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(group.wait(soon), 2, "both still running");
        drop(go_tx);
        assert_eq!(group.wait(Instant::now() + Duration::from_secs(10)), 0);
        assert_eq!(group.active(), 0);
    }
}
