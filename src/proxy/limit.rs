//! Tenant limits in the request path: ask the limiter once, answer a refusal in the standard
//! way (status, Retry-After, RateLimit-Policy / RateLimit), never forward it.

use std::sync::Arc;

use pingora::proxy::Session;

use super::{respond, Porteiro, RequestCtx};
use crate::limits::{self, TenantLimiter};

impl Porteiro {
    /// Asks the tenant's limiter; on success the permit lives in `ctx` until the request ends.
    pub(super) async fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        limiter: Arc<TenantLimiter>,
        ipv6_prefix: u8,
    ) -> Result<(), limits::Refusal> {
        let req = session.req_header();
        let request = limits::Request {
            client_ip: ctx
                .client_ip
                .map(|ip| limits::address_block(ip, ipv6_prefix)),
            content_length: req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        };
        ctx.max_body = limiter.config.max_body;
        let decision = limiter.admit(&request).await;
        if decision.fell_back {
            if let Some(m) = &ctx.metrics {
                m.fell_back();
            }
        }
        match decision.outcome {
            Ok(permit) => {
                ctx.permit = Some(permit);
                Ok(())
            }
            Err(refusal) => {
                ctx.refused_by = Some(refusal.limit);
                Err(refusal)
            }
        }
    }

    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        refusal: limits::Refusal,
    ) -> pingora::Result<bool> {
        if let Some(m) = &ctx.metrics {
            m.limited(refusal.limit);
        }
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        )];
        let mut add = |name: &'static str, value: String| {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.push((http::HeaderName::from_static(name), v));
            }
        };
        if let Some(after) = refusal.retry_after {
            add("retry-after", limits::ceil_secs(after).to_string());
        }
        if let Some(policy) = refusal.policy {
            add("ratelimit-policy", policy);
        }
        if let Some(state) = refusal.state {
            add("ratelimit", state);
        }
        if let Some(hsts) = ctx.hsts() {
            headers.push((http::header::STRICT_TRANSPORT_SECURITY, hsts.clone()));
        }
        let body = match refusal.status {
            413 => "413 Content Too Large: the request body exceeds this site's limit\n",
            503 => "503 Service Unavailable: too many requests in progress for this site\n",
            _ => "429 Too Many Requests: this site's request limit was reached\n",
        };
        if refusal.status == 413 {
            // The unread body would otherwise be taken as the next request.
            session.set_keepalive(None);
        }
        respond::send(
            session,
            refusal.status,
            &headers,
            bytes::Bytes::from_static(body.as_bytes()),
            ctx.request_id.as_ref(),
        )
        .await?;
        Ok(true)
    }
}
