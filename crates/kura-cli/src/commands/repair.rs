//! `kura repair index` and `kura repair snapshots` (see `kura_repo::repair`).

use anyhow::{Context, Result};
use kura_repo::lock::RepoLock;
use kura_repo::repair::{
    RepairIndexOptions, RepairSnapshotsOptions, repair_index, repair_snapshots,
};

use crate::cli::RepairCommand;
use crate::{App, exit};

pub fn run(app: &App, c: RepairCommand) -> Result<i32> {
    let repo = app.open()?;
    let loc = repo.location();
    let lock = RepoLock::exclusive(&repo).with_context(|| format!("lock {loc} exclusively"))?;
    match c {
        RepairCommand::Index(a) => crate::with_lock(lock, |lock| {
            let opts = RepairIndexOptions {
                read_all_packs: a.read_all_packs,
                dry_run: a.dry_run,
            };
            let bar = app.bar();
            let r = repair_index(&repo, lock, &opts, &bar, &app.cancel)
                .with_context(|| format!("repair index of {loc}"))?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for (pack, why) in &r.packs_unreadable {
                    app.say(format!(
                        "pack {pack}: header unreadable, not indexed: {why}"
                    ));
                }
                app.say(format!(
                    "{}{} packs ({} headers read): {} indexed with {} blobs, {} unreadable, \
                     {} listed but missing; index files: {} damaged, {} written, {} deleted",
                    if r.dry_run { "dry run: " } else { "" },
                    r.packs,
                    r.headers_read,
                    r.packs_indexed,
                    r.blobs_indexed,
                    r.packs_unreadable.len(),
                    r.packs_missing,
                    r.index_files_damaged.len(),
                    r.index_files_written,
                    r.index_files_deleted,
                ));
            }
            Ok(if r.packs_unreadable.is_empty() {
                exit::OK
            } else {
                exit::INCOMPLETE
            })
        }),
        RepairCommand::Snapshots(a) => crate::with_lock(lock, |lock| {
            let opts = RepairSnapshotsOptions {
                snapshots: a.snapshots.clone(),
                forget: a.forget,
                dry_run: a.dry_run,
            };
            // Packs no readable index file lists (an index file damaged or lost) are adopted
            // from their headers first: their blobs are not missing, and a file must not be
            // removed from a snapshot for want of an index entry.
            let (indexed, _) = repo
                .load_index_adopting_orphans()
                .with_context(|| format!("load index of {loc}"))?;
            let bar = app.bar();
            let r = repair_snapshots(&indexed, lock, &opts, &bar, &app.cancel)
                .with_context(|| format!("repair snapshots of {loc}"))?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for d in &r.damaged {
                    let short = &d.original[..8.min(d.original.len())];
                    match (&d.error, &d.repaired) {
                        (Some(e), _) => app.say(format!("snapshot {short}: not repaired: {e}")),
                        (None, Some(n)) => app.say(format!(
                            "snapshot {short}: {} file(s) removed, {} dir(s) emptied; \
                             repaired as {}{}",
                            d.files_removed.len(),
                            d.dirs_emptied.len(),
                            &n[..8],
                            if d.forgotten {
                                ", original removed"
                            } else {
                                ""
                            }
                        )),
                        (None, None) => app.say(format!(
                            "snapshot {short}: would remove {} file(s), empty {} dir(s)",
                            d.files_removed.len(),
                            d.dirs_emptied.len()
                        )),
                    }
                }
                app.say(format!(
                    "{}{} snapshot(s) examined, {} damaged, {} not repairable",
                    if r.dry_run { "dry run: " } else { "" },
                    r.snapshots,
                    r.damaged.len(),
                    r.unrepairable()
                ));
            }
            Ok(if r.unrepairable() == 0 {
                exit::OK
            } else {
                exit::INCOMPLETE
            })
        }),
    }
}
