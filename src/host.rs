//! [`Machine`]: this machine's own names and addresses, the ones a browser on the LAN may
//! put in `Host` when it talks to a hub listening beyond loopback: the hostname (from
//! `gethostname`), `<hostname>.local` (mDNS, as Raspberry Pi OS announces it) and every
//! interface address (`getifaddrs`). Read when the hub starts, and again when a request
//! names something not in the list, at most once per [`REREAD_EVERY`]: a Pi often gets
//! its DHCP address after the hub has started. Used by the HTTP workers.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The shortest time between two reads of the names (each is a `getifaddrs`, a netlink
/// round trip): a client sending unknown names cannot make every request pay for one.
pub(crate) const REREAD_EVERY: Duration = Duration::from_secs(10);

/// The machine's short name (its hostname's first label), for MQTT topics and ids when
/// none is set; `localhost` when it has none.
pub(crate) fn machine_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .and_then(|h| h.split('.').next().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The machine's names and addresses, as last read.
#[derive(Debug)]
pub(crate) struct Names {
    /// Lowercase, without a trailing dot: the hostname, its first label when it is a
    /// dotted name, and `<label>.local`.
    pub(crate) names: Vec<String>,
    /// Every address of every interface (loopback included).
    pub(crate) addrs: Vec<IpAddr>,
    read_at: Instant,
}

/// This machine's names, shared by the HTTP workers. The lock guards an `Arc` swap only;
/// the reading is done outside it.
#[derive(Debug)]
pub(crate) struct Machine {
    names: RwLock<Arc<Names>>,
}

impl Machine {
    /// Reads the names now.
    pub(crate) fn read() -> Machine {
        Machine {
            names: RwLock::new(Arc::new(read_names())),
        }
    }

    /// The names as last read.
    pub(crate) fn names(&self) -> Arc<Names> {
        // A poisoned lock still holds a complete list: the swap is one assignment.
        self.names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the names again unless the last read is under [`REREAD_EVERY`] old; `None`
    /// when it is (nothing new to look at).
    pub(crate) fn reread(&self) -> Option<Arc<Names>> {
        if self.names().read_at.elapsed() < REREAD_EVERY {
            return None;
        }
        let fresh = Arc::new(read_names());
        *self.names.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Some(fresh)
    }
}

fn read_names() -> Names {
    let hostname = match nix::unistd::gethostname() {
        Ok(h) => h.to_string_lossy().into_owned(),
        Err(e) => {
            log::warn!("cannot read this machine's hostname: {e}");
            String::new()
        }
    };
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(list) => {
            let mut addrs: Vec<IpAddr> = list
                .filter_map(|i| i.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            addrs
        }
        Err(e) => {
            log::warn!("cannot list this machine's addresses: {e}");
            Vec::new()
        }
    };
    let names = names_of(&hostname);
    log::debug!("this machine is called {names:?} at {addrs:?}");
    Names {
        names,
        addrs,
        read_at: Instant::now(),
    }
}

/// The names a hostname stands for: itself, its first label, and `<label>.local`.
fn names_of(hostname: &str) -> Vec<String> {
    let host = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host == "localhost" {
        return Vec::new();
    }
    let label = host.split('.').next().unwrap_or(&host).to_owned();
    let mut names = vec![host.clone(), label.clone(), format!("{label}.local")];
    names.dedup();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostname_stands_for_itself_its_label_and_its_mdns_name() {
        for (hostname, want) in [
            ("raspberrypi\n", vec!["raspberrypi", "raspberrypi.local"]),
            (
                "Cam-1.home.arpa.",
                vec!["cam-1", "cam-1.home.arpa", "cam-1.local"],
            ),
            ("pi.local", vec!["pi", "pi.local"]),
            ("", vec![]),
            ("localhost", vec![]),
        ] {
            assert_eq!(names_of(hostname), want, "{hostname:?}");
        }
    }

    #[test]
    fn the_machine_knows_its_loopback_address_and_rereads_only_when_due() {
        let machine = Machine::read();
        let names = machine.names();
        assert!(
            names.addrs.iter().any(IpAddr::is_loopback),
            "{:?}",
            names.addrs
        );
        assert!(machine.reread().is_none(), "read a moment ago");
    }
}
