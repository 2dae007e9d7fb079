//! Live state of one backend: health verdict, failure streaks and in-flight requests.
//! Shared (via `Arc`) by every pool that names the same backend with the same health check,
//! and carried from one config generation to the next so a reload forgets nothing.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds on a monotonic clock private to this process; 0 never occurs after start.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(|| Instant::now() - Duration::from_millis(1));
    start.elapsed().as_millis() as u64
}

/// What the thresholds are for one backend; comes from the pool's `health` and `passive` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// Consecutive passive failures (connect errors, timeouts) that take the backend out.
    pub passive_failures: u32,
    /// How long a passively failed backend sits out when no active check can bring it back.
    pub passive_cooldown_ms: u64,
    /// Whether an active check decides when the backend comes back.
    pub actively_checked: bool,
}

#[derive(Debug)]
pub struct BackendState {
    /// The active verdict. Starts false for actively checked backends: a backend is probed
    /// before it takes traffic.
    healthy: AtomicBool,
    /// Set once the first active probe has answered.
    probed: AtomicBool,
    active_fails: AtomicU32,
    active_oks: AtomicU32,
    passive_fails: AtomicU32,
    /// While `now_ms() < down_until`, the backend sits out after passive failures.
    down_until: AtomicU64,
    inflight: AtomicU32,
}

/// What an active probe result changed, so the checker can log transitions only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

impl BackendState {
    pub fn new(actively_checked: bool) -> Self {
        Self {
            healthy: AtomicBool::new(!actively_checked),
            probed: AtomicBool::new(false),
            active_fails: AtomicU32::new(0),
            active_oks: AtomicU32::new(0),
            passive_fails: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
        }
    }

    /// A fresh state for a backend whose active check changed: it starts with the verdict
    /// `before` had (usable or not, passive ejection included) and unprobed, so the new
    /// check's first probe decides alone.
    pub fn seeded(actively_checked: bool, before: &BackendState) -> Self {
        let state = Self::new(actively_checked);
        if actively_checked {
            state.healthy.store(before.healthy.load(Relaxed), Relaxed);
        }
        state
            .down_until
            .store(before.down_until.load(Relaxed), Relaxed);
        state
    }

    /// Whether the balancer may pick this backend now.
    pub fn is_usable(&self, now_ms: u64) -> bool {
        self.healthy.load(Relaxed) && now_ms >= self.down_until.load(Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn was_probed(&self) -> bool {
        self.probed.load(Relaxed)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Relaxed)
    }

    /// Counts a request against the backend until the guard drops.
    pub fn start_request(self: &std::sync::Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Relaxed);
        InflightGuard(self.clone())
    }

    /// An active probe answered. The very first answer decides alone, so a new backend is
    /// usable as soon as one probe passes rather than after `healthy_after` intervals.
    pub fn record_probe(&self, passed: bool, t: &Thresholds) -> Transition {
        let first = !self.probed.swap(true, Relaxed);
        let was = self.healthy.load(Relaxed);
        if passed {
            self.active_fails.store(0, Relaxed);
            let oks = self.active_oks.fetch_add(1, Relaxed).saturating_add(1);
            if !was && (first || oks >= t.healthy_after) {
                self.passive_fails.store(0, Relaxed);
                self.down_until.store(0, Relaxed);
                self.healthy.store(true, Relaxed);
                return Transition::BecameHealthy;
            }
        } else {
            self.active_oks.store(0, Relaxed);
            let fails = self.active_fails.fetch_add(1, Relaxed).saturating_add(1);
            if was && (first || fails >= t.unhealthy_after) {
                self.healthy.store(false, Relaxed);
                return Transition::BecameUnhealthy;
            }
        }
        Transition::None
    }

    /// A connect failure or timeout seen while proxying; counted at once, without waiting for
    /// the next probe. Returns true when this failure took the backend out.
    pub fn record_passive_failure(&self, t: &Thresholds, now_ms: u64) -> bool {
        let fails = self.passive_fails.fetch_add(1, Relaxed).saturating_add(1);
        if fails < t.passive_failures {
            return false;
        }
        if t.actively_checked {
            self.active_oks.store(0, Relaxed);
            self.healthy.swap(false, Relaxed)
        } else {
            let was_down = now_ms < self.down_until.load(Relaxed);
            self.down_until
                .store(now_ms + t.passive_cooldown_ms, Relaxed);
            !was_down
        }
    }

    /// The backend answered; a streak of passive failures is broken.
    pub fn record_passive_success(&self) {
        // Read first: an unconditional store would bounce the cache line on every request.
        if self.passive_fails.load(Relaxed) != 0 {
            self.passive_fails.store(0, Relaxed);
        }
    }
}

/// Decrements the backend's in-flight count when the request is done with it.
#[derive(Debug)]
pub struct InflightGuard(std::sync::Arc<BackendState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn t(active: bool) -> Thresholds {
        Thresholds {
            healthy_after: 2,
            unhealthy_after: 3,
            passive_failures: 2,
            passive_cooldown_ms: 1000,
            actively_checked: active,
        }
    }

    #[test]
    fn actively_checked_backend_waits_for_its_first_probe() {
        let s = BackendState::new(true);
        assert!(!s.is_usable(10));
        assert_eq!(s.record_probe(true, &t(true)), Transition::BecameHealthy);
        assert!(s.is_usable(10));
    }

    #[test]
    fn thresholds_apply_after_the_first_probe() {
        let th = t(true);
        let s = BackendState::new(true);
        s.record_probe(true, &th);
        assert_eq!(s.record_probe(false, &th), Transition::None);
        assert_eq!(s.record_probe(false, &th), Transition::None);
        assert_eq!(s.record_probe(false, &th), Transition::BecameUnhealthy);
        assert!(!s.is_usable(10));
        assert_eq!(s.record_probe(true, &th), Transition::None);
        assert_eq!(s.record_probe(true, &th), Transition::BecameHealthy);
    }

    #[test]
    fn passive_failures_eject_for_a_cooldown_without_active_checks() {
        let th = t(false);
        let s = BackendState::new(false);
        assert!(!s.record_passive_failure(&th, 100));
        assert!(s.record_passive_failure(&th, 100));
        assert!(!s.is_usable(500));
        assert!(s.is_usable(1100));
        s.record_passive_success();
        assert!(!s.record_passive_failure(&th, 1200));
    }

    #[test]
    fn passive_failures_hand_over_to_the_active_check() {
        let th = t(true);
        let s = BackendState::new(true);
        s.record_probe(true, &th);
        s.record_passive_failure(&th, 1);
        assert!(s.record_passive_failure(&th, 1));
        assert!(!s.is_usable(1_000_000));
        s.record_probe(true, &th);
        assert_eq!(s.record_probe(true, &th), Transition::BecameHealthy);
        assert!(s.is_usable(2));
    }

    #[test]
    fn inflight_guard_counts() {
        let s = Arc::new(BackendState::new(false));
        let a = s.start_request();
        let b = s.start_request();
        assert_eq!(s.inflight(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.inflight(), 0);
    }
}
