//! Per-tenant limits: request rate (GCRA), rate per client address, calendar quotas, body size
//! and concurrency. The proxy asks one question per request, `Limiter::admit`, and gets a
//! permit or a refusal ready to send; a limiter shared by a fleet (Redis) would implement the
//! same trait without touching the proxy hooks.

mod client_ip;
mod gcra;
mod per_ip;
mod persist;
mod quota;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use client_ip::{address_block, client_ip};
pub use gcra::{Cell, Rate, Verdict};
pub use per_ip::PerIp;
pub use persist::{QuotaPersister, QuotaState};
pub use quota::{window, QuotaCounter, QuotaVerdict};

use crate::config::model::LimitsConfig;

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

pub trait Limiter: Send + Sync {
    fn admit(self: Arc<Self>, req: &Request) -> Result<Permit, Refusal>;
    /// The body limit, checked again while a streamed body arrives.
    fn max_body(&self) -> Option<u64>;
}

/// One tenant's limits and their counters. Kept across reloads while the limits stay the same.
pub struct TenantLimiter {
    pub config: LimitsConfig,
    rate: Option<(Rate, Arc<Cell>)>,
    per_ip: Option<(Rate, Arc<PerIp>)>,
    pub quota: Option<QuotaCounter>,
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

impl TenantLimiter {
    pub fn new(config: LimitsConfig) -> Self {
        let rate = |r: &crate::config::model::RateConfig| Rate::new(r.requests, r.per, r.burst);
        Self {
            rate: config
                .rate
                .as_ref()
                .map(|r| (rate(r), Arc::new(Cell::default()))),
            per_ip: config
                .per_client_ip
                .as_ref()
                .map(|r| (rate(r), Arc::new(PerIp::new(PER_IP_CAPACITY)))),
            quota: config.quota.map(|q| QuotaCounter::new(q.per)),
            in_flight: Arc::new(AtomicU32::new(0)),
            epoch: Instant::now(),
            config,
        }
    }

    /// A limiter for `config` that keeps what it can of `previous`: everything when the limits
    /// are the same; otherwise the requests in flight, the quota count, and the counters of
    /// each rate whose own settings did not change.
    pub fn carry_over(config: LimitsConfig, previous: Option<&Arc<TenantLimiter>>) -> Arc<Self> {
        match previous {
            Some(p) if p.config == config => p.clone(),
            Some(p) => {
                let mut next = TenantLimiter::new(config);
                // Counters are in nanoseconds since the epoch: kept counters need the old one.
                next.epoch = p.epoch;
                next.in_flight = p.in_flight.clone();
                if p.config.rate == next.config.rate {
                    next.rate = p.rate.clone();
                }
                if p.config.per_client_ip == next.config.per_client_ip {
                    next.per_ip = p.per_ip.clone();
                }
                if let (Some(old), Some(new)) = (&p.quota, &next.quota) {
                    if old.kind() == new.kind() {
                        let (window, used) = old.snapshot();
                        new.restore(window, used, SystemTime::now());
                    }
                }
                Arc::new(next)
            }
            None => Arc::new(TenantLimiter::new(config)),
        }
    }

    fn now_ns(&self) -> u64 {
        // Offset by a day so "never seen" (TAT 0) is always in the past.
        self.epoch.elapsed().as_nanos() as u64 + 86_400_000_000_000
    }

    fn admit_at(self: Arc<Self>, req: &Request, now: SystemTime) -> Result<Permit, Refusal> {
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
        let now_ns = self.now_ns();
        // The client's own limit first: requests it refuses must not use up the tenant's
        // rate, or one abusive client would starve every other client of the tenant.
        if let (Some((rate, cells)), Some(ip)) = (&self.per_ip, req.client_ip) {
            if let Verdict::Deny { retry_after } = cells.check(ip, rate, now_ns) {
                return Err(rate_refusal("per_client_ip", rate, retry_after));
            }
        }
        if let Some((rate, cell)) = &self.rate {
            if let Verdict::Deny { retry_after } = cell.check(rate, now_ns) {
                return Err(rate_refusal("rate", rate, retry_after));
            }
        }
        if let (Some(q), Some(cfg)) = (&self.quota, c.quota) {
            if let QuotaVerdict::Spent { resets_in } = q.take(cfg.requests, now) {
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

impl Limiter for TenantLimiter {
    fn admit(self: Arc<Self>, req: &Request) -> Result<Permit, Refusal> {
        self.admit_at(req, SystemTime::now())
    }

    fn max_body(&self) -> Option<u64> {
        self.config.max_body
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

fn rate_refusal(limit: &'static str, rate: &Rate, retry_after: Duration) -> Refusal {
    let mut r = refusal(429, limit, Some(retry_after));
    r.policy = Some(format!(
        "\"{limit}\";q={};w={}",
        rate.requests,
        ceil_secs(rate.per)
    ));
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
        Arc::new(TenantLimiter::new(config))
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
        assert_eq!(l.clone().admit(&big).err().map(|r| r.status), Some(413));
        assert!(l.clone().admit(&req("192.0.2.1")).is_ok());
        assert!(l.clone().admit(&req("192.0.2.1")).is_ok());
        let r = l.clone().admit(&req("192.0.2.1")).err().unwrap();
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
        let first = l.clone().admit(&req("192.0.2.1")).unwrap();
        let r = l.clone().admit(&req("192.0.2.1")).err().unwrap();
        assert_eq!(
            (r.status, r.retry_after),
            (503, Some(Duration::from_secs(1)))
        );
        drop(first);
        assert!(l.clone().admit(&req("192.0.2.1")).is_ok());
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
            assert!(l.clone().admit(&req("192.0.2.1")).is_ok());
        }
        let same = TenantLimiter::carry_over(quota(3), Some(&l));
        assert!(Arc::ptr_eq(&same, &l));
        assert_eq!(
            same.clone().admit(&req("192.0.2.1")).err().map(|r| r.limit),
            Some("quota")
        );
        let raised = TenantLimiter::carry_over(quota(4), Some(&l));
        assert!(raised.clone().admit(&req("192.0.2.1")).is_ok());
        assert!(raised.clone().admit(&req("192.0.2.1")).is_err());
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
            .map(|_| l.clone().admit(&req("192.0.2.66")).err().map(|r| r.limit))
            .collect();
        assert_eq!(&outcomes[..2], &[None, None]);
        assert!(outcomes[2..].iter().all(|o| *o == Some("per_client_ip")));
        for other in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert!(l.clone().admit(&req(other)).is_ok(), "{other} starved");
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
            old.clone().admit(&req("192.0.2.1")).unwrap(),
            old.clone().admit(&req("192.0.2.1")).unwrap(),
        ];
        let new = TenantLimiter::carry_over(config(20), Some(&old));
        assert!(!Arc::ptr_eq(&new, &old));
        let r = new.clone().admit(&req("192.0.2.1")).err().unwrap();
        assert_eq!(
            r.limit, "max_concurrent",
            "requests admitted before still count"
        );
        drop(held);
        let r = new.clone().admit(&req("192.0.2.1")).err().unwrap();
        assert_eq!(r.limit, "rate", "the unchanged rate kept its count");
    }
}
