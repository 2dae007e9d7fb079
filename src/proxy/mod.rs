//! The pingora `ProxyHttp` implementation. Each hook is short and hands the real decisions to
//! `snapshot` (routing), `upstream` (selection, health) and `headers`.

mod context;
pub mod headers;
mod limit;
mod log;
mod respond;
mod tls_policy;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

pub use context::RequestCtx;

use crate::access_log;
use crate::config::model::HashKey;
use crate::hash::stable_hash;
use crate::metrics::{self, InFlight};
use crate::routing::normalize_path;
use crate::snapshot::{Resolution, Route, SharedSnapshot};
use crate::tls::ClientSni;
use crate::upstream::now_ms;

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

    /// Request phase: pin the snapshot, find tenant and route; answer unknown hosts,
    /// unmatched paths and `respond` routes here so they never reach a backend.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let snap = self.snapshot.load_full();
        let sni = client_tls(session, ctx);
        let req = session.req_header();
        ctx.request_id = Some(headers::request_id(req));
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; trusted_proxies,
            // limits and logs mean the IPv4 address.
            .map(|a| a.ip().to_canonical());
        // Two Host headers could route by one and reach the backend with the other.
        let Some(host) = headers::request_host(req).filter(|_| headers::single_host(req)) else {
            return self.answer_error(session, ctx, 400).await;
        };
        let Ok(normalized) = normalize_path(req.uri.path()) else {
            // Still the tenant's answer: logged under its name, with its HSTS.
            ctx.tenant = snap.tenant_for_host(host);
            ctx.snapshot = Some(snap.clone());
            return self.answer_error(session, ctx, 400).await;
        };
        ctx.normalized_path = normalized;
        let path = ctx.normalized_path.as_deref().unwrap_or(req.uri.path());
        let resolution = snap.resolve(host, path);
        let tenant = match &resolution {
            Resolution::UnknownHost => None,
            Resolution::NoRoute(t) | Resolution::Route(t, _) => Some(*t),
        };
        if metrics::get().counting() {
            match tenant {
                Some(t) => {
                    let m = snap.tenants[t as usize].metrics().clone();
                    ctx.in_flight = Some(InFlight::start(&m.in_flight));
                    ctx.metrics = Some(m);
                }
                None => metrics::get().unknown_host.inc(),
            }
        }
        if let Some(t) = tenant {
            let conn = tls_policy::Connection {
                tls: ctx.tls,
                sni_tenant: sni.as_deref().map(|name| snap.tenant_for_host(name)),
                host,
                path_and_query: req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
                routed_path: path,
            };
            let tc = &snap.tenants[t as usize];
            match tls_policy::gate(&conn, t, tc.https_redirect, snap.https_port) {
                tls_policy::Gate::Pass => {}
                tls_policy::Gate::Misdirected => {
                    tracing::info!(tenant = %tc.id, sni = sni.as_deref(), host, "421: TLS name belongs to another tenant");
                    ctx.tenant = Some(t);
                    ctx.snapshot = Some(snap.clone());
                    return self.answer_error(session, ctx, 421).await;
                }
                tls_policy::Gate::Redirect(location) => {
                    ctx.tenant = Some(t);
                    ctx.snapshot = Some(snap.clone());
                    return self.redirect(session, ctx, location).await;
                }
            }
        }
        let answer = match resolution {
            Resolution::UnknownHost => Err(snap.unknown_host_status),
            Resolution::NoRoute(t) => {
                ctx.tenant = Some(t);
                Err(404)
            }
            Resolution::Route(t, Route::Respond(resp)) => {
                ctx.tenant = Some(t);
                Ok(Some(resp.clone()))
            }
            Resolution::Route(t, Route::Pool(pool)) => {
                ctx.tenant = Some(t);
                ctx.hash_key = hash_key(pool.hash_key.as_ref(), session.req_header(), ctx);
                ctx.pool = Some(pool.clone());
                Ok(None)
            }
        };
        if let Some(limiter) = tenant.and_then(|t| snap.limiters[t as usize].clone()) {
            if let Err(refusal) = self.admit(session, ctx, &snap, limiter) {
                ctx.snapshot = Some(snap);
                return self.refuse(session, ctx, refusal).await;
            }
        }
        ctx.snapshot = Some(snap);
        match answer {
            Ok(None) => Ok(false),
            Ok(Some(resp)) => {
                let mut headers = resp.headers.clone();
                if let Some(hsts) = ctx.hsts() {
                    headers.push((http::header::STRICT_TRANSPORT_SECURITY, hsts.clone()));
                }
                respond::send(
                    session,
                    resp.status,
                    &headers,
                    resp.body.clone(),
                    ctx.request_id.as_ref(),
                )
                .await?;
                Ok(true)
            }
            Err(status) => self.answer_error(session, ctx, status).await,
        }
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
        let mut peer = match &pool.tls {
            Some(tls) => {
                let mut peer = HttpPeer::new(backend.addr, true, tls.sni.clone());
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
            None => HttpPeer::new(backend.addr, false, String::new()),
        };
        let t = &pool.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        Ok(Box::new(peer))
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
            // A failed TLS handshake says more about this pool's TLS settings (ca_file, sni)
            // than about the backend, which other tenants may reach fine: it must not eject it.
            if !matches!(
                e.etype(),
                ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert
            ) {
                self.passive_failure(ctx, &e);
            }
            if ctx.tried.len() <= pool.retries as usize {
                e.set_retry(true);
            }
        }
        e.more_context(format!("Peer: {peer}"))
    }

    /// Failure after connecting: timeouts count against the backend; a retry happens only for
    /// idempotent requests on a reused connection (pingora's rule), never for a POST that may
    /// have reached the backend.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // Only the backend's own timeouts: a client stalling its upload times out here too,
        // and must not count against (or eject) the backend.
        if e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            )
        {
            if let Some(m) = &ctx.metrics {
                m.timeouts.inc();
            }
            self.passive_failure(ctx, &e);
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
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
                metrics::get().limited(ctx.tenant_id(), "max_body");
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
        let trusted_peer = ctx.client_ip.is_some_and(|ip| snap.is_trusted_proxy(ip));
        let host = headers::request_host(session.req_header()).unwrap_or("");
        headers::apply(
            upstream,
            &headers::Forwarding {
                client_ip: ctx.client_ip,
                trusted_peer,
                proto: if ctx.tls { "https" } else { "http" },
                host,
                tenant_id: &snap.tenants[t as usize].id_header,
                request_id: rid,
                host_rewrite: ctx.pool.as_ref().and_then(|p| p.host_header.as_ref()),
            },
        )
    }

    /// Upstream response phase: the backend answered, so a passive failure streak ends.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let (Some(pool), Some(&i)) = (&ctx.pool, ctx.tried.last()) {
            pool.backends[i].state.record_passive_success();
        }
        ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        Ok(())
    }

    /// Response phase: echo the request id to the client.
    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(rid) = &ctx.request_id {
            resp.insert_header(headers::X_REQUEST_ID, rid.clone())?;
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
        if access_log::enabled() && ctx.sampled() {
            log::write_access_log(session, ctx, status);
        }
    }

    /// Error log: a client that hangs up is not an error worth a log line per connection.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    /// Fatal error: answer with a clear status and body (503 no backend, 502 unreachable,
    /// 504 timeout) and log which tenant, pool and backend were involved.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = status_for(e);
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
                respond::reason_for(status),
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
            return self.answer_error(session, ctx, 400).await;
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

    async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        status: u16,
    ) -> pingora::Result<bool> {
        respond::error(
            session,
            status,
            respond::reason_for(status),
            ctx.request_id.as_ref(),
            ctx.hsts(),
        )
        .await?;
        Ok(true)
    }

    fn passive_failure(&self, ctx: &RequestCtx, e: &Error) {
        let (Some(pool), Some(&i)) = (&ctx.pool, ctx.tried.last()) else {
            return;
        };
        let backend = &pool.backends[i];
        if backend
            .state
            .record_passive_failure(&pool.thresholds, now_ms())
        {
            tracing::warn!(
                tenant = ctx.tenant_id(), pool = %pool.name, backend = %backend.label, error = %e,
                "backend taken out after consecutive failures"
            );
        }
    }
}

/// The status a failed request gets. Timeouts are 504; anything the upstream side caused is
/// 502; statuses we raised ourselves pass through; a dead client gets nothing (0).
fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
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
