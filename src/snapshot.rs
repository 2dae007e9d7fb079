//! The compiled routing state of one config generation: host table, tenants, their routes and
//! pools, and the health targets. Immutable once built; a reload builds a new one and swaps it
//! in with one atomic store. A request loads it once and keeps that `Arc` to its end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use rustls::sign::CertifiedKey;

use crate::config::model::{
    CaBundle, CacheMemory, ClientLimits, Config, LoadedCert, Resolved, RouteAction, StaticResponse,
    TenantConfig,
};
use crate::limits::TenantLimiter;
use crate::metrics::TenantMetrics;
use crate::routing::{HostTable, PathRoutes};
use crate::upstream::health::{HealthKey, HealthRegistry, HealthTarget};
use crate::upstream::pool::effective_backends;
use crate::upstream::{BackendState, PassiveState, Pool, Thresholds};

/// The one place the current snapshot lives.
pub type SharedSnapshot = ArcSwap<Snapshot>;

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub digest: String,
    pub hosts: HostTable<u32>,
    pub tenants: Vec<Arc<Tenant>>,
    pub unknown_host_status: u16,
    pub trusted_proxies: Vec<IpNet>,
    pub health: HealthRegistry,
    pub health_targets: Vec<Arc<HealthTarget>>,
    /// For TLS clients without SNI, or naming a host no tenant claims.
    pub default_cert: Option<Arc<LoadedCert>>,
    /// Where `https_redirect` sends clients.
    pub https_port: u16,
    /// Parallel to `tenants`: each tenant's limiter, `None` when it has no limits at all.
    pub limiters: Vec<Option<Arc<TenantLimiter>>>,
    /// Timeouts and caps for client connections accepted under this generation.
    pub clients: ClientLimits,
    /// `[cache]` of the main file.
    pub cache: CacheMemory,
}

#[derive(Debug)]
pub struct Tenant {
    /// The validated config this tenant was compiled from; an unchanged file yields the same
    /// `Arc`, which lets the next generation reuse the compiled tenant.
    pub config: Arc<TenantConfig>,
    pub id: Arc<str>,
    /// `X-Tenant-Id` value, built once.
    pub id_header: HeaderValue,
    pub routes: PathRoutes<Route>,
    pub pools: Vec<Arc<Pool>>,
    pub cert: Option<Arc<LoadedCert>>,
    pub https_redirect: bool,
    pub hsts: Option<HeaderValue>,
    /// Resolved on the tenant's first request, not at build: 100,000 tenants cost nothing
    /// until they see traffic.
    metrics: OnceLock<Arc<TenantMetrics>>,
}

impl Tenant {
    pub fn metrics(&self) -> &Arc<TenantMetrics> {
        self.metrics
            .get_or_init(|| crate::metrics::get().tenant(&self.id))
    }
}

#[derive(Debug, Clone)]
pub enum Route {
    /// Forward to the pool; `cache`: the route lets its responses be cached.
    Pool {
        pool: Arc<Pool>,
        cache: bool,
    },
    Respond(Arc<PreparedResponse>),
}

/// A `respond` route with its headers parsed once, at build time.
#[derive(Debug)]
pub struct PreparedResponse {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What a snapshot holds, for `check` and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tenants: usize,
    pub hosts: usize,
    pub pools: usize,
    pub backends: usize,
}

impl Snapshot {
    /// Compiles a validated config. `previous` lends backend state (health, in-flight counts)
    /// to every backend that is still configured the same way.
    pub fn build(config: &Config, generation: u64, previous: Option<&Snapshot>) -> Snapshot {
        let host_count = config.tenants.iter().map(|t| t.hosts.len()).sum();
        let mut hosts = HostTable::with_capacity(host_count, host_count / 2);
        let mut health = HealthRegistry::default();
        let mut tenants = Vec::with_capacity(config.tenants.len());
        let before: HashMap<&str, &Arc<Tenant>> = previous
            .map(|p| p.tenants.iter().map(|t| (t.id.as_ref(), t)).collect())
            .unwrap_or_default();
        let m = &config.material;
        for (index, tc) in config.tenants.iter().enumerate() {
            for pattern in &tc.hosts {
                hosts.insert(pattern, index as u32);
            }
            let keys = TenantKeys {
                cert: m.tenant_certs.get(index).cloned().flatten(),
                pool_cas: m.pool_cas.get(index).cloned().unwrap_or_default(),
            };
            let old = before.get(tc.id.as_str()).copied();
            let tenant = match old {
                Some(same)
                    if Arc::ptr_eq(&same.config, tc)
                        && keys.same_as(same)
                        && same_resolution(same, &config.resolved) =>
                {
                    adopt_health(same, &mut health);
                    same.clone()
                }
                _ => Arc::new(build_tenant(
                    tc,
                    keys,
                    &config.resolved,
                    &mut health,
                    previous.map(|p| (&p.health, old)),
                )),
            };
            tenants.push(tenant);
        }
        let health_targets = health.targets();
        let limiters = build_limiters(config, previous);
        Snapshot {
            generation,
            loaded_at: SystemTime::now(),
            digest: config.digest.clone(),
            hosts,
            tenants,
            unknown_host_status: config.server.unknown_host_status,
            trusted_proxies: config.server.trusted_proxies.clone(),
            health,
            health_targets,
            default_cert: m.default_cert.clone(),
            https_port: config.server.https_port,
            limiters,
            clients: config.server.clients,
            cache: config.server.cache,
        }
    }

    /// The certificate for a TLS handshake: the tenant claiming the SNI name (exact, then the
    /// longest wildcard), else the default certificate; `None` refuses the handshake.
    pub fn certificate_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let tenant_cert = sni
            .and_then(|name| self.hosts.lookup(name))
            .and_then(|&i| self.tenants[i as usize].cert.as_ref());
        tenant_cert
            .or(self.default_cert.as_ref())
            .map(|c| c.certified.clone())
    }

    /// The tenant a host (possibly with a port) or a TLS client's SNI belongs to, whatever
    /// the path.
    pub fn tenant_for_host(&self, host: &str) -> Option<u32> {
        self.hosts.lookup(host).copied()
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    pub fn counts(&self) -> Counts {
        let pools = self.tenants.iter().flat_map(|t| &t.pools);
        Counts {
            tenants: self.tenants.len(),
            hosts: self.hosts.len(),
            pools: pools.clone().count(),
            backends: pools.map(|p| p.backends.len()).sum(),
        }
    }
}

/// Each tenant's effective limits (its own, else the main file's), keeping the counters of a
/// tenant whose limits did not change; a removed tenant's counters go with it.
fn build_limiters(config: &Config, previous: Option<&Snapshot>) -> Vec<Option<Arc<TenantLimiter>>> {
    let before: HashMap<&str, &Arc<TenantLimiter>> = previous
        .map(|p| {
            p.tenants
                .iter()
                .zip(&p.limiters)
                .filter_map(|(t, l)| Some((t.id.as_ref(), l.as_ref()?)))
                .collect()
        })
        .unwrap_or_default();
    config
        .tenants
        .iter()
        .map(|t| {
            let limits = t.limits.or(&config.server.default_limits);
            (!limits.is_empty()).then(|| {
                TenantLimiter::carry_over(&t.id, limits, before.get(t.id.as_str()).copied())
            })
        })
        .collect()
}

/// Registers the backend states of a tenant carried over unchanged.
fn adopt_health(tenant: &Tenant, health: &mut HealthRegistry) {
    for (pool, pc) in tenant.pools.iter().zip(&tenant.config.pools) {
        for backend in &pool.backends {
            let key = HealthKey {
                addr: backend.addr,
                check: pc.health.clone(),
            };
            health.adopt(key, &backend.state, format!("{}/{}", tenant.id, pool.name));
        }
    }
}

/// The loaded files a compiled tenant depends on besides its own config file.
struct TenantKeys {
    cert: Option<Arc<LoadedCert>>,
    pool_cas: Vec<Option<Arc<CaBundle>>>,
}

impl TenantKeys {
    /// Whether `tenant` was built from exactly these files (the same loaded values).
    fn same_as(&self, tenant: &Tenant) -> bool {
        let same = |a: Option<&Arc<CaBundle>>, b: Option<&Arc<CaBundle>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let cert_same = match (&self.cert, &tenant.cert) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        cert_same
            && tenant.pools.iter().enumerate().all(|(i, p)| {
                same(
                    self.pool_cas.get(i).and_then(Option::as_ref),
                    p.tls.as_ref().and_then(|t| t.ca.as_ref()),
                )
            })
    }
}

/// Compiles one tenant. `previous` is the last generation's health registry and, if the
/// tenant existed, its compiled form: its pools' passive verdicts carry over.
fn build_tenant(
    tc: &Arc<TenantConfig>,
    keys: TenantKeys,
    resolved: &Resolved,
    health: &mut HealthRegistry,
    previous: Option<(&HealthRegistry, Option<&Arc<Tenant>>)>,
) -> Tenant {
    let pools: Vec<Arc<Pool>> = tc
        .pools
        .iter()
        .enumerate()
        .map(|(i, pc)| {
            let thresholds = Thresholds {
                healthy_after: pc.health.as_ref().map_or(1, |h| h.healthy_after),
                unhealthy_after: pc.health.as_ref().map_or(1, |h| h.unhealthy_after),
                passive_failures: pc.passive_failures,
                passive_cooldown_ms: pc.passive_cooldown.as_millis() as u64,
                actively_checked: pc.health.is_some(),
            };
            let user = format!("{}/{}", tc.id, pc.name);
            let ca = keys.pool_cas.get(i).cloned().flatten();
            let old_pool = previous
                .and_then(|(_, t)| t)
                .and_then(|t| t.pools.iter().find(|p| *p.name == *pc.name));
            let backends = effective_backends(pc, resolved);
            Arc::new(Pool::build(pc, &backends, ca, thresholds, |addr| {
                let key = HealthKey {
                    addr,
                    check: pc.health.clone(),
                };
                let state = health.state_for(key, user.clone(), previous.map(|(h, _)| h));
                (state.clone(), passive_for(old_pool, addr, &state))
            }))
        })
        .collect();
    let routes = tc
        .routes
        .iter()
        .map(|r| {
            let route = match &r.action {
                RouteAction::Pool(i) => Route::Pool {
                    pool: pools[*i].clone(),
                    cache: r.cache,
                },
                RouteAction::Respond(resp) => Route::Respond(Arc::new(prepare(resp))),
            };
            (r.path_prefix.clone(), r.match_case, route)
        })
        .collect();
    Tenant {
        config: tc.clone(),
        id: tc.id.as_str().into(),
        // Validation restricts ids to [a-z0-9_-], always a valid header value.
        id_header: HeaderValue::from_str(&tc.id).unwrap_or(HeaderValue::from_static("invalid")),
        routes: PathRoutes::new(routes),
        pools,
        cert: keys.cert,
        https_redirect: tc.https_redirect,
        // Validation checked the value.
        hsts: tc
            .hsts
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok()),
        metrics: OnceLock::new(),
    }
}

/// Whether `tenant`'s pools were built from the addresses their names resolve to now.
fn same_resolution(tenant: &Tenant, resolved: &Resolved) -> bool {
    tenant
        .pools
        .iter()
        .zip(&tenant.config.pools)
        .filter(|(_, pc)| !pc.names.is_empty())
        .all(|(pool, pc)| {
            let now = effective_backends(pc, resolved);
            now.len() == pool.backends.len()
                && now
                    .iter()
                    .zip(&pool.backends)
                    .all(|(a, b)| a.addr == b.addr)
        })
}

/// The pool's passive verdict on `addr` from the last generation, if the backend is still
/// checked the same way (the verdict counts that check's probes); else a clean one.
fn passive_for(
    old: Option<&Arc<Pool>>,
    addr: SocketAddr,
    state: &Arc<BackendState>,
) -> Arc<PassiveState> {
    old.and_then(|p| p.backends.iter().find(|b| b.addr == addr))
        .filter(|b| Arc::ptr_eq(&b.state, state))
        .map(|b| b.passive.clone())
        .unwrap_or_default()
}

fn prepare(resp: &StaticResponse) -> PreparedResponse {
    // Validation checked every name and value; anything unparsable is dropped, not panicked on.
    let headers = resp
        .headers
        .iter()
        .filter_map(|(n, v)| {
            Some((
                HeaderName::try_from(n.as_str()).ok()?,
                HeaderValue::try_from(v.as_str()).ok()?,
            ))
        })
        .collect();
    PreparedResponse {
        status: resp.status,
        headers,
        body: Bytes::from(resp.body.clone()),
    }
}
