//! systemd's notify protocol (sd_notify(3)) without libsystemd: each message is one
//! datagram to the socket named by `$NOTIFY_SOCKET`. [`Notifier`] sends `READY=1`,
//! `STOPPING=1` and `WATCHDOG=1`; [`watchdog_interval`] reads `$WATCHDOG_USEC`; [`ping`]
//! is the loop of the `tle-notify` thread, which `Hub` owns and stops.
//!
//! A message that cannot be sent is logged, never fatal: the hub runs the same without
//! systemd, and a watchdog that hears nothing restarts it anyway.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::{Error, Result, io};

/// A socket to systemd's notify socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for; `None` when it is unset or empty (not run
    /// by systemd as `Type=notify`).
    ///
    /// # Errors
    /// The variable names no usable address, or no socket can be made.
    pub(crate) fn from_env() -> Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => Notifier::new(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for `address`: a path, or `@name` for a socket in the abstract namespace
    /// (as sd_notify(3) reads it).
    ///
    /// # Errors
    /// The address is too long or not a path, or no socket can be made.
    pub(crate) fn new(address: &OsStr) -> Result<Notifier> {
        let bytes = address.as_bytes();
        let addr = match bytes.split_first() {
            Some((b'@', name)) => SocketAddr::from_abstract_name(name),
            Some((b'/', _)) => SocketAddr::from_pathname(address),
            _ => {
                return Err(Error::Config {
                    field: "NOTIFY_SOCKET",
                    reason: format!(
                        "`{}` is neither an absolute path nor an @abstract name",
                        address.to_string_lossy()
                    ),
                });
            }
        }
        .map_err(io("read $NOTIFY_SOCKET"))?;
        let socket = UnixDatagram::unbound().map_err(io("open a socket to systemd"))?;
        Ok(Notifier { socket, addr })
    }

    /// Sends `state`, e.g. `READY=1` (newline-separated assignments, sd_notify(3)).
    ///
    /// # Errors
    /// The datagram could not be sent (systemd gone, socket full).
    pub(crate) fn send(&self, state: &str) -> Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(drop)
            .map_err(io("notify systemd"))
    }
}

/// The watchdog timeout systemd set for this process (`WatchdogSec=`), if any:
/// `$WATCHDOG_USEC`, unless `$WATCHDOG_PID` names another process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The `tle-notify` thread: every `every`, sends `WATCHDOG=1` if `healthy` says so, until
/// `stop` disconnects. While `healthy` names a problem no ping is sent, so systemd restarts
/// the hub once the watchdog timeout passes; the problem is logged once, and its end too.
pub(crate) fn ping(
    notifier: &Notifier,
    every: Duration,
    stop: &Receiver<()>,
    healthy: impl Fn() -> std::result::Result<(), String>,
) {
    let mut withheld = false;
    let mut failing = false;
    loop {
        match healthy() {
            Ok(()) => {
                if withheld {
                    withheld = false;
                    log::warn!("healthy again: systemd watchdog pings resumed");
                }
                match notifier.send("WATCHDOG=1") {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        log::warn!("{}", e.chain());
                    }
                    Err(e) => log::debug!("{}", e.chain()),
                }
            }
            Err(why) => {
                if !withheld {
                    withheld = true;
                    log::error!(
                        "{why}: withholding systemd watchdog pings (systemd restarts the hub if this lasts)"
                    );
                }
            }
        }
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_interval_is_for_this_process_only() {
        let s = Duration::from_secs;
        for (usec, pid, want) in [
            (Some("2000000"), None, Some(s(2))),
            (Some("2000000"), Some("42"), Some(s(2))),
            (Some("2000000"), Some("43"), None),
            (Some("0"), None, None),
            (Some("soon"), None, None),
            (None, Some("42"), None),
        ] {
            assert_eq!(parse_watchdog(usec, pid, 42), want, "{usec:?} {pid:?}");
        }
    }

    #[test]
    fn a_notifier_reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify");
        let by_path = UnixDatagram::bind(&path).expect("bind a path");
        let name = format!("tle-notify-test-{}", std::process::id());
        let abstract_addr =
            SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let by_name = UnixDatagram::bind_addr(&abstract_addr).expect("bind an abstract name");
        for (address, socket) in [
            (path.into_os_string(), &by_path),
            (format!("@{name}").into(), &by_name),
        ] {
            Notifier::new(&address)
                .expect("notifier")
                .send("READY=1")
                .expect("sent");
            let mut buf = [0u8; 64];
            let n = socket.recv(&mut buf).expect("received");
            assert_eq!(&buf[..n], b"READY=1", "{address:?}");
        }
        assert!(Notifier::new(OsStr::new("relative/path")).is_err());
    }
}
