//! Limits a fleet shares: each instance leases a few units of a tenant's budget from the
//! fleet's store (Redis) and spends them locally, asking for more before they run out. A
//! request waits for the store only when its instance's lease is empty, and at most the
//! fleet's `timeout`; then, or while the store is unreachable, it is decided by a local
//! fallback limit. No I/O here: the store is behind the [`Fleet`] trait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What a lease asks the store for: up to `want` units of the budget under `key`.
#[derive(Debug, Clone)]
pub struct Ask {
    pub key: Arc<str>,
    pub want: u64,
    /// How long granted units may be spent.
    pub ttl: Duration,
    pub budget: Budget,
}

#[derive(Debug, Clone)]
pub enum Budget {
    /// A GCRA rate (`interval_us` per request, `tolerance_us` of burst). `debt`: requests
    /// admitted locally while the store was slow, charged first (taken when sent, given
    /// back on failure).
    Rate {
        interval_us: u64,
        tolerance_us: u64,
        debt: Arc<AtomicU64>,
    },
    /// A quota of `limit` (one key per window). `debt`: requests admitted while the store
    /// was unreachable, added to the count first (taken when sent, given back on failure).
    Quota {
        limit: u64,
        debt: Arc<AtomicU64>,
        /// When the key may go (ms since the Unix epoch): some time after the window ends.
        expire_at_ms: u64,
    },
}

/// The store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    /// With nothing granted: how long until the budget has room again.
    pub retry_after: Duration,
    /// Quotas: what the fleet has used in the window, this grant included.
    pub used: u64,
}

/// The fleet's store, as the limiter sees it.
pub trait Fleet: Send + Sync {
    /// Whether the store answered recently; when not, limits are decided locally.
    fn is_up(&self) -> bool;
    /// Instances the fleet is expected to have (the local share while the store is down).
    fn expected_nodes(&self) -> u32;
    /// The longest a request waits for a lease.
    fn timeout(&self) -> Duration;
    /// Every key this fleet uses starts with this.
    fn key_prefix(&self) -> &str;
    /// Sends `ask` and fills `lease` with the answer (or marks it failed), without blocking.
    fn refill(&self, lease: Arc<Lease>, ask: Ask);
}

static FLEET: OnceLock<Arc<dyn Fleet>> = OnceLock::new();

/// Sets the process's fleet, once, before the first snapshot is built.
pub fn set_fleet(fleet: Arc<dyn Fleet>) {
    let _ = FLEET.set(fleet);
}

pub fn fleet() -> Option<&'static Arc<dyn Fleet>> {
    FLEET.get()
}

/// Nanoseconds on a process-wide monotonic clock (leases and the store share it).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// One key's units leased by this instance.
#[derive(Debug, Default)]
pub struct Lease {
    tokens: AtomicU64,
    /// Leased units are not spent after this: they would let an idle instance burst later.
    expires_ns: AtomicU64,
    /// The store said the budget is empty until then: refuse without asking again.
    denied_until_ns: AtomicU64,
    /// Quotas: the fleet's count in the window at the last answer.
    used: AtomicU64,
    /// Quotas: requests admitted locally (store unreachable) not yet in `used`.
    fallback_used: AtomicU64,
    /// Units that lapsed unspent: handed back with the next ask, so a client slower than the
    /// lease's lifetime is not charged twice for each request.
    lapsed: AtomicU64,
    asking: AtomicBool,
    /// Counts failed asks: a request waiting for an answer that failed decides locally
    /// instead of asking a failing store again.
    failures: AtomicU64,
    filled: Notify,
}

/// What the lease says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Spent one unit; `ask` more now (the lease is running low).
    Granted { ask: bool },
    /// The fleet's budget is spent for this long.
    Denied(Duration),
    /// Nothing leased: ask the store and wait.
    Empty,
}

impl Lease {
    /// Spends one unit at `now`; `low`: ask for more when this many or fewer are left.
    pub fn take(&self, now: u64, low: u64) -> Take {
        if now >= self.expires_ns.load(Ordering::Acquire) {
            let lapsed = self.tokens.swap(0, Ordering::AcqRel);
            if lapsed > 0 {
                self.lapsed.fetch_add(lapsed, Ordering::AcqRel);
            }
        } else {
            let mut t = self.tokens.load(Ordering::Acquire);
            while t > 0 {
                match self.tokens.compare_exchange_weak(
                    t,
                    t - 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        let ask = t - 1 <= low && !self.asking.load(Ordering::Acquire);
                        return Take::Granted { ask };
                    }
                    Err(seen) => t = seen,
                }
            }
        }
        let denied = self.denied_until_ns.load(Ordering::Acquire);
        if now < denied {
            return Take::Denied(Duration::from_nanos(denied - now));
        }
        Take::Empty
    }

    /// Claims the right to ask the store; `false` when an ask is already on its way.
    pub fn start_asking(&self) -> bool {
        !self.asking.swap(true, Ordering::AcqRel)
    }

    /// Units that lapsed since the last call, to hand back to the store.
    pub fn take_lapsed(&self) -> u64 {
        self.lapsed.swap(0, Ordering::AcqRel)
    }

    /// Lapsed units the store did not take back after all (the ask failed).
    pub fn return_lapsed(&self, n: u64) {
        self.lapsed.fetch_add(n, Ordering::AcqRel);
    }

    /// Adds the store's answer at `now`; leased units may be spent for `ttl`. `reported`:
    /// locally admitted quota requests the answer has counted.
    pub fn fill(&self, grant: Grant, reported: u64, now: u64, ttl: Duration) {
        let expires = self.expires_ns.load(Ordering::Acquire);
        if now >= expires {
            let lapsed = self.tokens.swap(grant.granted, Ordering::AcqRel);
            self.lapsed.fetch_add(lapsed, Ordering::AcqRel);
        } else {
            self.tokens.fetch_add(grant.granted, Ordering::AcqRel);
        }
        self.used.store(grant.used, Ordering::Release);
        // What the answer counted is in `used` now; what was admitted since is not.
        let _ = self
            .fallback_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(reported))
            });
        if grant.granted > 0 {
            self.expires_ns
                .store(now + ttl.as_nanos() as u64, Ordering::Release);
        } else {
            self.denied_until_ns.store(
                now + grant.retry_after.as_nanos().max(1) as u64,
                Ordering::Release,
            );
        }
        self.done();
    }

    /// The store did not answer: waiting requests decide locally.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::AcqRel);
        self.done();
    }

    fn done(&self) {
        self.asking.store(false, Ordering::Release);
        self.filled.notify_waiters();
    }

    /// Takes one unit, waiting for the store until `deadline` when the lease is empty.
    /// `None`: no answer in time, or the ask failed (decide locally). `ask` sends an ask.
    pub async fn take_or_wait(
        &self,
        low: u64,
        deadline: tokio::time::Instant,
        ask: impl Fn(),
    ) -> Option<Take> {
        // A unit spent that leaves the lease low asks for more, without waiting for it.
        let asked = |t: Take| {
            if t == (Take::Granted { ask: true }) && self.start_asking() {
                ask();
            }
            match t {
                Take::Granted { .. } => Take::Granted { ask: false },
                t => t,
            }
        };
        let failures = self.failures.load(Ordering::Acquire);
        loop {
            let filled = self.filled.notified();
            tokio::pin!(filled);
            filled.as_mut().enable();
            // Another request may have spent what the last answer brought: ask again, until
            // the deadline.
            match self.take(now_ns(), low) {
                Take::Empty => {}
                decided => return Some(asked(decided)),
            }
            if self.failures.load(Ordering::Acquire) != failures {
                return None;
            }
            if self.start_asking() {
                ask();
            }
            tokio::time::timeout_at(deadline, filled).await.ok()?;
        }
    }

    /// Quotas, store unreachable: admits one request locally while this instance's share of
    /// what the fleet had left at the last answer lasts.
    pub fn take_fallback_share(&self, limit: u64, nodes: u32) -> bool {
        let left = limit.saturating_sub(self.used.load(Ordering::Acquire));
        let share = left / u64::from(nodes.max(1));
        self.fallback_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < share).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether an ask is on its way.
    pub fn is_asking(&self) -> bool {
        self.asking.load(Ordering::Acquire)
    }

    /// Quotas: the fleet's count at the last answer.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// No units, no refusal running, nothing to hand back, no ask on its way.
    pub fn is_idle(&self, now: u64) -> bool {
        self.available(now) == 0
            && now >= self.denied_until_ns.load(Ordering::Acquire)
            && self.lapsed.load(Ordering::Acquire) == 0
            && !self.asking.load(Ordering::Acquire)
    }

    /// Units leased and not yet spent (for tests and status).
    pub fn available(&self, now: u64) -> u64 {
        if now < self.expires_ns.load(Ordering::Acquire) {
            self.tokens.load(Ordering::Acquire)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn in_ms(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    fn grant(granted: u64, retry_ms: u64) -> Grant {
        Grant {
            granted,
            retry_after: Duration::from_millis(retry_ms),
            used: 0,
        }
    }

    #[test]
    fn leased_units_are_spent_then_asked_for_again() {
        let l = Lease::default();
        let t0 = 1000 * MS;
        assert_eq!(l.take(t0, 1), Take::Empty);
        assert!(l.start_asking());
        assert!(!l.start_asking(), "one ask at a time");
        l.fill(grant(3, 0), 0, t0, Duration::from_secs(1));
        assert_eq!(l.take(t0, 1), Take::Granted { ask: false });
        assert_eq!(l.take(t0, 1), Take::Granted { ask: true });
        assert_eq!(l.take(t0, 1), Take::Granted { ask: true });
        assert_eq!(l.take(t0, 1), Take::Empty);
    }

    #[test]
    fn a_refusal_from_the_store_is_remembered_until_it_ends() {
        let l = Lease::default();
        let t0 = 1000 * MS;
        l.fill(grant(0, 40), 0, t0, Duration::from_secs(1));
        assert_eq!(
            l.take(t0 + 10 * MS, 0),
            Take::Denied(Duration::from_millis(30))
        );
        assert_eq!(l.take(t0 + 40 * MS, 0), Take::Empty);
    }

    #[test]
    fn units_left_unspent_too_long_are_dropped() {
        let l = Lease::default();
        let t0 = 1000 * MS;
        l.fill(grant(5, 0), 0, t0, Duration::from_millis(100));
        assert_eq!(l.available(t0 + 99 * MS), 5);
        assert_eq!(l.take(t0 + 100 * MS, 0), Take::Empty);
        // A new grant after expiry replaces the stale units rather than adding to them, and
        // the lapsed ones are handed back with the next ask.
        l.fill(grant(2, 0), 0, t0 + 200 * MS, Duration::from_millis(100));
        assert_eq!(l.available(t0 + 200 * MS), 2);
        assert_eq!(l.take_lapsed(), 5);
        assert_eq!(l.take(t0 + 300 * MS, 0), Take::Empty);
        assert_eq!(l.take_lapsed(), 2);
        assert_eq!(l.take_lapsed(), 0);
    }

    #[tokio::test]
    async fn a_request_waiting_on_a_failed_ask_decides_locally_at_once() {
        let l = Arc::new(Lease::default());
        let failer = l.clone();
        let asks = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let got = l
            .take_or_wait(0, in_ms(5000), || {
                asks.fetch_add(1, Ordering::AcqRel);
                let failer = failer.clone();
                tokio::spawn(async move { failer.failed() });
            })
            .await;
        assert_eq!(got, None);
        assert_eq!(
            asks.load(Ordering::Acquire),
            1,
            "no second ask to a failing store"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn quota_shares_left_count_what_the_answer_did_not_report_yet() {
        let l = Lease::default();
        let answer = |used| Grant {
            granted: 0,
            retry_after: Duration::ZERO,
            used,
        };
        l.fill(answer(90), 0, 1000 * MS, Duration::from_secs(1));
        // 10 left for 2 instances: 5 each.
        assert_eq!((0..8).filter(|_| l.take_fallback_share(100, 2)).count(), 5);
        // An answer that counted 3 of those 5 leaves 2 pending: 2 more fit in the share of
        // what is left (100 - 93) / 2 = 3.
        l.fill(answer(93), 3, 1000 * MS, Duration::from_secs(1));
        assert_eq!((0..8).filter(|_| l.take_fallback_share(100, 2)).count(), 1);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_unit_the_store_sends_or_gives_up_in_time() {
        let l = Arc::new(Lease::default());
        let filler = l.clone();
        let got = l
            .take_or_wait(0, in_ms(5000), move || {
                let filler = filler.clone();
                tokio::spawn(async move {
                    filler.fill(grant(1, 0), 0, now_ns(), Duration::from_secs(1));
                });
            })
            .await;
        assert_eq!(got, Some(Take::Granted { ask: false }));
        let silent = Lease::default();
        let started = Instant::now();
        let got = silent.take_or_wait(0, in_ms(20), || {}).await;
        assert_eq!(got, None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
