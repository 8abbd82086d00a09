//! `kura repair index` and `kura repair snapshots`: make a damaged repository whole again,
//! losing only what is actually gone.
//!
//! # Why two repairs
//! Index files are derived data — every pack carries its own header — so a damaged or lost
//! index file costs nothing once the index is rebuilt from the packs ([`repair_index`]).
//! Snapshots are not derived: when blobs a snapshot references are gone (a damaged pack, a
//! deleted file), the snapshot can only be replaced by one that references what is left
//! ([`repair_snapshots`]), as restic's `repair snapshots` does: a file missing data is removed,
//! a directory whose tree cannot be read becomes empty, and the new snapshot carries the tag
//! `repaired` and the original's id.
//!
//! # Crash safety
//! Both only add before they remove. `repair index` writes every new index file (each `put`
//! is atomic) before it deletes any old one; a crash in between leaves both, and readers
//! tolerate a pack listed twice. `repair snapshots` writes the new trees' pack, then the index
//! file listing it, then the new snapshot, and only then (with `--forget`) deletes the
//! original; a crash leaves at worst an unreferenced pack (prune removes it) or both
//! snapshots. Both run under the exclusive lock.

use std::collections::{HashMap, HashSet};

use kura_backend::{ErrorKind, FileKind};
use serde::Serialize;

use crate::backup::CancelToken;
use crate::error::{Error, Result};
use crate::format::{BlobEncoder, BlobType};
use crate::id::Id;
use crate::index::IndexFile;
use crate::lock::{Exclusive, RepoLock};
use crate::pack::{PackBlob, PackWriter};
use crate::progress::Progress;
use crate::repo::{IndexedRepo, Repository};
use crate::snapshot::{Content, Snapshot};
use crate::tree::{ChunkRef, NodeKind, Tree};

/// Packs per index file written by `repair index`.
const PACKS_PER_INDEX_FILE: usize = 4096;

/// Options of `kura repair index`.
#[derive(Debug, Clone, Default)]
pub struct RepairIndexOptions {
    /// Read every pack's header, even of packs an intact index file already describes.
    pub read_all_packs: bool,
    /// Report what would change; write and delete nothing.
    pub dry_run: bool,
}

/// What `repair index` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairIndexReport {
    pub dry_run: bool,
    /// Packs in the repository.
    pub packs: usize,
    /// Packs whose header was read.
    pub headers_read: usize,
    /// Packs in the new index.
    pub packs_indexed: usize,
    /// Blobs in the new index.
    pub blobs_indexed: usize,
    /// Packs no intact index file described and whose header cannot be read: their blobs
    /// are not indexed (name, reason).
    pub packs_unreadable: Vec<(String, String)>,
    /// Packs the old index listed that no longer exist.
    pub packs_missing: usize,
    /// Packs left out because a prune condemned them.
    pub packs_condemned: usize,
    /// Old index files that could not be read.
    pub index_files_damaged: Vec<String>,
    pub index_files_written: usize,
    pub index_files_deleted: usize,
}

/// Rebuild the index from the packs: every pack an intact index file describes keeps that
/// description (or has its header read with `read_all_packs`), every other pack has its
/// header read; new index files are written for all packs that could be described, then every
/// old index file is deleted.
pub fn repair_index(
    repo: &Repository,
    _lock: &RepoLock<Exclusive>,
    opts: &RepairIndexOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RepairIndexReport> {
    let mut report = RepairIndexReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let backend = repo.backend();
    // What the intact index files say, pack by pack.
    let old_files = backend.list(FileKind::Index)?;
    let mut known: HashMap<Id, Vec<PackBlob>> = HashMap::new();
    for f in &old_files {
        cancel.check()?;
        match repo.load_index_file(&f.name) {
            Ok(file) => {
                for (pack, blobs) in file.packs {
                    known.entry(pack).or_insert(blobs);
                }
            }
            Err(e) if e.is_data_damage() || matches!(e, Error::Unsupported(_)) => {
                tracing::warn!("index file {}: {e}", f.name);
                report.index_files_damaged.push(f.name.clone());
            }
            Err(e) => return Err(e),
        }
    }
    // Packs a prune condemned stay out of the index when their condemned record describes
    // them (readers find their blobs there; the next prune deletes or recovers them). A pack
    // condemned as an orphan has no blob list in its record: a backup running beside the
    // prune may since have indexed it and named its blobs in a snapshot, so it is described
    // here like any other pack, or nothing would locate those blobs.
    let condemned = crate::condemned::load(repo)?;
    let packs = backend.list(FileKind::Pack)?;
    report.packs = packs.len();
    progress.start("repair index: reading pack headers", None);
    let mut new_index = IndexFile::default();
    let mut present: HashSet<Id> = HashSet::new();
    for f in &packs {
        cancel.check()?;
        let Ok(id) = f.name.parse::<Id>() else {
            continue;
        };
        present.insert(id);
        if condemned
            .packs
            .get(&id)
            .is_some_and(|c| !c.blobs.is_empty())
        {
            report.packs_condemned += 1;
            continue;
        }
        let old = known.get(&id);
        let blobs = if old.is_none() || opts.read_all_packs {
            report.headers_read += 1;
            match crate::pack::read_header(backend, repo.key(), &f.name, f.size) {
                Ok(blobs) => Some(blobs),
                Err(e) if e.is_data_damage() => {
                    // An intact old description still locates the blobs that are intact;
                    // restores read them one by one.
                    if old.is_none() {
                        report
                            .packs_unreadable
                            .push((f.name.clone(), e.to_string()));
                    } else {
                        tracing::warn!("pack {}: header unreadable ({e}); kept as indexed", f.name);
                    }
                    old.cloned()
                }
                Err(e) => return Err(e),
            }
        } else {
            old.cloned()
        };
        progress.advance(0, 1);
        if let Some(blobs) = blobs {
            report.blobs_indexed += blobs.len();
            new_index.packs.push((id, blobs));
        }
    }
    progress.finish();
    report.packs_missing = known.keys().filter(|p| !present.contains(p)).count();
    report.packs_indexed = new_index.packs.len();
    if opts.dry_run {
        return Ok(report);
    }
    // 1. New index files, all durable before 2. any old one is deleted.
    let mut written = HashSet::new();
    for chunk in new_index.packs.chunks(PACKS_PER_INDEX_FILE) {
        cancel.check()?;
        let id = repo.save_index_file(&IndexFile {
            packs: chunk.to_vec(),
        })?;
        written.insert(id.to_hex());
        report.index_files_written += 1;
    }
    for f in &old_files {
        // A new file may have the same content (and so the same name) as an old one.
        if written.contains(&f.name) {
            continue;
        }
        match backend.delete(FileKind::Index, &f.name) {
            Ok(()) => report.index_files_deleted += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// Options of `kura repair snapshots`.
#[derive(Debug, Clone, Default)]
pub struct RepairSnapshotsOptions {
    /// Only these snapshots (ids or prefixes); all when empty.
    pub snapshots: Vec<String>,
    /// Remove each original once its repaired snapshot is written.
    pub forget: bool,
    /// Report what would change; write nothing.
    pub dry_run: bool,
}

/// The outcome for one snapshot that needed repair.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairedSnapshot {
    /// The damaged snapshot.
    pub original: String,
    /// The snapshot written in its place (`None` in a dry run, or when it cannot be repaired).
    pub repaired: Option<String>,
    /// Whether the original was removed (`--forget`).
    pub forgotten: bool,
    /// Files removed (their data is gone), by path.
    pub files_removed: Vec<String>,
    /// Directories emptied (their tree is gone), by path.
    pub dirs_emptied: Vec<String>,
    /// Why the snapshot could not be repaired at all, if so.
    pub error: Option<String>,
}

/// What `repair snapshots` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairSnapshotsReport {
    pub dry_run: bool,
    /// Snapshots examined.
    pub snapshots: usize,
    /// Snapshots that needed repair.
    pub damaged: Vec<RepairedSnapshot>,
}

impl RepairSnapshotsReport {
    /// Snapshots that could not be repaired.
    pub fn unrepairable(&self) -> usize {
        self.damaged.iter().filter(|d| d.error.is_some()).count()
    }
}

/// Find snapshots whose trees or data are missing and write repaired ones (see the module
/// docs). A data blob counts as missing when no index lists it in a pack that exists and is
/// long enough to hold it (a deleted or truncated pack); a tree when it cannot be read.
/// Damage *inside* a pack of the right size (a flipped byte) is found by `check --read-data`,
/// not here: reading every data blob would make repair as slow as a full restore.
pub fn repair_snapshots(
    repo: &IndexedRepo,
    _lock: &RepoLock<Exclusive>,
    opts: &RepairSnapshotsOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RepairSnapshotsReport> {
    let mut report = RepairSnapshotsReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut entries = Vec::new();
    if opts.snapshots.is_empty() {
        let (ok, damaged) = repo.list_snapshots_reporting()?;
        entries = ok;
        for d in damaged {
            report.damaged.push(RepairedSnapshot {
                original: d.name.clone(),
                error: Some(format!(
                    "the snapshot file itself is unreadable ({}); remove it with `kura forget {}`",
                    d.error, d.name
                )),
                ..Default::default()
            });
        }
    } else {
        for s in &opts.snapshots {
            let id = repo.resolve_snapshot_id(s)?;
            match repo.find_snapshot(&id.to_hex()) {
                Ok(e) => entries.push(e),
                Err(e) if e.is_data_damage() || matches!(e, Error::Unsupported(_)) => {
                    report.damaged.push(RepairedSnapshot {
                        original: id.to_hex(),
                        error: Some(format!(
                            "the snapshot file itself is unreadable ({e}); remove it with \
                             `kura forget {}`",
                            id.to_hex()
                        )),
                        ..Default::default()
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }
    report.snapshots = entries.len() + report.damaged.len();
    progress.start("repair snapshots", None);
    let mut pack_sizes = HashMap::new();
    for f in repo.backend().list(FileKind::Pack)? {
        if let Ok(id) = f.name.parse::<Id>() {
            pack_sizes.insert(id, f.size);
        }
    }
    let mut writer = TreeWriter::new(repo, opts.dry_run, pack_sizes);
    for entry in entries {
        cancel.check()?;
        progress.advance(0, 1);
        let root = match &entry.snapshot.content {
            Content::Tree { root } => *root,
            Content::Image(info) => {
                let missing = info
                    .pieces
                    .iter()
                    .any(|p| repo.read_blob(BlobType::Tree, p).is_err());
                if missing {
                    report.damaged.push(RepairedSnapshot {
                        original: entry.id.to_hex(),
                        error: Some(
                            "image snapshot with a damaged fixed index: not repairable; \
                             restore what is intact, then forget it"
                                .into(),
                        ),
                        ..Default::default()
                    });
                }
                continue;
            }
        };
        let mut out = RepairedSnapshot {
            original: entry.id.to_hex(),
            ..Default::default()
        };
        let new_root = writer.rewrite(root, "", &mut out, cancel)?;
        let new_root = match new_root {
            Some(r) => r,
            None => {
                // The root tree itself is gone: an empty snapshot stands in for it.
                out.dirs_emptied.push("/".into());
                writer.save(&Tree::new(Vec::new()))?
            }
        };
        if out.files_removed.is_empty() && out.dirs_emptied.is_empty() {
            continue;
        }
        for f in &out.files_removed {
            progress.warn(&format!("snapshot {}: removed {f}", entry.id.short()));
        }
        for d in &out.dirs_emptied {
            progress.warn(&format!("snapshot {}: emptied {d}", entry.id.short()));
        }
        if !opts.dry_run {
            writer.flush()?;
            let mut snap: Snapshot = entry.snapshot.clone();
            snap.content = Content::Tree { root: new_root };
            if !snap.tags.iter().any(|t| t == "repaired") {
                snap.tags.push("repaired".into());
            }
            snap.original = Some(entry.id);
            let id = repo.save_snapshot(&snap)?;
            out.repaired = Some(id.to_hex());
            if opts.forget {
                match repo
                    .backend()
                    .delete(FileKind::Snapshot, &entry.id.to_hex())
                {
                    Ok(()) => out.forgotten = true,
                    Err(e) if e.kind() == ErrorKind::NotFound => out.forgotten = true,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        report.damaged.push(out);
    }
    progress.finish();
    Ok(report)
}

/// Rewrites trees bottom-up and stores the changed ones in a new pack.
struct TreeWriter<'a> {
    repo: &'a IndexedRepo,
    dry_run: bool,
    /// Rewritten tree ids by original id (`None`: unchanged), so shared subtrees are
    /// rewritten once.
    done: HashMap<Id, Option<Id>>,
    /// Problems found under each already rewritten tree, replayed when it is met again.
    problems: HashMap<Id, (Vec<String>, Vec<String>)>,
    pack: Option<PackWriter>,
    stored: HashSet<Id>,
    /// Size of every pack in the repository.
    pack_sizes: HashMap<Id, u64>,
}

impl<'a> TreeWriter<'a> {
    fn new(repo: &'a IndexedRepo, dry_run: bool, pack_sizes: HashMap<Id, u64>) -> Self {
        TreeWriter {
            repo,
            dry_run,
            pack_sizes,
            done: HashMap::new(),
            problems: HashMap::new(),
            pack: None,
            stored: HashSet::new(),
        }
    }

    /// The repaired version of tree `id` at `path`: `Ok(None)` when the tree itself cannot be
    /// read, otherwise its (possibly new) id.
    fn rewrite(
        &mut self,
        id: Id,
        path: &str,
        out: &mut RepairedSnapshot,
        cancel: &CancelToken,
    ) -> Result<Option<Id>> {
        cancel.check()?;
        if let Some(r) = self.done.get(&id) {
            if let Some((files, dirs)) = self.problems.get(&id) {
                out.files_removed
                    .extend(files.iter().map(|f| format!("{path}{f}")));
                out.dirs_emptied
                    .extend(dirs.iter().map(|d| format!("{path}{d}")));
            }
            return Ok(Some(r.unwrap_or(id)));
        }
        let tree = match self.repo.load_tree(&id) {
            Ok(t) => t,
            Err(e) if e.is_data_damage() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut local = RepairedSnapshot::default();
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        let mut changed = false;
        for mut node in tree.nodes {
            let name = format!("/{}", node.name_lossy());
            match node.kind {
                NodeKind::File => {
                    let missing = node.content.iter().flatten().any(|c| match c {
                        ChunkRef::Blob(b) => !self.stored_somewhere(BlobType::Data, b),
                        ChunkRef::Zero(_) => false,
                    });
                    if missing {
                        local.files_removed.push(name);
                        changed = true;
                        continue;
                    }
                }
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        let mut inner = RepairedSnapshot::default();
                        let new = self.rewrite(sub, "", &mut inner, cancel)?;
                        local
                            .files_removed
                            .extend(inner.files_removed.iter().map(|f| format!("{name}{f}")));
                        local
                            .dirs_emptied
                            .extend(inner.dirs_emptied.iter().map(|d| format!("{name}{d}")));
                        let new = match new {
                            Some(n) => n,
                            None => {
                                local.dirs_emptied.push(name.clone());
                                self.save(&Tree::new(Vec::new()))?
                            }
                        };
                        if new != sub {
                            node.subtree = Some(new);
                            changed = true;
                        }
                    }
                }
                _ => {}
            }
            nodes.push(node);
        }
        let new = if changed {
            Some(self.save(&Tree::new(nodes))?)
        } else {
            None
        };
        out.files_removed
            .extend(local.files_removed.iter().map(|f| format!("{path}{f}")));
        out.dirs_emptied
            .extend(local.dirs_emptied.iter().map(|d| format!("{path}{d}")));
        if changed {
            self.problems
                .insert(id, (local.files_removed, local.dirs_emptied));
        }
        self.done.insert(id, new);
        Ok(Some(new.unwrap_or(id)))
    }

    /// Whether some index entry of blob `id` lies inside a pack that exists.
    fn stored_somewhere(&self, ty: BlobType, id: &Id) -> bool {
        self.repo.index().get_all(id).iter().any(|l| {
            l.ty == ty
                && self
                    .pack_sizes
                    .get(&l.pack)
                    .is_some_and(|&size| l.offset as u64 + l.length as u64 <= size)
        })
    }

    /// Store a tree blob (unless an existing pack or this run already has it); returns its
    /// id. An index entry alone is not enough: the pack it names may be the damage being
    /// repaired (the empty tree that stands in for lost directories is often in it).
    fn save(&mut self, tree: &Tree) -> Result<Id> {
        let bytes = tree.encode()?;
        let key = self.repo.key();
        let id = key.chunk_id(&bytes);
        if self.dry_run || self.stored_somewhere(BlobType::Tree, &id) || !self.stored.insert(id) {
            return Ok(id);
        }
        let encoded = BlobEncoder::new(self.repo.config().compression)?.encode(
            key,
            BlobType::Tree,
            &id,
            &bytes,
        )?;
        let raw = u32::try_from(bytes.len())
            .map_err(|_| Error::InvalidInput("tree exceeds 4 GiB".into()))?;
        self.pack
            .get_or_insert_with(|| PackWriter::new(1024 * 1024))
            .add(BlobType::Tree, id, &encoded, raw)?;
        if self
            .pack
            .as_ref()
            .is_some_and(|p| p.len() >= 8 * 1024 * 1024)
        {
            self.flush()?;
        }
        Ok(id)
    }

    /// Make every stored tree durable and indexed (before a snapshot references it).
    fn flush(&mut self) -> Result<()> {
        let Some(w) = self.pack.take() else {
            return Ok(());
        };
        if w.is_empty() {
            return Ok(());
        }
        let (id, bytes, blobs) = w.finish(self.repo.key())?;
        self.repo
            .backend()
            .put(FileKind::Pack, &id.to_hex(), bytes.into())?;
        self.repo.save_index_file(&IndexFile {
            packs: vec![(id, blobs)],
        })?;
        Ok(())
    }
}
