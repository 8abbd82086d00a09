//! `kura restore`, and the one restore path the daemon's restore tasks take too
//! ([`restore_from`], [`from_catalog`]): every safety rule lives here or below, once.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kura_catalog::{BackupState, Catalog};
use kura_repo::Repository;
use kura_repo::backup::CancelToken;
use kura_repo::lock::RepoLock;
use kura_repo::progress::Progress;
use kura_repo::restore::{RestoreOptions, RestoreOutcome, restore};
use kura_repo::snapshot::SnapshotEntry;
use serde_json::json;

use crate::cli::RestoreArgs;
use crate::exit::UsageError;
use crate::output::bytes;
use crate::{App, exit};

/// A restore's destination and options: `kura restore`'s flags, or a daemon restore task's
/// request.
pub struct Restoring<'a> {
    /// A directory, a file or device (images), or an NBD export (`nbd://…`).
    pub target: PathBuf,
    pub opts: RestoreOptions,
    pub no_lock: bool,
    pub progress: &'a dyn Progress,
    pub cancel: &'a CancelToken,
}

pub fn run(app: &App, a: RestoreArgs) -> Result<i32> {
    let started = std::time::Instant::now();
    let bar = app.bar();
    let mut opts = RestoreOptions {
        includes: a.includes.clone(),
        overwrite: a
            .overwrite
            .parse()
            .map_err(|e| UsageError(format!("{e}")))?,
        delete: a.delete,
        ..Default::default()
    };
    if let Some(t) = a.threads.or(app.config.restore.threads) {
        opts.threads = t.max(1);
    }
    let r = Restoring {
        target: a.target.clone(),
        opts,
        no_lock: a.no_lock,
        progress: &bar,
        cancel: &app.cancel,
    };
    let (snap, out) = match (a.backup, &a.snapshot) {
        (Some(_), _) if nbd_target(&a.target).is_some() => {
            return Err(UsageError(
                "--backup restores to a path; restore a snapshot of -r to an NBD export".into(),
            )
            .into());
        }
        (Some(b), _) => {
            let cat = app.catalog()?;
            let password = crate::password::get(app.password_file().as_deref())?;
            let quiet = app.global.quiet || app.global.json;
            from_catalog(app, &cat, b, &password, &r, &|m| {
                if !quiet {
                    eprintln!("{m}")
                }
            })?
        }
        (None, Some(spec)) => restore_from(app.open()?, spec, &r)?,
        (None, None) => {
            return Err(UsageError("give a snapshot or --backup N".into()).into());
        }
    };
    let secs = started.elapsed().as_secs_f64();
    Ok(print_outcome(
        app,
        &snap.id.to_hex(),
        &a.target,
        &out,
        secs,
        &a.overwrite,
    ))
}

/// Print what a restore did (human or JSON) and say which exit code it earns: damaged
/// files and refused entries make it incomplete.
pub fn print_outcome(
    app: &App,
    snapshot: &str,
    target: &std::path::Path,
    out: &RestoreOutcome,
    secs: f64,
    overwrite: &str,
) -> i32 {
    if app.global.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "snapshot_id": snapshot,
                "target": target.display().to_string(),
                "duration_seconds": secs,
                "files": out.files,
                "dirs": out.dirs,
                "other": out.other,
                "bytes": out.bytes,
                "unchanged": out.unchanged,
                "kept": out.kept,
                "deleted": out.deleted,
                "damaged": out.damaged,
                "partial": out.partial,
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
        let mut extra = String::new();
        if out.unchanged > 0 {
            extra += &format!(", {} already matched", out.unchanged);
        }
        if out.kept > 0 {
            extra += &format!(", {} existing kept (--overwrite {overwrite})", out.kept);
        }
        if out.deleted > 0 {
            extra += &format!(", {} deleted", out.deleted);
        }
        app.say(format!(
            "restored {} files, {} dirs, {} other ({}){extra} from snapshot {} in {:.1} s",
            out.files,
            out.dirs,
            out.other,
            bytes(out.bytes),
            &snapshot[..8.min(snapshot.len())],
            secs
        ));
    }
    if !out.damaged.is_empty() || !out.errors.is_empty() {
        if !out.partial.is_empty() {
            eprintln!(
                "warning: {} file(s) could not be restored whole and were left as *.kura-partial \
                 (never under their own names):",
                out.partial.len()
            );
            for p in &out.partial {
                eprintln!("  {p}");
            }
        }
        eprintln!(
            "warning: {} damaged file(s), {} other error(s); everything else was restored (exit code {})",
            out.damaged.len(),
            out.errors.len(),
            exit::INCOMPLETE
        );
        return exit::INCOMPLETE;
    }
    exit::OK
}

/// Restore snapshot `spec` of an opened repository.
pub fn restore_from(
    repo: Repository,
    spec: &str,
    r: &Restoring,
) -> Result<(SnapshotEntry, RestoreOutcome)> {
    let loc = repo.location();
    let lock = if r.no_lock {
        RepoLock::none(&repo)
    } else {
        RepoLock::shared_or_read_only(&repo).with_context(|| format!("lock {loc}"))?
    };
    crate::with_lock(lock, |lock| {
        let repo = repo
            .load_index()
            .with_context(|| format!("load index of {loc}"))?;
        let snap = repo.find_snapshot(spec)?;
        let opts = &r.opts;
        if let Some(url) = nbd_target(&r.target) {
            let out = kura_volume::restore_to_nbd(
                url,
                &repo,
                lock,
                &snap,
                opts.threads,
                r.progress,
                r.cancel,
            )
            .with_context(|| format!("restore snapshot {} from {loc} to {url}", snap.id.short()))?;
            return Ok((snap, out));
        }
        // An image restored over a file some process holds a lock on — the raw file of a
        // volume a `kura volume serve` owns — is refused: it would change the volume behind
        // its server's back. Held for the restore, so no server starts on it meanwhile.
        let _held = match &snap.snapshot.content {
            kura_repo::snapshot::Content::Image(_) => hold_image_target(&r.target)?,
            _ => None,
        };
        let out = restore(&repo, lock, &snap, &r.target, opts, r.progress, r.cancel).with_context(
            || {
                format!(
                    "restore snapshot {} from {loc} to {}",
                    snap.id.short(),
                    r.target.display()
                )
            },
        )?;
        Ok((snap, out))
    })
}

/// Restore a catalog backup (`--backup N`): one view over every target holding a copy or a
/// section of it, usable targets with the fewest errors first (`kura_manager::open_backup`).
/// Each file is read from the first target that has it, and a blob found damaged there is
/// read again from the others; a sectioned backup is reassembled the same way. A target that
/// failed a read counts against its health, even when another one served the data. `say`
/// gets what the user should hear (which targets, which failed).
pub fn from_catalog(
    app: &App,
    cat: &Catalog,
    backup: i64,
    password: &[u8],
    r: &Restoring,
    say: &dyn Fn(&str),
) -> Result<(SnapshotEntry, RestoreOutcome)> {
    let b = cat.backup(backup)?;
    if b.state != BackupState::Complete {
        return Err(UsageError(format!(
            "backup {backup} is {}: only complete backups are restorable",
            b.state.as_str()
        ))
        .into());
    }
    let view = kura_manager::open_backup(cat, backup, &|url| app.manager_backend(url, None))?;
    let names: Vec<String> = view.targets.iter().map(|(t, _)| t.clone()).collect();
    let union = view.union();
    say(&format!(
        "restoring backup {backup} from target{} {}",
        if names.len() > 1 { "s" } else { "" },
        names.join(", ")
    ));
    let done = Repository::open(union.clone(), password)
        .with_context(|| format!("open backup {backup} on targets {}", names.join(", ")))
        .and_then(|repo| restore_from(repo, &view.snapshot.to_hex(), r));
    for (i, why) in union.failures() {
        eprintln!(
            "warning: target {} failed during the restore: {why}",
            names[i]
        );
        cat.record_error(&names[i], &format!("restore of backup {backup}: {why}"))?;
    }
    done
}

/// The NBD export a target names (`nbd://…`, `nbd+unix://…`), if it names one.
fn nbd_target(target: &std::path::Path) -> Option<&str> {
    target
        .to_str()
        .filter(|t| t.starts_with("nbd://") || t.starts_with("nbd+unix://"))
}

/// An exclusive `flock` on an existing regular file an image is restored over (none for a
/// new file or a device); refused with "in use" (exit 14) when another process holds one.
fn hold_image_target(target: &std::path::Path) -> Result<Option<std::fs::File>> {
    use std::os::unix::io::AsRawFd;
    let f = match std::fs::File::open(target) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("open {}", target.display())),
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(kura_volume::Error::InUse(format!(
            "{} is in use",
            target.display()
        )))
        .context(
            "restore the image: another process holds the target file (a volume server?); \
             restore elsewhere",
        );
    }
    Ok(Some(f))
}
