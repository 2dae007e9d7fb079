//! `DELETE /-/cache/{tenant}`: everything of a tenant; `?url=URL`: one URL, all its variants;
//! `?tag=TAG`: every entry tagged so (`Cache-Tag`, `Surrogate-Key`).

use http::StatusCode;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use serde_json::{json, Value};

use crate::cache::policy::primary_key;
use crate::routing::paths::escaped_byte;
use crate::routing::{normalize_host, normalize_path};
use crate::snapshot::Snapshot;

pub fn purge(snap: &Snapshot, tenant: &str, query: Option<&str>) -> (StatusCode, Value) {
    let Some(index) = snap.tenants.iter().position(|t| t.id.as_ref() == tenant) else {
        return (StatusCode::NOT_FOUND, json!({"error": "no such tenant"}));
    };
    let Some(part) = crate::cache::store().partition(tenant) else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": "this tenant has no cache"}),
        );
    };
    let params: Vec<(String, String)> = query.map(parse_query).unwrap_or_default();
    // A misspelt parameter must not fall through to "everything".
    if let Some((unknown, _)) = params.iter().find(|(k, _)| k != "url" && k != "tag") {
        return bad(&format!("unknown parameter `{unknown}` (url or tag)"));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let purged = match (param("url"), param("tag")) {
        (None, None) => part.clear(),
        (Some(url), None) => {
            let Some((host, path)) = split_url(url) else {
                return bad("url must be http(s)://HOST/PATH?QUERY or HOST/PATH?QUERY");
            };
            let Some(host) = normalize_host(host) else {
                return bad("url has no valid host");
            };
            if snap.tenant_for_host(&host) != Some(index as u32) {
                return bad("the url's host does not belong to this tenant");
            }
            // Stored under the path as routed: normalise it the same way.
            let (p, q) = path
                .split_once('?')
                .map_or((path, None), |(p, q)| (p, Some(q)));
            let p = match normalize_path(p) {
                Ok(n) => n.unwrap_or_else(|| p.to_string()),
                Err(_) => return bad("the url's path is ambiguous"),
            };
            let path = q.map_or(p.clone(), |q| format!("{p}?{q}"));
            // The scheme of the url does not matter: both are purged.
            [false, true]
                .iter()
                .map(|https| {
                    let primary = primary_key(tenant, *https, &host, &path);
                    part.purge_primary(&CacheKey::new(primary, tenant).primary_bin())
                })
                .sum()
        }
        (None, Some(tag)) => part.purge_tag(tag),
        (Some(_), Some(_)) => return bad("give url or tag, not both"),
    };
    (StatusCode::OK, json!({"tenant": tenant, "purged": purged}))
}

fn bad(why: &str) -> (StatusCode, Value) {
    (StatusCode::BAD_REQUEST, json!({"error": why}))
}

/// `http://host/path?q`, `https://…` or `host/path?q` → (host with any port, path?q).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let slash = rest.find('/')?;
    let (host, path) = rest.split_at(slash);
    (!host.is_empty()).then_some((host, path))
}

/// `a=1&b=x%20y` decoded (`+` is a space, as in forms).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], escaped_byte(b, i)) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(if c == b'+' { b' ' } else { c });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_queries() {
        assert_eq!(
            split_url("https://a.test:8443/x?y=1"),
            Some(("a.test:8443", "/x?y=1"))
        );
        assert_eq!(split_url("a.test/x"), Some(("a.test", "/x")));
        assert_eq!(split_url("a.test"), None);
        assert_eq!(split_url("http:///x"), None);
        assert_eq!(
            parse_query("url=http%3A%2F%2Fa.test%2Fx%3Fq%3D1&tag=a+b"),
            [
                ("url".to_string(), "http://a.test/x?q=1".to_string()),
                ("tag".to_string(), "a b".to_string())
            ]
        );
    }
}
