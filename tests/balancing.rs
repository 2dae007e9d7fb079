//! Backend selection through the real proxy: weights, least connections, consistent hashing.
mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &format!(
            "id = \"t\"\nhosts = [\"t.test\"]\n[pools.web]\nbackends = [\"{}\", {{ addr = \"{}\", weight = 3 }}]\n",
            a.addr, b.addr
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    for _ in 0..200 {
        assert_eq!(get(&c, &proxy, "t.test", "/").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (50, 150));
}

#[tokio::test]
async fn least_conn_prefers_the_idle_backend() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant(
            "t",
            &["t.test"],
            &[a.addr, b.addr],
            "balance = \"least_conn\"",
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    // One request parks on a backend; every later request must go to the other one.
    let held = tokio::spawn({
        let c = c.clone();
        let url = proxy.url("/hold");
        async move { send(c.get(url).header("host", "t.test")).await }
    });
    eventually(
        Duration::from_secs(5),
        "the held request reaches a backend",
        || async { a.hits() + b.hits() == 1 },
    )
    .await;
    let busy = if a.hits() == 1 { "a" } else { "b" };
    for _ in 0..10 {
        let r = get(&c, &proxy, "t.test", "/").await;
        assert_ne!(
            r.backend.as_deref(),
            Some(busy),
            "least_conn sent a request to the busy backend"
        );
    }
    a.release();
    b.release();
    assert_eq!(held.await.unwrap().status, 200);
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_backend() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant(
            "t",
            &["t.test"],
            &addrs,
            "balance = \"consistent_hash\"\nhash_key = \"header:x-user\"",
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..4 {
        for user in 0..30 {
            let user = format!("user-{user}");
            let r = send(
                c.get(proxy.url("/"))
                    .header("host", "t.test")
                    .header("x-user", &user),
            )
            .await;
            let backend = r.backend.expect("answered by a backend");
            let first = owner.entry(user.clone()).or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "{user} moved in round {round}");
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert_eq!(
        used.len(),
        3,
        "30 keys should spread over all 3 backends: {owner:?}"
    );
}

#[tokio::test]
async fn random_balancing_uses_every_backend() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant("t", &["t.test"], &[a.addr, b.addr], "balance = \"random\""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    for _ in 0..100 {
        assert_eq!(get(&c, &proxy, "t.test", "/").await.status, 200);
    }
    // With p = 1/2 each, fewer than 20 of 100 on one side has odds below 1e-9.
    assert!(
        a.hits() >= 20 && b.hits() >= 20,
        "a={} b={}",
        a.hits(),
        b.hits()
    );
}

/// Behind a trusted load balancer every connection comes from the balancer: hashing on the
/// socket peer would send every client to one backend. The client address is the one the
/// balancer forwarded for, for hashing and the access log alike.
#[tokio::test]
async fn client_ip_hashing_behind_a_trusted_proxy_uses_the_forwarded_client() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("trusted_proxies = [\"127.0.0.1\"]");
    let log = cfg.dir.path().join("access.log");
    cfg.append_main(&format!("[access_log]\npath = \"{}\"", log.display()));
    cfg.tenant(
        "t.toml",
        &one_pool_tenant(
            "t",
            &["t.test"],
            &[a.addr, b.addr],
            "balance = \"consistent_hash\"\nhash_key = \"client_ip\"",
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..2 {
        for n in 1..=20 {
            let client = format!("198.51.100.{n}");
            let r = send(
                c.get(proxy.url("/"))
                    .header("host", "t.test")
                    .header("x-forwarded-for", &client),
            )
            .await;
            let backend = r.backend.expect("answered by a backend");
            let first = owner
                .entry(client.clone())
                .or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "{client} moved in round {round}");
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    // With the peer hashed, all 20 land on one backend; spread, that has odds of 2^-19.
    assert_eq!(used.len(), 2, "20 clients on one backend: {owner:?}");
    eventually(Duration::from_secs(10), "40 access log lines", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 40)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["client_ip"], "198.51.100.1", "{first}");
    assert_eq!(
        first["peer"], "127.0.0.1",
        "the trusted proxy it came through: {first}"
    );
}
