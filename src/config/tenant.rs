//! One tenant file: id, hosts, pools and routes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::{Table, Value};

use super::backends::{parse_backend, parse_hash_key, Backend};
use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::*;
use super::names::{check_id, parse_host_pattern};
use super::tls_keys::{check_hsts, parse_tls_files, parse_upstream_tls};

const TENANT_KEYS: &[&str] = &[
    "id",
    "hosts",
    "pools",
    "routes",
    "tls",
    "https_redirect",
    "hsts",
    "access_log_sample",
    "limits",
    "allow_path_parameters",
    "cache",
];
const POOL_KEYS: &[&str] = &[
    "backends",
    "balance",
    "hash_key",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "idle_timeout",
    "retries",
    "host_header",
    "health",
    "passive",
    "tls",
    "sni",
    "ca_file",
    "insecure_skip_verify",
    "http2",
    "dns_refresh",
];
const HEALTH_KEYS: &[&str] = &[
    "path",
    "tcp",
    "host",
    "interval",
    "timeout",
    "healthy_after",
    "unhealthy_after",
];
const PASSIVE_KEYS: &[&str] = &["failures", "cooldown"];
const ROUTE_KEYS: &[&str] = &["path_prefix", "pool", "respond", "match_case", "cache"];
const RESPOND_KEYS: &[&str] = &["status", "body", "headers"];

/// A tenant as far as it could be read (only used when its file has no errors).
pub struct ParsedTenant {
    pub tenant: Arc<TenantConfig>,
}

pub fn parse(file: &Path, table: &Table, errs: &mut ConfigErrors) -> ParsedTenant {
    let f = Fields::new(file, "", table, TENANT_KEYS);
    f.require("id", errs);
    let id = f.str("id", errs).and_then(|id| match check_id(id) {
        Ok(()) => Some(id.to_string()),
        Err(reason) => {
            errs.push(file, "id", reason);
            None
        }
    });
    let hosts = parse_hosts(&f, errs);
    let pools = parse_pools(&f, errs);
    let routes = parse_routes(&f, &pools, errs);
    let tls = f
        .table("tls", errs)
        .and_then(|t| parse_tls_files(file, "tls", t, errs));
    let https_redirect = f.bool("https_redirect", errs).unwrap_or(false);
    let hsts = f.str("hsts", errs).and_then(|v| match check_hsts(v) {
        Ok(()) => Some(v.to_string()),
        Err(reason) => {
            errs.push(file, "hsts", reason);
            None
        }
    });
    let access_log_sample = match f.get("access_log_sample") {
        None => 1.0,
        Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(x) if (0.0..=1.0).contains(&x) => x,
            _ => {
                errs.push(
                    file,
                    "access_log_sample",
                    "expected a number from 0.0 to 1.0",
                );
                1.0
            }
        },
    };
    let limits = f
        .table("limits", errs)
        .map(|t| super::limits::parse_limits(file, "limits", t, errs))
        .unwrap_or_default();
    let allow_path_parameters = f.bool("allow_path_parameters", errs).unwrap_or(false);
    let cache = f
        .table("cache", errs)
        .map(|t| super::cache::parse_tenant(file, t, errs));
    f.finish(errs);
    let tenant = Arc::new(TenantConfig {
        id: id.unwrap_or_default(),
        file: file.to_path_buf(),
        hosts: hosts.iter().map(|(_, h)| h.clone()).collect(),
        pools: pools.into_iter().map(|(_, p)| p).collect(),
        routes,
        tls,
        https_redirect,
        hsts,
        access_log_sample,
        limits,
        allow_path_parameters,
        cache,
    });
    ParsedTenant { tenant }
}

fn parse_hosts(f: &Fields, errs: &mut ConfigErrors) -> Vec<(usize, HostPattern)> {
    if !f.require("hosts", errs) {
        return Vec::new();
    }
    let Some(list) = f.array("hosts", errs) else {
        return Vec::new();
    };
    if list.is_empty() {
        errs.push(f.file, "hosts", "needs at least one hostname");
    }
    let mut hosts: Vec<(usize, HostPattern)> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = format!("hosts[{i}]");
        let Some(raw) = v.as_str() else {
            errs.push(f.file, key, "expected a hostname string");
            continue;
        };
        match parse_host_pattern(raw) {
            Ok(p) if hosts.iter().any(|(_, h)| *h == p) => {
                errs.push(f.file, key, format!("`{raw}` is listed twice"))
            }
            Ok(p) => hosts.push((i, p)),
            Err(reason) => errs.push(f.file, key, reason),
        }
    }
    hosts
}

fn parse_pools(f: &Fields, errs: &mut ConfigErrors) -> Vec<(String, PoolConfig)> {
    let Some(pools) = f.table("pools", errs) else {
        return Vec::new();
    };
    let default_probe_host = default_probe_host(f);
    let mut out = Vec::new();
    for (name, value) in pools {
        let key = format!("pools.{name}");
        if let Err(reason) = check_id(name) {
            errs.push(f.file, key.clone(), reason);
        }
        let Some(table) = value.as_table() else {
            errs.push(f.file, key, "expected a table ([pools.NAME])");
            continue;
        };
        out.push((
            name.clone(),
            parse_pool(f.file, &key, name, table, &default_probe_host, errs),
        ));
    }
    out
}

/// The Host an HTTP health check sends by default: the first exact host, else the first
/// wildcard's suffix. Errors in `hosts` are reported by `parse_hosts`, not here.
fn default_probe_host(f: &Fields) -> String {
    let mut ignore = ConfigErrors::default();
    let patterns: Vec<HostPattern> = f
        .array("hosts", &mut ignore)
        .into_iter()
        .flatten()
        .filter_map(|v| parse_host_pattern(v.as_str()?).ok())
        .collect();
    patterns
        .iter()
        .find_map(|p| match p {
            HostPattern::Exact(h) => Some(h.clone()),
            HostPattern::Wildcard(_) => None,
        })
        .or_else(|| {
            patterns.first().map(|p| match p {
                HostPattern::Exact(h) | HostPattern::Wildcard(h) => h.clone(),
            })
        })
        .unwrap_or_else(|| "localhost".to_string())
}

fn parse_pool(
    file: &Path,
    key: &str,
    name: &str,
    table: &Table,
    probe_host: &str,
    errs: &mut ConfigErrors,
) -> PoolConfig {
    let f = Fields::new(file, key, table, POOL_KEYS);
    let mut pool = PoolConfig {
        name: name.to_string(),
        backends: Vec::new(),
        names: Vec::new(),
        dns_refresh: Duration::from_secs(5),
        balance: Balance::RoundRobin,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        retries: 2,
        host_header: None,
        health: None,
        passive_cooldown: Duration::from_secs(10),
        passive_failures: 3,
        tls: None,
        http2: false,
    };
    if f.require("backends", errs) {
        if let Some(list) = f.array("backends", errs) {
            if list.is_empty() {
                errs.push(
                    file,
                    f.path("backends"),
                    "a pool needs at least one backend",
                );
            }
            for (i, v) in list.iter().enumerate() {
                let bkey = format!("{key}.backends[{i}]");
                match parse_backend(file, &bkey, v, errs) {
                    Some(Backend::Addr(b)) if pool.backends.iter().any(|x| x.addr == b.addr) => {
                        errs.push(file, bkey, format!("{} is listed twice", b.addr));
                    }
                    Some(Backend::Addr(b)) => pool.backends.push(b),
                    Some(Backend::Name(n))
                        if pool
                            .names
                            .iter()
                            .any(|x| x.host == n.host && x.port == n.port) =>
                    {
                        errs.push(file, bkey, format!("{}:{} is listed twice", n.host, n.port));
                    }
                    Some(Backend::Name(n)) => pool.names.push(n),
                    None => {}
                }
            }
        }
    }
    let hash_key = f
        .str("hash_key", errs)
        .and_then(|s| match parse_hash_key(s) {
            Ok(k) => Some(k),
            Err(reason) => {
                errs.push(file, f.path("hash_key"), reason);
                None
            }
        });
    let balance_ok = match f.str("balance", errs) {
        None | Some("round_robin") => true,
        Some("least_conn") => {
            pool.balance = Balance::LeastConn;
            true
        }
        Some("random") => {
            pool.balance = Balance::Random;
            true
        }
        Some("consistent_hash") => {
            pool.balance = Balance::ConsistentHash(hash_key.clone().unwrap_or(HashKey::ClientIp));
            true
        }
        Some(other) => {
            errs.push(
                file,
                f.path("balance"),
                format!("`{other}` is not one of round_robin, least_conn, consistent_hash, random"),
            );
            false
        }
    };
    // When balance itself is wrong (say a misspelt "consistent_hash"), that one error is enough.
    if balance_ok
        && f.get("hash_key").is_some()
        && !matches!(pool.balance, Balance::ConsistentHash(_))
    {
        errs.push(
            file,
            f.path("hash_key"),
            "only applies with balance = \"consistent_hash\"",
        );
    }
    for (k, slot) in [
        ("connect_timeout", &mut pool.connect_timeout),
        ("read_timeout", &mut pool.read_timeout),
        ("write_timeout", &mut pool.write_timeout),
        ("idle_timeout", &mut pool.idle_timeout),
    ] {
        if let Some(d) = f.duration(k, errs) {
            *slot = d;
        }
    }
    if let Some(n) = f.int("retries", 0..=10, errs) {
        pool.retries = n as u32;
    }
    if let Some(h) = f.str("host_header", errs) {
        if h.is_empty() || http::HeaderValue::from_str(h).is_err() {
            errs.push(file, f.path("host_header"), "not a valid Host header value");
        } else {
            pool.host_header = Some(h.to_string());
        }
    }
    if let Some(t) = f.table("health", errs) {
        pool.health = parse_health(file, &f.path("health"), t, probe_host, errs);
    }
    if let Some(d) = f.duration("dns_refresh", errs) {
        if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
            errs.push(file, f.path("dns_refresh"), "expected 100ms to 1d");
        } else {
            pool.dns_refresh = d;
        }
    }
    if let Some(t) = f.table("passive", errs) {
        let p = Fields::new(file, f.path("passive"), t, PASSIVE_KEYS);
        if let Some(n) = p.int("failures", 1..=100, errs) {
            pool.passive_failures = n as u32;
        }
        if let Some(d) = p.duration("cooldown", errs) {
            pool.passive_cooldown = d;
        }
        p.finish(errs);
    }
    parse_upstream_tls(&f, &mut pool, probe_host, errs);
    f.finish(errs);
    pool
}

fn parse_health(
    file: &Path,
    key: &str,
    t: &Table,
    probe_host: &str,
    errs: &mut ConfigErrors,
) -> Option<HealthConfig> {
    let f = Fields::new(file, key, t, HEALTH_KEYS);
    let path = f.str("path", errs);
    let tcp = f.bool("tcp", errs);
    let host = f.str("host", errs);
    let interval = f.duration("interval", errs);
    let timeout = f.duration("timeout", errs);
    let healthy_after = f.int("healthy_after", 1..=100, errs);
    let unhealthy_after = f.int("unhealthy_after", 1..=100, errs);
    let probe = match (path, tcp) {
        (Some(p), None | Some(false)) if !p.starts_with('/') => {
            errs.push(file, f.path("path"), "must start with /");
            None
        }
        // The path goes into a request line as is: it must be a valid path (and query).
        (Some(p), None | Some(false)) if p.parse::<http::uri::PathAndQuery>().is_err() => {
            errs.push(file, f.path("path"), "not a valid request path");
            None
        }
        (Some(p), None | Some(false)) => Some(Probe::Http {
            path: p.to_string(),
            host: host.unwrap_or(probe_host).to_string(),
        }),
        (None, Some(true)) => Some(Probe::Tcp),
        (Some(_), Some(true)) => {
            errs.push(
                file,
                key,
                "set either path (HTTP check) or tcp = true, not both",
            );
            None
        }
        // A path or tcp of the wrong type was reported already; do not pile on.
        (None, _) if f.get("path").is_some() || f.get("tcp").is_some_and(|v| !v.is_bool()) => None,
        (None, _) => {
            errs.push(
                file,
                key,
                "needs path = \"/...\" (HTTP check) or tcp = true",
            );
            None
        }
    };
    if let Some(h) = host {
        if matches!(probe, Some(Probe::Tcp)) {
            errs.push(file, f.path("host"), "only applies to an HTTP check (path)");
        } else if h.is_empty()
            || h.contains(char::is_whitespace)
            || http::HeaderValue::from_str(h).is_err()
        {
            errs.push(file, f.path("host"), "not a valid Host header value");
        }
    }
    let interval = interval.unwrap_or(Duration::from_secs(5));
    let timeout = timeout.unwrap_or(Duration::from_secs(1).min(interval));
    if timeout > interval {
        errs.push(file, f.path("timeout"), "must not exceed interval");
    }
    f.finish(errs);
    Some(HealthConfig {
        probe: probe?,
        interval,
        timeout,
        healthy_after: healthy_after.unwrap_or(2) as u32,
        unhealthy_after: unhealthy_after.unwrap_or(3) as u32,
    })
}

fn parse_routes(
    f: &Fields,
    pools: &[(String, PoolConfig)],
    errs: &mut ConfigErrors,
) -> Vec<RouteConfig> {
    let Some(list) = f.array("routes", errs) else {
        if f.get("routes").is_some() {
            return Vec::new(); // of the wrong type, reported already
        }
        return match pools {
            [] if f.get("pools").is_none() => {
                errs.push(
                    f.file,
                    "",
                    "the tenant has neither pools nor routes: nothing to serve",
                );
                Vec::new()
            }
            // `pools = {}`: said explicitly, but still nothing to serve.
            [] if f
                .get("pools")
                .and_then(Value::as_table)
                .is_some_and(Table::is_empty) =>
            {
                errs.push(
                    f.file,
                    "pools",
                    "no pools and no routes: the tenant has nothing to serve",
                );
                Vec::new()
            }
            [_] => vec![RouteConfig {
                path_prefix: "/".into(),
                match_case: true,
                cache: true,
                action: RouteAction::Pool(0),
            }],
            [] => Vec::new(),
            _ => {
                errs.push(
                    f.file,
                    "routes",
                    "required when a tenant has more than one pool",
                );
                Vec::new()
            }
        };
    };
    if list.is_empty() {
        // An explicit empty list would answer 404 to everything: surely not what was meant.
        let hint = match pools {
            [_] => " (leave `routes` out to send everything to the only pool)",
            _ => "",
        };
        errs.push(f.file, "routes", format!("needs at least one route{hint}"));
    }
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let key = format!("routes[{i}]");
        let Some(t) = v.as_table() else {
            errs.push(f.file, key, "expected a table ([[routes]])");
            continue;
        };
        if let Some(r) = parse_route(f.file, &key, t, pools, errs) {
            if routes.iter().any(|x| x.path_prefix == r.path_prefix) {
                errs.push(
                    f.file,
                    format!("{key}.path_prefix"),
                    format!("`{}` is routed twice", r.path_prefix),
                );
            } else {
                routes.push(r);
            }
        }
    }
    routes
}

fn parse_route(
    file: &Path,
    key: &str,
    t: &Table,
    pools: &[(String, PoolConfig)],
    errs: &mut ConfigErrors,
) -> Option<RouteConfig> {
    let f = Fields::new(file, key, t, ROUTE_KEYS);
    f.require("path_prefix", errs);
    let prefix = f
        .str("path_prefix", errs)
        .filter(|p| match check_prefix(p) {
            Ok(()) => true,
            Err(reason) => {
                errs.push(file, f.path("path_prefix"), reason);
                false
            }
        });
    let action = match (f.str("pool", errs), f.table("respond", errs)) {
        (Some(name), None) => match pools.iter().position(|(n, _)| n == name) {
            Some(i) => Some(RouteAction::Pool(i)),
            None => {
                let known: Vec<&str> = pools.iter().map(|(n, _)| n.as_str()).collect();
                errs.push(
                    file,
                    f.path("pool"),
                    format!("no pool named `{name}` (pools: {})", known.join(", ")),
                );
                None
            }
        },
        (None, Some(r)) => {
            parse_respond(file, &f.path("respond"), r, errs).map(RouteAction::Respond)
        }
        (Some(_), Some(_)) => {
            errs.push(file, key, "set either pool or respond, not both");
            None
        }
        (None, None) => {
            if f.get("pool").is_none() && f.get("respond").is_none() {
                errs.push(file, key, "needs pool = \"NAME\" or respond = { ... }");
            }
            None
        }
    };
    let match_case = f.bool("match_case", errs).unwrap_or(true);
    let cache = f.bool("cache", errs).unwrap_or(true);
    f.finish(errs);
    Some(RouteConfig {
        path_prefix: prefix?.to_string(),
        action: action?,
        match_case,
        cache,
    })
}

/// A prefix must be written the way porteiro routes request paths (normalised, unreserved
/// characters unescaped): anything else could never match, or match differently than the
/// operator reads it.
fn check_prefix(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must start with /");
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c);
    if !p.chars().all(plain) {
        // `%`, `;`, `?`, `#`, spaces, non-ASCII: a request path is routed after decoding and
        // never carries these as written here.
        return Err("use only letters, digits, `/` and `-._~!$&'()*+,=:@` (no escapes, `;`, query or fragment)");
    }
    if p.contains("//") || p.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(
            "requests are routed with `//`, `.` and `..` resolved: write the prefix that way",
        );
    }
    Ok(())
}

fn parse_respond(
    file: &Path,
    key: &str,
    t: &Table,
    errs: &mut ConfigErrors,
) -> Option<StaticResponse> {
    let f = Fields::new(file, key, t, RESPOND_KEYS);
    let before = errs.len();
    let status = f.int("status", 100..=599, errs).unwrap_or(200) as u16;
    let body = f.str("body", errs).unwrap_or("").to_string();
    let mut headers = Vec::new();
    if let Some(h) = f.table("headers", errs) {
        for (name, value) in h {
            let hkey = format!("{key}.headers.{name}");
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                errs.push(file, hkey, "not a valid header name");
            } else if matches!(
                lower.as_str(),
                "content-length" | "transfer-encoding" | "connection"
            ) {
                errs.push(file, hkey, "porteiro sets this header itself");
            } else {
                match value.as_str() {
                    Some(v) if http::HeaderValue::from_str(v).is_ok() => {
                        headers.push((lower, v.to_string()))
                    }
                    _ => errs.push(file, hkey, "expected a header value string"),
                }
            }
        }
    }
    f.finish(errs);
    (errs.len() == before).then_some(StaticResponse {
        status,
        body,
        headers,
    })
}
