//! The departure watcher (`tle-departures`): one thread and one epoll set that learn, for
//! every connection a stream has taken over, when its client goes away, so that the stream
//! ends and frees its place at once, without waking now and then to ask.
//!
//! A taken-over connection is registered for `EPOLLRDHUP` (the client's FIN) and
//! `EPOLLHUP`/`EPOLLERR` (a reset), never `EPOLLIN`: bytes a client sends meanwhile do not
//! count as leaving, the same meaning as [`Conn::left`]. Registration is one-shot, so a
//! departure is reported once and a closed connection cannot spin the watcher. Each
//! registration has its own token (never reused), not the descriptor's number, and is
//! removed before the connection closes ([`Taken`]'s `Drop`): a descriptor number reused
//! by a later connection can never be taken for an old one.
//!
//! On a departure the watcher calls the stream's `wake` (the stream hangs up its broadcast
//! queue, see [`Client::on_leave`]); it knows nothing of streams or broadcasts itself.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{EventfdFlags, eventfd};

use super::{Client, Conn};
use crate::error::{Result, io};
use crate::thread::{Fatal, join_thread, spawn_critical};

/// The token of the watcher's own bell (registrations start above it).
const BELL: u64 = 0;
/// Departures taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// What a connection's client leaving calls: once, from the watcher's thread.
pub(crate) type Wake = Box<dyn FnOnce() + Send>;

/// The running watcher; [`Departures::stop`] ends its thread (dropping it does the same).
pub(crate) struct Departures {
    watch: Arc<Watch>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// The watcher's epoll set and who to wake, shared by the thread and every [`Taken`].
pub(crate) struct Watch {
    epoll: OwnedFd,
    /// An eventfd in the set under [`BELL`]: written by `stop`.
    bell: OwnedFd,
    stopping: AtomicBool,
    waiting: Mutex<Waiting>,
}

struct Waiting {
    next: u64,
    wakes: HashMap<u64, Wake>,
}

impl Departures {
    /// Makes the epoll set and starts `tle-departures`; `fatal` hears if it dies.
    ///
    /// # Errors
    /// The epoll set or its bell cannot be made, or the thread cannot start. The hub
    /// then runs without it: each stream asks every 500 ms whether its client left.
    pub(crate) fn start(fatal: Fatal) -> Result<Departures> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)
            .map_err(|e| io("make the departure watcher's epoll set")(e.into()))?;
        let bell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| io("make the departure watcher's bell")(e.into()))?;
        epoll::add(&epoll, &bell, EventData::new_u64(BELL), EventFlags::IN)
            .map_err(|e| io("add the departure watcher's bell")(e.into()))?;
        let watch = Arc::new(Watch {
            epoll,
            bell,
            stopping: AtomicBool::new(false),
            waiting: Mutex::new(Waiting {
                next: BELL + 1,
                wakes: HashMap::new(),
            }),
        });
        let shared = watch.clone();
        let thread = spawn_critical("departures", Some(fatal), move || shared.run())?;
        Ok(Departures {
            watch,
            thread: Some(thread),
        })
    }

    /// A handle for the server, which puts taken-over connections in the watch.
    pub(crate) fn watch(&self) -> Arc<Watch> {
        self.watch.clone()
    }

    /// Ends the thread. Connections still registered stay so (their streams end on their
    /// own); nobody is woken any more.
    ///
    /// # Errors
    /// The thread failed or panicked.
    pub(crate) fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.watch.stopping.store(true, Ordering::SeqCst);
        // A full eventfd counter would still wake the thread; the write cannot block.
        let _ = rustix::io::write(&self.watch.bell, &1u64.to_ne_bytes());
        join_thread("departures", thread)
    }
}

impl Drop for Departures {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            log::error!("{}", e.chain());
        }
    }
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Each change is one insert or remove: a poisoned map is still whole.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `fd` in the set; `wake` is called once when its client leaves (at once if
    /// it already has). Returns the registration's token.
    fn add(&self, fd: impl AsFd, wake: Wake) -> rustix::io::Result<u64> {
        let mut waiting = self.lock();
        let token = waiting.next;
        waiting.next += 1;
        let flags = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR | EventFlags::ONESHOT;
        epoll::add(&self.epoll, fd, EventData::new_u64(token), flags)?;
        waiting.wakes.insert(token, wake);
        Ok(token)
    }

    /// Takes `fd` (registered under `token`) out of the set, before it closes.
    fn remove(&self, fd: impl AsFd, token: u64) {
        // Fails only if it was never added; a wake already taken has nothing left to call.
        let _ = epoll::delete(&self.epoll, fd);
        let wake = self.lock().wakes.remove(&token);
        drop(wake);
    }

    fn run(&self) -> Result<()> {
        let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io("wait for departures")(e.into())),
            }
            for token in events.iter().map(|e| e.data.u64()) {
                if token == BELL {
                    let _ = rustix::io::read(&self.bell, &mut [0u8; 8]);
                    continue;
                }
                // Gone already: its stream ended and removed it after the kernel spoke.
                let wake = self.lock().wakes.remove(&token);
                if let Some(wake) = wake {
                    wake();
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }
}

/// A connection taken over by a handler: a [`Conn`] that may be in the watch, and leaves
/// it before it closes.
pub(crate) struct Taken {
    conn: Conn,
    watch: Option<Arc<Watch>>,
    token: Option<u64>,
}

impl Taken {
    pub(crate) fn new(conn: Conn, watch: Option<Arc<Watch>>) -> Taken {
        Taken {
            conn,
            watch,
            token: None,
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        // Runs before `conn` (and its socket) drops.
        if let (Some(watch), Some(token)) = (&self.watch, self.token.take()) {
            watch.remove(self.conn.stream(), token);
        }
    }
}

impl Write for Taken {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.conn.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.conn.flush()
    }
}

impl Client for Taken {
    fn left(&self) -> bool {
        self.conn.left()
    }

    fn on_leave(&mut self, wake: Wake) -> bool {
        let Some(watch) = &self.watch else {
            return false;
        };
        match watch.add(self.conn.stream(), wake) {
            Ok(token) => {
                self.token = Some(token);
                true
            }
            Err(e) => {
                log::warn!(
                    "cannot watch {} for leaving ({e}); its stream asks now and then",
                    self.conn.peer()
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("bound address");
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn a_departure_wakes_once_and_bytes_or_a_removed_socket_never_do() {
        let (fatal, failures) = Fatal::channel();
        let departures = Departures::start(fatal).expect("an epoll set");
        let watch = departures.watch();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = |name: &'static str| -> Wake {
            let tx = tx.clone();
            Box::new(move || {
                let _ = tx.send(name);
            })
        };

        let (mut talker, talker_end) = pair(&listener);
        watch.add(&talker_end, wake("talker")).expect("add");
        let (removed, removed_end) = pair(&listener);
        let token = watch.add(&removed_end, wake("removed")).expect("add");
        // Pipelined bytes are not leaving.
        std::io::Write::write_all(&mut talker, b"GET / HTTP/1.1\r\n\r\n").expect("send");
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        // Taken out before it closes: its departure is nobody's.
        watch.remove(&removed_end, token);
        drop(removed);
        drop(removed_end);
        drop(talker);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("talker"));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "once");

        departures.stop().expect("stops cleanly");
        assert!(failures.try_recv().is_err());
        drop(talker_end);
    }
}
