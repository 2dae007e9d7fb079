//! A compiled upstream pool: its backends with their live state, the selector, and the
//! connection settings every request to it uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::model::{BackendConfig, Balance, CaBundle, HashKey, PoolConfig, Resolved};

use super::balance::{Candidates, Selector};
use super::state::{BackendState, PassiveState, Thresholds};

#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// `addr` as text, computed once for logs and (later) metric labels.
    pub label: Arc<str>,
    pub weight: u32,
    pub state: Arc<BackendState>,
    /// This pool's own passive verdict on the backend.
    pub passive: Arc<PassiveState>,
    /// `porteiro_backend_selected_total` for this tenant, pool and backend, on first use.
    selected: std::sync::OnceLock<Option<prometheus::IntCounter>>,
}

impl Backend {
    /// Whether this pool may send the backend a request now.
    pub fn is_usable(&self, now_ms: u64) -> bool {
        self.state.is_healthy() && !self.passive.is_out(&self.state, now_ms)
    }

    /// A passive failure (connect error, timeout); true when it took the backend out of
    /// this pool.
    pub fn record_failure(&self, t: &Thresholds, now_ms: u64) -> bool {
        self.passive.record_failure(&self.state, t, now_ms)
    }

    pub fn selected(&self, tenant: &str, pool: &str) -> Option<&prometheus::IntCounter> {
        self.selected
            .get_or_init(|| crate::metrics::get().backend_selected(tenant, pool, &self.label))
            .as_ref()
    }
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    selector: Selector,
    pub hash_key: Option<HashKey>,
    pub timeouts: Timeouts,
    /// Extra backends tried after connect failures.
    pub retries: u32,
    pub host_header: Option<http::HeaderValue>,
    pub thresholds: Thresholds,
    /// TLS towards the backends, if the pool asks for it.
    pub tls: Option<PoolTls>,
}

#[derive(Debug, Clone)]
pub struct PoolTls {
    pub sni: String,
    pub verify: bool,
    /// Trust anchors from `ca_file`; `None` means the system roots.
    pub ca: Option<Arc<CaBundle>>,
    pub http2: bool,
}

impl Pool {
    /// Builds a pool over `backends` (its addresses, and those its names resolve to now);
    /// `state_for` supplies each backend's shared state and this pool's passive verdict on
    /// it (both reused across reloads).
    pub fn build(
        cfg: &PoolConfig,
        backends: &[BackendConfig],
        ca: Option<Arc<CaBundle>>,
        thresholds: Thresholds,
        mut state_for: impl FnMut(SocketAddr) -> (Arc<BackendState>, Arc<PassiveState>),
    ) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let names: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        let (selector, hash_key) = match &cfg.balance {
            Balance::RoundRobin => (Selector::round_robin(&weights), None),
            Balance::LeastConn => (Selector::least_conn(), None),
            Balance::Random => (Selector::random(&weights), None),
            Balance::ConsistentHash(key) => {
                (Selector::consistent(&names, &weights), Some(key.clone()))
            }
        };
        let backends = backends
            .iter()
            .zip(names)
            .map(|(b, name)| {
                let (state, passive) = state_for(b.addr);
                Backend {
                    addr: b.addr,
                    label: name.into(),
                    weight: b.weight,
                    state,
                    passive,
                    selected: std::sync::OnceLock::new(),
                }
            })
            .collect();
        Self {
            name: cfg.name.as_str().into(),
            backends,
            selector,
            hash_key,
            timeouts: Timeouts {
                connect: cfg.connect_timeout,
                read: cfg.read_timeout,
                write: cfg.write_timeout,
                idle: cfg.idle_timeout,
            },
            retries: cfg.retries,
            // Validation checked the value; a failure here would only drop the rewrite.
            host_header: cfg
                .host_header
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok()),
            thresholds,
            tls: cfg.tls.as_ref().map(|t| PoolTls {
                sni: t.sni.clone(),
                verify: !t.insecure_skip_verify,
                ca,
                http2: cfg.http2,
            }),
        }
    }

    /// Picks a usable backend not in `tried`. `key` feeds consistent hashing.
    pub fn select(&self, key: u64, tried: &[usize], now_ms: u64) -> Option<usize> {
        let view = View {
            pool: self,
            tried,
            now_ms,
        };
        self.selector.select(&view, key)
    }

    /// Whether any backend could take a request now; for the "no healthy backend" answer.
    pub fn any_usable(&self, now_ms: u64) -> bool {
        self.backends.iter().any(|b| b.is_usable(now_ms))
    }
}

/// A pool's backends now: its addresses, then every address each name resolves to (with the
/// name's port and weight), each address once.
pub fn effective_backends(cfg: &PoolConfig, resolved: &Resolved) -> Vec<BackendConfig> {
    let mut out = cfg.backends.clone();
    for n in &cfg.names {
        for ip in resolved.get(&n.host).into_iter().flatten() {
            let addr = SocketAddr::new(*ip, n.port);
            if !out.iter().any(|b| b.addr == addr) {
                out.push(BackendConfig {
                    addr,
                    weight: n.weight,
                });
            }
        }
    }
    out
}

struct View<'a> {
    pool: &'a Pool,
    tried: &'a [usize],
    now_ms: u64,
}

impl Candidates for View<'_> {
    fn len(&self) -> usize {
        self.pool.backends.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.pool.backends[i].weight
    }
    fn usable(&self, i: usize) -> bool {
        !self.tried.contains(&i) && self.pool.backends[i].is_usable(self.now_ms)
    }
    fn inflight(&self, i: usize) -> u32 {
        self.pool.backends[i].state.inflight()
    }
}
