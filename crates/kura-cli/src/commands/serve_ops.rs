//! The daemon's repository and volume work ([`kura_daemon::ops::Operations`]), done by the
//! code the commands run: a restore task is `kura restore` ([`super::restore::restore_from`],
//! [`super::restore::from_catalog`]), a check task `kura check`, a prune task `kura prune`
//! (with the catalog's sections kept and the catalog brought in line after), a heal task
//! `kura heal`, a rebuild task `kura catalog rebuild --from`. What those commands print goes
//! to the task's log instead; their progress to the task.
//!
//! Each piece of work gets a copy of the serving [`App`] pointed at the target's URL, quiet,
//! with the task's cancel token: the repository password is the one `kura serve` read at
//! start (never asked for again), target options and traffic limits are the daemon's.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use kura_catalog::Catalog;
use kura_daemon::ops::{Operations, PairView, Restore, RestoreSource, VolumeView, repo_error};
use kura_daemon::{Error, Task};
use kura_repo::Repository;
use kura_repo::prune::PruneOptions;

use crate::App;
use crate::cli_volume::VolumeDirArgs;
use crate::commands::restore::{Restoring, from_catalog, restore_from};
use crate::output::bytes;

pub struct Ops {
    pub app: App,
    pub catalog: Arc<Catalog>,
    pub password: Vec<u8>,
}

type Done = std::result::Result<(), String>;

fn text(e: anyhow::Error) -> String {
    format!("{e:#}")
}

impl Ops {
    /// The serving app, aimed at `url` (if any) and cancelled with the task.
    fn app_for(&self, url: Option<&str>, task: &Task) -> App {
        let mut app = self.app.clone();
        app.global.repo = url.map(str::to_string);
        app.global.mirrors.clear();
        app.global.quiet = true;
        app.global.json = false;
        app.mirror = std::sync::OnceLock::new();
        app.cancel = task.cancel_token();
        app
    }

    fn open_with(&self, app: &App, name: &str, url: &str) -> anyhow::Result<Repository> {
        Repository::open(app.backend_for(url)?, &self.password)
            .with_context(|| format!("open the repository on target {name}"))
    }

    fn volume_dir(&self) -> anyhow::Result<PathBuf> {
        // As `--data-dir`'s environment variable, read here: the daemon parses no volume flags.
        let d = VolumeDirArgs {
            data_dir: std::env::var_os("KURA_VOLUMES").map(PathBuf::from),
        };
        super::volume::volume_dir(&self.app, &d)
    }
}

fn internal(e: anyhow::Error) -> Error {
    Error::Internal(format!("{e:#}"))
}

impl Operations for Ops {
    fn open(&self, name: &str, url: &str) -> kura_daemon::Result<Repository> {
        let backend = self
            .app
            .backend_for(url)
            .map_err(|e| Error::Unavailable(format!("target {name}: {e:#}")))?;
        Repository::open(backend, &self.password).map_err(repo_error)
    }

    fn backend(&self, url: &str) -> Result<Arc<dyn kura_repo::backend::Backend>, String> {
        self.app.backend_for(url).map_err(|e| format!("{e:#}"))
    }

    fn restore(&self, r: &Restore, task: &Task) -> Done {
        let cancel = task.cancel_token();
        let url = match &r.source {
            RestoreSource::Snapshot { url, .. } => Some(url.as_str()),
            RestoreSource::Backup(_) => None,
        };
        let app = self.app_for(url, task);
        let mut opts = r.options.clone();
        if let Some(t) = app.config.restore.threads {
            opts.threads = t.max(1);
        }
        let how = Restoring {
            target: r.destination.clone(),
            opts,
            no_lock: false,
            progress: task,
            cancel: &cancel,
        };
        let (snap, out) = match &r.source {
            RestoreSource::Snapshot {
                target,
                url,
                snapshot,
            } => {
                let repo = self.open_with(&app, target, url).map_err(text)?;
                restore_from(repo, snapshot, &how).map_err(text)?
            }
            RestoreSource::Backup(b) => {
                from_catalog(&app, &self.catalog, *b, &self.password, &how, &|m| {
                    task.log(m)
                })
                .map_err(text)?
            }
        };
        task.log(format!(
            "restored {} files, {} dirs, {} other ({}), {} already matched, {} kept, {} \
             deleted from snapshot {} to {}",
            out.files,
            out.dirs,
            out.other,
            bytes(out.bytes),
            out.unchanged,
            out.kept,
            out.deleted,
            snap.id.short(),
            r.destination.display()
        ));
        for d in &out.damaged {
            task.log(format!("damaged: {}: {}", d.path, d.reason));
        }
        for p in &out.partial {
            task.log(format!("left incomplete as {p}"));
        }
        for e in &out.errors {
            task.log(format!("error: {e}"));
        }
        if out.damaged.is_empty() && out.errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "incomplete: {} damaged file(s), {} other error(s); everything else was restored",
                out.damaged.len(),
                out.errors.len()
            ))
        }
    }

    fn check(&self, target: &str, url: &str, read_data: bool, task: &Task) -> Done {
        let app = self.app_for(Some(url), task);
        let repo = self.open_with(&app, target, url).map_err(text)?;
        let report = super::check::check_open(&app, repo, read_data, false, task).map_err(text)?;
        for w in &report.warnings {
            task.log(format!("warning: {w}"));
        }
        for e in &report.errors {
            task.log(format!("error: {e}"));
        }
        for x in &report.affected {
            task.log(format!(
                "affected: snapshot {} {}: {}",
                x.snapshot, x.path, x.problem
            ));
        }
        task.log(format!(
            "checked {} snapshot(s), {} tree(s), {} pack(s), {} blob(s), read {} pack(s)",
            report.snapshots, report.trees_checked, report.packs, report.blobs, report.packs_read
        ));
        if report.is_ok() {
            Ok(())
        } else {
            Err(format!(
                "the repository is damaged: {} error(s), {} file(s) affected",
                report.errors.len(),
                report.affected.len()
            ))
        }
    }

    fn prune(&self, target: &str, url: &str, task: &Task) -> Done {
        let app = self.app_for(Some(url), task);
        let repo = self.open_with(&app, target, url).map_err(text)?;
        let r =
            super::prune::prune_open(&app, repo, &PruneOptions::default(), task).map_err(text)?;
        task.log(format!(
            "{} blobs used, {} unused; packs: {} kept, {} repacked into {}, {} condemned, {} \
             recovered, {} deleted, {} left condemned for a later prune; {} → {}",
            r.blobs_used,
            r.blobs_unused,
            r.packs_kept,
            r.packs_repacked,
            r.packs_written,
            r.packs_condemned,
            r.packs_recovered,
            r.packs_deleted,
            r.packs_waiting,
            bytes(r.bytes_before),
            bytes(r.bytes_after)
        ));
        Ok(())
    }

    fn heal(&self, backup: i64, task: &Task) -> Done {
        let app = self.app_for(None, task);
        let r = kura_manager::heal(
            &self.catalog,
            backup,
            &|url| app.manager_backend(url, None),
            &self.password,
        )
        .map_err(|e| format!("heal backup {backup}: {e}"))?;
        if r.healed.is_empty() && r.failed.is_empty() {
            task.log(format!(
                "backup {backup}: every target already holds a complete copy"
            ));
        }
        for (t, n) in &r.healed {
            task.log(format!("backup {backup}: {t} got {n} section(s)"));
        }
        task.log(format!(
            "copied {} pack(s), {}",
            r.packs_copied,
            bytes(r.bytes_copied)
        ));
        for (t, e) in &r.failed {
            task.log(format!("{t} could not be healed: {e}"));
        }
        match r.failed.len() {
            0 => Ok(()),
            n => Err(format!("{n} target(s) could not be healed")),
        }
    }

    fn rebuild(&self, targets: &[String], task: &Task) -> Done {
        let app = self.app_for(None, task);
        let mut total = kura_manager::rebuild::Rebuilt::default();
        for name in targets {
            if task.cancel_token().is_cancelled() {
                return Err("cancelled".into());
            }
            let url = self
                .catalog
                .resource(name)
                .and_then(|r| r.target_url().map(str::to_string))
                .map_err(|e| e.to_string())?;
            let repo = self.open_with(&app, name, &url).map_err(text)?;
            let r = kura_manager::rebuild::rebuild_from(&self.catalog, &repo, name)
                .map_err(|e| format!("rebuild from the records on target {name}: {e}"))?;
            task.log(format!(
                "{name}: {} record(s), {} backup(s) re-entered, {} already known",
                r.records, r.imported, r.already_known
            ));
            total.merge(r);
        }
        if !total.unknown_targets.is_empty() {
            task.log(format!(
                "copies on targets not in this catalog were left out: {}",
                total.unknown_targets.join(", ")
            ));
        }
        task.log(format!(
            "read {} record(s): {} backup(s) re-entered, {} already known",
            total.records, total.imported, total.already_known
        ));
        Ok(())
    }

    fn volumes(&self) -> kura_daemon::Result<Vec<VolumeView>> {
        let dir = self.volume_dir().map_err(internal)?;
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let st = kura_volume::VolumeStore::open(&dir)
            .map_err(|e| Error::Unavailable(format!("volume directory {}: {e}", dir.display())))?;
        let vols = st
            .list()
            .map_err(|e| Error::Unavailable(format!("volume directory {}: {e}", dir.display())))?;
        Ok(vols
            .into_iter()
            .map(|v| VolumeView {
                name: v.meta.name,
                size: v.meta.size,
                allocated: v.allocated,
                created: v.meta.created,
                work: v.meta.work,
                secondary_of: v.meta.secondary_of,
                label: v.meta.label,
                mount_point: v.meta.mount_point,
                path: v.path.display().to_string(),
                served: v.dirty.served,
            })
            .collect())
    }

    fn pairs(&self) -> kura_daemon::Result<Vec<PairView>> {
        let dir = self.volume_dir().map_err(internal)?;
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let d = VolumeDirArgs {
            data_dir: Some(dir),
        };
        let v = super::pair::call(&self.app, &d, kura_volume::control::Request::PairList)
            .map_err(|e| Error::Unavailable(format!("{e:#}")))?;
        let pairs: Vec<kura_volume::pair::PairInfo> = serde_json::from_value(v)
            .map_err(|e| Error::Internal(format!("decode the pairs: {e}")))?;
        Ok(pairs
            .into_iter()
            .map(|p| PairView {
                primary: p.config.primary,
                secondary: p.config.secondary,
                state: serde_json::to_value(p.config.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                since: p.config.since,
                dirty_bytes: p.dirty_bytes,
                served: p.served,
                note: p.config.note,
            })
            .collect())
    }
}
