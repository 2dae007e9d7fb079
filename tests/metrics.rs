//! `/metrics` and the access log, checked against traffic whose outcome is known exactly.
mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// The value of the series whose line starts with `series ` (name plus labels as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn per_tenant_counters_and_histograms_match_the_traffic() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    let log = cfg.dir.path().join("access.log");
    cfg.append_main(&format!("[access_log]\npath = \"{}\"", log.display()));
    cfg.tenant(
        "a.toml",
        &format!(
            "id = \"a\"\nhosts = [\"a.test\"]\n[pools.web]\nbackends = [\"{}\"]\n\
             [[routes]]\npath_prefix = \"/app/\"\npool = \"web\"\n",
            a.addr
        ),
    )
    .tenant(
        "b.toml",
        &one_pool_tenant("b", &["b.test"], &[dead_addr()], "retries = 0"),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &proxy, "a.test", "/app/x").await.status, 200);
    }
    let post = send(
        c.post(proxy.url("/app/form"))
            .header("host", "a.test")
            .body("12345"),
    )
    .await;
    assert_eq!(post.status, 200);
    for _ in 0..2 {
        assert_eq!(get(&c, &proxy, "a.test", "/elsewhere").await.status, 404);
        assert_eq!(get(&c, &proxy, "b.test", "/").await.status, 502);
        assert_eq!(get(&c, &proxy, "unknown.test", "/").await.status, 404);
    }

    let text = proxy.scrape().await;
    let v = |s: &str| value(&text, s);
    assert_eq!(
        v(r#"porteiro_requests_total{method="get",status_class="2xx",tenant="a"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        v(r#"porteiro_requests_total{method="post",status_class="2xx",tenant="a"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"porteiro_requests_total{method="get",status_class="4xx",tenant="a"}"#),
        Some(2.0)
    );
    assert_eq!(
        v(r#"porteiro_requests_total{method="get",status_class="5xx",tenant="b"}"#),
        Some(2.0)
    );
    assert_eq!(
        v(r#"porteiro_request_duration_seconds_count{tenant="a"}"#),
        Some(6.0)
    );
    assert_eq!(
        v(r#"porteiro_upstream_duration_seconds_count{tenant="a"}"#),
        Some(4.0)
    );
    assert_eq!(v(r#"porteiro_request_bytes_total{tenant="a"}"#), Some(5.0));
    assert_eq!(
        v(r#"porteiro_upstream_connect_errors_total{tenant="b"}"#),
        Some(2.0)
    );
    assert_eq!(v(r#"porteiro_requests_in_flight{tenant="a"}"#), Some(0.0));
    assert_eq!(v("porteiro_unknown_host_requests_total"), Some(2.0));
    let selected = format!(
        r#"porteiro_backend_selected_total{{backend="{}",pool="web",tenant="a"}}"#,
        a.addr
    );
    assert_eq!(v(&selected), Some(4.0), "{text}");
    assert_eq!(v("porteiro_config_tenants"), Some(2.0));
    assert_eq!(v("porteiro_config_generation"), Some(1.0));
    // Labels carry configured names only: no host, path or client address ever shows up.
    for leak in ["unknown.test", "a.test", "/app/", "127.0.0.1\"}"] {
        assert!(!text.contains(leak), "`{leak}` in metrics:\n{text}");
    }
    // For `promtool check metrics` after the tests (see the Makefile).
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.prom"),
        &text,
    );

    // Every request is one JSON line with the fields an operator filters on.
    eventually(WAIT, "10 access log lines", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 10)
    })
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let post_line = lines
        .iter()
        .find(|l| l["method"] == "POST")
        .expect("the POST is logged");
    assert_eq!(post_line["tenant"], "a");
    assert_eq!(post_line["host"], "a.test");
    assert_eq!(post_line["path"], "/app/form");
    assert_eq!(post_line["status"], 200);
    assert_eq!(post_line["bytes_in"], 5);
    assert_eq!(post_line["upstream"], a.addr.to_string());
    assert_eq!(post_line["client_ip"], "127.0.0.1");
    assert!(
        post_line.get("peer").is_none(),
        "no trusted proxy in between"
    );
    assert_eq!(post_line["tls"], false);
    assert!(post_line["request_id"]
        .as_str()
        .is_some_and(|id| id.len() >= 16));
    assert!(post_line["duration_ms"].as_f64().is_some());
    let unknown = lines.iter().filter(|l| l["host"] == "unknown.test").count();
    assert_eq!(unknown, 2);
}

#[tokio::test]
async fn a_stuck_access_log_drops_lines_instead_of_delaying_requests() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    // A FIFO nobody reads: opening it for writing blocks forever, like a hung disk.
    let fifo = cfg.dir.path().join("stuck.log");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    cfg.append_main(&format!(
        "[access_log]\npath = \"{}\"\nqueue = 4",
        fifo.display()
    ));
    cfg.tenant("a.toml", &one_pool_tenant("a", &["a.test"], &[a.addr], ""));
    let proxy = Proxy::start(&cfg);
    let c = client();
    for _ in 0..30 {
        assert_eq!(get(&c, &proxy, "a.test", "/").await.status, 200);
    }
    let text = proxy.scrape().await;
    assert_eq!(
        value(&text, "porteiro_access_log_dropped_total"),
        Some(26.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"porteiro_requests_total{method="get",status_class="2xx",tenant="a"}"#
        ),
        Some(30.0)
    );
}

#[tokio::test]
async fn tenants_past_max_tenants_share_one_label() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    cfg.append_main("[metrics]\nmax_tenants = 1");
    for t in ["t1", "t2", "t3"] {
        cfg.tenant(
            &format!("{t}.toml"),
            &one_pool_tenant(t, &[&format!("{t}.test")], &[a.addr], ""),
        );
    }
    let proxy = Proxy::start(&cfg);
    let c = client();
    for t in ["t1", "t2", "t3"] {
        assert_eq!(get(&c, &proxy, &format!("{t}.test"), "/").await.status, 200);
    }
    let text = proxy.scrape().await;
    let get2xx = |t: &str| {
        value(
            &text,
            &format!(r#"porteiro_requests_total{{method="get",status_class="2xx",tenant="{t}"}}"#),
        )
    };
    assert_eq!(get2xx("t1"), Some(1.0), "{text}");
    assert_eq!(get2xx("_other"), Some(2.0), "{text}");
    assert_eq!((get2xx("t2"), get2xx("t3")), (None, None));
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    let log = cfg.dir.path().join("access.log");
    let rotated = cfg.dir.path().join("access.log.1");
    cfg.append_main(&format!("[access_log]\npath = \"{}\"", log.display()));
    cfg.tenant("a.toml", &one_pool_tenant("a", &["a.test"], &[a.addr], ""));
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(get(&c, &proxy, "a.test", "/before").await.status, 200);
    eventually(WAIT, "the first line is written", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/before"))
    })
    .await;
    // What logrotate does: move the file, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    // SAFETY: signalling the child process this test started.
    assert_eq!(unsafe { libc::kill(proxy.pid(), libc::SIGUSR1) }, 0);
    eventually(
        WAIT,
        "lines go to a new file at the configured path",
        || async {
            get(&c, &proxy, "a.test", "/after").await;
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/after"))
        },
    )
    .await;
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("/before"));
    assert!(!std::fs::read_to_string(&log).unwrap().contains("/before"));
}

/// Label slots under `max_tenants` go to tenants as their traffic arrives, not by file
/// order at the first scrape; and series of pools and backends a reload removed go away.
#[tokio::test]
async fn label_slots_follow_traffic_and_removed_backends_lose_their_series() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("watch = false");
    cfg.append_main("[metrics]\nmax_tenants = 1");
    cfg.tenant(
        "t1.toml",
        &one_pool_tenant("t1", &["t1.test"], &[a.addr], ""),
    )
    .tenant(
        "t2.toml",
        &one_pool_tenant("t2", &["t2.test"], &[a.addr, b.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let before = proxy.scrape().await;
    assert!(
        !before.contains(r#"tenant="t1""#),
        "a scrape gave t1 a slot:\n{before}"
    );
    for _ in 0..2 {
        assert_eq!(get(&c, &proxy, "t2.test", "/").await.status, 200);
    }
    assert_eq!(get(&c, &proxy, "t1.test", "/").await.status, 200);
    // A request is counted once its answer is sent: the scrape may come first.
    eventually(
        Duration::from_secs(10),
        "t1's request is counted",
        || async {
            proxy.scrape().await.contains(
                r#"porteiro_requests_total{method="get",status_class="2xx",tenant="_other"} 1"#,
            )
        },
    )
    .await;
    let text = proxy.scrape().await;
    let selected = |text: &str, backend: std::net::SocketAddr| {
        value(
            text,
            &format!(
                r#"porteiro_backend_selected_total{{backend="{backend}",pool="web",tenant="t2"}}"#
            ),
        )
    };
    assert_eq!(
        selected(&text, b.addr),
        Some(1.0),
        "t2, first with traffic, has the slot:\n{text}"
    );

    cfg.tenant(
        "t2.toml",
        &one_pool_tenant("t2", &["t2.test"], &[a.addr], ""),
    );
    assert_eq!(proxy.reload().await["result"], "applied");
    let text = proxy.scrape().await;
    assert_eq!(
        selected(&text, b.addr),
        None,
        "removed backend still has a series:\n{text}"
    );
    assert_eq!(selected(&text, a.addr), Some(1.0), "{text}");
}

/// State gauges (backend up, quota use) describe configuration, not traffic: they are there
/// with request counting off, and for a tenant that has had no request yet.
#[tokio::test]
async fn state_gauges_need_no_traffic_and_no_request_counting() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    cfg.append_main("[metrics]\nenabled = false");
    cfg.tenant(
        "t1.toml",
        &format!(
            "id = \"t1\"\nhosts = [\"t1.test\"]\n[limits]\nquota = {{ requests = 100, per = \"day\" }}\n\
             [pools.web]\nbackends = [\"{}\"]\n",
            a.addr
        ),
    );
    let proxy = Proxy::start(&cfg);
    let text = proxy.scrape().await;
    let up = format!(
        r#"porteiro_backend_up{{backend="{}",pool="web",tenant="t1"}} 1"#,
        a.addr
    );
    assert!(text.contains(&up), "{text}");
    assert!(
        text.contains(r#"porteiro_quota_limit_requests{tenant="t1"} 100"#),
        "{text}"
    );
    // Counting is off: a request served leaves no request series. Requests are counted after
    // their answer, so a second one on the same connection (read only once the first is
    // done, counting included) makes sure the first had its chance to be counted.
    let c = client();
    assert_eq!(get(&c, &proxy, "t1.test", "/").await.status, 200);
    assert_eq!(get(&c, &proxy, "t1.test", "/").await.status, 200);
    let text = proxy.scrape().await;
    assert!(!text.contains("porteiro_requests_total{"), "{text}");
}
