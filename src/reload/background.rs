//! Keeping reload work out of the request path. A rebuild with 100,000 tenants takes about a
//! second of CPU and frees a few hundred MiB; neither should land on a proxy worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a retired snapshot waits for the last request still using it.
const RETIRE_PATIENCE: Duration = Duration::from_secs(600);
const RETIRE_POLL: Duration = Duration::from_millis(50);

/// Runs `work` on its own thread at a lower CPU priority, so that on a busy machine the
/// proxy workers win the CPU while a large configuration is rebuilt.
pub(super) async fn run_low_priority<T, F>(name: &str, work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_this_thread_priority();
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a reload thread");
        return None;
    }
    rx.await.ok()
}

/// Drops `old` on a background thread once no request holds it any more. Requests keep
/// their snapshot for their whole life; without this the last of them would free the old
/// routing table inside a proxy worker, stalling every request queued behind it.
pub(super) fn retire<T: Send + Sync + 'static>(old: Arc<T>) {
    let spawned = std::thread::Builder::new()
        .name("porteiro-retire".into())
        .spawn(move || {
            lower_this_thread_priority();
            let deadline = Instant::now() + RETIRE_PATIENCE;
            // Bounded: a request that outlives the patience (a long stream) frees it itself.
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(RETIRE_POLL);
            }
            drop(old);
        });
    if let Err(e) = spawned {
        // The snapshot was moved into the failed closure and is dropped here; harmless.
        tracing::warn!(error = %e, "cannot start a thread to free the old configuration");
    }
}

/// Nice 10 for the calling thread only (Linux applies priorities per thread).
fn lower_this_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id; failure only leaves the
    // priority unchanged.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn low_priority_work_returns_its_result() {
        assert_eq!(run_low_priority("t", || 41 + 1).await, Some(42));
    }

    #[test]
    fn retire_frees_once_the_last_reader_lets_go() {
        let old = Arc::new(7u8);
        let reader = old.clone();
        let weak = Arc::downgrade(&old);
        retire(old);
        std::thread::sleep(RETIRE_POLL * 3);
        assert!(
            weak.upgrade().is_some(),
            "freed while a reader still held it"
        );
        drop(reader);
        let deadline = Instant::now() + Duration::from_secs(5);
        while weak.upgrade().is_some() && Instant::now() < deadline {
            std::thread::sleep(RETIRE_POLL);
        }
        assert!(weak.upgrade().is_none(), "never freed");
    }
}
