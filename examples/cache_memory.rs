//! Memory the cache really takes next to what it accounts for: fills one tenant's partition
//! through pingora's `Storage` interface, as the proxy does, and compares the process's RSS
//! growth with the partition's accounted bytes (bodies, stored headers, 256 B bookkeeping).
//!
//!   cargo run --release --example cache_memory -- small [OBJECTS]
//!   cargo run --release --example cache_memory -- large
//!
//! `small`: many small objects (default 1000000 of 200 B) in a 512 MiB budget; `large`: 40
//! objects of 8 MiB in a 256 MiB budget (so the last ones evict the first).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use porteiro::cache::{policy, CacheStore};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn meta(size: usize) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("content-length", size.to_string()).unwrap();
    for (n, v) in [
        ("content-type", "application/json"),
        ("cache-control", "public, max-age=300"),
        ("etag", "\"5d8c72a5edda8d6a\""),
        ("date", "Mon, 30 Nov 2026 12:00:00 GMT"),
    ] {
        h.insert_header(n, v).unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(300), now, 0, 0, h)
}

async fn fill(store: &'static CacheStore, tenant: &str, n: usize, size: usize) {
    let span = Span::inactive();
    // Written in 16 KiB chunks, as a backend's body arrives.
    let chunk = Bytes::from(vec![b'x'; size.min(16 << 10)]);
    for i in 0..n {
        let key = CacheKey::new(
            policy::primary_key(tenant, true, "shop.example.com", &format!("/api/items/{i}")),
            tenant,
        );
        let mut miss = store
            .get_miss_handler(&key, &meta(size), &span.handle())
            .await
            .unwrap();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            left -= n;
            miss.write_body(chunk.slice(..n), left == 0).await.unwrap();
        }
        miss.finish().await.unwrap();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // One mix per process: memory freed by one is not always returned, and would hide the
    // next one's growth.
    let mix = std::env::args().nth(1).unwrap_or_default();
    let small: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let store: &'static CacheStore = Box::leak(Box::default());
    let mixes = [
        ("small", small, 200, 512u64 << 20),
        ("large", 40, 8 << 20, 256u64 << 20),
    ];
    for (tenant, n, size, budget) in mixes.into_iter().filter(|m| m.0 == mix) {
        store.configure(&[(tenant, budget)]);
        let before = rss_bytes();
        fill(store, tenant, n, size).await;
        let part = store.partition(tenant).unwrap();
        let grown = rss_bytes().saturating_sub(before);
        let accounted = part.bytes();
        println!(
            "{n} objects of {size} B, budget {} MiB: {} entries kept, accounted {:.1} MiB, RSS grew {:.1} MiB ({:+.1}% over accounted), {} evictions",
            budget >> 20,
            part.entries(),
            accounted as f64 / 1048576.0,
            grown as f64 / 1048576.0,
            100.0 * (grown as f64 - accounted as f64) / accounted as f64,
            part.evictions(),
        );
        part.clear();
    }
}
