//! Reading a backup from wherever its pieces are, and healing it (`kura heal`).
//!
//! A sectioned (fail-over) backup's sections lie on different targets; [`open_backup`]
//! builds one read view ([`UnionBackend`]) over every target holding part of it, usable
//! targets with the fewest errors first, and secures them for the read when it can.
//!
//! [`heal`] makes every target involved hold a complete copy: for each section a target
//! lacks, it copies the packs the section's index file lists (those the target does not
//! already have) and then the index file itself, byte for byte — the targets form a group, so
//! the same name is the same bytes — then the snapshot manifest. Order matters as in a
//! backup: packs before the index naming them, index files before the snapshot; and each
//! target is written under a shared repository lock, as by a backup, so a concurrent prune
//! there cannot delete a copied pack before its index file exists. Only after a
//! target holds a section does the catalog record it there; once it holds every section and
//! the manifest, its section rows become one copy row (it is then judged by its manifest, as
//! any copy is); then an updated catalog record is written to every target. An interrupted heal leaves extra packs at most (the next heal or
//! `prune` deals with them) and never a claim without data.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kura_backend::{Backend, FileKind, UnionBackend};
use kura_catalog::{BackupState, Catalog, Constraints, Extent, SecuredGuard, State};
use kura_repo::Repository;
use kura_repo::catalog_record::CatalogRecord;
use kura_repo::id::Id;
use kura_repo::lock::RepoLock;

use crate::position::Position;
use crate::{Error, Result};

/// A backup's targets opened for reading, in the order reads try them.
pub struct BackupView<'c> {
    pub snapshot: Id,
    /// (target name, backend), healthiest first.
    pub targets: Vec<(String, Arc<dyn Backend>)>,
    /// The targets secured for the read (released on drop), if securing was possible.
    pub guard: Option<SecuredGuard<'c>>,
}

impl Drop for BackupView<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take()
            && let Err(e) = g.finish(Ok(()))
        {
            tracing::warn!("releasing the targets read: {e}");
        }
    }
}

impl BackupView<'_> {
    pub fn union(&self) -> Arc<UnionBackend> {
        Arc::new(UnionBackend::new(
            self.targets.iter().map(|(_, b)| Arc::clone(b)).collect(),
        ))
    }
}

/// Open every target holding part of `backup` (see the module docs).
pub fn open_backup<'c>(
    catalog: &'c Catalog,
    backup: i64,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
) -> Result<BackupView<'c>> {
    let b = catalog.backup(backup)?;
    if b.state != BackupState::Complete {
        return Err(Error::Invalid(format!(
            "backup {backup} is {}: only complete backups can be read",
            b.state.as_str()
        )));
    }
    let extents = catalog.extents(backup)?;
    let snapshot = extents
        .first()
        .ok_or_else(|| Error::Invalid(format!("backup {backup} has no copies or sections")))?
        .position
        .parse::<Position>()?
        .snapshot();
    let mut names: Vec<String> = extents.iter().map(|e| e.target.clone()).collect();
    names.sort();
    names.dedup();
    let mut resources = Vec::new();
    for n in &names {
        resources.push(catalog.resource(n)?);
    }
    resources.sort_by_key(|t| (t.state() == State::NotUsable, t.errors));
    // Secure the targets for the read, so jobs do not pile onto them; a target that cannot
    // be secured (not usable, all slots busy) is still read — the data is only there.
    let guard = catalog
        .secure(
            0,
            resources.len(),
            &Constraints {
                targets: Some(names.clone()),
                lease: Duration::from_secs(3600),
                wait: Duration::ZERO,
            },
        )
        .map_err(|e| tracing::info!("reading backup {backup} without securing its targets: {e}"))
        .ok();
    let mut targets = Vec::new();
    for t in resources {
        targets.push((t.name.clone(), open(t.target_url()?)?));
    }
    Ok(BackupView {
        snapshot,
        targets,
        guard,
    })
}

/// What a heal did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HealReport {
    /// (target, sections added) for each target that lacked some.
    pub healed: Vec<(String, usize)>,
    pub packs_copied: usize,
    pub bytes_copied: u64,
    /// Targets that could not be healed, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Copy the sections each target of `backup` lacks from one that has them (module docs).
pub fn heal(
    catalog: &Catalog,
    backup: i64,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
    password: &[u8],
) -> Result<HealReport> {
    let b = catalog.backup(backup)?;
    let view = open_backup(catalog, backup, open)?;
    let union = view.union();
    let repo = Repository::open(Arc::clone(&union) as Arc<dyn Backend>, password)?;
    let extents = catalog.extents(backup)?;
    // The sections (seq → index file) and what each target holds.
    let mut sections: BTreeMap<i64, (String, &Extent)> = BTreeMap::new();
    let mut held: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    let mut medium: BTreeMap<&str, &str> = BTreeMap::new();
    let mut whole: BTreeSet<&str> = BTreeSet::new();
    for e in &extents {
        medium.insert(&e.target, &e.medium);
        match e.position.parse::<Position>()? {
            Position::Copy(_) => {
                whole.insert(&e.target);
            }
            Position::Section { index, .. } if !index.is_empty() => {
                sections.entry(e.seq).or_insert((index, e));
                held.entry(&e.target).or_default().insert(e.seq);
            }
            Position::Section { .. } => {}
        }
    }
    let snapshot_name = view.snapshot.to_hex();
    let mut report = HealReport::default();
    let mut added: Vec<Extent> = Vec::new();
    let mut whole_now: Vec<String> = Vec::new();
    for (name, target) in &view.targets {
        if whole.contains(name.as_str()) {
            continue; // a whole copy already
        }
        let lacking: Vec<(i64, &(String, &Extent))> = sections
            .iter()
            .filter(|(seq, _)| !held.get(name.as_str()).is_some_and(|h| h.contains(seq)))
            .map(|(s, v)| (*s, v))
            .collect();
        let r = (|| -> Result<usize> {
            // A shared lock on the target, as a backup takes: a prune there must not delete
            // packs copied here before the index file naming them is written.
            let member = repo.member(Arc::clone(target))?;
            let _lock = RepoLock::shared(&member)?;
            let mut have: HashSet<String> = target
                .list(FileKind::Pack)?
                .into_iter()
                .map(|f| f.name)
                .collect();
            for (seq, (index, e)) in &lacking {
                let file = repo.load_index_file(index)?;
                for (pack, _) in &file.packs {
                    let p = pack.to_hex();
                    if have.contains(&p) {
                        continue;
                    }
                    let bytes = union.get(FileKind::Pack, &p)?;
                    if Id::of_file(&bytes) != *pack {
                        return Err(kura_repo::Error::corrupt(
                            format!("pack {p}"),
                            "content does not match its name on the source target",
                        )
                        .into());
                    }
                    report.bytes_copied += bytes.len() as u64;
                    report.packs_copied += 1;
                    target.put(FileKind::Pack, &p, bytes.into())?;
                    have.insert(p);
                }
                let idx = union.get(FileKind::Index, index)?;
                target.put(FileKind::Index, index, idx.into())?;
                added.push(Extent {
                    target: name.clone(),
                    medium: medium
                        .get(name.as_str())
                        .copied()
                        .unwrap_or_default()
                        .to_string(),
                    seq: *seq,
                    ..(*e).clone()
                });
            }
            if !target.exists(FileKind::Snapshot, &snapshot_name)? {
                let snap = union.get(FileKind::Snapshot, &snapshot_name)?;
                target.put(FileKind::Snapshot, &snapshot_name, snap.into())?;
            }
            Ok(lacking.len())
        })();
        match r {
            Ok(n) => {
                if n > 0 {
                    report.healed.push((name.clone(), n));
                }
                if held.contains_key(name.as_str()) || n > 0 {
                    whole_now.push(name.clone());
                }
            }
            Err(e) => {
                // What was copied before the failure stays unclaimed: rows are added only
                // for sections whose index file was written.
                catalog.record_error(name, &format!("heal of backup {backup}: {e}"))?;
                report.failed.push((name.clone(), e.to_string()));
            }
        }
    }
    if added.is_empty() && whole_now.is_empty() {
        return Ok(report);
    }
    if !added.is_empty() {
        catalog.import_backup(
            &b.object,
            b.started,
            b.ended.unwrap_or(b.started),
            b.data_time,
            &added,
        )?;
    }
    // A target holding every section and the manifest holds a copy: its section rows become
    // one copy row, so from now on it is judged as any copy is (by its manifest).
    let (length, size) = sections.values().fold((0, 0), |(l, z), (_, e)| {
        (l.max(e.source_offset + e.source_length), z + e.size)
    });
    for name in &whole_now {
        let Some((_, first)) = sections.values().next() else {
            break;
        };
        catalog.sections_to_copy(
            backup,
            &Extent {
                stream: first.stream,
                seq: 0,
                source_offset: 0,
                source_length: length,
                target: name.clone(),
                medium: medium
                    .get(name.as_str())
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                position: Position::Copy(view.snapshot).to_string(),
                size,
            },
        )?;
    }
    // An updated record, listing every piece, on every target: the catalog can be rebuilt
    // from any of them. It keeps the original record's times.
    let all = catalog.extents(backup)?;
    let original = repo.catalog_records().ok().and_then(|rs| {
        rs.into_iter().map(|(_, r)| r).find(|r| {
            r.extents.iter().any(|e| {
                e.position
                    .parse::<Position>()
                    .is_ok_and(|p| p.snapshot() == view.snapshot)
            })
        })
    });
    let record = CatalogRecord {
        v: 1,
        object: b.object.clone(),
        started: original.as_ref().map_or(b.started, |r| r.started),
        ended: original
            .as_ref()
            .map_or(b.ended.unwrap_or(b.started), |r| r.ended),
        data_time: b.data_time,
        job: original.and_then(|r| r.job),
        extents: all.iter().map(crate::rebuild::to_record).collect(),
    };
    for (name, target) in &view.targets {
        // The updated record replaces the older ones (one record per backup per target).
        let written = repo
            .member(Arc::clone(target))
            .map_err(Error::from)
            .and_then(|m| crate::sync::rewrite_records(&m, view.snapshot, Some(&record)));
        if let Err(e) = written {
            tracing::warn!("catalog record on {name}: {e}");
        }
    }
    Ok(report)
}
