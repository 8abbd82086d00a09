//! `kura check`: is everything the snapshots need present and intact?
//!
//! Without `--read-data` the check is structural and cheap: every index file decrypts, every
//! pack the index names exists with the size the index implies, every snapshot decrypts, every
//! tree (and image fixed index) it reaches decodes, and every data blob a file needs is
//! indexed. With `--read-data` every pack is read whole: its name must be the BLAKE3 of its
//! bytes, its header must match the index, and every blob must decrypt and hash to its id.
//!
//! Damage is reported the way a user needs it: which snapshots and which files are affected,
//! not only which pack is bad. Packs no index lists (left by an interrupted backup) are
//! warnings: they are harmless and the next backup adopts them.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kura_backend::{ErrorKind, FileKind};
use serde::Serialize;

use crate::backup::CancelToken;
use crate::crypto::OVERHEAD;
use crate::error::{Error, Result};
use crate::format::{BlobType, decode_blob};
use crate::id::Id;
use crate::lock::{RepoLock, Shared};
use crate::pack::{HEADER_ENTRY_LEN, TRAILER_LEN, header_from_pack_bytes};
use crate::progress::Progress;
use crate::repo::{IndexedRepo, Repository};
use crate::restore::load_fixed_index;
use crate::snapshot::Content;
use crate::tree::{ChunkRef, NodeKind};

/// Options of `kura check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Read and verify every blob of every pack.
    pub read_data: bool,
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            read_data: false,
            threads: 4,
        }
    }
}

/// A snapshot entry that cannot be restored completely.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Affected {
    pub snapshot: String,
    pub path: String,
    pub problem: String,
}

/// What `check` found. `is_ok()` decides the exit code.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub blobs: usize,
    pub trees_checked: usize,
    pub packs_read: usize,
    /// Damage to repository files (packs, index files, snapshots).
    pub errors: Vec<String>,
    /// Harmless findings (orphan packs).
    pub warnings: Vec<String>,
    /// Snapshot entries affected by the damage.
    pub affected: Vec<Affected>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty() && self.affected.is_empty()
    }
}

/// How often [`check_repository`] looks again when it found damage while the repository
/// changed under it.
const CHECK_ATTEMPTS: usize = 3;

/// The names of the files whose change can make a finding out of date.
fn fingerprint(repo: &Repository) -> Result<Vec<(FileKind, String)>> {
    let mut out = Vec::new();
    for kind in [FileKind::Snapshot, FileKind::Index, FileKind::Condemned] {
        let mut names: Vec<String> = repo
            .backend()
            .list(kind)?
            .into_iter()
            .map(|f| f.name)
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|n| (kind, n)));
    }
    Ok(out)
}

/// Check a repository while backups, prunes and forgets may run beside it.
///
/// Snapshots are listed *before* the index is loaded (a backup writes its index files before
/// its snapshot, so every listed snapshot's blobs are in the index loaded after). A prune
/// may still condemn, repack and delete packs meanwhile; so when damage is found and the
/// snapshot, index or condemned files changed while checking, the whole check runs again on
/// the new state (up to [`CHECK_ATTEMPTS`] times). Real damage does not go away on a second
/// look; a race does.
pub fn check_repository(
    repo: Repository,
    _lock: &RepoLock<Shared>,
    opts: &CheckOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<CheckReport> {
    let mut repo = repo;
    let mut attempt = 1;
    loop {
        let before = fingerprint(&repo)?;
        let snapshots: Vec<String> = repo
            .backend()
            .list(FileKind::Snapshot)?
            .into_iter()
            .map(|f| f.name)
            .collect();
        let mut index_errors = Vec::new();
        let indexed = repo.load_index_reporting(&mut index_errors)?;
        let report = check_inner(&indexed, snapshots, index_errors, opts, progress, cancel)?;
        repo = indexed.into_repository();
        if report.is_ok() || attempt >= CHECK_ATTEMPTS || fingerprint(&repo)? == before {
            return Ok(report);
        }
        tracing::info!("the repository changed while it was checked; checking again");
        attempt += 1;
    }
}

/// Check a repository. `index_errors` are problems met while loading the index (see
/// [`crate::Repository::load_index_reporting`]). Prefer [`check_repository`], which orders
/// the listing and the index load for concurrent writers and looks again after a race.
pub fn check(
    repo: &IndexedRepo,
    _lock: &RepoLock<Shared>,
    index_errors: Vec<String>,
    opts: &CheckOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<CheckReport> {
    let snapshots = repo
        .backend()
        .list(FileKind::Snapshot)?
        .into_iter()
        .map(|f| f.name)
        .collect();
    check_inner(repo, snapshots, index_errors, opts, progress, cancel)
}

fn check_inner(
    repo: &IndexedRepo,
    snapshots: Vec<String>,
    index_errors: Vec<String>,
    opts: &CheckOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<CheckReport> {
    let mut report = CheckReport {
        errors: index_errors,
        blobs: repo.index().len(),
        ..Default::default()
    };

    // 1. Packs: present, of the size the index implies.
    let listed: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect();
    let mut per_pack: HashMap<Id, (u64, usize)> = HashMap::new();
    for loc in repo.index().iter() {
        let e = per_pack.entry(loc.pack).or_default();
        e.0 = e.0.max(loc.offset as u64 + loc.length as u64);
        e.1 += 1;
    }
    report.packs = per_pack.len();
    // Copies (blob, pack) known bad, with the reason; and packs none of whose blobs can be
    // trusted.
    let mut bad_copies: HashMap<(Id, Id), String> = HashMap::new();
    let mut lost_packs: HashMap<Id, String> = HashMap::new();
    let mut missing: HashSet<Id> = HashSet::new();
    for (pack, (data_end, count)) in &per_pack {
        let expected = data_end + (OVERHEAD + 4 + count * HEADER_ENTRY_LEN + TRAILER_LEN) as u64;
        match listed.get(&pack.to_hex()) {
            None if repo.condemned().contains(pack) => {
                // Deleted by a prune (or being deleted): damage only if a snapshot needs a
                // blob it alone held, which the snapshot walk reports.
                let why = format!("condemned pack {} is already deleted", pack.short());
                report.warnings.push(why.clone());
                lost_packs.insert(*pack, why);
                missing.insert(*pack);
            }
            None => {
                let why = format!("pack {} is missing", pack.short());
                report.errors.push(why.clone());
                lost_packs.insert(*pack, why);
                missing.insert(*pack);
            }
            Some(&size) if size != expected => {
                let why = format!(
                    "pack {} has {size} bytes, the index expects {expected}",
                    pack.short()
                );
                report.errors.push(why.clone());
                if !opts.read_data {
                    // Without reading it we cannot tell which blobs survived.
                    lost_packs.insert(*pack, why);
                }
            }
            Some(_) => {}
        }
    }
    let indexed: HashSet<String> = per_pack.keys().map(|p| p.to_hex()).collect();
    let orphans = listed
        .keys()
        .filter(|n| !indexed.contains(*n))
        .filter(|n| {
            n.parse::<Id>()
                .is_ok_and(|id| !repo.condemned().contains(&id))
        })
        .count();
    if orphans > 0 {
        report.warnings.push(format!(
            "{orphans} pack(s) are not in any index (left by an interrupted backup, or being \
             written by a running one; the next backup adopts them)"
        ));
    }
    let condemned = repo.condemned().packs.len();
    if condemned > 0 {
        report.warnings.push(format!(
            "{condemned} pack(s) are condemned (a later prune deletes them, or recovers those \
             a snapshot needs)"
        ));
    }

    // 2. With --read-data: every byte of every indexed pack.
    if opts.read_data {
        let packs: Vec<Id> = per_pack
            .keys()
            .filter(|p| !missing.contains(p))
            .copied()
            .collect();
        progress.start("check --read-data", None);
        progress.add_total(
            packs
                .iter()
                .map(|p| listed.get(&p.to_hex()).copied().unwrap_or(0))
                .sum(),
            packs.len() as u64,
        );
        type Found = (Vec<String>, HashMap<(Id, Id), String>);
        let found: Mutex<Found> = Mutex::new(Default::default());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..opts.threads.max(1) {
                s.spawn(|| {
                    while !cancel.is_cancelled() {
                        let Some(pack) = packs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return;
                        };
                        let (pack_err, blob_errs) = read_pack(repo, pack);
                        let size = listed.get(&pack.to_hex()).copied().unwrap_or(0);
                        progress.advance(size, 1);
                        if let Ok(mut f) = found.lock() {
                            f.0.extend(pack_err);
                            f.1.extend(blob_errs.into_iter().map(|(id, why)| ((id, *pack), why)));
                        }
                    }
                });
            }
        });
        progress.finish();
        cancel.check()?;
        report.packs_read = packs.len();
        let (mut pack_errs, blob_errs) = found.into_inner().unwrap_or_default();
        pack_errs.sort();
        report.errors.extend(pack_errs);
        bad_copies.extend(blob_errs);
    }

    // A blob is lost when every copy of it is bad.
    let mut bad: HashMap<Id, String> = HashMap::new();
    for loc in repo.index().iter() {
        let why = lost_packs
            .get(&loc.pack)
            .or_else(|| bad_copies.get(&(loc.id, loc.pack)));
        let Some(why) = why else { continue };
        let all_bad =
            repo.index().get_all(&loc.id).iter().all(|l| {
                lost_packs.contains_key(&l.pack) || bad_copies.contains_key(&(l.id, l.pack))
            });
        if all_bad {
            bad.entry(loc.id).or_insert_with(|| why.clone());
        }
    }
    // Blobs only already-deleted condemned packs held are no damage by themselves (a prune
    // was interrupted before dropping its old condemned file); a snapshot needing one is,
    // and the walk below reports it.
    let damaged_blobs = bad
        .keys()
        .filter(|id| {
            !repo
                .index()
                .get_all(id)
                .iter()
                .all(|l| missing.contains(&l.pack) && repo.condemned().contains(&l.pack))
        })
        .count();
    if damaged_blobs > 0 {
        report
            .errors
            .push(format!("{damaged_blobs} blob(s) are lost or damaged"));
    }

    // 3. Snapshots and everything they reach.
    let mut clean_trees: HashSet<Id> = HashSet::new();
    for name in &snapshots {
        cancel.check()?;
        let snap = match repo.load_snapshot_file(name) {
            Ok(s) => s,
            // Forgotten since it was listed.
            Err(Error::Backend(e)) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) if e.is_data_damage() => {
                report.snapshots += 1;
                report
                    .errors
                    .push(format!("snapshot {}: {e}", &name[..8.min(name.len())]));
                continue;
            }
            Err(e) => return Err(e),
        };
        report.snapshots += 1;
        let short = snap.id.short();
        match &snap.snapshot.content {
            Content::Tree { root } => {
                let mut walker = TreeCheck {
                    repo,
                    bad: &bad,
                    clean: &mut clean_trees,
                    snapshot: &short,
                    affected: &mut report.affected,
                    trees: 0,
                };
                walker.walk(root, Path::new("/"))?;
                report.trees_checked += walker.trees;
            }
            Content::Image(info) => {
                let src = String::from_utf8_lossy(&info.source).into_owned();
                match load_fixed_index(repo, info) {
                    Ok(ids) => {
                        for (i, id) in ids.iter().enumerate() {
                            if let Some(p) = blob_problem(repo, &bad, id) {
                                report.affected.push(Affected {
                                    snapshot: short.clone(),
                                    path: format!(
                                        "{src} (bytes {}+{})",
                                        i as u64 * info.chunk_size as u64,
                                        info.chunk_size
                                    ),
                                    problem: p,
                                });
                            }
                        }
                    }
                    Err(e) => report.affected.push(Affected {
                        snapshot: short.clone(),
                        path: src,
                        problem: format!("fixed index unreadable: {e}"),
                    }),
                }
            }
        }
    }
    report.affected.sort();
    Ok(report)
}

fn blob_problem(repo: &IndexedRepo, bad: &HashMap<Id, String>, id: &Id) -> Option<String> {
    if id.is_zero() {
        return None;
    }
    if let Some(why) = bad.get(id) {
        return Some(format!("blob {}: {why}", id.short()));
    }
    if !repo
        .index()
        .get_all(id)
        .iter()
        .any(|l| l.ty == BlobType::Data)
    {
        return Some(format!("blob {} is in no index", id.short()));
    }
    None
}

struct TreeCheck<'a> {
    repo: &'a IndexedRepo,
    bad: &'a HashMap<Id, String>,
    /// Trees already found free of damage (shared subtrees are checked once).
    clean: &'a mut HashSet<Id>,
    snapshot: &'a str,
    affected: &'a mut Vec<Affected>,
    trees: usize,
}

impl TreeCheck<'_> {
    /// Returns whether the tree is clean.
    fn walk(&mut self, id: &Id, path: &Path) -> Result<bool> {
        if self.clean.contains(id) {
            return Ok(true);
        }
        self.trees += 1;
        let tree = match self.repo.load_tree(id) {
            Ok(t) => t,
            Err(e)
                if e.is_data_damage()
                    || matches!(&e, Error::Backend(b) if b.kind() == ErrorKind::NotFound) =>
            {
                self.affected.push(Affected {
                    snapshot: self.snapshot.to_string(),
                    path: path.display().to_string(),
                    problem: format!("directory unreadable: {e}"),
                });
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut clean = true;
        for node in &tree.nodes {
            let p: PathBuf = path.join(std::ffi::OsStr::from_bytes(&node.name));
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = &node.subtree {
                        clean &= self.walk(sub, &p)?;
                    }
                }
                NodeKind::File => {
                    let problem = node.content.iter().flatten().find_map(|c| match c {
                        ChunkRef::Blob(id) => blob_problem(self.repo, self.bad, id),
                        ChunkRef::Zero(_) => None,
                    });
                    if let Some(problem) = problem {
                        clean = false;
                        self.affected.push(Affected {
                            snapshot: self.snapshot.to_string(),
                            path: p.display().to_string(),
                            problem,
                        });
                    }
                }
                _ => {}
            }
        }
        if clean {
            self.clean.insert(*id);
        }
        Ok(clean)
    }
}

/// Read one pack whole and verify it. Returns a pack-level error, and per-blob errors.
fn read_pack(repo: &IndexedRepo, pack: &Id) -> (Option<String>, Vec<(Id, String)>) {
    // A pack that cannot be read at all: every blob in it is bad.
    let all_bad = |why: String| -> Vec<(Id, String)> {
        repo.index()
            .iter()
            .filter(|l| l.pack == *pack)
            .map(|l| (l.id, why.clone()))
            .collect()
    };
    let name = pack.to_hex();
    let bytes = match repo.backend().get(FileKind::Pack, &name) {
        Ok(b) => b,
        Err(e) => {
            let why = format!("pack {}: {e}", pack.short());
            return (Some(why.clone()), all_bad(why));
        }
    };
    let mut pack_err = None;
    if Id::of_file(&bytes) != *pack {
        pack_err = Some(format!(
            "pack {}: contents do not match its name (bit rot or tampering)",
            pack.short()
        ));
    }
    let what = format!("pack {}", pack.short());
    let mut blob_errs = Vec::new();
    match header_from_pack_bytes(repo.key(), &bytes, &what) {
        Ok(header) => {
            let indexed: HashSet<(Id, u32)> = repo
                .index()
                .iter()
                .filter(|l| l.pack == *pack)
                .map(|l| (l.id, l.offset))
                .collect();
            let in_header: HashSet<(Id, u32)> = header.iter().map(|b| (b.id, b.offset)).collect();
            if indexed != in_header {
                pack_err.get_or_insert(format!("{what}: header does not match the index"));
            }
            for b in header {
                let end = b.offset as usize + b.length as usize;
                let stored = bytes[b.offset as usize..end].to_vec();
                if let Err(e) = decode_blob(repo.key(), b.ty, &b.id, stored, b.raw_length) {
                    blob_errs.push((b.id, format!("in {what}: {e}")));
                }
            }
        }
        Err(e) => {
            pack_err.get_or_insert(format!("{what}: {e}"));
            // Without a header, trust the index's offsets to find what is still good.
            for loc in repo.index().iter().filter(|l| l.pack == *pack) {
                let end = loc.offset as usize + loc.length as usize;
                let ok = bytes.get(loc.offset as usize..end).is_some_and(|stored| {
                    decode_blob(repo.key(), loc.ty, &loc.id, stored.to_vec(), loc.raw_length)
                        .is_ok()
                });
                if !ok {
                    blob_errs.push((loc.id, format!("in {what}: unreadable")));
                }
            }
        }
    }
    (pack_err, blob_errs)
}
