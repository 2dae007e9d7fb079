//! Quota counts on disk, so a restart does not hand every tenant a fresh quota. Written
//! atomically (temporary file, then rename) every `quota_persist_interval` and at graceful
//! shutdown; a crash loses at most one interval of counts. A missing or corrupt file is
//! reported and counting starts from zero: it never stops porteiro.
//!
//! During a graceful upgrade both processes count and save. Each save says which process
//! wrote it and when that process started; the newer process adds what the older one counted
//! since it last looked (so nothing the old one counts in its grace period is lost), and the
//! older one never takes the newer one's counts in.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use crate::snapshot::SharedSnapshot;

/// The file's contents: per tenant, the window id and the requests counted in it.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct QuotaState {
    pub version: u32,
    pub tenants: HashMap<String, (u64, u64)>,
    /// The process that wrote the file, and when it started (ns since the Unix epoch).
    #[serde(default)]
    pub writer: u32,
    #[serde(default)]
    pub writer_started: u64,
}

impl QuotaState {
    pub fn read(path: &Path) -> Result<QuotaState, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(QuotaState::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a quota state file: {e}", path.display()))
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        // One temporary name per process: during a graceful upgrade the old and the new
        // process both save, and must not write into each other's file.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The counts of every tenant with a quota in the snapshot serving now.
    pub fn collect(snapshot: &crate::snapshot::Snapshot) -> QuotaState {
        let tenants = snapshot
            .tenants
            .iter()
            .zip(&snapshot.limiters)
            .filter_map(|(t, l)| {
                let q = l.as_ref()?.quota.as_ref()?;
                Some((t.id.to_string(), q.snapshot()))
            })
            .collect();
        QuotaState {
            version: 1,
            tenants,
            writer: std::process::id(),
            writer_started: process_started(),
        }
    }

    /// Restores counts into the snapshot's quota counters (those of the current window).
    pub fn apply(&self, snapshot: &crate::snapshot::Snapshot, now: SystemTime) {
        for (t, l) in snapshot.tenants.iter().zip(&snapshot.limiters) {
            if let (Some(q), Some(&(window, used))) = (
                l.as_ref().and_then(|l| l.quota.as_ref()),
                self.tenants.get(t.id.as_ref()),
            ) {
                q.restore(window, used, now);
            }
        }
    }
}

/// When this process started, as saved in the file (ns since the Unix epoch).
fn process_started() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// Loads the state at start, then saves it periodically and once more at shutdown.
pub struct QuotaPersister {
    pub path: PathBuf,
    pub interval: Duration,
    pub snapshot: Arc<SharedSnapshot>,
    /// Counts of an older process already added here, per tenant: (window, used).
    pub merged: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

impl QuotaPersister {
    pub fn new(path: PathBuf, interval: Duration, snapshot: Arc<SharedSnapshot>) -> Self {
        process_started();
        Self {
            path,
            interval,
            snapshot,
            merged: Default::default(),
        }
    }

    pub fn load(&self) {
        match QuotaState::read(&self.path) {
            Ok(state) => {
                state.apply(&self.snapshot.load(), SystemTime::now());
                *self.lock_merged() = state.tenants;
            }
            Err(e) => tracing::error!(error = %e, "quota counts start from zero"),
        }
    }

    /// Adds what an older process counted since this one last looked at its file.
    fn merge_older(&self, on_disk: &QuotaState, now: SystemTime) {
        let older = on_disk.writer != std::process::id()
            && on_disk.writer_started != 0
            && on_disk.writer_started < process_started();
        if !older {
            return;
        }
        let snapshot = self.snapshot.load();
        let mut merged = self.lock_merged();
        for (t, l) in snapshot.tenants.iter().zip(&snapshot.limiters) {
            let (Some(q), Some(&(window, used))) = (
                l.as_ref().and_then(|l| l.quota.as_ref()),
                on_disk.tenants.get(t.id.as_ref()),
            ) else {
                continue;
            };
            let seen = merged
                .get(t.id.as_ref())
                .filter(|(w, _)| *w == window)
                .map_or(0, |(_, u)| *u);
            q.add(window, used.saturating_sub(seen), now);
            merged.insert(t.id.to_string(), (window, used));
        }
    }

    fn lock_merged(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.merged.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self) {
        if let Ok(on_disk) = QuotaState::read(&self.path) {
            self.merge_older(&on_disk, SystemTime::now());
        }
        let state = QuotaState::collect(&self.snapshot.load());
        if let Err(e) = state.write(&self.path) {
            tracing::error!(file = %self.path.display(), error = %e, "cannot save quota counts");
        }
    }
}

#[async_trait]
impl BackgroundService for QuotaPersister {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(self.interval) => self.save(),
            }
        }
        self.save();
    }
}
