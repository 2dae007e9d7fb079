//! Client connections before pingora sees a request: caps on open connections, and the
//! HTTP/1.x request head read with a deadline for the whole head (pingora's own timeout is
//! per read, so a client sending a byte every few seconds never trips it) and an idle timeout
//! between keep-alive requests. A complete head is handed to pingora as already-read bytes,
//! so it parses it without another read. HTTP/2 connections go to pingora directly.

pub mod caps;
pub mod head;
mod preface;
pub mod probe;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::model::ClientLimits;
use crate::metrics;
use crate::snapshot::SharedSnapshot;
use caps::{ConnCounter, Over};
use head::{HeadLimits, TooLarge};
use preface::PrefaceDeadline;
use probe::SelfProbes;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first read of a head (most fit); it grows as needed, up to `max_header_bytes`.
/// Small, because an idle keep-alive connection holds it while it waits.
const HEAD_BUF: usize = 1024;
/// How much the head buffer grows by.
const HEAD_GROWTH: usize = 4096;
/// Once shutdown begins (graceful upgrade, restart), how long an idle kept-alive connection
/// still waits for a request: one already on its way is answered, marked `Connection: close`,
/// instead of meeting a closed socket (a reset, or an answer that never comes, to the client).
/// The grace period's end stops every connection in any case.
const DRAIN: Duration = Duration::from_millis(500);

/// The listeners a `Frontend` serves. pingora accepts on all of them as plain TCP; on the
/// TLS ones `Frontend` runs the handshake itself, once the connection has its slot.
pub struct Listeners {
    pub plain: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// Needed when `tls` is not empty.
    pub acceptor: Option<Acceptor>,
    /// Accept cleartext HTTP/2 on the plain listeners.
    pub h2c: bool,
}

/// Wraps pingora's HTTP application (`A`) with porteiro's connection rules.
pub struct Frontend<A> {
    app: Arc<A>,
    snapshot: Arc<SharedSnapshot>,
    counter: ConnCounter,
    listeners: Listeners,
    probes: Arc<SelfProbes>,
}

impl<A> Frontend<A> {
    pub fn new(
        app: A,
        snapshot: Arc<SharedSnapshot>,
        listeners: Listeners,
        probes: Arc<SelfProbes>,
    ) -> Self {
        let all: Vec<SocketAddr> = listeners
            .plain
            .iter()
            .chain(&listeners.tls)
            .copied()
            .collect();
        Self {
            app: Arc::new(app),
            snapshot,
            counter: ConnCounter::new(&all),
            listeners,
            probes,
        }
    }

    /// Whether a connection accepted on `local` is to be a TLS one.
    fn is_tls(&self, local: Option<SocketAddr>) -> bool {
        local.is_some_and(|local| caps::find_listener(&self.listeners.tls, local).is_some())
    }
}

/// Why a connection ends before its request reaches pingora.
enum Ended {
    /// The client left, went idle, or the server is shutting down: nothing to answer.
    Quietly,
    /// Closed part-way through a head (counted, answered with nothing: nobody is listening).
    MidHead,
    /// Answer with this status, then close.
    Refuse(u16, &'static str, &'static str),
}

#[async_trait]
impl<A> ServerApp for Frontend<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.is_own_probe(&stream) {
            return None;
        }
        let (limits, exempt) = self.connection_rules(&stream);
        let socket = stream.get_socket_digest();
        let local = socket
            .as_ref()
            .and_then(|d| d.local_addr()?.as_inet().copied());
        let tls = self.is_tls(local);
        let client = peer_ip(&stream)
            .filter(|_| !exempt)
            .map(|ip| crate::limits::address_block(ip, limits.client_ipv6_prefix));
        let m = metrics::get();
        let _slot = match self.counter.acquire(
            local,
            client,
            limits.max_connections,
            limits.max_connections_per_ip,
        ) {
            Ok(slot) => slot,
            Err(over) => {
                let (status, reason, why) = match over {
                    Over::Listener => (503, "listener_full", "too many open connections"),
                    Over::Client => (
                        429,
                        "client_connections",
                        "too many open connections from your address",
                    ),
                };
                m.client_error(reason);
                tracing::debug!(client = ?peer_ip(&stream), reason, "connection refused");
                // Over TLS the answer would cost a handshake: the connection just closes.
                if !tls {
                    answer_and_close(&mut stream, status, why, &limits).await;
                }
                return None;
            }
        };
        let _open = metrics::OpenConnection::new();
        if tls {
            stream = self.tls_handshake(stream, &limits).await?;
        }
        if self.is_h2(&mut stream, &limits).await? {
            // pingora's HTTP/2 server: its idle timeout is set from keepalive_timeout. (h2c's
            // preface was already seen, within header_timeout, to know it is HTTP/2.)
            if tls {
                stream = Box::new(PrefaceDeadline::new(stream, limits.header_timeout));
            }
            return self.app.process_new(stream, shutdown).await;
        }
        self.serve_h1(stream, shutdown, limits).await;
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<A> Frontend<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// The limits of the configuration serving now, and whether the peer is a trusted proxy
    /// (whose connections carry many clients, so the per-address cap does not apply).
    fn connection_rules(&self, stream: &Stream) -> (ClientLimits, bool) {
        let snap = self.snapshot.load();
        let exempt = peer_ip(stream).is_some_and(|ip| snap.is_trusted_proxy(ip));
        (snap.clients, exempt)
    }

    /// porteiro's own knock at start (see `probe`): no slot, no metric, nothing to answer.
    fn is_own_probe(&self, stream: &Stream) -> bool {
        let peer = stream.get_socket_digest();
        let peer = peer
            .as_ref()
            .and_then(|d| d.peer_addr()?.as_inet().copied());
        peer.is_some_and(|p| self.probes.is_probe(p))
    }

    /// The TLS handshake, bounded by `header_timeout`: a client stalling it holds its slot no
    /// longer than one stalling its request head. `None`: it failed (counted).
    async fn tls_handshake(&self, stream: Stream, limits: &ClientLimits) -> Option<Stream> {
        let client = peer_ip(&stream);
        let acceptor = self.listeners.acceptor.as_ref()?;
        // pingora hands over every accepted connection as its plain TCP stream.
        let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
            tracing::error!("a connection on a TLS listener is not plain TCP; closed");
            return None;
        };
        let reason = match timeout(limits.header_timeout, crate::tls::handshake(acceptor, *tcp))
            .await
        {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(target: "porteiro::handshake", ?client, error = %e, "TLS handshake failed");
                crate::tls::failure_reason(&e)
            }
            Err(_) => "handshake_timeout",
        };
        metrics::get().tls_refused(reason);
        None
    }

    /// Whether the connection speaks HTTP/2: by ALPN on TLS, by its preface with h2c.
    /// `None` when the client sent nothing in time.
    async fn is_h2(&self, stream: &mut Stream, limits: &ClientLimits) -> Option<bool> {
        if stream.get_ssl_digest().is_some() {
            return Some(stream.selected_alpn_proto() == Some(ALPN::H2));
        }
        if !self.listeners.h2c {
            return Some(false);
        }
        let mut buf = [0u8; H2_PREFACE.len()];
        match timeout(limits.header_timeout, stream.try_peek(&mut buf)).await {
            Ok(Ok(peeked)) => Some(peeked && buf == H2_PREFACE),
            Ok(Err(_)) => None,
            Err(_) => {
                metrics::get().client_error("header_timeout");
                None
            }
        }
    }

    /// HTTP/1.x: read each request's head under porteiro's deadlines, then let pingora serve
    /// the request; repeat while the connection is kept alive.
    async fn serve_h1(&self, mut stream: Stream, shutdown: &ShutdownWatch, limits: ClientLimits) {
        let keepalive = limits.keepalive_timeout;
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let idle = (!first).then_some(keepalive);
            let head = match read_head(&mut stream, &limits, idle, shutdown).await {
                Ok(head) => head,
                Err(ended) => {
                    end(&mut stream, ended, &limits).await;
                    return;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(keepalive.as_secs()));
                    let limit = self
                        .app
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit);
                    session.set_keepalive_reuses_remaining(limit);
                }
            }
            session.set_pipelined_prefix(head);
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            (stream, settings) = reused.consume();
            first = false;
        }
    }
}

/// Reads one request head. `idle`: on a kept-alive connection, how long to wait for its
/// first byte; the head deadline starts with that byte (on a new connection, at once).
async fn read_head(
    stream: &mut Stream,
    limits: &ClientLimits,
    idle: Option<Duration>,
    shutdown: &ShutdownWatch,
) -> Result<BytesMut, Ended> {
    let head_limits = HeadLimits {
        max_request_line: limits.max_request_line as usize,
        max_header_bytes: limits.max_header_bytes as usize,
    };
    let mut buf = BytesMut::with_capacity(HEAD_BUF);
    if let Some(idle) = idle {
        let read = tokio::select! {
            biased;
            r = timeout(idle, stream.read_buf(&mut buf)) => r,
            _ = drained(shutdown.clone()) => return Err(Ended::Quietly),
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(Ended::Quietly),
        }
    }
    let deadline = Instant::now() + limits.header_timeout;
    loop {
        match head::scan(&buf, &head_limits) {
            Ok(Some(_)) => return Ok(buf),
            Ok(None) => {}
            Err(TooLarge::RequestLine) => {
                return Err(Ended::Refuse(
                    414,
                    "request_line_too_long",
                    "the request line is too long",
                ))
            }
            Err(TooLarge::Head) => {
                return Err(Ended::Refuse(
                    431,
                    "head_too_large",
                    "the request headers are too large",
                ))
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(HEAD_GROWTH);
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) if buf.is_empty() => return Err(Ended::Quietly),
            Ok(_) => return Err(Ended::MidHead),
            // A connection that never sent a byte is closed without a word, as nginx does.
            Err(_) if buf.is_empty() => {
                metrics::get().client_error("header_timeout");
                return Err(Ended::Quietly);
            }
            Err(_) => {
                return Err(Ended::Refuse(
                    408,
                    "header_timeout",
                    "the request headers did not arrive in time",
                ))
            }
        }
    }
}

/// Ends `DRAIN` after shutdown began (at once if the watch is gone).
async fn drained(mut shutdown: ShutdownWatch) {
    if shutdown.wait_for(|&stopping| stopping).await.is_ok() {
        tokio::time::sleep(DRAIN).await;
    }
}

async fn end(stream: &mut Stream, ended: Ended, limits: &ClientLimits) {
    match ended {
        Ended::Quietly => {}
        Ended::MidHead => metrics::get().client_error("closed_mid_head"),
        Ended::Refuse(status, reason, why) => {
            metrics::get().client_error(reason);
            tracing::debug!(client = ?peer_ip(stream), status, reason, "request head refused");
            answer_and_close(stream, status, why, limits).await;
        }
    }
}

/// A minimal HTTP/1.1 answer written before any request was parsed, then the connection
/// closes. Bounded by `send_timeout`: a client that does not read gets nothing more.
async fn answer_and_close(stream: &mut Stream, status: u16, why: &str, limits: &ClientLimits) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = format!("{status} {reason}: {why}\n");
    let retry = if status == 503 || status == 429 {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(limits.send_timeout, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    Some(digest.peer_addr()?.as_inet()?.ip().to_canonical())
}
