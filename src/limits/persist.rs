//! Quota counts on disk, so a restart does not hand every tenant a fresh quota. Written
//! atomically (temporary file, then rename) every `quota_persist_interval` and at graceful
//! shutdown; a crash loses at most one interval of counts. A missing or corrupt file is
//! reported and counting starts from zero: it never stops porteiro.

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

/// Loads the state at start, then saves it periodically and once more at shutdown.
pub struct QuotaPersister {
    pub path: PathBuf,
    pub interval: Duration,
    pub snapshot: Arc<SharedSnapshot>,
}

impl QuotaPersister {
    pub fn load(&self) {
        match QuotaState::read(&self.path) {
            Ok(state) => state.apply(&self.snapshot.load(), SystemTime::now()),
            Err(e) => tracing::error!(error = %e, "quota counts start from zero"),
        }
    }

    fn save(&self) {
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
