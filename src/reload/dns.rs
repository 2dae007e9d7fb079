//! Backend names kept resolved: at load, and in the background every `dns_refresh` (or
//! sooner, when the records' TTL runs out first). A change of addresses rebuilds the routing
//! table like a reload: addresses that stay keep their health state, new ones join (after a
//! passing probe when the pool has an active check), gone ones leave once their requests end.
//! A failed lookup keeps the last good addresses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Reloader;
use crate::config::model::{Config, Resolved};
use crate::dns;

/// How often the refresher looks for names that are due.
const TICK: Duration = Duration::from_millis(250);
/// A name that failed, or never resolved, is tried again this soon (or at its refresh, if
/// sooner): a pool of names only has no backend until then.
const RETRY: Duration = Duration::from_secs(2);

/// Fills `config.resolved`: a name `before` has keeps its addresses (the refresher keeps them
/// current); a new name is looked up now, within `dns::LOOKUP_LIMIT`. A name that fails is
/// logged and counted, and adds no backend until it resolves.
pub fn resolve_names(config: &mut Config, before: Option<&Resolved>) {
    for (name, error) in resolve_names_quietly(config, before) {
        crate::metrics::get().dns_failed(&name);
        tracing::warn!(
            name,
            error,
            "cannot resolve a backend name; it adds no backend until it resolves"
        );
    }
}

/// `resolve_names` without logging: the names that failed, with why, in name order.
pub fn resolve_names_quietly(
    config: &mut Config,
    before: Option<&Resolved>,
) -> Vec<(String, String)> {
    let wanted = dns::names_of(config);
    let mut table = Resolved::new();
    let mut missing = Vec::new();
    for name in wanted.keys() {
        match before.and_then(|b| b.get(name)) {
            Some(addrs) => {
                table.insert(name.clone(), addrs.clone());
            }
            None => missing.push(name.clone()),
        }
    }
    let mut failed = Vec::new();
    for (name, answer) in dns::lookup_all_blocking(config.server.resolver, &missing) {
        match answer {
            Ok(a) => {
                table.insert(name, a.addrs);
            }
            Err(error) => failed.push((name, error)),
        }
    }
    failed.sort();
    config.resolved = Arc::new(table);
    failed
}

pub struct DnsRefresher {
    reloader: Arc<Reloader>,
}

impl DnsRefresher {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut failing: HashSet<String> = HashSet::new();
        let mut resolver: Option<(Option<std::net::SocketAddr>, _)> = None;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let (server, names) = self.reloader.dns_names();
            due.retain(|n, _| names.contains_key(n));
            failing.retain(|n| names.contains_key(n));
            let now = Instant::now();
            let known = self.reloader.resolved();
            // Names resolved at load are first due one refresh later; the others soon.
            for (name, every) in names.iter() {
                let first = if known.contains_key(name) {
                    *every
                } else {
                    (*every).min(RETRY)
                };
                due.entry(name.clone()).or_insert(now + first);
            }
            let todo: Vec<String> = due
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(n, _)| n.clone())
                .collect();
            if todo.is_empty() {
                continue;
            }
            if resolver.as_ref().is_none_or(|(s, _)| *s != server) {
                match dns::resolver(server) {
                    Ok(r) => resolver = Some((server, r)),
                    Err(error) => {
                        tracing::error!(error, "cannot set up the DNS resolver");
                        continue;
                    }
                }
            }
            let Some((_, r)) = &resolver else { continue };
            let answers = dns::lookup_all(r, &todo).await;
            let mut changes = Resolved::new();
            for (name, answer) in answers {
                let every = names.get(&name).copied().unwrap_or(Duration::from_secs(5));
                match answer {
                    Ok(a) => {
                        if failing.remove(&name) {
                            tracing::info!(name, "backend name resolves again");
                        }
                        // A TTL of 0 must not turn into a busy loop.
                        let next = every.min(a.valid_for).max(TICK);
                        due.insert(name.clone(), now + next);
                        if known.get(&name) != Some(&a.addrs) {
                            changes.insert(name, a.addrs);
                        }
                    }
                    Err(error) => {
                        crate::metrics::get().dns_failed(&name);
                        if failing.insert(name.clone()) {
                            tracing::warn!(
                                name,
                                error,
                                "backend name lookup failed; keeping its last good addresses"
                            );
                        }
                        due.insert(name, now + every.min(RETRY));
                    }
                }
            }
            if !changes.is_empty() {
                tracing::info!(names = ?changes.keys().collect::<Vec<_>>(), "backend addresses changed");
                self.reloader.apply_resolved_in_background(changes).await;
            }
        }
    }
}
