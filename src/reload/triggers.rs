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
///
/// The watch is set up in `new`, before any listener accepts: a file written right after
/// porteiro answers its first request is then never missed.
pub struct ConfigWatcher {
    reloader: Arc<Reloader>,
    armed: Mutex<Option<Armed>>,
}

/// A live watch and what it reports into.
struct Armed {
    watcher: notify::RecommendedWatcher,
    watched: Vec<Watched>,
    events: mpsc::UnboundedReceiver<()>,
    /// Certificate, key and CA files of the running config (their names are not `*.toml`),
    /// and the watched directories: `mv tenants.new tenants.d` is an event on the name
    /// `tenants.d` in its parent, and drops the watch on the old directory.
    known: Arc<Mutex<HashSet<PathBuf>>>,
    /// Sends into `events`: a new watch asks for one reload to catch what changed before it.
    nudge: mpsc::UnboundedSender<()>,
}

impl ConfigWatcher {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        let armed = arm(&reloader);
        Self {
            reloader,
            armed: Mutex::new(armed),
        }
    }
}

fn known_paths(r: &Reloader) -> HashSet<PathBuf> {
    let mut paths = r.source_files();
    paths.extend(r.watched_dirs());
    paths
}

fn arm(reloader: &Reloader) -> Option<Armed> {
    let (tx, events) = mpsc::unbounded_channel();
    let main_file = reloader.main_file().to_path_buf();
    let known = Arc::new(Mutex::new(known_paths(reloader)));
    let known_seen = known.clone();
    let nudge = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let known = known_seen.lock().unwrap_or_else(|p| p.into_inner());
            if is_relevant(&event, &main_file, &known) {
                let _ = tx.send(());
            }
        }
    });
    let mut armed = match watcher {
        Ok(watcher) => Armed {
            watcher,
            watched: Vec::new(),
            events,
            known,
            nudge,
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the configuration files; reload with SIGHUP or POST /-/reload");
            return None;
        }
    };
    // The configuration was read before this watch existed; one check closes that gap.
    rewatch(&mut armed, reloader.watched_dirs());
    Some(armed)
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.armed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut armed) = taken else { return };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = armed.events.recv() => if got.is_none() { return },
            }
            settle(&mut armed.events).await;
            self.reloader.reload_in_background(Trigger::File).await;
            *armed.known.lock().unwrap_or_else(|p| p.into_inner()) = known_paths(&self.reloader);
            rewatch(&mut armed, self.reloader.watched_dirs());
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
/// directory, not its name). Every new watch queues one reload: files may have changed
/// between the last read and the watch.
fn rewatch(armed: &mut Armed, dirs: Vec<PathBuf>) {
    let Armed {
        watcher, watched, ..
    } = armed;
    watched.retain(|(dir, id)| {
        let keep = dirs.contains(dir) && *id == identity(dir);
        if !keep {
            let _ = watcher.unwatch(dir);
        }
        keep
    });
    let mut added = false;
    for dir in dirs {
        if watched.iter().any(|(d, _)| *d == dir) {
            continue;
        }
        let id = identity(&dir);
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.push((dir, id));
                added = true;
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
    if added {
        let _ = armed.nudge.send(());
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
