//! Per-tenant limits as clients see them: 429/413/503 with their headers, never forwarded.
mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn limited_tenant(id: &str, backend: std::net::SocketAddr, limits: &str) -> String {
    format!(
        "id = \"{id}\"\nhosts = [\"{id}.test\"]\n[limits]\n{limits}\n[pools.web]\nbackends = [\"{backend}\"]\n"
    )
}

async fn statuses(c: &reqwest::Client, proxy: &Proxy, host: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(c, proxy, host, "/").await.status);
    }
    out
}

#[tokio::test]
async fn the_rate_allows_the_burst_then_refuses_with_standard_headers() {
    let b = Backend::start("b").await;
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "a.toml",
        &limited_tenant(
            "a",
            b.addr,
            "rate = { requests = 60, per = \"1m\", burst = 5 }",
        ),
    )
    .tenant(
        "other.toml",
        &one_pool_tenant("other", &["other.test"], &[b.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let started = std::time::Instant::now();
    let got = statuses(&c, &proxy, "a.test", 20).await;
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = got.iter().filter(|s| **s == 200).count() as f64;
    // Burst plus one per second elapsed; tolerance: one request either way.
    let expected = 5.0 + elapsed.floor();
    assert!(
        (accepted - expected).abs() <= 1.0,
        "{accepted} accepted in {elapsed:.2}s: {got:?}"
    );
    assert_eq!(
        b.hits() as f64,
        accepted,
        "refused requests never reach the backend"
    );

    let refused = get(&c, &proxy, "a.test", "/").await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry), "retry-after {retry}");
    assert_eq!(refused.headers["ratelimit-policy"], "\"rate\";q=60;w=60");
    assert_eq!(refused.headers["ratelimit"], "\"rate\";r=0;t=1");
    assert!(refused.body.starts_with("429"));
    // Another tenant is not affected.
    assert_eq!(get(&c, &proxy, "other.test", "/").await.status, 200);
}

#[tokio::test]
async fn client_addresses_are_limited_apart_and_only_trusted_proxies_may_name_them() {
    let b = Backend::start("b").await;
    let limits = "per_client_ip = { requests = 1, per = \"1m\", burst = 2 }";
    let from = |ip: &str| ("x-forwarded-for", ip.to_string());
    let send_from = |c: &reqwest::Client, proxy: &Proxy, ip: &str| {
        let (n, v) = from(ip);
        send(c.get(proxy.url("/")).header("host", "a.test").header(n, v))
    };

    // porteiro's own peer (127.0.0.1) is a trusted proxy here: X-Forwarded-For counts.
    let cfg = ConfigDir::new("trusted_proxies = [\"127.0.0.1\"]");
    cfg.tenant("a.toml", &limited_tenant("a", b.addr, limits));
    let proxy = Proxy::start(&cfg);
    let c = client();
    let mut one = Vec::new();
    for _ in 0..3 {
        one.push(send_from(&c, &proxy, "198.51.100.1").await.status);
    }
    assert_eq!(one, [200, 200, 429]);
    assert_eq!(send_from(&c, &proxy, "198.51.100.2").await.status, 200);
    // An IPv6 client is its /64: a fresh address in the same block gets no fresh burst.
    let mut six = Vec::new();
    for ip in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::3"] {
        six.push(send_from(&c, &proxy, ip).await.status);
    }
    assert_eq!(six, [200, 200, 429]);
    assert_eq!(send_from(&c, &proxy, "2001:db8:0:2::1").await.status, 200);
    // Spoofed entries left of the trusted hop do not help: the rightmost untrusted one counts.
    assert_eq!(
        send_from(&c, &proxy, "203.0.113.50, 198.51.100.1")
            .await
            .status,
        429
    );
    drop(proxy);

    // Untrusted peer: whatever it claims, it is one client.
    let cfg = ConfigDir::new("");
    cfg.tenant("a.toml", &limited_tenant("a", b.addr, limits));
    let proxy = Proxy::start(&cfg);
    let c = client();
    let mut spoofed = Vec::new();
    for ip in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        spoofed.push(send_from(&c, &proxy, ip).await.status);
    }
    assert_eq!(spoofed, [200, 200, 429]);
}

#[tokio::test]
async fn a_spent_quota_stays_spent_across_a_restart_and_a_corrupt_state_file_starts_over() {
    let b = Backend::start("b").await;
    let cfg =
        ConfigDir::new("quota_state_file = \"quota.json\"\nquota_persist_interval = \"50ms\"");
    cfg.tenant(
        "a.toml",
        &limited_tenant("a", b.addr, "quota = { requests = 3, per = \"day\" }"),
    );
    let state = cfg.dir.path().join("quota.json");
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(
        statuses(&c, &proxy, "a.test", 4).await,
        [200, 200, 200, 429]
    );
    let refused = get(&c, &proxy, "a.test", "/").await;
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "until midnight UTC: {retry}");
    assert_eq!(refused.headers["ratelimit-policy"], "\"quota\";q=3;w=86400");
    eventually(WAIT, "the count is saved", || async {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains(",3]"))
    })
    .await;
    drop(proxy);

    let proxy = Proxy::start(&cfg);
    // A new client each time: pooled connections died with the previous process.
    let c = client();
    assert_eq!(
        get(&c, &proxy, "a.test", "/").await.status,
        429,
        "the count survived the restart"
    );
    drop(proxy);

    std::fs::write(&state, "{ not json").unwrap();
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(get(&c, &proxy, "a.test", "/").await.status, 200);
    assert!(
        proxy.logs().contains("quota counts start from zero"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn bodies_over_max_body_get_413_whether_announced_or_streamed() {
    let b = Backend::start("b").await;
    let cfg = ConfigDir::new("");
    cfg.tenant("a.toml", &limited_tenant("a", b.addr, "max_body = 10"));
    let proxy = Proxy::start(&cfg);
    let c = client();
    let post =
        |body: reqwest::Body| send(c.post(proxy.url("/")).header("host", "a.test").body(body));
    assert_eq!(post(reqwest::Body::from("0123456789")).await.status, 200);
    assert_eq!(post(reqwest::Body::from("0123456789A")).await.status, 413);
    assert_eq!(
        b.hits(),
        1,
        "an announced oversize body is refused before forwarding"
    );
    // No Content-Length: chunks arrive, and the limit applies to their running total.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\n012345\r\n6\r\n6789AB\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, conn.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Both refusals are counted, the streamed one too.
    let metrics = proxy.scrape().await;
    assert!(
        metrics.contains("porteiro_limited_requests_total{limit=\"max_body\",tenant=\"a\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn beyond_max_concurrent_requests_get_503_with_retry_after() {
    let b = Backend::start("b").await;
    let cfg = ConfigDir::new("");
    cfg.tenant("a.toml", &limited_tenant("a", b.addr, "max_concurrent = 1"));
    let proxy = Proxy::start(&cfg);
    let c = client();
    let held = {
        let req = c.get(proxy.url("/hold")).header("host", "a.test");
        tokio::spawn(async move { send(req).await.status })
    };
    eventually(WAIT, "the first request is in flight", || async {
        b.hits() == 1
    })
    .await;
    let refused = get(&c, &proxy, "a.test", "/").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"], "1");
    b.release();
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(get(&c, &proxy, "a.test", "/").await.status, 200);
}

#[tokio::test]
async fn counters_survive_a_reload_unless_the_limit_changes() {
    let b = Backend::start("b").await;
    let cfg = ConfigDir::new("");
    let limits = "rate = { requests = 1, per = \"1h\", burst = 2 }";
    cfg.tenant("a.toml", &limited_tenant("a", b.addr, limits));
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(statuses(&c, &proxy, "a.test", 3).await, [200, 200, 429]);

    // Another edit of the same file, limits untouched: still spent.
    cfg.tenant(
        "a.toml",
        &format!("{}\n# edited\n", limited_tenant("a", b.addr, limits)),
    );
    eventually(WAIT, "the edit is applied", || async {
        proxy.config_status().await["generation"] == 2
    })
    .await;
    assert_eq!(get(&c, &proxy, "a.test", "/").await.status, 429);

    // A changed limit applies at once, with fresh counters.
    cfg.tenant(
        "a.toml",
        &limited_tenant(
            "a",
            b.addr,
            "rate = { requests = 1, per = \"1h\", burst = 3 }",
        ),
    );
    eventually(WAIT, "the new limit is applied", || async {
        proxy.config_status().await["generation"] == 3
    })
    .await;
    assert_eq!(
        statuses(&c, &proxy, "a.test", 4).await,
        [200, 200, 200, 429]
    );
}

/// In a graceful upgrade the old process keeps counting during its grace period and saves at
/// exit: the new process adds those counts to its own instead of overwriting them, and an
/// old process never takes a newer one's counts in.
#[tokio::test]
async fn quota_counts_of_an_older_process_are_merged_not_lost() {
    let b = Backend::start("b").await;
    let cfg =
        ConfigDir::new("quota_state_file = \"quota.json\"\nquota_persist_interval = \"50ms\"");
    cfg.tenant(
        "a.toml",
        &limited_tenant("a", b.addr, "quota = { requests = 1000, per = \"day\" }"),
    );
    let state = cfg.dir.path().join("quota.json");
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(statuses(&c, &proxy, "a.test", 2).await, [200, 200]);
    eventually(WAIT, "the count is saved", || async {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains(",2]"))
    })
    .await;
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let window = saved["tenants"]["a"][0].as_u64().unwrap();
    let used = || async {
        let text = proxy.scrape().await;
        text.lines()
            .find_map(|l| l.strip_prefix(r#"porteiro_quota_used_requests{tenant="a"} "#))
            .map(|v| v.parse::<u64>().unwrap())
    };
    // As the process this one took over from would write it: older, and counting on.
    let older_wrote = |count: u64, started: u64| {
        let text = format!(
            r#"{{"version":1,"tenants":{{"a":[{window},{count}]}},"writer":1,"writer_started":{started}}}"#
        );
        std::fs::write(state.with_extension("tmp.test"), text).unwrap();
        std::fs::rename(state.with_extension("tmp.test"), &state).unwrap();
    };
    older_wrote(10, 1);
    eventually(WAIT, "the older process's 10 are added", || async {
        used().await == Some(12)
    })
    .await;
    older_wrote(15, 1);
    eventually(WAIT, "and its 5 more", || async {
        used().await == Some(17)
    })
    .await;
    // A newer writer's counts are never taken in.
    older_wrote(100, u64::MAX);
    eventually(WAIT, "the file is written again by porteiro", || async {
        std::fs::read_to_string(&state).is_ok_and(|t| !t.contains(",100]"))
    })
    .await;
    assert_eq!(used().await, Some(17));
}
