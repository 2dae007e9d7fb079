//! What a hostile client can try, sent as raw bytes: stalled uploads, slow and idle
//! connections, connection floods, odd request targets and paths, header twins, repeated
//! Content-Length, oversized heads, and an admin listener left without its token.
mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SITE: &str = r#"
id = "site"
hosts = ["b.test"]
allow_path_parameters = PARAMS

[pools.web]
backends = ["WEB"]
read_timeout = "READ"
passive = { failures = 1, cooldown = "1m" }

[[routes]]
path_prefix = "/admin"
match_case = false
respond = { status = 403, body = "admin is private\n" }

[[routes]]
path_prefix = "/api/admin"
respond = { status = 403, body = "api admin is private\n" }

[[routes]]
path_prefix = "/"
pool = "web"
"#;

struct Site {
    web: Backend,
    proxy: Proxy,
    cfg: ConfigDir,
}

async fn site(server_extra: &str, read_timeout: &str, params: bool) -> Site {
    let web = Backend::start("web").await;
    let cfg = ConfigDir::new(server_extra);
    cfg.tenant(
        "site.toml",
        &SITE
            .replace("WEB", &web.addr.to_string())
            .replace("READ", read_timeout)
            .replace("PARAMS", &params.to_string()),
    );
    let proxy = Proxy::start(&cfg);
    Site { web, proxy, cfg }
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = proxy.scrape().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const STALLED: &str =
    "POST /upload HTTP/1.1\r\nHost: b.test\r\nContent-Length: 100\r\n\r\n0123456789";

/// Issue item 1: the backend waits for a body the client never finishes. The backend's read
/// timeout (1s) fires first; that is the client's fault: 408, and the backend stays in.
#[tokio::test]
async fn a_stalled_upload_is_a_client_timeout_and_never_ejects_the_backend() {
    let s = site("body_timeout = \"30s\"", "1s", false).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut conn = s.proxy.connect().await;
        conn.write_all(STALLED.as_bytes()).await.unwrap();
        stalled.push(conn);
    }
    for conn in &mut stalled {
        let (answer, closed) = read_until_closed(conn, Duration::from_secs(10)).await;
        assert!(closed, "the stalled request was not ended");
        assert_eq!(status_of(&answer), 408, "{answer}");
    }
    let client = client();
    let r = get(&client, &s.proxy, "b.test", "/after").await;
    assert_eq!(r.status, 200, "the backend was ejected: {}", r.body);
    assert_eq!(
        metric(
            &s.proxy,
            "porteiro_upstream_timeouts_total{tenant=\"site\"}"
        )
        .await,
        0.0
    );
    assert!(!s.proxy.logs().contains("backend taken out"));
}

/// The same stall caught by porteiro's own body timeout, before the backend's.
#[tokio::test]
async fn a_stalled_upload_hits_the_body_timeout() {
    let s = site("body_timeout = \"1s\"", "30s", false).await;
    let mut conn = s.proxy.connect().await;
    conn.write_all(STALLED.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(closed && started.elapsed() < Duration::from_secs(8));
    assert_eq!(status_of(&answer), 408, "{answer}");
    // A whole upload still works.
    let body = "x".repeat(100);
    let r = send(
        client()
            .post(s.proxy.url("/upload"))
            .header("host", "b.test")
            .body(body),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "web got 100 bytes\n"));
}

/// Issue item 2: idle connections, half-sent heads and slowloris are cut off.
#[tokio::test]
async fn idle_half_sent_and_slow_heads_are_cut_off() {
    let s = site(
        "header_timeout = \"1s\"\nkeepalive_timeout = \"1s\"",
        "30s",
        false,
    )
    .await;
    let limit = Duration::from_secs(5);

    let mut silent = s.proxy.connect().await;
    let (answer, closed) = read_until_closed(&mut silent, limit).await;
    assert!(
        closed && answer.is_empty(),
        "a silent connection stays open"
    );

    let mut half = s.proxy.connect().await;
    half.write_all(b"GET /slow HTTP/1.1\r\nHo").await.unwrap();
    let (answer, closed) = read_until_closed(&mut half, limit).await;
    assert!(closed, "half a head keeps the connection");
    assert_eq!(status_of(&answer), 408, "{answer}");

    // One byte every 200ms: every read arrives in time, the whole head does not. The answer
    // must come while bytes are still flowing.
    let mut slow = s.proxy.connect().await;
    let started = Instant::now();
    let head =
        b"GET /slowloris HTTP/1.1\r\nHost: b.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut answer = Vec::new();
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a slowloris head was not cut off at the head deadline"
    );
    assert_eq!(status_of(&String::from_utf8_lossy(&answer)), 408);
    assert_eq!(s.web.hits(), 0);

    let mut kept = s.proxy.connect().await;
    kept.write_all(b"GET /one HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_answer(&mut kept).await), 200);
    let (_, closed) = read_until_closed(&mut kept, limit).await;
    assert!(closed, "an idle keep-alive connection stays open");
    assert!(
        metric(
            &s.proxy,
            "porteiro_client_errors_total{reason=\"header_timeout\"}"
        )
        .await
            >= 2.0
    );
}

/// Issue item 2: caps on open connections, per client address and per listener.
#[tokio::test]
async fn connection_caps_per_address_and_per_listener() {
    let s = site("max_connections_per_ip = 2", "30s", false).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut conn = s.proxy.connect().await;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_of(&read_answer(&mut conn).await), 200);
        open.push(conn);
    }
    let mut third = s.proxy.connect().await;
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(status_of(&answer), 429, "{answer}");
    assert!(answer.contains("Retry-After: 1"));
    drop(open.pop());
    eventually(Duration::from_secs(5), "a freed slot is usable", || async {
        let r = client()
            .get(s.proxy.url("/"))
            .header("host", "b.test")
            .header("connection", "close")
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;

    s.cfg.write_main("max_connections = 1");
    let r = send(client().post(s.proxy.admin_url("/-/reload"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // `open` still holds one connection: the listener is full.
    let mut over = s.proxy.connect().await;
    let (answer, _) = read_until_closed(&mut over, Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert_eq!(
        metric(
            &s.proxy,
            "porteiro_client_errors_total{reason=\"listener_full\"}"
        )
        .await,
        1.0,
        "{}",
        s.proxy.logs()
    );
}

/// Issue item 3: the token rule holds for the address the admin listener is bound to.
#[tokio::test]
async fn the_admin_token_stays_while_the_listener_is_reachable() {
    let web = Backend::start("web").await;
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "site.toml",
        &one_pool_tenant("site", &["b.test"], &[web.addr], ""),
    );
    let token = "0123456789abcdef0123";
    let main = |admin: &str, token: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin = \"{admin}:{}\"\nthreads = 1\n{token}\n",
            cfg.port, cfg.admin_port
        )
    };
    std::fs::write(
        cfg.main_file(),
        main("0.0.0.0", &format!("admin_token = \"{token}\"")),
    )
    .unwrap();
    let proxy = Proxy::start(&cfg);
    std::fs::write(cfg.main_file(), main("127.0.0.1", "")).unwrap();
    let r = send(
        client()
            .post(proxy.admin_url("/-/reload"))
            .header("authorization", format!("bearer {token}")),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("server.admin_token"), "{}", r.body);
    let r = send(client().get(proxy.admin_url("/-/config"))).await;
    assert_eq!(r.status, 401, "the token was dropped: {}", r.body);
    let r = send(
        client()
            .get(proxy.admin_url("/-/config"))
            .header("authorization", format!("BEARER {token}")),
    )
    .await;
    assert_eq!(r.status, 200, "the scheme is case-insensitive");
}

/// Issue item 4: only origin-form, http(s) absolute-form and `OPTIONS *`.
#[tokio::test]
async fn request_targets_other_than_a_path_are_refused() {
    let s = site("", "30s", false).await;
    for target in [
        "admin",
        "./admin",
        "x/../../admin",
        "a.test/admin",
        "foo:bar://a.test/admin",
        "?admin",
    ] {
        let answer = s
            .proxy
            .raw(&format!(
                "GET {target} HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert_eq!(status_of(&answer), 400, "{target}: {answer}");
    }
    assert_eq!(s.web.hits(), 0, "{:?}", s.web.seen());
    let answer = s
        .proxy
        .raw("GET http://b.test/admin HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(
        status_of(&answer),
        403,
        "absolute-form is routed by its path"
    );
    let answer = s
        .proxy
        .raw("GET http://b.test/x?q=1 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(s.web.seen()[0].path, "/x", "forwarded in origin-form");
}

/// Issue item 5: `;` parameters, letter case and encoded slashes cannot reach around a route.
#[tokio::test]
async fn paths_backends_read_differently_cannot_skip_a_route() {
    let s = site("", "30s", false).await;
    let ask = |path: &'static str| {
        let proxy = &s.proxy;
        async move {
            status_of(
                &proxy
                    .raw(&format!(
                        "GET {path} HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n"
                    ))
                    .await,
            )
        }
    };
    for (path, want) in [
        ("/;/admin", 400),
        ("/;x/admin", 400),
        ("/a;jsessionid=1/b", 400),
        ("/ADMIN", 403),
        ("/%41dmin", 403),
        ("/Admin/users", 403),
        ("/api%2Fadmin", 403),
        ("/api%2fadmin/x", 403),
        ("/x%2F..%2Fadmin", 400),
        ("/%2Fadmin", 400),
        ("/API/admin", 200),
        ("/files/a%2Fb", 200),
        ("/%7Eé/x", 200),
    ] {
        assert_eq!(ask(path).await, want, "{path}");
    }
    let forwarded: Vec<String> = s.web.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(forwarded, ["/API/admin", "/files/a%2Fb", "/~é/x"]);

    let allowing = site("", "30s", true).await;
    let answer = allowing
        .proxy
        .raw("GET /a;jsessionid=1/b HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}

/// Issue items 6 and 7: underscore twins and repeated Content-Length never reach a backend.
#[tokio::test]
async fn header_twins_and_repeated_lengths_are_cleaned() {
    let s = site("", "30s", false).await;
    let answer = s
        .proxy
        .raw(
            "GET /twins HTTP/1.1\r\nHost: b.test\r\nX_Tenant_Id: evil\r\nX_Forwarded_For: 6.6.6.6\r\n\
             True-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\nX-Cluster-Client-IP: 6.6.6.6\r\n\
             Forwarded-For: 6.6.6.6\r\nX-Forwarded: for=6.6.6.6\r\nMy_Header: kept\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = &s.web.seen()[0];
    for gone in [
        "x_tenant_id",
        "x_forwarded_for",
        "true-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "forwarded-for",
        "x-forwarded",
    ] {
        assert!(seen.header(gone).is_empty(), "{gone}: {:?}", seen.headers);
    }
    assert_eq!(seen.header("x-tenant-id"), ["site"]);
    assert_eq!(seen.header("my_header"), ["kept"]);

    for lengths in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 0005\r\n",
    ] {
        let answer = s
            .proxy
            .raw(&format!(
                "POST /upload HTTP/1.1\r\nHost: b.test\r\n{lengths}Connection: close\r\n\r\nhello"
            ))
            .await;
        assert_eq!(status_of(&answer), 200, "{lengths}: {answer}");
        assert!(answer.ends_with("web got 5 bytes\n"), "{answer}");
        let last = s.web.seen().pop().unwrap();
        assert_eq!(last.header("content-length"), ["5"], "{lengths}");
    }
    let before = s.web.hits();
    let answer = s
        .proxy
        .raw("POST /upload HTTP/1.1\r\nHost: b.test\r\nContent-Length: 5, 6\r\nConnection: close\r\n\r\nhello")
        .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert_eq!(s.web.hits(), before);
}

/// Issue item 8: the right status for oversized heads, a clear route miss, and no ERROR line
/// per connection that leaves part-way through its head.
#[tokio::test]
async fn oversized_heads_get_414_or_431_and_broken_heads_stay_out_of_the_log() {
    let s = site(
        "max_request_line = \"1KiB\"\nmax_header_bytes = \"4KiB\"",
        "30s",
        false,
    )
    .await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(status_of(&s.proxy.raw(&long).await), 414);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: b.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "v".repeat(5000)
    );
    assert_eq!(status_of(&s.proxy.raw(&big).await), 431);
    let many = format!(
        "GET / HTTP/1.1\r\nHost: b.test\r\n{}Connection: close\r\n\r\n",
        "A: b\r\n".repeat(300)
    );
    assert_eq!(status_of(&s.proxy.raw(&many).await), 431);

    let nowhere = site("", "30s", false).await;
    std::fs::write(
        nowhere.cfg.tenant_path("site.toml"),
        "id = \"site\"\nhosts = [\"b.test\"]\n[pools.web]\nbackends = [\"127.0.0.1:1\"]\n\
         [[routes]]\npath_prefix = \"/only/\"\npool = \"web\"\n",
    )
    .unwrap();
    let r = send(client().post(nowhere.proxy.admin_url("/-/reload"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = nowhere
        .proxy
        .raw("GET /elsewhere HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        .await;
    assert!(
        answer.ends_with("404 Not Found: no route for this path\n"),
        "{answer}"
    );

    for _ in 0..50 {
        let mut conn = s.proxy.connect().await;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: b.te")
            .await
            .unwrap();
        drop(conn);
    }
    eventually(
        Duration::from_secs(5),
        "50 broken heads counted",
        || async {
            metric(
                &s.proxy,
                "porteiro_client_errors_total{reason=\"closed_mid_head\"}",
            )
            .await
                >= 50.0
        },
    )
    .await;
    let errors = s
        .proxy
        .logs()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .count();
    assert_eq!(errors, 0, "{}", s.proxy.logs());
}
