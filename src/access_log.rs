//! The access log: one JSON object per request, written by a background thread. Requests only
//! ever `try_send` into a bounded queue: when the writer falls behind (a slow disk, a full pipe)
//! lines are dropped and counted in `porteiro_access_log_dropped_total`, never waited for.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Serialize, Serializer};

use crate::config::model::{AccessLogConfig, AccessLogTarget};

/// One request, as logged. Written by `write_json`; the `Serialize` derive is the reference
/// the tests hold it to (serde_json took 5,300 instructions a line, the writer a fraction).
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: Time,
    pub tenant: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream: Option<&'a str>,
    pub upstream_ms: Option<f64>,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    /// The proxy in `trusted_proxies` the request came through (then `client_ip` is the
    /// address its `X-Forwarded-For` vouches for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<IpAddr>,
    pub tls: bool,
    pub h2: bool,
    /// The cache result for cached tenants (hit, miss, stale, revalidated, bypass, coalesced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
}

/// When the request ended: RFC 3339 with milliseconds, formatted straight into the line.
#[derive(Debug)]
pub struct Time(pub SystemTime);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// Room for a typical line, so serializing does not grow the buffer as it goes.
const LINE_CAPACITY: usize = 384;

static SENDER: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Starts the writer thread for `cfg` (once per process; `Off` starts nothing).
pub fn start(cfg: &AccessLogConfig) {
    if cfg.target == AccessLogTarget::Off || SENDER.get().is_some() {
        return;
    }
    let (tx, rx) = sync_channel(cfg.queue);
    let target = cfg.target.clone();
    let spawned = std::thread::Builder::new()
        .name("porteiro-access-log".into())
        .spawn(move || write_lines(target, rx));
    match spawned {
        Ok(_) => {
            let _ = SENDER.set(tx);
        }
        Err(e) => tracing::error!(error = %e, "cannot start the access log writer; access log off"),
    }
}

pub fn enabled() -> bool {
    SENDER.get().is_some()
}

/// Queues one line; drops it (and counts the drop) when the writer is behind.
pub fn log(entry: &Entry) {
    let Some(tx) = SENDER.get() else {
        return;
    };
    let mut line = Vec::with_capacity(LINE_CAPACITY);
    entry.write_json(&mut line);
    line.push(b'\n');
    match tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            crate::metrics::get().access_log_dropped.inc()
        }
    }
}

impl Entry<'_> {
    /// The line as JSON, keys in the order of the struct, as serde_json would write it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let string = crate::text::push_json_string;
        out.extend_from_slice(b"{\"time\":\"");
        crate::text::push_rfc3339_millis(out, self.time.0);
        out.extend_from_slice(b"\",\"tenant\":");
        string(out, self.tenant);
        out.extend_from_slice(b",\"host\":");
        string(out, self.host);
        out.extend_from_slice(b",\"method\":");
        string(out, self.method);
        out.extend_from_slice(b",\"path\":");
        string(out, self.path);
        out.extend_from_slice(b",\"status\":");
        integer(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes_in\":");
        integer(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        integer(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        float(out, self.duration_ms);
        out.extend_from_slice(b",\"upstream\":");
        match self.upstream {
            Some(u) => string(out, u),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_ms {
            Some(ms) => float(out, ms),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"request_id\":");
        string(out, self.request_id);
        out.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(ip) => address(out, ip),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(peer) = self.peer {
            out.extend_from_slice(b",\"peer\":");
            address(out, peer);
        }
        out.extend_from_slice(if self.tls {
            b",\"tls\":true"
        } else {
            b",\"tls\":false"
        });
        out.extend_from_slice(if self.h2 {
            b",\"h2\":true"
        } else {
            b",\"h2\":false"
        });
        if let Some(cache) = self.cache {
            out.extend_from_slice(b",\"cache\":");
            string(out, cache);
        }
        out.push(b'}');
    }
}

fn address(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => {
            let (buf, len) = crate::text::ipv4(v4);
            out.extend_from_slice(&buf[..len]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

fn integer(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// As serde_json writes an f64: shortest round-trip digits, `null` when not finite.
fn float(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>),
    /// The file could not be opened; lines are counted as dropped until a reopen works.
    Broken,
}

fn open(target: &AccessLogTarget) -> Sink {
    match target {
        AccessLogTarget::Off | AccessLogTarget::Stdout => {
            Sink::Stdout(BufWriter::new(std::io::stdout()))
        }
        AccessLogTarget::File(path) => match open_file(path) {
            Ok(f) => Sink::File(BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot open the access log; lines are dropped until SIGUSR1 reopens it");
                Sink::Broken
            }
        },
    }
}

fn open_file(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// How often the writer wakes to write what was queued. Waking per line would cost a context
/// switch and a syscall per request; batching costs at most this much delay in the file.
const BATCH_INTERVAL: Duration = Duration::from_millis(50);

fn write_lines(target: AccessLogTarget, rx: Receiver<Vec<u8>>) {
    let mut sink = open(&target);
    loop {
        std::thread::sleep(BATCH_INTERVAL);
        if REOPEN.swap(false, Ordering::Relaxed) {
            flush(&mut sink);
            sink = open(&target);
            tracing::info!("access log reopened");
        }
        loop {
            match rx.try_recv() {
                Ok(line) => write(&mut sink, &line),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    flush(&mut sink);
                    return;
                }
            }
        }
        flush(&mut sink);
    }
}

fn write(sink: &mut Sink, line: &[u8]) {
    let result = match sink {
        Sink::Stdout(w) => w.write_all(line),
        Sink::File(w) => w.write_all(line),
        Sink::Broken => {
            crate::metrics::get().access_log_dropped.inc();
            return;
        }
    };
    if result.is_err() {
        crate::metrics::get().access_log_dropped.inc();
    }
}

fn flush(sink: &mut Sink) {
    let _ = match sink {
        Sink::Stdout(w) => w.flush(),
        Sink::File(w) => w.flush(),
        Sink::Broken => Ok(()),
    };
}

/// Reopens the access log file on SIGUSR1, for logrotate's `postrotate` step.
pub struct ReopenOnSignal;

#[async_trait]
impl BackgroundService for ReopenOnSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGUSR1; the access log cannot be reopened");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = usr1.recv() => if got.is_none() { return },
            }
            REOPEN.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_carries_the_time_and_client_address_as_text() {
        let entry = Entry {
            time: Time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            tenant: "acme",
            host: "acme.example.com",
            method: "GET",
            path: "/x",
            status: 200,
            bytes_in: 0,
            bytes_out: 5,
            duration_ms: 1.25,
            upstream: Some("127.0.0.1:8000"),
            upstream_ms: None,
            request_id: "rid",
            client_ip: Some("2001:db8::7".parse().unwrap()),
            peer: None,
            tls: false,
            h2: false,
            cache: None,
        };
        let mut written = Vec::new();
        entry.write_json(&mut written);
        assert_eq!(written, serde_json::to_vec(&entry).unwrap());
        let line: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(line["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(line["client_ip"], "2001:db8::7");
        assert_eq!(line["upstream_ms"], serde_json::Value::Null);
        assert!(line.get("cache").is_none());
        assert!(line.get("peer").is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a client puts in a host, path or request id, the line is the JSON that
        /// serde_json would write, byte for byte.
        #[test]
        fn the_written_line_is_what_serde_json_writes(
            host in ".*",
            path in "\\PC*",
            id in proptest::collection::vec(proptest::prelude::any::<char>(), 0..40),
            status in proptest::prelude::any::<u16>(),
            bytes in proptest::prelude::any::<u64>(),
            // Durations: milliseconds, from nothing to weeks (beyond 1e16 both write exponents,
            // spelt differently: `e16` and `e+16`, both JSON).
            ms in 0.0f64..1e12,
            flags in proptest::prelude::any::<(bool, bool, bool, bool)>(),
        ) {
            let id: String = id.into_iter().collect();
            let entry = Entry {
                time: Time(SystemTime::UNIX_EPOCH + Duration::from_millis(bytes % 4_000_000_000_000)),
                tenant: "t",
                host: &host,
                method: "GET",
                path: &path,
                status,
                bytes_in: bytes,
                bytes_out: bytes / 3,
                duration_ms: ms,
                upstream: flags.0.then_some("10.0.0.1:80"),
                upstream_ms: flags.1.then_some(ms / 2.0),
                request_id: &id,
                client_ip: flags.2.then(|| "192.0.2.1".parse().unwrap()),
                peer: flags.3.then(|| "::1".parse().unwrap()),
                tls: flags.0,
                h2: flags.1,
                cache: flags.3.then_some("hit"),
            };
            let mut written = Vec::new();
            entry.write_json(&mut written);
            proptest::prop_assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&entry).unwrap()
            );
        }
    }
}
