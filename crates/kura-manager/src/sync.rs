//! One truth between the catalog and the targets.
//!
//! The catalog database and the records on the targets (`kura_repo::catalog_record`) describe
//! the same backups, and both must describe only what the targets hold: a catalog row that
//! claims a copy a target no longer has makes `restore --backup` fail half-way, and a record
//! that claims it makes `catalog rebuild` bring the claim back. So every operation that
//! removes data from a target tells both:
//!
//! - `forget` / `prune` on one repository: [`reconcile_target`] afterwards drops the
//!   catalog's copies of every snapshot the target no longer holds (a backup left without a
//!   copy becomes `forgotten`) and rewrites the records of those backups on every target
//!   that holds part of them ([`sync_records`]). A section of a fail-over backup is a part
//!   without the manifest (the run could not write it there), so it is dropped only when no
//!   other target holding part of the backup has the manifest either.
//! - `kura backups forget N` ([`forget_backup`]): metadata first (seed 002 deletes the
//!   backup management information before the data) — the row is marked `forgetting`, the
//!   records go from every target — then the snapshot manifests, then the rows. A crash at
//!   any step leaves a `forgetting` row that `catalog verify --fix` finishes.
//!
//! Records are written before the old ones are deleted, so a crash leaves at worst two
//! records of one backup on a target, which a rebuild merges and `catalog verify` reports.

use std::collections::BTreeSet;
use std::sync::Arc;

use kura_backend::{Backend, ErrorKind, FileKind};
use kura_catalog::{Backup, BackupState, Catalog};
use kura_repo::Repository;
use kura_repo::catalog_record::CatalogRecord;
use kura_repo::id::Id;
use kura_repo::lock::RepoLock;
use kura_repo::prune::Sections;

use crate::position::Position;
use crate::{Error, Result};

/// Opens targets by URL (the caller's deadlines and credentials).
pub type Open<'a> = &'a dyn Fn(&str) -> Result<Arc<dyn Backend>>;

/// A catalog target opened as a repository of its group.
pub struct TargetRepo {
    pub name: String,
    pub repo: Repository,
}

/// The repositories of the targets, opened once per group: a member of a group already
/// opened needs no second key derivation.
pub struct Keyring<'p> {
    password: &'p [u8],
    opened: Vec<Repository>,
}

impl<'p> Keyring<'p> {
    pub fn new(password: &'p [u8]) -> Keyring<'p> {
        Keyring {
            password,
            opened: Vec::new(),
        }
    }

    /// Start from a repository the caller already opened.
    pub fn with(password: &'p [u8], repo: Repository) -> Keyring<'p> {
        Keyring {
            password,
            opened: vec![repo],
        }
    }

    /// `backend` as a repository: a member of a group already opened, else opened with the
    /// password.
    pub fn open(&mut self, backend: Arc<dyn Backend>) -> Result<Repository> {
        for r in &self.opened {
            match r.member(Arc::clone(&backend)) {
                Ok(m) => return Ok(m),
                Err(kura_repo::Error::NotAGroup(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let repo = Repository::open(backend, self.password)?;
        self.opened.push(repo.member(repo.backend_arc())?);
        Ok(repo)
    }
}

/// The URL of a catalog target.
pub fn target_url(catalog: &Catalog, name: &str) -> Result<String> {
    Ok(catalog.resource(name)?.target_url()?.to_string())
}

/// The snapshot a record (or a backup's extents) is about.
pub fn record_snapshot(r: &CatalogRecord) -> Option<Id> {
    r.extents
        .first()
        .and_then(|e| e.position.parse::<Position>().ok())
        .map(|p| p.snapshot())
}

/// The snapshot of a catalog backup (from its first copy or section).
pub fn backup_snapshot(catalog: &Catalog, backup: i64) -> Result<Option<Id>> {
    Ok(match catalog.extents(backup)?.first() {
        Some(e) => Some(e.position.parse::<Position>()?.snapshot()),
        None => None,
    })
}

/// The record the catalog's rows give for `b` (its job name taken from `job`).
pub fn record_of(catalog: &Catalog, b: &Backup, job: Option<String>) -> Result<CatalogRecord> {
    Ok(CatalogRecord {
        v: 1,
        object: b.object.clone(),
        started: b.started,
        ended: b.ended.unwrap_or(b.started),
        data_time: b.data_time,
        job,
        extents: catalog
            .extents(b.id)?
            .iter()
            .map(crate::rebuild::to_record)
            .collect(),
    })
}

/// Do a record and the catalog's record of the same backup say the same (the end time and
/// job name aside: the database keeps when the row was finished, the record the snapshot's
/// end)?
pub fn same_record(a: &CatalogRecord, b: &CatalogRecord) -> bool {
    let key = |r: &CatalogRecord| {
        let mut e: Vec<_> = r
            .extents
            .iter()
            .map(|e| {
                (
                    e.target.clone(),
                    e.seq,
                    e.position.clone(),
                    e.medium.clone(),
                )
            })
            .collect();
        e.sort();
        (r.object.clone(), r.started, r.data_time, e)
    };
    key(a) == key(b)
}

/// Make the records about `snapshot` on one target say `want` (or nothing): write `want`
/// unless an equal record is there, then delete the others. Returns whether anything changed.
pub fn rewrite_records(
    repo: &Repository,
    snapshot: Id,
    want: Option<&CatalogRecord>,
) -> Result<bool> {
    let mine: Vec<(Id, CatalogRecord)> = repo
        .catalog_records()?
        .into_iter()
        .filter(|(_, r)| record_snapshot(r) == Some(snapshot))
        .collect();
    let keep = want.and_then(|w| {
        mine.iter()
            .find(|(_, r)| same_record(r, w))
            .map(|(i, _)| *i)
    });
    if let (Some(w), None) = (want, keep) {
        repo.save_catalog_record(w)?;
    }
    let mut changed = want.is_some() && keep.is_none();
    for (id, _) in &mine {
        if Some(*id) == keep {
            continue;
        }
        match repo.backend().delete(FileKind::Catalog, &id.to_hex()) {
            Ok(()) => changed = true,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(changed)
}

/// The job name recorded with a backup on any of these repositories, if one says.
fn job_name(repos: &[TargetRepo], snapshot: Id) -> Option<String> {
    repos.iter().find_map(|t| {
        t.repo.catalog_records().ok().and_then(|rs| {
            rs.into_iter()
                .find(|(_, r)| record_snapshot(r) == Some(snapshot))
                .and_then(|(_, r)| r.job)
        })
    })
}

/// Bring the records of `backup` (about `snapshot`) on `targets` in line with the catalog:
/// each target holding part of it gets one record equal to the catalog's, every other one
/// none. Returns the targets that could not be written, with the reason.
pub fn sync_records(
    catalog: &Catalog,
    backup: Option<i64>,
    snapshot: Id,
    targets: &[TargetRepo],
) -> Result<Vec<(String, String)>> {
    let (want, holders): (Option<CatalogRecord>, BTreeSet<String>) = match backup {
        Some(b) => {
            let b = catalog.backup(b)?;
            let holders: BTreeSet<String> = catalog
                .extents(b.id)?
                .into_iter()
                .map(|e| e.target)
                .collect();
            let live = matches!(b.state, BackupState::Complete) && !holders.is_empty();
            let want = if live {
                Some(record_of(catalog, &b, job_name(targets, snapshot))?)
            } else {
                None
            };
            (want, holders)
        }
        None => (None, BTreeSet::new()),
    };
    let mut failed = Vec::new();
    for t in targets {
        let w = want.as_ref().filter(|_| holders.contains(&t.name));
        if let Err(e) = rewrite_records(&t.repo, snapshot, w) {
            failed.push((t.name.clone(), e.to_string()));
        }
    }
    Ok(failed)
}

/// The catalog targets whose URL names the same place as `location` (see
/// `kura_repo::backend::Target::same_place`); `same` compares two URLs.
pub fn targets_at(
    catalog: &Catalog,
    location: &str,
    same: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<String>> {
    Ok(catalog
        .resources()?
        .into_iter()
        .filter(|r| r.kind == kura_catalog::Kind::Target)
        .filter(|r| r.config.target().is_some_and(|t| same(&t.url, location)))
        .map(|r| r.name)
        .collect())
}

/// What a prune of the targets `names` (one repository, or members of one group opened
/// together) must know of the sectioned backups they hold part of: the index files of the
/// sections the catalog claims there, and the snapshots not held whole there
/// ([`kura_repo::prune::Sections`]).
pub fn sections_on(catalog: &Catalog, names: &[String]) -> Result<Sections> {
    let mut out = Sections::default();
    for b in catalog.backups(None)? {
        if !matches!(b.state, BackupState::Complete | BackupState::Running) {
            continue;
        }
        let extents = catalog.extents(b.id)?;
        let mut snapshot = None;
        let mut sectioned = false;
        let mut whole_here = false;
        for e in &extents {
            let pos = e.position.parse::<Position>()?;
            snapshot = Some(pos.snapshot());
            let here = names.contains(&e.target);
            match pos {
                Position::Section { index, .. } => {
                    sectioned = true;
                    if here && !index.is_empty() {
                        out.index_files.insert(index);
                    }
                }
                Position::Copy(_) => whole_here |= here,
            }
        }
        if let Some(s) = snapshot
            && sectioned
            && !whole_here
        {
            out.partial.insert(s);
        }
    }
    Ok(out)
}

/// What [`reconcile_target`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// (backup, snapshot) whose copy on the target was dropped from the catalog.
    pub dropped: Vec<(i64, Id)>,
    /// Backups left without any copy (now `forgotten`).
    pub forgotten: Vec<i64>,
    /// Targets whose records could not be brought in line, with the reason.
    pub records_failed: Vec<(String, String)>,
}

/// After data was removed from the repository `repo` on catalog target `name` (forget,
/// prune): drop the catalog's copies of every snapshot it no longer holds, and bring the
/// records of those backups in line on every target holding part of them (and on this one).
pub fn reconcile_target(
    catalog: &Catalog,
    name: &str,
    repo: &Repository,
    open: Open,
    password: &[u8],
) -> Result<Reconciled> {
    let held: BTreeSet<String> = repo
        .backend()
        .list(FileKind::Snapshot)?
        .into_iter()
        .map(|f| f.name)
        .collect();
    let mut gone: BTreeSet<(i64, Id)> = BTreeSet::new();
    for b in catalog.backups(None)? {
        if b.state == BackupState::Forgetting {
            continue;
        }
        for e in catalog.extents(b.id)? {
            if e.target != name {
                continue;
            }
            let pos = e.position.parse::<Position>()?;
            let s = pos.snapshot();
            if held.contains(&s.to_hex()) || gone.contains(&(b.id, s)) {
                continue;
            }
            // A section needs the manifest somewhere, not here: a fail-over run writes it
            // only to the targets still working at its end.
            if matches!(&pos, Position::Section { index, .. } if !index.is_empty())
                && manifest_elsewhere(catalog, b.id, name, s, open)
            {
                continue;
            }
            gone.insert((b.id, s));
        }
    }
    let mut out = Reconciled::default();
    // Records on this target about snapshots it no longer holds go in any case.
    for (_, r) in repo.catalog_records()? {
        if let Some(s) = record_snapshot(&r)
            && !held.contains(&s.to_hex())
        {
            rewrite_records(repo, s, None)?;
        }
    }
    let mut keys = Keyring::with(password, repo.member(repo.backend_arc())?);
    for (b, s) in gone {
        let others: BTreeSet<String> = catalog
            .extents(b)?
            .into_iter()
            .map(|e| e.target)
            .filter(|t| t != name)
            .collect();
        catalog.drop_copies(name, &s.to_hex(), None)?;
        out.dropped.push((b, s));
        if catalog.backup(b)?.state == BackupState::Forgotten {
            out.forgotten.push(b);
        }
        let mut repos = Vec::new();
        for t in others {
            match target_url(catalog, &t)
                .and_then(|u| open(&u))
                .and_then(|be| keys.open(be))
            {
                Ok(r) => repos.push(TargetRepo { name: t, repo: r }),
                Err(e) => out.records_failed.push((t, e.to_string())),
            }
        }
        out.records_failed
            .extend(sync_records(catalog, Some(b), s, &repos)?);
    }
    Ok(out)
}

/// Does a target other than `name` holding part of backup `b` hold snapshot `s`'s manifest?
/// A target that cannot be asked counts as holding it: nothing is dropped on a guess.
fn manifest_elsewhere(catalog: &Catalog, b: i64, name: &str, s: Id, open: Open) -> bool {
    let Ok(extents) = catalog.extents(b) else {
        return true;
    };
    let others: BTreeSet<String> = extents
        .into_iter()
        .map(|e| e.target)
        .filter(|t| t != name)
        .collect();
    others.iter().any(|t| {
        target_url(catalog, t)
            .and_then(|u| open(&u))
            .and_then(|be| Ok(be.exists(FileKind::Snapshot, &s.to_hex())?))
            .unwrap_or(true)
    })
}

/// The steps of [`forget_backup`], for crash tests: the hook is called after each with
/// its number (1: marked, 2: records gone, 3: snapshots gone; the rows go last).
pub type StepHook<'a> = &'a dyn Fn(u8);

/// What [`forget_backup`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forgot {
    pub backup: i64,
    pub snapshot: Option<Id>,
    /// Targets whose snapshot manifest was deleted.
    pub removed_from: Vec<String>,
    /// Targets that could not be reached or changed, with the reason (the row then stays
    /// `forgetting` for `catalog verify --fix` to finish).
    pub failed: Vec<(String, String)>,
}

/// Delete backup `backup` from the catalog and from every target holding part of it (see
/// the module docs for the order). Also finishes a forget interrupted before.
pub fn forget_backup(
    catalog: &Catalog,
    backup: i64,
    open: Open,
    password: &[u8],
    step: StepHook,
) -> Result<Forgot> {
    let b = catalog.backup(backup)?;
    let snapshot = backup_snapshot(catalog, backup)?;
    let holders: BTreeSet<String> = catalog
        .extents(backup)?
        .into_iter()
        .map(|e| e.target)
        .collect();
    let mut out = Forgot {
        backup,
        snapshot,
        ..Forgot::default()
    };
    if b.state == BackupState::Running {
        return Err(Error::Invalid(format!(
            "backup {backup} is still running; wait for its run to end"
        )));
    }
    catalog.mark_forgetting(backup)?;
    step(1);
    let Some(snapshot) = snapshot else {
        catalog.delete_backup(backup)?;
        return Ok(out);
    };
    let mut keys = Keyring::new(password);
    let mut repos = Vec::new();
    for t in &holders {
        match target_url(catalog, t)
            .and_then(|u| open(&u))
            .and_then(|be| keys.open(be))
        {
            Ok(r) => repos.push(TargetRepo {
                name: t.clone(),
                repo: r,
            }),
            Err(e) => out.failed.push((t.clone(), e.to_string())),
        }
    }
    // The records first: once they are gone, no rebuild brings the backup back.
    for t in &repos {
        if let Err(e) = rewrite_records(&t.repo, snapshot, None) {
            out.failed.push((t.name.clone(), e.to_string()));
        }
    }
    step(2);
    for t in &repos {
        let removed = RepoLock::exclusive(&t.repo)
            .map_err(Error::from)
            .and_then(|lock| {
                let r = kura_repo::forget::remove_snapshots(&t.repo, &lock, &[snapshot]);
                drop(lock);
                r.map_err(Error::from)
            });
        match removed {
            Ok(_) => out.removed_from.push(t.name.clone()),
            Err(e) => out.failed.push((t.name.clone(), e.to_string())),
        }
    }
    step(3);
    if out.failed.is_empty() {
        catalog.delete_backup(backup)?;
    }
    Ok(out)
}
