//! Running blocking calls with a deadline.
//!
//! A system call on a hung network file system (NFS, CIFS, a dead iSCSI disk) can block for
//! minutes, and nothing can interrupt it. What we can do is stop *waiting*: calls run on a
//! small pool of worker threads and the caller waits at most until the deadline, then reports
//! `TimedOut` and moves on (the manager fails over). A stuck worker stays stuck; the others
//! keep serving. This costs a thread hand-off per call (a few microseconds), which is why only
//! whole-object operations go through it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of worker threads for blocking calls.
#[derive(Debug)]
pub(crate) struct Executor {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl Executor {
    pub(crate) fn new(workers: usize, name: &str) -> Arc<Executor> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // executor dropped
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start backend worker thread: {e}");
            }
        }
        Arc::new(Executor { tx: Mutex::new(tx) })
    }

    /// Run `f` on a worker; `None` if it did not finish within `timeout` (it keeps running)
    /// or no worker could take it.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = rtx.send(f());
        });
        self.tx.lock().ok()?.send(job).ok()?;
        rrx.recv_timeout(timeout).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_results_and_gives_up_on_hung_calls() {
        let ex = Executor::new(2, "test");
        assert_eq!(ex.run(Duration::from_secs(1), || 41 + 1), Some(42));
        let start = std::time::Instant::now();
        let r = ex.run(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2))
        });
        assert!(r.is_none());
        assert!(start.elapsed() < Duration::from_millis(500));
        // The other worker still serves.
        assert_eq!(ex.run(Duration::from_secs(1), || 7), Some(7));
    }
}
