//! Per-request state shared by the hooks of one request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::limits::Permit;
use crate::metrics::{InFlight, TenantMetrics};
use crate::snapshot::Snapshot;
use crate::upstream::{InflightGuard, Pool};

pub struct RequestCtx {
    /// When porteiro started on this request (for the client-view duration).
    pub started: Instant,
    /// The tenant's metric handles, once the tenant is known.
    pub metrics: Option<Arc<TenantMetrics>>,
    pub in_flight: Option<InFlight>,
    /// When the current backend was chosen, and how long it took to answer.
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<Duration>,
    /// The generation this request uses from its first phase to its last.
    pub snapshot: Option<Arc<Snapshot>>,
    pub tenant: Option<u32>,
    pub pool: Option<Arc<Pool>>,
    pub request_id: Option<HeaderValue>,
    /// The socket peer (IPv4-mapped addresses read as IPv4).
    pub peer_ip: Option<IpAddr>,
    /// The peer is inside `trusted_proxies`: its forwarding headers are believed and extended.
    pub trusted_peer: bool,
    /// The client: the peer, or behind `trusted_proxies` the address they forwarded for.
    /// The one address hashing, limits and logs use.
    pub client_ip: Option<IpAddr>,
    /// Hash of the consistent-hash key, computed once (retries reuse it).
    pub hash_key: u64,
    /// Backends (pool indexes) already tried by this request, in order.
    pub tried: Vec<usize>,
    /// Holds the current backend's in-flight count; replaced on retry, dropped at the end.
    pub inflight: Option<InflightGuard>,
    /// The request came over a TLS connection.
    pub tls: bool,
    /// The tenant's limiter permit (holds a concurrency slot) while the request lives.
    pub permit: Option<Permit>,
    /// `max_body`, checked again as a streamed body arrives.
    pub max_body: Option<u64>,
    /// The limit that refused this request, for logs and metrics.
    pub refused_by: Option<&'static str>,
    /// The request path with dot segments resolved, when that differs from what was sent.
    pub normalized_path: Option<String>,
    /// A backend timed out while the client had not sent the whole body: the client's fault.
    pub client_stalled: bool,
    /// The route lets responses be cached (`cache = false` on a route turns it off).
    pub route_caches: bool,
    /// What the cache did with this request, once decided.
    pub cache: Option<CacheUse>,
}

/// The cache's part in one request.
#[derive(Debug, Default)]
pub struct CacheUse {
    /// Not looked up: why (method, cookie, no-store).
    pub bypass: Option<&'static str>,
    /// The request asked for a revalidated answer and the tenant honours that.
    pub revalidate: bool,
    /// The backend's response is being stored.
    pub stored: bool,
    /// The backend answered a revalidation with 304.
    pub got_304: bool,
    /// The result, for `Cache-Status`, metrics and the access log.
    pub result: Option<&'static str>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            metrics: None,
            in_flight: None,
            upstream_started: None,
            upstream_elapsed: None,
            snapshot: None,
            tenant: None,
            pool: None,
            request_id: None,
            peer_ip: None,
            trusted_peer: false,
            client_ip: None,
            hash_key: 0,
            tried: Vec::new(),
            inflight: None,
            tls: false,
            permit: None,
            max_body: None,
            refused_by: None,
            normalized_path: None,
            client_stalled: false,
            route_caches: false,
            cache: None,
        }
    }
}

impl RequestCtx {
    pub fn tenant_id(&self) -> &str {
        match (&self.snapshot, self.tenant) {
            (Some(s), Some(t)) => &s.tenants[t as usize].id,
            _ => "-",
        }
    }

    /// The backend currently in use, for logs.
    pub fn backend_label(&self) -> &str {
        match (&self.pool, self.tried.last()) {
            (Some(p), Some(&i)) => &p.backends[i].label,
            _ => "-",
        }
    }

    /// The tenant's `Strict-Transport-Security` value, for responses over TLS only.
    pub fn hsts(&self) -> Option<&HeaderValue> {
        match (&self.snapshot, self.tenant) {
            (Some(s), Some(t)) if self.tls => s.tenants[t as usize].hsts.as_ref(),
            _ => None,
        }
    }

    /// Whether this request goes to the access log, by its tenant's `access_log_sample`.
    /// Requests of no tenant (unknown hosts) are always logged.
    pub fn sampled(&self) -> bool {
        match (&self.snapshot, self.tenant) {
            (Some(s), Some(t)) => {
                let rate = s.tenants[t as usize].config.access_log_sample;
                rate >= 1.0 || (rate > 0.0 && fastrand::f64() < rate)
            }
            _ => true,
        }
    }

    pub fn pool_name(&self) -> &str {
        self.pool.as_ref().map_or("-", |p| &p.name)
    }
}
