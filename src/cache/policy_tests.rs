use std::time::{Duration, SystemTime};

use super::*;

fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (n, v) in headers {
        r.append_header(n.to_string(), *v).unwrap();
    }
    r
}

fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, b"/x", None).unwrap();
    for (n, v) in headers {
        r.append_header(n.to_string(), *v).unwrap();
    }
    r
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn date(offset_secs: i64) -> String {
    let t = if offset_secs >= 0 {
        now() + Duration::from_secs(offset_secs as u64)
    } else {
        now() - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

fn fresh(s: Storable) -> Duration {
    match s {
        Storable::Yes(f) => f.fresh_for,
        Storable::No(why) => panic!("not storable: {why}"),
    }
}

fn check(r: &ResponseHeader) -> Storable {
    storable(r, Context::default(), now(), &TenantCache::default())
}

const AUTH: Context = Context {
    authorization: true,
    revalidated: false,
};

#[test]
fn explicit_freshness_in_rfc_order() {
    let s = |cc: &str| fresh(check(&resp(200, &[("cache-control", cc)])));
    assert_eq!(s("max-age=60"), Duration::from_secs(60));
    assert_eq!(
        s("max-age=60, s-maxage=10"),
        Duration::from_secs(10),
        "shared caches take s-maxage"
    );
    let expires = resp(200, &[("date", &date(0)), ("expires", &date(120))]);
    assert_eq!(fresh(check(&expires)), Duration::from_secs(120));
    let both = resp(
        200,
        &[("cache-control", "max-age=5"), ("expires", &date(120))],
    );
    assert_eq!(
        fresh(check(&both)),
        Duration::from_secs(5),
        "max-age beats Expires"
    );
    let bad = resp(200, &[("expires", "0"), ("etag", "\"v1\"")]);
    assert_eq!(
        fresh(check(&bad)),
        Duration::ZERO,
        "an invalid Expires is already stale"
    );
}

#[test]
fn an_absurd_age_is_capped_not_a_panic() {
    let r = resp(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"x\""),
            ("age", "18446744073709551615"),
        ],
    );
    match check(&r) {
        Storable::Yes(f) => assert_eq!(f.age, Duration::from_secs(1 << 31)),
        other => panic!("{other:?}"),
    }
    let many = (0..100)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let long = "x".repeat(200);
    let r = resp(200, &[("cache-tag", &many), ("surrogate-key", &long)]);
    assert_eq!(tags(&r.headers).len(), MAX_TAGS);
}

#[test]
fn age_and_date_shorten_freshness() {
    let aged = resp(200, &[("cache-control", "max-age=60"), ("age", "45")]);
    match check(&aged) {
        Storable::Yes(f) => assert_eq!(
            (f.fresh_for, f.age),
            (Duration::from_secs(15), Duration::from_secs(45))
        ),
        other => panic!("{other:?}"),
    }
    let late = resp(
        200,
        &[("cache-control", "max-age=60"), ("date", &date(-50))],
    );
    assert_eq!(fresh(check(&late)), Duration::from_secs(10));
    let revalidated = Context {
        revalidated: true,
        ..Context::default()
    };
    let confirmed = storable(&late, revalidated, now(), &TenantCache::default());
    assert_eq!(
        fresh(confirmed),
        Duration::from_secs(60),
        "a 304 makes it fresh again"
    );
    let future = resp(
        200,
        &[("cache-control", "max-age=60"), ("date", &date(3600))],
    );
    assert_eq!(
        fresh(check(&future)),
        Duration::from_secs(60),
        "a clock ahead is not negative age"
    );
}

#[test]
fn no_explicit_freshness_uses_default_ttl_then_heuristic() {
    let plain = resp(200, &[]);
    assert_eq!(check(&plain), Storable::No("no-freshness"));
    let p = TenantCache {
        default_ttl: Some(Duration::from_secs(300)),
        ..TenantCache::default()
    };
    assert_eq!(
        fresh(storable(&plain, Context::default(), now(), &p)),
        Duration::from_secs(300)
    );
    let modified = resp(200, &[("date", &date(0)), ("last-modified", &date(-1000))]);
    assert_eq!(
        fresh(check(&modified)),
        Duration::from_secs(100),
        "10% of its age"
    );
    let old = resp(
        200,
        &[("date", &date(0)), ("last-modified", &date(-10_000_000))],
    );
    assert_eq!(
        fresh(check(&old)),
        Duration::from_secs(24 * 3600),
        "capped at a day"
    );
    assert_eq!(
        storable(&resp(500, &[]), Context::default(), now(), &p),
        Storable::No("no-freshness"),
        "a 500 is never cached by default"
    );
    assert_eq!(
        fresh(storable(&resp(404, &[]), Context::default(), now(), &p)),
        Duration::from_secs(300)
    );
}

#[test]
fn what_is_never_stored() {
    for (status, headers, why) in [
        (
            200,
            vec![("cache-control", "no-store, max-age=60")],
            "no-store",
        ),
        (
            200,
            vec![("cache-control", "private, max-age=60")],
            "private",
        ),
        (
            200,
            vec![("cache-control", "private=\"x-user\", max-age=60")],
            "private",
        ),
        (
            200,
            vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            "set-cookie",
        ),
        (
            200,
            vec![("cache-control", "max-age=60"), ("vary", "accept, *")],
            "vary-star",
        ),
        (206, vec![("cache-control", "max-age=60")], "status"),
        (101, vec![], "status"),
        (
            200,
            vec![("cache-control", "max-age=0")],
            "stale-on-arrival",
        ),
    ] {
        assert_eq!(
            check(&resp(status, &headers)),
            Storable::No(why),
            "{headers:?}"
        );
    }
}

#[test]
fn authorization_needs_public_s_maxage_or_must_revalidate() {
    let p = TenantCache::default();
    let r = resp(200, &[("cache-control", "max-age=60")]);
    assert_eq!(storable(&r, AUTH, now(), &p), Storable::No("authorization"));
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "max-age=60, must-revalidate",
    ] {
        let r = resp(200, &[("cache-control", cc)]);
        assert!(
            matches!(storable(&r, AUTH, now(), &p), Storable::Yes(_)),
            "{cc}"
        );
    }
}

#[test]
fn no_cache_is_stored_stale_and_stale_windows_follow_the_rules() {
    let r = resp(
        200,
        &[
            ("cache-control", "no-cache, max-age=600"),
            ("etag", "\"a\""),
        ],
    );
    assert_eq!(fresh(check(&r)), Duration::ZERO, "always revalidated");
    let p = TenantCache {
        stale_while_revalidate: Duration::from_secs(30),
        stale_if_error: Duration::from_secs(300),
        ..TenantCache::default()
    };
    let windows = |cc: &str| match storable(
        &resp(200, &[("cache-control", cc)]),
        Context::default(),
        now(),
        &p,
    ) {
        Storable::Yes(f) => (
            f.stale_while_revalidate.as_secs(),
            f.stale_if_error.as_secs(),
        ),
        Storable::No(w) => panic!("{w}"),
    };
    assert_eq!(windows("max-age=60"), (30, 300), "tenant defaults");
    assert_eq!(
        windows("max-age=60, stale-while-revalidate=5, stale-if-error=7"),
        (5, 7)
    );
    assert_eq!(windows("max-age=60, must-revalidate"), (0, 0));
    assert_eq!(windows("s-maxage=60, stale-if-error=7"), (0, 0));
    let validated = resp(
        200,
        &[("cache-control", "no-cache, max-age=60"), ("etag", "\"a\"")],
    );
    match storable(&validated, Context::default(), now(), &p) {
        Storable::Yes(f) => assert_eq!(
            (f.stale_while_revalidate, f.stale_if_error),
            (Duration::ZERO, Duration::ZERO),
            "no-cache is never served stale"
        ),
        Storable::No(why) => panic!("{why}"),
    }
    let r = resp(200, &[("cache-control", "no-cache, max-age=60")]);
    assert_eq!(
        storable(&r, Context::default(), now(), &p),
        Storable::No("stale-on-arrival")
    );
}

#[test]
fn requests_that_bypass_or_revalidate() {
    let p = TenantCache::default();
    assert_eq!(
        request_verdict(&req("GET", &[]), &p),
        RequestVerdict::Use { revalidate: false }
    );
    assert_eq!(
        request_verdict(&req("HEAD", &[]), &p),
        RequestVerdict::Use { revalidate: false }
    );
    assert_eq!(
        request_verdict(&req("POST", &[]), &p),
        RequestVerdict::Bypass("method")
    );
    assert_eq!(
        request_verdict(&req("GET", &[("cookie", "s=1")]), &p),
        RequestVerdict::Bypass("cookie")
    );
    assert_eq!(
        request_verdict(&req("GET", &[("cache-control", "no-store")]), &p),
        RequestVerdict::Bypass("no-store")
    );
    let no_cache = req("GET", &[("cache-control", "no-cache")]);
    assert_eq!(
        request_verdict(&no_cache, &p),
        RequestVerdict::Use { revalidate: false }
    );
    let honor = TenantCache {
        honor_client_no_cache: true,
        ignore_cookies: true,
        ..TenantCache::default()
    };
    for h in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        assert_eq!(
            request_verdict(&req("GET", &[h]), &honor),
            RequestVerdict::Use { revalidate: true }
        );
    }
    assert_eq!(
        request_verdict(&req("GET", &[("cookie", "s=1")]), &honor),
        RequestVerdict::Use { revalidate: false }
    );
}

#[test]
fn keys_never_collide_across_tenants_or_hosts() {
    assert_ne!(
        primary_key("ab", false, "c", "/x"),
        primary_key("a", false, "bc", "/x")
    );
    assert_ne!(
        primary_key("a", false, "h", "/x?y"),
        primary_key("a", false, "h", "/x")
    );
    assert_ne!(
        primary_key("a", true, "h", "/x"),
        primary_key("a", false, "h", "/x")
    );
    assert_eq!(
        primary_key("a", true, "h", "/x"),
        primary_key("a", true, "h", "/x")
    );
}

#[test]
fn tags_vary_and_variants() {
    let r = resp(200, &[("cache-tag", "a, b,a"), ("surrogate-key", "c  b")]);
    let tags: Vec<String> = tags(&r.headers).iter().map(|t| t.to_string()).collect();
    assert_eq!(tags, ["a", "b", "c"]);
    let r = resp(
        200,
        &[("vary", "Accept-Encoding, accept"), ("vary", "X-Lang")],
    );
    assert_eq!(
        vary_names(&r.headers),
        ["accept", "accept-encoding", "x-lang"]
    );
    let a = req("GET", &[("accept-encoding", "gzip, BR")]);
    let b = req("GET", &[("accept-encoding", "br,gzip")]);
    assert_eq!(
        variant_value("accept-encoding", &a.headers),
        variant_value("accept-encoding", &b.headers)
    );
}

#[test]
fn invalidation_targets_stay_on_the_host() {
    assert!(invalidates(&Method::POST, 201));
    assert!(invalidates(&Method::DELETE, 204));
    assert!(!invalidates(&Method::POST, 500));
    assert!(!invalidates(&Method::GET, 200));
    assert_eq!(same_host_target("/a/b?c", "h.test"), Some("/a/b?c"));
    assert_eq!(
        same_host_target("https://H.test:8443/a", "h.test"),
        Some("/a")
    );
    assert_eq!(same_host_target("https://other.test/a", "h.test"), None);
    assert_eq!(same_host_target("//other.test/a", "h.test"), None);
    assert_eq!(same_host_target("a/b", "h.test"), None);
}
