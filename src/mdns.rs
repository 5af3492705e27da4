//! LAN discovery with mDNS/DNS-SD, on the `mdns-sd` crate (its own thread, `mDNS_daemon`,
//! and channels; no async runtime).
//!
//! [`Advert`]: a hub listening beyond loopback announces itself as
//! `<host>._timelapse-events._tcp.local.` and `<host>._http._tcp.local.`, with the TXT keys
//! of [`txt`]. Started and stopped by `Hub`; stopping unregisters (goodbye packets, so
//! browsers drop the hub at once rather than after the records' TTL) and then shuts the
//! daemon down and waits for it. A daemon that cannot start is a warning, never a failed
//! start: discovery is a convenience, the hub serves without it.
//!
//! [`discover`]: browses for `_timelapse-events._tcp.local.` for a while and returns the
//! hubs it resolved (the `discover` subcommand).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::config::Config;
use crate::error::{Error, Result};

/// The hub's own service type.
pub const SERVICE: &str = "_timelapse-events._tcp.local.";
/// `timelapse-events` is 16 bytes, one over RFC 6335's 15 for a service name, which
/// mdns-sd enforces by default; the daemons here (advertising and browsing) allow 16.
const SERVICE_NAME_LEN_MAX: u8 = 16;
/// The generic web service type (the dashboard), for browsers of `_http._tcp`.
const HTTP_SERVICE: &str = "_http._tcp.local.";
/// The event stream's path, as TXT `stream`.
const STREAM_PATH: &str = "/api/events";
/// The dashboard's path, as TXT `dashboard`.
const DASHBOARD_PATH: &str = "/";
/// How long a stop waits for each answer of the daemon (unregister, shutdown).
const STOP_WAIT: Duration = Duration::from_secs(2);
/// mdns-sd sends each goodbye a second time 120 ms after the first; a stop waits for it.
const GOODBYE_REPEAT: Duration = Duration::from_millis(150);

/// Whether a hub bound to `bind` is advertised: only beyond loopback.
pub(crate) fn advertised(bind: SocketAddr) -> bool {
    !bind.ip().is_loopback()
}

/// The TXT record of a hub named `host`: `version`, `stream`, `dashboard`, `host`.
pub(crate) fn txt(host: &str) -> Vec<(&'static str, String)> {
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("stream", STREAM_PATH.to_owned()),
        ("dashboard", DASHBOARD_PATH.to_owned()),
        ("host", host.to_owned()),
    ]
}

/// The records of one service type for a hub named `host` on `addr`: the instance is the
/// host, the SRV target `<machine>.local.`. An unspecified address lets the daemon publish
/// each interface's own addresses (and follow them as DHCP changes them).
fn service(ty: &str, host: &str, machine: &str, addr: SocketAddr) -> Result<ServiceInfo> {
    let target = format!("{machine}.local.");
    let txt = txt(host);
    let info = if addr.ip().is_unspecified() {
        ServiceInfo::new(ty, host, &target, "", addr.port(), &txt[..]).map(|i| i.enable_addr_auto())
    } else {
        ServiceInfo::new(ty, host, &target, addr.ip(), addr.port(), &txt[..])
    };
    info.map_err(|e| mdns_error("describe the mDNS service", &e))
}

/// A daemon on the mDNS port that accepts [`SERVICE`]'s name.
fn daemon() -> Result<ServiceDaemon> {
    let daemon = ServiceDaemon::new().map_err(|e| mdns_error("start the mDNS daemon", &e))?;
    if let Err(e) = daemon.set_service_name_len_max(SERVICE_NAME_LEN_MAX) {
        shut_down(&daemon);
        return Err(mdns_error("configure the mDNS daemon", &e));
    }
    Ok(daemon)
}

fn mdns_error(op: &'static str, e: &mdns_sd::Error) -> Error {
    Error::Io {
        op,
        source: std::io::Error::other(e.to_string()),
    }
}

/// The daemon and the services it announces for a running hub.
pub(crate) struct Advert {
    daemon: ServiceDaemon,
    /// The services' full names, for their goodbyes.
    fullnames: Vec<String>,
}

impl std::fmt::Debug for Advert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advert")
            .field("fullnames", &self.fullnames)
            .finish_non_exhaustive()
    }
}

impl Advert {
    /// Announces the hub listening on `addr` (its real port), unless `config.mdns` is off
    /// or it listens on loopback only. `None`, with a warning, when the daemon cannot start
    /// or a service cannot be registered.
    pub(crate) fn start(config: &Config, addr: SocketAddr) -> Option<Advert> {
        if !config.mdns {
            log::info!("mDNS advertisement off (--no-mdns)");
            return None;
        }
        if !advertised(addr) {
            log::debug!("listening on loopback only: not advertised with mDNS");
            return None;
        }
        match Advert::try_start(config, addr) {
            Ok(advert) => Some(advert),
            Err(e) => {
                log::warn!(
                    "not advertised on the LAN (mDNS): {}; `discover` will not find this hub",
                    e.chain()
                );
                None
            }
        }
    }

    fn try_start(config: &Config, addr: SocketAddr) -> Result<Advert> {
        let machine = crate::host::machine_name();
        let host = config.host_name.clone().unwrap_or_else(|| machine.clone());
        let daemon = daemon()?;
        let mut advert = Advert {
            daemon,
            fullnames: Vec::new(),
        };
        // Only where the listener answers: its one address's interface, or (for 0.0.0.0)
        // no IPv6, which that listener does not accept.
        let narrowed = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => advert.daemon.disable_interface(IfKind::IPv6),
            ip if ip.is_unspecified() => Ok(()),
            ip => advert
                .daemon
                .disable_interface(IfKind::All)
                .and_then(|()| advert.daemon.enable_interface(IfKind::Addr(ip))),
        };
        narrowed.map_err(|e| mdns_error("choose the mDNS interfaces", &e))?;
        for ty in [SERVICE, HTTP_SERVICE] {
            let info = service(ty, &host, &machine, addr)?;
            let fullname = info.get_fullname().to_owned();
            advert
                .daemon
                .register(info)
                .map_err(|e| mdns_error("register the mDNS service", &e))?;
            advert.fullnames.push(fullname);
        }
        log::info!(
            "advertised on the LAN with mDNS as {host} ({SERVICE}, {HTTP_SERVICE}, port {})",
            addr.port()
        );
        match multicast_interfaces(addr.ip()) {
            Ok(names) if names.is_empty() => log::warn!(
                "no multicast interface beyond loopback is up for {}: the LAN sees this hub \
                 only once one is (mDNS follows interfaces as they come)",
                addr.ip()
            ),
            Ok(names) => log::debug!("mDNS on {names:?}"),
            Err(e) => log::warn!("cannot list the interfaces ({e}): mDNS may not reach the LAN"),
        }
        Ok(advert)
    }

    /// Unregisters every service (goodbye packets, sent twice), then shuts the daemon down
    /// and waits for its thread to say it has, each wait at most [`STOP_WAIT`].
    pub(crate) fn stop(self) {
        for name in &self.fullnames {
            match self.daemon.unregister(name) {
                Ok(done) => {
                    if done.recv_timeout(STOP_WAIT).is_err() {
                        log::warn!("the mDNS daemon did not confirm the goodbye of {name}");
                    }
                }
                Err(e) => log::warn!("cannot unregister {name} from mDNS: {e}"),
            }
        }
        std::thread::sleep(GOODBYE_REPEAT);
        shut_down(&self.daemon);
        log::info!("mDNS advertisement withdrawn");
    }
}

/// The interfaces an advertisement for a listener on `ip` goes out on: up, multicast,
/// not loopback, with `ip` itself or (unspecified) an address of its family (`::`: any).
fn multicast_interfaces(ip: IpAddr) -> nix::Result<Vec<String>> {
    use nix::net::if_::InterfaceFlags;
    let mut names: Vec<String> = nix::ifaddrs::getifaddrs()?
        .filter(|i| {
            i.flags
                .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_MULTICAST)
                && !i.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .filter(|i| {
            let Some(a) = i.address.as_ref() else {
                return false;
            };
            let v4 = a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip()));
            let v6 = a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip()));
            match ip {
                IpAddr::V4(u) if u.is_unspecified() => v4.is_some(),
                IpAddr::V6(u) if u.is_unspecified() => v4.is_some() || v6.is_some(),
                _ => v4 == Some(ip) || v6 == Some(ip),
            }
        })
        .map(|i| i.interface_name)
        .collect();
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// Shuts `daemon` down and waits (at most [`STOP_WAIT`]) until its thread has.
fn shut_down(daemon: &ServiceDaemon) {
    match daemon.shutdown() {
        Ok(done) => {
            if done.recv_timeout(STOP_WAIT).is_err() {
                log::warn!("the mDNS daemon did not stop within {STOP_WAIT:?}");
            }
        }
        Err(e) => log::warn!("cannot stop the mDNS daemon: {e}"),
    }
}

/// A hub found by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundHub {
    /// Its TXT `host`, or its instance name when it has none.
    pub host: String,
    /// The addresses it was resolved to, sorted.
    pub addresses: Vec<IpAddr>,
    /// Its HTTP port.
    pub port: u16,
    /// Its TXT `version` (empty when missing).
    pub version: String,
    /// Every TXT key and value it advertised.
    pub txt: BTreeMap<String, String>,
}

impl FoundHub {
    /// As JSON: its TXT keys, then `host`, `addresses`, `port` and `version`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj: serde_json::Map<String, serde_json::Value> = self
            .txt
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        obj.insert("host".into(), self.host.clone().into());
        obj.insert(
            "addresses".into(),
            self.addresses
                .iter()
                .map(|a| a.to_string().into())
                .collect::<Vec<serde_json::Value>>()
                .into(),
        );
        obj.insert("port".into(), self.port.into());
        obj.insert("version".into(), self.version.clone().into());
        obj.into()
    }
}

/// Browses the LAN for `_timelapse-events._tcp.local.` during `browse_for`, and returns
/// the hubs resolved and not withdrawn by then, sorted by host.
///
/// # Errors
/// The mDNS daemon cannot start or browse (no hub found is an empty list).
pub fn discover(browse_for: Duration) -> Result<Vec<FoundHub>> {
    let daemon = daemon()?;
    let events = match daemon.browse(SERVICE) {
        Ok(events) => events,
        Err(e) => {
            shut_down(&daemon);
            return Err(mdns_error("browse with mDNS", &e));
        }
    };
    let deadline = Instant::now() + browse_for;
    let mut found: BTreeMap<String, FoundHub> = BTreeMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(s)) => {
                log::debug!("resolved {} at {:?}:{}", s.fullname, s.addresses, s.port);
                let txt: BTreeMap<String, String> = s
                    .txt_properties
                    .iter()
                    .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
                    .collect();
                let mut addresses: Vec<IpAddr> = s
                    .addresses
                    .iter()
                    .map(mdns_sd::ScopedIp::to_ip_addr)
                    .collect();
                addresses.sort_unstable();
                addresses.dedup();
                let instance = s.fullname.strip_suffix(SERVICE).unwrap_or(&s.fullname);
                let hub = FoundHub {
                    host: txt
                        .get("host")
                        .cloned()
                        .unwrap_or_else(|| instance.trim_end_matches('.').to_owned()),
                    addresses,
                    port: s.port,
                    version: txt.get("version").cloned().unwrap_or_default(),
                    txt,
                };
                found.insert(s.fullname.clone(), hub);
            }
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                log::debug!("withdrawn: {fullname}");
                found.remove(&fullname);
            }
            Ok(other) => log::debug!("mDNS: {other:?}"),
            Err(_) => break, // the time is up (or the daemon stopped)
        }
    }
    shut_down(&daemon);
    let mut hubs: Vec<FoundHub> = found.into_values().collect();
    hubs.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    Ok(hubs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_txt_record_names_the_version_the_paths_and_the_host() {
        let txt = txt("cam-1");
        assert_eq!(
            txt,
            [
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("stream", "/api/events".to_owned()),
                ("dashboard", "/".to_owned()),
                ("host", "cam-1".to_owned()),
            ]
        );
        let info = service(SERVICE, "cam-1", "raspberrypi", ([0, 0, 0, 0], 8080).into())
            .expect("a valid service");
        assert_eq!(info.get_fullname(), "cam-1._timelapse-events._tcp.local.");
        assert_eq!(info.get_hostname(), "raspberrypi.local.");
        assert_eq!(info.get_port(), 8080);
        assert_eq!(info.get_property_val_str("stream"), Some("/api/events"));
        assert_eq!(info.get_property_val_str("host"), Some("cam-1"));
        assert!(info.is_addr_auto(), "0.0.0.0: each interface's addresses");
        let one = service(HTTP_SERVICE, "cam-1", "pi", ([10, 0, 0, 5], 80).into()).expect("valid");
        assert_eq!(one.get_fullname(), "cam-1._http._tcp.local.");
        assert!(!one.is_addr_auto());
    }

    #[test]
    fn only_a_hub_beyond_loopback_is_advertised() {
        for (bind, want) in [
            ("127.0.0.1:8080", false),
            ("127.1.2.3:8080", false),
            ("[::1]:8080", false),
            ("0.0.0.0:8080", true),
            ("[::]:8080", true),
            ("192.168.1.20:8080", true),
        ] {
            let addr: SocketAddr = bind.parse().expect("an address");
            assert_eq!(advertised(addr), want, "{bind}");
        }
    }

    #[test]
    fn loopback_is_never_an_interface_to_advertise_on() {
        let names = multicast_interfaces([127, 0, 0, 1].into()).expect("getifaddrs");
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_found_hub_as_json_has_its_txt_keys_and_its_address() {
        let hub = FoundHub {
            host: "cam-1".into(),
            addresses: vec![[10, 0, 0, 5].into()],
            port: 8080,
            version: "0.1.0".into(),
            txt: txt("cam-1")
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let json = hub.to_json();
        assert_eq!(json["addresses"], serde_json::json!(["10.0.0.5"]));
        assert_eq!(json["port"], 8080);
        assert_eq!(json["stream"], "/api/events");
        assert_eq!(json["dashboard"], "/");
        assert_eq!(json["host"], "cam-1");
    }
}
