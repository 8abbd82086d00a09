//! Running a backup job over the catalog: `kura job run NAME` and
//! `kura backup --redundancy N`. The engine is `kura_manager`; this module turns arguments and
//! job definitions into a [`JobSpec`] and prints the report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kura_catalog::{Catalog, JobDef, Mode};
use kura_manager::{Hook, JobSpec, RunMode, run_job as run_spec};
use kura_repo::backend::retry::parse_duration;
use kura_repo::backup::BackupOptions;
use serde_json::{Value, json};

use crate::cli::RunArgs;
use crate::exit::{self, UsageError};
use crate::output::{bytes, summary_json};
use crate::{App, password};

/// How long a run's allocations live without renewal, and how often they are renewed: a
/// dead manager's targets return to the pool within a minute. `KURA_LEASE` and
/// `KURA_LEASE_RENEW` (e.g. `5s`) change them, for tests and slow catalogs.
const LEASE: Duration = Duration::from_secs(45);
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long the check before securing waits for a target to answer (`KURA_CHECK_WITHIN`).
const CHECK_WITHIN: Duration = Duration::from_secs(5);

/// (lease, renewal interval, check deadline), from the environment or the defaults.
fn timings() -> Result<(Duration, Duration, Duration)> {
    let env = |name: &str, default: Duration| -> Result<Duration> {
        match std::env::var(name) {
            Ok(v) => duration(name, &v),
            Err(_) => Ok(default),
        }
    };
    let lease = env("KURA_LEASE", LEASE)?;
    let renew = env("KURA_LEASE_RENEW", RENEW_EVERY)?;
    if renew.is_zero() || renew >= lease {
        return Err(UsageError(format!(
            "KURA_LEASE_RENEW ({renew:?}) must be shorter than KURA_LEASE ({lease:?}) and not 0"
        ))
        .into());
    }
    Ok((lease, renew, env("KURA_CHECK_WITHIN", CHECK_WITHIN)?))
}

fn duration(what: &str, s: &str) -> Result<Duration> {
    parse_duration(s)
        .ok_or_else(|| UsageError(format!("invalid {what} {s:?}: use e.g. 30s, 2m")).into())
}

/// The run settings a job definition stores in its config.
pub fn settings_json(app: &App, redundancy: i64, r: &RunArgs) -> Result<Value> {
    let quorum = app.global.quorum;
    // (A redundancy below 1 is the catalog's to refuse, with its own message.)
    if redundancy >= 1 && (quorum == 0 || quorum as i64 > redundancy) {
        return Err(UsageError(format!(
            "--quorum {quorum} must be between 1 and the redundancy ({redundancy})"
        ))
        .into());
    }
    duration("--hook-timeout", &r.hook_timeout)?;
    duration("--stall-timeout", &app.global.stall_timeout)?;
    duration("--extent-timeout", &r.extent_timeout)?;
    duration("--unreachable-timeout", &r.unreachable_timeout)?;
    let extent_size = size("--extent-size", &r.extent_size)?;
    Ok(json!({
        "quorum": quorum,
        "extent_size": extent_size,
        "extent_timeout": r.extent_timeout,
        "unreachable_timeout": r.unreachable_timeout,
        "targets": r.targets,
        "pre": r.pre,
        "post": r.post,
        "hook_timeout": r.hook_timeout,
        "stall_timeout": app.global.stall_timeout,
    }))
}

/// `64MiB`, `1GiB`, `512KiB`, `1048576` (bytes); at least 1 MiB.
fn size(what: &str, s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => 0,
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(v) if v >= 1 << 20 => Ok(v),
        _ => Err(UsageError(format!(
            "invalid {what} {s:?}: use e.g. 64MiB or 1GiB (at least 1MiB)"
        ))
        .into()),
    }
}

/// Fail-over settings of a run.
struct Extents {
    bytes: u64,
    timeout: Duration,
    unreachable_for: Duration,
}

fn mode(mode: Mode, quorum: usize, stall_timeout: Duration, extents: Extents) -> RunMode {
    match mode {
        Mode::Mirror => RunMode::Mirror {
            quorum,
            stall_timeout,
        },
        Mode::Failover => RunMode::Failover {
            extent_bytes: extents.bytes,
            extent_timeout: extents.timeout,
            unreachable_for: extents.unreachable_for,
        },
    }
}

fn hook(cmd: Option<&str>, timeout: Duration) -> Option<Hook> {
    cmd.map(|c| Hook {
        command: c.to_string(),
        timeout,
    })
}

/// `kura job run NAME`.
pub fn run_job(app: &App, cat: &Catalog, def: &JobDef) -> Result<i32> {
    let c = &def.config;
    let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
    let hook_timeout = duration("hook_timeout", &s("hook_timeout").unwrap_or("10m".into()))?;
    let targets: Vec<String> = c
        .get("targets")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let job = JobSpec {
        job: def.id,
        job_name: Some(def.name.clone()),
        object: def.object.clone(),
        sources: vec![PathBuf::from(&def.object)],
        redundancy: def.redundancy as usize,
        mode: mode(
            def.mode,
            c.get("quorum").and_then(Value::as_u64).unwrap_or(1) as usize,
            duration("stall_timeout", &s("stall_timeout").unwrap_or("2m".into()))?,
            Extents {
                bytes: c
                    .get("extent_size")
                    .and_then(Value::as_u64)
                    .unwrap_or(64 << 20),
                timeout: duration(
                    "extent_timeout",
                    &s("extent_timeout").unwrap_or("2m".into()),
                )?,
                unreachable_for: duration(
                    "unreachable_timeout",
                    &s("unreachable_timeout").unwrap_or("1s".into()),
                )?,
            },
        ),
        targets: (!targets.is_empty()).then_some(targets),
        lease: timings()?.0,
        renew_every: timings()?.1,
        check_within: timings()?.2,
        pre: hook(s("pre").as_deref(), hook_timeout),
        post: hook(s("post").as_deref(), hook_timeout),
        backup: crate::commands::backup::from_config(app),
        route: app.route(),
    };
    execute(app, cat, &def.name, job)
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
    let hook_timeout = duration("--hook-timeout", &r.hook_timeout)?;
    let mut object = Vec::new();
    for p in paths {
        object.push(kura_repo::backup::absolute_path(p)?.display().to_string());
    }
    let object = object.join(" ");
    let job = JobSpec {
        job: 0,
        job_name: None,
        object,
        sources: paths.to_vec(),
        redundancy,
        mode: mode(
            Mode::parse(&r.mode)?,
            app.global.quorum,
            duration("--stall-timeout", &app.global.stall_timeout)?,
            Extents {
                bytes: size("--extent-size", &r.extent_size)?,
                timeout: duration("--extent-timeout", &r.extent_timeout)?,
                unreachable_for: duration("--unreachable-timeout", &r.unreachable_timeout)?,
            },
        ),
        targets: (!r.targets.is_empty()).then(|| r.targets.clone()),
        lease: timings()?.0,
        renew_every: timings()?.1,
        check_within: timings()?.2,
        pre: hook(r.pre.as_deref(), hook_timeout),
        post: hook(r.post.as_deref(), hook_timeout),
        backup: opts,
        route: app.route(),
    };
    execute(app, &cat, "backup", job)
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
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "process": report.process,
                "backup": report.backup,
                "snapshot_id": report.outcome.id.to_hex(),
                "summary": summary_json(s),
                "warnings": report.outcome.warnings,
                "post_hook_error": report.post_error,
                "skipped": report.skipped.iter().map(|(t, w)| json!({"target": t, "reason": w})).collect::<Vec<_>>(),
                "mode": if failover { "failover" } else { "mirror" },
                "failovers": report.failovers,
                "copies": report.copies.iter().map(|c| json!({
                    "stream": c.stream,
                    "target": c.target,
                    "location": c.location,
                    "complete": !failover && c.dropped.is_none(),
                    "dropped": c.dropped,
                    "bytes": c.bytes,
                })).collect::<Vec<_>>(),
                "extents": report.extents.iter().map(|e| json!({
                    "seq": e.seq,
                    "stream": e.stream,
                    "target": e.target,
                    "position": e.position,
                    "source_offset": e.source_offset,
                    "source_length": e.source_length,
                    "size": e.size,
                })).collect::<Vec<_>>(),
            })
        );
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
