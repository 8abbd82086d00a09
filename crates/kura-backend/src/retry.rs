//! Deadlines and retries, shared by every backend.
//!
//! Every operation has one deadline covering all its attempts. Transient failures
//! (unreachable, timed out, HTTP 5xx/429) are retried with exponential backoff and full
//! jitter, as long as the next attempt can still start before the deadline; permanent ones
//! (not found, permission denied, no space, corrupt) return at once. The final error says how
//! many attempts were made and how long they took.
//!
//! Traffic limits ([`crate::Throttled`]) wait before an operation is handed to its backend,
//! so an operation's deadline starts when it is sent: waiting for a limit is not a hang.

use std::time::{Duration, Instant};

use crate::{BackendError, ErrorKind};

/// Deadline and backoff of backend operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total time an operation may take, retries included.
    pub deadline: Duration,
    /// First backoff; doubles per attempt.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Stop retrying an operation whose target stays unreachable (refused, no route) this
    /// long; `None` retries it until the deadline like any transient error.
    pub unreachable_for: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            unreachable_for: None,
        }
    }
}

/// A cheap random number for jitter (no need for a CSPRNG here).
fn jitter_fraction() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

impl RetryPolicy {
    /// Run `attempt` until it succeeds, fails permanently, or the deadline would pass.
    /// `attempt` gets the time left before the deadline and must not exceed it.
    pub fn run<T>(
        &self,
        mut attempt: impl FnMut(Duration) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let start = Instant::now();
        let mut backoff = self.initial_backoff;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let left = self.deadline.saturating_sub(start.elapsed());
            match attempt(left) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    // Full jitter: sleep a random time in [backoff/2, backoff].
                    let sleep = backoff.mul_f64(0.5 + 0.5 * jitter_fraction());
                    let elapsed = start.elapsed();
                    let patience = match (e.kind(), self.unreachable_for) {
                        (ErrorKind::Unreachable, Some(p)) => p.min(self.deadline),
                        _ => self.deadline,
                    };
                    if !e.is_transient() || elapsed + sleep >= patience {
                        return Err(e.after_tries(tries, elapsed));
                    }
                    tracing::debug!("retrying after {:?}: {e}", sleep);
                    std::thread::sleep(sleep);
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind) -> BackendError {
        BackendError::new(kind, "get", "data/ab", "test", "boom")
    }

    #[test]
    fn transient_errors_are_retried_until_success() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            unreachable_for: None,
        };
        let mut n = 0;
        let v = p
            .run(|_| {
                n += 1;
                if n < 4 {
                    Err(err(ErrorKind::Unreachable))
                } else {
                    Ok(n)
                }
            })
            .unwrap();
        assert_eq!(v, 4);
    }

    #[test]
    fn permanent_errors_return_at_once() {
        let p = RetryPolicy::default();
        let mut n = 0;
        let e = p
            .run(|_| -> Result<(), _> {
                n += 1;
                Err(err(ErrorKind::PermissionDenied))
            })
            .unwrap_err();
        assert_eq!(n, 1);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.to_string().contains("tries"));
    }

    #[test]
    fn the_deadline_bounds_retries_and_the_message_counts_them() {
        let p = RetryPolicy {
            deadline: Duration::from_millis(300),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            unreachable_for: None,
        };
        let start = Instant::now();
        let e = p
            .run(|_| -> Result<(), _> { Err(err(ErrorKind::Unreachable)) })
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
        let msg = e.to_string();
        assert!(msg.starts_with("get data/ab on test: boom after "), "{msg}");
        assert!(msg.contains(" tries, 0."), "{msg}");
    }

    #[test]
    fn an_unreachable_target_is_given_up_on_after_its_patience_and_others_are_not() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            unreachable_for: Some(Duration::from_millis(200)),
        };
        let start = Instant::now();
        let e = p
            .run(|_| -> Result<(), _> { Err(err(ErrorKind::Unreachable)) })
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind(), ErrorKind::Unreachable);
        // Far below the 10 s deadline (the bound is loose for loaded machines).
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(e.to_string().contains(" tries, "), "{e}");
        // A timed-out target keeps the whole deadline: it may be slow, not gone. Its errors
        // go on 500 ms past the unreachable patience, so success means it was not cut short.
        let mut n = 0;
        let v = p
            .run(|_| {
                n += 1;
                if start.elapsed() < took + Duration::from_millis(500) {
                    Err(err(ErrorKind::TimedOut))
                } else {
                    Ok(n)
                }
            })
            .unwrap();
        assert!(v >= 2, "{v}");
    }
}
