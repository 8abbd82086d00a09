//! One run of a job: secure, renew, hooks, back up in the job's mode, record, release (see
//! the crate docs). The modes' own parts are in [`crate::mirror`] and [`crate::failover`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kura_backend::Backend;
use kura_catalog::{BackupState, Catalog, Constraints, Extent, Secured, Subsystem};
use kura_repo::Repository;
use kura_repo::backup::{BackupOptions, BackupOutcome, CancelToken};
use kura_repo::catalog_record::CatalogRecord;
use kura_repo::progress::Progress;

use crate::hooks::{Hook, HookPhase};
use crate::position::Position;
use crate::{Error, Result};

/// How a run uses its n subsystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// Every file to all n targets at once; succeed when `quorum` finish. A target whose
    /// writes make no progress for `stall_timeout` is dropped.
    Mirror {
        quorum: usize,
        stall_timeout: Duration,
    },
    /// One target at a time, extent by extent; move to the next on an error or when nothing
    /// finishes for `extent_timeout`.
    Failover {
        extent_bytes: u64,
        extent_timeout: Duration,
        /// How long a member may stay unreachable (connection refused, no route) before its
        /// write fails and the run moves on. The caller's `open` builds the members, so it
        /// applies this ([`kura_backend::RetryPolicy::unreachable_for`]); the deadline still
        /// bounds every other transient error.
        unreachable_for: Duration,
    },
}

/// Shapes a secured stream's backend by its route, after the caller's `open` made it from
/// the target URL (given too): the CLI charges it to the traffic limits of the stream's path.
pub type Route = Arc<dyn Fn(&Subsystem, &str, Arc<dyn Backend>) -> Arc<dyn Backend> + Send + Sync>;

/// One backup job run.
pub struct JobSpec {
    /// The job definition's number, or 0 for an ad-hoc backup.
    pub job: i64,
    /// The job's name (kept in the catalog records on the targets).
    pub job_name: Option<String>,
    /// What the catalog calls the backed-up object (a path, an image).
    pub object: String,
    pub sources: Vec<PathBuf>,
    /// n: how many targets to secure.
    pub redundancy: usize,
    pub mode: RunMode,
    /// Only these targets (names), if set.
    pub targets: Option<Vec<String>>,
    /// How long the allocations live without renewal, and how often they are renewed (a
    /// dead manager's targets return to the pool at most `lease` after its last renewal).
    pub lease: Duration,
    pub renew_every: Duration,
    /// How long the check before securing waits for each target to answer
    /// ([`crate::fit`]).
    pub check_within: Duration,
    pub pre: Option<Hook>,
    pub post: Option<Hook>,
    pub backup: BackupOptions,
    /// Applied to each secured stream's backend (`None`: used as `open` made it).
    pub route: Option<Route>,
    /// When the targets are busy (in use by other runs, at their limits), keep trying to
    /// secure them until then — a scheduled run: the end of its start window — and then
    /// end with [`Error::NotStarted`]. `None`: fail at once.
    pub secure_by: Option<std::time::Instant>,
    /// Handed the running mirror, for a supervisor ([`RunControl`](crate::RunControl)).
    pub control: Option<Arc<crate::RunControl>>,
}

/// One target's part in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub stream: i64,
    pub target: String,
    pub location: String,
    /// Mirror: `None` when the target holds the complete snapshot, else why it was dropped.
    /// Fail-over: why the target was failed, if it was.
    pub dropped: Option<String>,
    /// Mirror: bytes written. Fail-over: bytes sent (acknowledged or not).
    pub bytes: u64,
}

/// What a run did.
#[derive(Debug)]
pub struct JobReport {
    pub process: i64,
    /// The catalog's backup number.
    pub backup: i64,
    pub outcome: BackupOutcome,
    pub copies: Vec<Copy>,
    /// Fail-over: the acknowledged extents (catalog rows), in order; mirror: one per copy.
    pub extents: Vec<Extent>,
    /// Fail-over: how often the run moved to the next target.
    pub failovers: usize,
    /// The post hook's failure, if it failed after a successful backup.
    pub post_error: Option<String>,
    /// Targets the check before securing passed over, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Check the targets and secure the fit ones (see [`run_job`]); while too many are busy
/// (in use by other runs, disabled, unhealthy: states that change without this run), try
/// again until `job.secure_by`, unless cancelled — said once in the task's log when it
/// starts waiting. Past `secure_by`: [`Error::NotStarted`] with the last reason. Targets
/// that failed the check (unreachable, another repository) fail the run at once: probing
/// them again every second would only pile up errors.
fn check_and_secure<'c>(
    catalog: &'c Catalog,
    job: &JobSpec,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<(crate::fit::Fitness, kura_catalog::SecuredGuard<'c>)> {
    let began = std::time::Instant::now();
    let mut said = false;
    loop {
        match check_and_secure_once(catalog, job, open)? {
            Attempt::Busy { need, why } => {
                let now = std::time::Instant::now();
                let by = job
                    .secure_by
                    .filter(|by| *by > now && !cancel.is_cancelled());
                let Some(by) = by else {
                    return Err(match job.secure_by {
                        Some(_) if !cancel.is_cancelled() => Error::NotStarted(format!(
                            "its targets stayed busy for {:.0} s, to the end of \
                             its start window: need {need}: {why}",
                            began.elapsed().as_secs_f64()
                        )),
                        _ => kura_catalog::Error::Unavailable { need, why }.into(),
                    });
                };
                if !said {
                    progress.warn(&format!(
                        "waiting up to {:.0} s (its start window) for its targets: {why}",
                        (by - now).as_secs_f64()
                    ));
                    said = true;
                }
                std::thread::sleep(SECURE_POLL.min(by - now));
            }
            Attempt::Secured(fitness, guard) => return Ok((fitness, guard)),
        }
    }
}

enum Attempt<'c> {
    Secured(crate::fit::Fitness, kura_catalog::SecuredGuard<'c>),
    /// Not enough targets free now; may change by itself.
    Busy {
        need: usize,
        why: String,
    },
}

/// One attempt: check before committing (only fit targets are secured, and a run that
/// cannot have enough of them fails here, before the pre hook), then secure.
fn check_and_secure_once<'c>(
    catalog: &'c Catalog,
    job: &JobSpec,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
) -> Result<Attempt<'c>> {
    let fitness = crate::fit::check(catalog, job.targets.as_deref(), open, job.check_within)?;
    let candidates = fitness.fit.len() + fitness.unfit.len() + fitness.unusable.len();
    // (Fewer targets than asked for at all is the catalog's to refuse, as bad input.)
    if fitness.fit.len() < job.redundancy && candidates >= job.redundancy {
        let why = fitness
            .unfit
            .iter()
            .chain(&fitness.unusable)
            .map(|(t, w)| format!("{t}: {w}"))
            .collect::<Vec<_>>()
            .join("; ");
        let why = format!(
            "{} fit target(s){}",
            fitness.fit.len(),
            if why.is_empty() {
                String::new()
            } else {
                format!(", passed over: {why}")
            }
        );
        let need = job.redundancy;
        if fitness.unusable.is_empty() {
            return Err(kura_catalog::Error::Unavailable { need, why }.into());
        }
        return Ok(Attempt::Busy { need, why });
    }
    let constraints = Constraints {
        targets: Some(if candidates >= job.redundancy {
            fitness.fit.clone()
        } else {
            job.targets.clone().unwrap_or_else(|| fitness.fit.clone())
        }),
        lease: job.lease,
        wait: Duration::ZERO,
    };
    match catalog.secure(job.job, job.redundancy, &constraints) {
        Ok(guard) => Ok(Attempt::Secured(fitness, guard)),
        Err(kura_catalog::Error::Unavailable { need, why }) => Ok(Attempt::Busy { need, why }),
        Err(e) => Err(e.into()),
    }
}

/// How often a run waiting for busy targets tries again.
const SECURE_POLL: Duration = Duration::from_secs(1);

/// Run a backup job: see the crate docs for the steps. `open` turns a target URL into a
/// backend (the caller's options: deadlines, credentials).
pub fn run_job(
    catalog: &Catalog,
    job: &JobSpec,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
    password: &[u8],
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<JobReport> {
    let began = std::time::Instant::now();
    match &job.mode {
        RunMode::Mirror { quorum, .. } if *quorum == 0 || *quorum > job.redundancy => {
            return Err(Error::Invalid(format!(
                "quorum {quorum} must be between 1 and the redundancy ({})",
                job.redundancy
            )));
        }
        RunMode::Failover { extent_bytes, .. } if *extent_bytes < 1 << 20 => {
            return Err(Error::Invalid(format!(
                "extent size {extent_bytes} bytes is below the 1 MiB minimum"
            )));
        }
        _ => {}
    }
    let (fitness, guard) = check_and_secure(catalog, job, open, progress, cancel)?;
    let process = guard.secured.process;
    let env = vec![
        ("KURA_JOB", job.job.to_string()),
        ("KURA_PROCESS", process.to_string()),
        ("KURA_OBJECT", job.object.clone()),
    ];
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        // Keep the lease alive; a lost lease means another manager may take the targets:
        // stop the backup.
        s.spawn(|| {
            let every = job.renew_every.min(job.lease / 2);
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                waited += Duration::from_millis(100);
                if waited >= every {
                    waited = Duration::ZERO;
                    if let Err(e) = guard.renew(job.lease) {
                        tracing::error!("process {process}: {e}; stopping the backup");
                        cancel.cancel();
                        return;
                    }
                }
            }
        });
        let r = (|| {
            if let Some(h) = &job.pre {
                h.run(HookPhase::Pre, &env)?;
            }
            let members = open_targets(catalog, &guard.secured, open, job.route.as_ref())?;
            let done = match &job.mode {
                RunMode::Mirror {
                    quorum,
                    stall_timeout,
                } => crate::mirror::back_up(
                    job,
                    guard
                        .secured
                        .subsystems
                        .iter()
                        .map(|s| s.target.clone())
                        .zip(members)
                        .collect(),
                    *quorum,
                    *stall_timeout,
                    password,
                    progress,
                    cancel,
                ),
                RunMode::Failover {
                    extent_bytes,
                    extent_timeout,
                    ..
                } => crate::failover::back_up(
                    job,
                    members,
                    *extent_bytes,
                    *extent_timeout,
                    password,
                    progress,
                    cancel,
                ),
            }?;
            record(catalog, job, &guard.secured, done)
        })();
        stop.store(true, Ordering::Relaxed);
        r
    });
    let post_error = job.post.as_ref().and_then(|h| {
        let mut env = env.clone();
        env.push((
            "KURA_RESULT",
            if result.is_ok() {
                "succeeded"
            } else {
                "failed"
            }
            .into(),
        ));
        if let Err(e) = &result {
            env.push(("KURA_ERROR", e.to_string()));
        }
        h.run(HookPhase::Post, &env).err().map(|e| e.to_string())
    });
    match result {
        Ok((backup, outcome, copies, extents, failovers)) => {
            let outcome_for_run = match &post_error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
            guard.finish(outcome_for_run)?;
            // What the run did, for history and the daemon's predictions. A failure to
            // record it costs predictions, not the backup: logged, not returned.
            let stats = run_stats(&outcome.snapshot.summary, &copies, began.elapsed());
            let job_id = (job.job != 0).then_some(job.job);
            if let Err(e) = catalog.record_run_stats(process, job_id, &stats) {
                tracing::warn!("process {process}: recording its stats: {e}");
            }
            // The group each copy holder now holds, for the next run's identity check.
            if let Some(id) = &fitness.repository {
                for c in copies.iter().filter(|c| c.dropped.is_none()) {
                    catalog.set_target_repository(&c.target, id)?;
                }
            }
            Ok(JobReport {
                process,
                backup,
                outcome,
                copies,
                extents,
                failovers,
                post_error,
                skipped: fitness.unfit,
            })
        }
        Err(e) => {
            let mut why = e.to_string();
            if let Some(p) = &post_error {
                why.push_str(&format!("; then {p}"));
            }
            guard.finish(Err(why))?;
            Err(e)
        }
    }
}

/// A completed run's [`kura_types::RunStats`].
fn run_stats(
    s: &kura_repo::snapshot::Summary,
    copies: &[Copy],
    took: Duration,
) -> kura_types::RunStats {
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX).max(1);
    kura_types::RunStats {
        bytes_scanned: s.total_bytes,
        bytes_read: s.bytes_read,
        bytes_stored: s.bytes_added,
        files: s.files_new + s.files_changed + s.files_unmodified,
        duration_ms: ms,
        targets: copies
            .iter()
            .map(|c| kura_types::TargetStats {
                target: c.target.clone(),
                bytes: c.bytes,
                bytes_per_second: c.bytes.saturating_mul(1000) / ms,
            })
            .collect(),
    }
}

type Done = (i64, BackupOutcome, Vec<Copy>, Vec<Extent>, usize);

/// What a mode's backup hands back for recording.
pub(crate) struct ModeDone {
    /// The backup's result (the error if it failed).
    pub outcome: kura_repo::Result<BackupOutcome>,
    /// Per secured subsystem, in stream order: its location, the reason it dropped out (if
    /// it did) and the bytes it took.
    pub members: Vec<(String, Option<String>, u64)>,
    /// For a successful backup: the repository (to write the catalog record through) and the
    /// extents to record, with `position` left to fill from the snapshot id, as
    /// (subsystem index, seq, source offset, length, size, section).
    pub repo: Option<Repository>,
    pub pieces: Vec<Piece>,
    pub failovers: usize,
    /// Members dropped on purpose by the run's supervisor ([`crate::RunControl`]).
    pub spared: Vec<usize>,
}

/// One piece of a backup on one subsystem, before the snapshot id is known.
pub(crate) struct Piece {
    pub member: usize,
    pub seq: i64,
    pub source_offset: i64,
    pub source_length: i64,
    pub size: i64,
    /// `None`: a whole copy; `Some(index)`: a section listed by that index file (empty for
    /// a target holding only the snapshot manifest).
    pub section: Option<String>,
}

fn open_targets(
    catalog: &Catalog,
    secured: &Secured,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
    route: Option<&Route>,
) -> Result<Vec<Arc<dyn Backend>>> {
    let mut members = Vec::new();
    for sub in &secured.subsystems {
        let t = catalog.resource(&sub.target)?;
        let url = t.target_url()?;
        let backend = open(url)?;
        members.push(match route {
            Some(route) => route(sub, url, backend),
            None => backend,
        });
    }
    Ok(members)
}

/// Health, catalog record on the targets, then the catalog rows — in that order, and only
/// for a backup whose snapshot is durable.
fn record(catalog: &Catalog, job: &JobSpec, secured: &Secured, done: ModeDone) -> Result<Done> {
    let copies: Vec<Copy> = secured
        .subsystems
        .iter()
        .zip(&done.members)
        .map(|(sub, (location, dropped, bytes))| Copy {
            stream: sub.stream,
            target: sub.target.clone(),
            location: location.clone(),
            dropped: dropped.clone(),
            bytes: *bytes,
        })
        .collect();
    // Health: a target dropped from the run counts as an error against it — unless its
    // supervisor dropped it on purpose (its pace, not a fault).
    for (i, c) in copies.iter().enumerate() {
        if let Some(why) = &c.dropped
            && !done.spared.contains(&i)
        {
            catalog.record_error(&c.target, &format!("process {}: {why}", secured.process))?;
        }
    }
    let outcome = done.outcome?;
    for c in copies.iter().filter(|c| c.dropped.is_none()) {
        catalog.record_ok(&c.target)?;
    }
    let ms = |t: kura_repo::util::Timestamp| t.0 * 1000 + i64::from(t.1) / 1_000_000;
    let data_time = ms(outcome.snapshot.time);
    let snapshot = outcome.id;
    let extents: Vec<Extent> = done
        .pieces
        .iter()
        .map(|p| {
            let sub = &secured.subsystems[p.member];
            Extent {
                stream: sub.stream,
                seq: p.seq,
                source_offset: p.source_offset,
                source_length: p.source_length,
                target: sub.target.clone(),
                medium: sub.medium.clone(),
                position: match &p.section {
                    None => Position::Copy(snapshot),
                    Some(index) => Position::Section {
                        snapshot,
                        index: index.clone(),
                    },
                }
                .to_string(),
                size: p.size,
            }
        })
        .collect();
    // The record goes to every target holding part of the backup, so the catalog can be
    // rebuilt from any of them. A target that fails this write keeps its data; the others'
    // records list it.
    let summary = &outcome.snapshot.summary;
    let record = CatalogRecord {
        v: 1,
        object: job.object.clone(),
        started: ms(summary.backup_start),
        ended: ms(summary.backup_end),
        data_time,
        job: job.job_name.clone(),
        extents: extents.iter().map(crate::rebuild::to_record).collect(),
    };
    if let Some(repo) = &done.repo
        && let Err(e) = repo.save_catalog_record(&record)
    {
        tracing::warn!("catalog record on the targets: {e}");
    }
    // Only now, with the snapshot durable, does the catalog hear of it.
    let b = catalog.begin_backup(secured.process, &job.object, record.started, data_time)?;
    let recorded = extents.iter().try_for_each(|e| catalog.record_extent(b, e));
    if let Err(e) = recorded {
        // Never leave a half-recorded backup looking like it may still complete.
        let _ = catalog.finish_backup(b, BackupState::Failed);
        return Err(e.into());
    }
    catalog.finish_backup(b, BackupState::Complete)?;
    Ok((b, outcome, copies, extents, done.failovers))
}
