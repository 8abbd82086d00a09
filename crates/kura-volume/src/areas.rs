//! Backups of split areas (seed 003, embodiment 3): an image snapshot of one area of a
//! mirror pair's secondary, frozen since that area was split, while hosts keep writing to the
//! primary.
//!
//! `kura pair split P --area O:L` freezes an area at its own time; `kura volume backup P
//! --area O:L` then backs up `L` bytes from `O` — a split area or a part of one (a wholly
//! split pair is one area from 0, frozen since the split) — read from the secondary, whose
//! bytes there do not change until the area is resynced. A resync of the area waits for no
//! backup: it is refused while one reads it, and a backup is refused while a resync copies it
//! ([`crate::pair::Pair::claim`]).
//!
//! An area backup is not a backup of the volume: it reads the whole area (no parent), takes
//! nothing from and gives nothing to the volume's backup chains ([`crate::chains`]), and its
//! record says which area it holds ([`crate::records::RecordArea`]), its `time` being the
//! area's split time. The snapshot is tagged `area:OFFSET:LENGTH` and `split:TIME`.

use std::sync::Arc;

use kura_nbd::Export;
use kura_repo::IndexedRepo;
use kura_repo::backup::{
    BackupOptions, BackupOutcome, CancelToken, ImageReader, ImageSource, ParentChoice, backup,
};
use kura_repo::lock::{RepoLock, Shared};
use kura_repo::progress::Progress;
use kura_types::Extent;

use crate::backup::VolumeBackup;
use crate::error::{Error, Result};
use crate::export::VolumeExport;
use crate::pair::{Claim, Pair, PairState, SplitArea, Use, list, not_paired};
use crate::records::{FORMAT_RAW, RecordArea, VolumeRecord};
use crate::store::VolumeStore;

/// A split area being backed up: what is read, the area it lies in, and the claim that keeps
/// a resync off it until dropped.
pub(crate) struct AreaBackup {
    pair: Arc<Pair>,
    pub offset: u64,
    pub length: u64,
    /// The split area holding `[offset, offset + length)`.
    pub area: SplitArea,
    _claim: Claim,
}

/// `length` bytes of the secondary from `offset`, as a backup reads them.
struct AreaSource {
    pair: Arc<Pair>,
    offset: u64,
    length: u64,
}

impl ImageSource for AreaSource {
    fn size(&self) -> u64 {
        self.length
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.pair.secondary.read_at(self.offset + offset, buf)
    }
}

/// Find the split area of `export`'s pair that holds `want` and claim that range for a
/// backup.
pub(crate) fn prepare(export: &VolumeExport, want: Extent) -> Result<AreaBackup> {
    let name = export.name();
    let pair = export.pair().ok_or_else(|| not_paired(name))?;
    let size = export.size();
    let Extent { offset, length } = want;
    if want.is_empty() || !want.fits(size) {
        return Err(Error::Invalid(format!(
            "area {want} is not inside the {size}-byte volume {name}"
        )));
    }
    // Claimed before the state is looked at: a resync that rejoins the area either claimed
    // it first (refused here) or finished (the area is gone from the state).
    let claim = pair.claim(offset, length, Use::Backup)?;
    let c = pair.config();
    let area = match (c.state, c.areas.is_empty()) {
        (PairState::Split, true) => {
            if let Some(why) = &c.note {
                return Err(Error::Invalid(format!(
                    "the secondary of {name} is not a frozen image ({why})"
                )));
            }
            SplitArea {
                offset: 0,
                length: size,
                split: c.since.clone(),
            }
        }
        (PairState::Split, false) => c
            .areas
            .iter()
            .find(|a| a.contains(&want))
            .cloned()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{offset}:{length} is not inside a split area of the pair of {name} \
                     (split: {}); split it first (kura pair split {name} --area \
                     {offset}:{length})",
                    list(&c.areas)
                ))
            })?,
        (PairState::Duplex, _) => {
            return Err(Error::Invalid(format!(
                "the pair of {name} is duplex: split the area first (kura pair split {name} \
                 --area {offset}:{length}), then back it up"
            )));
        }
    };
    Ok(AreaBackup {
        pair,
        offset,
        length,
        area,
        _claim: claim,
    })
}

impl AreaBackup {
    /// The backup's options: an image read wholly through the secondary, no parent, no
    /// changed ranges, tagged with the area and its split time.
    pub fn options(&self, opts: &BackupOptions) -> BackupOptions {
        let mut o = opts.clone();
        o.image = true;
        o.parent = ParentChoice::None;
        o.changed_ranges = None;
        o.tags.push(format!("area:{}:{}", self.offset, self.length));
        o.tags.push(format!("split:{}", self.area.split));
        o.image_source = Some(ImageReader(Arc::new(AreaSource {
            pair: Arc::clone(&self.pair),
            offset: self.offset,
            length: self.length,
        })));
        o
    }

    pub fn record(
        &self,
        meta: &crate::VolumeMeta,
        repository: &str,
        repo: &IndexedRepo,
        outcome: &BackupOutcome,
    ) -> VolumeRecord {
        VolumeRecord {
            v: 1,
            format: FORMAT_RAW.into(),
            label: meta.label.clone(),
            host: outcome.snapshot.host.clone(),
            mount_point: meta.mount_point.clone(),
            time: self.area.split.clone(),
            repository: repository.to_string(),
            repository_id: repo.config().id.to_hex(),
            backup: outcome.id.to_hex(),
            size: self.length,
            incremental: false,
            area: Some(RecordArea {
                offset: self.offset,
                length: self.length,
                split: self.area.split.clone(),
            }),
        }
    }
}

/// Back up `length` bytes from `offset` of the split secondary of `name`'s pair, with no
/// server running (this process holds the pair meanwhile).
#[allow(clippy::too_many_arguments)]
pub fn backup_area(
    store: &VolumeStore,
    name: &str,
    area: Extent,
    repository: &str,
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    opts: &BackupOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<VolumeBackup> {
    let export = store.open_export(name)?;
    let job = prepare(&export, area)?;
    let o = job.options(opts);
    let outcome = backup(repo, lock, &[store.raw(name)], &o, progress, cancel)?;
    let record = job.record(&store.meta(name)?, repository, repo, &outcome);
    store.add_record(name, &record)?;
    Ok(VolumeBackup {
        outcome,
        incremental: false,
        full_reason: None,
        record,
    })
}
