//! Headers porteiro sets for backends, and what a client may not forge.
mod support;

use support::*;

async fn setup(server_extra: &str, pool_extra: &str) -> (Backend, Proxy, ConfigDir) {
    let b = Backend::start("b").await;
    let cfg = ConfigDir::new(server_extra);
    cfg.tenant(
        "acme.toml",
        &one_pool_tenant("acme", &["acme.example.com"], &[b.addr], pool_extra),
    );
    let proxy = Proxy::start(&cfg);
    (b, proxy, cfg)
}

#[tokio::test]
async fn forwarding_headers_replace_what_the_client_sent() {
    let (b, proxy, _cfg) = setup("", "").await;
    let r = send(
        client()
            .get(proxy.url("/"))
            .header("host", "acme.example.com")
            .header("x-tenant-id", "globex")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("x-real-ip", "6.6.6.6")
            .header("x-original-url", "/admin")
            .header("x-request-id", "client-id-42"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["x-request-id"], "client-id-42",
        "a sane request id is kept and echoed"
    );
    let seen = &b.seen()[0];
    assert_eq!(seen.header("x-tenant-id"), vec!["acme"]);
    assert_eq!(seen.header("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header("x-forwarded-host"), vec!["acme.example.com"]);
    assert_eq!(seen.header("x-request-id"), vec!["client-id-42"]);
    assert!(seen.header("x-real-ip").is_empty());
    assert!(seen.header("x-original-url").is_empty());
    assert_eq!(
        seen.header("host"),
        vec!["acme.example.com"],
        "Host is preserved"
    );
}

/// The status line of the answer to `head`, sent as written.
async fn raw(proxy: &Proxy, head: &str) -> String {
    let answer = proxy.raw(head).await;
    answer.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn the_backend_sees_only_the_host_porteiro_routed_by() {
    let (b, proxy, _cfg) = setup("", "").await;
    let close = "Connection: close\r\n\r\n";
    let status = raw(
        &proxy,
        &format!("GET http://acme.example.com/x HTTP/1.1\r\nHost: acme.example.com\r\n{close}"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(b.seen()[0].header("host"), vec!["acme.example.com"]);
    // A Host that contradicts the absolute-form target, or a second Host, routes nowhere.
    for head in [
        format!("GET http://acme.example.com/x HTTP/1.1\r\nHost: globex.example.com\r\n{close}"),
        format!("GET /x HTTP/1.1\r\nHost: acme.example.com\r\nHost: globex.example.com\r\n{close}"),
    ] {
        let status = raw(&proxy, &head).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{head:?}: {status}");
    }
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn insane_request_ids_are_replaced_and_echoed() {
    let (b, proxy, _cfg) = setup("", "").await;
    let c = client();
    let r = send(
        c.get(proxy.url("/"))
            .header("host", "acme.example.com")
            .header("x-request-id", "bad id; drop table"),
    )
    .await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(b.seen()[0].header("x-request-id"), vec![id.clone()]);
    let r2 = get(&c, &proxy, "acme.example.com", "/").await;
    assert_ne!(
        r2.headers["x-request-id"].to_str().unwrap(),
        id,
        "each request gets its own id"
    );
}

#[tokio::test]
async fn trusted_proxies_extend_the_forwarded_chain() {
    let (b, proxy, _cfg) = setup("trusted_proxies = [\"127.0.0.0/8\"]", "").await;
    send(
        client()
            .get(proxy.url("/"))
            .header("host", "acme.example.com")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-tenant-id", "globex"),
    )
    .await;
    let seen = &b.seen()[0];
    assert_eq!(
        seen.header("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-proto"), vec!["https"]);
    assert_eq!(
        seen.header("x-tenant-id"),
        vec!["acme"],
        "the tenant id is never taken from a client"
    );
}

#[tokio::test]
async fn pool_can_rewrite_host() {
    let (b, proxy, _cfg) = setup("", "host_header = \"internal.acme\"").await;
    get(&client(), &proxy, "acme.example.com", "/").await;
    let seen = &b.seen()[0];
    assert_eq!(seen.header("host"), vec!["internal.acme"]);
    assert_eq!(seen.header("x-forwarded-host"), vec!["acme.example.com"]);
}
