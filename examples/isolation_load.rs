//! Load for `load-tests/isolation.sh` and `load-tests/reload-p99.sh`: an open-model (fixed
//! arrival rate) generator, light enough to share a core with the backend without becoming the
//! noise it measures. Sends STEADY requests/s with Host STEADY_HOST and FLOOD requests/s with
//! Host FLOOD_HOST; prints latency percentiles and answers by status for each. Loopback only.
//!
//!   cargo run --release --example isolation_load -- 127.0.0.1:PORT STEADY_HOST STEADY FLOOD_HOST FLOOD SECONDS [PATH]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[path = "support/open_load.rs"]
mod open_load;
use open_load::{drive, percentile, Tally};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .expect("ADDR as ip:port");
    assert!(addr.ip().is_loopback(), "loopback targets only");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let (steady_host, flood_host) = (arg(2), arg(4));
    let steady: u32 = arg(3).parse().unwrap_or(80);
    let flood: u32 = arg(5).parse().unwrap_or(0);
    let secs: u64 = arg(6).parse().unwrap_or(20);
    let client = open_load::client();
    let path = args.get(7).map_or("/", String::as_str);
    let url = format!("http://{addr}{path}");
    let (a, b) = (
        Arc::new(Mutex::new(Tally::default())),
        Arc::new(Mutex::new(Tally::default())),
    );
    tokio::join!(
        drive(
            client.clone(),
            url.clone(),
            steady_host.clone(),
            steady,
            secs,
            b.clone()
        ),
        drive(client, url, flood_host.clone(), flood, secs, a.clone()),
    );
    for (name, tally) in [(steady_host, &b), (flood_host, &a)] {
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        if t.latencies.is_empty() && t.errors == 0 {
            continue;
        }
        t.latencies.sort();
        println!(
            "  {name}: {} answers {:?}, {} errors; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            t.latencies.len(),
            t.statuses,
            t.errors,
            percentile(&t.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&t.latencies, 0.99).as_secs_f64() * 1e3,
            t.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
        );
    }
}
