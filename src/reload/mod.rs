//! Live reconfiguration. Every trigger (file watcher, SIGHUP, `POST /-/reload`) goes through
//! `Reloader::reload`: load -> validate everything -> build a complete snapshot (taking over
//! the state of unchanged backends) -> one atomic swap. On any error nothing changes and the
//! errors are kept for the status endpoint.

mod background;
mod dns;
mod triggers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;

pub use dns::{resolve_names, resolve_names_quietly, DnsRefresher};
pub use triggers::{ConfigWatcher, HangupReloader};

use crate::config::model::{Config, ServerConfig};
use crate::config::{self, ConfigErrors};
use crate::snapshot::{Counts, SharedSnapshot, Snapshot};

/// What asked for a reload, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    File,
    Signal,
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        generation: u64,
        /// Tenant files refused on their own (also in `Status::tenant_errors`).
        refused: Vec<RefusedFile>,
    },
    /// The files are byte for byte what is already serving.
    Unchanged {
        generation: u64,
    },
    Failed(ConfigErrors),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReport {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// A tenant file refused for its errors while every other file applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedFile {
    pub file: String,
    /// The tenant whose last good version serves in its place; null: the file serves nothing.
    pub serving_last_good: Option<String>,
    pub errors: Vec<ErrorReport>,
}

impl ErrorReport {
    fn of(e: &config::ConfigError) -> Self {
        Self {
            file: e.file.display().to_string(),
            key: e.key.clone(),
            reason: e.reason.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedReload {
    pub at: String,
    pub trigger: Trigger,
    pub errors: Vec<ErrorReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadCounts {
    pub applied: u64,
    pub unchanged: u64,
    pub failed: u64,
}

/// The status `GET /-/config` shows. Never carries secrets (the admin token, private keys).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub generation: u64,
    pub loaded_at: String,
    pub digest: String,
    pub sources: Vec<String>,
    pub tenants: usize,
    pub hosts: usize,
    pub pools: usize,
    pub backends: usize,
    /// Milliseconds the last applied reload took from reading files to the swap.
    pub last_reload_ms: Option<u64>,
    pub reloads: ReloadCounts,
    /// The last failed reload, cleared when a later reload succeeds.
    pub last_error: Option<FailedReload>,
    /// Tenant files refused on their own in the configuration serving now.
    pub tenant_errors: Vec<RefusedFile>,
    /// What serves although wrong (an expired certificate).
    pub warnings: Vec<ErrorReport>,
    /// Settings changed in the files that only a restart (or graceful upgrade) applies.
    pub restart_required: Vec<String>,
}

struct State {
    /// The server settings the running listeners were started with.
    started_with: ServerConfig,
    status: Status,
    /// Parsed tenant files of the last load, so a reload re-parses only what changed.
    cache: config::ParseCache,
    /// The configuration serving now: a refused tenant file keeps its version from here.
    last_good: Config,
    /// The DNS names its pools use, with how often each is resolved again.
    /// Shared with the DNS refresher, which asks for it four times a second.
    dns_names: Arc<std::collections::BTreeMap<String, std::time::Duration>>,
}

pub struct Reloader {
    main_file: PathBuf,
    snapshot: Arc<SharedSnapshot>,
    /// Serialises reloads: two triggers at once never interleave their steps.
    state: Mutex<State>,
    admin_token: ArcSwapOption<String>,
}

impl Reloader {
    /// Wraps the configuration the process started with (generation 1, already in `snapshot`)
    /// and the parse cache that loaded it.
    pub fn new(
        main_file: &Path,
        config: &Config,
        cache: config::ParseCache,
        snapshot: Arc<SharedSnapshot>,
    ) -> Self {
        let status = status_for(&snapshot.load(), config, ReloadCounts::default());
        Self {
            main_file: main_file.to_path_buf(),
            snapshot,
            admin_token: ArcSwapOption::new(config.server.admin_token.clone().map(Arc::new)),
            state: Mutex::new(State {
                started_with: config.server.clone(),
                status,
                cache,
                last_good: config.clone(),
                dns_names: Arc::new(crate::dns::names_of(config)),
            }),
        }
    }

    /// Reloads now (blocking: reads files and builds the snapshot). Safe to call from any
    /// thread; concurrent calls run one after the other.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let mut state = self.lock();
        let started = Instant::now();
        let state = &mut *state;
        let mut loaded =
            config::load_isolating(&self.main_file, &mut state.cache, Some(&state.last_good));
        if loaded
            .as_ref()
            .is_ok_and(|c| crate::config::lost_tenant_file(&state.last_good, c))
        {
            // Editors delete a file and write it anew: a reload that reads the directory in
            // between would drop the tenant. Look again before dropping anybody.
            std::thread::sleep(RELIST_PAUSE);
            loaded =
                config::load_isolating(&self.main_file, &mut state.cache, Some(&state.last_good));
        }
        let loaded = loaded.and_then(|c| admin_token_rule(&state.started_with, c));
        let mut config = match loaded {
            Ok(c) => c,
            Err(errors) => {
                tracing::error!(
                    trigger = trigger.as_str(),
                    errors = errors.len(),
                    "reload refused; the running configuration stays"
                );
                for e in &errors.0 {
                    tracing::error!("  {e}");
                }
                state.status.reloads.failed += 1;
                crate::metrics::get().reload("failed");
                state.status.last_error = Some(FailedReload {
                    at: now_rfc3339(),
                    trigger,
                    errors: errors.0.iter().map(ErrorReport::of).collect(),
                });
                return Outcome::Failed(errors);
            }
        };
        let current = self.snapshot.load_full();
        if config.digest == current.digest {
            state.status.reloads.unchanged += 1;
            crate::metrics::get().reload("unchanged");
            state.status.last_error = None;
            return Outcome::Unchanged {
                generation: current.generation,
            };
        }
        drop(current);
        report_faults(&config);
        resolve_names(&mut config, Some(&state.last_good.resolved));
        let generation = self.install(&config);
        crate::cache::configure(&config);
        let took = started.elapsed();
        let m = crate::metrics::get();
        m.reload("applied");
        m.set_max_tenants(config.server.metrics_max_tenants);
        m.set_counting(config.server.metrics_enabled);

        let restart_required = restart_required(&state.started_with, &config.server);
        for key in &restart_required {
            if key == "server.upgrade_socket" {
                // The running process hands its sockets over through the path it started
                // with: an upgrade to a new path would find nobody waiting there.
                tracing::warn!(key = %key, "changed in the files but needs a restart to apply (not a graceful upgrade)");
            } else {
                tracing::warn!(key = %key, "changed in the files but needs a restart (or graceful upgrade) to apply");
            }
        }
        let mut reloads = std::mem::take(&mut state.status.reloads);
        reloads.applied += 1;
        state.status = status_for(&self.snapshot.load(), &config, reloads);
        state.status.last_reload_ms = Some(took.as_millis() as u64);
        state.status.restart_required = restart_required;
        let refused = state.status.tenant_errors.clone();
        self.admin_token
            .store(config.server.admin_token.clone().map(Arc::new));
        state.dns_names = Arc::new(crate::dns::names_of(&config));
        state.last_good = config;
        let c = self.snapshot.load().counts();
        tracing::info!(
            trigger = trigger.as_str(),
            generation,
            tenants = c.tenants,
            hosts = c.hosts,
            backends = c.backends,
            refused_tenant_files = refused.len(),
            took_ms = took.as_millis() as u64,
            "configuration reloaded"
        );
        Outcome::Applied {
            generation,
            refused,
        }
    }

    /// The resolver and the backend names to keep resolved, with their refresh intervals.
    pub fn dns_names(
        &self,
    ) -> (
        Option<std::net::SocketAddr>,
        Arc<std::collections::BTreeMap<String, std::time::Duration>>,
    ) {
        let state = self.lock();
        (state.last_good.server.resolver, state.dns_names.clone())
    }

    /// The addresses backend names resolve to in the configuration serving now.
    pub fn resolved(&self) -> Arc<crate::config::model::Resolved> {
        self.lock().last_good.resolved.clone()
    }

    /// Rebuilds the routing table with new addresses for some backend names (a generation of
    /// its own, like a reload); nothing else changes. Only the names given change, and only
    /// those the configuration still uses: a reload in between keeps what it resolved.
    pub fn apply_resolved(&self, changes: crate::config::model::Resolved) {
        let mut state = self.lock();
        let mut resolved = (*state.last_good.resolved).clone();
        for (name, addrs) in changes {
            if state.dns_names.contains_key(&name) {
                resolved.insert(name, addrs);
            }
        }
        if *state.last_good.resolved == resolved {
            return;
        }
        // The configuration is otherwise the same: changed in place, not copied.
        state.last_good.resolved = Arc::new(resolved);
        self.install(&state.last_good);
        let reloads = std::mem::take(&mut state.status.reloads);
        let mut status = status_for(&self.snapshot.load(), &state.last_good, reloads);
        status.last_reload_ms = state.status.last_reload_ms;
        status.last_error = state.status.last_error.take();
        status.restart_required = std::mem::take(&mut state.status.restart_required);
        state.status = status;
    }

    /// Builds the next generation from `config` on top of the one serving (taking over the
    /// state of unchanged backends), swaps it in, frees the old one off the request path and
    /// drops metric series the new one no longer has. Returns the new generation.
    fn install(&self, config: &Config) -> u64 {
        let current = self.snapshot.load_full();
        let generation = current.generation + 1;
        let next = Snapshot::build(config, generation, Some(&current));
        drop(current);
        let previous = self.snapshot.swap(Arc::new(next));
        background::retire(previous);
        crate::metrics::get().retain(&self.snapshot.load());
        generation
    }

    /// `apply_resolved` on a low-priority thread.
    pub async fn apply_resolved_in_background(
        self: &Arc<Self>,
        changes: crate::config::model::Resolved,
    ) {
        let reloader = self.clone();
        background::run_low_priority("porteiro-dns", move || reloader.apply_resolved(changes))
            .await;
    }

    /// `reload` on a low-priority thread of its own, for async callers.
    pub async fn reload_in_background(self: &Arc<Self>, trigger: Trigger) -> Option<Outcome> {
        let reloader = self.clone();
        background::run_low_priority("porteiro-reload", move || reloader.reload(trigger)).await
    }

    pub fn status(&self) -> Status {
        self.lock().status.clone()
    }

    /// The admin token of the configuration serving now (rotating it needs no restart).
    /// Lock-free: an admin request (a liveness probe) never waits for a reload.
    pub fn admin_token(&self) -> Option<Arc<String>> {
        self.admin_token.load_full()
    }

    /// The directories whose changes may change the configuration: the main file's, the
    /// tenants directory, and those holding certificates, keys and CA files.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let state = self.lock();
        let mut dirs = vec![
            self.main_file
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            state.last_good.server.tenants_dir.clone(),
        ];
        for source in &state.status.sources {
            if let Some(dir) = Path::new(source).parent() {
                if !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_path_buf());
                }
            }
        }
        dirs
    }

    /// Every file the running configuration was read from.
    pub fn source_files(&self) -> std::collections::HashSet<PathBuf> {
        self.lock()
            .status
            .sources
            .iter()
            .map(PathBuf::from)
            .collect()
    }

    pub fn main_file(&self) -> &Path {
        &self.main_file
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would leave plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How long a reload that finds a tenant file gone waits before it reads the directory again.
const RELIST_PAUSE: std::time::Duration = std::time::Duration::from_millis(300);

/// The `[server]` keys whose change only a restart applies, by name.
/// The admin listener stays where it was bound until a restart, so the token rule (a
/// listener reachable from other machines needs a token) is checked against that address,
/// not only the one in the files: removing the token along with a move to loopback must not
/// leave the bound listener open.
fn admin_token_rule(started: &ServerConfig, config: Config) -> Result<Config, ConfigErrors> {
    match started.admin {
        Some(bound) if !bound.ip().is_loopback() && config.server.admin_token.is_none() => {
            let mut errs = ConfigErrors::default();
            let main = config.sources.first().cloned().unwrap_or_default();
            errs.push(
                &main,
                "server.admin_token",
                format!("the admin listener is bound to {bound} until a restart: keep admin_token until then"),
            );
            Err(errs)
        }
        _ => Ok(config),
    }
}

fn restart_required(started: &ServerConfig, now: &ServerConfig) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(format!("server.{key}"));
        }
    };
    check("listen", started.listen != now.listen);
    check("listen_tls", started.listen_tls != now.listen_tls);
    check(
        "tls_session_tickets",
        started.tls_session_tickets != now.tls_session_tickets,
    );
    check(
        "tls_session_cache",
        started.tls_session_cache != now.tls_session_cache,
    );
    check("threads", started.threads != now.threads);
    check("work_stealing", started.work_stealing != now.work_stealing);
    check("h2c", started.h2c != now.h2c);
    check("admin", started.admin != now.admin);
    check("grace_period", started.grace_period != now.grace_period);
    check(
        "graceful_shutdown_timeout",
        started.graceful_shutdown_timeout != now.graceful_shutdown_timeout,
    );
    check("watch", started.watch != now.watch);
    check("log_format", started.log_format != now.log_format);
    check(
        "upgrade_socket",
        started.upgrade_socket != now.upgrade_socket,
    );
    check("access_log", started.access_log != now.access_log);
    check(
        "quota_state_file",
        started.quota_state_file != now.quota_state_file,
    );
    check(
        "quota_persist_interval",
        started.quota_persist_interval != now.quota_persist_interval,
    );
    // The fleet's connection and every limiter's share are set up once, at start.
    check("cluster", started.cluster != now.cluster);
    keys
}

fn status_for(snapshot: &Snapshot, config: &Config, reloads: ReloadCounts) -> Status {
    let Counts {
        tenants,
        hosts,
        pools,
        backends,
    } = snapshot.counts();
    Status {
        generation: snapshot.generation,
        loaded_at: humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
        digest: snapshot.digest.clone(),
        sources: config
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        tenants,
        hosts,
        pools,
        backends,
        last_reload_ms: None,
        reloads,
        last_error: None,
        tenant_errors: config
            .faults
            .iter()
            .map(|f| RefusedFile {
                file: f.file.display().to_string(),
                serving_last_good: f.kept.clone(),
                errors: f.errors.iter().map(ErrorReport::of).collect(),
            })
            .collect(),
        warnings: config.warnings.iter().map(ErrorReport::of).collect(),
        restart_required: Vec::new(),
    }
}

/// Logs the tenant files refused and the warnings of a configuration about to serve.
pub fn report_faults(config: &Config) {
    for f in &config.faults {
        let file = f.file.display().to_string();
        match &f.kept {
            Some(id) => {
                tracing::error!(file, tenant = %id, "tenant file refused; its last good version keeps serving")
            }
            None => tracing::error!(file, "tenant file refused; it serves nothing until fixed"),
        }
        for e in &f.errors {
            tracing::error!("  {e}");
        }
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    crate::metrics::get().set_refused_tenant_files(config.faults.len());
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
