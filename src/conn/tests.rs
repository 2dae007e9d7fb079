//! `Frontend` on real sockets: porteiro's own readiness knock is not a client.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;

use super::probe::SelfProbes;
use super::{Frontend, Listeners};
use crate::metrics;
use crate::snapshot::Snapshot;

/// Never reached: these tests end before a request is read.
struct NoApp;

#[async_trait]
impl HttpServerApp for NoApp {
    async fn process_new_http(
        self: &Arc<Self>,
        _session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        None
    }
}

/// A `Frontend` for a listener whose cap (`max_connections = 1`) is already reached.
async fn full_listener() -> (TcpListener, Arc<Frontend<NoApp>>, Arc<SelfProbes>) {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("porteiro.toml");
    std::fs::create_dir(dir.path().join("t")).unwrap();
    let text = "[server]\ntenants_dir = \"t\"\nmax_connections = 1\n";
    std::fs::write(&main, text).unwrap();
    let config = crate::config::load(&main).unwrap();
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&config, 1, None)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probes = Arc::new(SelfProbes::default());
    let listeners = Listeners {
        plain: vec![addr],
        tls: Vec::new(),
        acceptor: None,
        h2c: false,
    };
    let front = Arc::new(Frontend::new(NoApp, snapshot, listeners, probes.clone()));
    let held = front.counter.acquire(Some(addr), None, 1, 0);
    std::mem::forget(held.expect("the one slot"));
    (listener, front, probes)
}

/// The next accepted connection as pingora hands it over: with its socket digest.
async fn accept(listener: &TcpListener) -> Stream {
    let (tcp, _) = listener.accept().await.unwrap();
    let fd = tcp.as_raw_fd();
    let mut stream = L4Stream::from(tcp);
    stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
    Box::new(stream)
}

fn listener_full_count(front: &Frontend<NoApp>) -> f64 {
    let text = metrics::get().render(&front.snapshot.load());
    let series = "porteiro_client_errors_total{reason=\"listener_full\"}";
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_knock_on_a_full_listener_is_not_a_refused_client() {
    let (listener, front, probes) = full_listener().await;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let before = listener_full_count(&front);

    assert!(probes.knock(listener.local_addr().unwrap()).await);
    // As at start: knocking ends when the connect returns, before the listener accepts.
    probes.done();
    let knock = accept(&listener).await;
    assert!(front.process_new(knock, &shutdown).await.is_none());
    assert_eq!(
        listener_full_count(&front),
        before,
        "the knock counted as refused"
    );

    // The same listener still refuses a client: the knock was let through by what it is.
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let client = accept(&listener).await;
    assert!(front.process_new(client, &shutdown).await.is_none());
    assert_eq!(listener_full_count(&front), before + 1.0);
}
