//! Live reconfiguration: file edits, SIGHUP and the admin endpoint, with no failed request.
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

async fn status_of(c: &reqwest::Client, proxy: &Proxy, host: &str) -> (u16, Option<String>) {
    let r = get(c, proxy, host, "/").await;
    (r.status, r.backend)
}

#[tokio::test]
async fn routing_follows_tenant_files_as_they_are_added_changed_and_removed() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(status_of(&c, &proxy, "two.test").await.0, 404);

    // Added: a new file.
    cfg.tenant(
        "two.toml",
        &one_pool_tenant("two", &["two.test"], &[b.addr], ""),
    );
    eventually(WAIT, "the new tenant serves", || async {
        status_of(&c, &proxy, "two.test").await == (200, Some("b".into()))
    })
    .await;

    // Changed, written elsewhere and renamed over the old file, as many editors do.
    let tmp = cfg.dir.path().join("tenants.d/.one.toml.tmp");
    std::fs::write(&tmp, one_pool_tenant("one", &["one.test"], &[b.addr], "")).unwrap();
    std::fs::rename(&tmp, cfg.tenant_path("one.toml")).unwrap();
    eventually(WAIT, "the edited tenant moves to b", || async {
        status_of(&c, &proxy, "one.test").await == (200, Some("b".into()))
    })
    .await;

    // Removed.
    std::fs::remove_file(cfg.tenant_path("two.toml")).unwrap();
    eventually(WAIT, "the removed tenant is gone", || async {
        status_of(&c, &proxy, "two.test").await.0 == 404
    })
    .await;
    let status = proxy.config_status().await;
    assert_eq!(status["tenants"], 1);
    assert!(status["generation"].as_u64().unwrap() >= 4, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
}

#[tokio::test]
async fn a_tenants_directory_swapped_in_whole_is_followed() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    // As deploy tools do: build the new directory aside, then rename it over the old one.
    let root = cfg.dir.path();
    let next = root.join("tenants.next");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(
        next.join("one.toml"),
        one_pool_tenant("one", &["one.test"], &[b.addr], ""),
    )
    .unwrap();
    std::fs::rename(root.join("tenants.d"), root.join("tenants.old")).unwrap();
    std::fs::rename(&next, root.join("tenants.d")).unwrap();
    eventually(WAIT, "the swapped-in directory is loaded", || async {
        status_of(&c, &proxy, "one.test").await == (200, Some("b".into()))
    })
    .await;
    // The new directory is watched in turn.
    cfg.tenant(
        "two.toml",
        &one_pool_tenant("two", &["two.test"], &[a.addr], ""),
    );
    eventually(WAIT, "a file added to the new directory serves", || async {
        status_of(&c, &proxy, "two.test").await == (200, Some("a".into()))
    })
    .await;
}

#[tokio::test]
async fn a_broken_edit_keeps_the_old_routing_and_reports_the_error() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr], ""),
    )
    .tenant(
        "two.toml",
        &one_pool_tenant("two", &["two.test"], &[a.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();

    // A half-written file: invalid TOML, then a valid key with a typo.
    std::fs::write(
        cfg.tenant_path("one.toml"),
        "id = \"one\"\nhosts = [\"one.test\"\n",
    )
    .unwrap();
    eventually(WAIT, "the error is reported", || async {
        proxy.config_status().await["tenant_errors"][0]["errors"][0]["key"] == ""
    })
    .await;
    std::fs::write(
        cfg.tenant_path("one.toml"),
        one_pool_tenant("one", &["one.test"], &[b.addr], "balanse = \"random\""),
    )
    .unwrap();
    // Meanwhile another tenant's edit applies: one tenant's mistake holds nobody else back.
    cfg.tenant(
        "two.toml",
        &one_pool_tenant("two", &["two.test"], &[b.addr], ""),
    );
    eventually(WAIT, "the typo is reported", || async {
        proxy.config_status().await["tenant_errors"][0]["errors"][0]["key"] == "pools.web.balanse"
    })
    .await;
    eventually(WAIT, "the other tenant's edit applies", || async {
        status_of(&c, &proxy, "two.test").await == (200, Some("b".into()))
    })
    .await;
    let status = proxy.config_status().await;
    let refused = &status["tenant_errors"][0];
    assert!(
        refused["file"].as_str().unwrap().ends_with("one.toml"),
        "{status}"
    );
    assert_eq!(refused["serving_last_good"], "one", "{status}");
    assert!(
        status["last_error"].is_null(),
        "the reload itself applied: {status}"
    );
    for _ in 0..5 {
        assert_eq!(
            status_of(&c, &proxy, "one.test").await,
            (200, Some("a".into())),
            "the last good version keeps serving"
        );
    }
    assert!(
        proxy
            .logs()
            .contains("tenant file refused; its last good version keeps serving"),
        "{}",
        proxy.logs()
    );
    let text = proxy.scrape().await;
    assert!(
        text.contains("porteiro_config_refused_tenant_files 1"),
        "{text}"
    );

    // Fixed: applied, and the error is cleared.
    std::fs::write(
        cfg.tenant_path("one.toml"),
        one_pool_tenant("one", &["one.test", "uno.test"], &[a.addr], ""),
    )
    .unwrap();
    eventually(WAIT, "the fixed file is applied", || async {
        status_of(&c, &proxy, "uno.test").await.0 == 200
    })
    .await;
    let status = proxy.config_status().await;
    assert_eq!(status["tenant_errors"], serde_json::json!([]), "{status}");
}

/// Main-file errors still refuse the whole reload: they concern every tenant.
#[tokio::test]
async fn a_broken_main_file_refuses_the_reload() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let generation = proxy.config_status().await["generation"].as_u64().unwrap();
    cfg.append_main("[server.oops]\n");
    eventually(WAIT, "the error is reported", || async {
        !proxy.config_status().await["last_error"].is_null()
    })
    .await;
    let status = proxy.config_status().await;
    assert_eq!(
        status["generation"].as_u64().unwrap(),
        generation,
        "{status}"
    );
    assert_eq!(status_of(&c, &proxy, "one.test").await.0, 200);
    assert!(proxy.logs().contains("reload refused"), "{}", proxy.logs());
}

#[tokio::test]
async fn sighup_and_the_admin_endpoint_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("watch = false");
    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();

    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[b.addr], ""),
    );
    // Not watching: the edit waits for a trigger.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status_of(&c, &proxy, "one.test").await.1.as_deref(),
        Some("a")
    );
    unsafe_kill(proxy.pid(), libc::SIGHUP);
    eventually(WAIT, "SIGHUP applied the edit", || async {
        status_of(&c, &proxy, "one.test").await.1.as_deref() == Some("b")
    })
    .await;

    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr], ""),
    );
    let r = proxy.reload().await;
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(
        status_of(&c, &proxy, "one.test").await.1.as_deref(),
        Some("a"),
        "applied before the answer"
    );
    let r = proxy.reload().await;
    assert_eq!(r["result"], "unchanged", "{r}");

    cfg.tenant("one.toml", "id = \"one\"\n");
    let resp = c.post(proxy.admin_url("/-/reload")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let r: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(r["result"], "partial", "{r}");
    assert_eq!(r["tenant_errors"][0]["errors"][0]["key"], "hosts", "{r}");

    cfg.append_main("nonsense = 1\n");
    let resp = c.post(proxy.admin_url("/-/reload")).send().await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        422,
        "a main file error refuses the reload"
    );
    let r: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(r["result"], "failed", "{r}");
}

fn unsafe_kill(pid: i32, signal: i32) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test]
async fn admin_endpoints_and_token() {
    let cfg = ConfigDir::new("admin_token = \"0123456789abcdef0123\"");
    cfg.tenant(
        "one.toml",
        &one_pool_tenant(
            "one",
            &["one.test"],
            &[dead_addr()],
            "health = { tcp = true, interval = \"100ms\", timeout = \"100ms\" }",
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let unauth = c.get(proxy.admin_url("/-/config")).send().await.unwrap();
    assert_eq!(unauth.status().as_u16(), 401);
    let wrong = c
        .get(proxy.admin_url("/-/config"))
        .bearer_auth("0123456789abcdef0124")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let auth = |path: &str| {
        c.get(proxy.admin_url(path))
            .bearer_auth("0123456789abcdef0123")
    };
    assert_eq!(
        auth("/-/healthy").send().await.unwrap().status().as_u16(),
        200
    );
    eventually(WAIT, "ready after the first probes", || async {
        auth("/-/ready").send().await.unwrap().status().as_u16() == 200
    })
    .await;
    let status: serde_json::Value = auth("/-/config")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            status["generation"].as_u64(),
            status["tenants"].as_u64(),
            status["backends"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(status["digest"].as_str().unwrap().len(), 16);
    assert!(
        !status.to_string().contains("0123456789abcdef0123"),
        "the token never appears in status"
    );
    assert_eq!(auth("/-/nope").send().await.unwrap().status().as_u16(), 404);
}

#[tokio::test]
async fn restart_only_settings_are_reported_not_ignored() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("watch = false");
    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    cfg.write_main("watch = false\nthreads = 3\nwork_stealing = true\nunknown_host_status = 421");
    let r: serde_json::Value = client()
        .post(proxy.admin_url("/-/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"], "applied");
    let status = proxy.config_status().await;
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["server.threads", "server.work_stealing"]),
        "{status}"
    );
    assert_eq!(
        get(&client(), &proxy, "nobody.test", "/").await.status,
        421,
        "hot settings applied"
    );
    assert!(proxy.logs().contains("needs a restart"));
}

#[tokio::test]
async fn health_state_survives_a_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("watch = false");
    // b will need 50 passing probes (5 s) to come back once ejected: a reload that reset its
    // state would let it back at the first probe.
    let check = "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", healthy_after = 50, unhealthy_after = 1 }";
    cfg.tenant(
        "one.toml",
        &one_pool_tenant("one", &["one.test"], &[a.addr, b.addr], check),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    eventually(WAIT, "b serves", || async {
        status_of(&c, &proxy, "one.test").await.1.as_deref() == Some("b")
    })
    .await;
    b.set_healthy(false);
    eventually(WAIT, "b is ejected", || async {
        let before = b.hits();
        for _ in 0..6 {
            status_of(&c, &proxy, "one.test").await;
        }
        b.hits() == before
    })
    .await;
    b.set_healthy(true);
    cfg.tenant(
        "two.toml",
        &one_pool_tenant("two", &["two.test"], &[a.addr], ""),
    );
    let r = proxy.reload().await;
    assert_eq!(r["result"], "applied");
    let hits = b.hits();
    for _ in 0..20 {
        assert_eq!(
            status_of(&c, &proxy, "one.test").await,
            (200, Some("a".into()))
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        b.hits(),
        hits,
        "the ejected backend stayed out across the reload"
    );
}

#[tokio::test]
async fn fifty_reloads_under_load_fail_no_request() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let cfg = ConfigDir::new("watch = false");
    let configs = [
        one_pool_tenant("one", &["one.test"], &[a.addr], ""),
        one_pool_tenant("one", &["one.test"], &[b.addr], "balance = \"least_conn\""),
    ];
    cfg.tenant("one.toml", &configs[0]);
    let proxy = Arc::new(Proxy::start(&cfg));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (proxy, stop, ok, bad) = (proxy.clone(), stop.clone(), ok.clone(), bad.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            // Bounded: at most 20,000 requests per client even if the reloads stall.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match c
                    .get(proxy.url("/"))
                    .header("host", "one.test")
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::SeqCst),
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for i in 0..50 {
        cfg.tenant("one.toml", &configs[(i + 1) % 2]);
        let r = proxy.reload().await;
        assert_eq!(r["result"], "applied", "reload {i}: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in clients {
        task.await.unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst));
    assert_eq!(
        bad,
        0,
        "{bad} of {} requests failed during reloads",
        ok + bad
    );
    assert!(
        ok > 100,
        "the load kept running through the reloads ({ok} requests)"
    );
    assert_eq!(proxy.config_status().await["generation"], 51);
    assert!(a.hits() > 0 && b.hits() > 0);
}

/// An editor that deletes a file and writes it anew must not take the tenant down: a reload
/// that finds a serving tenant's file gone looks again before dropping it.
#[tokio::test]
async fn a_tenant_file_deleted_and_recreated_during_a_reload_is_not_dropped() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("watch = false");
    let one = one_pool_tenant("one", &["one.test"], &[a.addr], "");
    cfg.tenant("one.toml", &one);
    let proxy = Proxy::start(&cfg);
    let c = client();
    std::fs::remove_file(cfg.tenant_path("one.toml")).unwrap();
    // The editor writes the file back 100 ms later, while the reload below runs.
    let path = cfg.tenant_path("one.toml");
    let editor = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(path, one).unwrap();
    });
    let r = proxy.reload().await;
    editor.await.unwrap();
    assert_eq!(r["result"], "unchanged", "{r}");
    assert_eq!(status_of(&c, &proxy, "one.test").await.0, 200);
    assert_eq!(proxy.config_status().await["tenants"], 1);

    // A file really gone is dropped (after the second look).
    std::fs::remove_file(cfg.tenant_path("one.toml")).unwrap();
    let r = proxy.reload().await;
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(status_of(&c, &proxy, "one.test").await.0, 404);
}
