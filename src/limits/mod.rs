//! Per-tenant limits: request rate (GCRA), rate per client address, calendar quotas, body size
//! and concurrency. The proxy asks one question per request, `TenantLimiter::admit`, and gets
//! a permit or a refusal ready to send. With a fleet (`[cluster]`), the rate, the rate per
//! client address and the quota are counted once for every instance (see `fleet`).

mod client_ip;
pub mod fleet;
mod gcra;
mod per_ip;
mod persist;
mod quota;
mod shared;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use client_ip::{address_block, client_ip};
pub use gcra::{Cell, Rate, Verdict};
pub use per_ip::PerIp;
pub use persist::{QuotaPersister, QuotaState};
pub use quota::{window, QuotaCounter, QuotaVerdict};

use crate::config::model::{LimitsConfig, RateConfig, Scope};
use fleet::Fleet;
use shared::{SharedPerIp, SharedQuota, SharedRate};

/// Addresses tracked per tenant for `per_client_ip`, at most.
pub const PER_IP_CAPACITY: usize = 100_000;

/// What the limiter needs to know about a request.
pub struct Request {
    pub client_ip: Option<IpAddr>,
    /// `Content-Length`, when the client sent one.
    pub content_length: Option<u64>,
}

/// Why a request is refused, with what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Which limit: rate, per_client_ip, quota, max_body, max_concurrent.
    pub limit: &'static str,
    pub retry_after: Option<Duration>,
    /// `RateLimit-Policy` and `RateLimit` values (IETF draft), for 429s.
    pub policy: Option<String>,
    pub state: Option<String>,
}

/// Holds a concurrency slot for as long as the request lives.
pub struct Permit {
    /// The tenant's in-flight counter; shared with the limiter that replaces this one on a
    /// reload, so requests admitted before a reload still count against `max_concurrent`.
    concurrent: Option<Arc<AtomicU32>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(in_flight) = &self.concurrent {
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A limiter's answer, and whether the fleet's store failed to give it in time (so it was
/// decided locally).
pub struct Decision {
    pub outcome: Result<Permit, Refusal>,
    pub fell_back: bool,
}

/// One tenant's limits and their counters. Kept across reloads while the limits stay the same.
pub struct TenantLimiter {
    pub config: LimitsConfig,
    /// The rates counted here (`None` when the fleet counts them).
    rate: Option<(Rate, Arc<Cell>)>,
    per_ip: Option<(Rate, Arc<PerIp>)>,
    /// The quota counted here (`None` when the fleet counts it).
    pub quota: Option<QuotaCounter>,
    shared: Option<SharedLimits>,
    in_flight: Arc<AtomicU32>,
    /// The limiter's own clock: GCRA works in nanoseconds since this instant.
    epoch: Instant,
}

impl std::fmt::Debug for TenantLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The limits a fleet counts together.
struct SharedLimits {
    fleet: Arc<dyn Fleet>,
    rate: Option<Arc<SharedRate>>,
    per_ip: Option<Arc<SharedPerIp>>,
    quota: Option<Arc<SharedQuota>>,
}

impl TenantLimiter {
    /// `tenant`'s limiter; shared by the process's fleet when there is one and the limits'
    /// scope is not `local`.
    pub fn new(tenant: &str, config: LimitsConfig) -> Self {
        let fleet = fleet::fleet().filter(|_| config.scope != Some(Scope::Local));
        let nodes = fleet.map_or(1, |f| f.expected_nodes().max(1));
        // While the store is unreachable each instance admits its share of the rate.
        let local = |r: &RateConfig| {
            Rate::new(
                r.requests,
                r.per * nodes,
                (r.burst / u64::from(nodes)).max(1),
            )
        };
        let shared = fleet.map(|fleet| {
            let key = |kind: &str| format!("{}{kind}:{tenant}", fleet.key_prefix());
            let full = |r: &RateConfig| Rate::new(r.requests, r.per, r.burst);
            SharedLimits {
                rate: config
                    .rate
                    .as_ref()
                    .map(|r| Arc::new(SharedRate::new(key("rate"), &full(r), local(r)))),
                per_ip: config.per_client_ip.as_ref().map(|r| {
                    let prefix = format!("{}:", key("ip"));
                    Arc::new(SharedPerIp::new(prefix, full(r), local(r), PER_IP_CAPACITY))
                }),
                quota: config.quota.map(|q| {
                    let prefix = format!("{}:", key("quota"));
                    Arc::new(SharedQuota::new(prefix, q.per, q.requests))
                }),
                fleet: fleet.clone(),
            }
        });
        let here = shared.is_none();
        Self {
            rate: config
                .rate
                .as_ref()
                .filter(|_| here)
                .map(|r| (local(r), Arc::new(Cell::default()))),
            per_ip: config
                .per_client_ip
                .as_ref()
                .filter(|_| here)
                .map(|r| (local(r), Arc::new(PerIp::new(PER_IP_CAPACITY)))),
            quota: config
                .quota
                .filter(|_| here)
                .map(|q| QuotaCounter::new(q.per)),
            shared,
            in_flight: Arc::new(AtomicU32::new(0)),
            epoch: Instant::now(),
            config,
        }
    }

    /// Whether the fleet counts this tenant's rates and quota.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The quota's window and the requests counted in it (by the fleet, at its last answer,
    /// when shared).
    pub fn quota_used(&self) -> Option<(u64, u64)> {
        match &self.shared {
            Some(s) => s.quota.as_ref().map(|q| q.snapshot()),
            None => self.quota.as_ref().map(QuotaCounter::snapshot),
        }
    }

    /// A limiter for `config` that keeps what it can of `previous`: everything when the limits
    /// are the same; otherwise the requests in flight, the quota count, and the counters of
    /// each rate whose own settings did not change.
    pub fn carry_over(
        tenant: &str,
        config: LimitsConfig,
        previous: Option<&Arc<TenantLimiter>>,
    ) -> Arc<Self> {
        match previous {
            Some(p) if p.config == config => p.clone(),
            Some(p) => {
                let mut next = TenantLimiter::new(tenant, config);
                // Counters are in nanoseconds since the epoch: kept counters need the old one.
                next.epoch = p.epoch;
                next.in_flight = p.in_flight.clone();
                // The scope decides what the local cells count (all, or a fallback share).
                let same_scope = p.config.scope == next.config.scope;
                if same_scope && p.config.rate == next.config.rate {
                    next.rate = p.rate.clone();
                }
                if same_scope && p.config.per_client_ip == next.config.per_client_ip {
                    next.per_ip = p.per_ip.clone();
                }
                // Shared limits whose settings stayed keep their leases, debts and local shares.
                if let (Some(old), Some(new)) = (&p.shared, &mut next.shared) {
                    if same_scope && p.config.rate == next.config.rate {
                        new.rate = old.rate.clone();
                    }
                    if same_scope && p.config.per_client_ip == next.config.per_client_ip {
                        new.per_ip = old.per_ip.clone();
                    }
                    if same_scope && p.config.quota == next.config.quota {
                        new.quota = old.quota.clone();
                    }
                }
                if let (Some(old), Some(new)) = (&p.quota, &next.quota) {
                    if old.kind() == new.kind() {
                        let (window, used) = old.snapshot();
                        new.restore(window, used, SystemTime::now());
                    }
                }
                Arc::new(next)
            }
            None => Arc::new(TenantLimiter::new(tenant, config)),
        }
    }

    fn now_ns(&self) -> u64 {
        // Offset by a day so "never seen" (TAT 0) is always in the past.
        self.epoch.elapsed().as_nanos() as u64 + 86_400_000_000_000
    }

    /// Decides one request: a permit that holds its concurrency slot, or a refusal.
    pub async fn admit(&self, req: &Request) -> Decision {
        self.admit_at(req, SystemTime::now()).await
    }

    async fn admit_at(&self, req: &Request, now: SystemTime) -> Decision {
        let mut fell_back = false;
        let outcome = self.decide(req, now, &mut fell_back).await;
        Decision { outcome, fell_back }
    }

    async fn decide(
        &self,
        req: &Request,
        now: SystemTime,
        fell_back: &mut bool,
    ) -> Result<Permit, Refusal> {
        let c = &self.config;
        if let (Some(max), Some(len)) = (c.max_body, req.content_length) {
            if len > max {
                return Err(refusal(413, "max_body", None));
            }
        }
        let mut permit = Permit { concurrent: None };
        if let Some(max) = c.max_concurrent {
            if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(refusal(503, "max_concurrent", Some(Duration::from_secs(1))));
            }
            permit.concurrent = Some(self.in_flight.clone());
        }
        // One deadline for every shared limit of the request: it never waits longer in all.
        let shared = self
            .shared
            .as_ref()
            .map(|s| (s, tokio::time::Instant::now() + s.fleet.timeout()));
        // The client's own limit first: requests it refuses must not use up the tenant's
        // rate, or one abusive client would starve every other client of the tenant.
        if let Some(ip) = req.client_ip {
            let fleet = shared.and_then(|(s, d)| Some((s.per_ip.as_ref()?, &s.fleet, d)));
            let deny = match (fleet, &self.per_ip) {
                (Some((per_ip, fleet, d)), _) => {
                    fleet_deny(per_ip.check(ip, fleet, d).await, fell_back)
                }
                (None, Some((rate, cells))) => local_deny(cells.check(ip, rate, self.now_ns())),
                (None, None) => None,
            };
            if let Some(retry_after) = deny {
                return Err(rate_refusal("per_client_ip", c.per_client_ip, retry_after));
            }
        }
        let fleet = shared.and_then(|(s, d)| Some((s.rate.as_ref()?, &s.fleet, d)));
        let deny = match (fleet, &self.rate) {
            (Some((rate, fleet, d)), _) => fleet_deny(rate.check(fleet, d).await, fell_back),
            (None, Some((rate, cell))) => local_deny(cell.check(rate, self.now_ns())),
            (None, None) => None,
        };
        if let Some(retry_after) = deny {
            return Err(rate_refusal("rate", c.rate, retry_after));
        }
        if let Some(cfg) = c.quota {
            let spent = match shared.and_then(|(s, d)| Some((s.quota.as_ref()?, &s.fleet, d))) {
                Some((q, fleet, d)) => fleet_deny(q.check(fleet, now, d).await, fell_back),
                None => match self.quota.as_ref().map(|q| q.take(cfg.requests, now)) {
                    Some(QuotaVerdict::Spent { resets_in }) => Some(resets_in),
                    _ => None,
                },
            };
            if let Some(resets_in) = spent {
                let mut r = refusal(429, "quota", Some(resets_in));
                let window = match cfg.per {
                    crate::config::model::QuotaWindow::Day => 86_400,
                    crate::config::model::QuotaWindow::Month => 2_592_000,
                };
                r.policy = Some(format!("\"quota\";q={};w={window}", cfg.requests));
                r.state = Some(format!("\"quota\";r=0;t={}", ceil_secs(resets_in)));
                return Err(r);
            }
        }
        Ok(permit)
    }
}

fn fleet_deny(checked: shared::Checked, fell_back: &mut bool) -> Option<Duration> {
    *fell_back |= checked.fell_back;
    checked.deny
}

fn local_deny(verdict: Verdict) -> Option<Duration> {
    match verdict {
        Verdict::Allow { .. } => None,
        Verdict::Deny { retry_after } => Some(retry_after),
    }
}

fn refusal(status: u16, limit: &'static str, retry_after: Option<Duration>) -> Refusal {
    Refusal {
        status,
        limit,
        retry_after,
        policy: None,
        state: None,
    }
}

/// A 429 for a rate; its policy header states the rate as configured (with a fleet, for the
/// whole fleet).
fn rate_refusal(limit: &'static str, rate: Option<RateConfig>, retry_after: Duration) -> Refusal {
    let mut r = refusal(429, limit, Some(retry_after));
    r.policy =
        rate.map(|rate| format!("\"{limit}\";q={};w={}", rate.requests, ceil_secs(rate.per)));
    r.state = Some(format!("\"{limit}\";r=0;t={}", ceil_secs(retry_after)));
    r
}

/// Whole seconds, rounded up (Retry-After has no fractions; 0 would invite a retry storm).
pub fn ceil_secs(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(1_000_000_000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{QuotaConfig, QuotaWindow, RateConfig};

    fn limiter(config: LimitsConfig) -> Arc<TenantLimiter> {
        Arc::new(TenantLimiter::new("t", config))
    }

    /// A local limiter never waits: its answer is ready on the first poll.
    trait AdmitNow {
        fn admit_now(&self, req: &Request) -> Result<Permit, Refusal>;
    }

    impl AdmitNow for Arc<TenantLimiter> {
        fn admit_now(&self, req: &Request) -> Result<Permit, Refusal> {
            use std::future::Future;
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::pin!(self.admit(req)).poll(&mut cx) {
                std::task::Poll::Ready(d) => d.outcome,
                std::task::Poll::Pending => unreachable!("a local limiter never waits"),
            }
        }
    }

    fn req(ip: &str) -> Request {
        Request {
            client_ip: ip.parse().ok(),
            content_length: None,
        }
    }

    #[test]
    fn refusals_carry_status_and_headers() {
        let l = limiter(LimitsConfig {
            rate: Some(RateConfig {
                requests: 2,
                per: Duration::from_secs(10),
                burst: 2,
            }),
            max_body: Some(10),
            ..Default::default()
        });
        let big = Request {
            client_ip: None,
            content_length: Some(11),
        };
        assert_eq!(l.admit_now(&big).err().map(|r| r.status), Some(413));
        assert!(l.admit_now(&req("192.0.2.1")).is_ok());
        assert!(l.admit_now(&req("192.0.2.1")).is_ok());
        let r = l.admit_now(&req("192.0.2.1")).err().unwrap();
        assert_eq!((r.status, r.limit), (429, "rate"));
        assert_eq!(r.policy.as_deref(), Some("\"rate\";q=2;w=10"));
        assert!(r.retry_after.is_some_and(|d| d <= Duration::from_secs(5)));
    }

    #[test]
    fn the_concurrency_cap_frees_slots_when_requests_end() {
        let l = limiter(LimitsConfig {
            max_concurrent: Some(1),
            ..Default::default()
        });
        let first = l.admit_now(&req("192.0.2.1")).unwrap();
        let r = l.admit_now(&req("192.0.2.1")).err().unwrap();
        assert_eq!(
            (r.status, r.retry_after),
            (503, Some(Duration::from_secs(1)))
        );
        drop(first);
        assert!(l.admit_now(&req("192.0.2.1")).is_ok());
    }

    #[test]
    fn a_reload_keeps_counters_of_unchanged_limits_and_quota_counts_of_changed_ones() {
        let quota = |n| LimitsConfig {
            quota: Some(QuotaConfig {
                requests: n,
                per: QuotaWindow::Day,
            }),
            ..Default::default()
        };
        let l = limiter(quota(3));
        for _ in 0..3 {
            assert!(l.admit_now(&req("192.0.2.1")).is_ok());
        }
        let same = TenantLimiter::carry_over("t", quota(3), Some(&l));
        assert!(Arc::ptr_eq(&same, &l));
        assert_eq!(
            same.admit_now(&req("192.0.2.1")).err().map(|r| r.limit),
            Some("quota")
        );
        let raised = TenantLimiter::carry_over("t", quota(4), Some(&l));
        assert!(raised.admit_now(&req("192.0.2.1")).is_ok());
        assert!(raised.admit_now(&req("192.0.2.1")).is_err());
    }

    fn rate(requests: u64, secs: u64) -> Option<RateConfig> {
        Some(RateConfig {
            requests,
            per: Duration::from_secs(secs),
            burst: requests,
        })
    }

    #[test]
    fn one_clients_refused_requests_do_not_use_up_the_tenants_rate() {
        let l = limiter(LimitsConfig {
            rate: rate(5, 60),
            per_client_ip: rate(2, 60),
            ..Default::default()
        });
        let outcomes: Vec<_> = (0..20)
            .map(|_| l.admit_now(&req("192.0.2.66")).err().map(|r| r.limit))
            .collect();
        assert_eq!(&outcomes[..2], &[None, None]);
        assert!(outcomes[2..].iter().all(|o| *o == Some("per_client_ip")));
        for other in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert!(l.admit_now(&req(other)).is_ok(), "{other} starved");
        }
    }

    #[test]
    fn a_reload_that_changes_one_limit_keeps_in_flight_and_other_counters() {
        let config = |max_body| LimitsConfig {
            rate: rate(2, 60),
            max_concurrent: Some(2),
            max_body: Some(max_body),
            ..Default::default()
        };
        let old = limiter(config(10));
        let held = [
            old.admit_now(&req("192.0.2.1")).unwrap(),
            old.admit_now(&req("192.0.2.1")).unwrap(),
        ];
        let new = TenantLimiter::carry_over("t", config(20), Some(&old));
        assert!(!Arc::ptr_eq(&new, &old));
        let r = new.admit_now(&req("192.0.2.1")).err().unwrap();
        assert_eq!(
            r.limit, "max_concurrent",
            "requests admitted before still count"
        );
        drop(held);
        let r = new.admit_now(&req("192.0.2.1")).err().unwrap();
        assert_eq!(r.limit, "rate", "the unchanged rate kept its count");
    }
}
