//! CPU priority of background work (reloads, and the threads reading files for them).
//!
//! Such work runs as SCHED_IDLE: a proxy worker that wakes for a request preempts it at once,
//! where a merely niced thread can keep the core for a scheduler slice, adding milliseconds to
//! requests for as long as a large reload runs. SCHED_IDLE work can starve on a saturated
//! machine, and a reload must still apply under full load (that is when limits get changed),
//! so a `Job` that runs too long is raised to nice 10. Leaving SCHED_IDLE needs RLIMIT_NICE
//! >= 10 or CAP_SYS_NICE; where that is missing, background work starts at nice 10 instead.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// The nice value background work has when it is not (or no longer) SCHED_IDLE.
const BACKGROUND_NICE: i32 = 10;

/// A piece of background work and the threads doing it, so that it can be raised as a whole.
#[derive(Clone, Default)]
pub struct Job(Arc<Mutex<JobState>>);

#[derive(Default)]
struct JobState {
    raised: bool,
    /// Threads of this job alive now. A thread leaves before it exits, under this lock, so
    /// `raise` never touches a thread id the kernel may have reused.
    threads: Vec<Tid>,
}

type Tid = i32;

thread_local! {
    static CURRENT: RefCell<Option<Job>> = const { RefCell::new(None) };
}

/// Membership of the calling thread in a job; leaving is on drop.
pub struct Member {
    job: Job,
    tid: Tid,
}

impl Job {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the calling thread part of this job, at the job's current priority.
    pub fn join(&self) -> Member {
        let tid = current_tid();
        let mut state = self.lock();
        if state.raised || !can_leave_idle() {
            set_nice(tid);
        } else {
            set_idle();
        }
        state.threads.push(tid);
        drop(state);
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        Member {
            job: self.clone(),
            tid,
        }
    }

    /// Moves every thread of the job, and any that joins later, to nice 10.
    pub fn raise(&self) {
        let mut state = self.lock();
        state.raised = true;
        for &tid in &state.threads {
            set_nice(tid);
        }
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.job.lock().threads.retain(|&t| t != self.tid);
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// The job the calling thread belongs to, for threads it starts to join.
pub fn current_job() -> Option<Job> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Whether this process may move a thread out of SCHED_IDLE; found out once, on a thread
/// that exists only for the test.
fn can_leave_idle() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        std::thread::Builder::new()
            .name("porteiro-probe".into())
            .spawn(|| set_idle() && set_nice(current_tid()))
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false)
    })
}

#[cfg(target_os = "linux")]
fn current_tid() -> Tid {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as Tid }
}

#[cfg(target_os = "linux")]
fn set_idle() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; the parameter outlives the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

/// SCHED_OTHER at nice 10 for `tid`. The nice value is set first: leaving SCHED_IDLE is
/// allowed for the nice value the thread already has.
#[cfg(target_os = "linux")]
fn set_nice(tid: Tid) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscalls on a thread of this process that is alive (see JobState).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE);
        libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn current_tid() -> Tid {
    0
}

#[cfg(not(target_os = "linux"))]
fn set_idle() -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn set_nice(_tid: Tid) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy_and_nice() -> (i32, i32) {
        // SAFETY: queries on the calling thread.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, current_tid() as libc::id_t),
            )
        }
    }

    #[test]
    fn a_job_starts_idle_and_is_raised_whole() {
        let job = Job::new();
        let (to_main, from_worker) = std::sync::mpsc::channel();
        let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
        let worker_job = job.clone();
        let worker = std::thread::spawn(move || {
            let _member = worker_job.join();
            let before = policy_and_nice();
            // What a member passes on to the threads it starts.
            let visible = current_job().is_some();
            to_main.send(()).unwrap();
            from_main.recv().unwrap();
            (before, visible, policy_and_nice())
        });
        from_worker.recv().unwrap();
        job.raise();
        to_worker.send(()).unwrap();
        let (before, visible, after) = worker.join().unwrap();
        assert!(visible);
        if can_leave_idle() {
            assert_eq!(before.0, libc::SCHED_IDLE);
        } else {
            assert_eq!(before, (libc::SCHED_OTHER, BACKGROUND_NICE));
        }
        assert_eq!(after, (libc::SCHED_OTHER, BACKGROUND_NICE));
        assert!(job.lock().threads.is_empty(), "the thread left on exit");
    }

    #[test]
    fn a_thread_joining_a_raised_job_starts_at_nice_10() {
        let job = Job::new();
        job.raise();
        let j = job.clone();
        let seen = std::thread::spawn(move || {
            let _member = j.join();
            policy_and_nice()
        })
        .join()
        .unwrap();
        assert_eq!(seen, (libc::SCHED_OTHER, BACKGROUND_NICE));
    }
}
