//! Active and passive health, retries and the all-down answer.
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::AsyncReadExt;

const FAST_CHECK: &str =
    "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", healthy_after = 2, unhealthy_after = 2 }";

#[tokio::test]
async fn unhealthy_backend_is_ejected_and_returns() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant("t", &["t.test"], &[a.addr, b.addr], FAST_CHECK),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let both_serve = || async {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let r = get(&c, &proxy, "t.test", "/").await;
            if r.status == 200 {
                seen.insert(r.backend.unwrap());
            }
        }
        seen.len() == 2
    };
    eventually(Duration::from_secs(5), "both backends serve", both_serve).await;
    assert!(b.health_hits() > 0, "the active check probes the backend");

    b.set_healthy(false);
    let b_idle = || async {
        for _ in 0..10 {
            let r = get(&c, &proxy, "t.test", "/").await;
            if r.status != 200 || r.backend.as_deref() != Some("a") {
                return false;
            }
        }
        true
    };
    eventually(
        Duration::from_secs(5),
        "the unhealthy backend gets no traffic",
        b_idle,
    )
    .await;
    let hits = b.hits();
    for _ in 0..20 {
        assert_eq!(
            get(&c, &proxy, "t.test", "/").await.backend.as_deref(),
            Some("a")
        );
    }
    assert_eq!(b.hits(), hits, "no request reached the ejected backend");

    b.set_healthy(true);
    eventually(
        Duration::from_secs(5),
        "the recovered backend serves again",
        both_serve,
    )
    .await;
    assert!(
        proxy.logs().contains("backend is unhealthy"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_backend() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant(
            "t",
            &["t.test"],
            &[dead_addr(), a.addr],
            "passive = { failures = 1, cooldown = \"1m\" }",
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    for _ in 0..10 {
        let r = send(
            c.post(proxy.url("/"))
                .header("host", "t.test")
                .body("payload"),
        )
        .await;
        assert_eq!(
            (r.status, r.backend.as_deref()),
            (200, Some("a")),
            "{}",
            r.body
        );
    }
    assert_eq!(a.hits(), 10);
    assert!(
        proxy.logs().contains("backend taken out"),
        "passive failure is logged:\n{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn no_healthy_backend_answers_503() {
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant("t", &["t.test"], &[dead_addr(), dead_addr()], FAST_CHECK),
    );
    let proxy = Proxy::start(&cfg);
    let r = get(&client(), &proxy, "t.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        "503 Service Unavailable: no healthy backend for this request\n"
    );
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn unreachable_backends_answer_502_then_503_once_ejected() {
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant(
            "t",
            &["t.test"],
            &[dead_addr(), dead_addr()],
            "passive = { failures = 1, cooldown = \"1m\" }",
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let first = get(&c, &proxy, "t.test", "/").await;
    assert_eq!(first.status, 502, "{}", first.body);
    let second = get(&c, &proxy, "t.test", "/").await;
    assert_eq!(second.status, 503, "both backends are cooling down now");
}

/// A backend that reads a request and closes the connection without answering.
async fn black_hole() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    dropper(false).await
}

/// A backend that reads a request, then closes the connection without answering: with a
/// reset (RST) when `reset`, else an orderly close.
async fn dropper(reset: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                count.fetch_add(1, Ordering::SeqCst);
            }
            if reset {
                let _ = s.set_zero_linger();
            }
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn a_post_that_may_have_reached_a_backend_is_not_resent() {
    let (hole, requests) = black_hole().await;
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant("t", &["t.test"], &[hole, a.addr], "retries = 3"),
    );
    let proxy = Proxy::start(&cfg);
    // Round robin starts with the first backend: the black hole.
    let r = send(
        client()
            .post(proxy.url("/orders"))
            .header("host", "t.test")
            .body("buy 1"),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert_eq!(a.hits(), 0, "the POST must not be sent a second time");
}

/// A GET whose new backend connection is reset or closed before any byte of answer goes to
/// the next backend while `retries` last (as nginx does), and no further.
#[tokio::test]
async fn a_get_dropped_unanswered_is_retried_on_another_backend() {
    for reset in [true, false] {
        let (hole, requests) = dropper(reset).await;
        let a = Backend::start("a").await;
        let cfg = ConfigDir::new("");
        cfg.tenant(
            "t.toml",
            &one_pool_tenant("t", &["t.test"], &[hole, a.addr], "retries = 1"),
        )
        .tenant(
            "strict.toml",
            &one_pool_tenant("strict", &["strict.test"], &[hole, a.addr], "retries = 0"),
        );
        let proxy = Proxy::start(&cfg);
        let c = client();
        // Round robin starts with the first backend: the dropper.
        let r = get(&c, &proxy, "t.test", "/catalogue").await;
        assert_eq!(
            (r.status, r.backend.as_deref()),
            (200, Some("a")),
            "reset={reset}: {}",
            r.body
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        let strict = get(&c, &proxy, "strict.test", "/catalogue").await;
        assert_eq!(strict.status, 502, "reset={reset}: no retry budget");
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        assert_eq!(a.hits(), 1);
    }
}

/// Passive verdicts are per pool: one tenant's timeouts against a shared backend (a slow
/// endpoint, a tight `read_timeout`) take it out of that tenant's pool only.
#[tokio::test]
async fn one_tenants_timeouts_do_not_eject_a_backend_another_tenant_shares() {
    let shared = Backend::start("shared").await;
    let cfg = ConfigDir::new("watch = false");
    let impatient_pool =
        "read_timeout = \"200ms\"\nretries = 0\npassive = { failures = 2, cooldown = \"1m\" }";
    let impatient_file = |extra: &str| {
        one_pool_tenant(
            "impatient",
            &["impatient.test"],
            &[shared.addr],
            &format!("{impatient_pool}\n{extra}"),
        )
    };
    cfg.tenant("impatient.toml", &impatient_file("")).tenant(
        "calm.toml",
        &one_pool_tenant("calm", &["calm.test"], &[shared.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let mut impatient = Vec::new();
    for _ in 0..3 {
        impatient.push(get(&c, &proxy, "impatient.test", "/hold").await.status);
    }
    shared.release();
    assert_eq!(
        impatient,
        [504, 504, 503],
        "taken out of the impatient pool"
    );
    let calm = get(&c, &proxy, "calm.test", "/").await;
    assert_eq!(
        (calm.status, calm.backend.as_deref()),
        (200, Some("shared")),
        "the other tenant's pool still uses the backend"
    );
    // An edit of the tenant's file rebuilds its pool: the verdict carries over.
    cfg.tenant("impatient.toml", &impatient_file("# edited"));
    let r = proxy.reload().await;
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(
        get(&c, &proxy, "impatient.test", "/").await.status,
        503,
        "still out of the impatient pool after a reload"
    );
}
