//! Load for `load-tests/tls-bench.sh`: one request per TLS connection, CONNS connections at a
//! time, every handshake full (`new`) or resuming an earlier session (`resume`: tickets, else
//! the server's session cache). Prints connections made, how many resumed, how many answers
//! were 200. The server's certificate is not verified: this only measures. Loopback only.
//!
//!   cargo run --release --example tls_connections -- ADDR SNI new|resume CONNS SECONDS

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use porteiro::upstream::probe::AcceptAny;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, HandshakeKind};
use tokio_rustls::TlsConnector;

#[derive(Default)]
struct Counts {
    conns: AtomicU64,
    resumed: AtomicU64,
    ok: AtomicU64,
}

async fn one(connector: &TlsConnector, addr: SocketAddr, sni: &str, counts: &Counts) {
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let name = ServerName::try_from(sni.to_string()).expect("SNI is a name");
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return;
    };
    if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
        counts.resumed.fetch_add(1, Ordering::Relaxed);
    }
    let request = format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    if tls.write_all(request.as_bytes()).await.is_ok() {
        // Read to the end: TLS 1.3 tickets arrive after the handshake. A close without
        // close_notify is an error here, and still the end.
        let _ = tls.read_to_end(&mut answer).await;
    }
    counts.conns.fetch_add(1, Ordering::Relaxed);
    if answer.starts_with(b"HTTP/1.1 200") {
        counts.ok.fetch_add(1, Ordering::Relaxed);
    }
}

fn connector(resume: bool) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.resumption = match resume {
        true => Resumption::in_memory_sessions(16),
        false => Resumption::disabled(),
    };
    TlsConnector::from(Arc::new(config))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("ADDR");
    let sni = args.get(2).expect("SNI").clone();
    let resume = match args.get(3).map(String::as_str) {
        Some("new") => false,
        Some("resume") => true,
        _ => panic!("new or resume"),
    };
    let conns: usize = args.get(4).and_then(|n| n.parse().ok()).expect("CONNS");
    let secs: u64 = args.get(5).and_then(|n| n.parse().ok()).expect("SECONDS");

    let counts = Arc::new(Counts::default());
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        // A client each, with a session store of its own: as many browsers would be (rustls
        // keeps at most 8 tickets per server, fewer than the connections in flight here).
        let connector = connector(resume);
        let (sni, counts) = (sni.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                one(&connector, addr, &sni, &counts).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "connections {} resumed {} ok {}",
        counts.conns.load(Ordering::Relaxed),
        counts.resumed.load(Ordering::Relaxed),
        counts.ok.load(Ordering::Relaxed)
    );
}
