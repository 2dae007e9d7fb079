//! porteiro's own connections to its listeners: at start it knocks to learn they accept
//! before it tells the service manager it is ready. A knock is not a client: it must take no
//! connection slot (it could push a real client over `max_connections` for a moment) and
//! count in no metric (under a full listener it would show as a refused client). So the
//! knocking side binds its socket first and registers that exact address; the accepting
//! side recognises it by its peer address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;

/// How long after knocking ends a knock not yet seen is still waited for. One the listener
/// never sees (another process accepted it, during an upgrade) ends the wait then.
const LINGER: Duration = Duration::from_secs(5);

/// The addresses porteiro knocks from, until each knock has been seen.
#[derive(Debug)]
pub struct SelfProbes {
    /// False once every knock has been seen: every later connection skips the lock.
    active: AtomicBool,
    state: Mutex<Knocks>,
}

#[derive(Debug, Default)]
struct Knocks {
    /// Knocks connected but not yet seen by the listener.
    from: Vec<SocketAddr>,
    /// When knocking ended.
    done_at: Option<Instant>,
}

impl Default for SelfProbes {
    fn default() -> Self {
        Self {
            active: AtomicBool::new(true),
            state: Mutex::new(Knocks::default()),
        }
    }
}

impl SelfProbes {
    /// Whether an accepted connection with this peer address is one of porteiro's knocks.
    /// The connect returns before the listener accepts, so a knock is forgotten here, when
    /// it is seen, not when knocking ends.
    pub fn is_probe(&self, peer: SocketAddr) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let mut knocks = self.lock();
        let seen = knocks.from.iter().position(|a| *a == peer);
        if let Some(i) = seen {
            knocks.from.swap_remove(i);
        }
        if knocks
            .done_at
            .is_some_and(|t| knocks.from.is_empty() || t.elapsed() > LINGER)
        {
            knocks.from.clear();
            self.active.store(false, Ordering::Release);
        }
        seen.is_some()
    }

    /// Connects to `listener` from a registered address; true if it accepted. The connection
    /// is closed at once.
    pub async fn knock(&self, listener: SocketAddr) -> bool {
        let Ok((socket, from)) = bound_socket(listener) else {
            return false;
        };
        self.lock().from.push(from);
        let accepted = socket.connect(target(listener)).await.is_ok();
        if !accepted {
            self.lock().from.retain(|a| *a != from);
        }
        accepted
    }

    /// Knocking is over: once the knocks made are seen, later connections are all clients.
    pub fn done(&self) {
        let mut knocks = self.lock();
        knocks.done_at = Some(Instant::now());
        if knocks.from.is_empty() {
            self.active.store(false, Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Knocks> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where to connect for `listener`: itself, or loopback for a wildcard address.
fn target(listener: SocketAddr) -> SocketAddr {
    let ip = match listener.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listener.port())
}

/// A socket bound to the address the listener will see as the peer: the target's own
/// address (a local one), on a port the kernel picks.
fn bound_socket(listener: SocketAddr) -> std::io::Result<(TcpSocket, SocketAddr)> {
    let to = target(listener);
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(to.ip(), 0))?;
    let from = socket.local_addr()?;
    Ok((socket, from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_knock_is_known_by_its_address_even_when_seen_after_knocking_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probes = SelfProbes::default();
        assert!(probes.knock(addr).await);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The notifier is done before the listener gets to the knock.
        probes.done();
        assert!(probes.active.load(Ordering::Acquire));

        let (_, knock) = listener.accept().await.unwrap();
        let (_, other) = listener.accept().await.unwrap();
        assert_eq!(other, client.local_addr().unwrap());
        assert!(!probes.is_probe(other), "a client is not a knock");
        assert!(probes.is_probe(knock));
        assert!(
            !probes.active.load(Ordering::Acquire),
            "every knock seen: later connections skip the lock"
        );
        assert!(!probes.is_probe(knock));
    }

    #[test]
    fn a_knock_never_seen_is_waited_for_a_while_only() {
        let probes = SelfProbes::default();
        let lost: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        probes.lock().from.push(lost);
        probes.done();
        assert!(!probes.is_probe(client));
        assert!(probes.active.load(Ordering::Acquire), "still waiting");
        probes.lock().done_at = Some(Instant::now() - LINGER - Duration::from_secs(1));
        assert!(!probes.is_probe(client));
        assert!(!probes.active.load(Ordering::Acquire), "waited long enough");
    }

    #[tokio::test]
    async fn a_refused_knock_is_forgotten() {
        // Bound but not listening: connecting is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let probes = SelfProbes::default();
        assert!(!probes.knock(addr).await);
        assert!(probes.lock().from.is_empty());
    }

    #[test]
    fn wildcard_listeners_are_knocked_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let v6: SocketAddr = "[::]:8080".parse().unwrap();
        assert_eq!(target(v4), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target(v6), "[::1]:8080".parse().unwrap());
        let own: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(target(own), own);
    }
}
