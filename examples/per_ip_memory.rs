//! Memory of per-client-address limiting under a flood of distinct addresses: the tracked
//! set stays at its cap, and resident memory stops growing once it is reached.
//!
//!   cargo run --release --example per_ip_memory -- [ADDRESSES]

use std::net::IpAddr;
use std::time::Duration;

use porteiro::limits::{PerIp, Rate, PER_IP_CAPACITY};

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn main() {
    let total: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    // Slow enough that every address stays active (no idle eviction helps): the worst case.
    let rate = Rate::new(1, Duration::from_secs(3600), 1);
    let per_ip = PerIp::new(PER_IP_CAPACITY);
    println!("before: tracked 0, RSS {} MiB", rss_mib());
    let step = (total / 5).max(1);
    for i in 0..total {
        // Distinct IPv6 addresses, as a flood from a /64 would send.
        let mut octets = [0u8; 16];
        octets[0] = 0x20;
        octets[1] = 0x01;
        octets[12..].copy_from_slice(&i.to_be_bytes());
        per_ip.check(IpAddr::from(octets), &rate, 1_000_000_000 + u64::from(i));
        if (i + 1) % step == 0 {
            println!(
                "after {:>10} addresses: tracked {:>7}, RSS {} MiB",
                i + 1,
                per_ip.len(),
                rss_mib()
            );
        }
    }
}
