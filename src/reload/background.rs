//! Keeping reload work out of the request path. A rebuild with 100,000 tenants takes about a
//! second of CPU and frees a few hundred MiB; neither should land on a proxy worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::priority::Job;

/// How long a retired snapshot waits for the last request still using it.
const RETIRE_PATIENCE: Duration = Duration::from_secs(600);
const RETIRE_POLL: Duration = Duration::from_millis(50);
/// A reload of 100,000 tenants takes about a second; three mean it is being starved.
const PATIENCE: Duration = Duration::from_secs(3);

/// Runs `work` on its own thread as background work (see `priority`), so that on a busy
/// machine the proxy workers win the CPU while a large configuration is rebuilt; raised to
/// nice 10 if it has not finished after `PATIENCE`.
pub(super) async fn run_low_priority<T, F>(name: &str, work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, mut rx) = oneshot::channel();
    let job = Job::new();
    let worker_job = job.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _member = worker_job.join();
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a reload thread");
        return None;
    }
    match tokio::time::timeout(PATIENCE, &mut rx).await {
        Ok(done) => done.ok(),
        Err(_) => {
            tracing::info!(
                after_s = PATIENCE.as_secs(),
                "reload still running; raising its CPU priority so that a busy machine cannot starve it"
            );
            job.raise();
            rx.await.ok()
        }
    }
}

/// Drops `old` on a background thread once no request holds it any more. Requests keep
/// their snapshot for their whole life; without this the last of them would free the old
/// routing table inside a proxy worker, stalling every request queued behind it.
pub(super) fn retire<T: Send + Sync + 'static>(old: Arc<T>) {
    let spawned = std::thread::Builder::new()
        .name("porteiro-retire".into())
        .spawn(move || {
            // Never raised: on a saturated machine, freeing late only holds memory longer.
            let _member = Job::new().join();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn low_priority_work_returns_its_result() {
        assert_eq!(run_low_priority("t", || 41 + 1).await, Some(42));
    }

    /// A reload starved past `PATIENCE` is raised (paused time makes the wait instant).
    #[cfg(target_os = "linux")]
    #[tokio::test(start_paused = true)]
    async fn long_work_is_raised_to_nice_10() {
        let nice = run_low_priority("t", || {
            let nice = || unsafe {
                // SAFETY: queries the calling thread.
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while nice() != 10 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            nice()
        })
        .await;
        assert_eq!(nice, Some(10));
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
