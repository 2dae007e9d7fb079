//! The request phase's one decision: which tenant and route a request is for, and whether
//! porteiro answers it itself (bad requests, unknown hosts, TLS policy, `respond` routes,
//! limits). `decide` sets `ctx.tenant` once; `answer` writes every answer porteiro makes, so
//! each carries the request id and, over TLS, the tenant's HSTS.

use std::sync::Arc;

use pingora::proxy::Session;

use super::{headers, respond, tls_policy, Porteiro, RequestCtx};
use crate::limits;
use crate::metrics::{self, InFlight};
use crate::routing::{inspect_target, BadTarget, RoutedTarget};
use crate::snapshot::{PreparedResponse, Route, Snapshot};

pub(super) enum Answer {
    /// Forward to `ctx.pool`.
    Forward,
    /// A plain-text error: status and what was wrong.
    Error(u16, &'static str),
    Respond(Arc<PreparedResponse>),
    Redirect(String),
    Refuse(limits::Refusal),
}

impl Porteiro {
    pub(super) async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        sni: Option<&str>,
    ) -> Answer {
        let req = session.req_header();
        // Two Host headers could route by one and reach the backend with the other.
        let Some(host) = headers::request_host(req).filter(|_| headers::single_host(req)) else {
            return Answer::Error(400, "the request has no usable Host");
        };
        let Some(t) = snap.tenant_for_host(host) else {
            if metrics::get().counting() {
                metrics::get().unknown_host.inc();
            }
            return Answer::Error(snap.unknown_host_status, "no tenant serves this host");
        };
        ctx.tenant = Some(t);
        let tenant = &snap.tenants[t as usize];
        if metrics::get().counting() {
            let m = tenant.metrics().clone();
            ctx.in_flight = Some(InFlight::start(&m.in_flight));
            ctx.metrics = Some(m);
        }
        let target = match routed_target(req, tenant.config.allow_path_parameters) {
            Ok(target) => target,
            Err(answer) => return answer,
        };
        let path = target.route_path(req.uri.path());
        let conn = tls_policy::Connection {
            tls: ctx.tls,
            sni_tenant: sni.map(|name| snap.tenant_for_host(name)),
            host,
            path_and_query: req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            routed_path: path,
        };
        match tls_policy::gate(&conn, t, tenant.https_redirect, snap.https_port) {
            tls_policy::Gate::Pass => {}
            tls_policy::Gate::Misdirected => {
                tracing::info!(tenant = %tenant.id, sni, host, "421: TLS name belongs to another tenant");
                return Answer::Error(421, "");
            }
            tls_policy::Gate::Redirect(location) => return Answer::Redirect(location),
        }
        let answer = match tenant.routes.lookup(path) {
            None => Answer::Error(404, "no route for this path"),
            Some(Route::Respond(resp)) => Answer::Respond(resp.clone()),
            Some(Route::Pool { pool, cache }) => {
                ctx.hash_key = super::hash_key(pool.hash_key.as_ref(), req, ctx);
                ctx.pool = Some(pool.clone());
                ctx.route_caches = *cache;
                Answer::Forward
            }
        };
        ctx.normalized_path = target.forward;
        if headers::canonical_content_length(session.req_header_mut()).is_err() {
            return Answer::Error(400, "conflicting or malformed Content-Length");
        }
        // A cache refresh in the background (stale-while-revalidate) is porteiro's own request,
        // not the client's: it does not count against the tenant's limits.
        let background = session.subrequest_ctx.is_some();
        if let Some(limiter) = snap.limiters[t as usize].clone().filter(|_| !background) {
            let ipv6_prefix = snap.clients.client_ipv6_prefix;
            if let Err(refusal) = self.admit(session, ctx, limiter, ipv6_prefix).await {
                return Answer::Refuse(refusal);
            }
        }
        answer
    }

    /// Writes porteiro's own answer; `Ok(true)`: handled, `Ok(false)`: forward.
    pub(super) async fn answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: Answer,
    ) -> pingora::Result<bool> {
        match answer {
            Answer::Forward => return Ok(false),
            Answer::Error(status, why) => {
                if status == 400 {
                    // A request porteiro could not read may have a body it did not frame.
                    session.set_keepalive(None);
                }
                respond::error(session, status, why, ctx.request_id.as_ref(), ctx.hsts()).await?;
            }
            Answer::Respond(resp) => {
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
            }
            Answer::Redirect(location) => return self.redirect(session, ctx, location).await,
            Answer::Refuse(refusal) => return self.refuse(session, ctx, refusal).await,
        }
        Ok(true)
    }
}

/// The request target in a form routing can trust, or the 400 that refuses it.
fn routed_target(
    req: &pingora::http::RequestHeader,
    allow_path_parameters: bool,
) -> Result<RoutedTarget, Answer> {
    let is_options = req.method == http::Method::OPTIONS;
    let target = match inspect_target(is_options, req.raw_path(), req.uri.path()) {
        Ok(target) => target,
        Err(BadTarget::Form) => {
            return Err(Answer::Error(
                400,
                "the request target must be a path starting with /",
            ))
        }
        Err(BadTarget::Ambiguous) => {
            return Err(Answer::Error(
                400,
                "the path is ambiguous (encoded separators or dot segments)",
            ))
        }
    };
    if target.has_parameters && !allow_path_parameters {
        return Err(Answer::Error(
            400,
            "this site does not accept ; path parameters",
        ));
    }
    Ok(target)
}
