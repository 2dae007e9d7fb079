//! A real `redis-server` of the test's own on a free loopback port: started, killed and
//! restarted on the same port by the test, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    /// `requirepass`, when the test wants clients to authenticate.
    pub password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// `redis-server` from `PATH` or Debian's place; `None` (with the reason printed) when it is
/// not installed, so the caller can skip.
fn binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        // CI sets this: there a missing Redis is a broken setup, not a reason to skip.
        assert!(
            std::env::var_os("PORTEIRO_REQUIRE_REDIS").is_none(),
            "redis-server is not installed and PORTEIRO_REQUIRE_REDIS is set"
        );
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server; `make test` installs it)");
    }
    found
}

impl Redis {
    /// A running Redis, or `None` when `redis-server` is not installed.
    pub fn start() -> Option<Redis> {
        Redis::start_with_password(None)
    }

    /// A running Redis that only answers clients giving `password` (`requirepass`).
    pub fn start_with_password(password: Option<&str>) -> Option<Redis> {
        binary()?;
        let mut r = Redis {
            port: super::free_port(),
            password: password.map(str::to_string),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port (after `kill`), empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(binary().expect("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass", p.as_str()]),
            )
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends one command (inline protocol), after `AUTH` when Redis wants a password, and
    /// returns the answer: a bulk string's value, or the first line of any other answer
    /// (`+PONG`, `:42`, `$-1` for no value).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let auth = self.password.as_ref().map(|p| format!("AUTH {p}\r\n"));
        let request = format!("{}{}\r\n", auth.as_deref().unwrap_or(""), args.join(" "));
        s.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        if auth.is_some() {
            reader.read_line(&mut line).ok()?;
            line.clear();
        }
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end().to_string();
        if line.starts_with('$') && line != "$-1" {
            let mut value = String::new();
            reader.read_line(&mut value).ok()?;
            return Some(value.trim_end().to_string());
        }
        Some(line)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
