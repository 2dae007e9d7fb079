//! The main file: `[server]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Table;

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::{AccessLogConfig, AccessLogTarget, LogFormat, ServerConfig};
use super::tls_keys::parse_tls_files;

const TOP_KEYS: &[&str] = &[
    "server",
    "metrics",
    "access_log",
    "limits",
    "cache",
    "cluster",
];
const METRICS_KEYS: &[&str] = &["enabled", "max_tenants"];
const ACCESS_LOG_KEYS: &[&str] = &["path", "queue"];
pub(super) const SERVER_KEYS: &[&str] = &[
    "listen",
    "listen_tls",
    "default_certificate",
    "tls_session_tickets",
    "tls_session_cache",
    "https_port",
    "threads",
    "work_stealing",
    "tenants_dir",
    "unknown_host_status",
    "trusted_proxies",
    "h2c",
    "grace_period",
    "graceful_shutdown_timeout",
    "admin",
    "admin_token",
    "watch",
    "log_format",
    "quota_state_file",
    "quota_persist_interval",
    "upgrade_socket",
    "resolver",
    // super::clients
    "header_timeout",
    "keepalive_timeout",
    "body_timeout",
    "send_timeout",
    "max_connections",
    "max_connections_per_ip",
    "max_request_line",
    "max_header_bytes",
    "drop_underscore_headers",
    "client_ipv6_prefix",
];

pub fn defaults() -> ServerConfig {
    ServerConfig {
        listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
        listen_tls: Vec::new(),
        default_certificate: None,
        tls_session_tickets: true,
        tls_session_cache: 10_000,
        https_port: 443,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tenants_dir: PathBuf::from("tenants.d"),
        unknown_host_status: 404,
        trusted_proxies: Vec::new(),
        h2c: false,
        work_stealing: false,
        grace_period: Duration::from_secs(30),
        graceful_shutdown_timeout: Duration::from_secs(10),
        admin: Some(SocketAddr::from(([127, 0, 0, 1], 9900))),
        admin_token: None,
        watch: true,
        log_format: LogFormat::Text,
        metrics_enabled: true,
        metrics_max_tenants: crate::metrics::DEFAULT_MAX_TENANTS,
        access_log: AccessLogConfig {
            target: AccessLogTarget::Off,
            queue: 65536,
        },
        default_limits: Default::default(),
        quota_state_file: None,
        upgrade_socket: PathBuf::from("/run/porteiro/upgrade.sock"),
        resolver: None,
        quota_persist_interval: Duration::from_secs(10),
        clients: Default::default(),
        cache: Default::default(),
        cluster: None,
    }
}

/// Reads the main file's table. `tenants_dir` is returned as written (relative or absolute).
pub fn parse(file: &Path, top: &Table, errs: &mut ConfigErrors) -> ServerConfig {
    let mut s = defaults();
    let top_fields = Fields::new(file, "", top, TOP_KEYS);
    let table = top_fields.table("server", errs);
    if let Some(t) = top_fields.table("metrics", errs) {
        let f = Fields::new(file, "metrics", t, METRICS_KEYS);
        if let Some(b) = f.bool("enabled", errs) {
            s.metrics_enabled = b;
        }
        if let Some(n) = f.int("max_tenants", 1..=1_000_000, errs) {
            s.metrics_max_tenants = n as usize;
        }
        f.finish(errs);
    }
    if let Some(t) = top_fields.table("access_log", errs) {
        let f = Fields::new(file, "access_log", t, ACCESS_LOG_KEYS);
        s.access_log.target = match f.str("path", errs) {
            None | Some("") => AccessLogTarget::Off,
            Some("stdout") => AccessLogTarget::Stdout,
            Some(p) => AccessLogTarget::File(PathBuf::from(p)),
        };
        if let Some(n) = f.int("queue", 1..=10_000_000, errs) {
            s.access_log.queue = n as usize;
        }
        f.finish(errs);
    }
    if let Some(t) = top_fields.table("limits", errs) {
        s.default_limits = super::limits::parse_limits(file, "limits", t, errs);
    }
    if let Some(t) = top_fields.table("cache", errs) {
        s.cache = super::cache::parse_main(file, t, errs);
    }
    if let Some(t) = top_fields.table("cluster", errs) {
        s.cluster = super::cluster::parse(file, t, errs);
    }
    top_fields.finish(errs);
    let Some(table) = table else {
        return s;
    };
    let f = Fields::new(file, "server", table, SERVER_KEYS);
    if let Some(list) = f.array("listen", errs) {
        s.listen = parse_addrs(file, "server.listen", list, &[], errs);
        if list.is_empty() {
            errs.push(file, "server.listen", "needs at least one address");
        }
    }
    if let Some(list) = f.array("listen_tls", errs) {
        s.listen_tls = parse_addrs(file, "server.listen_tls", list, &s.listen, errs);
    }
    if let Some(t) = f.table("default_certificate", errs) {
        s.default_certificate = parse_tls_files(file, "server.default_certificate", t, errs);
    }
    if let Some(b) = f.bool("tls_session_tickets", errs) {
        s.tls_session_tickets = b;
    }
    if let Some(n) = f.int("tls_session_cache", 0..=1_000_000, errs) {
        s.tls_session_cache = n as usize;
    }
    if let Some(n) = f.int("https_port", 1..=65535, errs) {
        s.https_port = n as u16;
    }
    if let Some(n) = f.int("threads", 1..=1024, errs) {
        s.threads = n as usize;
    }
    if let Some(b) = f.bool("work_stealing", errs) {
        s.work_stealing = b;
    }
    if let Some(dir) = f.str("tenants_dir", errs) {
        s.tenants_dir = PathBuf::from(dir);
    }
    if let Some(n) = f.int("unknown_host_status", 400..=599, errs) {
        s.unknown_host_status = n as u16;
    }
    if let Some(list) = f.array("trusted_proxies", errs) {
        for (i, v) in list.iter().enumerate() {
            match v.as_str().and_then(parse_cidr) {
                Some(net) => s.trusted_proxies.push(net),
                None => errs.push(
                    file,
                    format!("server.trusted_proxies[{i}]"),
                    "expected a CIDR such as \"10.0.0.0/8\" or an IP address",
                ),
            }
        }
    }
    if let Some(b) = f.bool("h2c", errs) {
        s.h2c = b;
    }
    if let Some(d) = f.duration("grace_period", errs) {
        s.grace_period = d;
    }
    if let Some(d) = f.duration("graceful_shutdown_timeout", errs) {
        s.graceful_shutdown_timeout = d;
    }
    if let Some(a) = f.str("admin", errs) {
        s.admin = match a {
            "" => None,
            _ => match a.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    errs.push(
                        file,
                        "server.admin",
                        "expected \"ip:port\", or \"\" to turn the admin listener off",
                    );
                    s.admin
                }
            },
        };
    }
    if let Some(t) = f.str("admin_token", errs) {
        if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            errs.push(
                file,
                "server.admin_token",
                "use at least 16 printable characters, no spaces",
            );
        } else {
            s.admin_token = Some(t.to_string());
        }
    }
    if let (Some(addr), None) = (s.admin, &s.admin_token) {
        if !addr.ip().is_loopback() && !errs.0.iter().any(|e| e.key == "server.admin_token") {
            errs.push(
                file,
                "server.admin",
                format!("{addr} is reachable from other machines: set admin_token, or listen on 127.0.0.1"),
            );
        }
    }
    if let Some(b) = f.bool("watch", errs) {
        s.watch = b;
    }
    if let Some(v) = f.str("log_format", errs) {
        match parse_log_format(v) {
            Some(format) => s.log_format = format,
            None => errs.push(
                file,
                "server.log_format",
                format!("`{v}` is not one of text, json"),
            ),
        }
    }
    if let Some(p) = f.str("quota_state_file", errs) {
        s.quota_state_file = (!p.is_empty()).then(|| PathBuf::from(p));
    }
    if let Some(p) = f.str("upgrade_socket", errs) {
        if p.is_empty() {
            errs.push(file, "server.upgrade_socket", "needs a path");
        } else {
            s.upgrade_socket = PathBuf::from(p);
        }
    }
    if let Some(v) = f.str("resolver", errs) {
        match v.parse::<SocketAddr>() {
            Ok(addr) => s.resolver = Some(addr),
            Err(_) => errs.push(file, "server.resolver", format!("`{v}` must be IP:port")),
        }
    }
    if let Some(d) = f.duration("quota_persist_interval", errs) {
        s.quota_persist_interval = d;
    }
    s.clients = super::clients::parse(&f, errs);
    f.finish(errs);
    s
}

/// A list of "ip:port" strings, each at most once, none already in `taken`.
fn parse_addrs(
    file: &Path,
    key: &str,
    list: &[toml::Value],
    taken: &[SocketAddr],
    errs: &mut ConfigErrors,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let at = format!("{key}[{i}]");
        match v.as_str().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) if out.contains(&addr) || taken.contains(&addr) => {
                errs.push(file, at, format!("{addr} is listed twice"))
            }
            Some(Ok(addr)) => out.push(addr),
            _ => errs.push(
                file,
                at,
                "expected \"ip:port\", such as \"0.0.0.0:8080\" or \"[::]:8080\"",
            ),
        }
    }
    out
}

/// "10.0.0.0/8", or a bare address meaning just that host.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

pub fn parse_log_format(v: &str) -> Option<LogFormat> {
    match v {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

/// `[server] log_format` read ahead of the full load, so logging is set up before the load
/// logs anything; text when the file or the key is unreadable (the load then says why).
pub fn log_format_of(main_text: &str) -> LogFormat {
    main_text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| parse_log_format(t.get("server")?.get("log_format")?.as_str()?))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> (ServerConfig, ConfigErrors) {
        let mut errs = ConfigErrors::default();
        let table: Table = toml::from_str(text).unwrap();
        (parse(Path::new("main.toml"), &table, &mut errs), errs)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let (s, errs) = parse_str("");
        assert!(errs.is_empty());
        assert_eq!(s.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(s.unknown_host_status, 404);
        assert!(!s.h2c);
        assert!(!s.work_stealing);
        assert!(s.tls_session_tickets);
        assert_eq!(s.tls_session_cache, 10_000);
    }

    #[test]
    fn every_key() {
        let (s, errs) = parse_str(
            "[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]\nthreads = 3\ntenants_dir = \"t\"\n\
             unknown_host_status = 421\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]\nh2c = true\n\
             work_stealing = true\ngrace_period = \"5s\"\ngraceful_shutdown_timeout = \"1s\"\n\
             tls_session_tickets = false\ntls_session_cache = 0\n",
        );
        assert!(errs.is_empty(), "{errs}");
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.threads, 3);
        assert_eq!(s.tenants_dir, PathBuf::from("t"));
        assert_eq!(s.unknown_host_status, 421);
        assert!(s.trusted_proxies[1].contains(&"192.0.2.1".parse::<std::net::IpAddr>().unwrap()));
        assert!(s.h2c);
        assert!(s.work_stealing);
        assert_eq!(s.grace_period, Duration::from_secs(5));
        assert!(!s.tls_session_tickets);
        assert_eq!(s.tls_session_cache, 0);
    }

    #[test]
    fn log_format_is_read_ahead_and_checked() {
        assert_eq!(
            log_format_of("[server]\nlog_format = \"json\"\n"),
            LogFormat::Json
        );
        assert_eq!(log_format_of("not toml ["), LogFormat::Text);
        let (s, errs) = parse_str("[server]\nlog_format = \"json\"\n");
        assert!(errs.is_empty() && s.log_format == LogFormat::Json);
        let (_, errs) = parse_str("[server]\nlog_format = \"xml\"\n");
        assert_eq!(errs.0[0].key, "server.log_format");
    }

    #[test]
    fn admin_listener() {
        let (s, errs) = parse_str("[server]\nadmin = \"\"\nwatch = false\n");
        assert!(errs.is_empty(), "{errs}");
        assert_eq!((s.admin, s.watch), (None, false));
        let (_, errs) = parse_str("[server]\nadmin = \"0.0.0.0:9900\"\n");
        assert_eq!(errs.0[0].key, "server.admin");
        let (s, errs) =
            parse_str("[server]\nadmin = \"0.0.0.0:9900\"\nadmin_token = \"0123456789abcdef\"\n");
        assert!(errs.is_empty(), "{errs}");
        assert!(s.admin_token.is_some());
        let (_, errs) = parse_str("[server]\nadmin_token = \"short\"\n");
        assert_eq!(errs.0[0].key, "server.admin_token");
    }

    #[test]
    fn all_errors_are_collected() {
        let (_, errs) = parse_str(
            "tenants = 1\n[server]\nlisten = [\"nope\", \"1.2.3.4:5\", \"1.2.3.4:5\"]\nthreads = 0\n\
             unknown_host_status = 200\ntrusted_proxies = [\"x\"]\nh2c = \"yes\"\ntreads = 2\n",
        );
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "tenants",
                "server.listen[0]",
                "server.listen[2]",
                "server.threads",
                "server.unknown_host_status",
                "server.trusted_proxies[0]",
                "server.h2c",
                "server.treads",
            ]
        );
        assert!(errs.0[7].reason.contains("did you mean `threads`"));
    }
}
