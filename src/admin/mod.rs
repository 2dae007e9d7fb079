//! The admin listener: `/-/healthy`, `/-/ready`, `POST /-/reload`, `GET /-/config`,
//! `DELETE /-/cache/{tenant}`.
//! Loopback by default; with `admin_token` set every request needs the bearer token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

pub mod purge;

use crate::reload::{Outcome, Reloader, Trigger};
use crate::snapshot::SharedSnapshot;

pub struct Admin {
    reloader: Arc<Reloader>,
    snapshot: Arc<SharedSnapshot>,
    /// Latched once every backend of the first configuration has been probed, so a reload
    /// that adds backends does not flap readiness.
    ready: AtomicBool,
}

impl Admin {
    pub fn new(reloader: Arc<Reloader>, snapshot: Arc<SharedSnapshot>) -> Self {
        Self {
            reloader,
            snapshot,
            ready: AtomicBool::new(false),
        }
    }

    fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let probed = self
            .snapshot
            .load()
            .health_targets
            .iter()
            .all(|t| t.state.was_probed());
        if probed {
            self.ready.store(true, Ordering::Relaxed);
        }
        probed
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = self.reloader.admin_token() else {
            return true;
        };
        let sent = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        sent.is_some_and(|s| constant_time_eq(s.as_bytes(), token.as_bytes()))
    }

    async fn route(&self, method: &Method, uri: &http::Uri) -> (StatusCode, serde_json::Value) {
        let path = uri.path();
        if let Some(tenant) = path.strip_prefix("/-/cache/") {
            return match *method {
                Method::DELETE => self.purge(tenant, uri.query()).await,
                _ => (
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"error": "method not allowed"}),
                ),
            };
        }
        match (method, path) {
            (&Method::GET, "/-/healthy") => (StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET, "/-/ready") if self.is_ready() => {
                (StatusCode::OK, json!({"status": "ready"}))
            }
            (&Method::GET, "/-/ready") => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "waiting for the first health checks"}),
            ),
            (&Method::GET, "/-/config") => {
                let mut status = json!(self.reloader.status());
                if let Some(cluster) = crate::cluster::get() {
                    status["cluster"] = cluster.status();
                }
                (StatusCode::OK, status)
            }
            (&Method::POST, "/-/reload") => self.reload().await,
            (_, "/-/healthy" | "/-/ready" | "/-/config" | "/-/reload" | "/metrics") => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed"}),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                json!({"error": "no such admin endpoint"}),
            ),
        }
    }

    /// Purges here, then (with a fleet) on every other instance through Redis; `fleet` in the
    /// answer says whether Redis took the message, `instances` how many others got it.
    async fn purge(&self, tenant: &str, query: Option<&str>) -> (StatusCode, serde_json::Value) {
        let (status, mut body) = purge::purge(&self.snapshot.load(), tenant, query);
        if let (StatusCode::OK, Some(cluster)) = (status, crate::cluster::get()) {
            let reached = cluster.broadcast_purge(tenant, query).await;
            body["fleet"] = json!(reached.is_some());
            body["instances"] = json!(reached);
        }
        (status, body)
    }

    async fn reload(&self) -> (StatusCode, serde_json::Value) {
        let outcome = self.reloader.reload_in_background(Trigger::Admin).await;
        match outcome {
            Some(Outcome::Applied {
                generation,
                refused,
            }) if refused.is_empty() => (
                StatusCode::OK,
                json!({"result": "applied", "generation": generation}),
            ),
            // Every other file applied; these serve their last good version, or nothing.
            Some(Outcome::Applied {
                generation,
                refused,
            }) => (
                StatusCode::OK,
                json!({"result": "partial", "generation": generation, "tenant_errors": refused}),
            ),
            Some(Outcome::Unchanged { generation }) => (
                StatusCode::OK,
                json!({"result": "unchanged", "generation": generation}),
            ),
            Some(Outcome::Failed(errors)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "result": "failed",
                    "errors": errors.0.iter().map(|e| json!({
                        "file": e.file.display().to_string(), "key": e.key, "reason": e.reason,
                    })).collect::<Vec<_>>(),
                }),
            ),
            None => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"result": "failed", "error": "the reload did not complete; see the log"}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let authorized = self.authorized(session);
        let method = session.req_header().method.clone();
        if authorized && method == Method::GET && session.req_header().uri.path() == "/metrics" {
            let body = crate::metrics::get()
                .render(&self.snapshot.load())
                .into_bytes();
            return Response::builder()
                .status(StatusCode::OK)
                .header(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .header(http::header::CONTENT_LENGTH, body.len())
                .header(http::header::CACHE_CONTROL, "no-store")
                .body(body)
                .unwrap_or_default();
        }
        let (status, body) = if authorized {
            let uri = session.req_header().uri.clone();
            self.route(&method, &uri).await
        } else {
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token"}),
            )
        };
        let mut body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        body.push(b'\n');
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap_or_default()
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Token comparison whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_scheme_in_any_case() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc", " Bearer abc "] {
            assert_eq!(super::bearer_token(v), Some("abc"), "{v:?}");
        }
        assert_eq!(super::bearer_token("Basic abc"), None);
        assert_eq!(super::bearer_token("Bearerabc"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
