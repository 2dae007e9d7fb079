//! Load for `load-tests/fleet.sh`: an open-model (fixed arrival rate) generator that sends to
//! every instance of a fleet at once. For each tenant it sends RATE requests/s to each
//! instance and prints what the fleet admitted per second and the latency percentiles of all
//! answers. Loopback only.
//!
//!   cargo run --release --example fleet_load -- SECONDS ADDR,ADDR,... HOST=RATE [HOST=RATE...]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/open_load.rs"]
mod open_load;
use open_load::{drive, percentile, Tally};

/// Milliseconds, for printing.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).expect("SECONDS");
    let addrs: Vec<SocketAddr> = args
        .get(2)
        .expect("ADDR,ADDR,...")
        .split(',')
        .map(|a| a.parse().expect("ip:port"))
        .collect();
    assert!(
        addrs.iter().all(|a| a.ip().is_loopback()),
        "loopback targets only"
    );
    let tenants: Vec<(String, u32)> = args[3..]
        .iter()
        .map(|t| {
            let (host, rate) = t.split_once('=').expect("HOST=RATE");
            (host.to_string(), rate.parse().expect("a rate"))
        })
        .collect();
    let mut tasks = Vec::new();
    let tallies: Vec<Arc<Mutex<Tally>>> = tenants.iter().map(|_| Arc::default()).collect();
    for ((host, rate), tally) in tenants.iter().zip(&tallies) {
        for addr in &addrs {
            tasks.push(tokio::spawn(drive(
                open_load::client(),
                format!("http://{addr}/"),
                host.clone(),
                *rate,
                secs,
                tally.clone(),
            )));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    for ((host, rate), tally) in tenants.iter().zip(&tallies) {
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        t.latencies.sort();
        let admitted = t.statuses.get(&200).copied().unwrap_or(0);
        println!(
            "  {host}: offered {}/s, admitted {:.1}/s; answers {:?}, {} errors; p50 {:.3} ms, p99 {:.3} ms",
            rate * addrs.len() as u32,
            admitted as f64 / secs as f64,
            t.statuses,
            t.errors,
            ms(percentile(&t.latencies, 0.50)),
            ms(percentile(&t.latencies, 0.99)),
        );
    }
}
