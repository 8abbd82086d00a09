//! Rebuilding the catalog database from the records on the targets (see
//! `kura_repo::catalog_record`), and the one place that converts between the catalog's
//! extents and the records' (the two crates do not know each other).

use kura_catalog::{Catalog, Extent};
use kura_repo::Repository;
use kura_repo::catalog_record::RecordExtent;

use crate::Result;

pub fn to_record(e: &Extent) -> RecordExtent {
    RecordExtent {
        stream: e.stream,
        seq: e.seq,
        source_offset: e.source_offset,
        source_length: e.source_length,
        target: e.target.clone(),
        medium: e.medium.clone(),
        position: e.position.clone(),
        size: e.size,
    }
}

pub fn from_record(e: &RecordExtent) -> Extent {
    Extent {
        stream: e.stream,
        seq: e.seq,
        source_offset: e.source_offset,
        source_length: e.source_length,
        target: e.target.clone(),
        medium: e.medium.clone(),
        position: e.position.clone(),
        size: e.size,
    }
}

/// What a rebuild from one repository did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub records: usize,
    /// Backups the catalog did not have.
    pub imported: usize,
    /// Backups it had (only missing copies were added).
    pub already_known: usize,
    /// Targets named in records but not registered in the catalog (their copies left out).
    pub unknown_targets: Vec<String>,
}

impl Rebuilt {
    /// Re-enter one recorded backup and count what happened.
    pub fn import(
        &mut self,
        catalog: &Catalog,
        object: &str,
        (started, ended, data_time): (i64, i64, i64),
        extents: &[Extent],
    ) -> Result<()> {
        self.records += 1;
        let (_, new, skipped) =
            catalog.import_backup(object, started, ended, data_time, extents)?;
        if new {
            self.imported += 1;
        } else {
            self.already_known += 1;
        }
        self.unknown_targets
            .extend(skipped.into_iter().map(|e| e.target));
        Ok(())
    }

    /// Add another rebuild's counts to these (unknown targets sorted, once each).
    pub fn merge(&mut self, other: Rebuilt) {
        self.records += other.records;
        self.imported += other.imported;
        self.already_known += other.already_known;
        self.unknown_targets.extend(other.unknown_targets);
        self.unknown_targets.sort();
        self.unknown_targets.dedup();
    }
}

/// A volume backup as its volume's backup record tells it (seed 002: the records kept
/// outside the volume's address space are enough to rebuild the catalog's entries).
#[derive(Debug, Clone)]
pub struct VolumeBackup {
    pub volume: String,
    /// When it was taken (milliseconds since the epoch).
    pub time_ms: i64,
    pub size: u64,
    /// The repository URL it went to.
    pub repository: String,
    /// Its snapshot id.
    pub snapshot: String,
    /// A split area's backup: (offset, length) within the volume.
    pub area: Option<(u64, u64)>,
}

/// Re-enter volume backups from their records. Each is a backup of object `volume:NAME`
/// (a split area's: `volume:NAME@OFFSET:LENGTH`, an object of its own), complete, with one
/// extent: the snapshot on the registered target whose URL names the record's repository
/// (and that target's implicit medium). A record whose repository is no registered target
/// is counted and its repository listed in [`Rebuilt::unknown_targets`].
pub fn import_volume_backups(catalog: &Catalog, records: &[VolumeBackup]) -> Result<Rebuilt> {
    let targets: Vec<(String, String)> = catalog
        .resources()?
        .into_iter()
        .filter_map(|r| {
            let url = r.config.target()?.url.clone();
            Some((r.name, url))
        })
        .collect();
    let mut out = Rebuilt::default();
    for r in records {
        // One repository may be named by several paths (symlinks) or URL spellings.
        let Some((target, _)) = targets
            .iter()
            .find(|(_, u)| kura_backend::same_url(u, &r.repository))
        else {
            out.records += 1;
            out.unknown_targets.push(r.repository.clone());
            continue;
        };
        let size = i64::try_from(r.size).unwrap_or(i64::MAX);
        let extent = Extent {
            stream: 0,
            seq: 0,
            source_offset: 0,
            source_length: size,
            target: target.clone(),
            medium: format!("{target}.medium"),
            position: r.snapshot.clone(),
            size,
        };
        let object = match r.area {
            Some((offset, length)) => format!("volume:{}@{offset}:{length}", r.volume),
            None => format!("volume:{}", r.volume),
        };
        out.import(
            catalog,
            &object,
            (r.time_ms, r.time_ms, r.time_ms),
            &[extent],
        )?;
    }
    Ok(out)
}

/// Re-enter every backup recorded in `repo` (the repository on catalog target `name`) into
/// `catalog`. A record never brings back a copy on `name` whose snapshot `name` no longer
/// holds (a forget there after the record was written); copies on other targets are taken
/// as recorded (`kura catalog verify` checks them against their targets).
pub fn rebuild_from(catalog: &Catalog, repo: &Repository, name: &str) -> Result<Rebuilt> {
    let held: std::collections::HashSet<String> = repo
        .backend()
        .list(kura_backend::FileKind::Snapshot)?
        .into_iter()
        .map(|f| f.name)
        .collect();
    let mut out = Rebuilt::default();
    for (_, r) in repo.catalog_records()? {
        let extents: Vec<Extent> = r
            .extents
            .iter()
            .map(from_record)
            .filter(|e| {
                e.target != name
                    || e.position
                        .parse::<crate::Position>()
                        .is_ok_and(|p| held.contains(&p.snapshot().to_hex()))
            })
            .collect();
        if extents.is_empty() {
            continue;
        }
        out.import(
            catalog,
            &r.object,
            (r.started, r.ended, r.data_time),
            &extents,
        )?;
    }
    out.unknown_targets.sort();
    out.unknown_targets.dedup();
    Ok(out)
}
