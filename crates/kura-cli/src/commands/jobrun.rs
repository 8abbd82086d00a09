//! Running a backup job over the catalog: `kura job run NAME` and
//! `kura backup --redundancy N`. The engine is `kura_manager`; this module turns arguments and
//! job definitions into a [`JobSpec`] and prints the report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kura_catalog::{Catalog, JobDef, Mode};
use kura_manager::{JobSpec, RunMode, Timings, run_job as run_spec};
use kura_repo::backup::BackupOptions;
use kura_types::{
    CopyReport, JobRunReport, JobSettings, RunModeName, SectionReport, SkippedTarget,
};
use serde_json::json;

use crate::cli::RunArgs;
use crate::exit::{self, UsageError};
use crate::output::{backup_summary, bytes};
use crate::{App, password};

/// The run settings of `job add` and `backup --redundancy`: the flags, with the global
/// `--quorum` and `--stall-timeout`.
pub fn settings(app: &App, r: &RunArgs) -> JobSettings {
    JobSettings {
        quorum: app.global.quorum,
        extent_size: r.extent_size,
        extent_timeout: r.extent_timeout,
        unreachable_timeout: r.unreachable_timeout,
        targets: r.targets.clone(),
        pre: r.pre.clone(),
        post: r.post.clone(),
        hook_timeout: r.hook_timeout,
        stall_timeout: app.global.stall_timeout,
        ..JobSettings::default()
    }
}

/// `settings` checked for an ad-hoc run onto `redundancy` targets (a job's are checked by
/// the catalog when it is added); a problem is a usage error naming the flag.
fn checked(app: &App, r: &RunArgs, redundancy: usize) -> Result<JobSettings> {
    let s = settings(app, r);
    s.check("backup", redundancy).map_err(flag_error)?;
    Ok(s)
}

/// A settings error as a usage error naming the flag that sets the field.
pub fn flag_error(e: kura_types::ConfigError) -> UsageError {
    let flag = match e.field.as_deref() {
        Some("targets") => "target".to_string(),
        Some(f) => f.replace('_', "-"),
        None => "settings".into(),
    };
    UsageError(format!("--{flag}: {}", e.why))
}

/// `kura job run NAME`.
pub fn run_job(app: &App, cat: &Catalog, def: &JobDef) -> Result<i32> {
    if let Some(tape) = &def.settings.tape {
        return crate::commands::tape::run_job_here(app, cat, def, tape);
    }
    let job = job_spec(def, crate::commands::backup::from_config(app), app.route())?;
    execute(app, cat, &def.name, job)
}

/// A job definition as a run of `kura_manager` (`kura job run`, and the daemon's runs).
pub fn job_spec(
    def: &JobDef,
    backup: BackupOptions,
    route: Option<kura_manager::Route>,
) -> Result<JobSpec> {
    let mut job = kura_manager::spec::for_job(def, backup, Timings::from_env()?);
    job.route = route;
    Ok(job)
}

/// `kura backup PATHS --redundancy N`: an ad-hoc run (job number 0).
pub fn run_adhoc(
    app: &App,
    paths: &[PathBuf],
    redundancy: usize,
    r: &RunArgs,
    opts: BackupOptions,
) -> Result<i32> {
    let cat = app.catalog()?;
    let settings = checked(app, r, redundancy)?;
    let mut object = Vec::new();
    for p in paths {
        object.push(kura_repo::backup::absolute_path(p)?.display().to_string());
    }
    let mut job = kura_manager::spec::spec(
        (0, None),
        object.join(" "),
        paths.to_vec(),
        (redundancy, Mode::parse(&r.mode)?),
        &settings,
        opts,
        Timings::from_env()?,
    );
    job.route = app.route();
    execute(app, &cat, "backup", job)
}

/// The run's report as `--json` prints it (and an API will return it).
fn job_run_report(report: &kura_manager::JobReport, failover: bool) -> JobRunReport {
    JobRunReport {
        message_type: JobRunReport::MESSAGE_TYPE.into(),
        process: report.process,
        backup: report.backup,
        snapshot_id: report.outcome.id.to_hex(),
        summary: backup_summary(&report.outcome.snapshot.summary),
        warnings: report.outcome.warnings.clone(),
        post_hook_error: report.post_error.clone(),
        skipped: report
            .skipped
            .iter()
            .map(|(target, reason)| SkippedTarget {
                target: target.clone(),
                reason: reason.clone(),
            })
            .collect(),
        mode: if failover {
            RunModeName::Failover
        } else {
            RunModeName::Mirror
        },
        failovers: report.failovers,
        copies: report
            .copies
            .iter()
            .map(|c| CopyReport {
                stream: c.stream,
                target: c.target.clone(),
                location: c.location.clone(),
                complete: !failover && c.dropped.is_none(),
                dropped: c.dropped.clone(),
                bytes: c.bytes,
            })
            .collect(),
        extents: report
            .extents
            .iter()
            .map(|e| SectionReport {
                seq: e.seq,
                stream: e.stream,
                target: e.target.clone(),
                position: e.position.clone(),
                source_offset: e.source_offset,
                source_length: e.source_length,
                size: e.size,
            })
            .collect(),
    }
}

fn execute(app: &App, cat: &Catalog, name: &str, job: JobSpec) -> Result<i32> {
    let password = password::get(app.password_file().as_deref())?;
    let unreachable_for = match job.mode {
        RunMode::Failover {
            unreachable_for, ..
        } => Some(unreachable_for),
        RunMode::Mirror { .. } => None,
    };
    let open = |url: &str| app.manager_backend(url, unreachable_for);
    let bar = app.bar();
    let failover = unreachable_for.is_some();
    let what = if failover { "fail-over" } else { "mirrored" };
    let report = run_spec(cat, &job, &open, &password, &bar, &app.cancel)
        .with_context(|| format!("{name}: {what} backup of {}", job.object))?;
    let s = &report.outcome.snapshot.summary;
    let dropped: Vec<_> = report
        .copies
        .iter()
        .filter(|c| c.dropped.is_some())
        .collect();
    if app.global.json {
        println!("{}", json!(job_run_report(&report, failover)));
    } else if !app.global.quiet {
        println!(
            "{name}: process {}, backup {}, snapshot {} of {}",
            report.process,
            report.backup,
            report.outcome.id.short(),
            bytes(s.total_bytes)
        );
        if failover {
            for e in &report.extents {
                println!(
                    "  section {}: on {} (stream {}, {})",
                    e.seq,
                    e.target,
                    e.stream,
                    bytes(e.size.max(0) as u64)
                );
            }
        } else {
            for c in report.copies.iter().filter(|c| c.dropped.is_none()) {
                println!(
                    "  stream {}: complete on {} ({}, {})",
                    c.stream,
                    c.target,
                    c.location,
                    bytes(c.bytes)
                );
            }
        }
    }
    for (t, why) in &report.skipped {
        eprintln!("warning: target {t} was passed over: {why}");
    }
    for c in dropped.iter().filter(|_| failover) {
        eprintln!(
            "warning: target {} (stream {}) failed; the run moved on from its first \
             unacknowledged extent: {}",
            c.target,
            c.stream,
            c.dropped.as_deref().unwrap_or("")
        );
    }
    for c in dropped.iter().filter(|_| !failover) {
        eprintln!(
            "warning: stream {} on {} was dropped and holds no copy: {}",
            c.stream,
            c.target,
            c.dropped.as_deref().unwrap_or("")
        );
    }
    if let Some(e) = &report.post_error {
        eprintln!("kura: {e}");
        return Ok(exit::FATAL);
    }
    Ok(if !report.outcome.warnings.is_empty() {
        exit::INCOMPLETE
    } else if !dropped.is_empty() {
        exit::DEGRADED
    } else {
        exit::OK
    })
}
