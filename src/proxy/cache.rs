//! The cache in the request path: whether a request may use it, its key and variant, whether
//! the backend's answer is stored, and what the client is told (`Cache-Status`, RFC 9211).
//! The rules themselves are in `cache::policy`; this module applies them to a session.

use std::time::SystemTime;

use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::{CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason};
use pingora::cache::{RespCacheable, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use super::context::CacheUse;
use super::{headers, RequestCtx};
use crate::cache::policy::{self, RequestVerdict, Storable};
use crate::config::model::TenantCache;
use crate::routing::normalize_host;

/// The tenant's cache settings, when the request's route may be cached at all.
fn settings(ctx: &RequestCtx) -> Option<&TenantCache> {
    let (snap, t) = (ctx.snapshot.as_ref()?, ctx.tenant?);
    let cache = snap.tenants[t as usize].config.cache.as_ref()?;
    (cache.enabled && ctx.route_caches && snap.cache.max_memory > 0).then_some(cache)
}

/// `request_cache_filter`: turn the cache on for this request, or note why not.
pub fn enable(session: &mut Session, ctx: &mut RequestCtx) {
    let Some(settings) = settings(ctx) else {
        return;
    };
    let verdict = policy::request_verdict(session.req_header(), settings);
    let (max_object, lock_timeout) = (
        settings.max_object_size,
        ctx.snapshot.as_ref().map(|s| s.cache.lock_timeout),
    );
    let mut cache_use = CacheUse::default();
    match verdict {
        RequestVerdict::Bypass(why) => cache_use.bypass = Some(why),
        RequestVerdict::Use { revalidate } => {
            cache_use.revalidate = revalidate;
            let mut overrides = CacheOptionOverrides::default();
            overrides.wait_timeout = lock_timeout;
            let store = crate::cache::store();
            session.cache.enable(
                store,
                None,
                None,
                Some(crate::cache::lock()),
                Some(overrides),
            );
            session.cache.set_max_file_size_bytes(max_object as usize);
        }
    }
    ctx.cache = Some(cache_use);
}

/// `cache_key_callback`: tenant, host and the path as forwarded, so two tenants (or two
/// hosts of one tenant) never share an entry.
pub fn key(session: &Session, ctx: &RequestCtx) -> CacheKey {
    let req = session.req_header();
    let tenant = ctx.tenant_id();
    let host = headers::request_host(req)
        .and_then(normalize_host)
        .unwrap_or_default();
    let path = ctx.normalized_path.as_deref().unwrap_or(req.uri.path());
    let primary = match req.uri.query() {
        Some(q) => policy::primary_key(tenant, ctx.tls, &host, &format!("{path}?{q}")),
        None => policy::primary_key(tenant, ctx.tls, &host, path),
    };
    CacheKey::new(primary, tenant)
}

/// `cache_vary_filter`: the variant of a stored response this request asks for.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let names = policy::vary_names(meta.headers());
    if names.is_empty() {
        return None;
    }
    let mut variance = VarianceBuilder::new();
    for name in &names {
        variance.add_owned_value(name, policy::variant_value(name, &req.headers).into_bytes());
    }
    variance.finalize()
}

/// `response_cache_filter`: store the backend's answer, and for how long.
pub fn cacheable(session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) -> RespCacheable {
    let Some(settings) = settings(ctx) else {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("disabled"));
    };
    let now = SystemTime::now();
    let cx = policy::Context {
        authorization: session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION),
        // After a 304, pingora judges the stored response merged with the 304's headers.
        revalidated: ctx.cache.as_ref().is_some_and(|c| c.got_304),
    };
    let verdict = policy::storable(resp, cx, now, settings);
    let stored = matches!(verdict, Storable::Yes(_));
    if let Some(c) = ctx.cache.as_mut() {
        c.stored = stored;
    }
    match verdict {
        Storable::No(why) => RespCacheable::Uncacheable(NoCacheReason::Custom(why)),
        Storable::Yes(f) => {
            let secs = |d: std::time::Duration| d.as_secs().min(u32::MAX as u64) as u32;
            // Config and the Age cap keep these far from overflow; saturate all the same.
            let fresh_until = now.checked_add(f.fresh_for).unwrap_or(now);
            let mut meta = CacheMeta::new(
                fresh_until,
                now,
                secs(f.stale_while_revalidate),
                secs(f.stale_if_error),
                resp.clone(),
            );
            // The age it arrived with counts: `Age` on hits includes it.
            meta.set_epoch_override(now.checked_sub(f.age).unwrap_or(now));
            RespCacheable::Cacheable(meta)
        }
    }
}

/// `response_filter`: say what the cache did (header, metric), and keep purge tags private.
pub fn report(session: &Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
    let Some(c) = ctx.cache.as_mut() else {
        return;
    };
    for name in policy::TAG_HEADERS {
        resp.remove_header(name);
    }
    let cache = &session.cache;
    let waited = cache.lock_duration().is_some();
    // Only a fresh hit's ttl varies; every other value is a constant, built without allocating.
    let fixed = |v: &'static str| http::HeaderValue::from_static(v);
    let (result, status) = match (c.bypass, cache.phase()) {
        (Some(_), _) => ("bypass", fixed("porteiro; fwd=bypass")),
        (None, CachePhase::Hit) if waited => {
            ("coalesced", fixed("porteiro; hit; detail=coalesced"))
        }
        (None, CachePhase::Hit) => {
            let ttl = format!("porteiro; hit; ttl={}", ttl(cache.cache_meta()));
            (
                "hit",
                http::HeaderValue::from_str(&ttl).unwrap_or(fixed("porteiro; hit")),
            )
        }
        (None, CachePhase::Stale | CachePhase::StaleUpdating) => (
            "stale",
            fixed("porteiro; hit; fwd=stale; detail=stale-served"),
        ),
        (None, CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_)) => {
            ("revalidated", fixed("porteiro; fwd=stale; fwd-status=304"))
        }
        (None, CachePhase::Expired) if c.stored => ("miss", fixed("porteiro; fwd=stale; stored")),
        (None, CachePhase::Expired) => ("miss", fixed("porteiro; fwd=stale")),
        (None, CachePhase::Miss) if c.stored => ("miss", fixed("porteiro; fwd=uri-miss; stored")),
        // A miss not stored, or looked up and then not stored (uncacheable, too large, a lock
        // wait that timed out).
        (None, CachePhase::Miss | CachePhase::Disabled(_)) => {
            ("miss", fixed("porteiro; fwd=uri-miss"))
        }
        (None, _) => ("bypass", fixed("porteiro; fwd=bypass; detail=uncacheable")),
    };
    c.result = Some(result);
    let _ = resp.insert_header("cache-status", status);
    if let Some(m) = &ctx.metrics {
        m.cache_result(result);
    }
}

fn ttl(meta: &CacheMeta) -> i64 {
    let now = SystemTime::now();
    match meta.fresh_until().duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64),
    }
}

/// `logging`: an unsafe method that succeeded drops the stored responses of its URL and of
/// the URLs its `Location` / `Content-Location` name on the same host (RFC 9111 4.4).
pub fn invalidate(session: &Session, ctx: &RequestCtx, status: u16) {
    let req = session.req_header();
    if settings(ctx).is_none() || !policy::invalidates(&req.method, status) {
        return;
    }
    let Some(part) = crate::cache::store().partition(ctx.tenant_id()) else {
        return;
    };
    let purge = |path_and_query: &str, host: &str| {
        for https in [false, true] {
            let primary = policy::primary_key(ctx.tenant_id(), https, host, path_and_query);
            part.purge_primary(&CacheKey::new(primary, "").primary_bin());
        }
    };
    let Some(host) = headers::request_host(req).and_then(normalize_host) else {
        return;
    };
    let path = ctx.normalized_path.as_deref().unwrap_or(req.uri.path());
    match req.uri.query() {
        Some(q) => purge(&format!("{path}?{q}"), &host),
        None => purge(path, &host),
    }
    let Some(resp) = session.response_written() else {
        return;
    };
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let target = resp.headers.get(&name).and_then(|v| v.to_str().ok());
        if let Some(p) = target.and_then(|v| policy::same_host_target(v, &host)) {
            purge(p, &host);
        }
    }
}
