//! What the limiter adds to a request: one `admit` with every limit configured (tenant rate,
//! per-client-address rate over many addresses, quota, concurrency).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use porteiro::config::model::{LimitsConfig, QuotaConfig, QuotaWindow, RateConfig};
use porteiro::limits::{Limiter, Request, TenantLimiter};

fn admit(c: &mut Criterion) {
    let generous = RateConfig {
        requests: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000_000,
    };
    let all = LimitsConfig {
        rate: Some(generous),
        per_client_ip: Some(generous),
        quota: Some(QuotaConfig {
            requests: u64::MAX / 2,
            per: QuotaWindow::Month,
        }),
        max_body: Some(1 << 20),
        max_concurrent: Some(1_000_000),
    };
    let limiter = Arc::new(TenantLimiter::new(all));
    let ips: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
        .collect();
    let mut n = 0usize;
    c.bench_function("admit, every limit, 10k client addresses", |b| {
        b.iter(|| {
            n = (n + 1) % ips.len();
            let req = Request {
                client_ip: Some(ips[n]),
                content_length: Some(100),
            };
            black_box(limiter.clone().admit(&req).is_ok())
        })
    });
    let rate_only = Arc::new(TenantLimiter::new(LimitsConfig {
        rate: Some(generous),
        ..Default::default()
    }));
    c.bench_function("admit, tenant rate only", |b| {
        b.iter(|| {
            let req = Request {
                client_ip: None,
                content_length: None,
            };
            black_box(rate_only.clone().admit(&req).is_ok())
        })
    });
}

criterion_group!(benches, admit);
criterion_main!(benches);
