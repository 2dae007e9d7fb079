//! The access log line of one request.

use pingora::proxy::Session;

use super::{headers, RequestCtx};
use crate::access_log;

pub(super) fn write_access_log(session: &Session, ctx: &RequestCtx, status: u16) {
    let req = session.req_header();
    let millis = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    access_log::log(&access_log::Entry {
        time: access_log::Time(std::time::SystemTime::now()),
        tenant: ctx.tenant_id(),
        host: headers::request_host(req).unwrap_or(""),
        method: req.method.as_str(),
        path: req.uri.path(),
        status,
        bytes_in: session.body_bytes_read() as u64,
        bytes_out: session.body_bytes_sent() as u64,
        duration_ms: millis(ctx.started.elapsed()),
        upstream: (!ctx.tried.is_empty()).then(|| ctx.backend_label()),
        upstream_ms: ctx.upstream_elapsed.map(millis),
        request_id: ctx
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        client_ip: ctx.client_ip,
        peer: ctx.peer_ip.filter(|_| ctx.trusted_peer),
        tls: ctx.tls,
        h2: session.is_http2(),
        cache: ctx.cache.as_ref().and_then(|c| c.result),
    });
}
