//! Host and path routing through the real proxy.
mod support;

use support::*;

const ACME: &str = r#"
id = "acme"
hosts = ["acme.example.com", "*.acme.example.com"]

[pools.web]
backends = ["WEB"]

[pools.api]
backends = ["API"]

[[routes]]
path_prefix = "/api/"
pool = "api"

[[routes]]
path_prefix = "/status"
respond = { status = 200, body = "ok\n", headers = { "content-type" = "text/plain" } }

[[routes]]
path_prefix = "/"
pool = "web"
"#;

struct World {
    web: Backend,
    api: Backend,
    globex: Backend,
    wide: Backend,
    proxy: Proxy,
    _cfg: ConfigDir,
}

async fn world(server_extra: &str) -> World {
    let (web, api, globex, wide) = (
        Backend::start("web").await,
        Backend::start("api").await,
        Backend::start("globex").await,
        Backend::start("wide").await,
    );
    let cfg = ConfigDir::new(server_extra);
    cfg.tenant(
        "acme.toml",
        &ACME
            .replace("WEB", &web.addr.to_string())
            .replace("API", &api.addr.to_string()),
    )
    .tenant(
        "globex.toml",
        &one_pool_tenant("globex", &["globex.example.com"], &[globex.addr], ""),
    )
    .tenant(
        "wide.toml",
        &one_pool_tenant("wide", &["*.example.com"], &[wide.addr], ""),
    );
    let proxy = Proxy::start(&cfg);
    World {
        web,
        api,
        globex,
        wide,
        proxy,
        _cfg: cfg,
    }
}

#[tokio::test]
async fn exact_wildcard_and_path_routes() {
    routes_reach_their_backends(world("").await).await;
}

/// The same routes with idle threads allowed to take work from busy ones.
#[tokio::test]
async fn with_work_stealing_the_routes_are_the_same() {
    routes_reach_their_backends(world("work_stealing = true").await).await;
}

async fn routes_reach_their_backends(w: World) {
    let c = client();
    let cases = [
        ("acme.example.com", "/", "web"),
        ("www.acme.example.com", "/page", "web"),
        ("a.b.acme.example.com", "/", "web"),
        ("ACME.Example.COM:8080", "/api/users", "api"),
        ("acme.example.com.", "/api/", "api"),
        ("acme.example.com", "/api", "web"),
        ("globex.example.com", "/api/users", "globex"),
        ("other.example.com", "/", "wide"),
    ];
    for (host, path, want) in cases {
        let r = get(&c, &w.proxy, host, path).await;
        assert_eq!(r.status, 200, "{host}{path}: {}", r.body);
        assert_eq!(r.backend.as_deref(), Some(want), "{host}{path}");
        assert_eq!(
            r.body,
            format!("{want} {path}\n"),
            "backend saw the path unchanged"
        );
    }
    assert_eq!(
        (w.web.hits(), w.api.hits(), w.globex.hits(), w.wide.hits()),
        (4, 2, 1, 1)
    );
}

#[tokio::test]
async fn respond_route_is_answered_by_porteiro() {
    let w = world("").await;
    let r = get(&client(), &w.proxy, "acme.example.com", "/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok\n");
    assert_eq!(r.headers["content-type"], "text/plain");
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(
        w.web.hits() + w.api.hits(),
        0,
        "a respond route never reaches a backend"
    );
}

#[tokio::test]
async fn unknown_host_is_answered_and_never_forwarded() {
    let w = world("").await;
    let c = client();
    for host in ["example.com", "acme.example.org", "localhost", "bad host!"] {
        let r = get(&c, &w.proxy, host, "/").await;
        assert_eq!(r.status, 404, "{host}");
        assert_eq!(r.body, "404 Not Found: no tenant serves this host\n");
        assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    }
    assert_eq!(
        w.web.hits() + w.api.hits() + w.globex.hits() + w.wide.hits(),
        0
    );
}

#[tokio::test]
async fn unknown_host_status_is_configurable() {
    let w = world("unknown_host_status = 421").await;
    let r = get(&client(), &w.proxy, "nobody.test", "/").await;
    assert_eq!(r.status, 421);
}

#[tokio::test]
async fn http2_authority_routes_like_host() {
    let w = world("h2c = true").await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("www.acme.example.com", w.proxy.addr)
        .resolve("globex.example.com", w.proxy.addr)
        .build()
        .unwrap();
    let port = w.proxy.addr.port();
    let r = send(c.get(format!("http://www.acme.example.com:{port}/api/x"))).await;
    assert_eq!((r.status, r.backend.as_deref()), (200, Some("api")));
    let r = send(c.get(format!("http://globex.example.com:{port}/"))).await;
    assert_eq!((r.status, r.backend.as_deref()), (200, Some("globex")));
    let seen = w.api.seen();
    assert_eq!(
        seen[0].header("host"),
        vec![format!("www.acme.example.com:{port}")],
        "h2 :authority becomes Host"
    );
}

#[tokio::test]
async fn request_without_host_is_rejected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world("").await;
    let mut s = tokio::net::TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.read_to_string(&mut out),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.0 400"),
        "{out}"
    );
    assert_eq!(w.web.hits(), 0);
}

/// `GET path` with `path` exactly as written.
async fn raw_get(proxy: &Proxy, host: &str, path: &str) -> String {
    proxy
        .raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await
}

#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_forwarding() {
    let (api, web) = (Backend::start("api").await, Backend::start("web").await);
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "a.toml",
        &format!(
            "id = \"a\"\nhosts = [\"a.test\"]\n[pools.api]\nbackends = [\"{}\"]\n[pools.web]\nbackends = [\"{}\"]\n\
             [[routes]]\npath_prefix = \"/api/\"\npool = \"api\"\n\
             [[routes]]\npath_prefix = \"/admin\"\nrespond = {{ status = 403, body = \"no\" }}\n\
             [[routes]]\npath_prefix = \"/\"\npool = \"web\"\n",
            api.addr, web.addr
        ),
    );
    let proxy = Proxy::start(&cfg);
    let escaped = raw_get(&proxy, "a.test", "/api/../admin").await;
    assert!(escaped.starts_with("HTTP/1.1 403"), "{escaped}");
    let encoded = raw_get(&proxy, "a.test", "/api/%2e%2e/admin").await;
    assert!(encoded.starts_with("HTTP/1.1 403"), "{encoded}");
    let unreserved = raw_get(&proxy, "a.test", "/%61dmin").await;
    assert!(unreserved.starts_with("HTTP/1.1 403"), "{unreserved}");
    for ambiguous in ["/api/..;/admin", "/api/%5c../admin", "/api/x%00"] {
        let answer = raw_get(&proxy, "a.test", ambiguous).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{ambiguous}: {answer}");
    }
    assert_eq!(api.hits() + web.hits(), 0);
    let dotted = raw_get(&proxy, "a.test", "/api/./v1//users?x=1").await;
    assert!(dotted.starts_with("HTTP/1.1 200"), "{dotted}");
    assert_eq!(api.seen()[0].path, "/api/v1/users");
}
