//! The daemon's health sweep: every target probed on a timer, each result recorded as the
//! target's health ([`kura_manager::health::sweep`], the same judgement as `kura resource
//! probe`).
//!
//! Why a daemon needs it: a run's check before securing skips targets the catalog holds
//! not usable, so without probes a target marked unhealthy once would stay out of every
//! run after it came back. The sweep puts it back (a success resets its errors), and finds
//! a target that died between runs before a run does. A sweep whose catalog is away is
//! skipped (said once a minute, as the scheduler does).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Daemon;

/// The default time between sweeps (`[daemon] health_every`).
pub const EVERY: Duration = Duration::from_secs(300);
/// The size of each probe's object.
const PROBE_SIZE: usize = 64 << 10;

/// One sweep over every target; how many were probed and how many failed.
pub fn sweep(d: &Daemon) -> crate::Result<(usize, usize)> {
    let targets =
        kura_manager::health::targets_named(&d.catalog, &[]).map_err(crate::Error::manager)?;
    if targets.is_empty() {
        return Ok((0, 0));
    }
    let open = |url: &str| d.ops.backend(url);
    let results = kura_manager::health::sweep(&d.catalog, &targets, &open, PROBE_SIZE)
        .map_err(crate::Error::manager)?;
    let mut failed = 0;
    for h in &results {
        if let Some(e) = &h.error {
            failed += 1;
            tracing::warn!(
                "health: target {} failed its probe ({}): {e}",
                h.target,
                h.state.as_str()
            );
        }
    }
    Ok((results.len(), failed))
}

/// Sweep every `every` until `stop` (the first one at once).
pub fn run(d: Arc<Daemon>, every: Duration, stop: Arc<AtomicBool>) {
    let mut last_said: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        match sweep(&d) {
            Ok((n, failed)) => {
                tracing::debug!("health: {n} target(s) probed, {failed} failed");
                last_said = None;
            }
            Err(e) => {
                if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!("health: the sweep could not run: {e}");
                    last_said = Some(Instant::now());
                }
            }
        }
        let until = Instant::now() + every;
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200).min(every));
        }
    }
}
