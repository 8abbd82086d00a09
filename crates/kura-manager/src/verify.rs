//! `kura catalog verify [--fix]`: compare the catalog with what the targets hold, report each
//! difference, and with `fix` make them one again (see [`crate::sync`] for why they must be).
//!
//! What is compared, per reachable target:
//! - every copy the catalog claims there: the snapshot manifest exists (a whole copy's packs
//!   are `kura check`'s business: reading every tree is not a catalog check); every section:
//!   its index file exists there and so does every pack it lists, and the manifest exists on
//!   some target holding part of the backup (a fail-over run writes it only to the targets
//!   still working at its end);
//! - the records there: each backup whose manifest the target holds has exactly one record,
//!   equal to the catalog's; no record names a backup the catalog does not know, or one the target
//!   holds no part of;
//! - backups left `forgetting` by an interrupted `kura backups forget`.
//!
//! The catalog is the truth for what a record should say, and the targets for what exists:
//! a claimed copy that is missing (snapshot manifest, or packs of a section) is dropped from
//! the catalog — a section whose index file alone is missing is only reported, as a prune
//! may have listed its packs in other index files — (the backup becomes
//! `forgotten` when no copy is left); a record the catalog lacks is re-entered when its
//! target holds the snapshot, else deleted; a record that disagrees is rewritten.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use kura_backend::FileKind;
use kura_catalog::{BackupState, Catalog};
use kura_repo::catalog_record::CatalogRecord;
use kura_repo::id::Id;

use crate::Result;
use crate::position::Position;
use crate::sync::{Keyring, Open, TargetRepo, record_of, record_snapshot, same_record};

/// What kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiffKind {
    /// The catalog claims a copy or section whose snapshot manifest the target lacks.
    MissingSnapshot,
    /// The catalog claims a section whose index file the target lacks.
    MissingIndex,
    /// The catalog claims a section whose packs the target (partly) lacks.
    MissingPacks,
    /// The target holds part of a backup but no record of it.
    MissingRecord,
    /// The target holds a record of a backup the catalog does not know (or no longer has a
    /// copy of).
    UnknownRecord,
    /// The target's record and the catalog disagree (other copies, times, or several records).
    RecordDiffers,
    /// A `backups forget` was interrupted.
    Unfinished,
}

impl DiffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::MissingSnapshot => "missing-snapshot",
            DiffKind::MissingIndex => "missing-index",
            DiffKind::MissingPacks => "missing-packs",
            DiffKind::MissingRecord => "missing-record",
            DiffKind::UnknownRecord => "unknown-record",
            DiffKind::RecordDiffers => "record-differs",
            DiffKind::Unfinished => "unfinished-forget",
        }
    }
}

/// One difference between the catalog and a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub kind: DiffKind,
    pub target: Option<String>,
    pub backup: Option<i64>,
    pub snapshot: Option<Id>,
    pub detail: String,
    /// Whether `fix` repaired it.
    pub fixed: bool,
}

/// What a verify found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub targets_checked: Vec<String>,
    /// Targets that could not be checked, with the reason.
    pub unchecked: Vec<(String, String)>,
    pub differences: Vec<Difference>,
}

/// One target's contents as far as the catalog cares.
struct Held {
    t: TargetRepo,
    snapshots: HashSet<String>,
    indexes: Option<HashSet<String>>,
    packs: Option<HashSet<String>>,
    records: Vec<(Id, CatalogRecord)>,
}

impl Held {
    fn names(&mut self, kind: FileKind) -> Result<&HashSet<String>> {
        let slot = match kind {
            FileKind::Index => &mut self.indexes,
            _ => &mut self.packs,
        };
        if slot.is_none() {
            *slot = Some(
                self.t
                    .repo
                    .backend()
                    .list(kind)?
                    .into_iter()
                    .map(|f| f.name)
                    .collect(),
            );
        }
        Ok(slot.get_or_insert_with(HashSet::new))
    }
}

/// Compare the catalog with every registered target (module docs); with `fix`, repair.
pub fn verify(catalog: &Catalog, open: Open, password: &[u8], fix: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    // Interrupted forgets first: they change what the targets should hold.
    for b in catalog.backups(None)? {
        if b.state != BackupState::Forgetting {
            continue;
        }
        let mut d = Difference {
            kind: DiffKind::Unfinished,
            target: None,
            backup: Some(b.id),
            snapshot: crate::sync::backup_snapshot(catalog, b.id)?,
            detail: "an interrupted `backups forget`".into(),
            fixed: false,
        };
        if fix {
            let done = crate::sync::forget_backup(catalog, b.id, open, password, &|_| {})?;
            d.fixed = done.failed.is_empty();
            if !d.fixed {
                d.detail = format!("{}; still failing: {:?}", d.detail, done.failed);
            }
        }
        report.differences.push(d);
    }
    let mut keys = Keyring::new(password);
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    for r in catalog.resources()? {
        if r.kind != kura_catalog::Kind::Target {
            continue;
        }
        let opened = crate::sync::target_url(catalog, &r.name)
            .and_then(|u| open(&u))
            .and_then(|be| keys.open(be));
        let loaded = opened.and_then(|repo| {
            let snapshots = repo
                .backend()
                .list(FileKind::Snapshot)?
                .into_iter()
                .map(|f| f.name)
                .collect();
            let records = repo.catalog_records()?;
            Ok(Held {
                t: TargetRepo {
                    name: r.name.clone(),
                    repo,
                },
                snapshots,
                indexes: None,
                packs: None,
                records,
            })
        });
        match loaded {
            Ok(h) => {
                report.targets_checked.push(r.name.clone());
                held.insert(r.name.clone(), h);
            }
            Err(crate::Error::Repo(kura_repo::Error::NotARepository(_)))
                if !has_extents(catalog, &r.name)? =>
            {
                // A registered target nothing was written to yet: nothing to compare.
                report.targets_checked.push(r.name.clone());
            }
            Err(e) => report.unchecked.push((r.name.clone(), e.to_string())),
        }
    }
    copies(catalog, &mut held, fix, &mut report)?;
    records(catalog, &mut held, fix, &mut report)?;
    Ok(report)
}

fn has_extents(catalog: &Catalog, target: &str) -> Result<bool> {
    for b in catalog.backups(None)? {
        if catalog.extents(b.id)?.iter().any(|e| e.target == target) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every copy or section the catalog claims on a checked target exists there.
fn copies(
    catalog: &Catalog,
    held: &mut BTreeMap<String, Held>,
    fix: bool,
    report: &mut VerifyReport,
) -> Result<()> {
    for b in catalog.backups(None)? {
        if b.state != BackupState::Complete {
            continue;
        }
        let extents = catalog.extents(b.id)?;
        // A section needs the backup's manifest somewhere, not on its own target: a
        // fail-over run writes it only to the targets still working at its end. Unknown
        // while a target holding part of the backup cannot be checked.
        let manifest_somewhere = extents.iter().any(|e| {
            e.position.parse::<Position>().is_ok_and(|p| {
                held.get(&e.target)
                    .is_some_and(|h| h.snapshots.contains(&p.snapshot().to_hex()))
            })
        }) || extents.iter().any(|e| !held.contains_key(&e.target));
        for e in extents {
            let Some(h) = held.get_mut(&e.target) else {
                continue;
            };
            let pos = e.position.parse::<Position>()?;
            let snap = pos.snapshot();
            let own_manifest = match &pos {
                Position::Section { index, .. } => index.is_empty() || !manifest_somewhere,
                Position::Copy(_) => true,
            };
            let mut diff = |kind, detail: String, seq: Option<i64>| -> Result<()> {
                // A section whose index file is gone but whose snapshot is there may have
                // its packs listed by other index files (a prune rewrites them): dropping
                // the claim could hide data a restore reads. Reported, left for `check`.
                let fixable = kind != DiffKind::MissingIndex;
                let mut d = Difference {
                    kind,
                    target: Some(e.target.clone()),
                    backup: Some(b.id),
                    snapshot: Some(snap),
                    detail,
                    fixed: false,
                };
                if fix && fixable {
                    catalog.drop_copies(&e.target, &snap.to_hex(), seq)?;
                    d.fixed = true;
                }
                report.differences.push(d);
                Ok(())
            };
            if own_manifest && !h.snapshots.contains(&snap.to_hex()) {
                diff(
                    DiffKind::MissingSnapshot,
                    format!("snapshot {} is not on the target", snap.short()),
                    Some(e.seq),
                )?;
                continue;
            }
            let Position::Section { index, .. } = pos else {
                continue;
            };
            if index.is_empty() {
                continue;
            }
            if !h.names(FileKind::Index)?.contains(&index) {
                diff(
                    DiffKind::MissingIndex,
                    format!(
                        "section {}: index file {index} is not on the target (not dropped: \
                         its packs may be listed elsewhere; run kura check there)",
                        e.seq
                    ),
                    Some(e.seq),
                )?;
                continue;
            }
            let file = h.t.repo.load_index_file(&index)?;
            let packs = h.names(FileKind::Pack)?;
            let missing = file
                .packs
                .iter()
                .filter(|(p, _)| !packs.contains(&p.to_hex()))
                .count();
            if missing > 0 {
                diff(
                    DiffKind::MissingPacks,
                    format!(
                        "section {}: {missing} of {} pack(s) are not on the target",
                        e.seq,
                        file.packs.len()
                    ),
                    Some(e.seq),
                )?;
            }
        }
    }
    Ok(())
}

/// The records on each checked target agree with the catalog.
fn records(
    catalog: &Catalog,
    held: &mut BTreeMap<String, Held>,
    fix: bool,
    report: &mut VerifyReport,
) -> Result<()> {
    // snapshot → (backup, targets holding part of it), for backups the catalog treats as live
    // (running ones too: their records are written before their rows).
    let mut live: BTreeMap<Id, (i64, BackupState, BTreeSet<String>)> = BTreeMap::new();
    for b in catalog.backups(None)? {
        if !matches!(b.state, BackupState::Complete | BackupState::Running) {
            continue;
        }
        for e in catalog.extents(b.id)? {
            let s = e.position.parse::<Position>()?.snapshot();
            live.entry(s)
                .or_insert_with(|| (b.id, b.state, BTreeSet::new()))
                .2
                .insert(e.target);
        }
    }
    let names: Vec<String> = held.keys().cloned().collect();
    for name in names {
        let h = &held[&name];
        let mut by_snap: BTreeMap<Id, Vec<&CatalogRecord>> = BTreeMap::new();
        for (_, r) in &h.records {
            if let Some(s) = record_snapshot(r) {
                by_snap.entry(s).or_default().push(r);
            }
        }
        let mut todo: Vec<(DiffKind, Id, Option<i64>, String)> = Vec::new();
        for (s, rs) in &by_snap {
            match live.get(s) {
                Some((_, BackupState::Running, _)) => {}
                None => todo.push((
                    DiffKind::UnknownRecord,
                    *s,
                    None,
                    format!(
                        "a record of snapshot {} ({}) that the catalog has no copy of",
                        s.short(),
                        rs[0].object
                    ),
                )),
                Some((b, _, holders)) if !holders.contains(&name) => todo.push((
                    DiffKind::RecordDiffers,
                    *s,
                    Some(*b),
                    format!("a record of backup {b}, which has no copy on this target"),
                )),
                Some((b, _, _)) => {
                    let want = record_of(catalog, &catalog.backup(*b)?, None)?;
                    if rs.len() != 1 || !same_record(rs[0], &want) {
                        todo.push((
                            DiffKind::RecordDiffers,
                            *s,
                            Some(*b),
                            format!(
                                "{} record(s) of backup {b} that disagree with the catalog",
                                rs.len()
                            ),
                        ));
                    }
                }
            }
        }
        for (s, (b, state, holders)) in &live {
            // Records live with the manifest: a target holding only sections of a
            // backup has none (its run could not write there).
            if *state == BackupState::Complete
                && holders.contains(&name)
                && h.snapshots.contains(&s.to_hex())
                && !by_snap.contains_key(s)
            {
                todo.push((
                    DiffKind::MissingRecord,
                    *s,
                    Some(*b),
                    format!("no record of backup {b}"),
                ));
            }
        }
        for (kind, s, b, detail) in todo {
            let mut d = Difference {
                kind,
                target: Some(name.clone()),
                backup: b,
                snapshot: Some(s),
                detail,
                fixed: false,
            };
            if fix {
                d.fixed = fix_record(catalog, held, &name, kind, s, b)?;
            }
            report.differences.push(d);
        }
    }
    Ok(())
}

fn fix_record(
    catalog: &Catalog,
    held: &BTreeMap<String, Held>,
    name: &str,
    kind: DiffKind,
    s: Id,
    b: Option<i64>,
) -> Result<bool> {
    let h = &held[name];
    if kind == DiffKind::UnknownRecord {
        // Re-enter the copies of the record on targets that really hold the snapshot.
        let hex = s.to_hex();
        let rec = h
            .records
            .iter()
            .map(|(_, r)| r)
            .find(|r| record_snapshot(r) == Some(s));
        if let Some(r) = rec {
            let extents: Vec<_> = r
                .extents
                .iter()
                .filter(|e| {
                    held.get(&e.target)
                        .is_some_and(|o| o.snapshots.contains(&hex))
                })
                .map(crate::rebuild::from_record)
                .collect();
            if !extents.is_empty() {
                let (id, _, _) =
                    catalog.import_backup(&r.object, r.started, r.ended, r.data_time, &extents)?;
                let targets: Vec<TargetRepo> = held
                    .values()
                    .filter_map(|o| {
                        o.t.repo
                            .member(o.t.repo.backend_arc())
                            .ok()
                            .map(|repo| TargetRepo {
                                name: o.t.name.clone(),
                                repo,
                            })
                    })
                    .collect();
                let failed = crate::sync::sync_records(catalog, Some(id), s, &targets)?;
                return Ok(failed.is_empty());
            }
        }
        crate::sync::rewrite_records(&h.t.repo, s, None)?;
        return Ok(true);
    }
    let want = match b {
        Some(b) => {
            let backup = catalog.backup(b)?;
            let holds = catalog.extents(b)?.iter().any(|e| e.target == name);
            if holds && backup.state == BackupState::Complete {
                let job = h
                    .records
                    .iter()
                    .find(|(_, r)| record_snapshot(r) == Some(s))
                    .and_then(|(_, r)| r.job.clone());
                Some(record_of(catalog, &backup, job)?)
            } else {
                None
            }
        }
        None => None,
    };
    crate::sync::rewrite_records(&h.t.repo, s, want.as_ref())?;
    Ok(true)
}
