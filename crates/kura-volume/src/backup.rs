//! Backing up a volume into a repository: a fixed-chunk image snapshot of its raw file,
//! incremental when changed-block tracking allows.
//!
//! [`backup_volume`] backs up a volume no server holds (its dirty bitmap is taken
//! exclusively, so a served volume is refused): what is read must not change under the
//! reader. A served volume is backed up by its server from a frozen image — a split pair or
//! a copy-before-write session ([`crate::engine`]); both paths share [`Plan`].
//!
//! Incremental when the bitmap is trusted and the volume's newest backup record names a
//! snapshot in this repository of the same size: only the dirty 4 MiB granules are read,
//! every other chunk is taken from that snapshot. Otherwise everything is read, and the
//! outcome says why. After the snapshot is durable, a record is appended and the bitmap is
//! reset (trusted, empty): the next backup reads only what changes from here.

use std::sync::Arc;

use kura_repo::IndexedRepo;
use kura_repo::backup::{BackupOptions, BackupOutcome, CancelToken, ParentChoice, backup};
use kura_repo::lock::{RepoLock, Shared};
use kura_repo::progress::Progress;
use kura_repo::snapshot::{Content, SnapshotEntry};

use crate::dirty::{DirtyMap, Trust};
use crate::records::{FORMAT_RAW, VolumeRecord};
use crate::store::{Error, Result, VolumeStore};

/// What a volume backup did.
#[derive(Debug)]
pub struct VolumeBackup {
    pub outcome: BackupOutcome,
    /// Only changed chunks were read.
    pub incremental: bool,
    /// Why everything was read, when it was.
    pub full_reason: Option<String>,
    pub record: VolumeRecord,
}

pub fn backup_volume(
    store: &VolumeStore,
    name: &str,
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    opts: &BackupOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<VolumeBackup> {
    let meta = store.meta(name)?;
    if let Some(p) = &meta.secondary_of {
        // Its server writes it (duplex) or will resync it: it does not hold still.
        return Err(Error::Invalid(format!(
            "{name} is the secondary of the mirror pair of {p}: back up {p} (its server splits \
             the pair and backs up the frozen secondary)"
        )));
    }
    let dirty = match DirtyMap::open(&store.dirty_path(name), meta.size) {
        Ok(d) => Arc::new(d),
        Err(Error::InUse(_)) => {
            return Err(Error::InUse(format!(
                "{name} (served: a consistent backup of a volume in use needs a split or a \
                 backup session; stop serving it to back it up)"
            )));
        }
        Err(e) => return Err(e),
    };
    let plan = Plan::new(
        store,
        name,
        repo,
        meta.size,
        dirty.trust(),
        dirty.dirty_runs(),
    )?;
    let o = plan.options(opts);
    let result = backup(repo, lock, &[store.raw(name)], &o, progress, cancel);
    let outcome = match result {
        Ok(out) => out,
        Err(e) => {
            // Nothing changes: the bits still say what the next backup must read.
            dirty.close()?;
            return Err(e.into());
        }
    };
    let record = plan.record(&meta, repo, &outcome);
    store.add_record(name, &record)?;
    // The snapshot is durable and recorded: track changes from here.
    dirty.reset()?;
    dirty.close()?;
    Ok(VolumeBackup {
        incremental: plan.full_reason.is_none(),
        full_reason: plan.full_reason,
        outcome,
        record,
    })
}

/// What a volume backup reads: incremental from a parent, or everything and why.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub parent: Option<kura_repo::Id>,
    /// Why everything is read; `None`: only `changed` is read.
    pub full_reason: Option<String>,
    pub changed: Vec<(u64, u64)>,
}

impl Plan {
    /// The parent is the newest record of this repository (by id: one repository may be
    /// reached by several paths or URLs) whose snapshot is still there; incremental when the
    /// bitmap is trusted and that snapshot is an image of the same size.
    pub fn new(
        store: &VolumeStore,
        name: &str,
        repo: &IndexedRepo,
        size: u64,
        trust: Trust,
        changed: Vec<(u64, u64)>,
    ) -> Result<Plan> {
        let parent = Plan::parent(store, name, repo)?;
        Ok(Plan::decide(parent, size, trust, changed))
    }

    /// The parent snapshot: the newest record of this repository whose snapshot is still
    /// there. This reads the record file and the repository (a round trip to a remote
    /// target), so a served volume looks it up *before* its freeze, never under the change
    /// lock; that is sound only while no other backup of the volume can finish in between
    /// (the engine runs one job per volume at a time).
    pub fn parent(
        store: &VolumeStore,
        name: &str,
        repo: &IndexedRepo,
    ) -> Result<Option<SnapshotEntry>> {
        let repo_id = repo.config().id.to_hex();
        Ok(store
            .records(name)?
            .into_iter()
            .rev()
            .filter(|r| r.repository_id == repo_id)
            .find_map(|r| repo.find_snapshot(&r.backup).ok()))
    }

    /// Incremental from `parent` when the bitmap is trusted (`trust`, `changed`: taken at
    /// the freeze) and the parent is an image of the same size; otherwise a full read, and
    /// why. No I/O: this part runs under the freeze.
    pub fn decide(
        parent: Option<SnapshotEntry>,
        size: u64,
        trust: Trust,
        changed: Vec<(u64, u64)>,
    ) -> Plan {
        let full_reason = match (&parent, trust) {
            (_, Trust::Untrusted(why)) => Some(why),
            (None, Trust::Trusted) => {
                Some("no earlier backup of this volume in this repository".to_string())
            }
            (Some(p), Trust::Trusted) => match &p.snapshot.content {
                Content::Image(i) if i.size == size => None,
                Content::Image(i) => Some(format!(
                    "the last backup is of a {}-byte volume; this one is {size} bytes",
                    i.size
                )),
                Content::Tree { .. } => Some("the last backup is not an image".to_string()),
            },
        };
        Plan {
            parent: parent.map(|p| p.id),
            full_reason,
            changed,
        }
    }

    /// The byte ranges the backup reads (`None`: all).
    pub fn reads(&self) -> Option<&[(u64, u64)]> {
        match (&self.full_reason, &self.parent) {
            (None, Some(_)) => Some(&self.changed),
            _ => None,
        }
    }

    pub fn options(&self, opts: &BackupOptions) -> BackupOptions {
        let mut o = opts.clone();
        o.image = true;
        match (self.reads(), &self.parent) {
            (Some(r), Some(p)) => {
                o.parent = ParentChoice::Snapshot(p.to_hex());
                o.changed_ranges = Some(r.to_vec());
            }
            _ => {
                o.parent = ParentChoice::None;
                o.changed_ranges = None;
            }
        }
        o
    }

    pub fn record(
        &self,
        meta: &crate::VolumeMeta,
        repo: &IndexedRepo,
        outcome: &BackupOutcome,
    ) -> VolumeRecord {
        let (secs, nanos) = (outcome.snapshot.time.0, outcome.snapshot.time.1);
        let time = chrono::DateTime::from_timestamp(secs, nanos)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        VolumeRecord {
            v: 1,
            format: FORMAT_RAW.into(),
            label: meta.label.clone(),
            host: outcome.snapshot.host.clone(),
            mount_point: meta.mount_point.clone(),
            time,
            repository: repo.location(),
            repository_id: repo.config().id.to_hex(),
            backup: outcome.id.to_hex(),
            size: meta.size,
            incremental: self.reads().is_some(),
        }
    }
}
