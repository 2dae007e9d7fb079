//! What may be cached and for how long (RFC 9111 for a shared cache), decided from headers
//! alone: no I/O, no clock of its own (`now` is passed in), so every rule is unit-tested.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};
use pingora::cache::cache_control::CacheControl;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::model::TenantCache;

/// Response headers that tag an entry for purging; never sent to clients.
pub const TAG_HEADERS: [&str; 2] = ["cache-tag", "surrogate-key"];

/// Request headers porteiro replaces before forwarding.
const VOUCHED_VARY: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-tenant-id",
    "x-request-id",
];

/// Statuses a cache may store without explicit freshness (RFC 9110 15.1).
const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
/// The largest delta-seconds value (RFC 9111 1.2.2).
const MAX_DELTA_SECONDS: u64 = 1 << 31;
/// A heuristic lifetime (10% of the time since Last-Modified) never exceeds this.
const HEURISTIC_CAP: Duration = Duration::from_secs(24 * 3600);

/// Whether a request may use the cache.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Look up, and store what comes back; `revalidate`: ask the backend even if fresh.
    Use { revalidate: bool },
    /// Straight to the backend, nothing stored.
    Bypass(&'static str),
}

pub fn request_verdict(req: &RequestHeader, p: &TenantCache) -> RequestVerdict {
    if req.method != Method::GET && req.method != Method::HEAD {
        return RequestVerdict::Bypass("method");
    }
    if !p.ignore_cookies && req.headers.contains_key(http::header::COOKIE) {
        // The backend may answer each user differently: never share one user's answer.
        return RequestVerdict::Bypass("cookie");
    }
    let cc = CacheControl::from_req_headers(req);
    if cc.as_ref().is_some_and(|cc| cc.no_store()) {
        return RequestVerdict::Bypass("no-store");
    }
    let asks_fresh = cc
        .as_ref()
        .is_some_and(|cc| cc.no_cache() || cc.max_age().ok().flatten() == Some(0))
        || header_has_token(&req.headers, "pragma", "no-cache");
    RequestVerdict::Use {
        revalidate: p.honor_client_no_cache && asks_fresh,
    }
}

/// How long a stored response is fresh, how old it already is, and its stale windows.
#[derive(Debug, PartialEq, Eq)]
pub struct Freshness {
    pub fresh_for: Duration,
    /// Its age when received (`Age` and `Date` corrected, RFC 9111 4.2.3).
    pub age: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Storable {
    Yes(Freshness),
    No(&'static str),
}

/// What else is known about the response being judged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// The request carried credentials (`Authorization`).
    pub authorization: bool,
    /// `resp` is a stored response just confirmed by a 304: its stored `Date` and `Age` are
    /// from the first fetch, and it is as fresh as it was then.
    pub revalidated: bool,
}

/// Whether a shared cache may store `resp`, and its freshness.
pub fn storable(resp: &ResponseHeader, cx: Context, now: SystemTime, p: &TenantCache) -> Storable {
    let authorization = cx.authorization;
    let status = resp.status.as_u16();
    if status < 200 || status == 206 || status == 304 {
        return Storable::No("status");
    }
    let h = &resp.headers;
    let cc = CacheControl::from_resp_headers(resp);
    let has = |f: fn(&CacheControl) -> bool| cc.as_ref().is_some_and(f);
    if has(CacheControl::no_store) {
        return Storable::No("no-store");
    }
    if has(CacheControl::private)
        || cc
            .as_ref()
            .is_some_and(|c| c.private_field_names().is_some())
    {
        return Storable::No("private");
    }
    if h.contains_key(http::header::SET_COOKIE) {
        return Storable::No("set-cookie");
    }
    if header_has_token(h, "vary", "*") {
        return Storable::No("vary-star");
    }
    // The backend saw porteiro's values of these, and a variant would be chosen by the
    // client's: never store what varies on them.
    if VOUCHED_VARY
        .iter()
        .any(|name| header_has_token(h, "vary", name))
    {
        return Storable::No("vary-on-forwarded");
    }
    let secs = |f: fn(&CacheControl) -> pingora::Result<Option<u32>>| {
        cc.as_ref()
            .and_then(|c| f(c).ok().flatten())
            .map(|s| Duration::from_secs(s.into()))
    };
    let s_maxage = secs(CacheControl::s_maxage);
    let must_revalidate = has(CacheControl::must_revalidate);
    if authorization && !(has(CacheControl::public) || s_maxage.is_some() || must_revalidate) {
        return Storable::No("authorization");
    }
    let date = http_date(h, "date")
        .filter(|d| *d <= now && !cx.revalidated)
        .unwrap_or(now);
    let age_header = h
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .filter(|_| !cx.revalidated)
        // RFC 9111 1.2.2: larger values mean 2^31 seconds.
        .map_or(Duration::ZERO, |s| {
            Duration::from_secs(s.min(MAX_DELTA_SECONDS))
        });
    let age = age_header.max(now.duration_since(date).unwrap_or_default());
    let lifetime = if let Some(s) = s_maxage.or_else(|| secs(CacheControl::max_age)) {
        s
    } else if let Some(v) = h.get(http::header::EXPIRES) {
        // An invalid Expires (such as "0") means already expired (RFC 9111 5.3).
        let expires = v
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok());
        expires.map_or(Duration::ZERO, |e| {
            e.duration_since(date).unwrap_or_default()
        })
    } else if !HEURISTIC_STATUSES.contains(&status) {
        return Storable::No("no-freshness");
    } else if let Some(ttl) = p.default_ttl {
        ttl
    } else if let Some(modified) = http_date(h, "last-modified") {
        (date.duration_since(modified).unwrap_or_default() / 10).min(HEURISTIC_CAP)
    } else {
        return Storable::No("no-freshness");
    };
    let lifetime = if has(CacheControl::no_cache) {
        Duration::ZERO
    } else {
        lifetime
    };
    // must-revalidate, proxy-revalidate and s-maxage forbid serving the entry stale, and
    // no-cache forbids using it at all without revalidation.
    let strict = must_revalidate
        || has(CacheControl::proxy_revalidate)
        || s_maxage.is_some()
        || has(CacheControl::no_cache);
    let window = |f, default| match strict {
        true => Duration::ZERO,
        false => secs(f).unwrap_or(default),
    };
    let freshness = Freshness {
        fresh_for: lifetime.saturating_sub(age),
        age,
        stale_while_revalidate: window(
            CacheControl::stale_while_revalidate,
            p.stale_while_revalidate,
        ),
        stale_if_error: window(CacheControl::stale_if_error, p.stale_if_error),
    };
    let validators =
        h.contains_key(http::header::ETAG) || h.contains_key(http::header::LAST_MODIFIED);
    if freshness.fresh_for.is_zero()
        && freshness.stale_while_revalidate.is_zero()
        && freshness.stale_if_error.is_zero()
        && !validators
    {
        return Storable::No("stale-on-arrival");
    }
    Storable::Yes(freshness)
}

/// The key of a URL within a tenant: tenant and host length-prefixed, so no two tenants (and
/// no two hosts of one tenant) can ever share an entry, whatever their paths; http and https
/// apart, since a backend may answer each differently (redirects, absolute links).
pub fn primary_key(tenant: &str, https: bool, host: &str, path_and_query: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + host.len() + path_and_query.len() + 24);
    let scheme = if https { "https" } else { "http" };
    for part in [tenant, scheme, host] {
        k.extend_from_slice(part.len().to_string().as_bytes());
        k.push(b':');
        k.extend_from_slice(part.as_bytes());
    }
    k.extend_from_slice(path_and_query.as_bytes());
    k
}

/// Tags kept per entry, and their length: a backend cannot make one entry's index outgrow it.
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_LEN: usize = 128;

/// The tags of a response (`Cache-Tag: a, b` and `Surrogate-Key: a b`), for purge by tag; at
/// most `MAX_TAGS` of at most `MAX_TAG_LEN` bytes (longer ones are left out).
pub fn tags(h: &HeaderMap) -> Vec<Box<str>> {
    let mut out: Vec<Box<str>> = Vec::new();
    for (name, separator) in [(TAG_HEADERS[0], ','), (TAG_HEADERS[1], ' ')] {
        for v in h.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            for tag in v.split(separator).map(str::trim) {
                if tag.is_empty()
                    || tag.len() > MAX_TAG_LEN
                    || out.iter().any(|t| t.as_ref() == tag)
                {
                    continue;
                }
                if out.len() == MAX_TAGS {
                    return out;
                }
                out.push(tag.into());
            }
        }
    }
    out
}

/// The request headers a stored response varies on, lowercase (`Vary: *` is never stored).
pub fn vary_names(h: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = h
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A request header's value as a variant of it: whitespace and letter case do not make a new
/// variant where they carry no meaning (`Accept-Encoding: gzip, br` is `br,gzip`).
pub fn variant_value(name: &str, req: &HeaderMap) -> String {
    let mut parts: Vec<String> = req
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect();
    if name == "accept-encoding" {
        for p in &mut parts {
            *p = p.to_ascii_lowercase().replace(' ', "");
        }
        parts.sort();
    }
    parts.join(",")
}

/// An unsafe method that succeeded changes the resource: its stored responses go (RFC 9111 4.4).
pub fn invalidates(method: &Method, status: u16) -> bool {
    let unsafe_method = !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    unsafe_method && (200..400).contains(&status)
}

/// The path (with query) a `Location` or `Content-Location` names, if it is on `host`:
/// relative references, or absolute URLs with that host. Another host is never invalidated.
pub fn same_host_target<'a>(value: &'a str, host: &str) -> Option<&'a str> {
    if value.starts_with('/') && !value.starts_with("//") {
        return Some(value);
    }
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let name = authority.rsplit_once(':').map_or(authority, |(n, _)| n);
    (name.eq_ignore_ascii_case(host) && !path.is_empty()).then_some(path)
}

fn http_date(h: &HeaderMap, name: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(h.get(name)?.to_str().ok()?).ok()
}

fn header_has_token(h: &HeaderMap, name: &str, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
