//! Predicting when a run finishes, from the job's history and the run's live progress.
//!
//! Pure logic, no clock and no catalog: the callers ([`crate::window`], the API) gather a
//! job's recorded runs ([`Sample`]) and a running task's progress ([`Live`]) and ask
//! [`predict`] for the run's whole duration.
//!
//! # The model
//! A backup's time is dominated by one rate: bytes scanned per second (reading new data,
//! or, rate-limited, uploading it). The job's history gives a prior rate `r_h` (the median
//! of its recent runs' `bytes_scanned / duration`), and the run's progress gives the live
//! rate. The two are combined as if the history were a few seconds of extra observation:
//!
//! ```text
//! rate      = (done_w + r_h · T0) / (elapsed_w + T0)     T0 = PRIOR · expected duration
//! remaining = (total - done) / rate
//! duration  = elapsed + remaining
//! ```
//!
//! where `done_w / elapsed_w` is the progress over the recent part of the run since its
//! first byte (a sliding window: the start of a backup reads ahead into its upload buffers
//! faster than it can upload, so the rate since the start overstates it; and the time
//! before the first byte — securing targets, a pre hook, opening the repository — is not
//! a rate at all), and `T0` is a small part of the duration the history expects for this
//! run's size. So with no progress yet the history decides (and waiting pushes the finish
//! out), and within a small part of the run the run's own rate does. Properties (tested
//! below): more progress at the same elapsed time never predicts a later finish; no history
//! and no progress predicts nothing; one run of history suffices; a source that grew or
//! shrank since is predicted by rate, not by the old duration.
//!
//! A backup reads ahead of its uploads by its buffers (tens of MiB), so in an upload-bound
//! run the reading ends well before the run does. The run also reports the new data it
//! queued for storing (not found in the repository) and how much of it the target holds;
//! the storing still to do is the new data queued, plus the unread rest at the share of new
//! data seen so far, less what is stored, at the recent storing rate. The run ends with the
//! later of the reading and the storing. (A run resuming a cancelled one finds its first
//! part stored already: the share of new data is low at first, and grows.)
//!
//! Before the run knows its total (a file tree still being walked), the total is taken as
//! the larger of what was walked so far and the history's last size.

use std::time::Duration;

/// How much the history weighs, as a part of the expected duration (see the module docs).
pub const PRIOR: f64 = 0.01;
/// At most this much weight for the history, however long the run is expected to take.
pub const PRIOR_MAX: Duration = Duration::from_secs(60);
/// Storing observed for less than this gives no rate yet (a pack is acknowledged as a
/// whole: the first few say little).
pub const MIN_UPLOAD_WINDOW: Duration = Duration::from_secs(3);
/// …nor do fewer bytes than this (a lock file, an index: not the packs' pace).
pub const MIN_STORED: u64 = 512 << 10;
/// How many recorded runs the history looks at (newest first).
pub const HISTORY: usize = 5;

/// One recorded run of the job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub bytes_scanned: u64,
    pub duration: Duration,
}

impl Sample {
    fn rate(&self) -> Option<f64> {
        let s = self.duration.as_secs_f64();
        (s > 0.0 && self.bytes_scanned > 0).then(|| self.bytes_scanned as f64 / s)
    }
}

/// A running run's progress.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Live {
    /// Since the run started.
    pub elapsed: Duration,
    /// Bytes scanned so far.
    pub done: u64,
    /// Bytes to scan, if known yet.
    pub total: Option<u64>,
    /// The progress to take the run's rate from: bytes scanned over how long — the recent
    /// part of the run since its first progress ([`Recent`]); `(0, 0)` before any.
    pub observed: (u64, Duration),
    /// New data (not in the repository yet) queued for storing so far (before compression,
    /// [`kura_repo::progress::Progress::new_data`]), and the bytes the target acknowledged
    /// (per target), with the recent part of that progress (as `observed`). Compressible
    /// data is acknowledged in fewer bytes than it was queued in, so the storing still to
    /// do is overstated for it: pessimistic, never optimistic.
    pub new: u64,
    pub stored: u64,
    pub observed_stored: (u64, Duration),
}

/// The history's view: median rate, the newest size and the median duration.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prior {
    rate: Option<f64>,
    size: Option<u64>,
    duration: Option<Duration>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn prior(history: &[Sample]) -> Prior {
    let recent = &history[..history.len().min(HISTORY)];
    Prior {
        rate: median(recent.iter().filter_map(Sample::rate).collect()),
        size: recent.first().map(|s| s.bytes_scanned),
        duration: median(recent.iter().map(|s| s.duration.as_secs_f64()).collect())
            .map(Duration::from_secs_f64),
    }
}

/// The predicted whole duration of a run (from its start), from the job's `history` (newest
/// first) and, for a running run, its `live` progress. `None` when there is nothing to go
/// on (no history and no progress yet).
pub fn predict(history: &[Sample], live: Option<&Live>) -> Option<Duration> {
    let p = prior(history);
    let Some(live) = live else {
        // Not started: the history's typical run.
        return p.duration;
    };
    let total = match (live.total, p.size) {
        (Some(t), _) => t,
        (None, Some(s)) => s.max(live.done),
        (None, None) => return None,
    }
    .max(live.done);
    let elapsed = live.elapsed.as_secs_f64();
    let (done_w, elapsed_w) = (live.observed.0 as f64, live.observed.1.as_secs_f64());
    let (b0, t0) = match p.rate {
        Some(r) => {
            let expected = total as f64 / r;
            let t0 = (PRIOR * expected).min(PRIOR_MAX.as_secs_f64());
            (r * t0, t0)
        }
        None => (0.0, 0.0),
    };
    let rate = (done_w + b0) / (elapsed_w + t0);
    let left = (total - live.done) as f64;
    let read = if left == 0.0 {
        Some(0.0)
    } else if rate.is_finite() && rate > 0.0 {
        Some(left / rate)
    } else {
        None
    };
    // The storing: the new data queued so far and, at the share of new data seen so far,
    // the new data still to read, less what the target already holds, at the rate it has
    // been taking it. Reading and storing overlap; the run ends with the later of the two.
    let (st_b, st_t) = live.observed_stored;
    let store = (st_b >= MIN_STORED && st_t >= MIN_UPLOAD_WINDOW && live.done > 0).then(|| {
        let store_rate = st_b as f64 / st_t.as_secs_f64();
        let share = live.new as f64 / live.done as f64;
        let to_store = live.new as f64 + left * share - live.stored as f64;
        to_store.max(0.0) / store_rate
    });
    // New data waits to be stored but its pace is not seen yet (the first packs are on
    // their way): the history's rate stands in; with no history there is nothing to say
    // (the reading alone would promise a finish the storing cannot keep).
    let waiting = live.new > live.stored.saturating_add(MIN_STORED);
    let store = match (store, p.rate) {
        (Some(s), _) => Some(s),
        (None, Some(r)) if waiting => {
            let share = live.new as f64 / live.done.max(1) as f64;
            Some((live.new as f64 + left * share - live.stored as f64).max(0.0) / r)
        }
        (None, None) if waiting => return None,
        (None, _) => None,
    };
    let remaining = match (read, store) {
        (Some(r), Some(s)) => r.max(s),
        (Some(r), None) => r,
        (None, Some(s)) => s,
        (None, None) => return None,
    };
    let secs = elapsed + remaining;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

/// A running run's recent progress: `(when, bytes done)` observations from its first
/// progress on, kept over a sliding window (what [`Live::observed`] wants).
#[derive(Debug, Clone, Default)]
pub struct Recent {
    points: std::collections::VecDeque<(Duration, u64)>,
    zero_at: Option<Duration>,
}

/// The sliding window: this part of the elapsed time, at least [`RECENT_MIN`].
pub const RECENT_PART: f64 = 0.5;
pub const RECENT_MIN: Duration = Duration::from_secs(6);

impl Recent {
    /// Note that `done` bytes were done at `elapsed`; the recent progress, `(0, 0)` before
    /// any.
    pub fn observe(&mut self, elapsed: Duration, done: u64) -> (u64, Duration) {
        if done == 0 {
            return (0, Duration::ZERO);
        }
        if self.points.is_empty() {
            // Progress began since the last look: count from the look before, where it was 0.
            self.points.push_back((self.zero_at.unwrap_or(elapsed), 0));
        }
        self.points.push_back((elapsed, done));
        let span = elapsed.mul_f64(RECENT_PART).max(RECENT_MIN);
        while self.points.len() > 2
            && self
                .points
                .get(1)
                .is_some_and(|(t, _)| elapsed.saturating_sub(*t) >= span)
        {
            self.points.pop_front();
        }
        match self.points.front() {
            Some(&(t0, b0)) => (done.saturating_sub(b0), elapsed.saturating_sub(t0)),
            None => (0, Duration::ZERO),
        }
    }

    /// Note a look that saw no progress yet (where [`observe`](Self::observe) will count
    /// from).
    pub fn nothing_at(&mut self, elapsed: Duration) {
        if self.points.is_empty() {
            self.zero_at = Some(elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(bytes: u64, secs: u64) -> Sample {
        Sample {
            bytes_scanned: bytes,
            duration: Duration::from_secs(secs),
        }
    }

    fn live(elapsed: u64, done: u64, total: Option<u64>) -> Live {
        Live {
            elapsed: Duration::from_secs(elapsed),
            done,
            total,
            // As the window watcher measures it: from the first progress on.
            observed: if done == 0 {
                (0, Duration::ZERO)
            } else {
                (done, Duration::from_secs(elapsed))
            },
            ..Live::default()
        }
    }

    fn secs(d: Option<Duration>) -> f64 {
        d.expect("a prediction").as_secs_f64()
    }

    #[test]
    fn with_no_history_it_waits_for_progress_then_extrapolates() {
        assert_eq!(predict(&[], None), None);
        assert_eq!(predict(&[], Some(&live(5, 0, Some(1000)))), None);
        assert_eq!(predict(&[], Some(&live(5, 10, None))), None);
        // A quarter done in 10 s: 40 s in all.
        let d = secs(predict(&[], Some(&live(10, 250, Some(1000)))));
        assert!((d - 40.0).abs() < 1e-6, "{d}");
    }

    #[test]
    fn one_run_of_history_predicts_before_any_progress() {
        let h = [s(1000, 100)];
        assert_eq!(secs(predict(&h, None)), 100.0);
        let d = secs(predict(&h, Some(&live(0, 0, Some(1000)))));
        assert!((d - 100.0).abs() < 1e-6, "{d}");
        // Time spent before the first byte (securing, a pre hook) pushes the finish out
        // by as much, not by a rate made of it.
        let d = secs(predict(&h, Some(&live(7, 0, Some(1000)))));
        assert!((d - 107.0).abs() < 1e-6, "{d}");
    }

    #[test]
    fn a_changed_data_size_is_predicted_by_rate_not_by_the_old_duration() {
        // 10 bytes/s before; the source doubled.
        let h = [s(1000, 100), s(1000, 100)];
        let d = secs(predict(&h, Some(&live(0, 0, Some(2000)))));
        assert!((d - 200.0).abs() < 1e-6, "{d}");
        // Before the walk ends, the last size stands in for the total.
        let d = secs(predict(&h, Some(&live(0, 0, None))));
        assert!((d - 100.0).abs() < 1e-6, "{d}");
    }

    #[test]
    fn the_live_rate_soon_outweighs_a_history_that_no_longer_holds() {
        // History: 10 bytes/s. Now the target is 4 times slower: 2.5 bytes/s.
        let h = [s(1000, 100)];
        let at_10_percent = secs(predict(&h, Some(&live(40, 100, Some(1000)))));
        // The truth is 400 s; the old history alone says 100 s.
        assert!(
            (at_10_percent - 400.0).abs() / 400.0 < 0.15,
            "{at_10_percent}"
        );
    }

    #[test]
    fn what_is_buffered_but_not_stored_is_still_to_come() {
        // 1000 units, all new, stored at 10 units/s (100 s in all), read ahead by 300
        // units of buffers at once, then as fast as storing frees them.
        const K: u64 = 1 << 20; // bytes per unit
        let mut l = live(20, 500 * K, Some(1000 * K));
        l.observed = (100 * K, Duration::from_secs(10));
        l.new = 500 * K;
        l.stored = 200 * K;
        l.observed_stored = (100 * K, Duration::from_secs(10));
        let d = secs(predict(&[], Some(&l)));
        // Storing the 300 buffered and the 500 unread units: 80 s more.
        assert!((d - 100.0).abs() < 0.1, "{d}");
        // The reading is over; the buffers drain.
        l.elapsed = Duration::from_secs(70);
        l.done = 1000 * K;
        l.new = 1000 * K;
        l.stored = 700 * K;
        let d = secs(predict(&[], Some(&l)));
        assert!((d - 100.0).abs() < 0.1, "{d}");
        // Half the data was stored before (a resumed run): only the new half is stored.
        let mut l = live(20, 500 * K, Some(1000 * K));
        l.observed = (100 * K, Duration::from_secs(10));
        l.new = 250 * K;
        l.stored = 100 * K;
        l.observed_stored = (100 * K, Duration::from_secs(10));
        let d = secs(predict(&[], Some(&l)));
        // To store: 250 + 500 × 0.5 - 100 = 400 units = 40 s; reading: 50 s.
        assert!((d - 70.0).abs() < 0.1, "{d}");
        // A lock file's few bytes say nothing of the pace yet: with no history, nothing is
        // predicted (the reading alone would promise too early a finish)…
        l.new = 250 * K;
        l.stored = 127;
        l.observed_stored = (127, Duration::from_secs(5));
        assert_eq!(predict(&[], Some(&l)), None);
        // …with history, its rate stands in: 250 + 250 units at 10 units/s.
        let h = [s(1000 * K, 100)];
        let d = secs(predict(&h, Some(&l)));
        assert!((d - 70.0).abs() < 0.2, "{d}");
    }

    #[test]
    fn the_recent_window_forgets_a_fast_start() {
        let mut r = Recent::default();
        // 50 bytes at once (buffers filling), then 1 byte/s.
        let mut last = (0, Duration::ZERO);
        r.nothing_at(Duration::from_secs(0));
        for t in 1..=60u64 {
            let done = if t <= 2 { 50 * t / 2 } else { 50 + (t - 2) };
            last = r.observe(Duration::from_secs(t), done);
        }
        let (b, d) = last;
        let rate = b as f64 / d.as_secs_f64();
        assert!((rate - 1.0).abs() < 0.05, "{rate}");
    }

    proptest! {
        #[test]
        fn more_progress_never_predicts_a_later_finish(
            hist in proptest::collection::vec((1u64..1 << 40, 1u64..100_000), 0..6),
            elapsed in 1u64..100_000,
            total in 1u64..1 << 40,
            a in 0.0f64..1.0,
            b in 0.0f64..1.0,
            new in 0u64..1 << 40,
            stored in 0u64..1 << 40,
        ) {
            let h: Vec<Sample> = hist.iter().map(|&(x, y)| s(x, y)).collect();
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            // The same new and stored bytes (within what the lesser progress read).
            let new = new.min((total as f64 * lo) as u64);
            let stored = stored.min(new);
            let p = |f: f64| {
                let mut l = live(elapsed, (total as f64 * f) as u64, Some(total));
                l.new = new;
                l.stored = stored;
                l.observed_stored = (stored, Duration::from_secs(elapsed));
                predict(&h, Some(&l))
            };
            if let (Some(slow), Some(fast)) = (p(lo), p(hi)) {
                prop_assert!(fast <= slow + Duration::from_millis(1), "{fast:?} > {slow:?}");
            }
            // And a prediction is never shorter than the time already spent.
            if let Some(d) = p(lo) {
                prop_assert!(d + Duration::from_millis(1) >= Duration::from_secs(elapsed));
            }
        }

        #[test]
        fn waiting_without_progress_never_predicts_an_earlier_finish(
            hist in proptest::collection::vec((1u64..1 << 40, 1u64..100_000), 0..6),
            e1 in 1u64..100_000,
            extra in 0u64..100_000,
            total in 1u64..1 << 40,
            f in 0.0f64..1.0,
        ) {
            let h: Vec<Sample> = hist.iter().map(|&(x, y)| s(x, y)).collect();
            let done = (total as f64 * f) as u64;
            let p = |e: u64| predict(&h, Some(&live(e, done, Some(total))));
            if let (Some(early), Some(late)) = (p(e1), p(e1 + extra)) {
                prop_assert!(late + Duration::from_millis(1) >= early);
            }
        }
    }
}
