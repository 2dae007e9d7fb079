//! Test harness: real HTTP backends and the real porteiro binary, all on loopback ports.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub mod redis;
pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_porteiro");

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers.get(name).cloned().unwrap_or_default()
    }
}

/// A real HTTP/1.1 + h2c server on 127.0.0.1:0 that answers with its own name.
/// `/healthz` follows `healthy`; `/hold` waits until `release()`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A backend on `addr` (another loopback address, a port of choice).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let health_hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let state = (
            name.to_string(),
            healthy.clone(),
            hits.clone(),
            health_hits.clone(),
            seen.clone(),
            release.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(req, state).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            healthy,
            hits,
            health_hits,
            seen,
            release,
            task,
        }
    }

    /// Requests other than health checks.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.health_hits.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Lets every request waiting in `/hold` finish.
    pub fn release(&self) {
        self.release.notify_waiters();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type State = (
    String,
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<Seen>>>,
    Arc<Notify>,
);

async fn answer(
    req: Request<Incoming>,
    (name, healthy, hits, health_hits, seen, release): State,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        health_hits.fetch_add(1, Ordering::SeqCst);
        let status = if healthy.load(Ordering::SeqCst) {
            200
        } else {
            500
        };
        return Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health\n")))
            .unwrap();
    }
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (n, v) in req.headers() {
        headers
            .entry(n.as_str().to_string())
            .or_default()
            .push(v.to_str().unwrap_or("?").to_string());
    }
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        headers,
    });
    hits.fetch_add(1, Ordering::SeqCst);
    if path.starts_with("/hold") {
        // Bounded: a test that forgets to release still ends.
        let _ = tokio::time::timeout(Duration::from_secs(10), release.notified()).await;
    }
    if path.starts_with("/upload") {
        // An upload handler answers once it has the whole body.
        let body = http_body_util::BodyExt::collect(req.into_body()).await;
        let len = body.map_or(0, |b| b.to_bytes().len());
        return Response::builder()
            .header("x-backend", name.as_str())
            .body(Full::new(Bytes::from(format!("{name} got {len} bytes\n"))))
            .unwrap();
    }
    Response::builder()
        .header("x-backend", name.as_str())
        .body(Full::new(Bytes::from(format!("{name} {path}\n"))))
        .unwrap()
}

/// A loopback port nobody listens on right now (for the proxy's own listener, and for
/// "dead backend" addresses that refuse connections).
///
/// Ports come from below the kernel's ephemeral range, so no socket the kernel numbers itself
/// (a test backend bound to port 0, an outgoing connection) can take one between the moment
/// it is chosen here and the moment porteiro binds it. Each test process starts at its own
/// offset and hands each port out once.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral_low.clamp(10_001, 65_535));
    let span = high - low;
    let offset = std::process::id() as usize * 7919;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + (offset + n) % span) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A configuration directory: main file plus `tenants.d/`.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_port: u16,
}

impl ConfigDir {
    /// `server_extra` is appended to the `[server]` table.
    pub fn new(server_extra: &str) -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        std::fs::create_dir(dir.path().join("tenants.d")).unwrap();
        let cfg = ConfigDir {
            dir,
            port,
            admin_port,
        };
        cfg.write_main(server_extra);
        cfg
    }

    /// Rewrites the main file: the test's listeners plus `server_extra` in `[server]`.
    pub fn write_main(&self, server_extra: &str) {
        let threads = if server_extra.contains("threads") {
            ""
        } else {
            "threads = 2\n"
        };
        let main = format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\n{threads}{server_extra}\n",
            self.port, self.admin_port
        );
        std::fs::write(self.main_file(), main).unwrap();
    }

    /// Appends `text` (tables such as `[access_log]`) to the main file, after `[server]`.
    pub fn append_main(&self, text: &str) {
        let main = std::fs::read_to_string(self.main_file()).unwrap();
        std::fs::write(self.main_file(), format!("{main}\n{text}\n")).unwrap();
    }

    pub fn tenant_path(&self, file: &str) -> PathBuf {
        self.dir.path().join("tenants.d").join(file)
    }

    pub fn main_file(&self) -> PathBuf {
        self.dir.path().join("porteiro.toml")
    }

    pub fn tenant(&self, file: &str, body: &str) -> &Self {
        std::fs::write(self.dir.path().join("tenants.d").join(file), body).unwrap();
        self
    }
}

/// The porteiro binary running on a `ConfigDir`; killed on drop.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    /// Starts porteiro and waits (bounded) until its listener accepts connections.
    pub fn start(cfg: &ConfigDir) -> Proxy {
        Proxy::start_with_env(cfg, &[])
    }

    /// `start`, with extra environment variables (such as a service manager's).
    pub fn start_with_env(cfg: &ConfigDir, env: &[(&str, &str)]) -> Proxy {
        let log = cfg.dir.path().join("porteiro.log");
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(cfg.main_file())
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("PORTEIRO_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("spawn porteiro");
        let mut proxy = Proxy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], cfg.port)),
            admin: SocketAddr::from(([127, 0, 0, 1], cfg.admin_port)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // Services start in parallel: wait for the admin listener as well as the proxy's.
            if std::net::TcpStream::connect(proxy.addr).is_ok()
                && std::net::TcpStream::connect(proxy.admin).is_ok()
            {
                return proxy;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!(
                    "porteiro exited ({status}) before listening:\n{}",
                    proxy.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "porteiro did not listen within 15s:\n{}",
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `GET /metrics` as text.
    pub async fn scrape(&self) -> String {
        let r = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("admin answers");
        assert_eq!(r.status(), 200);
        r.text().await.expect("metrics are text")
    }

    /// Sends `request` byte for byte (HTTP clients would normalise what tests need raw: dot
    /// segments, repeated or contradicting Host headers) and returns the whole answer. The
    /// request should say `Connection: close`.
    pub async fn raw(&self, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// A raw connection to the proxy's listener.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr).await.unwrap()
    }

    /// `GET /-/config` as JSON.
    pub async fn config_status(&self) -> serde_json::Value {
        let r = client()
            .get(self.admin_url("/-/config"))
            .send()
            .await
            .expect("admin answers");
        r.json().await.expect("status is JSON")
    }

    /// Waits (bounded) for the process to exit; whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `POST /-/reload`; its answer.
    pub async fn reload(&self) -> serde_json::Value {
        let r = client()
            .post(self.admin_url("/-/reload"))
            .send()
            .await
            .expect("admin answers");
        r.json().await.expect("reload answer is JSON")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A GET with an explicit Host; returns status, `x-backend` and body.
pub async fn get(client: &reqwest::Client, proxy: &Proxy, host: &str, path: &str) -> Reply {
    send(client.get(proxy.url(path)).header("host", host)).await
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub backend: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request through porteiro");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let backend = headers
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap_or_default();
    Reply {
        status,
        backend,
        headers,
        body,
    }
}

/// Reads from `conn` until the peer closes it or `limit` passes; returns what arrived and
/// whether the peer closed the connection within the limit.
pub async fn read_until_closed(
    conn: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Reads one HTTP/1.1 answer with a Content-Length body from a kept-alive connection.
pub async fn read_answer(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before a whole answer: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return;
                }
            }
        }
    })
    .await
    .expect("an answer within 10s");
    String::from_utf8_lossy(&got).into_owned()
}

/// Polls `probe` until it returns true, at most `limit`; panics with `what` otherwise.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if probe().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `porteiro check -c FILE`; returns (exit code, stdout, stderr).
pub fn check(main_file: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(main_file)
        .output()
        .expect("run check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tenant file with one pool over `backends` (as "ip:port" strings) and extra pool keys.
pub fn one_pool_tenant(
    id: &str,
    hosts: &[&str],
    backends: &[SocketAddr],
    pool_extra: &str,
) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "id = \"{id}\"\nhosts = [{}]\n\n[pools.web]\nbackends = [{}]\n{pool_extra}\n",
        hosts.join(", "),
        backends.join(", ")
    )
}
