//! Health registry and the one checker for all pools. A backend named by many pools with the
//! same check is probed once; thousands of pools still mean one scheduling loop, which wakes
//! only when the earliest probe is due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::model::HealthConfig;
use crate::snapshot::SharedSnapshot;

use super::probe;
use super::state::{BackendState, Thresholds, Transition};

/// A backend as the health system sees it: its address and how it is checked (if at all).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthKey {
    pub addr: SocketAddr,
    pub check: Option<HealthConfig>,
}

/// One actively checked backend; `users` names the tenant/pool pairs for log lines.
#[derive(Debug)]
pub struct HealthTarget {
    pub addr: SocketAddr,
    pub check: HealthConfig,
    pub state: Arc<BackendState>,
    pub users: Vec<String>,
}

/// Backend states of one config generation, keyed so that the next generation can take over
/// the state of every backend that did not change.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    states: HashMap<HealthKey, (Arc<BackendState>, Vec<String>)>,
    /// One state per address, for a backend whose check changed on a reload.
    by_addr: HashMap<SocketAddr, Arc<BackendState>>,
}

impl HealthRegistry {
    /// The state for `key`: this generation's if already created, else the previous
    /// generation's, else a fresh one.
    pub fn state_for(
        &mut self,
        key: HealthKey,
        user: String,
        previous: Option<&HealthRegistry>,
    ) -> Arc<BackendState> {
        let addr = key.addr;
        let entry = self.states.entry(key).or_insert_with_key(|key| {
            let checked = key.check.is_some();
            let state = match previous {
                Some(p) => match p.states.get(key) {
                    Some((same, _)) => same.clone(),
                    // Same backend, another check: it keeps its verdict until the new check's
                    // first probe decides, so editing a check never empties a pool.
                    None => Arc::new(match p.by_addr.get(&key.addr) {
                        Some(before) => BackendState::seeded(checked, before),
                        None => BackendState::new(checked),
                    }),
                },
                None => Arc::new(BackendState::new(checked)),
            };
            (state, Vec::new())
        });
        entry.1.push(user);
        let state = entry.0.clone();
        self.by_addr.entry(addr).or_insert_with(|| state.clone());
        state
    }

    /// Registers a backend state carried over as is (its tenant did not change).
    pub fn adopt(&mut self, key: HealthKey, state: &Arc<BackendState>, user: String) {
        self.by_addr
            .entry(key.addr)
            .or_insert_with(|| state.clone());
        self.states
            .entry(key)
            .or_insert_with(|| (state.clone(), Vec::new()))
            .1
            .push(user);
    }

    /// Every actively checked backend once.
    pub fn targets(&self) -> Vec<Arc<HealthTarget>> {
        self.states
            .iter()
            .filter_map(|(key, (state, users))| {
                key.check.as_ref().map(|check| {
                    Arc::new(HealthTarget {
                        addr: key.addr,
                        check: check.clone(),
                        state: state.clone(),
                        users: users.clone(),
                    })
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

/// Probes running at once, at most; more wait their turn rather than flooding the machine.
const MAX_CONCURRENT_PROBES: usize = 256;
/// The loop looks at the snapshot at least this often, to pick up a reload's new targets.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// The background service that probes every target of the current snapshot.
pub struct HealthChecker {
    snapshot: Arc<SharedSnapshot>,
}

impl HealthChecker {
    pub fn new(snapshot: Arc<SharedSnapshot>) -> Self {
        Self { snapshot }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let mut schedule = Schedule::default();
        loop {
            let snap = self.snapshot.load();
            schedule.sync(snap.generation, &snap.health_targets);
            let now = Instant::now();
            for target in schedule.take_due(now) {
                let permits = permits.clone();
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    check_once(&target).await;
                });
            }
            let wake = schedule
                .next_due()
                .map_or(now + MAX_SLEEP, |t| t.min(now + MAX_SLEEP));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

async fn check_once(target: &HealthTarget) {
    let check = &target.check;
    let result = probe::run(target.addr, &check.probe, check.timeout).await;
    let thresholds = Thresholds {
        healthy_after: check.healthy_after,
        unhealthy_after: check.unhealthy_after,
        passive_failures: u32::MAX,
        passive_cooldown_ms: 0,
        actively_checked: true,
    };
    if result.is_err() {
        crate::metrics::get().health_check_failed(&target.users, &target.addr.to_string());
    }
    match target.state.record_probe(result.is_ok(), &thresholds) {
        Transition::BecameHealthy => tracing::info!(
            backend = %target.addr, used_by = %target.users.join(","),
            "backend is healthy"
        ),
        Transition::BecameUnhealthy => tracing::warn!(
            backend = %target.addr, used_by = %target.users.join(","),
            reason = result.err().unwrap_or_default(),
            "backend is unhealthy: no new requests go to it"
        ),
        Transition::None => {}
    }
}

/// When each target is due next. Rebuilt on a new generation, keeping the due time of targets
/// that stayed so a reload neither skips nor bunches probes.
#[derive(Default)]
struct Schedule {
    generation: Option<u64>,
    targets: Vec<Arc<HealthTarget>>,
    due: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Schedule {
    fn sync(&mut self, generation: u64, targets: &[Arc<HealthTarget>]) {
        if self.generation == Some(generation) {
            return;
        }
        let now = Instant::now();
        let mut old_due: HashMap<(SocketAddr, &HealthConfig), Instant> = HashMap::new();
        for Reverse((when, i)) in self.due.iter() {
            let t = &self.targets[*i];
            old_due.insert((t.addr, &t.check), *when);
        }
        let mut due = BinaryHeap::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            // New targets are due at once: they are probed before they take traffic.
            let when = old_due.get(&(t.addr, &t.check)).copied().unwrap_or(now);
            due.push(Reverse((when, i)));
        }
        self.due = due;
        self.targets = targets.to_vec();
        self.generation = Some(generation);
    }

    fn take_due(&mut self, now: Instant) -> Vec<Arc<HealthTarget>> {
        let mut out = Vec::new();
        while let Some(Reverse((when, i))) = self.due.peek().copied() {
            if when > now {
                break;
            }
            self.due.pop();
            let target = self.targets[i].clone();
            // The floor keeps a zero interval (rejected by validation anyway) from spinning.
            let interval = target.check.interval.max(Duration::from_millis(10));
            self.due.push(Reverse((now + interval, i)));
            out.push(target);
        }
        out
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((when, _))| *when)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Probe;

    fn key(interval_s: u64) -> HealthKey {
        HealthKey {
            addr: "192.0.2.1:80".parse().unwrap(),
            check: Some(HealthConfig {
                probe: Probe::Tcp,
                interval: Duration::from_secs(interval_s),
                timeout: Duration::from_secs(1),
                healthy_after: 2,
                unhealthy_after: 3,
            }),
        }
    }

    fn th() -> Thresholds {
        Thresholds {
            healthy_after: 2,
            unhealthy_after: 3,
            passive_failures: 2,
            passive_cooldown_ms: 1000,
            actively_checked: true,
        }
    }

    #[test]
    fn a_changed_check_keeps_the_backends_verdict_until_its_first_probe() {
        let mut before = HealthRegistry::default();
        let state = before.state_for(key(5), "t/p".into(), None);
        state.record_probe(true, &th());
        assert!(state.is_healthy());

        let mut after = HealthRegistry::default();
        let edited = after.state_for(key(10), "t/p".into(), Some(&before));
        assert!(
            !Arc::ptr_eq(&state, &edited),
            "a new check gets its own state"
        );
        assert!(edited.is_healthy(), "still serving after the edit");
        assert!(!edited.was_probed());
        edited.record_probe(false, &th());
        assert!(
            !edited.is_healthy(),
            "the new check's first probe decides alone"
        );

        // A down backend stays down under its new check.
        let mut again = HealthRegistry::default();
        assert!(!again
            .state_for(key(20), "t/p".into(), Some(&after))
            .is_healthy());
        // A backend never seen before waits for its first probe.
        let mut other = HealthRegistry::default();
        let mut fresh = key(5);
        fresh.addr = "192.0.2.2:80".parse().unwrap();
        assert!(!other
            .state_for(fresh, "t/p".into(), Some(&before))
            .is_healthy());
    }
}
