//! Cache faults: what a backend cutting its body short, or a client leaving mid-miss, leaves
//! in the cache (nothing truncated).
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// An origin on a raw socket: answers every request with `head`, then `parts` of the body
/// with a pause between them, then closes. Counts connections.
async fn raw_origin(head: String, parts: Vec<Vec<u8>>) -> (SocketAddr, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(Mutex::new(0usize));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            *seen.lock().unwrap() += 1;
            let (head, parts) = (head.clone(), parts.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(head.as_bytes()).await;
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    if conn.write_all(part).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

fn raw_world(addr: SocketAddr) -> (ConfigDir, Proxy) {
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "a.toml",
        &format!(
            "id = \"a\"\nhosts = [\"a.test\"]\n[pools.web]\nbackends = [\"{addr}\"]\n\
             passive = {{ failures = 100, cooldown = \"1s\" }}\n[cache]\n"
        ),
    );
    let proxy = Proxy::start(&cfg);
    (cfg, proxy)
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_never_stored() {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\nConnection: close\r\n\r\n";
    let (addr, connections) = raw_origin(head.into(), vec![b"0123456789".to_vec()]).await;
    let (_cfg, proxy) = raw_world(addr);
    for _ in 0..2 {
        let answer = proxy
            .raw("GET /short HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await;
        assert!(
            !answer.contains("hit"),
            "a truncated body was served from the cache: {answer}"
        );
    }
    assert_eq!(
        *connections.lock().unwrap(),
        2,
        "each request had to reach the origin"
    );
}

#[tokio::test]
async fn a_client_leaving_mid_miss_leaves_no_truncated_entry() {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 20000\r\nCache-Control: max-age=60\r\nConnection: close\r\n\r\n";
    let parts = vec![vec![b'a'; 10000], vec![b'b'; 10000]];
    let (addr, _) = raw_origin(head.into(), parts).await;
    let (_cfg, proxy) = raw_world(addr);
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = proxy.connect().await;
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).await;
        // Gone after the first bytes, before the origin's second half.
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..2 {
        let r = get(&client(), &proxy, "a.test", "/big").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 20000, "{:?}", r.headers);
    }
}
