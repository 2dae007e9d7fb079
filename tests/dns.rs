//! Backends named by DNS, against a DNS server of the test's own whose records change while
//! porteiro runs: scale up, scale down, a failing server.
mod support;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(10);

/// A DNS server answering A queries for every name with `records` (TTL 1 s), no AAAA
/// records, or SERVFAIL while `records` is `None`.
struct Dns {
    addr: SocketAddr,
    records: Arc<Mutex<Option<Vec<Ipv4Addr>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    async fn start(records: &[Ipv4Addr]) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records = Arc::new(Mutex::new(Some(records.to_vec())));
        let shared = records.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let current = shared.lock().unwrap().clone();
                if let Some(answer) = respond(&buf[..n], current.as_deref()) {
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        Dns {
            addr,
            records,
            task,
        }
    }

    fn set(&self, records: Option<&[Ipv4Addr]>) {
        *self.records.lock().unwrap() = records.map(<[_]>::to_vec);
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One DNS answer to `query` (RFC 1035 wire format).
fn respond(query: &[u8], records: Option<&[Ipv4Addr]>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + query[end] as usize;
    }
    let qtype = u16::from_be_bytes([*query.get(end + 1)?, *query.get(end + 2)?]);
    let question = &query[12..end + 5];
    let answers: &[Ipv4Addr] = match (records, qtype) {
        (Some(r), 1) => r,
        _ => &[],
    };
    let rcode = if records.is_some() { 0 } else { 2 };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[0x81, 0x80 | rcode]);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

async fn backends_seen(c: &reqwest::Client, proxy: &Proxy, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let r = get(c, proxy, "app.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.backend.unwrap_or_default());
    }
    seen
}

// Multi-threaded: the DNS server must answer while the test waits for porteiro to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_backend_follows_its_records_and_survives_a_failing_server() {
    let (two, three) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let a = Backend::start_on("a", SocketAddr::from((two, 0))).await;
    let port = a.addr.port();
    let _b = Backend::start_on("b", SocketAddr::from((three, port))).await;
    let dns = Dns::start(&[two]).await;
    let cfg = ConfigDir::new(&format!("resolver = \"{}\"", dns.addr));
    cfg.tenant(
        "app.toml",
        &one_pool_tenant(
            "app",
            &["app.test"],
            &[],
            &format!("backends = [\"app.internal:{port}\"]\ndns_refresh = \"200ms\""),
        )
        .replace("backends = []\n", ""),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(
        backends_seen(&c, &proxy, 4).await,
        HashSet::from(["a".into()])
    );

    // Scale up: the new address joins.
    dns.set(Some(&[two, three]));
    let t = Instant::now();
    eventually(WAIT, "b joins", || async {
        backends_seen(&c, &proxy, 4).await.len() == 2
    })
    .await;
    eprintln!("scale-up seen after {:?}", t.elapsed());

    // Scale down: the old address leaves.
    dns.set(Some(&[three]));
    let t = Instant::now();
    eventually(WAIT, "a leaves", || async {
        backends_seen(&c, &proxy, 6).await == HashSet::from(["b".into()])
    })
    .await;
    eprintln!("scale-down seen after {:?}", t.elapsed());

    // The server fails: the last good addresses keep serving, and it says so once.
    dns.set(None);
    // Two failed lookups, one log line: said once per change of state, not per failure.
    eventually(WAIT, "two failures are counted", || async {
        proxy
            .scrape()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"porteiro_dns_lookup_failures_total{name="app.internal"} "#)
            })
            .is_some_and(|v| v.parse::<f64>().unwrap() >= 2.0)
    })
    .await;
    assert_eq!(
        backends_seen(&c, &proxy, 4).await,
        HashSet::from(["b".into()])
    );
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("backend name lookup failed").count(),
        1,
        "{logs}"
    );
    dns.set(Some(&[two]));
    eventually(WAIT, "a is back", || async {
        backends_seen(&c, &proxy, 4).await == HashSet::from(["a".into()])
    })
    .await;
    assert!(proxy.logs().contains("backend name resolves again"));
}

/// A name that does not resolve at start-up is tried again within seconds, not after its
/// (here hour-long) refresh interval: a pool of names only has no backend until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_did_not_resolve_at_start_is_retried_soon() {
    let two = Ipv4Addr::new(127, 0, 0, 2);
    let a = Backend::start_on("a", SocketAddr::from((two, 0))).await;
    let port = a.addr.port();
    let dns = Dns::start(&[]).await;
    dns.set(None);
    let cfg = ConfigDir::new(&format!("resolver = \"{}\"", dns.addr));
    cfg.tenant(
        "app.toml",
        &format!(
            "id = \"app\"\nhosts = [\"app.test\"]\n[pools.web]\nbackends = [\"app.internal:{port}\"]\n\
             dns_refresh = \"1h\"\n"
        ),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    assert_eq!(get(&c, &proxy, "app.test", "/").await.status, 503);
    dns.set(Some(&[two]));
    eventually(WAIT, "the name resolves and a serves", || async {
        get(&c, &proxy, "app.test", "/").await.backend.as_deref() == Some("a")
    })
    .await;
}

#[test]
fn check_refuses_a_malformed_name() {
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "app.toml",
        "id = \"app\"\nhosts = [\"app.test\"]\n[pools.web]\nbackends = [\"app..internal:80\"]\n",
    );
    let (code, _, err) = check(&cfg.main_file());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("backends[0]"), "{err}");

    // Well formed but not resolvable now (no DNS server there): a warning, not a failure.
    let cfg = ConfigDir::new(&format!("resolver = \"{}\"", dead_addr()));
    cfg.tenant(
        "app.toml",
        "id = \"app\"\nhosts = [\"app.test\"]\n[pools.web]\nbackends = [\"app.internal:80\"]\n",
    );
    let (code, _, err) = check(&cfg.main_file());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: backend name `app.internal` does not resolve now"),
        "{err}"
    );
}

/// `check` counts the addresses a name resolves to as the backends `run` would serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_counts_the_backends_a_name_resolves_to() {
    let dns = Dns::start(&[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]).await;
    let cfg = ConfigDir::new(&format!("resolver = \"{}\"", dns.addr));
    cfg.tenant(
        "app.toml",
        "id = \"app\"\nhosts = [\"app.test\"]\n[pools.web]\nbackends = [\"app.internal:80\"]\n",
    );
    let main = cfg.main_file();
    let (code, out, err) = tokio::task::spawn_blocking(move || check(&main))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 pools, 2 backends"), "{out}");
}
