//! Load for `load-tests/fleet.sh`: an open-model (fixed arrival rate) generator that sends to
//! every instance of a fleet at once. For each tenant it sends RATE requests/s to each
//! instance and prints what the fleet admitted per second and the latency percentiles of all
//! answers. Loopback only.
//!
//!   cargo run --release --example fleet_load -- SECONDS ADDR,ADDR,... HOST=RATE [HOST=RATE...]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

async fn drive(url: String, host: String, rate: u32, secs: u64, tally: Arc<Mutex<Tally>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut inflight = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let (client, url, tally, host) = (client.clone(), url.clone(), tally.clone(), host.clone());
        inflight.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = client.get(&url).header("host", &host).send().await;
            let took = started.elapsed();
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(r) => {
                    *t.statuses.entry(r.status().as_u16()).or_default() += 1;
                    t.latencies.push(took);
                }
                Err(_) => t.errors += 1,
            }
        }));
    }
    for task in inflight {
        let _ = task.await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
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
            percentile(&t.latencies, 0.50),
            percentile(&t.latencies, 0.99),
        );
    }
}
