//! Backend entries and consistent-hash keys of a pool.

use std::net::SocketAddr;
use std::path::Path;

use toml::Value;

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::{BackendConfig, HashKey};

const BACKEND_KEYS: &[&str] = &["addr", "weight"];

pub fn parse_backend(
    file: &Path,
    key: &str,
    v: &Value,
    errs: &mut ConfigErrors,
) -> Option<BackendConfig> {
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
                "expected \"ip:port\" or { addr = \"ip:port\", weight = N }",
            );
            return None;
        }
    };
    match addr_text.parse::<SocketAddr>() {
        Ok(addr) => Some(BackendConfig { addr, weight }),
        Err(_) => {
            let at = if matches!(v, Value::Table(_)) {
                format!("{key}.addr")
            } else {
                key.to_string()
            };
            errs.push(
                file,
                at,
                format!("`{addr_text}` must be IP:port (DNS names are not resolved)"),
            );
            None
        }
    }
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
