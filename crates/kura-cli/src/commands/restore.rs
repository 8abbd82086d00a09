use anyhow::{Context, Result};
use kura_catalog::BackupState;
use kura_repo::Repository;
use kura_repo::lock::RepoLock;
use kura_repo::restore::{RestoreOptions, RestoreOutcome, restore};
use kura_repo::snapshot::SnapshotEntry;
use serde_json::json;

use crate::cli::RestoreArgs;
use crate::exit::UsageError;
use crate::output::bytes;
use crate::{App, exit};

pub fn run(app: &App, a: RestoreArgs) -> Result<i32> {
    let started = std::time::Instant::now();
    let (snap, out) = match (a.backup, &a.snapshot) {
        (Some(b), _) => from_catalog(app, b, &a)?,
        (None, Some(spec)) => restore_from(app, app.open()?, spec, &a)?,
        (None, None) => {
            return Err(UsageError("give a snapshot or --backup N".into()).into());
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if app.global.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "snapshot_id": snap.id.to_hex(),
                "target": a.target.display().to_string(),
                "duration_seconds": secs,
                "files": out.files,
                "dirs": out.dirs,
                "other": out.other,
                "bytes": out.bytes,
                "damaged": out.damaged,
                "errors": out.errors,
            })
        );
    } else {
        for d in &out.damaged {
            eprintln!("damaged: {}: {}", d.path, d.reason);
        }
        for e in &out.errors {
            eprintln!("error: {e}");
        }
        app.say(format!(
            "restored {} files, {} dirs, {} other ({}) from snapshot {} in {:.1} s",
            out.files,
            out.dirs,
            out.other,
            bytes(out.bytes),
            snap.id.short(),
            secs
        ));
    }
    if !out.damaged.is_empty() || !out.errors.is_empty() {
        eprintln!(
            "warning: {} damaged file(s), {} other error(s); everything else was restored (exit code {})",
            out.damaged.len(),
            out.errors.len(),
            exit::INCOMPLETE
        );
        return Ok(exit::INCOMPLETE);
    }
    Ok(exit::OK)
}

/// Restore snapshot `spec` of an opened repository.
fn restore_from(
    app: &App,
    repo: Repository,
    spec: &str,
    a: &RestoreArgs,
) -> Result<(SnapshotEntry, RestoreOutcome)> {
    let loc = repo.location();
    let lock = RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
    crate::with_lock(lock, |lock| {
        let repo = repo
            .load_index()
            .with_context(|| format!("load index of {loc}"))?;
        let snap = repo.find_snapshot(spec)?;
        let mut opts = RestoreOptions {
            includes: a.includes.clone(),
            ..Default::default()
        };
        if let Some(t) = a.threads.or(app.config.restore.threads) {
            opts.threads = t.max(1);
        }
        let bar = app.bar();
        let out = restore(&repo, lock, &snap, &a.target, &opts, &bar, &app.cancel).with_context(
            || {
                format!(
                    "restore snapshot {} from {loc} to {}",
                    snap.id.short(),
                    a.target.display()
                )
            },
        )?;
        Ok((snap, out))
    })
}

/// Restore a catalog backup from one of its copies: targets that are usable first (fewest
/// errors first), then the rest; a copy that cannot be read (target down, gone, damaged
/// beyond reading its index) counts against that target's health and the next is tried.
fn from_catalog(
    app: &App,
    backup: i64,
    a: &RestoreArgs,
) -> Result<(SnapshotEntry, RestoreOutcome)> {
    let cat = app.catalog()?;
    let b = cat.backup(backup)?;
    if b.state != BackupState::Complete {
        return Err(UsageError(format!(
            "backup {backup} is {}: only complete backups are restorable",
            b.state.as_str()
        ))
        .into());
    }
    let extents = cat.extents(backup)?;
    let sectioned = extents.iter().any(|e| {
        matches!(
            e.position.parse::<kura_manager::Position>(),
            Ok(kura_manager::Position::Section { .. })
        )
    });
    if sectioned {
        return sectioned_restore(app, &cat, backup, a);
    }
    let mut copies: Vec<(kura_catalog::Resource, String)> = Vec::new();
    for e in extents {
        if e.seq == 0 && !copies.iter().any(|(t, _)| t.name == e.target) {
            copies.push((cat.resource(&e.target)?, e.position));
        }
    }
    copies.sort_by_key(|(t, _)| (t.state() == kura_catalog::State::NotUsable, t.errors));
    let password = crate::password::get(app.password_file().as_deref())?;
    let mut failures = Vec::new();
    for (t, snapshot) in &copies {
        let url = t.config.get("url").and_then(|v| v.as_str()).unwrap_or("");
        let attempt = app.backend_for(url).and_then(|backend| {
            let repo = Repository::open(backend, &password)
                .with_context(|| format!("open repository on target {}", t.name))?;
            restore_from(app, repo, snapshot, a)
        });
        match attempt {
            Ok(done) => {
                if !app.global.quiet && !app.global.json {
                    eprintln!("restoring backup {backup} from target {}", t.name);
                }
                return Ok(done);
            }
            Err(e)
                if exit::code_for(&e) == exit::WRONG_PASSWORD
                    || exit::code_for(&e) == exit::INTERRUPTED =>
            {
                return Err(e);
            }
            Err(e) => {
                eprintln!("warning: copy on {} not restorable: {e:#}", t.name);
                cat.record_error(&t.name, &format!("restore of backup {backup}: {e:#}"))?;
                failures.push(format!("{}: {e:#}", t.name));
            }
        }
    }
    Err(anyhow::anyhow!(
        "backup {backup}: no copy could be restored ({})",
        if failures.is_empty() {
            "it has no copies".to_string()
        } else {
            failures.join("; ")
        }
    ))
}

/// Restore a sectioned (fail-over) backup: one repository view over every target holding a
/// section, healthiest first; each file is read from the first that has it. A section whose
/// targets are all unreachable makes the restore fail naming what is missing.
fn sectioned_restore(
    app: &App,
    cat: &kura_catalog::Catalog,
    backup: i64,
    a: &RestoreArgs,
) -> Result<(SnapshotEntry, RestoreOutcome)> {
    let view =
        kura_manager::open_backup(cat, backup, &|url| crate::commands::heal::open(app, url))?;
    let names: Vec<&str> = view.targets.iter().map(|(t, _)| t.as_str()).collect();
    let password = crate::password::get(app.password_file().as_deref())?;
    let repo = Repository::open(view.union(), &password)
        .with_context(|| format!("open backup {backup} over targets {}", names.join(", ")))?;
    if !app.global.quiet && !app.global.json {
        eprintln!(
            "restoring sectioned backup {backup} from targets {}",
            names.join(", ")
        );
    }
    restore_from(app, repo, &view.snapshot.to_hex(), a)
}
