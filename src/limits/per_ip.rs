//! Rate cells per client address, memory-bounded: a fixed number of shards, each holding at
//! most `capacity / SHARDS` addresses. Idle addresses (back to a full burst) carry no
//! information and are dropped first; a flood of distinct addresses evicts older ones rather
//! than growing memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::gcra::{Cell, Rate, Verdict};
use crate::hash::stable_hash;

const SHARDS: usize = 16;

/// Sweeping a full shard for idle addresses is O(shard); do it at most this often per shard,
/// so a flood of new addresses costs O(1) each instead.
const SWEEP_EVERY_NS: u64 = 1_000_000_000;

#[derive(Default)]
struct Shard {
    cells: HashMap<IpAddr, Cell>,
    last_sweep_ns: u64,
}

pub struct PerIp {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl PerIp {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    pub fn check(&self, ip: IpAddr, rate: &Rate, now_ns: u64) -> Verdict {
        let key = match ip {
            IpAddr::V4(v4) => stable_hash(&v4.octets()),
            IpAddr::V6(v6) => stable_hash(&v6.octets()),
        };
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !shard.cells.contains_key(&ip) && shard.cells.len() >= self.per_shard {
            if now_ns.saturating_sub(shard.last_sweep_ns) >= SWEEP_EVERY_NS {
                shard.last_sweep_ns = now_ns;
                shard.cells.retain(|_, c| !c.is_idle(now_ns));
            }
            if shard.cells.len() >= self.per_shard {
                // Everyone here is active: forget one (it restarts with a full burst).
                if let Some(victim) = shard.cells.keys().next().copied() {
                    shard.cells.remove(&victim);
                }
            }
        }
        shard.cells.entry(ip).or_default().check(rate, now_ns)
    }

    /// Addresses currently tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).cells.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn addresses_are_limited_independently_and_memory_stays_bounded() {
        let rate = Rate::new(1, Duration::from_secs(60), 1);
        let per_ip = PerIp::new(1000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(matches!(per_ip.check(a, &rate, 1), Verdict::Allow { .. }));
        assert!(matches!(per_ip.check(a, &rate, 2), Verdict::Deny { .. }));
        assert!(matches!(per_ip.check(b, &rate, 3), Verdict::Allow { .. }));
        for i in 0..100_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            per_ip.check(ip, &rate, 10);
        }
        assert!(per_ip.len() <= 1000 + SHARDS, "{}", per_ip.len());
    }
}
