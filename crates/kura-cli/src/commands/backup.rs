use anyhow::{Context, Result};
use kura_repo::backend::MemberStatus;
use kura_repo::backup::{BackupOptions, ParentChoice, backup};
use kura_repo::lock::RepoLock;
use serde_json::json;

use crate::cli::BackupArgs;
use crate::output::{bytes, summary_json};
use crate::{App, exit};

/// The `[backup]` section of the config file over the defaults (what a job run uses).
pub fn from_config(app: &App) -> BackupOptions {
    let cfg = &app.config.backup;
    let defaults = BackupOptions::default();
    BackupOptions {
        tags: cfg.tags.clone(),
        excludes: cfg.exclude.clone(),
        one_file_system: cfg.one_file_system.unwrap_or(false),
        compression: cfg.compression,
        readers: cfg.read_concurrency.map_or(defaults.readers, |n| n.max(1)),
        inflight_bytes: cfg
            .memory_mib
            .map_or(defaults.inflight_bytes, |m| m.max(8) << 20),
        ..defaults
    }
}

/// The command line over the config file.
fn options(app: &App, a: &BackupArgs) -> BackupOptions {
    let mut o = from_config(app);
    if !a.tags.is_empty() {
        o.tags = a.tags.clone();
    }
    o.host = a.host.clone();
    o.parent = match (&a.parent, a.force) {
        (_, true) => ParentChoice::None,
        (Some(p), _) => ParentChoice::Snapshot(p.clone()),
        (None, false) => ParentChoice::Auto,
    };
    o.excludes.extend(a.excludes.iter().cloned());
    o.one_file_system |= a.one_file_system;
    o.image = a.image;
    if a.compression.is_some() {
        o.compression = a.compression;
    }
    if let Some(n) = a.read_concurrency {
        o.readers = n.max(1);
    }
    if let Some(m) = a.memory_mib {
        o.inflight_bytes = m.max(8) << 20;
    }
    o
}

pub fn run(app: &App, a: BackupArgs) -> Result<i32> {
    if let Some(n) = a.redundancy {
        let opts = options(app, &a);
        return crate::commands::jobrun::run_adhoc(app, &a.paths, n, &a.run, opts);
    }
    let repo = app.open()?;
    let loc = repo.location();
    let lock = RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
    let out = crate::with_lock(lock, |lock| {
        let (repo, adopted) = repo
            .load_index_adopting_orphans()
            .with_context(|| format!("load index of {loc}"))?;
        if adopted > 0 && !app.global.quiet {
            // stderr: stdout carries only the summary (JSON with --json).
            eprintln!(
                "adopted {adopted} pack(s) left by an interrupted backup; their data is reused"
            );
        }
        let opts = options(app, &a);
        let bar = app.bar();
        backup(&repo, lock, &a.paths, &opts, &bar, &app.cancel)
            .with_context(|| format!("back up to {loc}"))
    })?;
    let targets = app.mirror_status();
    let dropped: Vec<&MemberStatus> = targets.iter().filter(|t| t.dropped.is_some()).collect();
    let s = &out.snapshot.summary;
    let elapsed = (s.backup_end.0 - s.backup_start.0) as f64
        + (s.backup_end.1 as f64 - s.backup_start.1 as f64) / 1e9;
    if app.global.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "snapshot_id": out.id.to_hex(),
                "parent": out.parent.map(|p| p.to_hex()),
                "duration_seconds": elapsed,
                "summary": summary_json(s),
                "warnings": out.warnings,
                "targets": targets.iter().map(|t| json!({
                    "location": t.location,
                    "complete": t.dropped.is_none(),
                    "dropped": t.dropped,
                    "files": t.files,
                    "bytes": t.bytes,
                })).collect::<Vec<_>>(),
            })
        );
    } else if !app.global.quiet {
        match out.parent {
            Some(p) => println!("using parent snapshot {}", p.short()),
            None if !out.snapshot.is_image() => println!("no parent snapshot: every file was read"),
            None => {}
        }
        if out.snapshot.is_image() {
            println!("image: {} read", bytes(s.bytes_read));
        } else {
            println!(
                "files: {} new, {} changed, {} unmodified; {} dirs, {} other",
                s.files_new, s.files_changed, s.files_unmodified, s.dirs, s.other_entries
            );
        }
        println!(
            "added to the repository: {} ({} stored), {} data blobs, {} tree blobs",
            bytes(s.bytes_added_raw),
            bytes(s.bytes_added),
            s.data_blobs_new,
            s.tree_blobs_new
        );
        println!(
            "processed {} in {:.1} s ({}/s)",
            bytes(s.total_bytes),
            elapsed,
            bytes((s.bytes_read as f64 / elapsed.max(0.001)) as u64)
        );
        println!("snapshot {} saved", out.id.short());
        for t in targets.iter().filter(|t| t.dropped.is_none()) {
            println!(
                "  complete on {} ({} files, {})",
                t.location,
                t.files,
                bytes(t.bytes)
            );
        }
    }
    for t in &dropped {
        eprintln!(
            "warning: target {} was dropped and holds no copy of this snapshot: {}",
            t.location,
            t.dropped.as_deref().unwrap_or("")
        );
    }
    if s.files_changed_while_read > 0 && !app.global.quiet {
        eprintln!(
            "warning: {} file(s) changed while they were read; saved as read (possibly \
             inconsistent), the next backup reads them again",
            s.files_changed_while_read
        );
    }
    if !out.warnings.is_empty() {
        eprintln!(
            "warning: {} entr{} could not be read and {} left out (exit code {})",
            out.warnings.len(),
            if out.warnings.len() == 1 { "y" } else { "ies" },
            if out.warnings.len() == 1 {
                "was"
            } else {
                "were"
            },
            exit::INCOMPLETE
        );
        return Ok(exit::INCOMPLETE);
    }
    if !dropped.is_empty() {
        return Ok(exit::DEGRADED);
    }
    Ok(exit::OK)
}
