//! The GET response cache: `policy` (what may be stored, for how long; pure), `evict` (the
//! SIEVE queue; pure) and `store` (pingora `Storage`, one budget per tenant). The proxy's
//! cache hooks live in `proxy::cache`; the process-wide store and lock live here because
//! pingora wants them `'static`.

pub mod evict;
pub mod policy;
pub mod store;

use std::sync::OnceLock;
use std::time::Duration;

use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};

pub use store::CacheStore;

use crate::config::model::Config;

/// Gives every tenant of `config` that caches its partition and budget (a new generation:
/// entries of kept tenants stay, removed tenants' go).
pub fn configure(config: &Config) {
    let tenants: Vec<(&str, Option<u64>)> = config
        .tenants
        .iter()
        .filter_map(|t| {
            let c = t.cache.as_ref().filter(|c| c.enabled)?;
            Some((t.id.as_str(), c.max_size))
        })
        .collect();
    store().configure(&budgets(config.server.cache.max_memory, &tenants));
}

/// The one storage of the process (tenants are partitions inside it).
pub fn store() -> &'static CacheStore {
    static STORE: OnceLock<CacheStore> = OnceLock::new();
    STORE.get_or_init(CacheStore::default)
}

/// Coalesces concurrent misses for one key. The age timeout frees a lock whose writer is
/// stuck; waiters have their own bound (`[cache] lock_timeout`).
pub fn lock() -> &'static CacheKeyLockImpl {
    static LOCK: OnceLock<Box<CacheKeyLockImpl>> = OnceLock::new();
    LOCK.get_or_init(|| CacheLock::new_boxed(Duration::from_secs(60)))
        .as_ref()
}

/// Each cached tenant's budget: its `max_size` (default `max_memory / 8`), all scaled down
/// in proportion when they add up to more than `max_memory`, so the sum never exceeds it.
pub fn budgets<'a>(max_memory: u64, tenants: &[(&'a str, Option<u64>)]) -> Vec<(&'a str, u64)> {
    if max_memory == 0 {
        return Vec::new();
    }
    let wanted: Vec<(&str, u64)> = tenants
        .iter()
        .map(|(t, size)| (*t, size.unwrap_or(max_memory / 8).max(1)))
        .collect();
    let total: u128 = wanted.iter().map(|(_, b)| *b as u128).sum();
    if total <= max_memory as u128 {
        return wanted;
    }
    wanted
        .into_iter()
        .map(|(t, b)| (t, (b as u128 * max_memory as u128 / total) as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn budgets_never_add_up_to_more_than_max_memory() {
        let b = super::budgets(1000, &[("a", Some(100)), ("b", None)]);
        assert_eq!(b, [("a", 100), ("b", 125)]);
        let b = super::budgets(1000, &[("a", Some(1500)), ("b", Some(500))]);
        assert_eq!(b, [("a", 750), ("b", 250)]);
        assert!(super::budgets(0, &[("a", Some(1))]).is_empty());
    }
}
