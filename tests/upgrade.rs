//! Graceful upgrade: a new process takes the listening sockets over while requests flow, and
//! not one of them fails.
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("grace_period = \"1s\"\nupgrade_socket = \"run/upgrade.sock\"");
    cfg.tenant("t.toml", &one_pool_tenant("t", &["t.test"], &[a.addr], ""));
    let mut old = Proxy::start(&cfg);

    let load = Load::start(old.url("/"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new server inherits the command's output: a file, not a pipe that would stay open.
    let out_file = cfg.dir.path().join("upgrade.out");
    let status = tokio::process::Command::new(BIN)
        .args(["upgrade", "--pid", &old.pid().to_string(), "-c"])
        .arg(cfg.main_file())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(cfg.dir.path().join("upgrade.err")).unwrap())
        .status()
        .await
        .unwrap();
    let stdout = std::fs::read_to_string(&out_file).unwrap();
    assert!(status.success(), "{stdout}");
    let new_pid: i32 = stdout
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {stdout}"));
    handed_over(&mut old, new_pid, load).await;
}

/// The end of a hand-over: the old process exits, the new one (`new_pid`, then killed) still
/// runs once traffic has gone on without the old one, and not one request of `load` failed.
async fn handed_over(old: &mut Proxy, new_pid: i32, load: Load) {
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(15)));
    // Traffic goes on with the old process gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed) = load.stop().await;
    // SAFETY: the new process, a child of ours or of our child.
    let alive = unsafe { libc::kill(new_pid, 0) } == 0;
    unsafe { libc::kill(new_pid, libc::SIGKILL) };
    assert!(exited, "the old process did not exit:\n{}", old.logs());
    assert!(alive, "the new process is not running");
    eprintln!("requests during the upgrade: {sent}, failed: {failed}");
    assert!(sent > 100, "{sent}");
    assert_eq!(failed, 0, "of {sent} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_a_broken_main_file_leaves_the_old_process_alone() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("upgrade_socket = \"run/upgrade.sock\"");
    cfg.tenant("t.toml", &one_pool_tenant("t", &["t.test"], &[a.addr], ""));
    let mut old = Proxy::start(&cfg);
    cfg.write_main("threads = 0\nupgrade_socket = \"run/upgrade.sock\"");
    let out = std::process::Command::new(BIN)
        .args(["upgrade", "--pid", &old.pid().to_string(), "-c"])
        .arg(cfg.main_file())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keeps serving"));
    // Left alone: not signalled, still serving.
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_millis(500)));
    assert!(!exited, "the old process exited:\n{}", old.logs());
    assert_eq!(get(&client(), &old, "t.test", "/").await.status, 200);
}

/// Requests every 5 ms on a kept-alive connection and on fresh ones, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String) -> Load {
        let (stop, sent, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let tasks = [false, true]
            .into_iter()
            .map(|fresh| {
                let (stop, sent, failed, url) =
                    (stop.clone(), sent.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let keep = client();
                    while !stop.load(Ordering::SeqCst) {
                        let c = if fresh { client() } else { keep.clone() };
                        let r = c.get(&url).header("host", "t.test").send().await;
                        sent.fetch_add(1, Ordering::SeqCst);
                        if !matches!(r, Ok(ref r) if r.status() == 200) {
                            failed.fetch_add(1, Ordering::SeqCst);
                            eprintln!("failed: {r:?}");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// (sent, failed)
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// A service manager's notification socket: what porteiro tells it, one datagram at a time.
fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within 20s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_inside_the_service_and_the_new_process_says_it_is_the_main_one() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("grace_period = \"1s\"\nupgrade_socket = \"run/upgrade.sock\"");
    cfg.tenant("t.toml", &one_pool_tenant("t", &["t.test"], &[a.addr], ""));
    // What systemd does for Type=notify: a datagram socket named in NOTIFY_SOCKET.
    let path = cfg.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut old = Proxy::start_with_env(&cfg, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let first = tokio::task::block_in_place(|| notification(&socket));
    assert!(first.contains("READY=1"), "{first}");
    assert!(first.contains(&format!("MAINPID={}", old.pid())), "{first}");

    let load = Load::start(old.url("/"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `systemctl kill --kill-whom=main --signal=SIGUSR2 porteiro`
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(old.pid(), libc::SIGUSR2) };
    let second = tokio::task::block_in_place(|| notification(&socket));
    let new_pid: i32 = second
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID=")?.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {second}"));
    assert!(second.contains("READY=1"), "{second}");
    assert_ne!(new_pid, old.pid());
    handed_over(&mut old, new_pid, load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_with_a_broken_main_file_is_refused_and_the_process_keeps_serving() {
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("upgrade_socket = \"run/upgrade.sock\"");
    cfg.tenant("t.toml", &one_pool_tenant("t", &["t.test"], &[a.addr], ""));
    let mut old = Proxy::start(&cfg);
    cfg.write_main("threads = 0\nupgrade_socket = \"run/upgrade.sock\"");
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(old.pid(), libc::SIGUSR2) };
    eventually(
        Duration::from_secs(15),
        "the refusal in the log",
        || async {
            old.logs()
                .contains("upgrade refused; this process keeps serving")
        },
    )
    .await;
    assert!(
        old.logs().contains("server.threads"),
        "the upgrade's own errors are shown"
    );
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_millis(500)));
    assert!(!exited, "the process exited:\n{}", old.logs());
    assert_eq!(get(&client(), &old, "t.test", "/").await.status, 200);
}

/// A request that reaches an idle kept-alive connection just after a graceful shutdown began
/// (SIGTERM, or an upgrade's hand-over) is answered, with `Connection: close`, instead of
/// meeting a socket closed under it.
#[tokio::test]
async fn a_request_arriving_as_shutdown_begins_is_answered_on_its_kept_alive_connection() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let cfg = ConfigDir::new("grace_period = \"5s\"");
    cfg.tenant("t.toml", &one_pool_tenant("t", &["t.test"], &[a.addr], ""));
    let proxy = Proxy::start(&cfg);
    let mut conn = proxy.connect().await;
    conn.write_all(b"GET /1 HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    unsafe { libc::kill(proxy.pid(), libc::SIGTERM) };
    eventually(Duration::from_secs(5), "the shutdown to begin", || async {
        proxy.logs().contains("SIGTERM received")
    })
    .await;
    conn.write_all(b"GET /2 HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let second = read_answer(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    assert_eq!(a.hits(), 2);
}
