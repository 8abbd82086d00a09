//! Running blocking calls with a deadline, on a bounded pool of reused threads.
//!
//! A system call on a hung network file system (NFS, CIFS, a dead iSCSI disk), or a request
//! to an object store that stopped answering, can block for minutes, and nothing can
//! interrupt it. What we can do is stop *waiting*: calls run on worker threads and the caller
//! waits at most until its deadline, then reports `TimedOut` and moves on (a mirror drops the
//! target, a fail-over moves to the next). A stuck worker stays stuck; the others keep serving.
//! This costs a thread hand-off per call (a few microseconds), which is why only whole-object
//! operations go through it.
//!
//! # Why a pool, and why bounded
//! Spawning a thread per call would cost a thread start per read, and a target that hangs
//! on every call would then pin one more thread per call, without limit. Here threads are
//! reused, and their number never exceeds the pool's maximum: when every worker is busy (some
//! of them stuck), a call waits in the queue, and one that no worker took by its deadline is
//! *cancelled* — it never runs late, so an operation the caller was told timed out cannot
//! happen behind its back unless it had already started. Calls whose caller gave up while
//! they ran are counted ([`Executor::stuck`], and per caller-chosen counter, which is how a
//! member of a mirror or fail-over group is refused once too many of its calls hang).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// A call's life: queued, then running, then done; or cancelled before it started, or
/// abandoned by its caller while it ran.
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 3;
const ABANDONED: u8 = 4;

/// How long a worker above the pool's minimum waits for work before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(10);

struct Ticket {
    state: AtomicU8,
    /// The caller's own count of its calls abandoned while running.
    stuck: Option<Arc<AtomicUsize>>,
}

struct Job {
    ticket: Arc<Ticket>,
    run: Box<dyn FnOnce() + Send + 'static>,
}

struct State {
    queue: VecDeque<Job>,
    workers: usize,
    idle: usize,
    closing: bool,
    started: u64,
}

struct Shared {
    name: String,
    min: usize,
    max: usize,
    st: Mutex<State>,
    cv: Condvar,
    stuck: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No job runs under the lock; a poisoned state is still consistent.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start one more worker; the caller already counted it in `st.workers`.
    fn spawn(self: &Arc<Self>, st: &mut State) {
        st.started += 1;
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{}", self.name, st.started))
            .spawn(move || me.work());
        if let Err(e) = spawned {
            st.workers -= 1;
            tracing::warn!("cannot start a {} worker thread: {e}", self.name);
        }
    }

    fn work(self: Arc<Self>) {
        loop {
            let job = {
                let mut st = self.lock();
                loop {
                    if let Some(job) = st.queue.pop_front() {
                        break job;
                    }
                    if st.closing {
                        st.workers -= 1;
                        return;
                    }
                    st.idle += 1;
                    let (g, waited) = self
                        .cv
                        .wait_timeout(st, IDLE_EXIT)
                        .unwrap_or_else(|p| p.into_inner());
                    st = g;
                    st.idle -= 1;
                    if waited.timed_out() && st.queue.is_empty() && st.workers > self.min {
                        st.workers -= 1;
                        return;
                    }
                }
            };
            let claimed = job
                .ticket
                .state
                .compare_exchange(QUEUED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if !claimed {
                continue; // cancelled at its deadline before any worker was free
            }
            // A panicking call must not take the worker (and the pool's count) with it; its
            // caller sees the answer channel closed.
            let _ = catch_unwind(AssertUnwindSafe(job.run));
            let finished = job
                .ticket
                .state
                .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if !finished {
                // Its caller gave up on it; it is no longer stuck.
                self.stuck.fetch_sub(1, Ordering::SeqCst);
                if let Some(s) = &job.ticket.stuck {
                    s.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A bounded pool of worker threads for blocking calls (see the module docs).
pub(crate) struct Executor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("name", &self.shared.name)
            .field("max", &self.shared.max)
            .field("stuck", &self.stuck())
            .finish()
    }
}

/// Why a call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoAnswer {
    /// It ran past the deadline; it keeps running and counts as stuck until it returns.
    Running,
    /// No worker was free before the deadline (all busy or stuck); it was cancelled and
    /// will never run.
    NotStarted,
    /// It panicked.
    Panicked,
}

/// A submitted call; [`wait_until`](Call::wait_until) collects its answer.
pub(crate) struct Call<T> {
    rx: mpsc::Receiver<T>,
    ticket: Arc<Ticket>,
    shared: Arc<Shared>,
}

impl<T> Call<T> {
    /// The answer, or why there is none by `deadline`. A call still queued at the deadline
    /// is cancelled; one still running is abandoned and counted as stuck until it returns.
    pub(crate) fn wait_until(self, deadline: Instant) -> Result<T, NoAnswer> {
        self.wait_until_or_longer(deadline, Duration::ZERO, || false)
    }

    /// As [`wait_until`](Self::wait_until), but at the deadline, while `busy()` says the
    /// callee is waiting on purpose (a traffic limit), the deadline moves `grace` past now.
    pub(crate) fn wait_until_or_longer(
        self,
        mut deadline: Instant,
        grace: Duration,
        busy: impl Fn() -> bool,
    ) -> Result<T, NoAnswer> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => return Ok(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(NoAnswer::Panicked),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if grace.is_zero() || !busy() {
                break;
            }
            deadline = Instant::now() + grace;
        }
        let state = &self.ticket.state;
        if state
            .compare_exchange(QUEUED, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Err(NoAnswer::NotStarted);
        }
        // Counted before the state says so, so that the worker's decrement (which follows
        // the state change) never comes first.
        self.shared.stuck.fetch_add(1, Ordering::SeqCst);
        if let Some(s) = &self.ticket.stuck {
            s.fetch_add(1, Ordering::SeqCst);
        }
        if state
            .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Err(NoAnswer::Running);
        }
        self.shared.stuck.fetch_sub(1, Ordering::SeqCst);
        if let Some(s) = &self.ticket.stuck {
            s.fetch_sub(1, Ordering::SeqCst);
        }
        // It finished just now: its answer was sent before its state changed.
        self.rx.try_recv().map_err(|_| NoAnswer::Panicked)
    }
}

impl Executor {
    /// A pool of exactly `workers` threads, started now and kept.
    pub(crate) fn new(workers: usize, name: &str) -> Arc<Executor> {
        let ex = Self::with_bounds(workers.max(1), workers.max(1), name);
        {
            let mut st = ex.shared.lock();
            for _ in 0..ex.shared.min {
                st.workers += 1;
                ex.shared.spawn(&mut st);
            }
        }
        ex
    }

    /// A pool that starts threads as calls need them, at most `max` at once; threads idle
    /// for a while end.
    pub(crate) fn elastic(max: usize, name: &str) -> Arc<Executor> {
        Self::with_bounds(0, max.max(1), name)
    }

    fn with_bounds(min: usize, max: usize, name: &str) -> Arc<Executor> {
        Arc::new(Executor {
            shared: Arc::new(Shared {
                name: name.to_string(),
                min,
                max,
                st: Mutex::new(State {
                    queue: VecDeque::new(),
                    workers: 0,
                    idle: 0,
                    closing: false,
                    started: 0,
                }),
                cv: Condvar::new(),
                stuck: AtomicUsize::new(0),
            }),
        })
    }

    /// Queue `f`; `stuck`, if given, is incremented while the call runs abandoned by its
    /// caller (so a caller can bound how many of its calls hang).
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        stuck: Option<Arc<AtomicUsize>>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Call<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let ticket = Arc::new(Ticket {
            state: AtomicU8::new(QUEUED),
            stuck,
        });
        let job = Job {
            ticket: Arc::clone(&ticket),
            run: Box::new(move || {
                let _ = tx.send(f());
            }),
        };
        let shared = &self.shared;
        let mut st = shared.lock();
        st.queue.push_back(job);
        if st.queue.len() > st.idle && st.workers < shared.max {
            st.workers += 1;
            shared.spawn(&mut st);
        }
        shared.cv.notify_one();
        drop(st);
        Call {
            rx,
            ticket,
            shared: Arc::clone(shared),
        }
    }

    /// Run `f` on a worker; `None` if it did not finish within `timeout` (it keeps running,
    /// or, if no worker took it in time, never runs) or it panicked.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        self.submit(None, f).wait_until(deadline).ok()
    }

    /// Calls abandoned by their callers at the deadline that have not returned yet.
    pub(crate) fn stuck(&self) -> usize {
        self.shared.stuck.load(Ordering::SeqCst)
    }

    /// Worker threads alive now (never more than the maximum).
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.shared.lock().workers
    }

    /// The most worker threads this pool runs at once.
    pub(crate) fn max_threads(&self) -> usize {
        self.shared.max
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Idle workers end now, busy ones after their call; queued calls still run.
        let mut st = self.shared.lock();
        st.closing = true;
        self.shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_results_and_gives_up_on_hung_calls() {
        let ex = Executor::new(2, "test");
        assert_eq!(ex.run(Duration::from_secs(1), || 41 + 1), Some(42));
        let start = Instant::now();
        let r = ex.run(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2))
        });
        assert!(r.is_none());
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(ex.stuck(), 1);
        // The other worker still serves.
        assert_eq!(ex.run(Duration::from_secs(1), || 7), Some(7));
    }

    /// A gate a test holds closed to make calls hang, and opens to release them.
    fn gate() -> (
        Arc<(Mutex<bool>, Condvar)>,
        impl Fn() + Send + Clone + 'static,
    ) {
        let g = Arc::new((Mutex::new(false), Condvar::new()));
        let g2 = Arc::clone(&g);
        let wait = move || {
            let (m, cv) = &*g2;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        };
        (g, wait)
    }

    fn open(g: &(Mutex<bool>, Condvar)) {
        *g.0.lock().unwrap() = true;
        g.1.notify_all();
    }

    #[test]
    fn hung_calls_never_take_more_than_the_pool_and_queued_ones_never_run_late() {
        let ex = Executor::elastic(3, "test-bound");
        let (g, hang) = gate();
        let counter = Arc::new(AtomicUsize::new(0));
        // Ten calls that hang: only three threads are ever started.
        let mut late = Vec::new();
        for _ in 0..10 {
            let (hang, ran) = (hang.clone(), Arc::new(AtomicUsize::new(0)));
            let ran2 = Arc::clone(&ran);
            let call = ex.submit(Some(Arc::clone(&counter)), move || {
                ran2.fetch_add(1, Ordering::SeqCst);
                hang()
            });
            late.push((call, ran));
        }
        assert!(ex.threads() <= 3, "{} threads", ex.threads());
        // Wait (for a real signal, not a while) until the three workers run their calls.
        let t = Instant::now();
        while late
            .iter()
            .map(|(_, r)| r.load(Ordering::SeqCst))
            .sum::<usize>()
            < 3
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "workers never started"
            );
            std::thread::yield_now();
        }
        let deadline = Instant::now() + Duration::from_millis(100);
        let outcomes: Vec<_> = late
            .into_iter()
            .map(|(c, ran)| (c.wait_until(deadline), ran))
            .collect();
        let running = outcomes
            .iter()
            .filter(|(o, _)| *o == Err(NoAnswer::Running))
            .count();
        let cancelled = outcomes
            .iter()
            .filter(|(o, _)| *o == Err(NoAnswer::NotStarted))
            .count();
        assert_eq!((running, cancelled), (3, 7));
        assert_eq!(ex.stuck(), 3);
        assert_eq!(counter.load(Ordering::SeqCst), 3);
        assert_eq!(ex.threads(), 3);
        // Released: the stuck calls return, the cancelled ones never run, and the threads
        // serve again.
        open(&g);
        assert_eq!(ex.run(Duration::from_secs(5), || 5), Some(5));
        let t = Instant::now();
        while ex.stuck() > 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert_eq!(ex.stuck(), 0);
        assert_eq!(counter.load(Ordering::SeqCst), 0);
        for (o, ran) in &outcomes {
            let expect = usize::from(*o == Err(NoAnswer::Running));
            assert_eq!(ran.load(Ordering::SeqCst), expect, "{o:?}");
        }
        assert!(ex.threads() <= 3);
    }

    #[test]
    fn threads_are_reused() {
        let ex = Executor::elastic(8, "test-reuse");
        for i in 0..200 {
            assert_eq!(ex.run(Duration::from_secs(5), move || i * 2), Some(i * 2));
        }
        // Without reuse this would be 200 threads.
        assert!(ex.shared.lock().started <= 8);
        // A panicking call is an answer of its own and leaves the worker alive.
        let ex2 = Arc::clone(&ex);
        let r = ex2
            .submit(None, || -> u8 { panic!("boom") })
            .wait_until(Instant::now() + Duration::from_secs(5));
        assert_eq!(r, Err(NoAnswer::Panicked));
        assert_eq!(ex.run(Duration::from_secs(5), || 1), Some(1));
        assert!(ex.threads() >= 1 && ex.threads() <= 8);
    }
}
