//! Per-request state shared by the hooks of one request.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::snapshot::Snapshot;
use crate::upstream::{InflightGuard, Pool};

#[derive(Default)]
pub struct RequestCtx {
    /// The generation this request uses from its first phase to its last.
    pub snapshot: Option<Arc<Snapshot>>,
    pub tenant: Option<u32>,
    pub pool: Option<Arc<Pool>>,
    pub request_id: Option<HeaderValue>,
    pub client_ip: Option<IpAddr>,
    /// Hash of the consistent-hash key, computed once (retries reuse it).
    pub hash_key: u64,
    /// Backends (pool indexes) already tried by this request, in order.
    pub tried: Vec<usize>,
    /// Holds the current backend's in-flight count; replaced on retry, dropped at the end.
    pub inflight: Option<InflightGuard>,
    /// The request came over a TLS connection.
    pub tls: bool,
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

    pub fn pool_name(&self) -> &str {
        self.pool.as_ref().map_or("-", |p| &p.name)
    }
}
