//! What the limiter adds to a request: one `admit` with every limit configured (tenant rate,
//! per-client-address rate over many addresses, quota, concurrency).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use porteiro::config::model::{LimitsConfig, QuotaConfig, QuotaWindow, RateConfig};
use porteiro::limits::{Request, TenantLimiter};

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
        scope: None,
    };
    let limiter = Arc::new(TenantLimiter::new("bench", all));
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
            black_box(admit_now(&limiter, &req))
        })
    });
    let rate_only = Arc::new(TenantLimiter::new(
        "bench",
        LimitsConfig {
            rate: Some(generous),
            ..Default::default()
        },
    ));
    c.bench_function("admit, tenant rate only", |b| {
        b.iter(|| {
            let req = Request {
                client_ip: None,
                content_length: None,
            };
            black_box(admit_now(&rate_only, &req))
        })
    });
}

/// Without a fleet `admit` never waits: its answer is ready on the first poll.
fn admit_now(limiter: &TenantLimiter, req: &Request) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let fut = std::pin::pin!(limiter.admit(req));
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(d) => d.outcome.is_ok(),
        std::task::Poll::Pending => unreachable!("a local limiter never waits"),
    }
}

criterion_group!(benches, admit);
criterion_main!(benches);
