//! `[cache]`: in the main file the memory all tenants share, in a tenant file whether and how
//! that tenant's GET responses are cached.

use std::path::Path;
use std::time::Duration;

use toml::Table;

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::{CacheMemory, TenantCache};

const MAIN_KEYS: &[&str] = &["max_memory", "lock_timeout"];
const TENANT_KEYS: &[&str] = &[
    "enabled",
    "max_size",
    "max_object_size",
    "default_ttl",
    "stale_while_revalidate",
    "stale_if_error",
    "ignore_cookies",
    "honor_client_no_cache",
];

/// Freshness or stale windows beyond a year are typos (and would overflow time arithmetic).
const MAX_CACHE_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest single object: beyond this an entry would crowd a whole budget.
const MAX_OBJECT_CEILING: u64 = 1 << 30;

pub fn parse_main(file: &Path, t: &Table, errs: &mut ConfigErrors) -> CacheMemory {
    let f = Fields::new(file, "cache", t, MAIN_KEYS);
    let mut c = CacheMemory::default();
    if let Some(v) = f.get("max_memory") {
        // "0" turns caching off everywhere; any other value is a size.
        let zero = v.as_integer() == Some(0) || v.as_str().is_some_and(|s| s.trim() == "0");
        if zero {
            c.max_memory = 0;
        } else if let Some(n) = f.size("max_memory", 1..=u64::MAX, errs) {
            c.max_memory = n;
        }
    }
    if let Some(d) = f.duration("lock_timeout", errs) {
        match d > Duration::from_secs(300) {
            true => errs.push(file, f.path("lock_timeout"), "at most 5m"),
            false => c.lock_timeout = d,
        }
    }
    f.finish(errs);
    c
}

pub fn parse_tenant(file: &Path, t: &Table, errs: &mut ConfigErrors) -> TenantCache {
    let f = Fields::new(file, "cache", t, TENANT_KEYS);
    let mut c = TenantCache::default();
    if let Some(b) = f.bool("enabled", errs) {
        c.enabled = b;
    }
    c.max_size = f.size("max_size", 1..=u64::MAX, errs);
    let explicit_object_size = f.size("max_object_size", 1..=MAX_OBJECT_CEILING, errs);
    if let Some(n) = explicit_object_size {
        c.max_object_size = n;
    }
    let mut secs = |key: &str| -> Option<Duration> {
        let v = f.get(key)?;
        // "0s" is a meaningful value here (no stale serving), unlike most durations.
        if v.as_str()
            .is_some_and(|s| s.trim() == "0" || s.trim() == "0s")
        {
            return Some(Duration::ZERO);
        }
        let d = f.duration(key, errs)?;
        if d > MAX_CACHE_DURATION {
            errs.push(f.file, f.path(key), "at most 365d");
            return None;
        }
        Some(d)
    };
    c.default_ttl = secs("default_ttl");
    if let Some(d) = secs("stale_while_revalidate") {
        c.stale_while_revalidate = d;
    }
    if let Some(d) = secs("stale_if_error") {
        c.stale_if_error = d;
    }
    c.ignore_cookies = f.bool("ignore_cookies", errs).unwrap_or(false);
    c.honor_client_no_cache = f.bool("honor_client_no_cache", errs).unwrap_or(false);
    if let Some(max) = c.max_size {
        // The default follows a smaller budget; a value written down must fit it.
        if explicit_object_size.is_none() {
            c.max_object_size = c.max_object_size.min(max);
        } else if c.max_object_size > max {
            errs.push(
                file,
                f.path("max_object_size"),
                format!("larger than this tenant's max_size ({max} bytes): such an object could never be kept"),
            );
        }
    }
    f.finish(errs);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(text: &str) -> (TenantCache, ConfigErrors) {
        let mut errs = ConfigErrors::default();
        let t: Table = toml::from_str(text).unwrap();
        (parse_tenant(Path::new("t.toml"), &t, &mut errs), errs)
    }

    #[test]
    fn tenant_keys_and_defaults() {
        let (c, errs) = tenant("");
        assert!(errs.is_empty());
        assert!(c.enabled);
        assert_eq!(c.max_size, None);
        assert_eq!(c.default_ttl, None);
        let (c, errs) = tenant(
            "enabled = true\nmax_size = \"64MiB\"\nmax_object_size = \"8MiB\"\ndefault_ttl = \"5m\"\n\
             stale_while_revalidate = \"30s\"\nstale_if_error = \"0s\"\nignore_cookies = true\n\
             honor_client_no_cache = true\n",
        );
        assert!(errs.is_empty(), "{errs}");
        assert_eq!(c.max_size, Some(64 << 20));
        assert_eq!(c.max_object_size, 8 << 20);
        assert_eq!(c.default_ttl, Some(Duration::from_secs(300)));
        assert_eq!(c.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(c.stale_if_error, Duration::ZERO);
        assert!(c.ignore_cookies && c.honor_client_no_cache);
    }

    #[test]
    fn errors_name_the_key() {
        let (_, errs) = tenant(
            "max_size = \"1MiB\"\nmax_object_size = \"2MiB\"\ndefault_ttl = \"x\"\nttl = 1\n",
        );
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["cache.default_ttl", "cache.max_object_size", "cache.ttl"]
        );
    }

    #[test]
    fn durations_are_bounded() {
        let (_, errs) = tenant("default_ttl = \"400d\"\nstale_if_error = \"1h\"\n");
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["cache.default_ttl"]);
        let mut errs = ConfigErrors::default();
        let t: Table = toml::from_str("lock_timeout = \"10m\"").unwrap();
        parse_main(Path::new("m"), &t, &mut errs);
        assert_eq!(errs.0[0].key, "cache.lock_timeout");
    }

    #[test]
    fn main_memory() {
        let mut errs = ConfigErrors::default();
        let t: Table = toml::from_str("max_memory = \"0\"").unwrap();
        assert_eq!(parse_main(Path::new("m"), &t, &mut errs).max_memory, 0);
        let t: Table = toml::from_str("max_memory = \"512MiB\"").unwrap();
        assert_eq!(
            parse_main(Path::new("m"), &t, &mut errs).max_memory,
            512 << 20
        );
        assert!(errs.is_empty());
        assert_eq!(CacheMemory::default().max_memory, 256 << 20);
    }
}
