//! A tenant's limits counted once for the whole fleet: the rate, the rate per client address
//! and the quota, each spent from a [`Lease`]. When the fleet's store is unreachable or does
//! not answer in time, each is decided by a local share (`1/expected_nodes`); what a local
//! share admits while the store is merely slow is charged to the fleet's count afterwards.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::fleet::{now_ns, Ask, Budget, Fleet, Lease, Take};
use super::gcra::{Cell, Rate, Verdict};
use super::quota::window;
use crate::config::model::QuotaWindow;
use crate::hash::stable_hash;

/// Leased rate units may be spent this long; an idle instance's leftovers then lapse instead
/// of letting it burst later.
const RATE_LEASE_TTL: Duration = Duration::from_secs(1);
/// A lease asks for this much of the rate at once (at least one request, at most the burst).
const RATE_LEASE_SPAN: Duration = Duration::from_millis(10);
/// A quota lease asks for this share of the quota at once (1/1000, at most 1000 requests):
/// the fleet can refuse at most this many requests per instance too early at a window's end.
const QUOTA_LEASE_SHARE: u64 = 1000;
/// Keys of a window are kept this long after it ends (clocks of instances differ a little).
const QUOTA_KEY_GRACE: Duration = Duration::from_secs(3600);

/// The fleet's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    Allow,
    Deny(Duration),
}

/// A shared limit's answer: refused for how long, and whether a local share decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub deny: Option<Duration>,
    pub fell_back: bool,
}

/// One shared GCRA rate (a tenant's, or one client address's).
pub struct SharedRate {
    key: Arc<str>,
    lease: Arc<Lease>,
    want: u64,
    interval_us: u64,
    tolerance_us: u64,
    /// Admitted by the local share while the store was slow: charged with the next ask.
    debt: Arc<AtomicU64>,
    /// This instance's share of the rate, for when the store does not answer.
    local: (Rate, Cell),
}

impl SharedRate {
    pub fn new(key: String, rate: &Rate, local: Rate) -> Self {
        let span = RATE_LEASE_SPAN.as_nanos() as u64;
        Self {
            key: key.into(),
            lease: Arc::default(),
            want: (span / rate.interval_ns).clamp(1, rate.burst),
            interval_us: (rate.interval_ns / 1000).max(1),
            tolerance_us: rate.tolerance_ns / 1000,
            debt: Arc::default(),
            local: (local, Cell::default()),
        }
    }

    pub async fn check(&self, fleet: &Arc<dyn Fleet>) -> Checked {
        let up = fleet.is_up();
        if up {
            let ask = || {
                fleet.refill(
                    self.lease.clone(),
                    Ask {
                        key: self.key.clone(),
                        want: self.want,
                        ttl: RATE_LEASE_TTL,
                        budget: Budget::Rate {
                            interval_us: self.interval_us,
                            tolerance_us: self.tolerance_us,
                            debt: self.debt.clone(),
                        },
                    },
                )
            };
            match self
                .lease
                .take_or_wait(self.want / 2, fleet.timeout(), ask)
                .await
            {
                Some(Take::Granted { .. }) => {
                    return Checked {
                        deny: None,
                        fell_back: false,
                    }
                }
                Some(Take::Denied(d)) => {
                    return Checked {
                        deny: Some(d),
                        fell_back: false,
                    }
                }
                _ => {}
            }
        }
        let deny = match self.local.1.check(&self.local.0, now_ns()) {
            Verdict::Allow { .. } => {
                // Slow, not down: the fleet counts this request too. (While the store is
                // down every instance admits its share, and nothing is owed.)
                if up {
                    self.debt.fetch_add(1, Ordering::AcqRel);
                }
                None
            }
            Verdict::Deny { retry_after } => Some(retry_after),
        };
        Checked {
            deny,
            fell_back: true,
        }
    }
}

const SHARDS: usize = 16;

/// Shared rates per client address, memory-bounded like the local ones.
pub struct SharedPerIp {
    prefix: String,
    rate: Rate,
    local: Rate,
    shards: Vec<Mutex<HashMap<IpAddr, Arc<SharedRate>>>>,
    per_shard: usize,
}

impl SharedPerIp {
    pub fn new(prefix: String, rate: Rate, local: Rate, capacity: usize) -> Self {
        Self {
            prefix,
            rate,
            local,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    pub async fn check(&self, ip: IpAddr, fleet: &Arc<dyn Fleet>) -> Checked {
        let rate = self.rate_of(ip);
        rate.check(fleet).await
    }

    fn rate_of(&self, ip: IpAddr) -> Arc<SharedRate> {
        let hash = match ip {
            IpAddr::V4(v4) => stable_hash(&v4.octets()),
            IpAddr::V6(v6) => stable_hash(&v6.octets()),
        };
        let mut shard = self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(r) = shard.get(&ip) {
            return r.clone();
        }
        if shard.len() >= self.per_shard {
            // Addresses with nothing leased carry no state worth keeping; else forget any.
            let now = now_ns();
            shard.retain(|_, r| r.lease.available(now) > 0);
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        let key = format!("{}{ip}", self.prefix);
        let r = Arc::new(SharedRate::new(key, &self.rate, self.local));
        shard.insert(ip, r.clone());
        r
    }
}

/// A quota counted once for the fleet: one key per calendar window.
pub struct SharedQuota {
    prefix: String,
    kind: QuotaWindow,
    limit: u64,
    want: u64,
    current: ArcSwap<WindowLease>,
}

struct WindowLease {
    window: u64,
    ends: SystemTime,
    key: Arc<str>,
    lease: Arc<Lease>,
    debt: Arc<AtomicU64>,
}

impl SharedQuota {
    pub fn new(prefix: String, kind: QuotaWindow, limit: u64) -> Self {
        Self {
            current: ArcSwap::from_pointee(WindowLease::new(&prefix, kind, SystemTime::now())),
            prefix,
            kind,
            limit,
            want: (limit / QUOTA_LEASE_SHARE).clamp(1, QUOTA_LEASE_SHARE),
        }
    }

    /// `Err(())`: decided locally (the store did not answer in time); the verdict is in it.
    pub async fn check(&self, fleet: &Arc<dyn Fleet>, now: SystemTime) -> Result<Shared, Shared> {
        let w = self.window_at(now);
        let resets_in = w.ends.duration_since(now).unwrap_or_default();
        let local = || {
            // Counted towards the fleet's total when the store answers again.
            if w.lease
                .take_fallback_share(self.limit, fleet.expected_nodes())
            {
                w.debt.fetch_add(1, Ordering::AcqRel);
                Shared::Allow
            } else {
                Shared::Deny(resets_in)
            }
        };
        if !fleet.is_up() {
            return Err(local());
        }
        let expire_at = w.ends + QUOTA_KEY_GRACE;
        let ask = || {
            fleet.refill(
                w.lease.clone(),
                Ask {
                    key: w.key.clone(),
                    want: self.want,
                    ttl: resets_in,
                    budget: Budget::Quota {
                        limit: self.limit,
                        debt: w.debt.clone(),
                        expire_at_ms: expire_at
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                    },
                },
            )
        };
        match w
            .lease
            .take_or_wait(self.want / 2, fleet.timeout(), ask)
            .await
        {
            Some(Take::Granted { .. }) => Ok(Shared::Allow),
            // Spent for the fleet: until the window ends, whatever the store said.
            Some(Take::Denied(_)) => Ok(Shared::Deny(resets_in)),
            _ => Err(local()),
        }
    }

    fn window_at(&self, now: SystemTime) -> Arc<WindowLease> {
        let current = self.current.load_full();
        let (id, _) = window(self.kind, now);
        if id <= current.window {
            return current;
        }
        let next = Arc::new(WindowLease::new(&self.prefix, self.kind, now));
        self.current.store(next.clone());
        next
    }

    /// (window id, the fleet's count at the last answer), for status and persistence.
    pub fn snapshot(&self) -> (u64, u64) {
        let w = self.current.load();
        (w.window, w.lease.used())
    }
}

impl WindowLease {
    fn new(prefix: &str, kind: QuotaWindow, now: SystemTime) -> Self {
        let (window, ends) = window(kind, now);
        Self {
            window,
            ends,
            key: format!("{prefix}{window}").into(),
            lease: Arc::default(),
            debt: Arc::default(),
        }
    }
}
