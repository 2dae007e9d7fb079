//! TLS connections before the first request: session resumption by ticket and by cache, and a
//! handshake held to the same rules as a request head (the connection caps, `header_timeout`).
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::tls::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{
    self, ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion,
};
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(10);
const NAME: &str = "t.test";

struct Site {
    proxy: Proxy,
    addr: SocketAddr,
    ca: Ca,
    _web: Backend,
    _cfg: ConfigDir,
}

/// porteiro with one tenant (`NAME`, with its certificate) on a TLS listener, listening and
/// with no connection open.
async fn tls_site(server_extra: &str) -> Site {
    let web = Backend::start("web").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = ConfigDir::new(&format!("listen_tls = [\"{addr}\"]\n{server_extra}"));
    let ca = Ca::new();
    write_cert(&cfg, "t", &ca.issue(&[NAME]));
    let tenant = one_pool_tenant("t", &[NAME], &[web.addr], "");
    cfg.tenant("t.toml", &format!("{}{tenant}", tls_key("t")));
    let proxy = Proxy::start(&cfg);
    eventually(WAIT, "the TLS listener accepts", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    // That probe connection closed without a handshake: counted, then gone.
    eventually(
        WAIT,
        "the probe is counted and no connection is open",
        || async {
            let text = proxy.scrape().await;
            series(
                &text,
                r#"porteiro_tls_handshake_failures_total{reason="handshake"}"#,
            ) == 1.0
                && series(&text, "porteiro_client_connections") == 0.0
        },
    )
    .await;
    Site {
        proxy,
        addr,
        ca,
        _web: web,
        _cfg: cfg,
    }
}

/// A client of its own (its own session store) that trusts `ca` and speaks only `version`.
fn client(ca: &Ca, version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// One request over a new connection; how its handshake went. The answer is read to its end:
/// TLS 1.3 tickets arrive after the handshake.
async fn fetch(config: &Arc<ClientConfig>, addr: SocketAddr) -> HandshakeKind {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(NAME).unwrap();
    let mut tls = tokio::time::timeout(WAIT, TlsConnector::from(config.clone()).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    let request = format!("GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    kind
}

/// A connection whose client offers only `protocol` by ALPN, which the server must choose.
async fn connect_offering(
    ca: &Ca,
    version: &'static SupportedProtocolVersion,
    protocol: &[u8],
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = (*client(ca, version)).clone();
    config.alpn_protocols = vec![protocol.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(NAME).unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(protocol));
    tls
}

fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `others` clients, each with a session of its own, fill the server's session cache.
async fn crowd(
    ca: &Ca,
    version: &'static SupportedProtocolVersion,
    addr: SocketAddr,
    others: usize,
) {
    for _ in 0..others {
        assert_eq!(fetch(&client(ca, version), addr).await, HandshakeKind::Full);
    }
}

#[tokio::test]
async fn tickets_resume_sessions_the_session_cache_has_no_room_for() {
    let site = tls_site("tls_session_cache = 4").await;
    let (proxy, addr, ca) = (&site.proxy, site.addr, &site.ca);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mine = client(ca, version);
        assert_eq!(fetch(&mine, addr).await, HandshakeKind::Full);
        crowd(ca, version, addr, 12).await;
        assert_eq!(
            fetch(&mine, addr).await,
            HandshakeKind::Resumed,
            "{version:?}: the ticket resumes the session\n{}",
            proxy.logs()
        );
    }
}

#[tokio::test]
async fn without_tickets_the_session_cache_resumes_while_it_has_room() {
    let site = tls_site("tls_session_tickets = false\ntls_session_cache = 4").await;
    let (addr, ca) = (site.addr, &site.ca);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mine = client(ca, version);
        assert_eq!(fetch(&mine, addr).await, HandshakeKind::Full);
        assert_eq!(
            fetch(&mine, addr).await,
            HandshakeKind::Resumed,
            "{version:?}"
        );
        crowd(ca, version, addr, 12).await;
        assert_eq!(
            fetch(&mine, addr).await,
            HandshakeKind::Full,
            "{version:?}: 12 sessions later, 4 entries no longer hold this one"
        );
    }
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_at_header_timeout() {
    let site = tls_site("header_timeout = \"1s\"").await;
    let (proxy, addr, ca) = (&site.proxy, site.addr, &site.ca);
    // Nothing at all, then the first 5 bytes of a ClientHello record and no more.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    for conn in [&mut silent, &mut partial] {
        let (answer, closed) = read_until_closed(conn, Duration::from_secs(5)).await;
        assert!(closed, "a stalled handshake holds its connection");
        assert!(answer.is_empty(), "{answer}");
    }
    let timeouts = r#"porteiro_tls_handshake_failures_total{reason="handshake_timeout"}"#;
    assert_eq!(series(&proxy.scrape().await, timeouts), 2.0);
    assert_eq!(
        fetch(&client(ca, &rustls::version::TLS13), addr).await,
        HandshakeKind::Full
    );
}

#[tokio::test]
async fn connections_still_in_their_handshake_count_against_the_caps() {
    let site = tls_site("max_connections_per_ip = 2").await;
    let (proxy, addr, ca) = (&site.proxy, site.addr, &site.ca);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    eventually(WAIT, "both connections hold a slot", || async {
        series(&proxy.scrape().await, "porteiro_client_connections") == 2.0
    })
    .await;
    // Over the cap: closed before any handshake (an answer would cost one).
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed && answer.is_empty(), "{answer}");
    let refused = r#"porteiro_client_errors_total{reason="client_connections"}"#;
    assert_eq!(series(&proxy.scrape().await, refused), 1.0);

    drop(held);
    let config = client(ca, &rustls::version::TLS13);
    eventually(WAIT, "freed slots take a client again", || async {
        series(&proxy.scrape().await, "porteiro_client_connections") == 0.0
    })
    .await;
    assert_eq!(fetch(&config, addr).await, HandshakeKind::Full);
}

#[tokio::test]
async fn an_http2_client_that_never_sends_its_preface_is_cut_off_at_header_timeout() {
    let site = tls_site("header_timeout = \"1s\"").await;
    let (proxy, addr, ca) = (&site.proxy, site.addr, &site.ca);
    let mut silent = connect_offering(ca, &rustls::version::TLS13, b"h2", addr).await;
    // Half a preface, then nothing: a client cannot hold the connection that way either.
    let mut half = connect_offering(ca, &rustls::version::TLS13, b"h2", addr).await;
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    half.flush().await.unwrap();
    // The preface never comes whole: porteiro must not wait for it beyond header_timeout.
    for tls in [&mut silent, &mut half] {
        let mut got = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
        assert!(ended.is_ok(), "still open 5 s after the handshake");
    }
    eventually(WAIT, "the connection is closed", || async {
        series(&proxy.scrape().await, "porteiro_client_connections") == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_name_without_certificate_counts_once_and_client_noise_stays_out_of_the_log() {
    let site = tls_site("").await;
    let (proxy, addr, ca) = (&site.proxy, site.addr, &site.ca);
    let failures = |text: &str, reason: &str| {
        series(
            text,
            &format!("porteiro_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    let before = proxy.scrape().await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let other = ServerName::try_from("other.test").unwrap();
    let refused = TlsConnector::from(client(ca, &rustls::version::TLS13))
        .connect(other, tcp)
        .await;
    assert!(refused.is_err(), "no certificate for other.test");
    // A server name no client library would send; rustls logs such names at WARN.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&client_hello(b"a_b!.test")).await.unwrap();
    let (_, closed) = read_until_closed(&mut raw, Duration::from_secs(5)).await;
    assert!(closed);

    eventually(WAIT, "the refusal is counted", || async {
        let now = proxy.scrape().await;
        failures(&now, "no_certificate") - failures(&before, "no_certificate") == 1.0
    })
    .await;
    // The bad name, and the refusal above not again as another reason.
    let now = proxy.scrape().await;
    assert_eq!(
        failures(&now, "handshake") - failures(&before, "handshake"),
        1.0
    );
    let logs = proxy.logs();
    assert!(!logs.contains("a_b!.test"), "{logs}");
    assert!(!logs.contains("WARN rustls"), "{logs}");
}

#[tokio::test]
async fn a_client_offering_only_http_1_0_by_alpn_is_served() {
    let site = tls_site("").await;
    let (addr, ca) = (site.addr, &site.ca);
    let mut tls = connect_offering(ca, &rustls::version::TLS12, b"http/1.0", addr).await;
    let request = format!("GET / HTTP/1.0\r\nHost: {NAME}\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
}

/// A TLS 1.2 ClientHello naming `name`, byte by byte (no client library sends a bad name).
fn client_hello(name: &[u8]) -> Vec<u8> {
    let u16be = |n: usize| (n as u16).to_be_bytes();
    let mut sni = vec![0u8]; // host_name
    sni.extend(u16be(name.len()));
    sni.extend(name);
    let mut ext = vec![0, 0]; // server_name
    ext.extend(u16be(sni.len() + 2));
    ext.extend(u16be(sni.len()));
    ext.extend(&sni);
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0, 4, 0xc0, 0x2b, 0xc0, 0x2f]); // two ECDHE suites
    body.extend([1, 0]); // no compression
    body.extend(u16be(ext.len()));
    body.extend(&ext);
    let mut hs = vec![1, 0];
    hs.extend(u16be(body.len()));
    hs.extend(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend(u16be(hs.len()));
    record.extend(&hs);
    record
}
