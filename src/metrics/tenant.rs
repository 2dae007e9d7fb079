//! Per-tenant metric handles, resolved once per tenant (and per method/status cell on first
//! use) so the request path increments counters without looking labels up.

use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

/// Method label values; anything else is "other", so a client cannot create series.
pub const METHODS: [&str; 8] = [
    "get", "head", "post", "put", "delete", "patch", "options", "other",
];
/// `none`: the client went away before any answer (a hang-up is not a server error).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// `porteiro_cache_requests_total` results.
pub const CACHE_RESULTS: [&str; 6] = ["hit", "miss", "stale", "revalidated", "bypass", "coalesced"];
/// `porteiro_limited_requests_total` limits.
pub const LIMITS: [&str; 5] = [
    "rate",
    "per_client_ip",
    "quota",
    "max_body",
    "max_concurrent",
];

pub fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// 100..=599 -> 0..=4; no answer (0, the client left first) -> `none`.
pub fn status_index(status: u16) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => 5,
    }
}

pub struct TenantMetrics {
    /// The label these handles carry: the tenant id, or "_other" past the cap.
    pub label: String,
    requests_vec: IntCounterVec,
    requests: [OnceLock<IntCounter>; METHODS.len() * STATUS_CLASSES.len()],
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
    pub in_flight: IntGauge,
    pub retries: IntCounter,
    pub connect_errors: IntCounter,
    pub timeouts: IntCounter,
    cache_vec: IntCounterVec,
    cache: [OnceLock<IntCounter>; CACHE_RESULTS.len()],
    limited_vec: IntCounterVec,
    limited: [OnceLock<IntCounter>; LIMITS.len()],
    fallbacks: OnceLock<IntCounter>,
}

impl std::fmt::Debug for TenantMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantMetrics")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl TenantMetrics {
    pub(super) fn new(label: String, m: &super::Metrics) -> Self {
        let l = &[label.as_str()];
        Self {
            requests_vec: m.requests.clone(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            request_duration: m.request_duration.with_label_values(l),
            upstream_duration: m.upstream_duration.with_label_values(l),
            request_bytes: m.request_bytes.with_label_values(l),
            response_bytes: m.response_bytes.with_label_values(l),
            in_flight: m.in_flight.with_label_values(l),
            retries: m.retries.with_label_values(l),
            connect_errors: m.connect_errors.with_label_values(l),
            timeouts: m.timeouts.with_label_values(l),
            cache_vec: m.cache_requests.clone(),
            cache: std::array::from_fn(|_| OnceLock::new()),
            limited_vec: m.limited.clone(),
            limited: std::array::from_fn(|_| OnceLock::new()),
            fallbacks: OnceLock::new(),
            label,
        }
    }

    pub fn count_request(&self, method: usize, status: usize) {
        let cell = method * STATUS_CLASSES.len() + status;
        self.requests[cell]
            .get_or_init(|| {
                self.requests_vec.with_label_values(&[
                    self.label.as_str(),
                    METHODS[method],
                    STATUS_CLASSES[status],
                ])
            })
            .inc();
    }

    /// One request's cache result (one of `CACHE_RESULTS`).
    pub fn cache_result(&self, result: &str) {
        let Some(i) = CACHE_RESULTS.iter().position(|r| *r == result) else {
            return;
        };
        self.cache[i]
            .get_or_init(|| {
                self.cache_vec
                    .with_label_values(&[self.label.as_str(), CACHE_RESULTS[i]])
            })
            .inc();
    }

    /// A request refused by one of the tenant's limits (one of `LIMITS`). No lock: a flood
    /// of refusals is exactly when this must stay cheap.
    pub fn limited(&self, limit: &str) {
        let Some(i) = LIMITS.iter().position(|l| *l == limit) else {
            return;
        };
        self.limited[i]
            .get_or_init(|| {
                self.limited_vec
                    .with_label_values(&[self.label.as_str(), LIMITS[i]])
            })
            .inc();
    }

    /// A request whose shared limits were decided locally (the fleet's Redis did not answer).
    pub fn fell_back(&self) {
        self.fallbacks
            .get_or_init(|| {
                super::get()
                    .cluster()
                    .fallbacks
                    .with_label_values(&[self.label.as_str()])
            })
            .inc();
    }

    pub(super) fn fell_back_ever(&self) -> bool {
        self.fallbacks.get().is_some()
    }

    /// The limits this tenant has counted refusals for, for removing its series.
    pub(super) fn used_limits(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.limited
            .iter()
            .zip(LIMITS)
            .filter_map(|(c, l)| c.get().map(|_| l))
    }

    /// The cache results this tenant has counted, for removing its series.
    pub(super) fn used_cache_results(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.cache
            .iter()
            .zip(CACHE_RESULTS)
            .filter_map(|(c, r)| c.get().map(|_| r))
    }

    /// The (method, status class) cells this tenant has used, for removing its series.
    pub(super) fn used_cells(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.requests.iter().enumerate().filter_map(|(i, c)| {
            c.get().map(|_| {
                (
                    METHODS[i / STATUS_CLASSES.len()],
                    STATUS_CLASSES[i % STATUS_CLASSES.len()],
                )
            })
        })
    }
}

/// Counts a request in flight for as long as it lives.
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn start(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(status_index(204), 1);
        assert_eq!(status_index(599), 4);
        assert_eq!(
            STATUS_CLASSES[status_index(0)],
            "none",
            "a client hang-up is no 5xx"
        );
        assert_eq!(
            method_index(&http::Method::from_bytes(b"PURGE").unwrap()),
            7
        );
        assert_eq!(METHODS[method_index(&http::Method::DELETE)], "delete");
    }
}
