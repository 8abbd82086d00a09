//! The policy runner: backs the daemon's volumes up at each occurrence of their policies,
//! with no client involved (seed 004's timer and control logic).
//!
//! Once a second it reads the policy table from the catalog — so a table applied anywhere
//! is picked up at the next look, without a restart — and, for each entry whose volume this
//! daemon hosts, works out which occurrences fell due since the last one dealt with (the
//! newest run row, or the later of this daemon's start and the table's application for an
//! entry never run). The newest due occurrence is *claimed* in the catalog
//! ([`kura_catalog::ClaimOn::Policy`]: the scheduler's mechanism; the insert succeeds for
//! one daemon only) and run; older ones are recorded `missed`, and one that falls due while
//! the volume's previous backup still runs is recorded `skipped` — never dropped silently.
//!
//! A run is a daemon task (`volume-backup`, its subject the volume) on a thread of its own:
//! it asks the volume engine for a backup (the engine freezes the volume by a session or a
//! pair split, answers, and copies in the background at low priority while hosts go on
//! writing), follows the engine's job to its end, renewing the claim's lease meanwhile, and
//! records the end — normal (the snapshot) or abnormal (the reason) — in the run row (the
//! backup information table), the task's log, a catalog event on the target when the
//! policy names a catalog target, the log, and the metrics
//! (`kura_policy_last_result`, `kura_policy_runs_total`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use kura_catalog::{ClaimOn, ClaimState, PolicyRow};
use kura_schedule::Schedule;
use kura_volume::{JobState, JobStatus};

use super::Volumes;
use crate::scheduler::SchedulerOptions;
use crate::{Daemon, Task};

/// How often the runner looks.
pub const TICK: Duration = Duration::from_secs(1);
/// How often a running backup's progress is read from the engine.
const POLL: Duration = Duration::from_millis(200);
/// At most this many missed occurrences are recorded one by one per look.
const RECORD_AT_MOST: usize = 100;
/// The task kind of a policy's run.
pub const TASK_KIND: &str = "volume-backup";

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

struct Seen {
    /// The newest occurrence dealt with.
    last: DateTime<Utc>,
    /// A schedule text that failed to parse (reported once).
    bad: Option<String>,
}

/// Run the policies of the volumes `daemon` hosts until `stop` (lease and zone from
/// `options`, as the scheduler's).
pub fn run(daemon: Arc<Daemon>, options: SchedulerOptions, stop: Arc<AtomicBool>) {
    let started = Utc::now();
    let mut seen: HashMap<i64, Seen> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = tick(&daemon, &options, started, &mut seen) {
            tracing::warn!("policies: {e}");
        }
        std::thread::sleep(TICK);
    }
}

fn tick(
    d: &Arc<Daemon>,
    o: &SchedulerOptions,
    started: DateTime<Utc>,
    seen: &mut HashMap<i64, Seen>,
) -> crate::Result<()> {
    let Some(v) = d.volumes() else {
        return Ok(());
    };
    let cat = &d.catalog;
    cat.expire_claims().map_err(crate::Error::catalog)?;
    let policies = cat.policies().map_err(crate::Error::catalog)?;
    seen.retain(|id, _| policies.iter().any(|p| p.id == *id));
    let now = Utc::now();
    for p in policies {
        // Only the volumes this daemon hosts: another daemon may host the others.
        if v.store().meta(&p.entry.volume).is_err() {
            continue;
        }
        let text = &p.entry.schedule;
        let schedule = match Schedule::parse(text, o.zone) {
            Ok(s) => s,
            Err(e) => {
                let s = seen.entry(p.id).or_insert(Seen {
                    last: now,
                    bad: None,
                });
                if s.bad.as_deref() != Some(text.as_str()) {
                    tracing::error!(
                        "policy of volume {}: schedule {text:?}: {e}; not run",
                        p.entry.volume
                    );
                    s.bad = Some(text.clone());
                }
                continue;
            }
        };
        let s = match seen.entry(p.id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let newest = cat
                    .policy_runs(p.id, 1)
                    .map_err(crate::Error::catalog)?
                    .first()
                    .map(|r| at(r.due));
                v.insert(Seen {
                    last: newest.unwrap_or_else(|| started.max(at(p.applied))),
                    bad: None,
                })
            }
        };
        s.bad = None;
        let missed = schedule.missed(s.last, now, RECORD_AT_MOST);
        let Some(latest) = missed.latest else {
            continue;
        };
        s.last = latest;
        for t in missed.times.iter().filter(|t| **t < latest) {
            record(
                d,
                &p,
                *t,
                ClaimState::Missed,
                "no daemon hosting the volume ran when it fell due (only the newest missed \
                 occurrence runs)",
            );
        }
        if let Some(why) = still_running(d, &p)? {
            record(d, &p, latest, ClaimState::Skipped, &why);
            continue;
        }
        start(d, o, v, p, latest);
    }
    Ok(())
}

/// Why the volume's previous backup counts as still running, if it does: a task of this
/// daemon, or a started run of the same policy on another.
fn still_running(d: &Daemon, p: &PolicyRow) -> crate::Result<Option<String>> {
    let here = d.tasks.running().into_iter().find(|t| {
        let i = t.info();
        i.kind == TASK_KIND && i.subject == p.entry.volume
    });
    if let Some(t) = here {
        return Ok(Some(format!(
            "the volume's previous backup (task {}) was still running",
            t.info().id
        )));
    }
    let runs = d
        .catalog
        .policy_runs(p.id, 5)
        .map_err(crate::Error::catalog)?;
    Ok(runs
        .iter()
        .find(|r| r.state == ClaimState::Started)
        .map(|r| {
            format!(
                "its run due at {} was still going on daemon {}",
                at(r.due).to_rfc3339(),
                r.daemon
            )
        }))
}

fn record(d: &Daemon, p: &PolicyRow, due: DateTime<Utc>, state: ClaimState, why: &str) {
    match d
        .catalog
        .record_unrun_on(ClaimOn::Policy(p.id), ms(due), &d.options.name, state, why)
    {
        Ok(true) => tracing::warn!(
            "policy of volume {}: occurrence due at {} {}: {why}",
            p.entry.volume,
            due.to_rfc3339(),
            state.as_str()
        ),
        Ok(false) => {} // another daemon dealt with it
        Err(e) => tracing::warn!(
            "policy of volume {}: recording an occurrence: {e}",
            p.entry.volume
        ),
    }
}

/// Claim the occurrence and, if this daemon got it, run it as a task.
fn start(
    d: &Arc<Daemon>,
    o: &SchedulerOptions,
    v: &Arc<Volumes>,
    p: PolicyRow,
    due: DateTime<Utc>,
) {
    let lease = i64::try_from(o.lease.as_millis()).unwrap_or(i64::MAX);
    let on = ClaimOn::Policy(p.id);
    match d.catalog.claim_on(on, ms(due), &d.options.name, lease) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!("policy of volume {}: claiming its run: {e}", p.entry.volume);
            return;
        }
    }
    let by = format!("policy ({})", due.to_rfc3339());
    let task = match d.tasks.start(TASK_KIND, &p.entry.volume, &by) {
        Ok(t) => t,
        Err(e) => {
            finish(
                d,
                v,
                &p,
                ms(due),
                Err(format!("could not start a task: {e}")),
                None,
            );
            return;
        }
    };
    if let Err(e) = d.catalog.policy_run_task(p.id, ms(due), &task.id()) {
        tracing::warn!("policy of volume {}: noting its task: {e}", p.entry.volume);
    }
    let (d2, v2, p2, renew) = (Arc::clone(d), Arc::clone(v), p.clone(), o.renew);
    let failed = Arc::clone(&task);
    let spawned = std::thread::Builder::new()
        .name(format!("kura-task-{}", task.id()))
        .spawn(move || {
            let due_ms = ms(due);
            let renew_claim = || match d2.catalog.renew_on(on, due_ms, &d2.options.name, lease) {
                Ok(true) => {}
                Ok(false) => task.log(
                    "the claim of this run was lost (its lease expired): the backup goes \
                         on but the run is recorded expired",
                ),
                Err(e) => tracing::warn!("renewing a policy run's claim: {e}"),
            };
            let result = back_up(&v2, &p2, &task, renew, renew_claim);
            finish(&d2, &v2, &p2, due_ms, result, Some(&task));
            d2.tasks.reap();
        });
    if let Err(e) = spawned {
        finish(
            d,
            v,
            &p,
            ms(due),
            Err(format!("could not start its thread: {e}")),
            Some(&failed),
        );
    }
}

/// One backup of the policy's volume through the volume engine, followed to its end: the
/// snapshot, or why there is none.
fn back_up(
    v: &Volumes,
    p: &PolicyRow,
    task: &Task,
    renew_every: Duration,
    renew: impl Fn(),
) -> std::result::Result<String, String> {
    let e = &p.entry;
    task.log(format!(
        "policy {}: volume {} to {} ({}), freeze {}{}",
        p.position,
        e.volume,
        e.target,
        p.target_url,
        e.freeze.as_str(),
        e.route
            .as_deref()
            .map(|r| format!(", route {r}"))
            .unwrap_or_default()
    ));
    let named = (!super::is_url(&e.target)).then_some(&*e.target);
    let access = v.env.access(&p.target_url, named, e.route.as_deref())?;
    let mut job = v
        .engine
        .backup(&e.volume, e.freeze, None, &access)
        .map_err(|err| err.to_string())?;
    let how = match (&job.freeze, &job.work_volume) {
        (kura_types::Freeze::Session, Some(w)) => format!("a backup session (working volume {w})"),
        _ => "splitting its mirror pair".to_string(),
    };
    task.log(format!(
        "frozen by {how}; engine job {}: {} to copy{}",
        job.id,
        job.bytes_total,
        job.full_reason
            .as_deref()
            .map(|r| format!(", reading everything: {r}"))
            .unwrap_or_else(|| if job.incremental {
                ", incremental".into()
            } else {
                String::new()
            })
    ));
    kura_repo::progress::Progress::start(task, "copying the frozen image", Some(job.bytes_total));
    let mut shown = 0;
    let mut renewed = Instant::now();
    let mut cancel_told = false;
    while job.state == JobState::Running {
        std::thread::sleep(POLL);
        if !cancel_told && task.cancel_token().is_cancelled() {
            // The copy stops at its next block; no snapshot, and the changes it was to
            // copy stay marked for the volume's next backup.
            match v.engine.cancel_job(job.id) {
                Ok(()) => task.log(
                    "cancel asked: the copy stops at its next block; the changes stay \
                     marked for the next backup",
                ),
                Err(e) => task.log(format!("cancel asked, but the engine refused: {e}")),
            }
            cancel_told = true;
        }
        job = match v.engine.job(job.id) {
            Ok(j) => j,
            Err(err) => return Err(format!("the engine lost its job: {err}")),
        };
        kura_repo::progress::Progress::advance(task, job.bytes_done.saturating_sub(shown), 0);
        shown = shown.max(job.bytes_done);
        if renewed.elapsed() >= renew_every {
            renew();
            renewed = Instant::now();
        }
    }
    ended(task, &job)
}

fn ended(task: &Task, job: &JobStatus) -> std::result::Result<String, String> {
    match (job.state, &job.snapshot) {
        (JobState::Succeeded, Some(snap)) => {
            task.log(format!(
                "snapshot {snap} ({}){}",
                if job.incremental {
                    "incremental"
                } else {
                    "full"
                },
                job.error
                    .as_deref()
                    .map(|e| format!("; after it: {e}"))
                    .unwrap_or_default()
            ));
            Ok(snap.clone())
        }
        _ => Err(job
            .error
            .clone()
            .unwrap_or_else(|| "the backup ended without a snapshot".into())),
    }
}

/// Record a run's end everywhere it is reported (module docs).
fn finish(
    d: &Daemon,
    v: &Volumes,
    p: &PolicyRow,
    due: i64,
    result: std::result::Result<String, String>,
    task: Option<&Task>,
) {
    let e = &p.entry;
    let (state, reason, snapshot) = match &result {
        Ok(s) => (ClaimState::Succeeded, None, Some(s.as_str())),
        Err(why) => (ClaimState::Failed, Some(why.as_str()), None),
    };
    if let Some(t) = task {
        t.finish(result.as_ref().map(|_| ()).map_err(Clone::clone));
    }
    if let Err(err) = d
        .catalog
        .finish_policy_run(p.id, due, state, reason, snapshot)
    {
        tracing::warn!("policy of volume {}: recording its end: {err}", e.volume);
    }
    v.metrics.ended(e, result.is_ok());
    let what = match &result {
        Ok(s) => format!("volume {} backed up by its policy: snapshot {s}", e.volume),
        Err(why) => format!("volume {}: policy backup failed: {why}", e.volume),
    };
    match &result {
        Ok(_) => tracing::info!("{what}"),
        Err(_) => tracing::error!("{what}"),
    }
    if !super::is_url(&e.target) {
        let kind = if result.is_ok() {
            "policy backup"
        } else {
            "policy backup failed"
        };
        if let Err(err) = d.catalog.note(&e.target, kind, &what) {
            tracing::debug!("target {}: noting a policy run: {err}", e.target);
        }
    }
}
