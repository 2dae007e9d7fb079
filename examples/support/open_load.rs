//! The open-model (fixed arrival rate) load both load generators use: requests at a fixed
//! rate whatever the answers take, latencies and statuses tallied. Loopback only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Tally {
    pub latencies: Vec<Duration>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
}

/// Sends `rate` GETs per second to `url` with Host `host` for `secs` seconds.
pub async fn drive(
    client: reqwest::Client,
    url: String,
    host: String,
    rate: u32,
    secs: u64,
    tally: Arc<Mutex<Tally>>,
) {
    if rate == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
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

/// The `p` quantile of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A client for loopback load: kept-alive connections, a 10 s limit per request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}
