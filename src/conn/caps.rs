//! Caps on open client connections: per listener, and per client address (the caller passes
//! IPv6 clients as their block, `limits::address_block`), so one client cannot hold every
//! connection a listener has.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Which cap a connection would have gone over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Listener,
    Client,
}

const SHARDS: usize = 16;

pub struct ConnCounter {
    listeners: Vec<SocketAddr>,
    /// Open connections, parallel to `listeners`.
    open: Vec<AtomicU32>,
    /// Open connections per client key; an entry is removed when its count drops to zero,
    /// so the map only holds clients that have connections open.
    clients: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    /// Seeded per process: shard choice is not something a client can aim at.
    hasher: RandomState,
}

/// One open connection's place in the counts; gives it back when dropped.
pub struct ConnSlot<'a> {
    counter: &'a ConnCounter,
    listener: Option<usize>,
    client: Option<IpAddr>,
}

impl ConnCounter {
    pub fn new(listeners: &[SocketAddr]) -> Self {
        Self {
            listeners: listeners.to_vec(),
            open: listeners.iter().map(|_| AtomicU32::new(0)).collect(),
            clients: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }

    /// Takes a slot for a connection accepted on `local` from `client` (`None`: a client
    /// exempt from the per-address cap, such as a trusted proxy).
    pub fn acquire(
        &self,
        local: Option<SocketAddr>,
        client: Option<IpAddr>,
        max_listener: u32,
        max_client: u32,
    ) -> Result<ConnSlot<'_>, Over> {
        let mut slot = ConnSlot {
            counter: self,
            listener: None,
            client: None,
        };
        if let Some(i) = local.and_then(|a| self.listener_index(a)) {
            let open = &self.open[i];
            if open.fetch_add(1, Ordering::AcqRel) >= max_listener {
                open.fetch_sub(1, Ordering::AcqRel);
                return Err(Over::Listener);
            }
            slot.listener = Some(i);
        }
        if let Some(key) = client {
            let mut shard = self.shard(key);
            let open = shard.entry(key).or_insert(0);
            if *open >= max_client {
                return Err(Over::Client);
            }
            *open += 1;
            slot.client = Some(key);
        }
        Ok(slot)
    }

    /// Open connections on each listener, in configuration order.
    pub fn open(&self) -> Vec<(SocketAddr, u32)> {
        self.listeners
            .iter()
            .zip(&self.open)
            .map(|(a, n)| (*a, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Client keys with connections open now (for tests of the map's bound).
    pub fn clients_tracked(&self) -> usize {
        self.clients.iter().map(|s| lock(s).len()).sum()
    }

    fn listener_index(&self, local: SocketAddr) -> Option<usize> {
        find_listener(&self.listeners, local)
    }

    fn shard(&self, key: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        lock(&self.clients[self.hasher.hash_one(key) as usize % SHARDS])
    }
}

/// Which of `listeners` accepted a connection on `local`.
pub fn find_listener(listeners: &[SocketAddr], local: SocketAddr) -> Option<usize> {
    let exact = listeners.iter().position(|a| *a == local);
    // A listener on 0.0.0.0 or [::] sees connections on a concrete local address.
    exact.or_else(|| {
        listeners
            .iter()
            .position(|a| a.ip().is_unspecified() && a.port() == local.port())
    })
}

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.listener {
            self.counter.open[i].fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(key) = self.client {
            let mut shard = self.counter.shard(key);
            if let Some(open) = shard.get_mut(&key) {
                *open -= 1;
                if *open == 0 {
                    shard.remove(&key);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain counts: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listener_cap_counts_open_connections_only() {
        let c = ConnCounter::new(&[addr("0.0.0.0:80"), addr("127.0.0.1:81")]);
        let local = Some(addr("10.1.2.3:80"));
        let a = c.acquire(local, None, 2, 10).unwrap();
        let _b = c.acquire(local, None, 2, 10).unwrap();
        assert_eq!(c.acquire(local, None, 2, 10).err(), Some(Over::Listener));
        assert!(
            c.acquire(Some(addr("127.0.0.1:81")), None, 2, 10).is_ok(),
            "another listener has its own count"
        );
        drop(a);
        assert!(c.acquire(local, None, 2, 10).is_ok());
        assert_eq!(c.open()[0].1, 1);
    }

    #[test]
    fn client_cap_per_address_and_per_ipv6_block() {
        let c = ConnCounter::new(&[]);
        let ip = |s: &str| Some(crate::limits::address_block(s.parse().unwrap(), 64));
        let held: Vec<_> = (0..3)
            .map(|_| c.acquire(None, ip("192.0.2.1"), 100, 3).unwrap())
            .collect();
        assert_eq!(
            c.acquire(None, ip("192.0.2.1"), 100, 3).err(),
            Some(Over::Client)
        );
        assert_eq!(
            c.acquire(None, ip("::ffff:192.0.2.1"), 100, 3).err(),
            Some(Over::Client),
            "an IPv4-mapped address is the same client"
        );
        assert!(c.acquire(None, ip("192.0.2.2"), 100, 3).is_ok());
        let _v6 = c.acquire(None, ip("2001:db8::1"), 100, 1).unwrap();
        assert_eq!(
            c.acquire(None, ip("2001:db8::ffff:2"), 100, 1).err(),
            Some(Over::Client),
            "same /64"
        );
        assert!(c.acquire(None, ip("2001:db8:0:1::1"), 100, 1).is_ok());
        drop(held);
        assert_eq!(c.clients_tracked(), 1, "closed clients leave the map");
    }

    #[test]
    fn a_refused_client_does_not_keep_a_listener_slot() {
        let c = ConnCounter::new(&[addr("127.0.0.1:80")]);
        let local = Some(addr("127.0.0.1:80"));
        let ip = Some("192.0.2.9".parse().unwrap());
        let _one = c.acquire(local, ip, 10, 1).unwrap();
        assert_eq!(c.acquire(local, ip, 10, 1).err(), Some(Over::Client));
        assert_eq!(c.open()[0].1, 1);
    }
}
