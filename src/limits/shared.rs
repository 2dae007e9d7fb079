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
use tokio::time::Instant as Deadline;

use super::fleet::{now_ns, Ask, Budget, Fleet, Lease, Take};
use super::gcra::{Cell, Rate, Verdict};
use super::quota::window;
use crate::config::model::QuotaWindow;
use crate::hash::stable_hash;

/// Leased rate units may be spent this long; an idle instance's leftovers then lapse (and
/// are handed back) instead of letting it burst later.
const RATE_LEASE_TTL: Duration = Duration::from_secs(1);
/// A lease asks for this much of the rate at once (at least one request, at most the burst).
const RATE_LEASE_SPAN: Duration = Duration::from_millis(10);
/// A quota lease asks for this share of the quota at once (1/1000, at most 1000 requests):
/// the fleet can refuse at most this many requests per instance too early at a window's end.
const QUOTA_LEASE_SHARE: u64 = 1000;
/// Keys of a window are kept this long after it ends (clocks of instances differ a little).
const QUOTA_KEY_GRACE: Duration = Duration::from_secs(3600);
/// Sweeping a full shard of client addresses is O(shard): at most this often per shard.
const SWEEP_EVERY_NS: u64 = 1_000_000_000;

/// A shared limit's answer: refused for how long, and whether a local share decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub deny: Option<Duration>,
    pub fell_back: bool,
}

/// The fleet's verdict from a lease, if it gave one in time; `refused_for` turns its retry
/// time into the one to tell the client.
fn from_the_fleet(
    take: Option<Take>,
    refused_for: impl Fn(Duration) -> Duration,
) -> Option<Checked> {
    let deny = match take? {
        Take::Granted { .. } => None,
        Take::Denied(d) => Some(refused_for(d)),
        Take::Empty => return None,
    };
    Some(Checked {
        deny,
        fell_back: false,
    })
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

    /// Decides one request, waiting for the store at most until `deadline`.
    pub async fn check(&self, fleet: &Arc<dyn Fleet>, deadline: Deadline) -> Checked {
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
            let take = self.lease.take_or_wait(self.want / 2, deadline, ask).await;
            if let Some(checked) = from_the_fleet(take, |d| d) {
                return checked;
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

    /// Nothing here worth keeping: no units, no refusal running, nothing owed, and the local
    /// share back to a full burst.
    fn is_idle(&self, now: u64) -> bool {
        self.lease.is_idle(now)
            && self.debt.load(Ordering::Acquire) == 0
            && self.local.1.is_idle(now)
    }
}

const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    rates: HashMap<IpAddr, Arc<SharedRate>>,
    last_sweep_ns: u64,
}

/// Shared rates per client address, memory-bounded like the local ones.
pub struct SharedPerIp {
    prefix: String,
    rate: Rate,
    local: Rate,
    shards: Vec<Mutex<Shard>>,
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

    pub async fn check(&self, ip: IpAddr, fleet: &Arc<dyn Fleet>, deadline: Deadline) -> Checked {
        let rate = self.rate_of(ip);
        rate.check(fleet, deadline).await
    }

    fn rate_of(&self, ip: IpAddr) -> Arc<SharedRate> {
        let hash = match ip {
            IpAddr::V4(v4) => stable_hash(&v4.octets()),
            IpAddr::V6(v6) => stable_hash(&v6.octets()),
        };
        let mut shard = self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(r) = shard.rates.get(&ip) {
            return r.clone();
        }
        if shard.rates.len() >= self.per_shard {
            let now = now_ns();
            if now.saturating_sub(shard.last_sweep_ns) >= SWEEP_EVERY_NS {
                shard.last_sweep_ns = now;
                shard.rates.retain(|_, r| !r.is_idle(now));
            }
            if shard.rates.len() >= self.per_shard {
                // Everyone here is active: forget one (it restarts with a full local burst).
                if let Some(victim) = shard.rates.keys().next().copied() {
                    shard.rates.remove(&victim);
                }
            }
        }
        let key = format!("{}{ip}", self.prefix);
        let r = Arc::new(SharedRate::new(key, &self.rate, self.local));
        shard.rates.insert(ip, r.clone());
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

    /// Decides one request at `now`, waiting for the store at most until `deadline`.
    pub async fn check(
        &self,
        fleet: &Arc<dyn Fleet>,
        now: SystemTime,
        deadline: Deadline,
    ) -> Checked {
        let w = self.window_at(now);
        let resets_in = w.ends.duration_since(now).unwrap_or_default();
        if fleet.is_up() {
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
            let take = w.lease.take_or_wait(self.want / 2, deadline, ask).await;
            // Spent for the fleet: until the window ends, whatever the store said.
            if let Some(checked) = from_the_fleet(take, |_| resets_in) {
                return checked;
            }
        }
        // This instance's share of what the fleet had left at the last answer; counted
        // towards the fleet's total when the store answers again.
        let deny = if w
            .lease
            .take_fallback_share(self.limit, fleet.expected_nodes())
        {
            w.debt.fetch_add(1, Ordering::AcqRel);
            None
        } else {
            Some(resets_in)
        };
        Checked {
            deny,
            fell_back: true,
        }
    }

    fn window_at(&self, now: SystemTime) -> Arc<WindowLease> {
        let (id, _) = window(self.kind, now);
        loop {
            let current = self.current.load_full();
            if id <= current.window {
                return current;
            }
            // One lease per window: of two requests crossing into it, one installs it.
            let next = Arc::new(WindowLease::new(&self.prefix, self.kind, now));
            let seen = self.current.compare_and_swap(&current, next.clone());
            if Arc::ptr_eq(&*seen, &current) {
                return next;
            }
        }
    }

    /// (window id, the fleet's count at the last answer), for status and metrics.
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

#[cfg(test)]
mod tests {
    use super::super::fleet::Grant;
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    /// A store in memory: a GCRA per key on the shared clock, or silence (`answers` false:
    /// asks are never answered, as from a Redis that hangs).
    #[derive(Default)]
    struct FakeStore {
        down: AtomicBool,
        silent: AtomicBool,
        tats: Mutex<HashMap<String, u64>>,
        asks: Mutex<Vec<(u64, u64)>>,
    }

    impl Fleet for FakeStore {
        fn is_up(&self) -> bool {
            !self.down.load(Ordering::Acquire)
        }
        fn expected_nodes(&self) -> u32 {
            2
        }
        fn timeout(&self) -> Duration {
            Duration::from_millis(5)
        }
        fn key_prefix(&self) -> &str {
            "t:"
        }
        fn refill(&self, lease: Arc<Lease>, ask: Ask) {
            let Budget::Rate {
                interval_us,
                tolerance_us,
                debt,
            } = &ask.budget
            else {
                unreachable!("rates only here")
            };
            let debt = debt.swap(0, Ordering::AcqRel);
            self.asks.lock().unwrap().push((ask.want, debt));
            if self.silent.load(Ordering::Acquire) {
                // As a command that times out: no answer for a while, then a failure.
                debt_back(&ask, debt);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    lease.failed();
                });
                return;
            }
            let now = now_ns() / 1000;
            let mut tats = self.tats.lock().unwrap();
            let tat = tats.entry(ask.key.to_string()).or_insert(0);
            *tat = (*tat).max(now) + debt * interval_us;
            let room = (now + tolerance_us).saturating_sub(*tat) / interval_us + 1;
            let room = if now + tolerance_us < *tat { 0 } else { room };
            let granted = room.min(ask.want);
            *tat += granted * interval_us;
            lease.fill(
                Grant {
                    granted,
                    retry_after: Duration::from_micros(*interval_us),
                    used: 0,
                },
                0,
                now_ns(),
                ask.ttl,
            );
        }
    }

    fn debt_back(ask: &Ask, debt: u64) {
        if let Budget::Rate { debt: d, .. } = &ask.budget {
            d.fetch_add(debt, Ordering::AcqRel);
        }
    }

    fn per_minute(n: u64, burst: u64) -> Rate {
        Rate::new(n, Duration::from_secs(60), burst)
    }

    async fn admitted(r: &SharedRate, fleet: &Arc<dyn Fleet>, n: usize) -> (usize, usize) {
        let (mut ok, mut local) = (0, 0);
        for _ in 0..n {
            let deadline = Deadline::now() + fleet.timeout();
            let c = r.check(fleet, deadline).await;
            ok += usize::from(c.deny.is_none());
            local += usize::from(c.fell_back);
        }
        (ok, local)
    }

    #[tokio::test]
    async fn two_instances_share_one_burst() {
        let store = Arc::new(FakeStore::default());
        let fleet: Arc<dyn Fleet> = store.clone();
        let rate = per_minute(60, 10);
        let a = SharedRate::new("t:rate:x".into(), &rate, per_minute(30, 5));
        let b = SharedRate::new("t:rate:x".into(), &rate, per_minute(30, 5));
        let (a_ok, a_local) = admitted(&a, &fleet, 8).await;
        let (b_ok, b_local) = admitted(&b, &fleet, 8).await;
        assert_eq!((a_ok, a_local + b_local), (8, 0));
        // The burst of 10, between them; `a` holds what it asked for ahead (one lease).
        let held = a.lease.available(now_ns()) as usize;
        assert_eq!((b_ok + held, held), (2, 1));
    }

    #[tokio::test]
    async fn while_the_store_is_down_each_admits_its_share_and_owes_nothing() {
        let store = Arc::new(FakeStore::default());
        store.down.store(true, Ordering::Release);
        let fleet: Arc<dyn Fleet> = store.clone();
        let r = SharedRate::new("t:rate:x".into(), &per_minute(60, 10), per_minute(30, 5));
        assert_eq!(admitted(&r, &fleet, 20).await, (5, 20));
        assert!(store.asks.lock().unwrap().is_empty());
        store.down.store(false, Ordering::Release);
        r.check(&fleet, Deadline::now() + fleet.timeout()).await;
        assert_eq!(
            store.asks.lock().unwrap()[0].1,
            0,
            "no debt for a store that was down"
        );
    }

    #[tokio::test]
    async fn what_a_slow_store_missed_is_charged_when_it_answers() {
        let store = Arc::new(FakeStore::default());
        store.silent.store(true, Ordering::Release);
        let fleet: Arc<dyn Fleet> = store.clone();
        let r = SharedRate::new("t:rate:x".into(), &per_minute(60, 10), per_minute(30, 5));
        let started = std::time::Instant::now();
        assert_eq!(admitted(&r, &fleet, 3).await, (3, 3));
        // Until the timed-out command has failed, the lease is still asking.
        for _ in 0..100 {
            if !r.lease.is_asking() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!r.lease.is_asking());
        // Each waited for the store, at most its timeout.
        assert!(started.elapsed() < Duration::from_secs(1));
        store.silent.store(false, Ordering::Release);
        // The next ask carries the three requests the store did not see: 10 - 3 - 1 left.
        assert_eq!(admitted(&r, &fleet, 10).await, (7, 0));
        let asks = store.asks.lock().unwrap();
        assert_eq!(asks.iter().map(|a| a.1).sum::<u64>(), 3, "{asks:?}");
    }
}
