//! Prometheus metrics. One process-wide registry; labels carry configured tenant ids, pool
//! names and backend addresses only (never hosts, paths or client addresses), and tenants past
//! `[metrics] max_tenants` share the label "_other", so series counts stay bounded.
//! Gauges that mirror state (backend health, config counts, certificate expiry) are filled from
//! the live snapshot at scrape time, so they can never drift from what is serving.

mod cluster;
mod tenant;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use cluster::ClusterMetrics;
pub use tenant::{method_index, status_index, InFlight, TenantMetrics};

use crate::snapshot::Snapshot;

/// Histogram buckets in seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
pub const OTHER_TENANTS: &str = "_other";
const CLIENT_ERRORS: [&str; 6] = [
    "header_timeout",
    "request_line_too_long",
    "head_too_large",
    "closed_mid_head",
    "listener_full",
    "client_connections",
];

/// Counts one open client connection in `porteiro_client_connections` while it lives.
pub struct OpenConnection(());

impl OpenConnection {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        get().client_connections.inc();
        Self(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        get().client_connections.dec();
    }
}
pub const DEFAULT_MAX_TENANTS: usize = 1000;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    in_flight: IntGaugeVec,
    retries: IntCounterVec,
    connect_errors: IntCounterVec,
    timeouts: IntCounterVec,
    pub unknown_host: IntCounter,
    client_errors: IntCounterVec,
    client_connections: IntGauge,
    backend_up: IntGaugeVec,
    health_failures: IntCounterVec,
    backend_selected: IntCounterVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    last_success: Gauge,
    /// Tenants, hosts, pools, backends.
    config_counts: [IntGauge; 4],
    refused_tenant_files: IntGauge,
    dns_failures: IntCounterVec,
    pub tls_handshakes: IntCounter,
    tls_failures: IntCounterVec,
    cert_expiry: GaugeVec,
    pub access_log_dropped: IntCounter,
    limited: IntCounterVec,
    cache_requests: IntCounterVec,
    cache_bytes: IntGaugeVec,
    cache_entries: IntGaugeVec,
    cache_evictions: IntCounterVec,
    quota_used: IntGaugeVec,
    quota_limit: IntGaugeVec,
    pub cluster: OnceLock<ClusterMetrics>,
    max_tenants: AtomicUsize,
    enabled: std::sync::atomic::AtomicBool,
    tenants: Mutex<HashMap<String, Arc<TenantMetrics>>>,
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn histogram(r: &Registry, name: &str, help: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    let h = HistogramVec::new(opts, &["tenant"]).expect("valid metric definition");
    r.register(Box::new(h.clone())).expect("unique metric name");
    h
}

impl Metrics {
    // The definitions are constants: a failure to register them is a programming error that
    // the unit tests below catch, never something input can cause.
    fn new() -> Self {
        let r = Registry::new();
        let t = &["tenant"];
        let b = &["tenant", "pool", "backend"];
        let m = Self {
            requests: counter(&r, "porteiro_requests_total", "Requests answered, by tenant, method and status class.", &["tenant", "method", "status_class"]),
            request_duration: histogram(&r, "porteiro_request_duration_seconds", "Time from the request's arrival to the end of the response, as the client sees it."),
            upstream_duration: histogram(&r, "porteiro_upstream_duration_seconds", "Time from choosing a backend to its response header."),
            request_bytes: counter(&r, "porteiro_request_bytes_total", "Request body bytes received from clients.", t),
            response_bytes: counter(&r, "porteiro_response_bytes_total", "Response body bytes sent to clients.", t),
            in_flight: gauge(&r, "porteiro_requests_in_flight", "Requests being handled now.", t),
            retries: counter(&r, "porteiro_upstream_retries_total", "Extra backend attempts after a failed one.", t),
            connect_errors: counter(&r, "porteiro_upstream_connect_errors_total", "Failed connections to backends (refused, TLS, connect timeout).", t),
            timeouts: counter(&r, "porteiro_upstream_timeouts_total", "Backend reads or writes that timed out.", t),
            client_errors: counter(&r, "porteiro_client_errors_total", "Client connections refused or closed before a request was read, by reason (header_timeout, request_line_too_long, head_too_large, closed_mid_head, listener_full, client_connections).", &["reason"]),
            client_connections: gauge(&r, "porteiro_client_connections", "Client connections open now.", &[]).with_label_values(&[] as &[&str]),
            unknown_host: counter(&r, "porteiro_unknown_host_requests_total", "Requests for a host no tenant claims.", &[]).with_label_values(&[] as &[&str]),
            backend_up: gauge(&r, "porteiro_backend_up", "1 when the backend may receive requests, else 0.", b),
            health_failures: counter(&r, "porteiro_health_check_failures_total", "Failed active health probes.", b),
            backend_selected: counter(&r, "porteiro_backend_selected_total", "Times the backend was chosen for a request attempt.", b),
            reloads: counter(&r, "porteiro_config_reloads_total", "Configuration reloads by result (applied, unchanged, failed).", &["result"]),
            generation: gauge(&r, "porteiro_config_generation", "Generation of the configuration serving now.", &[]).with_label_values(&[] as &[&str]),
            last_success: {
                let g = Gauge::new("porteiro_config_last_success_timestamp_seconds", "When the configuration serving now was loaded (Unix time).").expect("valid metric definition");
                r.register(Box::new(g.clone())).expect("unique metric name");
                g
            },
            config_counts: ["tenants", "hosts", "pools", "backends"].map(|kind| {
                gauge(&r, &format!("porteiro_config_{kind}"), &format!("Configured {kind} in the configuration serving now."), &[])
                    .with_label_values(&[] as &[&str])
            }),
            dns_failures: counter(&r, "porteiro_dns_lookup_failures_total", "Failed lookups of backend DNS names (the last good addresses stay in use).", &["name"]),
            refused_tenant_files: gauge(&r, "porteiro_config_refused_tenant_files", "Tenant files refused for errors in the configuration serving now (each keeps its last good version, if any; see /-/config).", &[]).with_label_values(&[] as &[&str]),
            tls_handshakes: counter(&r, "porteiro_tls_handshakes_total", "Completed TLS handshakes.", &[]).with_label_values(&[] as &[&str]),
            tls_failures: counter(&r, "porteiro_tls_handshake_failures_total", "TLS handshakes refused by porteiro, by reason.", &["reason"]),
            cert_expiry: {
                let g = GaugeVec::new(Opts::new("porteiro_certificate_expiry_timestamp_seconds", "When each tenant's certificate expires (Unix time); tenant=\"_default\" for the default certificate."), &["tenant"]).expect("valid metric definition");
                r.register(Box::new(g.clone())).expect("unique metric name");
                g
            },
            access_log_dropped: counter(&r, "porteiro_access_log_dropped_total", "Access log lines dropped because the writer fell behind.", &[]).with_label_values(&[] as &[&str]),
            limited: counter(&r, "porteiro_limited_requests_total", "Requests refused by a tenant limit, by limit (rate, per_client_ip, quota, max_body, max_concurrent).", &["tenant", "limit"]),
            cache_requests: counter(&r, "porteiro_cache_requests_total", "Requests of cached tenants by cache result (hit, miss, stale, revalidated, bypass, coalesced).", &["tenant", "result"]),
            cache_bytes: gauge(&r, "porteiro_cache_bytes", "Bytes the tenant's cached entries take (bodies, headers and bookkeeping).", t),
            cache_entries: gauge(&r, "porteiro_cache_entries", "Entries in the tenant's cache.", t),
            cache_evictions: counter(&r, "porteiro_cache_evictions_total", "Entries evicted to keep the tenant within its cache budget.", t),
            quota_used: gauge(&r, "porteiro_quota_used_requests", "Requests counted against the tenant's quota in the current window.", t),
            quota_limit: gauge(&r, "porteiro_quota_limit_requests", "The tenant's quota per window.", t),
            cluster: OnceLock::new(),
            max_tenants: AtomicUsize::new(DEFAULT_MAX_TENANTS),
            enabled: std::sync::atomic::AtomicBool::new(true),
            tenants: Mutex::new(HashMap::new()),
            registry: r,
        };
        // Present from the start, so the first failed reload is an increase Prometheus can see.
        for result in ["applied", "unchanged", "failed"] {
            m.reloads.with_label_values(&[result]);
        }
        for reason in CLIENT_ERRORS {
            m.client_errors.with_label_values(&[reason]);
        }
        let info = gauge(
            &m.registry,
            "porteiro_build_info",
            "Version of the running binary.",
            &["version"],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(process));
        }
        m
    }

    /// Fleet mode's series, registered when `[cluster]` is set (absent otherwise).
    pub fn cluster(&self) -> &ClusterMetrics {
        self.cluster
            .get_or_init(|| ClusterMetrics::new(&self.registry))
    }

    pub fn set_max_tenants(&self, n: usize) {
        self.max_tenants.store(n, Ordering::Relaxed);
    }

    /// Whether requests are counted per tenant (`[metrics] enabled`).
    pub fn counting(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_counting(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The handles for tenant `id`: its own label while under the cap, else "_other".
    pub fn tenant(&self, id: &str) -> Arc<TenantMetrics> {
        let mut tenants = self.lock_tenants();
        if let Some(t) = tenants.get(id) {
            return t.clone();
        }
        let own_labels = tenants.len() - usize::from(tenants.contains_key(OTHER_TENANTS));
        let own = own_labels < self.max_tenants.load(Ordering::Relaxed);
        let label = if own { id } else { OTHER_TENANTS };
        let handles = match tenants.get(label) {
            Some(shared) => shared.clone(),
            None => Arc::new(TenantMetrics::new(label.to_string(), self)),
        };
        if own {
            tenants.insert(id.to_string(), handles.clone());
        } else {
            tenants.insert(OTHER_TENANTS.to_string(), handles.clone());
        }
        handles
    }

    /// After a reload: drops the series of tenants no longer configured (freeing their place
    /// under the cap), and of pools and backends no longer configured for their tenant.
    pub fn retain(&self, snap: &Snapshot) {
        let configured: HashSet<&str> = snap.tenants.iter().map(|t| t.id.as_ref()).collect();
        self.retain_tenants(&configured);
        let members: HashSet<(&str, &str, &str)> = snap
            .tenants
            .iter()
            .flat_map(|t| {
                t.pools.iter().flat_map(move |p| {
                    p.backends
                        .iter()
                        .map(move |b| (t.id.as_ref(), p.name.as_ref(), b.label.as_ref()))
                })
            })
            .collect();
        let configured_member = |labels: &HashMap<&str, &str>| {
            let get = |k| labels.get(k).copied().unwrap_or("");
            members.contains(&(get("tenant"), get("pool"), get("backend")))
        };
        prune(&self.backend_selected, configured_member);
        prune(&self.health_failures, configured_member);
    }

    fn retain_tenants(&self, configured: &HashSet<&str>) {
        let mut tenants = self.lock_tenants();
        let gone: Vec<String> = tenants
            .keys()
            .filter(|id| *id != OTHER_TENANTS && !configured.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(t) = tenants.remove(&id) {
                self.remove_tenant_series(&t);
            }
        }
    }

    /// The label tenant `id` already has, without giving it one: scrapes and health checks
    /// must not hand out label slots (in file order); traffic does.
    fn slot(&self, id: &str) -> Option<String> {
        self.lock_tenants().get(id).map(|t| t.label.clone())
    }

    /// The label of tenant `id`'s state gauges at a scrape. While every tenant fits under the
    /// cap, or requests are not counted (so traffic gives no labels), the scrape gives labels
    /// itself; past the cap only traffic does, so the busy tenants get them.
    fn state_label(&self, id: &str, everyone_fits: bool) -> String {
        if everyone_fits || !self.counting() {
            self.label_for(id)
        } else {
            self.slot(id).unwrap_or_else(|| OTHER_TENANTS.into())
        }
    }

    fn remove_tenant_series(&self, t: &TenantMetrics) {
        let l = &[t.label.as_str()];
        for (method, class) in t.used_cells() {
            let _ = self
                .requests
                .remove_label_values(&[&t.label, method, class]);
        }
        let _ = self.request_duration.remove_label_values(l);
        let _ = self.upstream_duration.remove_label_values(l);
        for v in [
            &self.request_bytes,
            &self.response_bytes,
            &self.retries,
            &self.connect_errors,
            &self.timeouts,
        ] {
            let _ = v.remove_label_values(l);
        }
        let _ = self.in_flight.remove_label_values(l);
        for result in t.used_cache_results() {
            let _ = self.cache_requests.remove_label_values(&[&t.label, result]);
        }
        for v in [&self.cache_bytes, &self.cache_entries] {
            let _ = v.remove_label_values(l);
        }
        let _ = self.cache_evictions.remove_label_values(l);
        let _ = self.cert_expiry.remove_label_values(l);
        for limit in t.used_limits() {
            let _ = self.limited.remove_label_values(&[&t.label, limit]);
        }
        if let (Some(c), true) = (self.cluster.get(), t.fell_back_ever()) {
            let _ = c.fallbacks.remove_label_values(l);
        }
    }

    /// A counter for one backend of one tenant's pool; `None` for tenants past the cap, whose
    /// backends get no series of their own.
    pub fn backend_selected(&self, tenant: &str, pool: &str, backend: &str) -> Option<IntCounter> {
        let label = self.label_for(tenant);
        (label != OTHER_TENANTS).then(|| {
            self.backend_selected
                .with_label_values(&[label.as_str(), pool, backend])
        })
    }

    /// `users` are "tenant/pool" names, as the health checker keeps them.
    pub fn health_check_failed(&self, users: &[String], backend: &str) {
        for user in users {
            let Some((tenant, pool)) = user.split_once('/') else {
                continue;
            };
            match self.slot(tenant) {
                Some(label) if label != OTHER_TENANTS => self
                    .health_failures
                    .with_label_values(&[label.as_str(), pool, backend])
                    .inc(),
                _ => {}
            }
        }
    }

    /// A client connection refused or closed before its request was read (`CLIENT_ERRORS`).
    pub fn client_error(&self, reason: &'static str) {
        self.client_errors.with_label_values(&[reason]).inc();
    }

    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    pub fn dns_failed(&self, name: &str) {
        self.dns_failures.with_label_values(&[name]).inc();
    }

    pub fn set_refused_tenant_files(&self, n: usize) {
        self.refused_tenant_files.set(n as i64);
    }

    pub fn tls_refused(&self, reason: &str) {
        self.tls_failures.with_label_values(&[reason]).inc();
    }

    fn label_for(&self, tenant: &str) -> String {
        self.tenant(tenant).label.clone()
    }

    fn lock_tenants(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TenantMetrics>>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The text exposition, with state gauges refreshed from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.refresh_state(snapshot);
        let mut out = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Cache sizes per tenant, from the store; evictions counted up to the store's total.
    fn refresh_cache(&self, everyone_fits: bool) {
        self.cache_bytes.reset();
        self.cache_entries.reset();
        // Tenants folded into "_other" add up.
        for (tenant, part) in crate::cache::store().partitions() {
            let label = self.state_label(&tenant, everyone_fits);
            let l = &[label.as_str()];
            self.cache_bytes
                .with_label_values(l)
                .add(part.bytes() as i64);
            self.cache_entries
                .with_label_values(l)
                .add(part.entries() as i64);
            if label != OTHER_TENANTS {
                let counter = self.cache_evictions.with_label_values(l);
                counter.inc_by(part.evictions().saturating_sub(counter.get()));
            }
        }
    }

    fn refresh_state(&self, snap: &Snapshot) {
        let everyone_fits = snap.tenants.len() <= self.max_tenants.load(Ordering::Relaxed);
        let now = crate::upstream::now_ms();
        self.backend_up.reset();
        self.cert_expiry.reset();
        let unix = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        // Tenants without a label of their own share "_other": the soonest expiry among them.
        let mut others_expiry: Option<f64> = None;
        for t in &snap.tenants {
            let label = self.state_label(&t.id, everyone_fits);
            if let Some(cert) = &t.cert {
                let expiry = unix(cert.not_after);
                if label == OTHER_TENANTS {
                    others_expiry = Some(others_expiry.map_or(expiry, |e| e.min(expiry)));
                } else {
                    self.cert_expiry.with_label_values(&[&label]).set(expiry);
                }
            }
            if label == OTHER_TENANTS {
                continue;
            }
            for pool in &t.pools {
                for b in &pool.backends {
                    let up = i64::from(b.is_usable(now));
                    self.backend_up
                        .with_label_values(&[label.as_str(), &pool.name, &b.label])
                        .set(up);
                }
            }
        }
        if let Some(expiry) = others_expiry {
            self.cert_expiry
                .with_label_values(&[OTHER_TENANTS])
                .set(expiry);
        }
        self.quota_used.reset();
        self.quota_limit.reset();
        for (t, l) in snap.tenants.iter().zip(&snap.limiters) {
            let (Some(l), Some(cfg)) = (l, l.as_ref().and_then(|l| l.config.quota)) else {
                continue;
            };
            let label = self.state_label(&t.id, everyone_fits);
            if let (Some((window, used)), true) = (l.quota_used(), label != OTHER_TENANTS) {
                let current = crate::limits::window(cfg.per, std::time::SystemTime::now()).0;
                let used = if window == current { used } else { 0 };
                self.quota_used
                    .with_label_values(&[&label])
                    .set(used as i64);
                self.quota_limit
                    .with_label_values(&[&label])
                    .set(cfg.requests as i64);
            }
        }
        self.refresh_cache(everyone_fits);
        if let Some(cert) = &snap.default_cert {
            self.cert_expiry
                .with_label_values(&["_default"])
                .set(unix(cert.not_after));
        }
        let c = snap.counts();
        self.generation.set(snap.generation as i64);
        self.last_success.set(unix(snap.loaded_at));
        for (gauge, n) in self
            .config_counts
            .iter()
            .zip([c.tenants, c.hosts, c.pools, c.backends])
        {
            gauge.set(n as i64);
        }
    }
}

/// Removes the series of `vec` whose labels `keep` refuses.
fn prune<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    keep: impl Fn(&HashMap<&str, &str>) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|p| (p.name(), p.value()))
                .collect();
            if !keep(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_past_the_cap_share_one_label_and_removed_ones_free_their_place() {
        let m = Metrics::new();
        m.set_max_tenants(2);
        assert_eq!(m.tenant("a").label, "a");
        assert_eq!(m.tenant("b").label, "b");
        assert_eq!(m.tenant("c").label, OTHER_TENANTS);
        assert_eq!(m.tenant("d").label, OTHER_TENANTS);
        m.tenant("a").count_request(0, 1);
        m.retain_tenants(&["b", "c"].into_iter().collect());
        let text = String::from_utf8({
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&m.registry.gather(), &mut out)
                .unwrap();
            out
        })
        .unwrap();
        assert!(!text.contains("tenant=\"a\""), "{text}");
        assert_eq!(m.tenant("e").label, "e");
    }
}
