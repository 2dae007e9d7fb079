//! What starts a reload besides the admin endpoint: file changes and SIGHUP.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::{Reloader, Trigger};

/// Quiet time after the last file event before reloading: editors write a file in several
/// steps (truncate, write, rename), and a directory sync touches many files at once.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A steady stream of events still reloads at least this often.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Reloads when the main file or a tenant file is written, renamed, created or deleted.
/// Directories are watched rather than files, so write-then-rename and delete-and-recreate
/// are seen like in-place writes.
pub struct ConfigWatcher {
    reloader: Arc<Reloader>,
}

impl ConfigWatcher {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let main_file = self.reloader.main_file().to_path_buf();
        // Certificate, key and CA files of the running config: their names are not `*.toml`.
        // The watched directories count too: `mv tenants.new tenants.d` is an event on the
        // name `tenants.d` in its parent, and drops the watch on the old directory.
        let known_paths = |r: &Reloader| {
            let mut paths = r.source_files();
            paths.extend(r.watched_dirs());
            paths
        };
        let key_files = Arc::new(Mutex::new(known_paths(&self.reloader)));
        let key_files_seen = key_files.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                let known = key_files_seen.lock().unwrap_or_else(|p| p.into_inner());
                if is_relevant(&event, &main_file, &known) {
                    let _ = tx.send(());
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the configuration files; reload with SIGHUP or POST /-/reload");
                return;
            }
        };
        let mut watched = Vec::new();
        rewatch(&mut watcher, &mut watched, self.reloader.watched_dirs());
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            settle(&mut rx).await;
            self.reloader.reload_in_background(Trigger::File).await;
            *key_files.lock().unwrap_or_else(|p| p.into_inner()) = known_paths(&self.reloader);
            rewatch(&mut watcher, &mut watched, self.reloader.watched_dirs());
        }
    }
}

/// Waits until no event came for `DEBOUNCE`, or `MAX_DELAY` passed.
async fn settle(rx: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    while let Ok(Some(())) = tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + DEBOUNCE),
        rx.recv(),
    )
    .await
    {}
}

/// A watched directory and the identity (device, inode) it had when the watch was set.
type Watched = (PathBuf, Option<(u64, u64)>);

fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Watches `dirs`. Drops watches on directories no longer named (tenants_dir changed), and
/// watches again a directory that was replaced under the same name (a watch follows the
/// directory, not its name).
fn rewatch(watcher: &mut impl Watcher, watched: &mut Vec<Watched>, dirs: Vec<PathBuf>) {
    watched.retain(|(dir, id)| {
        let keep = dirs.contains(dir) && *id == identity(dir);
        if !keep {
            let _ = watcher.unwatch(dir);
        }
        keep
    });
    for dir in dirs {
        if watched.iter().any(|(d, _)| *d == dir) {
            continue;
        }
        let id = identity(&dir);
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched.push((dir, id)),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
}

fn is_relevant(event: &notify::Event, main_file: &Path, sources: &HashSet<PathBuf>) -> bool {
    let kind_counts = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind_counts
        && event.paths.iter().any(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p == main_file
                || (name.ends_with(".toml") && !name.starts_with('.'))
                || sources.contains(p)
        })
}

/// Reloads on SIGHUP, as nginx and HAProxy operators expect (`systemctl reload`).
pub struct HangupReloader {
    reloader: Arc<Reloader>,
}

impl HangupReloader {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl BackgroundService for HangupReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            self.reloader.reload_in_background(Trigger::Signal).await;
        }
    }
}
