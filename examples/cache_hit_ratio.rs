//! Hit ratio of porteiro's cache eviction (SIEVE, `porteiro::cache::evict`) next to plain LRU
//! on the same trace: requests for objects whose popularity follows a Zipf law, with sizes
//! spread from 1 KiB to 64 KiB, through a byte budget smaller than the working set.
//!
//!   cargo run --release --example cache_hit_ratio [-- OBJECTS REQUESTS ALPHA BUDGET_PERCENT]
//!
//! Defaults: 100000 objects, 2000000 requests, alpha 0.9, budget 10% of all objects' bytes.
//! Prints the object and byte hit ratio of each policy for that one trace (fixed seed).

use porteiro::cache::evict::Sieve;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (objects, requests) = (arg(0, 100_000.0) as usize, arg(1, 2_000_000.0) as usize);
    let (alpha, budget_pct) = (arg(2, 0.9), arg(3, 10.0));
    let mut rng = fastrand::Rng::with_seed(42);
    // Object i has rank i; sizes are independent of popularity.
    let sizes: Vec<u64> = (0..objects).map(|_| rng.u64(1024..=65536)).collect();
    let total: u64 = sizes.iter().sum();
    let budget = (total as f64 * budget_pct / 100.0) as u64;
    let cdf = zipf_cdf(objects, alpha);
    let trace: Vec<usize> = (0..requests)
        .map(|_| {
            let u = rng.f64();
            cdf.partition_point(|&c| c < u).min(objects - 1)
        })
        .collect();
    println!(
        "{objects} objects ({} MiB), {requests} requests, Zipf alpha {alpha}, budget {budget_pct}% ({} MiB)",
        total >> 20,
        budget >> 20
    );
    for (name, (hits, hit_bytes, bytes)) in [
        ("SIEVE (porteiro)", sieve(&trace, &sizes, budget)),
        ("LRU", lru(&trace, &sizes, budget)),
    ] {
        println!(
            "{name:<18} object hit ratio {:.2}%   byte hit ratio {:.2}%",
            100.0 * hits as f64 / requests as f64,
            100.0 * hit_bytes as f64 / bytes as f64
        );
    }
}

fn zipf_cdf(n: usize, alpha: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(alpha)).collect();
    let sum: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / sum;
            acc
        })
        .collect()
}

/// (hits, bytes served from cache, bytes requested)
fn sieve(trace: &[usize], sizes: &[u64], budget: u64) -> (u64, u64, u64) {
    let mut s: Sieve<usize> = Sieve::default();
    let (mut hits, mut hit_bytes, mut bytes) = (0, 0, 0);
    for &k in trace {
        bytes += sizes[k];
        if s.touch(&k) {
            hits += 1;
            hit_bytes += sizes[k];
            continue;
        }
        s.insert(k, sizes[k]);
        while s.weight() > budget {
            s.evict();
        }
    }
    (hits, hit_bytes, bytes)
}

fn lru(trace: &[usize], sizes: &[u64], budget: u64) -> (u64, u64, u64) {
    let mut l: lru::LruCache<usize, u64> = lru::LruCache::unbounded();
    let (mut hits, mut hit_bytes, mut bytes, mut used) = (0, 0, 0, 0u64);
    for &k in trace {
        bytes += sizes[k];
        if l.get(&k).is_some() {
            hits += 1;
            hit_bytes += sizes[k];
            continue;
        }
        l.put(k, sizes[k]);
        used += sizes[k];
        while used > budget {
            match l.pop_lru() {
                Some((_, w)) => used -= w,
                None => break,
            }
        }
    }
    (hits, hit_bytes, bytes)
}
