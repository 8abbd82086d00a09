use anyhow::{Context, Result};
use kura_repo::Repository;
use kura_repo::lock::{Exclusive, RepoLock};
use kura_repo::progress::Progress;
use kura_repo::prune::{DEFAULT_KEEP_CONDEMNED, PruneOptions, PruneReport, prune};

use crate::cli::PruneArgs;
use crate::exit::UsageError;
use crate::output::bytes;
use crate::{App, exit};

/// Prune an open repository under an exclusive lock the caller holds (shared with `forget
/// --prune`).
pub fn prune_locked(
    app: &App,
    repo: Repository,
    lock: &RepoLock<Exclusive>,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let loc = repo.location();
    let opts = PruneOptions {
        sections: super::catalog_sync::sections_here(app)?,
        ..opts.clone()
    };
    let report =
        prune(repo, lock, &opts, progress, &app.cancel).with_context(|| format!("prune {loc}"))?;
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        app.say(format!(
            "{}{} blobs used, {} unused; packs: {} kept, {} repacked into {}, {} condemned, \
             {} recovered, {} deleted, {} left condemned for a later prune; \
             {} → {} ({} freed)",
            if report.dry_run { "dry run: " } else { "" },
            report.blobs_used,
            report.blobs_unused,
            report.packs_kept,
            report.packs_repacked,
            report.packs_written,
            report.packs_condemned,
            report.packs_recovered,
            report.packs_deleted,
            report.packs_waiting,
            bytes(report.bytes_before),
            bytes(report.bytes_after),
            bytes(report.bytes_before.saturating_sub(report.bytes_after)),
        ));
    }
    Ok(report)
}

/// `--keep-condemned` of `prune` and `forget --prune` (0 allowed: delete as soon as no lock
/// holds a pack).
pub fn keep_condemned(arg: Option<kura_types::Duration>) -> std::time::Duration {
    arg.map_or(DEFAULT_KEEP_CONDEMNED, kura_types::Duration::std)
}

pub fn run(app: &App, a: PruneArgs) -> Result<i32> {
    if !(0.0..=100.0).contains(&a.repack_threshold) {
        return Err(UsageError("--repack-threshold is a percentage, 0 to 100".into()).into());
    }
    let opts = PruneOptions {
        dry_run: a.dry_run,
        repack_threshold: a.repack_threshold / 100.0,
        keep_condemned: keep_condemned(a.keep_condemned),
        ..Default::default()
    };
    let bar = app.bar();
    prune_open(app, app.open()?, &opts, &bar)?;
    Ok(exit::OK)
}

/// Prune an open repository under an exclusive lock: `kura prune`, and the daemon's prune
/// tasks.
pub fn prune_open(
    app: &App,
    repo: Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let loc = repo.location();
    let lock = RepoLock::exclusive(&repo).with_context(|| format!("lock {loc} exclusively"))?;
    // Snapshots removed without the catalog hearing of it (a forget elsewhere) stop being
    // claimed.
    super::catalog_sync::after_change(app, &repo);
    crate::with_lock(lock, |lock| prune_locked(app, repo, lock, opts, progress))
}
