//! Backing up a volume into a repository: a fixed-chunk image snapshot of its raw file,
//! incremental when changed-block tracking allows.
//!
//! [`backup_volume`] backs up a volume no server holds (its chains are taken exclusively, so
//! a served volume is refused): what is read must not change under the reader. A served
//! volume is backed up by its server from a frozen image — a split pair or a
//! copy-before-write session ([`crate::engine`]); both paths share [`Plan`].
//!
//! Incremental only when the volume's chain for this repository (by id: one repository may
//! be reached by several paths or URLs) is trusted and the snapshot it is relative to is
//! still in the repository, as an image of the same size: then only the chain's dirty 4 MiB
//! granules are read, every other chunk is taken from that snapshot. Otherwise everything is
//! read, and the outcome says why. After the snapshot is durable, a record is appended and
//! the chain is made relative to the new snapshot (the other repositories' chains keep
//! their bits).

use kura_repo::backup::{BackupOptions, BackupOutcome, CancelToken, ParentChoice, backup};
use kura_repo::lock::{RepoLock, Shared};
use kura_repo::progress::Progress;
use kura_repo::snapshot::{Content, SnapshotEntry};
use kura_repo::{Id, IndexedRepo};

use crate::chains::{ChainSet, Frozen, Identity, incremental_reads};
use crate::error::{Error, Result, io};
use crate::records::{FORMAT_RAW, VolumeRecord};
use crate::store::VolumeStore;

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

/// `repository` is the repository's URL as the user gave it (endpoint and options included,
/// a local path made absolute), for the record: the record must find it again from anywhere.
#[allow(clippy::too_many_arguments)]
pub fn backup_volume(
    store: &VolumeStore,
    name: &str,
    repository: &str,
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
    let raw = store.raw(name);
    let identity = || -> Result<Identity> {
        let md = std::fs::metadata(&raw).map_err(io(format!("stat {}", raw.display())))?;
        Ok(Identity::of(&md))
    };
    let chains = match store.open_chains(name, meta.size, &identity()?) {
        Ok(c) => c,
        Err(Error::InUse(_)) => {
            return Err(Error::InUse(format!(
                "volume {name:?} is in use (served): a consistent backup of a volume in use \
                 needs its server to split it or run a backup session; back it up through the \
                 server, or stop serving it"
            )));
        }
        Err(e) => return Err(e),
    };
    let repo_id = repo.config().id;
    let parent = Plan::parent(&chains, repo_id, repo);
    let frozen = chains.freeze(repo_id);
    let plan = Plan::decide(parent, meta.size, &frozen);
    let o = plan.options(opts);
    let result = backup(repo, lock, std::slice::from_ref(&raw), &o, progress, cancel)
        .map_err(Error::from)
        .and_then(|outcome| {
            let record = plan.record(&meta, repository, repo, &outcome);
            store.add_record(name, &record)?;
            Ok((outcome, record))
        });
    let (outcome, record) = match result {
        Ok(r) => r,
        Err(e) => {
            // Nothing changes: the bits still say what the next backup must read.
            chains.thaw_failed(frozen)?;
            chains.close(&identity()?)?;
            return Err(e);
        }
    };
    // The snapshot is durable and recorded: this chain is relative to it from here.
    chains.thaw_done(&frozen, outcome.id)?;
    chains.close(&identity()?)?;
    Ok(VolumeBackup {
        incremental: plan.reads().is_some(),
        full_reason: plan.full_reason,
        outcome,
        record,
    })
}

/// What a volume backup reads: incremental from a parent, or everything and why.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub parent: Option<Id>,
    /// Why everything is read; `None`: only `changed` is read.
    pub full_reason: Option<String>,
    pub changed: Vec<(u64, u64)>,
}

/// The chain's base snapshot as found in the repository: the entry, or why it is not there.
pub(crate) type Parent = Option<std::result::Result<SnapshotEntry, String>>;

impl Plan {
    /// Look up the snapshot the chain of `repo_id` is relative to, in the repository. This
    /// reads the repository (a round trip to a remote target), so a served volume looks it up
    /// *before* its freeze, never under the change lock; [`decide`](Self::decide) checks that
    /// the chain frozen is still relative to it.
    pub fn parent(chains: &ChainSet, repo_id: Id, repo: &IndexedRepo) -> Parent {
        chains.base(&repo_id).map(|base| {
            repo.find_snapshot(&base.to_hex())
                .map_err(|e| e.to_string())
        })
    }

    /// Incremental from the chain's base when [`incremental_reads`] allows (trusted, base
    /// still there) and the base is an image of the same size; otherwise a full read, and
    /// why. No I/O: this part runs under the freeze.
    pub fn decide(parent: Parent, size: u64, frozen: &Frozen) -> Plan {
        let found = match (&parent, frozen.base) {
            (Some(Ok(p)), Some(base)) if p.id == base => Ok(()),
            (Some(Err(why)), Some(_)) => Err(why.clone()),
            (_, Some(_)) => Err("the chain changed while its parent was looked up".to_string()),
            (_, None) => Ok(()),
        };
        let entry = parent.and_then(|p| p.ok());
        let full_reason = match incremental_reads(frozen, found) {
            Err(why) => Some(why),
            Ok(_) => match entry.as_ref().map(|p| &p.snapshot.content) {
                Some(Content::Image(i)) if i.size == size => None,
                Some(Content::Image(i)) => Some(format!(
                    "the last backup is of a {}-byte volume; this one is {size} bytes",
                    i.size
                )),
                Some(Content::Tree { .. }) => Some("the last backup is not an image".to_string()),
                None => Some(crate::chains::NEW_CHAIN.to_string()),
            },
        };
        Plan {
            parent: entry.map(|p| p.id),
            full_reason,
            changed: frozen.runs.clone(),
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
        repository: &str,
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
            repository: repository.to_string(),
            repository_id: repo.config().id.to_hex(),
            backup: outcome.id.to_hex(),
            size: meta.size,
            incremental: self.reads().is_some(),
            area: None,
        }
    }
}
