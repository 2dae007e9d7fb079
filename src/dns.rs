//! Resolving the DNS names of backends, with the system's resolver (`/etc/resolv.conf`,
//! `/etc/hosts`) or the server `[server] resolver` names. Lookups are bounded in time; what
//! to do with a failure (keep the last good answer) is the caller's decision.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

use crate::config::model::Config;

/// One name's addresses and how long they may be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Sorted, so two answers compare equal whatever order the server gave.
    pub addrs: Vec<IpAddr>,
    pub valid_for: Duration,
}

pub type Lookups = HashMap<String, Result<Answer, String>>;

/// How long one lookup may take before it counts as failed.
pub const LOOKUP_LIMIT: Duration = Duration::from_secs(2);

/// A resolver over `server`, or over the system's configuration.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = match server {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = LOOKUP_LIMIT;
    opts.attempts = 1;
    Ok(builder.build())
}

/// Resolves each of `names` once, concurrently.
pub async fn lookup_all(resolver: &TokioResolver, names: &[String]) -> Lookups {
    let mut lookups = tokio::task::JoinSet::new();
    for name in names {
        let (resolver, name) = (resolver.clone(), name.clone());
        lookups.spawn(async move {
            let answer = lookup(&resolver, &name).await;
            (name, answer)
        });
    }
    let mut out = Lookups::new();
    while let Some(done) = lookups.join_next().await {
        if let Ok((name, answer)) = done {
            out.insert(name, answer);
        }
    }
    out
}

async fn lookup(resolver: &TokioResolver, name: &str) -> Result<Answer, String> {
    match tokio::time::timeout(LOOKUP_LIMIT, resolver.lookup_ip(name)).await {
        Ok(Ok(found)) => {
            let mut addrs: Vec<IpAddr> = found.iter().collect();
            addrs.sort();
            addrs.dedup();
            let valid_for = found
                .valid_until()
                .saturating_duration_since(Instant::now());
            Ok(Answer { addrs, valid_for })
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {LOOKUP_LIMIT:?}")),
    }
}

/// `lookup_all` from synchronous code (start-up, the reload thread), on a runtime of its own.
pub fn lookup_all_blocking(server: Option<SocketAddr>, names: &[String]) -> Lookups {
    if names.is_empty() {
        return Lookups::new();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let failed = |why: String| {
        names
            .iter()
            .map(|n| (n.clone(), Err(why.clone())))
            .collect()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return failed(e.to_string()),
    };
    runtime.block_on(async {
        match resolver(server) {
            Ok(r) => lookup_all(&r, names).await,
            Err(e) => failed(e),
        }
    })
}

/// Every name the configuration's pools use, with the shortest `dns_refresh` asking for it.
pub fn names_of(config: &Config) -> BTreeMap<String, Duration> {
    let mut names: BTreeMap<String, Duration> = BTreeMap::new();
    for t in &config.tenants {
        for p in &t.pools {
            for n in &p.names {
                let every = names.entry(n.host.clone()).or_insert(p.dns_refresh);
                *every = (*every).min(p.dns_refresh);
            }
        }
    }
    names
}
