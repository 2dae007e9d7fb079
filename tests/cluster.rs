//! Fleet mode: three real porteiro processes sharing one real Redis. Rates and quotas are
//! counted once for the fleet, a purge on one instance empties the others, and with Redis
//! killed mid-flood every request is still answered, by local shares of the limits.
//! Skipped (with the reason printed) only when `redis-server` is not installed.
mod support;

use std::time::{Duration, Instant};

use support::redis::Redis;
use support::*;

/// These tests measure rates: one at a time, so they do not share the machine's cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(15);

struct Node {
    _cfg: ConfigDir,
    proxy: Proxy,
}

/// Starts one instance named `id` on `redis`, serving `tenant`, and waits until it has
/// reached Redis.
async fn node(redis: &Redis, id: &str, tenant: &str, cluster_extra: &str) -> Node {
    let cfg = ConfigDir::new("");
    if let Some(password) = &redis.password {
        std::fs::write(
            cfg.dir.path().join("redis.password"),
            format!("{password}\n"),
        )
        .unwrap();
    }
    cfg.append_main(&format!(
        "[cluster]\nredis = \"{}\"\nnode_id = \"{id}\"\nkey_prefix = \"test:\"\n{cluster_extra}",
        redis.url()
    ));
    cfg.tenant("t.toml", tenant);
    let proxy = Proxy::start(&cfg);
    wait_up(&proxy, 1).await;
    Node { _cfg: cfg, proxy }
}

/// Three instances, edge-1 to edge-3, on `redis`.
async fn fleet(redis: &Redis, tenant: &str, cluster_extra: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in ["edge-1", "edge-2", "edge-3"] {
        nodes.push(node(redis, id, tenant, cluster_extra).await);
    }
    nodes
}

/// Floods `proxies` (one request every 4 ms each) for `secs`; what was admitted per second
/// after the burst. Every request must be answered.
async fn steady_rate(proxies: &[&Proxy], secs: f64, burst: f64) -> (f64, Counts) {
    let every = Duration::from_millis(4);
    let counts = flood(proxies, "t.test", every, Duration::from_secs_f64(secs)).await;
    assert!(counts.failed.is_empty(), "{:?}", counts.failed);
    ((counts.ok as f64 - burst) / secs, counts)
}

async fn wait_up(proxy: &Proxy, up: u8) {
    let line = format!("porteiro_cluster_up {up}");
    eventually(WAIT, &line, || async {
        proxy.scrape().await.lines().any(|l| l == line)
    })
    .await;
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[derive(Debug, Default)]
struct Counts {
    ok: usize,
    limited: usize,
    /// Any other status, or no answer at all.
    failed: Vec<String>,
}

/// Each proxy gets one request every `every` for `duration`, from its own client.
async fn flood(proxies: &[&Proxy], host: &str, every: Duration, duration: Duration) -> Counts {
    let mut tasks = Vec::new();
    for p in proxies {
        let url = p.url("/");
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut counts = Counts::default();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = Instant::now() + duration;
            while Instant::now() < end {
                tick.tick().await;
                match c.get(&url).header("host", &host).send().await {
                    Ok(r) if r.status() == 200 => counts.ok += 1,
                    Ok(r) if r.status() == 429 => counts.limited += 1,
                    Ok(r) => counts.failed.push(format!("status {}", r.status())),
                    Err(e) => counts.failed.push(e.to_string()),
                }
            }
            counts
        }));
    }
    let mut total = Counts::default();
    for t in tasks {
        let c = t.await.unwrap();
        total.ok += c.ok;
        total.limited += c.limited;
        total.failed.extend(c.failed);
    }
    total
}

fn rate_tenant(backend: std::net::SocketAddr, limits: &str) -> String {
    format!(
        "id = \"t\"\nhosts = [\"t.test\"]\n[limits]\n{limits}\n[pools.web]\nbackends = [\"{backend}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_admit_the_tenants_rate_once_between_them() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let b = Backend::start("b").await;
    let tenant = rate_tenant(
        b.addr,
        "rate = { requests = 100, per = \"1s\", burst = 10 }",
    );
    let nodes = fleet(&redis, &tenant, "expected_nodes = 3\n").await;
    let proxies: Vec<&Proxy> = nodes.iter().map(|n| &n.proxy).collect();
    // Two of the three get the traffic (2 x 250/s, 5 times the rate): local thirds of the
    // rate would admit 67/s between them, shared counting 100/s. The burst, then 100 per
    // second for the whole fleet.
    let (rate, counts) = steady_rate(&proxies[..2], 10.0, 10.0).await;
    assert!(
        counts.limited > counts.ok,
        "the flood exceeded the rate: {counts:?}"
    );
    assert!(
        (95.0..=105.0).contains(&rate),
        "fleet admitted {rate:.1}/s, want 100/s ±5% ({counts:?})"
    );
    for p in &proxies {
        let m = p.scrape().await;
        assert_eq!(metric(&m, "porteiro_cluster_members"), 3.0, "{m}");
        assert_eq!(metric(&m, "porteiro_cluster_errors_total"), 0.0, "{m}");
        assert_eq!(
            metric(&m, "porteiro_cluster_info{node_id=\"edge-1\"}") as i32
                + metric(&m, "porteiro_cluster_info{node_id=\"edge-2\"}") as i32
                + metric(&m, "porteiro_cluster_info{node_id=\"edge-3\"}") as i32,
            1
        );
    }
    // For `promtool check metrics` after the tests (see the Makefile).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-cluster.prom"),
        proxies[0].scrape().await,
    );
    // Requests decided locally while Redis was slow are charged to the fleet afterwards, so
    // they do not change the figure above; how many there were is worth seeing.
    eprintln!("fallbacks: {:?}", fallbacks(&proxies).await);
    let status = proxies[0].config_status().await;
    let members = status["cluster"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert_eq!(status["cluster"]["connected"], true);
    assert_eq!(status["cluster"]["node_id"], "edge-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_killed_mid_flood_every_request_is_answered_and_sharing_comes_back() {
    let _serial = SERIAL.lock().await;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let b = Backend::start("b").await;
    let tenant = rate_tenant(b.addr, "rate = { requests = 90, per = \"1s\", burst = 9 }");
    // expected_nodes = 1 (the default): while Redis is down each instance admits the whole
    // rate, so the fleet's figure tells local and shared limits apart.
    let nodes = fleet(&redis, &tenant, "").await;
    let proxies: Vec<&Proxy> = nodes.iter().map(|n| &n.proxy).collect();
    let every = Duration::from_millis(5);
    // Redis dies one second into a three-second flood.
    let port = redis.port;
    let (flooded, ()) = tokio::join!(
        flood(&proxies, "t.test", every, Duration::from_secs(3)),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            redis.kill();
        }
    );
    assert!(
        flooded.failed.is_empty(),
        "requests failed when Redis died: {:?}",
        flooded.failed
    );
    for p in &proxies {
        wait_up(p, 0).await;
    }
    // Down: each instance admits the rate on its own (its burst, then 90/s).
    let secs = 3.0;
    let down = flood(&proxies, "t.test", every, Duration::from_secs_f64(secs)).await;
    assert!(down.failed.is_empty(), "{:?}", down.failed);
    let rate = (down.ok as f64 - 3.0 * 9.0) / secs;
    assert!(
        (243.0..=297.0).contains(&rate),
        "local limits admitted {rate:.1}/s, want 3 x 90 ({down:?})"
    );
    for p in &proxies {
        let m = p.scrape().await;
        assert!(
            metric(&m, "porteiro_cluster_fallback_total{tenant=\"t\"}") > 0.0,
            "{m}"
        );
        assert_eq!(
            p.logs().matches("cluster: Redis does not answer").count(),
            1,
            "one line per change of state"
        );
    }
    redis.restart();
    assert_eq!(redis.port, port);
    for p in &proxies {
        wait_up(p, 1).await;
    }
    let before = fallbacks(&proxies).await;
    let up = flood(&proxies, "t.test", every, Duration::from_secs_f64(secs)).await;
    assert!(up.failed.is_empty(), "{:?}", up.failed);
    let rate = (up.ok as f64 - 9.0) / secs;
    assert!(
        (85.5..=94.5).contains(&rate),
        "shared again: {rate:.1}/s, want 90 ±5% ({up:?})"
    );
    let after = fallbacks(&proxies).await;
    eprintln!("local decisions once Redis was back: before {before:?}, after {after:?}");
    for p in &proxies {
        assert_eq!(
            p.logs().matches("cluster: Redis answers").count(),
            2,
            "start and return"
        );
    }
}

async fn fallbacks(proxies: &[&Proxy]) -> Vec<f64> {
    let mut out = Vec::new();
    for p in proxies {
        out.push(metric(
            &p.scrape().await,
            "porteiro_cluster_fallback_total{tenant=\"t\"}",
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_is_counted_once_for_the_fleet_and_outlives_an_instance() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let b = Backend::start("b").await;
    let tenant = rate_tenant(b.addr, "quota = { requests = 30, per = \"day\" }");
    let day = day_number();
    // A generous wait for Redis: on a busy test machine a 2 ms wait would let local shares
    // decide, which this test is not about.
    let slow_ok = "timeout = \"200ms\"\n";
    let mut nodes = fleet(&redis, &tenant, slow_ok).await;
    let c = client();
    let mut admitted = 0;
    // Round the fleet until every instance refuses three times in a row.
    let mut refusals_in_a_row = 0;
    for i in 0..200 {
        let reply = get(&c, &nodes[i % 3].proxy, "t.test", "/").await;
        match reply.status {
            200 => {
                admitted += 1;
                refusals_in_a_row = 0;
            }
            429 => refusals_in_a_row += 1,
            other => panic!("status {other}"),
        }
        if refusals_in_a_row == 9 {
            break;
        }
    }
    assert_eq!(admitted, 30, "the fleet admits the quota exactly once");
    // The count is in Redis, with an expiry after the day ends.
    let key = format!("test:quota:t:{day}");
    assert_eq!(
        redis.command(&["GET", &key]).as_deref(),
        Some("30"),
        "{key}"
    );
    let ttl: i64 = redis.command(&["TTL", &key]).unwrap()[1..].parse().unwrap();
    assert!(
        day_number() == day,
        "the test crossed midnight UTC: run it again"
    );
    assert!(ttl > 3600 && ttl <= 86_400 + 3600, "ttl {ttl}");
    // An instance restarted starts from the fleet's count, not from zero.
    let restarted = nodes.remove(1);
    drop(restarted);
    let again = node(&redis, "edge-2", &tenant, slow_ok).await;
    assert_eq!(get(&c, &again.proxy, "t.test", "/").await.status, 429);
    let m = again.proxy.scrape().await;
    assert_eq!(
        metric(&m, "porteiro_quota_used_requests{tenant=\"t\"}"),
        30.0,
        "{m}"
    );
}

fn day_number() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_on_one_instance_empties_the_others() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let b = Backend::start("b").await;
    let tenant = format!(
        "id = \"t\"\nhosts = [\"t.test\"]\n[cache]\ndefault_ttl = \"1h\"\n[pools.web]\nbackends = [\"{}\"]\n",
        b.addr
    );
    let nodes = fleet(&redis, &tenant, "").await;
    for n in &nodes {
        eventually(WAIT, "listening for purges", || async {
            n.proxy.config_status().await["cluster"]["purges_subscribed"] == true
        })
        .await;
    }
    let c = client();
    for n in &nodes {
        assert_eq!(get(&c, &n.proxy, "t.test", "/page").await.status, 200);
        assert_eq!(get(&c, &n.proxy, "t.test", "/page").await.status, 200);
    }
    assert_eq!(b.hits(), 3, "one miss per instance, then hits");
    let r = c
        .delete(nodes[0].proxy.admin_url("/-/cache/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (&body["fleet"], &body["instances"]),
        (&true.into(), &2.into()),
        "{body}"
    );
    for n in &nodes[1..] {
        eventually(WAIT, "the purge reached the other instance", || async {
            n.proxy
                .logs()
                .contains("cluster: purge from another instance")
        })
        .await;
    }
    for n in &nodes {
        assert_eq!(get(&c, &n.proxy, "t.test", "/page").await.status, 200);
    }
    assert_eq!(b.hits(), 6, "every instance went back to the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_is_limited_once_for_the_fleet_through_a_redis_that_wants_a_password() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start_with_password(Some("s3cret-Pass")) else {
        return;
    };
    let b = Backend::start("b").await;
    // Every request comes from 127.0.0.1: one client address, through two instances.
    let tenant = rate_tenant(
        b.addr,
        "per_client_ip = { requests = 50, per = \"1s\", burst = 5 }",
    );
    let extra = "expected_nodes = 3\npassword_file = \"redis.password\"\n";
    let nodes = fleet(&redis, &tenant, extra).await;
    let proxies: Vec<&Proxy> = nodes.iter().map(|n| &n.proxy).collect();
    let (rate, counts) = steady_rate(&proxies[..2], 5.0, 5.0).await;
    assert!(
        (47.5..=52.5).contains(&rate),
        "the client got {rate:.1}/s, want 50/s ±5% ({counts:?})"
    );
    let status = proxies[0].config_status().await;
    assert!(!status.to_string().contains("s3cret"), "{status}");
    assert!(!proxies[0].logs().contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_leased_ahead_and_left_unspent_are_handed_back() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let b = Backend::start("b").await;
    // Each request leases one unit and one more ahead, which lapses unspent before the next
    // request (1.1 s later). Kept by Redis, those would use up the burst: the client's burst
    // of three afterwards would get one request through, not three.
    let tenant = rate_tenant(b.addr, "rate = { requests = 1, per = \"1s\", burst = 3 }");
    let one = node(&redis, "edge-1", &tenant, "timeout = \"200ms\"\n").await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&c, &one.proxy, "t.test", "/").await.status);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for _ in 0..3 {
        statuses.push(get(&c, &one.proxy, "t.test", "/").await.status);
    }
    assert_eq!(statuses, [200; 6]);
}
