use anyhow::{Context, Result};
use kura_repo::lock::RepoLock;
use kura_repo::restore::{RestoreOptions, restore};
use serde_json::json;

use crate::cli::RestoreArgs;
use crate::output::bytes;
use crate::{App, exit};

pub fn run(app: &App, a: RestoreArgs) -> Result<i32> {
    let repo = app.open()?;
    let loc = repo.location();
    let lock = RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
    let started = std::time::Instant::now();
    let (snap, out) = crate::with_lock(lock, |lock| {
        let repo = repo
            .load_index()
            .with_context(|| format!("load index of {loc}"))?;
        let snap = repo.find_snapshot(&a.snapshot)?;
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
                    "restore snapshot {} to {}",
                    snap.id.short(),
                    a.target.display()
                )
            },
        )?;
        Ok((snap, out))
    })?;
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
