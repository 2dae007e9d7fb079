//! Live state of one backend: its active health verdict and in-flight requests, shared (via
//! `Arc`) by every pool that names the same backend with the same health check; and each
//! pool's own passive verdict on it. Both are carried from one config generation to the next
//! so a reload forgets nothing.
//!
//! Passive failures are kept per pool: one tenant's timeouts (a slow endpoint, a pool with a
//! short `read_timeout`) say nothing about how the backend serves another tenant's pool.

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
    /// Probes passed so far: a pool's passive ejection ends after enough of them.
    passed_probes: AtomicU64,
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
            passed_probes: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
        }
    }

    /// A fresh state for a backend whose active check changed: it starts with the verdict
    /// `before` had and unprobed, so the new check's first probe decides alone.
    pub fn seeded(actively_checked: bool, before: &BackendState) -> Self {
        let state = Self::new(actively_checked);
        if actively_checked {
            state.healthy.store(before.healthy.load(Relaxed), Relaxed);
        }
        state
    }

    /// The active verdict (always true for a backend without an active check).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    fn passed_probes(&self) -> u64 {
        self.passed_probes.load(Relaxed)
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
            self.passed_probes.fetch_add(1, Relaxed);
            self.active_fails.store(0, Relaxed);
            let oks = self.active_oks.fetch_add(1, Relaxed).saturating_add(1);
            if !was && (first || oks >= t.healthy_after) {
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
}

/// One pool's passive verdict on one of its backends.
#[derive(Debug, Default)]
pub struct PassiveState {
    fails: AtomicU32,
    /// Without an active check: the backend sits out while `now_ms() < down_until`.
    down_until: AtomicU64,
    /// With an active check: it sits out until the backend has passed this many probes in
    /// all (0: not out).
    back_at_probe: AtomicU64,
}

impl PassiveState {
    /// Whether this pool keeps `backend` out now after passive failures.
    pub fn is_out(&self, backend: &BackendState, now_ms: u64) -> bool {
        let back_at = self.back_at_probe.load(Relaxed);
        now_ms < self.down_until.load(Relaxed)
            || (back_at != 0 && backend.passed_probes() < back_at)
    }

    /// A connect failure or timeout seen while proxying; counted at once, without waiting for
    /// the next probe. After `passive_failures` in a row the pool takes the backend out: until
    /// `healthy_after` more probes pass, or without an active check for the cooldown. Returns
    /// true when this failure took it out.
    pub fn record_failure(&self, backend: &BackendState, t: &Thresholds, now_ms: u64) -> bool {
        let fails = self.fails.fetch_add(1, Relaxed).saturating_add(1);
        if fails < t.passive_failures {
            return false;
        }
        let was_out = self.is_out(backend, now_ms);
        // A new streak is needed to take it out again once it is back.
        self.fails.store(0, Relaxed);
        if t.actively_checked {
            let back_at = backend.passed_probes() + u64::from(t.healthy_after.max(1));
            self.back_at_probe.store(back_at, Relaxed);
        } else {
            self.down_until
                .store(now_ms + t.passive_cooldown_ms, Relaxed);
        }
        !was_out
    }

    /// The backend answered; a streak of passive failures is broken.
    pub fn record_success(&self) {
        // Read first: an unconditional store would bounce the cache line on every request.
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
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
        assert!(!s.is_healthy());
        assert_eq!(s.record_probe(true, &t(true)), Transition::BecameHealthy);
        assert!(s.is_healthy());
    }

    #[test]
    fn thresholds_apply_after_the_first_probe() {
        let th = t(true);
        let s = BackendState::new(true);
        s.record_probe(true, &th);
        assert_eq!(s.record_probe(false, &th), Transition::None);
        assert_eq!(s.record_probe(false, &th), Transition::None);
        assert_eq!(s.record_probe(false, &th), Transition::BecameUnhealthy);
        assert!(!s.is_healthy());
        assert_eq!(s.record_probe(true, &th), Transition::None);
        assert_eq!(s.record_probe(true, &th), Transition::BecameHealthy);
    }

    #[test]
    fn passive_failures_eject_for_a_cooldown_without_active_checks() {
        let th = t(false);
        let (s, p) = (BackendState::new(false), PassiveState::default());
        assert!(!p.record_failure(&s, &th, 100));
        assert!(p.record_failure(&s, &th, 100));
        assert!(p.is_out(&s, 500));
        assert!(!p.is_out(&s, 1100));
        assert!(!p.record_failure(&s, &th, 1200), "a new streak is needed");
        p.record_success();
        assert!(!p.record_failure(&s, &th, 1200));
    }

    #[test]
    fn passive_failures_hand_over_to_the_active_check() {
        let th = t(true);
        let (s, p) = (BackendState::new(true), PassiveState::default());
        s.record_probe(true, &th);
        p.record_failure(&s, &th, 1);
        assert!(p.record_failure(&s, &th, 1));
        assert!(p.is_out(&s, 1_000_000));
        s.record_probe(true, &th);
        assert!(
            p.is_out(&s, 1_000_000),
            "healthy_after (2) probes must pass"
        );
        s.record_probe(true, &th);
        assert!(!p.is_out(&s, 2));
    }

    #[test]
    fn one_pools_failures_leave_another_pools_verdict_alone() {
        let th = t(true);
        let s = BackendState::new(true);
        s.record_probe(true, &th);
        let (mine, theirs) = (PassiveState::default(), PassiveState::default());
        mine.record_failure(&s, &th, 1);
        assert!(mine.record_failure(&s, &th, 1));
        assert!(mine.is_out(&s, 1));
        assert!(!theirs.is_out(&s, 1) && s.is_healthy());
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
