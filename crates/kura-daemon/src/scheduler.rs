//! The scheduler: runs each job's scheduled occurrences, exactly once across every daemon
//! sharing the catalog.
//!
//! Once a second — and at each job's next occurrence, so a run starts within milliseconds
//! of its time — it reads the jobs, and for each job with a schedule works out which
//! occurrences fell due since the last one it knows of (the newest claim in the catalog, or
//! this daemon's start for a job never run): see [`kura_schedule::Schedule::missed`]. Each
//! occurrence is *claimed* in the catalog before anything is done with it
//! ([`kura_catalog::Catalog::claim_run`]): the insert succeeds for one daemon only, so an
//! occurrence runs once, or is recorded `missed` or `skipped` once — never silently
//! dropped, never run twice. While a run goes on its daemon renews the claim's lease; a
//! daemon killed mid-run stops renewing, and the next daemon to look records the claim
//! `expired`; the job's next occurrence goes ahead as usual.
//!
//! # Missed occurrences (catch-up)
//! Occurrences that fell due while no daemon ran (or the machine slept) follow the job's
//! catch-up policy: `one` (the default) runs the newest of them now and records the older
//! ones missed; `none` records them all missed, except one due within [`ON_TIME`] (a tick
//! late is not missed). A clock that jumps backwards makes nothing due until it passes the
//! last occurrence again; one that jumps forwards is a gap like any other.
//!
//! # Overlap
//! An occurrence that falls due while the job's previous run still runs (on any daemon)
//! follows the job's overlap policy: `skip` (the default) records it skipped; `queue` runs
//! it once the previous run ends; `cancel-older` cancels the previous run (on this daemon)
//! and starts the new one.
//!
//! # Start windows
//! An occurrence not started within the job's `start-within` of its scheduled time — no
//! daemon ran, it waited behind the previous run (overlap `queue`), or its targets stayed
//! busy with other runs (the run waits for them until its start window ends, see
//! [`crate::JobRunner`]) — is recorded `missed` with the reason, and the notification hook
//! hears of it. Without a `start-within`, a run whose targets are busy fails at once. (The run's window and
//! `max-run` are enforced while it runs: [`crate::window`].)
//!
//! # Order
//! Occurrences ready at the same look start longest-predicted-first (from each job's
//! history, [`crate::window::Windows::expected`]): the long runs get the most of the
//! night, the short ones fit around them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use kura_catalog::{ClaimState, JobDef};
use kura_schedule::{Schedule, Tz};
use kura_types::{CatchUp, Overlap};

use crate::Daemon;
use crate::notify::{self, Event};

/// How often the scheduler looks.
pub const TICK: Duration = Duration::from_secs(1);
/// An occurrence this late still counts as on time (catch-up `none`).
pub const ON_TIME: Duration = Duration::from_secs(60);
/// A claim's lease; renewed every [`RENEW`] while its run goes on.
pub const LEASE: Duration = Duration::from_secs(45);
pub const RENEW: Duration = Duration::from_secs(10);
/// At most this many missed occurrences are recorded one by one per look.
const RECORD_AT_MOST: usize = 100;

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The zone of schedules that name none.
    pub zone: Tz,
    /// A claim's lease, and how often a running claim renews it ([`LEASE`], [`RENEW`]).
    pub lease: Duration,
    pub renew: Duration,
}

impl SchedulerOptions {
    pub fn new(zone: Tz) -> SchedulerOptions {
        SchedulerOptions {
            zone,
            lease: LEASE,
            renew: RENEW,
        }
    }
}

/// A job's next scheduled run after now, or why its schedule is not understood (`Ok(None)`:
/// no schedule, or one that never runs again). The one place a job's next run is worked
/// out (the API, `kura job list`).
pub fn next_run(job: &JobDef, zone: Tz) -> std::result::Result<Option<DateTime<Utc>>, String> {
    match job.schedule.as_deref() {
        None => Ok(None),
        Some(text) => Schedule::parse(text, zone)
            .map(|s| s.next_after(Utc::now()))
            .map_err(|e| e.to_string()),
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

struct JobState {
    /// The newest occurrence dealt with (claimed, recorded, or queued).
    last: DateTime<Utc>,
    /// An occurrence waiting for the previous run to end (overlap `queue`).
    queued: Option<DateTime<Utc>>,
    /// The schedule text that failed to parse (reported once).
    bad: Option<String>,
}

/// Run the scheduler until `stop`.
pub fn run(daemon: Arc<Daemon>, options: SchedulerOptions, stop: Arc<AtomicBool>) {
    let started = Utc::now();
    let mut jobs: HashMap<i64, JobState> = HashMap::new();
    // A failing look (the catalog away) is reported when it starts, then once a minute
    // while it lasts, and when it ends — not once a second.
    let mut failing_since: Option<std::time::Instant> = None;
    let mut last_said = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut next = None;
        match tick(&daemon, &options, started, &mut jobs) {
            Ok(soonest) => {
                next = soonest;
                if let Some(since) = failing_since.take() {
                    tracing::warn!(
                        "scheduler: looking works again after {:.0} s; occurrences due \
                         meanwhile follow their catch-up policy",
                        since.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => {
                if failing_since.is_none() || last_said.elapsed() >= REPEAT_FAILURE {
                    tracing::warn!("scheduler: {e}; nothing is started until it answers");
                    last_said = std::time::Instant::now();
                }
                failing_since.get_or_insert_with(std::time::Instant::now);
            }
        }
        // Wake for the soonest occurrence (a run starts within milliseconds of its time),
        // or after a tick to see changed jobs and catch a clock that jumped.
        let wait = next.map_or(TICK, |t| {
            (t - Utc::now()).to_std().unwrap_or_default().min(TICK)
        });
        std::thread::sleep(wait.max(MIN_NAP));
    }
}

/// The shortest sleep between looks (an occurrence due now is looked at after it).
const MIN_NAP: Duration = Duration::from_millis(5);

/// How often a lasting failure of the scheduler's look is reported again.
const REPEAT_FAILURE: Duration = Duration::from_secs(60);

/// One look; the soonest occurrence still to come of any job.
fn tick(
    d: &Arc<Daemon>,
    o: &SchedulerOptions,
    started: DateTime<Utc>,
    jobs: &mut HashMap<i64, JobState>,
) -> crate::Result<Option<DateTime<Utc>>> {
    let cat = &d.catalog;
    cat.expire_claims().map_err(crate::Error::catalog)?;
    let defs = cat.jobs().map_err(crate::Error::catalog)?;
    jobs.retain(|id, _| defs.iter().any(|j| j.id == *id));
    let now = Utc::now();
    let mut ready: Vec<(JobDef, DateTime<Utc>)> = Vec::new();
    let mut soonest: Option<DateTime<Utc>> = None;
    for job in defs {
        let Some(text) = job.schedule.clone() else {
            continue;
        };
        let schedule = match Schedule::parse(&text, o.zone) {
            Ok(s) => s,
            Err(e) => {
                let st = jobs.entry(job.id).or_insert(JobState {
                    last: now,
                    queued: None,
                    bad: None,
                });
                if st.bad.as_deref() != Some(text.as_str()) {
                    tracing::error!("job {}: schedule {text:?}: {e}; not scheduled", job.name);
                    st.bad = Some(text);
                }
                continue;
            }
        };
        if let std::collections::hash_map::Entry::Vacant(v) = jobs.entry(job.id) {
            let newest = cat
                .claims(Some(job.id), 1)
                .map_err(crate::Error::catalog)?
                .first()
                .map(|c| at(c.due));
            v.insert(JobState {
                last: newest.unwrap_or(started),
                queued: None,
                bad: None,
            });
        }
        if let Some(n) = schedule.next_after(now) {
            soonest = Some(soonest.map_or(n, |s| s.min(n)));
        }
        let policy = &job.settings;
        let Some(st) = jobs.get_mut(&job.id) else {
            continue;
        };
        st.bad = None;
        let missed = schedule.missed(st.last, now, RECORD_AT_MOST);
        let mut due = st.queued.take();
        if let Some(q) = due
            && let Some(why) =
                too_late(&job, q, now, "it was still waiting behind its previous run")
        {
            record(d, &job, q, ClaimState::Missed, &why);
            due = None;
        }
        if let Some(latest) = missed.latest {
            st.last = latest;
            let older: Vec<DateTime<Utc>> = missed
                .times
                .iter()
                .copied()
                .filter(|t| *t < latest)
                .collect();
            let on_time = (now - latest).to_std().unwrap_or_default() <= ON_TIME;
            let run_latest = policy.catch_up == CatchUp::One || on_time;
            let mut unrun = older;
            if !run_latest {
                unrun.push(latest);
            }
            let why = "no daemon ran when it fell due (catch-up policy: only the newest \
                       missed occurrence runs)";
            for t in unrun {
                record(d, &job, t, ClaimState::Missed, why);
            }
            if missed.truncated {
                tracing::warn!(
                    "job {}: more than {RECORD_AT_MOST} occurrences fell due while no daemon \
                     ran; the others are not recorded one by one",
                    job.name
                );
            }
            let late = run_latest
                .then(|| too_late(&job, latest, now, "no daemon ran it in time"))
                .flatten();
            if let Some(why) = &late {
                record(d, &job, latest, ClaimState::Missed, why);
            }
            if run_latest && late.is_none() {
                if let Some(q) = due {
                    record(
                        d,
                        &job,
                        q,
                        ClaimState::Skipped,
                        "a newer occurrence fell due while it waited",
                    );
                }
                due = Some(latest);
            }
        }
        let Some(due) = due else {
            continue;
        };
        if let Some(why) = still_running(d, &job)? {
            match policy.overlap {
                Overlap::Skip => {
                    record(d, &job, due, ClaimState::Skipped, &why);
                    continue;
                }
                Overlap::Queue => {
                    st.queued = Some(due);
                    continue;
                }
                Overlap::CancelOlder => {
                    for t in d.tasks.running() {
                        let i = t.info();
                        if i.kind == "job-run" && i.subject == job.name {
                            t.cancel_because(format!(
                                "replaced by its occurrence due at {} (overlap cancel-older)",
                                due.to_rfc3339()
                            ));
                        }
                    }
                    // Started at the next look, once the older run has ended.
                    st.queued = Some(due);
                    continue;
                }
            }
        }
        ready.push((job, due));
    }
    // Longest predicted first.
    let mut ready: Vec<(Duration, JobDef, DateTime<Utc>)> = ready
        .into_iter()
        .map(|(j, due)| (d.windows.expected(&d.catalog, &j), j, due))
        .collect();
    ready.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, job, due) in ready {
        start(d, o, job, due);
    }
    Ok(soonest)
}

/// Why the occurrence of `job` due at `due` may no longer start at `now` (its
/// `start-within` passed), if it may not; `because` says what kept it.
fn too_late(job: &JobDef, due: DateTime<Utc>, now: DateTime<Utc>, because: &str) -> Option<String> {
    let within = job.settings.start_within?;
    let late = (now - due).to_std().unwrap_or_default();
    (late > within.std()).then(|| {
        format!(
            "not started within its start window (start-within {within}): {because}; \
             {:.0} s late",
            late.as_secs_f64()
        )
    })
}

/// Why `job` counts as running, if it does: a run of it on this daemon, or a live claim of
/// another daemon.
fn still_running(d: &Arc<Daemon>, job: &JobDef) -> crate::Result<Option<String>> {
    let here = d.tasks.running().into_iter().find(|t| {
        let i = t.info();
        i.kind == "job-run" && i.subject == job.name
    });
    if let Some(t) = here {
        return Ok(Some(format!("its run {} was still going", t.info().id)));
    }
    let claims = d
        .catalog
        .claims(Some(job.id), 5)
        .map_err(crate::Error::catalog)?;
    Ok(claims
        .iter()
        .find(|c| c.state == ClaimState::Started)
        .map(|c| {
            format!(
                "its run due at {} was still going on daemon {}",
                at(c.due).to_rfc3339(),
                c.daemon
            )
        }))
}

fn record(d: &Daemon, job: &JobDef, due: DateTime<Utc>, state: ClaimState, why: &str) {
    match d
        .catalog
        .record_unrun(job.id, ms(due), &d.options.name, state, why)
    {
        Ok(true) => {
            tracing::warn!(
                "job {}: occurrence due at {} {}: {why}",
                job.name,
                due.to_rfc3339(),
                state.as_str()
            );
            if state == ClaimState::Missed {
                notify::send(
                    d.options.notify.as_deref(),
                    Event {
                        event: "missed",
                        job: job.name.clone(),
                        due: due.to_rfc3339(),
                        reason: why.to_string(),
                        ..Event::default()
                    },
                );
            }
        }
        Ok(false) => {} // another daemon dealt with it
        Err(e) => tracing::warn!("job {}: recording an occurrence: {e}", job.name),
    }
}

/// Claim the occurrence and, if this daemon got it, run it as a task.
fn start(d: &Arc<Daemon>, o: &SchedulerOptions, job: JobDef, due: DateTime<Utc>) {
    let lease = i64::try_from(o.lease.as_millis()).unwrap_or(i64::MAX);
    let renew = o.renew;
    let name = d.options.name.clone();
    match d.catalog.claim_run(job.id, ms(due), &name, lease) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!("job {}: claiming its run: {e}", job.name);
            return;
        }
    }
    let (id, due_ms) = (job.id, ms(due));
    let running = Arc::new(AtomicBool::new(true));
    {
        // Renew the claim while the run goes on.
        let (d, running, name) = (Arc::clone(d), Arc::clone(&running), name.clone());
        std::thread::spawn(move || {
            loop {
                sleep_while(&running, renew);
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                match d.catalog.renew_claim(id, due_ms, &name, lease) {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(
                        "the claim of job {id}'s run was lost (its lease expired): the run \
                         goes on but is recorded expired"
                    ),
                    Err(e) => tracing::warn!("renewing a run's claim: {e}"),
                }
            }
        });
    }
    let job_name = job.name.clone();
    let cat = Arc::clone(&d.catalog);
    let renewing = Arc::clone(&running);
    let hook = d.options.notify.clone();
    let within = job.settings.start_within;
    let then = Box::new(move |t: &crate::TaskInfo, not_started: Option<&str>| {
        renewing.store(false, Ordering::SeqCst);
        let missed = not_started.map(|why| {
            let within = within
                .map(|w| format!(" (start-within {w})"))
                .unwrap_or_default();
            format!("not started within its start window{within}: {why}")
        });
        let (state, why) = match (&missed, t.state) {
            (Some(why), _) => (ClaimState::Missed, Some(why.as_str())),
            (None, crate::TaskState::Succeeded | crate::TaskState::Running) => {
                (ClaimState::Succeeded, t.overrun.as_deref())
            }
            (None, crate::TaskState::Cancelled) => (ClaimState::Cancelled, t.error.as_deref()),
            (None, crate::TaskState::Failed) => (ClaimState::Failed, t.error.as_deref()),
        };
        if let Err(e) = cat.finish_claim(id, due_ms, state, why) {
            tracing::warn!("job {job_name}: recording how its run ended: {e}");
        }
        if let Some(why) = missed {
            tracing::warn!(
                "job {job_name}: occurrence due at {} missed: {why}",
                due.to_rfc3339()
            );
            notify::send(
                hook.as_deref(),
                Event {
                    event: "missed",
                    job: job_name.clone(),
                    due: due.to_rfc3339(),
                    reason: why,
                    ..Event::default()
                },
            );
        }
    });
    let by = format!("schedule ({})", due.to_rfc3339());
    if let Err(e) = d.start_job(job.clone(), &by, Some(due), Some(then)) {
        running.store(false, Ordering::SeqCst);
        tracing::warn!("job {}: starting its run: {e}", job.name);
        let _ = d.catalog.finish_claim(
            job.id,
            due_ms,
            ClaimState::Failed,
            Some(&format!("could not start: {e}")),
        );
    }
}

/// Sleep up to `d` while `running` holds.
fn sleep_while(running: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while running.load(Ordering::SeqCst) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
}
