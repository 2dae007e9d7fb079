//! GCRA (the generic cell rate algorithm): a rate with a burst, kept as one number per key, the
//! theoretical arrival time (TAT). Lock-free for one key; pure arithmetic on nanoseconds so it
//! is tested with a fake clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `requests` per `per`, with up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds between requests at the steady rate.
    pub interval_ns: u64,
    /// How far ahead of now the TAT may run: (burst - 1) intervals.
    pub tolerance_ns: u64,
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
}

impl Rate {
    pub fn new(requests: u64, per: Duration, burst: u64) -> Rate {
        let requests = requests.max(1);
        let burst = burst.max(1);
        let interval_ns = u64::try_from(per.as_nanos() / u128::from(requests))
            .unwrap_or(u64::MAX)
            .max(1);
        Rate {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst - 1),
            requests,
            per,
            burst,
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; `remaining` more requests would be allowed right now.
    Allow { remaining: u64 },
    /// Refused; a request after `retry_after` would be allowed.
    Deny { retry_after: Duration },
}

/// One key's state: the TAT in nanoseconds on the limiter's clock (0 = never seen).
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    pub fn new(tat_ns: u64) -> Self {
        Self(AtomicU64::new(tat_ns))
    }

    pub fn tat(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Decides for a request at `now_ns`, updating the cell when it is allowed.
    pub fn check(&self, rate: &Rate, now_ns: u64) -> Verdict {
        let mut tat = self.0.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            let allow_at = start.saturating_sub(rate.tolerance_ns);
            if now_ns < allow_at {
                return Verdict::Deny {
                    retry_after: Duration::from_nanos(allow_at - now_ns),
                };
            }
            let next = start.saturating_add(rate.interval_ns);
            match self
                .0
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let used = next - now_ns;
                    let capacity = rate.tolerance_ns.saturating_add(rate.interval_ns);
                    return Verdict::Allow {
                        remaining: capacity.saturating_sub(used) / rate.interval_ns,
                    };
                }
                Err(seen) => tat = seen,
            }
        }
    }

    /// Whether the key is back to a full burst at `now_ns` (its state can be forgotten).
    pub fn is_idle(&self, now_ns: u64) -> bool {
        self.tat() <= now_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn allowed(cell: &Cell, rate: &Rate, at: u64) -> bool {
        matches!(cell.check(rate, at), Verdict::Allow { .. })
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let rate = Rate::new(10, Duration::from_secs(1), 5);
        let cell = Cell::default();
        let t0 = 100 * SEC;
        let burst = (0..20).filter(|_| allowed(&cell, &rate, t0)).count();
        assert_eq!(burst, 5);
        // Over the next 10 seconds, one request every millisecond: 10 per second pass.
        let passed = (1..=10_000)
            .filter(|ms| allowed(&cell, &rate, t0 + ms * SEC / 1000))
            .count();
        assert_eq!(passed, 100);
    }

    #[test]
    fn deny_says_when_to_come_back() {
        let rate = Rate::new(1, Duration::from_secs(2), 1);
        let cell = Cell::default();
        assert_eq!(cell.check(&rate, 10 * SEC), Verdict::Allow { remaining: 0 });
        assert_eq!(
            cell.check(&rate, 10 * SEC + SEC / 2),
            Verdict::Deny {
                retry_after: Duration::from_millis(1500)
            }
        );
        assert!(allowed(&cell, &rate, 12 * SEC));
    }

    #[test]
    fn remaining_counts_down_the_burst_and_idle_keys_are_full_again() {
        let rate = Rate::new(1, Duration::from_secs(1), 3);
        let cell = Cell::default();
        let t = 50 * SEC;
        assert_eq!(cell.check(&rate, t), Verdict::Allow { remaining: 2 });
        assert_eq!(cell.check(&rate, t), Verdict::Allow { remaining: 1 });
        assert!(!cell.is_idle(t + SEC));
        assert!(cell.is_idle(t + 2 * SEC));
    }
}
