//! [`PeerSlots`]: at most N of something (connections, streams) per client address and in
//! all, each held as a [`PeerSlot`] that gives its place back when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// Which clients count as one: an IPv4 address, or an IPv6 /64 (one household's or one
/// device's prefix: a client can pick any address in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey(IpAddr);

impl PeerKey {
    pub(crate) fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    PeerKey(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            v4 => PeerKey(v4),
        }
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// Why a place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// This address holds its share.
    Peer,
    /// Every place is taken.
    All,
}

/// Places counted per [`PeerKey`] and in all.
pub(crate) struct PeerSlots {
    per_peer: usize,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_peer: HashMap<PeerKey, usize>,
    total: usize,
}

impl PeerSlots {
    pub(crate) fn new(per_peer: usize, total: usize) -> Arc<PeerSlots> {
        Arc::new(PeerSlots {
            per_peer,
            total,
            held: Mutex::new(Held::default()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Counts only; a panic elsewhere cannot leave them half-updated.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for `ip`, unless its address or everyone is at the limit.
    ///
    /// # Errors
    /// Which limit was reached.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Result<PeerSlot, Full> {
        let key = PeerKey::of(ip);
        let mut held = self.held();
        if held.total >= self.total {
            return Err(Full::All);
        }
        let n = held.by_peer.entry(key).or_insert(0);
        if *n >= self.per_peer {
            return Err(Full::Peer);
        }
        *n += 1;
        held.total += 1;
        Ok(PeerSlot {
            slots: self.clone(),
            key,
        })
    }

    /// The limits, for messages: `(per address, in all)`.
    pub(crate) fn limits(&self) -> (usize, usize) {
        (self.per_peer, self.total)
    }

    fn give_back(&self, key: PeerKey) {
        let mut held = self.held();
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_peer.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                held.by_peer.remove(&key);
            }
        }
    }
}

/// One place; given back on drop.
pub(crate) struct PeerSlot {
    slots: Arc<PeerSlots>,
    key: PeerKey,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.slots.give_back(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_address_and_in_all_and_given_back() {
        let slots = PeerSlots::new(2, 3);
        let a: IpAddr = "192.168.1.5".parse().expect("an address");
        let b: IpAddr = "192.168.1.6".parse().expect("an address");
        let a1 = slots.take(a).expect("a place");
        let a2 = slots.take(a).expect("a place");
        assert_eq!(slots.take(a).err(), Some(Full::Peer));
        let _b1 = slots.take(b).expect("a place");
        assert_eq!(slots.take(b).err(), Some(Full::All));
        drop(a1);
        let _a3 = slots.take(a).expect("a place given back is free again");
        assert_eq!(slots.take(b).err(), Some(Full::All));
        drop(a2);
        let _b2 = slots.take(b).expect("a place after one was given back");
    }

    #[test]
    fn an_ipv6_prefix_counts_as_one_client_and_mapped_ipv4_as_its_ipv4() {
        let slots = PeerSlots::new(1, 10);
        let _x = slots
            .take("2001:db8:1:2::1".parse().expect("v6"))
            .expect("a place");
        assert_eq!(
            slots
                .take("2001:db8:1:2:ffff::9".parse().expect("v6"))
                .err(),
            Some(Full::Peer)
        );
        assert!(slots.take("2001:db8:1:3::1".parse().expect("v6")).is_ok());
        let _v4 = slots
            .take("10.0.0.1".parse().expect("v4"))
            .expect("a place");
        assert_eq!(
            slots.take("::ffff:10.0.0.1".parse().expect("mapped")).err(),
            Some(Full::Peer)
        );
        assert_eq!(
            PeerKey::of("2001:db8:1:2::1".parse().expect("v6")).to_string(),
            "2001:db8:1:2::/64"
        );
    }
}
