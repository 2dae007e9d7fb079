//! The pingora `ProxyHttp` implementation. Each hook is short and hands the real decisions to
//! `snapshot` (routing), `upstream` (selection, health) and `headers`.

mod cache;
mod context;
pub mod headers;
mod limit;
mod log;
mod request;
mod respond;
mod tls_policy;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorSource, ErrorType};

pub use context::RequestCtx;

use crate::access_log;
use crate::config::model::HashKey;
use crate::hash::stable_hash;
use crate::metrics;
use crate::snapshot::SharedSnapshot;
use crate::tls::ClientSni;
use crate::upstream::{now_ms, Pool};

pub struct Porteiro {
    snapshot: Arc<SharedSnapshot>,
}

impl Porteiro {
    pub fn new(snapshot: Arc<SharedSnapshot>) -> Self {
        Self { snapshot }
    }
}

#[async_trait]
impl ProxyHttp for Porteiro {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Request phase: pin the snapshot for every later phase, apply the client timeouts,
    /// then route; porteiro's own answers (errors, redirects, `respond`, limits) end here.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let snap = self.snapshot.load_full();
        session.set_read_timeout(Some(snap.clients.body_timeout));
        session.set_write_timeout(Some(snap.clients.send_timeout));
        let sni = client_tls(session, ctx);
        ctx.request_id = Some(headers::request_id(session.req_header()));
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; trusted_proxies,
            // limits and logs mean the IPv4 address.
            .map(|a| a.ip().to_canonical());
        ctx.trusted_peer = ctx.peer_ip.is_some_and(|ip| snap.is_trusted_proxy(ip));
        ctx.client_ip = headers::client_ip(
            session.req_header(),
            ctx.peer_ip,
            ctx.trusted_peer,
            &snap.trusted_proxies,
        );
        let answer = self.decide(session, ctx, &snap, sni.as_deref()).await;
        ctx.snapshot = Some(snap);
        self.answer(session, ctx, answer).await
    }

    /// Cache phase: turn the cache on for a cached tenant's cacheable route and request.
    fn request_cache_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        cache::enable(session, ctx);
        Ok(())
    }

    /// Cache key: tenant, host, path and query.
    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<CacheKey> {
        Ok(cache::key(session, ctx))
    }

    /// Cache lookup: the variant (`Vary`) this request asks for.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req)
    }

    /// Cache hit: a client asking for a revalidated answer gets one, if its tenant says so.
    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        _hit: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<ForcedFreshness>> {
        let revalidate = ctx.cache.as_ref().is_some_and(|c| c.revalidate);
        Ok((revalidate && is_fresh).then_some(ForcedFreshness::ForceExpired))
    }

    /// Backend response: whether it is stored, and for how long.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<RespCacheable> {
        Ok(cache::cacheable(session, resp, ctx))
    }

    /// Stale entries: pingora checks the entry's own windows (stale-while-revalidate when
    /// there is no error, stale-if-error otherwise); any failure to get a fresh answer that
    /// is not the client's own qualifies, an empty pool included.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| e.esource() != &ErrorSource::Downstream)
    }

    /// Peer selection (again on each retry): a usable backend this request has not tried yet.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(pool) = ctx.pool.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no pool chosen for this request",
            ));
        };
        let Some(index) = pool.select(ctx.hash_key, &ctx.tried, now_ms()) else {
            // After failed attempts this is a 502 (we could not reach a backend); before any
            // attempt, a 503 (nothing was healthy to begin with).
            let status = if ctx.tried.is_empty() { 503 } else { 502 };
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "no usable backend in pool",
            ));
        };
        let backend = &pool.backends[index];
        if ctx.metrics.is_some() {
            if let Some(selected) = backend.selected(ctx.tenant_id(), &pool.name) {
                selected.inc();
            }
        }
        if !ctx.tried.is_empty() {
            if let Some(m) = &ctx.metrics {
                m.retries.inc();
            }
        }
        ctx.upstream_started = Some(std::time::Instant::now());
        ctx.tried.push(index);
        ctx.inflight = Some(backend.state.start_request());
        Ok(Box::new(peer_for(&pool, backend.addr)))
    }

    /// Connect failure: count it against the backend at once, and retry another backend while
    /// the pool's retry budget lasts. Safe for any method: nothing reached the backend.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(m) = &ctx.metrics {
            m.connect_errors.inc();
        }
        if let Some(pool) = &ctx.pool {
            // Counted against this pool only: a failed TLS handshake (this pool's ca_file or
            // sni) takes the backend out of this pool, never out of another tenant's.
            self.passive_failure(ctx, &e);
            if ctx.tried.len() <= pool.retries as usize {
                e.set_retry(true);
            }
        }
        e.more_context(format!("Peer: {peer}"))
    }

    /// Failure after connecting: the backend's timeouts count against it. Only idempotent
    /// requests are ever sent again, never a POST that may have reached the backend.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let backend_timeout = e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
        // A backend that times out while the client still owes it part of the body is
        // waiting for that body: the client stalled, and it must not eject the backend.
        ctx.client_stalled = backend_timeout && !session.is_body_done();
        if backend_timeout && !ctx.client_stalled {
            if let Some(m) = &ctx.metrics {
                m.timeouts.inc();
            }
            self.passive_failure(ctx, &e);
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        let resendable = !ctx.client_stalled
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        self.decide_retry(&mut e, ctx, resendable, client_reused);
        e
    }

    /// Streamed bodies: `max_body` applies to what actually arrives, not only Content-Length.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // Bytes read from the client, not chunks seen here: a retry replays the buffered body
        // through this filter, which would count it twice.
        if let (Some(max), Some(_)) = (ctx.max_body, body.as_ref()) {
            if session.body_bytes_read() as u64 > max {
                ctx.refused_by = Some("max_body");
                if let Some(m) = &ctx.metrics {
                    m.limited("max_body");
                }
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than max_body",
                ));
            }
        }
        Ok(())
    }

    /// Upstream request phase: set the headers porteiro vouches for.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let (Some(snap), Some(t), Some(rid)) = (&ctx.snapshot, ctx.tenant, &ctx.request_id) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request reached upstream unrouted",
            ));
        };
        if let Some(path) = &ctx.normalized_path {
            // The backend gets the path the request was routed by.
            let uri = match upstream.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            if let Ok(uri) = uri.parse() {
                upstream.set_uri(uri);
            }
        }
        let host = headers::request_host(session.req_header()).unwrap_or("");
        headers::apply(
            upstream,
            &headers::Forwarding {
                peer_ip: ctx.peer_ip,
                trusted_peer: ctx.trusted_peer,
                proto: if ctx.tls { "https" } else { "http" },
                host,
                tenant_id: &snap.tenants[t as usize].id_header,
                request_id: rid,
                host_rewrite: ctx.pool.as_ref().and_then(|p| p.host_header.as_ref()),
                drop_underscore: snap.clients.drop_underscore_headers,
            },
        )
    }

    /// Upstream response phase: the backend answered, so a passive failure streak ends.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let (Some(pool), Some(&i)) = (&ctx.pool, ctx.tried.last()) {
            pool.backends[i].passive.record_success();
        }
        if let (Some(c), 304) = (ctx.cache.as_mut(), resp.status.as_u16()) {
            c.got_304 = true;
        }
        ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        Ok(())
    }

    /// Response phase (hits included): the request id, HSTS, and what the cache did.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        cache::report(session, resp, ctx);
        if let (101, Some(snap)) = (resp.status.as_u16(), &ctx.snapshot) {
            // An upgraded connection (WebSocket) may sit quiet for a while: idle rules, not
            // the request body's, apply from here.
            session.set_read_timeout(Some(snap.clients.keepalive_timeout));
        }
        if let Some(rid) = &ctx.request_id {
            resp.insert_header(headers::REQUEST_ID, rid.clone())?;
        }
        if let Some(hsts) = ctx.hsts() {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
        Ok(())
    }

    /// Last phase of every request: metrics (and the access log).
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map_or_else(|| e.map_or(0, status_for), |r| r.status.as_u16());
        if let Some(m) = &ctx.metrics {
            let method = metrics::method_index(&session.req_header().method);
            m.count_request(method, metrics::status_index(status));
            // An upgraded connection (WebSocket) lives for minutes: not a request latency.
            if status != 101 {
                m.request_duration
                    .observe(ctx.started.elapsed().as_secs_f64());
            }
            if let Some(up) = ctx.upstream_elapsed {
                m.upstream_duration.observe(up.as_secs_f64());
            }
            m.request_bytes.inc_by(session.body_bytes_read() as u64);
            m.response_bytes.inc_by(session.body_bytes_sent() as u64);
        }
        ctx.in_flight = None;
        cache::invalidate(session, ctx, status);
        if access_log::enabled() && ctx.sampled() {
            log::write_access_log(session, ctx, status);
        }
    }

    /// pingora's own `Fail to proxy` line: `fail_to_proxy` writes the one line a failed request
    /// gets when porteiro or a backend is at fault (`request failed`, status 500 and up, with
    /// tenant, pool, backend, attempts and status). A client's own failure (a hang-up, a stalled
    /// upload, a 4xx) gets no line: it is counted by status in the metrics and the access log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _e: &Error) -> bool {
        true
    }

    /// pingora's warning per retried attempt: a debug line of porteiro's own instead, with the
    /// tenant and backend (`porteiro_upstream_retries_total` counts them).
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        tracing::debug!(
            tenant = ctx.tenant_id(), pool = ctx.pool_name(), backend = ctx.backend_label(),
            attempts = ctx.tried.len(), error = %e, "attempt failed; retrying"
        );
        true
    }

    /// Fatal error: answer with a clear status and body (503 no backend, 502 unreachable,
    /// 504 timeout) and log which tenant, pool and backend were involved.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = if ctx.client_stalled {
            408
        } else {
            status_for(e)
        };
        if status >= 500 {
            tracing::warn!(
                tenant = ctx.tenant_id(), pool = ctx.pool_name(), backend = ctx.backend_label(),
                attempts = ctx.tried.len(), status, error = %e, "request failed"
            );
        }
        if status > 0 {
            // The connection is not reused after a failure; say so, or a client that reuses it
            // sees a reset instead of its next answer.
            session.set_keepalive(None);
            let _ = respond::error(
                session,
                status,
                respond::failure_reason(status),
                ctx.request_id.as_ref(),
                ctx.hsts(),
            )
            .await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// Whether the request came over TLS (noted in `ctx`), and the SNI the client sent.
fn client_tls(session: &Session, ctx: &mut RequestCtx) -> Option<String> {
    let tls = session.digest().and_then(|d| d.ssl_digest.as_ref());
    ctx.tls = tls.is_some();
    tls.and_then(|d| d.extension.get::<ClientSni>())
        .map(|s| s.0.clone())
}

impl Porteiro {
    async fn redirect(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        location: String,
    ) -> pingora::Result<bool> {
        let Ok(location) = http::HeaderValue::from_str(&location) else {
            respond::error(session, 400, "", ctx.request_id.as_ref(), ctx.hsts()).await?;
            return Ok(true);
        };
        let headers = [
            (http::header::LOCATION, location),
            (
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
        ];
        respond::send(
            session,
            308,
            &headers,
            bytes::Bytes::from_static(b"308 Permanent Redirect: use https\n"),
            ctx.request_id.as_ref(),
        )
        .await?;
        Ok(true)
    }

    /// Whether a request that failed after connecting goes to a backend again.
    fn decide_retry(&self, e: &mut Error, ctx: &mut RequestCtx, resendable: bool, reused: bool) {
        let dropped_unanswered = e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
            && ctx.upstream_elapsed.is_none();
        if !resendable {
            e.set_retry(false);
        } else if dropped_unanswered && reused {
            // A pooled connection the backend had already closed: not the backend's fault,
            // and the backend may be chosen again, on a new connection.
            ctx.tried.pop();
            e.set_retry(true);
        } else if dropped_unanswered {
            // A new connection reset or closed before any byte of answer: as nginx does,
            // another backend gets the request while the pool's `retries` last.
            self.passive_failure(ctx, e);
            let budget = ctx.pool.as_ref().map_or(0, |p| p.retries as usize);
            e.set_retry(ctx.tried.len() <= budget);
        } else {
            e.retry.decide_reuse(reused);
        }
    }

    fn passive_failure(&self, ctx: &RequestCtx, e: &Error) {
        let (Some(pool), Some(&i)) = (&ctx.pool, ctx.tried.last()) else {
            return;
        };
        let backend = &pool.backends[i];
        if backend.record_failure(&pool.thresholds, now_ms()) {
            tracing::warn!(
                tenant = ctx.tenant_id(), pool = %pool.name, backend = %backend.label, error = %e,
                "backend taken out of the pool after consecutive failures"
            );
        }
    }
}

/// The connection settings for one backend of `pool`.
fn peer_for(pool: &Pool, addr: std::net::SocketAddr) -> HttpPeer {
    let mut peer = match &pool.tls {
        Some(tls) => {
            let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.as_ref().map(|ca| ca.certs.clone());
            // pingora pools connections by address and SNI, not by CA: without this a
            // connection verified against one pool's CA could serve a pool trusting another.
            peer.group_key = tls.ca.as_ref().map_or(0, |ca| ca.fingerprint());
            if tls.http2 {
                peer.options.set_http_version(2, 1);
            }
            peer
        }
        None => HttpPeer::new(addr, false, String::new()),
    };
    let t = &pool.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.read);
    peer.options.write_timeout = Some(t.write);
    peer.options.idle_timeout = Some(t.idle);
    peer
}

/// The status a failed request gets. Backend timeouts are 504 and a client's are 408;
/// anything else the upstream side caused is 502; statuses we raised ourselves pass through;
/// a dead client gets nothing (0).
fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => 408,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Hash of the request's consistent-hash key; 0 when the pool does not hash.
fn hash_key(key: Option<&HashKey>, req: &RequestHeader, ctx: &RequestCtx) -> u64 {
    match key {
        None => 0,
        Some(HashKey::ClientIp) => match ctx.client_ip {
            Some(std::net::IpAddr::V4(ip)) => stable_hash(&ip.octets()),
            Some(std::net::IpAddr::V6(ip)) => stable_hash(&ip.octets()),
            None => 0,
        },
        Some(HashKey::Path) => stable_hash(req.uri.path().as_bytes()),
        Some(HashKey::Header(name)) => req
            .headers
            .get(name.as_str())
            .map_or(0, |v| stable_hash(v.as_bytes())),
    }
}
