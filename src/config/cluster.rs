//! `[cluster]` in the main file: the Redis server a fleet of porteiro instances shares limits,
//! quotas and cache purges through. Without the table porteiro needs no Redis at all.

use std::path::Path;
use std::time::Duration;

use toml::Table;

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::ClusterConfig;

const CLUSTER_KEYS: &[&str] = &[
    "redis",
    "password_file",
    "key_prefix",
    "node_id",
    "expected_nodes",
    "timeout",
];

/// Longest wait a request may spend on Redis before it is decided locally.
const MAX_TIMEOUT: Duration = Duration::from_secs(1);

pub fn parse(file: &Path, t: &Table, errs: &mut ConfigErrors) -> Option<ClusterConfig> {
    let f = Fields::new(file, "cluster", t, CLUSTER_KEYS);
    f.require("redis", errs);
    let url = f.str("redis", errs).and_then(|u| match check_url(u) {
        Ok(()) => Some(u.to_string()),
        Err(why) => {
            errs.push(file, "cluster.redis", why);
            None
        }
    });
    let password = f.str("password_file", errs).and_then(|p| {
        let path = file.parent().unwrap_or(Path::new(".")).join(p);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => {
                errs.push(
                    file,
                    "cluster.password_file",
                    format!("{} is empty", path.display()),
                );
                None
            }
            Err(e) => {
                errs.push(
                    file,
                    "cluster.password_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    let key_prefix = f
        .str("key_prefix", errs)
        .map_or("porteiro:".to_string(), str::to_string);
    if key_prefix.bytes().any(|b| !b.is_ascii_graphic()) {
        errs.push(
            file,
            "cluster.key_prefix",
            "use printable characters, no spaces",
        );
    }
    let node_id = match f.str("node_id", errs) {
        Some(id) if id.is_empty() || id.len() > 64 || id.bytes().any(|b| !b.is_ascii_graphic()) => {
            errs.push(
                file,
                "cluster.node_id",
                "use 1 to 64 printable characters, no spaces",
            );
            None
        }
        Some(id) => Some(id.to_string()),
        None => None,
    };
    let expected_nodes = f
        .int("expected_nodes", 1..=1000, errs)
        .map_or(1, |n| n as u32);
    let timeout = f.duration("timeout", errs).filter(|d| {
        let sane = !d.is_zero() && *d <= MAX_TIMEOUT;
        if !sane {
            errs.push(file, "cluster.timeout", "must be between 1ms and 1s");
        }
        sane
    });
    f.finish(errs);
    Some(ClusterConfig {
        redis: url?,
        password,
        key_prefix,
        node_id: node_id.unwrap_or_else(default_node_id),
        expected_nodes,
        timeout: timeout.unwrap_or(Duration::from_millis(2)),
    })
}

/// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` (TLS) or `redis+unix:///path`.
fn check_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    if !["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return Err("expected redis://HOST:PORT/DB, rediss://… (TLS) or redis+unix:///PATH".into());
    }
    url.into_connection_info()
        .map(drop)
        .map_err(|e| format!("not a usable Redis URL: {e}"))
}

/// The machine's hostname: what operators see in `hostname` and in their inventory.
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

/// The URL as shown in `/-/config` and logs: any password replaced, in the user part or in
/// the query (`?pass=…`, as for `redis+unix://`).
pub fn redacted(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "(not a URL)".to_string();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = matches!(k.as_ref(), "pass" | "password");
                let v = if secret { "***".into() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (Option<ClusterConfig>, ConfigErrors) {
        let mut errs = ConfigErrors::default();
        let t: Table = toml::from_str(text).unwrap();
        (
            parse(Path::new("/etc/porteiro/p.toml"), &t, &mut errs),
            errs,
        )
    }

    #[test]
    fn defaults_and_every_key() {
        let (c, errs) = parse_text("redis = \"redis://127.0.0.1:6379/0\"\n");
        assert!(errs.is_empty(), "{errs}");
        let c = c.unwrap();
        assert_eq!((c.key_prefix.as_str(), c.expected_nodes), ("porteiro:", 1));
        assert_eq!(c.timeout, Duration::from_millis(2));
        assert!(!c.node_id.is_empty());
        let (c, errs) = parse_text(
            "redis = \"rediss://edge:pw@redis.internal:6380/2\"\nkey_prefix = \"fleet-a:\"\n\
             node_id = \"edge-1\"\nexpected_nodes = 3\ntimeout = \"5ms\"\n",
        );
        assert!(errs.is_empty(), "{errs}");
        let c = c.unwrap();
        assert_eq!((c.node_id.as_str(), c.expected_nodes), ("edge-1", 3));
        assert_eq!(c.timeout, Duration::from_millis(5));
    }

    #[test]
    fn mistakes_name_their_key() {
        let (c, errs) = parse_text(
            "redis = \"http://127.0.0.1:6379\"\npassword_file = \"no-such-file\"\n\
             node_id = \"edge 1\"\nexpected_nodes = 0\ntimeout = \"2s\"\nprefix = \"x\"\n",
        );
        assert!(c.is_none());
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.redis",
                "cluster.password_file",
                "cluster.node_id",
                "cluster.expected_nodes",
                "cluster.timeout",
                "cluster.prefix"
            ]
        );
        assert!(
            errs.0[1].reason.contains("/etc/porteiro/no-such-file"),
            "{errs}"
        );
        let (_, errs) = parse_text("key_prefix = \"a\"\n");
        assert_eq!(errs.0[0].key, "cluster.redis");
    }

    #[test]
    fn passwords_never_shown() {
        assert_eq!(
            redacted("redis://:secret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            redacted("rediss://edge:secret@h/0"),
            "rediss://edge:***@h/0"
        );
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
    }
}
