//! porteiro's own log as operators' tools read it: no colour codes in files, JSON lines on
//! request, one line per failed request, and no line per failed client handshake.
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn json_lines_one_line_per_failed_request_and_no_colour_codes() {
    let cfg = ConfigDir::new("log_format = \"json\"");
    cfg.tenant(
        "t.toml",
        &one_pool_tenant("t", &["t.test"], &[dead_addr(), dead_addr()], "retries = 1"),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(get(&c, &proxy, "t.test", "/").await.status, 502);
    eventually(WAIT, "the failed request is logged", || async {
        proxy.logs().contains("request failed")
    })
    .await;
    let logs = proxy.logs();
    assert!(!logs.contains('\u{1b}'), "colour codes in a file:\n{logs}");
    assert!(
        !logs.contains("Fail to proxy"),
        "pingora's duplicate line:\n{logs}"
    );
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "request failed")
        .collect();
    assert_eq!(failed.len(), 1, "{logs}");
    assert_eq!(failed[0]["tenant"], "t");
    assert_eq!(failed[0]["status"], 502);
    assert_eq!(failed[0]["attempts"], 2);
    assert_eq!(failed[0]["level"], "WARN");
}

#[tokio::test]
async fn failed_client_handshakes_are_counted_not_logged() {
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = ConfigDir::new(&format!("listen_tls = [\"{tls}\"]"));
    cfg.tenant(
        "t.toml",
        &one_pool_tenant("t", &["t.test"], &[dead_addr()], ""),
    );
    let proxy = Proxy::start(&cfg);
    eventually(WAIT, "the TLS listener accepts", || async {
        tokio::net::TcpStream::connect(tls).await.is_ok()
    })
    .await;
    // That probe was a failed handshake too; count from here.
    let failures = |text: String| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(r#"porteiro_tls_handshake_failures_total{reason="handshake"} "#)
            })
            .map_or(0, |v| v.parse().unwrap())
    };
    eventually(WAIT, "the probe's failed handshake is counted", || async {
        failures(proxy.scrape().await) >= 1
    })
    .await;
    let before = failures(proxy.scrape().await);
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(tls).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
            .await
            .unwrap();
        let (_, closed) = read_until_closed(&mut s, WAIT).await;
        assert!(closed, "porteiro closes a connection that is not TLS");
    }
    eventually(WAIT, "the failures are counted", || async {
        failures(proxy.scrape().await) >= before + 5
    })
    .await;
    assert_eq!(failures(proxy.scrape().await), before + 5);
    let logs = proxy.logs();
    assert!(!logs.contains("handshake error"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "colour codes in a file:\n{logs}");
}
