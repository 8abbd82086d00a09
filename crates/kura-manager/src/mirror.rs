//! Mirror mode: one backup onto n secured targets at once (see the crate docs).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kura_backend::{Backend, MirrorBackend, MirrorOptions};
use kura_catalog::{BackupState, Catalog, Constraints, Extent};
use kura_repo::Repository;
use kura_repo::backup::{BackupOptions, BackupOutcome, CancelToken, backup};
use kura_repo::catalog_record::CatalogRecord;
use kura_repo::lock::RepoLock;
use kura_repo::progress::Progress;

use crate::hooks::{Hook, HookPhase};
use crate::{Error, Result};

/// One mirrored backup job run.
pub struct MirrorJob {
    /// The job definition's number, or 0 for an ad-hoc backup.
    pub job: i64,
    /// The job's name (kept in the catalog records on the targets).
    pub job_name: Option<String>,
    /// What the catalog calls the backed-up object (a path, an image).
    pub object: String,
    pub sources: Vec<PathBuf>,
    /// n: how many targets to write to.
    pub redundancy: usize,
    /// How many must finish for the run to succeed.
    pub quorum: usize,
    /// Only these targets (names), if set.
    pub targets: Option<Vec<String>>,
    /// A target whose writes make no progress this long is dropped.
    pub stall_timeout: Duration,
    pub lease: Duration,
    pub pre: Option<Hook>,
    pub post: Option<Hook>,
    pub backup: BackupOptions,
}

/// One target's part in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub stream: i64,
    pub target: String,
    pub location: String,
    /// `None` when the target holds the complete snapshot; the reason it was dropped if not.
    pub dropped: Option<String>,
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
    /// The post hook's failure, if it failed after a successful backup.
    pub post_error: Option<String>,
}

/// Run a mirrored backup: see the crate docs for the steps. `open` turns a target URL into
/// a backend (the caller's options: deadlines, credentials).
pub fn run_mirror(
    catalog: &Catalog,
    job: &MirrorJob,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
    password: &[u8],
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<JobReport> {
    if job.quorum == 0 || job.quorum > job.redundancy {
        return Err(Error::Invalid(format!(
            "quorum {} must be between 1 and the redundancy ({})",
            job.quorum, job.redundancy
        )));
    }
    let guard = catalog.secure(
        job.job,
        job.redundancy,
        &Constraints {
            targets: job.targets.clone(),
            lease: job.lease,
            wait: Duration::ZERO,
        },
    )?;
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
            let every = job.lease / 3;
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
            back_up(
                catalog,
                job,
                &guard.secured,
                open,
                password,
                progress,
                cancel,
            )
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
        Ok((backup, outcome, copies)) => {
            let outcome_for_run = match &post_error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
            guard.finish(outcome_for_run)?;
            Ok(JobReport {
                process,
                backup,
                outcome,
                copies,
                post_error,
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

type Done = (i64, BackupOutcome, Vec<Copy>);

fn back_up(
    catalog: &Catalog,
    job: &MirrorJob,
    secured: &kura_catalog::Secured,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
    password: &[u8],
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Done> {
    let mut urls = Vec::new();
    let mut members = Vec::new();
    for sub in &secured.subsystems {
        let t = catalog.resource(&sub.target)?;
        let url = t
            .config
            .get("url")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| Error::Invalid(format!("target {} has no url", sub.target)))?
            .to_string();
        members.push(open(&url)?);
        urls.push(url);
    }
    let mirror = Arc::new(MirrorBackend::new(
        members,
        MirrorOptions {
            quorum: job.quorum,
            stall_timeout: job.stall_timeout,
            ..MirrorOptions::default()
        },
    )?);
    kura_repo::group::verify(&mirror)?;
    let repo = Repository::open(Arc::clone(&mirror) as Arc<dyn Backend>, password)?;
    let lock = RepoLock::shared(&repo)?;
    let (indexed, _) = repo.load_index_adopting_orphans()?;
    let outcome = backup(&indexed, &lock, &job.sources, &job.backup, progress, cancel);
    drop(lock);
    let status = mirror.status();
    let copies: Vec<Copy> = secured
        .subsystems
        .iter()
        .zip(status)
        .map(|(sub, st)| Copy {
            stream: sub.stream,
            target: sub.target.clone(),
            location: st.location,
            dropped: st.dropped,
            bytes: st.bytes,
        })
        .collect();
    // Health: a target dropped from the run counts as an error against it.
    for c in &copies {
        if let Some(why) = &c.dropped {
            catalog.record_error(&c.target, &format!("process {}: {why}", secured.process))?;
        }
    }
    let outcome = outcome?;
    for c in copies.iter().filter(|c| c.dropped.is_none()) {
        catalog.record_ok(&c.target)?;
    }
    let ms = |t: kura_repo::util::Timestamp| t.0 * 1000 + i64::from(t.1) / 1_000_000;
    let data_time = ms(outcome.snapshot.time);
    let total = outcome.snapshot.summary.total_bytes as i64;
    let extents: Vec<Extent> = copies
        .iter()
        .filter(|c| c.dropped.is_none())
        .map(|c| {
            let sub = &secured.subsystems[c.stream as usize];
            Extent {
                stream: c.stream,
                seq: 0,
                source_offset: 0,
                source_length: total,
                target: sub.target.clone(),
                medium: sub.medium.clone(),
                position: outcome.id.to_hex(),
                size: c.bytes as i64,
            }
        })
        .collect();
    // The record goes to every target holding a copy (the live mirror members), so the
    // catalog can be rebuilt from any of them. A target that fails this write keeps its copy;
    // the others' records list it.
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
    if let Err(e) = indexed.into_repository().save_catalog_record(&record) {
        tracing::warn!("catalog record on the targets: {e}");
    }
    // Only now, with the snapshot durable on each finished target, does the catalog hear of it.
    let b = catalog.begin_backup(secured.process, &job.object, data_time)?;
    let recorded = extents.iter().try_for_each(|e| catalog.record_extent(b, e));
    if let Err(e) = recorded {
        // Never leave a half-recorded backup looking like it may still complete.
        let _ = catalog.finish_backup(b, BackupState::Failed);
        return Err(e.into());
    }
    catalog.finish_backup(b, BackupState::Complete)?;
    Ok((b, outcome, copies))
}
