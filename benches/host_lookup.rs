//! Host lookup cost must not grow with the number of tenants: the same lookups against tables
//! of 1,000 and 100,000 hosts (half exact names, half wildcards).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use porteiro::config::model::HostPattern;
use porteiro::routing::HostTable;

fn table(hosts: usize) -> HostTable<u32> {
    let mut t = HostTable::with_capacity(hosts / 2, hosts / 2);
    for i in 0..hosts / 2 {
        t.insert(
            &HostPattern::Exact(format!("tenant{i}.example.com")),
            i as u32,
        );
        t.insert(
            &HostPattern::Wildcard(format!("t{i}.example.net")),
            i as u32,
        );
    }
    t
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_lookup");
    for size in [1_000usize, 100_000] {
        let t = table(size);
        let n = size / 2 - 1;
        let cases = [
            ("exact_hit", format!("tenant{n}.example.com")),
            (
                "exact_hit_port_upper",
                format!("Tenant{n}.Example.com:8443"),
            ),
            ("wildcard_hit", format!("www.t{n}.example.net")),
            ("wildcard_hit_deep", format!("a.b.c.t{n}.example.net")),
            ("miss", "nobody.example.org".to_string()),
            ("miss_deep", "a.b.c.d.nobody.example.org".to_string()),
        ];
        for (name, host) in cases {
            assert!(
                t.lookup(&host).is_some() != name.starts_with("miss"),
                "{name}"
            );
            group.bench_with_input(BenchmarkId::new(name, size), &host, |b, host| {
                b.iter(|| t.lookup(black_box(host)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
