//! The GET cache through the real proxy, against an origin that counts what reaches it and
//! answers with the caching headers each test asks for in the query string.
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// An origin whose answers are shaped by the query: `cc` (Cache-Control), `etag`, `vary`,
/// `tag` (Cache-Tag), `cookie` (Set-Cookie), `size` (body bytes), `delay` (ms),
/// `location`. The body names the path and how many times the origin served it.
struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Method, path and headers of a request the origin got.
type SeenRequest = (String, String, HashMap<String, String>);

type Shared = (
    Arc<Mutex<HashMap<String, usize>>>,
    Arc<Mutex<Vec<SeenRequest>>>,
    Arc<AtomicBool>,
);

impl Origin {
    async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Shared = Default::default();
        let (hits, seen, failing) = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(serve(req, shared).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            hits,
            seen,
            failing,
            task,
        }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    /// The request headers of the last request for `path`.
    fn last_headers(&self, path: &str) -> HashMap<String, String> {
        let seen = self.seen.lock().unwrap();
        let last = seen.iter().rev().find(|(_, p, _)| p == path);
        last.map(|(_, _, h)| h.clone()).unwrap_or_default()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match porteiro::routing::paths::escaped_byte(b, i) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

async fn serve(req: Request<Incoming>, (hits, seen, failing): Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    seen.lock()
        .unwrap()
        .push((req.method().to_string(), path.clone(), headers.clone()));
    if failing.load(Ordering::SeqCst) {
        return Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"down\n")))
            .unwrap();
    }
    let n = {
        let mut h = hits.lock().unwrap();
        let n = h.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    if let Some(ms) = q.get("delay").and_then(|d| d.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let etag = q.get("etag").map(|e| format!("\"{e}\""));
    if let Some(tag) = etag
        .as_ref()
        .filter(|t| headers.get("if-none-match") == Some(*t))
    {
        let mut r = Response::builder().status(304);
        if let Some(cc) = q.get("cc") {
            r = r.header("cache-control", cc.as_str());
        }
        return r
            .header("etag", tag.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let body = match q.get("size").and_then(|s| s.parse::<usize>().ok()) {
        Some(size) => "x".repeat(size),
        None => format!(
            "{path} #{n} {}\n",
            headers.get("accept-language").map_or("", |s| s)
        ),
    };
    let status = if req.method() == hyper::Method::POST {
        201
    } else {
        200
    };
    let mut r = Response::builder()
        .status(status)
        .header("x-served", n.to_string());
    for (param, header) in [
        ("cc", "cache-control"),
        ("vary", "vary"),
        ("tag", "cache-tag"),
        ("cookie", "set-cookie"),
        ("location", "location"),
    ] {
        if let Some(v) = q.get(param) {
            r = r.header(header, v.as_str());
        }
    }
    if let Some(e) = etag {
        r = r.header("etag", e);
    }
    r.body(Full::new(Bytes::from(body))).unwrap()
}

const TENANT: &str = r#"
id = "ID"
hosts = ["ID.test"]

[pools.web]
backends = ["ORIGIN"]

[cache]
max_size = "MAX"
stale_if_error = "0s"

[[routes]]
path_prefix = "/nocache/"
pool = "web"
cache = false

[[routes]]
path_prefix = "/"
pool = "web"
"#;

fn tenant(id: &str, origin: &Origin, max: &str) -> String {
    TENANT
        .replace("ID", id)
        .replace("ORIGIN", &origin.addr.to_string())
        .replace("MAX", max)
}

struct World {
    origin: Origin,
    proxy: Proxy,
    cfg: ConfigDir,
    client: reqwest::Client,
}

async fn world() -> World {
    let origin = Origin::start().await;
    let cfg = ConfigDir::new("");
    cfg.tenant("a.toml", &tenant("a", &origin, "1MiB"))
        .tenant("b.toml", &tenant("b", &origin, "1MiB"));
    let proxy = Proxy::start(&cfg);
    World {
        origin,
        proxy,
        cfg,
        client: client(),
    }
}

impl World {
    async fn get(&self, host: &str, path: &str) -> Reply {
        get(&self.client, &self.proxy, host, path).await
    }

    async fn get_with(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut r = self.client.get(self.proxy.url(path)).header("host", host);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        send(r).await
    }

    async fn admin_delete(&self, path: &str) -> Reply {
        send(self.client.delete(self.proxy.admin_url(path))).await
    }
}

fn cache_status(r: &Reply) -> &str {
    r.headers
        .get("cache-status")
        .map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_hit_after_a_miss_with_age_and_cache_status() {
    let w = world().await;
    let path = "/page?cc=max-age%3D60";
    let first = w.get("a.test", path).await;
    assert_eq!(first.status, 200);
    assert_eq!(cache_status(&first), "porteiro; fwd=uri-miss; stored");
    let second = w.get("a.test", path).await;
    assert_eq!(second.body, first.body);
    assert!(
        cache_status(&second).starts_with("porteiro; hit"),
        "{:?}",
        second.headers
    );
    assert!(second.headers.contains_key("age"));
    assert_eq!(w.origin.hits("/page"), 1);
    // The other tenant, same path: its own entry.
    let other = w.get("b.test", path).await;
    assert_eq!(cache_status(&other), "porteiro; fwd=uri-miss; stored");
    assert_eq!(w.origin.hits("/page"), 2);
    // HEAD is answered from the stored GET.
    let head = send(w.client.head(w.proxy.url(path)).header("host", "a.test")).await;
    assert_eq!(head.status, 200);
    assert!(cache_status(&head).starts_with("porteiro; hit"));
    assert_eq!(w.origin.hits("/page"), 2);
    let text = w.proxy.scrape().await;
    assert!(
        text.contains("porteiro_cache_requests_total{result=\"hit\",tenant=\"a\"} 2"),
        "{text}"
    );
    assert!(text.contains("porteiro_cache_entries{tenant=\"a\"} 1"));
}

#[tokio::test]
async fn what_is_not_stored_or_not_looked_up() {
    let w = world().await;
    for (path, origin_path) in [
        ("/priv?cc=private%2C%20max-age%3D60", "/priv"),
        ("/ns?cc=no-store", "/ns"),
        ("/cookie?cc=max-age%3D60&cookie=s%3D1", "/cookie"),
        ("/nocache/x?cc=max-age%3D60", "/nocache/x"),
        ("/plain", "/plain"),
        ("/big?cc=max-age%3D60&size=9000000", "/big"),
    ] {
        w.get("a.test", path).await;
        let again = w.get("a.test", path).await;
        assert_eq!(w.origin.hits(origin_path), 2, "{path}: {:?}", again.headers);
        if !path.starts_with("/nocache/") {
            assert_eq!(cache_status(&again), "porteiro; fwd=uri-miss", "{path}");
        }
    }
    let with_cookie = [("cookie", "session=1")];
    w.get_with("a.test", "/c?cc=max-age%3D60", &with_cookie)
        .await;
    let r = w
        .get_with("a.test", "/c?cc=max-age%3D60", &with_cookie)
        .await;
    assert_eq!(cache_status(&r), "porteiro; fwd=bypass");
    assert_eq!(w.origin.hits("/c"), 2);
    let r = w.get("a.test", "/nocache/x?cc=max-age%3D60").await;
    assert!(
        !r.headers.contains_key("cache-status"),
        "a route without cache says nothing"
    );
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let w = world().await;
    let path = "/v?cc=max-age%3D60&vary=Accept-Language";
    let en = w
        .get_with("a.test", path, &[("accept-language", "en")])
        .await;
    let fr = w
        .get_with("a.test", path, &[("accept-language", "fr")])
        .await;
    assert_ne!(en.body, fr.body);
    let en2 = w
        .get_with("a.test", path, &[("accept-language", "en")])
        .await;
    assert_eq!(en2.body, en.body);
    assert!(cache_status(&en2).starts_with("porteiro; hit"));
    assert_eq!(w.origin.hits("/v"), 2);
    // Vary: * is never stored.
    w.get("a.test", "/star?cc=max-age%3D60&vary=*").await;
    w.get("a.test", "/star?cc=max-age%3D60&vary=*").await;
    assert_eq!(w.origin.hits("/star"), 2);
}

#[tokio::test]
async fn stale_entries_are_revalidated_with_their_etag() {
    let w = world().await;
    let path = "/e?cc=max-age%3D1&etag=v1";
    let first = w.get("a.test", path).await;
    // A client's own conditional request is answered from the cache.
    let cond = w
        .get_with("a.test", path, &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(cond.status, 304);
    assert_eq!(w.origin.hits("/e"), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = w.get("a.test", path).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "the stored body, revalidated");
    assert_eq!(cache_status(&again), "porteiro; fwd=stale; fwd-status=304");
    assert_eq!(
        w.origin
            .last_headers("/e")
            .get("if-none-match")
            .map(String::as_str),
        Some("\"v1\"")
    );
    let fresh = w.get("a.test", path).await;
    assert!(
        cache_status(&fresh).starts_with("porteiro; hit"),
        "a 304 refreshes the entry"
    );
}

#[tokio::test]
async fn concurrent_misses_reach_the_origin_once() {
    let w = world().await;
    let path = "/slow?cc=max-age%3D60&delay=300";
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, url) = (w.client.clone(), w.proxy.url(path));
        tasks.push(tokio::spawn(async move {
            send(client.get(url).header("host", "a.test")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(w.origin.hits("/slow"), 1);
    let text = w.proxy.scrape().await;
    assert!(
        text.contains("porteiro_cache_requests_total{result=\"coalesced\",tenant=\"a\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let w = world().await;
    let path = "/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D60";
    let first = w.get("a.test", path).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = w.get("a.test", path).await;
    assert_eq!(stale.body, first.body);
    assert!(
        cache_status(&stale).contains("fwd=stale"),
        "{:?}",
        stale.headers
    );
    eventually(
        Duration::from_secs(5),
        "the refresh in the background",
        || async { w.origin.hits("/swr") == 2 },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the refreshed entry is served",
        || async { w.get("a.test", path).await.body != first.body },
    )
    .await;
}

#[tokio::test]
async fn stale_if_error_keeps_a_tenant_up_while_its_backend_is_down() {
    let w = world().await;
    let path = "/sie?cc=max-age%3D1%2C%20stale-if-error%3D60";
    let first = w.get("a.test", path).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    w.origin.failing.store(true, Ordering::SeqCst);
    let r = w.get("a.test", path).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, first.body.as_str()),
        "{:?}",
        r.headers
    );
    // Without a stale-if-error window the failure shows.
    w.origin.failing.store(false, Ordering::SeqCst);
    w.get("a.test", "/hard?cc=max-age%3D1").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    w.origin.failing.store(true, Ordering::SeqCst);
    assert_eq!(w.get("a.test", "/hard?cc=max-age%3D1").await.status, 503);
}

#[tokio::test]
async fn one_tenants_flood_never_evicts_another_tenants_entries() {
    let origin = Origin::start().await;
    let cfg = ConfigDir::new("");
    cfg.tenant("a.toml", &tenant("a", &origin, "64KiB"))
        .tenant("b.toml", &tenant("b", &origin, "64KiB"));
    let proxy = Proxy::start(&cfg);
    let c = client();
    for i in 0..3 {
        get(
            &c,
            &proxy,
            "b.test",
            &format!("/keep{i}?cc=max-age%3D60&size=4000"),
        )
        .await;
    }
    for i in 0..100 {
        get(
            &c,
            &proxy,
            "a.test",
            &format!("/flood{i}?cc=max-age%3D60&size=4000"),
        )
        .await;
    }
    for i in 0..3 {
        let r = get(
            &c,
            &proxy,
            "b.test",
            &format!("/keep{i}?cc=max-age%3D60&size=4000"),
        )
        .await;
        assert!(
            cache_status(&r).starts_with("porteiro; hit"),
            "b lost /keep{i}"
        );
    }
    let text = proxy.scrape().await;
    let bytes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("porteiro_cache_bytes{tenant=\"a\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(bytes <= 65536.0, "{bytes}");
    assert!(!text.contains("porteiro_cache_evictions_total{tenant=\"b\"} 1"));
    assert_eq!(origin.total(), 103);
}

#[tokio::test]
async fn purge_by_tenant_url_and_tag() {
    let w = world().await;
    let paths = [
        "/p1?cc=max-age%3D60&tag=red",
        "/p2?cc=max-age%3D60&tag=red%2Cblue",
        "/p3?cc=max-age%3D60",
    ];
    for p in paths {
        let r = w.get("a.test", p).await;
        assert!(!r.headers.contains_key("cache-tag"), "tags stay private");
    }
    let r = w.admin_delete("/-/cache/a?tag=red").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"purged\": 2"), "{}", r.body);
    let url = "/-/cache/a?url=http%3A%2F%2Fa.test%2Fp3%3Fcc%3Dmax-age%253D60";
    let r = w.admin_delete(url).await;
    assert!(r.body.contains("\"purged\": 1"), "{}", r.body);
    for p in paths {
        w.get("a.test", p).await;
    }
    assert_eq!(w.origin.total(), 6, "all three were fetched again");
    let r = w.admin_delete("/-/cache/a").await;
    assert!(r.body.contains("\"purged\": 3"), "{}", r.body);
    assert_eq!(w.admin_delete("/-/cache/nobody").await.status, 404);
    let typo = w.admin_delete("/-/cache/a?URL=x").await;
    assert_eq!(
        typo.status, 400,
        "a misspelt parameter purges nothing: {}",
        typo.body
    );
    let r = w
        .admin_delete("/-/cache/a?url=http%3A%2F%2Fb.test%2Fx")
        .await;
    assert_eq!(r.status, 400, "another tenant's host");
}

#[tokio::test]
async fn a_successful_post_invalidates_its_url_and_location() {
    let w = world().await;
    let page = "/item?cc=max-age%3D60";
    let other = "/other";
    w.get("a.test", page).await;
    w.get("a.test", other).await;
    let with_ttl = "/other2?cc=max-age%3D60";
    w.get("a.test", with_ttl).await;
    let r = send(w.client.post(w.proxy.url(page)).header("host", "a.test")).await;
    assert_eq!(r.status, 201);
    assert!(!cache_status(&w.get("a.test", page).await).contains("hit"));
    w.get("a.test", with_ttl).await;
    assert_eq!(w.origin.hits("/other2"), 1);
    let post = "/create?location=/other2%3Fcc%3Dmax-age%253D60";
    send(w.client.post(w.proxy.url(post)).header("host", "a.test")).await;
    w.get("a.test", with_ttl).await;
    assert_eq!(w.origin.hits("/other2"), 2, "the Location's entry went too");
}

#[tokio::test]
async fn entries_survive_a_reload_and_leave_with_their_tenant() {
    let w = world().await;
    let path = "/r?cc=max-age%3D60";
    w.get("a.test", path).await;
    w.get("b.test", path).await;
    std::fs::remove_file(w.cfg.tenant_path("b.toml")).unwrap();
    let r = send(w.client.post(w.proxy.admin_url("/-/reload"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(cache_status(&w.get("a.test", path).await).starts_with("porteiro; hit"));
    let text = w.proxy.scrape().await;
    assert!(
        !text.contains("porteiro_cache_entries{tenant=\"b\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn ranges_are_served_from_the_stored_response() {
    let w = world().await;
    let path = "/range?cc=max-age%3D60&size=100";
    w.get("a.test", path).await;
    let r = w.get_with("a.test", path, &[("range", "bytes=0-3")]).await;
    assert_eq!((r.status, r.body.as_str()), (206, "xxxx"));
    assert_eq!(w.origin.hits("/range"), 1);
}
