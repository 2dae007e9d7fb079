//! Backend entries and consistent-hash keys of a pool.

use std::net::SocketAddr;
use std::path::Path;

use toml::Value;

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::{BackendConfig, HashKey, NamedBackend};

const BACKEND_KEYS: &[&str] = &["addr", "weight"];

/// A backend entry: an address, or a DNS name to resolve.
pub enum Backend {
    Addr(BackendConfig),
    Name(NamedBackend),
}

pub fn parse_backend(
    file: &Path,
    key: &str,
    v: &Value,
    errs: &mut ConfigErrors,
) -> Option<Backend> {
    let (addr_text, weight) = match v {
        Value::String(s) => (s.as_str(), 1),
        Value::Table(t) => {
            let f = Fields::new(file, key, t, BACKEND_KEYS);
            f.require("addr", errs);
            let addr = f.str("addr", errs);
            let weight = f.int("weight", 1..=1000, errs);
            let weight_ok = weight.is_some() || f.get("weight").is_none();
            f.finish(errs);
            match (addr, weight_ok) {
                (Some(a), true) => (a, weight.unwrap_or(1) as u32),
                _ => return None,
            }
        }
        _ => {
            errs.push(
                file,
                key,
                "expected \"host:port\" or { addr = \"host:port\", weight = N }",
            );
            return None;
        }
    };
    if let Ok(addr) = addr_text.parse::<SocketAddr>() {
        return Some(Backend::Addr(BackendConfig { addr, weight }));
    }
    match parse_name(addr_text) {
        Ok((host, port)) => Some(Backend::Name(NamedBackend { host, port, weight })),
        Err(reason) => {
            let at = if matches!(v, Value::Table(_)) {
                format!("{key}.addr")
            } else {
                key.to_string()
            };
            errs.push(file, at, format!("`{addr_text}`: {reason}"));
            None
        }
    }
}

/// `name:port` with a DNS name (letters, digits, `-`, `_`, dots; labels of 1 to 63 bytes).
fn parse_name(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or("must be IP:port or name:port")?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or("the port must be 1 to 65535")?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("is not an IP address or a valid DNS name with a port".into());
    }
    Ok((host, port))
}

pub fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    match s {
        "client_ip" => Ok(HashKey::ClientIp),
        "path" => Ok(HashKey::Path),
        _ => match s.strip_prefix("header:") {
            Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                Ok(HashKey::Header(name.to_ascii_lowercase()))
            }
            _ => Err(format!("`{s}` is not one of client_ip, path, header:NAME")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(parse_name("App:8000"), Ok(("app".into(), 8000)));
        assert_eq!(
            parse_name("api.internal.:8080"),
            Ok(("api.internal".into(), 8080))
        );
        for bad in [
            "app",
            "app:0",
            "app:x",
            "-app:80",
            "a..b:80",
            ":80",
            "a b:80",
            "[::1]x:80",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
