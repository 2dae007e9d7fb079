use std::time::{Duration, SystemTime};

use pingora::cache::trace::Span;
use pingora::http::ResponseHeader;

use super::*;

fn store() -> &'static CacheStore {
    Box::leak(Box::default())
}

fn meta(tags: &str) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    if !tags.is_empty() {
        h.insert_header("cache-tag", tags).unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
}

fn key(tenant: &str, url: &str) -> CacheKey {
    CacheKey::new(policy::primary_key(tenant, false, "h.test", url), tenant)
}

async fn put(s: &'static CacheStore, k: &CacheKey, body: &[u8], tags: &str) {
    let span = Span::inactive();
    let mut miss = s
        .get_miss_handler(k, &meta(tags), &span.handle())
        .await
        .unwrap();
    miss.write_body(Bytes::copy_from_slice(body), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
}

async fn get(s: &'static CacheStore, k: &CacheKey) -> Option<Vec<u8>> {
    let span = Span::inactive();
    let (_, mut hit) = s.lookup(k, &span.handle()).await.unwrap()?;
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await.unwrap() {
        out.extend_from_slice(&b);
    }
    Some(out)
}

#[tokio::test]
async fn stored_only_when_finished() {
    let s = store();
    s.configure(&[("a", 1 << 20)]);
    let k = key("a", "/x");
    put(s, &k, b"hello", "").await;
    assert_eq!(get(s, &k).await.as_deref(), Some(&b"hello"[..]));
    let half = key("a", "/half");
    let span = Span::inactive();
    let mut miss = s
        .get_miss_handler(&half, &meta(""), &span.handle())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"part"), false)
        .await
        .unwrap();
    drop(miss);
    assert_eq!(
        get(s, &half).await,
        None,
        "a fill that never finished is invisible"
    );
    assert_eq!(get(s, &key("b", "/x")).await, None, "no partition, no hit");
}

#[tokio::test]
async fn a_tenant_filling_its_budget_evicts_only_its_own_entries() {
    let s = store();
    s.configure(&[("a", 20_000), ("b", 20_000)]);
    let body = vec![b'x'; 1000];
    for i in 0..5 {
        put(s, &key("b", &format!("/{i}")), &body, "").await;
    }
    for i in 0..200 {
        put(s, &key("a", &format!("/{i}")), &body, "").await;
    }
    let (a, b) = (s.partition("a").unwrap(), s.partition("b").unwrap());
    assert!(
        a.bytes() <= 20_000 && a.evictions() > 100,
        "{} {}",
        a.bytes(),
        a.evictions()
    );
    assert_eq!((b.entries(), b.evictions()), (5, 0));
    for i in 0..5 {
        assert!(get(s, &key("b", &format!("/{i}"))).await.is_some());
    }
    let huge = vec![0u8; 30_000];
    put(s, &key("a", "/huge"), &huge, "").await;
    assert_eq!(
        get(s, &key("a", "/huge")).await,
        None,
        "larger than the budget: not kept"
    );
}

#[tokio::test]
async fn configure_shrinks_keeps_and_drops_partitions() {
    let s = store();
    s.configure(&[("a", 1 << 20), ("gone", 1 << 20)]);
    for i in 0..10 {
        put(s, &key("a", &format!("/{i}")), &[0u8; 1000], "").await;
    }
    put(s, &key("gone", "/x"), b"x", "").await;
    s.configure(&[("a", 5_000)]);
    let a = s.partition("a").unwrap();
    assert!(a.bytes() <= 5_000 && a.entries() > 0, "{}", a.bytes());
    assert!(s.partition("gone").is_none());
    assert_eq!(get(s, &key("gone", "/x")).await, None);
}

#[tokio::test]
async fn purge_by_url_variants_and_by_tag() {
    let s = store();
    s.configure(&[("a", 1 << 20)]);
    let base = key("a", "/x");
    let mut variant = key("a", "/x");
    variant.set_variance_key(*b"0123456789abcdef");
    put(s, &base, b"v0", "t1, t2").await;
    put(s, &variant, b"v1", "").await;
    put(s, &key("a", "/y"), b"y", "t2").await;
    let a = s.partition("a").unwrap();
    assert_eq!(
        a.purge_primary(&base.primary_bin()),
        2,
        "every variant of the URL"
    );
    assert_eq!(get(s, &variant).await, None);
    assert_eq!(a.purge_tag("t2"), 1);
    assert_eq!(a.entries(), 0);
    put(s, &key("a", "/z"), b"z", "").await;
    assert_eq!(a.clear(), 1);
}

#[tokio::test]
async fn ranges_seek_within_the_body() {
    let s = store();
    s.configure(&[("a", 1 << 20)]);
    let k = key("a", "/r");
    put(s, &k, b"0123456789", "").await;
    let span = Span::inactive();
    let (_, mut hit) = s.lookup(&k, &span.handle()).await.unwrap().unwrap();
    assert!(hit.can_seek());
    hit.seek(2, Some(5)).unwrap();
    assert_eq!(hit.read_body().await.unwrap().as_deref(), Some(&b"234"[..]));
    assert_eq!(hit.read_body().await.unwrap(), None);
    hit.seek(8, None).unwrap();
    assert_eq!(hit.read_body().await.unwrap().as_deref(), Some(&b"89"[..]));
    assert!(hit.seek(5, Some(11)).is_err());
}

#[test]
fn stored_meta_rebuilds_what_pingora_reads() {
    let now = SystemTime::now();
    let mut h = ResponseHeader::build(404, None).unwrap();
    h.insert_header("Content-Type", "text/html; charset=utf-8")
        .unwrap();
    h.append_header("x-multi", "a:b").unwrap();
    h.append_header("x-multi", "c").unwrap();
    let mut meta = CacheMeta::new(now + Duration::from_secs(60), now, 5, 7, h);
    meta.set_epoch_override(now - Duration::from_secs(30));
    meta.set_variance(*b"0123456789abcdef");
    let back = StoredMeta::from(&meta).to_meta().unwrap();
    assert_eq!(back.response_header().status.as_u16(), 404);
    let multi: Vec<_> = back.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a:b", "c"]);
    assert_eq!(back.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(back.fresh_until(), meta.fresh_until());
    assert_eq!(
        (back.stale_while_revalidate_sec(), back.stale_if_error_sec()),
        (5, 7)
    );
    assert!(
        back.age() >= Duration::from_secs(30),
        "the age it arrived with counts"
    );
    assert_eq!(back.variance(), meta.variance());
}

#[tokio::test]
async fn a_fill_started_before_a_purge_is_not_stored() {
    let s = store();
    s.configure(&[("a", 1 << 20)]);
    let k = key("a", "/x");
    let span = Span::inactive();
    let mut miss = s
        .get_miss_handler(&k, &meta(""), &span.handle())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"old"), true)
        .await
        .unwrap();
    s.partition("a").unwrap().purge_primary(&k.primary_bin());
    miss.finish().await.unwrap();
    assert_eq!(get(s, &k).await, None, "the purge would have been undone");
    put(s, &k, b"new", "").await;
    assert_eq!(get(s, &k).await.as_deref(), Some(&b"new"[..]));
}

#[tokio::test]
async fn a_304_with_new_tags_is_indexed_again() {
    let s = store();
    s.configure(&[("a", 1 << 20)]);
    let k = key("a", "/t");
    put(s, &k, b"body", "v1").await;
    let span = Span::inactive();
    assert!(s
        .update_meta(&k, &meta("v2"), &span.handle())
        .await
        .unwrap());
    let a = s.partition("a").unwrap();
    assert_eq!(a.purge_tag("v1"), 0);
    assert_eq!(a.purge_tag("v2"), 1);
    assert!(
        !s.update_meta(&k, &meta("v3"), &span.handle())
            .await
            .unwrap(),
        "gone: false, no panic"
    );
}
