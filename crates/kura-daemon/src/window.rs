//! Backup windows, defended: every running job run is watched once a second against its
//! deadline, with a prediction of its finish ([`crate::predict`]).
//!
//! # Deadlines
//! A run's deadline is the earlier of its window's end — `finish-within` from the
//! occurrence's *scheduled* time (scheduled runs only) — and `max-run` from its actual
//! start (any run). At the deadline the job's `at-window-end` applies:
//! - `cancel` / `cancel-early`: the run's task is cancelled with the reason ("its window
//!   ended at …"). The backup stops at its next check and leaves the repository
//!   consistent: no snapshot is written, the packs it uploaded are indexed, so the next run
//!   reuses them; the run's targets are released. Its claim is recorded `cancelled`.
//! - `finish`: the run goes on; the overrun is logged, counted, notified at the deadline,
//!   and reported with the run's record (its task's `overrun`, its claim's reason).
//!
//! # Before the deadline
//! Each look predicts the run's finish from the job's recorded runs and the run's own
//! progress. Once the prediction says the run will end after its deadline (for
//! [`CONFIRM`] looks in a row, so one slow second does not cry wolf), a warning goes out,
//! once per run: a line in the task's log, a tracing warning, the
//! `kura_job_overrun_warnings_total` metric and the notification hook. A `cancel-early` job's
//! run is then cancelled as soon as the prediction is confident: it has [`EARLY_AFTER`] of
//! its own progress (reading or storing) to go on, and overshoots by more than [`EARLY_MARGIN`] of the time the
//! run was allowed.
//!
//! A running mirror whose slowest target alone makes it overrun drops that target while
//! the quorum holds ([`crate::pace`]), before any early cancel: the backup completes on
//! time on the others, the dropped target is not counted as failing, and the job's next
//! run brings it up to date.
//!
//! # Locking
//! The watched runs are one map under one mutex, held only to update entries: the catalog
//! (history) is read before taking it, and tasks are cancelled and hooks run after leaving
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kura_catalog::{Catalog, JobDef};
use kura_types::WindowEnd;

use crate::notify::{self, Event};
use crate::pace;
use crate::predict::{self, Live, Recent, Sample};
use crate::{Daemon, Task};

/// How often runs are looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// Looks in a row that must predict an overrun before it is reported.
pub const CONFIRM: u32 = 2;
/// `cancel-early`: the run's own progress needed before acting on a prediction…
pub const EARLY_AFTER: Duration = Duration::from_secs(10);
/// …and by how much (a part of the time the run was allowed) it must overshoot.
pub const EARLY_MARGIN: f64 = 0.10;
/// How long a job's history is cached (a run ending refreshes it at once).
const HISTORY_TTL: Duration = Duration::from_secs(30);

/// When a run must end, and what says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    pub at: DateTime<Utc>,
    /// `its window ends at … (finish-within 1h from …)`, or the `max-run` that ends.
    pub what: String,
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The deadline of a run of `job` scheduled at `due` (none: on demand) and started at
/// `started`.
pub fn deadline(
    job: &JobDef,
    due: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
) -> Option<Deadline> {
    let s = &job.settings;
    let window = due.zip(s.finish_within).map(|(due, fw)| {
        let at = add(due, fw.std());
        Deadline {
            at,
            what: format!(
                "its window ends at {} (finish-within {fw} from its scheduled time {})",
                rfc(at),
                rfc(due)
            ),
        }
    });
    let max_run = s.max_run.map(|m| {
        let at = add(started, m.std());
        Deadline {
            at,
            what: format!("its max-run of {m} ends at {}", rfc(at)),
        }
    });
    match (window, max_run) {
        (Some(w), Some(m)) => Some(if m.at < w.at { m } else { w }),
        (w, m) => w.or(m),
    }
}

/// One watched run.
struct Watch {
    task: Arc<Task>,
    job: JobDef,
    due: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
    clock: Instant,
    deadline: Option<Deadline>,
    recent: Recent,
    recent_up: Recent,
    /// The reading's last observed progress (kept once the reading is over).
    observed: (u64, Duration),
    predicted: Option<DateTime<Utc>>,
    /// Looks in a row predicting an overrun.
    overrunning: u32,
    warned: bool,
    overran: bool,
}

/// How a watched run stood when it ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub deadline: Option<Deadline>,
    /// It ran past its deadline (it was not cancelled there).
    pub overran: bool,
}

/// A job's outlook: its running or next run's predicted finish and window end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outlook {
    pub running: bool,
    pub predicted_finish: Option<DateTime<Utc>>,
    pub predicted_duration: Option<Duration>,
    pub window_end: Option<DateTime<Utc>>,
}

/// The runs being watched, and the job histories they are predicted from.
#[derive(Default)]
pub struct Windows {
    runs: Mutex<HashMap<String, Watch>>,
    history: Mutex<HashMap<i64, (Instant, Vec<Sample>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each update is a handful of assignments: a panic elsewhere leaves entries whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Windows {
    /// Watch a run that starts now (`due`: its scheduled time, for a scheduled run).
    pub(crate) fn watch(&self, task: Arc<Task>, job: JobDef, due: Option<DateTime<Utc>>) {
        let started = Utc::now();
        let deadline = deadline(&job, due, started);
        if let Some(dl) = &deadline {
            task.log(format!(
                "{}; at its end: {}",
                dl.what, job.settings.at_window_end
            ));
            task.set_outlook(None, Some(rfc(dl.at)));
        }
        let id = task.id();
        lock(&self.runs).insert(
            id,
            Watch {
                task,
                job,
                due,
                started,
                clock: Instant::now(),
                deadline,
                recent: Recent::default(),
                recent_up: Recent::default(),
                observed: (0, Duration::ZERO),
                predicted: None,
                overrunning: 0,
                warned: false,
                overran: false,
            },
        );
    }

    /// Stop watching a run that ended; how it stood.
    pub(crate) fn end(&self, task: &str) -> Option<Ended> {
        let w = lock(&self.runs).remove(task)?;
        lock(&self.history).remove(&w.job.id);
        let overran = w.overran || w.deadline.as_ref().is_some_and(|d| Utc::now() > d.at);
        Some(Ended {
            deadline: w.deadline,
            overran,
        })
    }

    /// The job's recorded runs (newest first), cached for a while.
    pub fn history(&self, catalog: &Catalog, job: i64) -> Vec<Sample> {
        if let Some((at, h)) = lock(&self.history).get(&job)
            && at.elapsed() < HISTORY_TTL
        {
            return h.clone();
        }
        let h: Vec<Sample> = match catalog.run_stats(job, predict::HISTORY as i64) {
            Ok(rows) => rows
                .into_iter()
                .map(|r| Sample {
                    bytes_scanned: r.stats.bytes_scanned,
                    duration: Duration::from_millis(r.stats.duration_ms),
                })
                .collect(),
            Err(e) => {
                tracing::warn!("reading job {job}'s history for predictions: {e}");
                Vec::new()
            }
        };
        lock(&self.history).insert(job, (Instant::now(), h.clone()));
        h
    }

    /// The outlook of `job`: its running run's, else its next scheduled run's (`next`).
    pub fn outlook(&self, catalog: &Catalog, job: &JobDef, next: Option<DateTime<Utc>>) -> Outlook {
        let running = lock(&self.runs)
            .values()
            .find(|w| w.job.id == job.id)
            .map(|w| (w.predicted, w.deadline.as_ref().map(|d| d.at), w.started));
        if let Some((predicted, window_end, started)) = running {
            return Outlook {
                running: true,
                predicted_finish: predicted,
                predicted_duration: predicted.and_then(|p| (p - started).to_std().ok()),
                window_end,
            };
        }
        let Some(next) = next else {
            return Outlook::default();
        };
        let took = predict::predict(&self.history(catalog, job.id), None);
        Outlook {
            running: false,
            predicted_finish: took.map(|d| add(next, d)),
            predicted_duration: took,
            window_end: deadline(job, Some(next), next).map(|d| d.at),
        }
    }

    /// The predicted duration of a run of `job` that has not started (for ordering queued
    /// runs: longest first).
    pub fn expected(&self, catalog: &Catalog, job: &JobDef) -> Duration {
        predict::predict(&self.history(catalog, job.id), None).unwrap_or_default()
    }
}

/// What a look decided to do, done after leaving the lock.
enum Act {
    Cancel(Arc<Task>, String, Event),
    Warn(Arc<Task>, String, Event),
    /// Drop a mirror run's member (index, target name, reason).
    Drop(Arc<Task>, usize, String, String, Event),
}

/// Watch runs until `stop`.
pub fn run(d: Arc<Daemon>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        look(&d);
        std::thread::sleep(TICK);
    }
}

/// One look at every watched run.
pub fn look(d: &Daemon) {
    let jobs: Vec<i64> = lock(&d.windows.runs).values().map(|w| w.job.id).collect();
    let histories: HashMap<i64, Vec<Sample>> = jobs
        .into_iter()
        .map(|j| (j, d.windows.history(&d.catalog, j)))
        .collect();
    let now = Utc::now();
    let mut acts = Vec::new();
    for w in lock(&d.windows.runs).values_mut() {
        let info = w.task.info();
        let elapsed = w.clock.elapsed();
        let read_all = info
            .bytes_total
            .is_some_and(|t| t > 0 && info.bytes_done >= t);
        if info.bytes_done == 0 {
            w.recent.nothing_at(elapsed);
        } else if !read_all || w.observed.1.is_zero() {
            // Once the reading is over its rate stays as it was (what is left is the
            // backlog, at the upload rate).
            w.observed = w.recent.observe(elapsed, info.bytes_done);
        }
        let observed = w.observed;
        // What the targets acknowledged, per target (the saver's own count of stored data
        // includes what a mirror still holds in its queues): a running mirror's slowest
        // live member, else the average.
        let members = w.task.run_control().members();
        let stored = members
            .as_ref()
            .and_then(|(ms, _)| {
                ms.iter()
                    .filter(|m| m.status.dropped.is_none())
                    .map(|m| m.status.bytes)
                    .min()
            })
            .unwrap_or_else(|| {
                info.bytes_uploaded / u64::try_from(w.job.redundancy.max(1)).unwrap_or(1)
            });
        let observed_stored = if stored == 0 {
            w.recent_up.nothing_at(elapsed);
            (0, Duration::ZERO)
        } else {
            w.recent_up.observe(elapsed, stored)
        };
        let live = Live {
            elapsed,
            done: info.bytes_done,
            total: info.bytes_total,
            observed,
            new: info.bytes_new,
            stored,
            observed_stored,
        };
        let empty = Vec::new();
        let history = histories.get(&w.job.id).unwrap_or(&empty);
        w.predicted = predict::predict(history, Some(&live)).map(|p| add(w.started, p));
        let window_end = w.deadline.as_ref().map(|dl| rfc(dl.at));
        let precise = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        w.task.set_outlook(w.predicted.map(precise), window_end);
        d.metrics
            .outlook(&w.job.name, w.predicted, w.deadline.as_ref().map(|x| x.at));
        let Some(dl) = w.deadline.clone() else {
            continue;
        };
        let base = Event {
            event: "",
            job: w.job.name.clone(),
            task: info.id.clone(),
            due: w.due.map(rfc).unwrap_or_default(),
            window_end: rfc(dl.at),
            predicted_finish: w.predicted.map(rfc).unwrap_or_default(),
            reason: String::new(),
        };
        let event = |event: &'static str, reason: &str| Event {
            event,
            reason: reason.to_string(),
            ..base.clone()
        };
        let action = w.job.settings.at_window_end;
        if now >= dl.at {
            match action {
                WindowEnd::Cancel | WindowEnd::CancelEarly => {
                    let why = format!(
                        "cancelled at its deadline: {}",
                        dl.what.replace("ends", "ended")
                    );
                    acts.push(Act::Cancel(
                        Arc::clone(&w.task),
                        why.clone(),
                        event("window-cancelled", &why),
                    ));
                }
                WindowEnd::Finish if !w.overran => {
                    w.overran = true;
                    let why = format!(
                        "{}; running on past it (at-window-end finish)",
                        dl.what.replace("ends", "ended")
                    );
                    d.metrics.window_overrun(&w.job.name);
                    acts.push(Act::Warn(
                        Arc::clone(&w.task),
                        why.clone(),
                        event("window-overrun", &why),
                    ));
                }
                WindowEnd::Finish => {}
            }
            continue;
        }
        let Some(p) = w.predicted else {
            w.overrunning = 0;
            continue;
        };
        if p <= dl.at {
            w.overrunning = 0;
            continue;
        }
        w.overrunning += 1;
        if w.overrunning < CONFIRM {
            continue;
        }
        let late = (p - dl.at).to_std().unwrap_or_default();
        if !w.warned {
            w.warned = true;
            let why = format!(
                "predicted to finish at {} ({}/{} bytes done), {} after {}",
                rfc(p),
                info.bytes_done,
                info.bytes_total.map_or("?".into(), |t| t.to_string()),
                kura_types::Duration::from_secs(late.as_secs()),
                dl.what
            );
            d.metrics.overrun_warning(&w.job.name);
            acts.push(Act::Warn(
                Arc::clone(&w.task),
                format!("warning: {why}"),
                event("overrun-predicted", &why),
            ));
        }
        // A mirror target that alone makes the run overrun goes, while the quorum holds.
        if let Some((ms, quorum)) = &members
            && let Some(drop) = pace::slowest_alone(ms, *quorum, now, p, dl.at)
        {
            w.overrunning = 0;
            let said = format!("target {} dropped: {}", drop.target, drop.reason);
            acts.push(Act::Drop(
                Arc::clone(&w.task),
                drop.index,
                drop.target,
                drop.reason,
                event("target-dropped", &said),
            ));
            continue;
        }
        let allowed = (dl.at - w.started).to_std().unwrap_or_default();
        if action == WindowEnd::CancelEarly
            && observed.1.max(observed_stored.1) >= EARLY_AFTER
            && late.as_secs_f64() > EARLY_MARGIN * allowed.as_secs_f64()
        {
            let why = format!(
                "cancelled early: predicted to finish at {}, {} after {} (at-window-end \
                 cancel-early)",
                rfc(p),
                kura_types::Duration::from_secs(late.as_secs()),
                dl.what
            );
            acts.push(Act::Cancel(
                Arc::clone(&w.task),
                why.clone(),
                event("window-cancelled", &why),
            ));
        }
    }
    for act in acts {
        match act {
            Act::Cancel(task, why, event) => {
                if task.cancel_token().is_cancelled() {
                    continue;
                }
                tracing::warn!("job {} (task {}): {why}", event.job, event.task);
                task.cancel_because(why);
                notify::send(d.options.notify.as_deref(), event);
            }
            Act::Warn(task, why, event) => {
                tracing::warn!("job {} (task {}): {why}", event.job, event.task);
                task.log(why);
                notify::send(d.options.notify.as_deref(), event);
            }
            Act::Drop(task, index, target, why, event) => {
                match task.run_control().drop_member(index, &why) {
                    Ok(()) => {
                        tracing::warn!(
                            "job {} (task {}): target {target} dropped: {why}",
                            event.job,
                            event.task
                        );
                        task.log(format!("target {target} dropped: {why}"));
                        d.metrics.target_dropped(&event.job);
                        notify::send(d.options.notify.as_deref(), event);
                    }
                    Err(e) => tracing::debug!("dropping target {target}: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_types::JobSettings;

    fn job(s: JobSettings) -> JobDef {
        JobDef {
            id: 1,
            name: "nightly".into(),
            object: "/srv".into(),
            schedule: Some("daily".into()),
            redundancy: 1,
            mode: kura_catalog::Mode::Mirror,
            settings: s,
        }
    }

    #[test]
    fn the_deadline_is_the_earlier_of_the_window_and_max_run() {
        let due = DateTime::parse_from_rfc3339("2026-01-01T01:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let started = add(due, Duration::from_secs(600));
        let mut s = JobSettings::default();
        assert_eq!(deadline(&job(s.clone()), Some(due), started), None);
        s.finish_within = Some("1h".parse().unwrap());
        let d = deadline(&job(s.clone()), Some(due), started).unwrap();
        assert_eq!(rfc(d.at), "2026-01-01T02:00:00Z");
        assert!(d.what.contains("finish-within 1h"), "{}", d.what);
        // On demand: no scheduled time, no window.
        assert_eq!(deadline(&job(s.clone()), None, started), None);
        s.max_run = Some("30m".parse().unwrap());
        let d = deadline(&job(s.clone()), Some(due), started).unwrap();
        assert_eq!(rfc(d.at), "2026-01-01T01:40:00Z");
        assert!(d.what.contains("max-run"), "{}", d.what);
        s.max_run = Some("2h".parse().unwrap());
        let d = deadline(&job(s), Some(due), started).unwrap();
        assert_eq!(rfc(d.at), "2026-01-01T02:00:00Z");
    }
}
