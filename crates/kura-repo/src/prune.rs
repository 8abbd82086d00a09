//! `kura prune`: free the space of data no snapshot references.
//!
//! 1. Find every blob any snapshot reaches (trees, data chunks, image fixed indexes). If any
//!    of it cannot be read, stop: pruning a damaged repository could delete the only evidence
//!    needed to repair it.
//! 2. Classify packs: all blobs used → keep; none used → delete; some used → *repack* when the
//!    unused part is at least `repack_threshold` of the pack, else keep as is.
//! 3. Repack: copy the used blobs' stored bytes into new packs (no re-encryption: a blob's
//!    associated data binds it to its id and type, not to a pack), verifying each on the way.
//! 4. Write one new set of index files describing every pack that stays, then delete the old
//!    index files, then the packs no longer needed.
//!
//! Crash safety: until step 4's deletions everything old is still in place, so a crash leaves
//! at worst duplicate index entries; a crash during the deletions leaves unreferenced packs
//! that a later backup adopts and a later prune removes. Nothing a snapshot references is
//! ever deleted before its new home is durable and indexed. Runs under the exclusive lock.

use std::collections::{HashMap, HashSet};

use kura_backend::{ErrorKind, FileKind};
use serde::Serialize;

use crate::backup::CancelToken;
use crate::error::{Error, Result};
use crate::format::{BlobType, decode_blob};
use crate::id::Id;
use crate::index::{BlobLocation, IndexFile};
use crate::lock::{Exclusive, RepoLock};
use crate::pack::{PackBlob, PackWriter};
use crate::progress::Progress;
use crate::repo::IndexedRepo;
use crate::restore::load_fixed_index;
use crate::snapshot::Content;
use crate::tree::{ChunkRef, NodeKind};

/// Options of `kura prune`.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Repack a partly used pack when at least this fraction of its bytes is unused.
    pub repack_threshold: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            repack_threshold: 0.2,
        }
    }
}

/// What prune did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub blobs_used: usize,
    pub blobs_unused: usize,
    pub packs_kept: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_written: usize,
    pub index_files_replaced: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Every blob (type, id) reachable from a snapshot.
pub fn used_blobs(repo: &IndexedRepo, cancel: &CancelToken) -> Result<HashSet<(BlobType, Id)>> {
    let mut used: HashSet<(BlobType, Id)> = HashSet::new();
    for snap in repo.list_snapshots()? {
        cancel.check()?;
        let what = |e: Error| {
            Error::InvalidInput(format!(
                "snapshot {} cannot be read completely ({e}); refusing to prune a damaged \
             repository — run `kura check`",
                snap.id.short()
            ))
        };
        match &snap.snapshot.content {
            Content::Tree { root } => {
                let mut stack = vec![*root];
                while let Some(t) = stack.pop() {
                    if !used.insert((BlobType::Tree, t)) {
                        continue;
                    }
                    let tree = repo.load_tree(&t).map_err(what)?;
                    for n in tree.nodes {
                        match n.kind {
                            NodeKind::Dir => stack.extend(n.subtree),
                            NodeKind::File => {
                                for c in n.content.iter().flatten() {
                                    if let ChunkRef::Blob(id) = c {
                                        used.insert((BlobType::Data, *id));
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            Content::Image(info) => {
                used.extend(info.pieces.iter().map(|p| (BlobType::Tree, *p)));
                for id in load_fixed_index(repo, info).map_err(what)? {
                    if !id.is_zero() {
                        used.insert((BlobType::Data, id));
                    }
                }
            }
        }
    }
    // Everything used must be indexed, or the repository is already damaged.
    if let Some((ty, id)) = used
        .iter()
        .find(|(ty, id)| !repo.index().get_all(id).iter().any(|l| l.ty == *ty))
    {
        return Err(Error::InvalidInput(format!(
            "{} blob {} is referenced but in no index; refusing to prune a damaged \
             repository — run `kura check`",
            ty.as_str(),
            id.short()
        )));
    }
    Ok(used)
}

/// Prune. Takes the repository by value: its in-memory index is stale afterwards.
pub fn prune(
    repo: IndexedRepo,
    _lock: &RepoLock<Exclusive>,
    opts: &PruneOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        snapshots: repo.backend().list(FileKind::Snapshot)?.len(),
        ..Default::default()
    };
    let used = used_blobs(&repo, cancel)?;

    // The one copy of each used blob that survives: the first the index lists.
    let mut keep_copy: HashSet<(Id, Id)> = HashSet::new(); // (blob, pack)
    let mut by_pack: HashMap<Id, Vec<BlobLocation>> = HashMap::new();
    for loc in repo.index().iter() {
        by_pack.entry(loc.pack).or_default().push(loc);
    }
    for &(ty, id) in &used {
        if let Some(l) = repo.index().get_all(&id).into_iter().find(|l| l.ty == ty) {
            keep_copy.insert((id, l.pack));
        }
    }
    let sizes: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect();

    // Packs no index lists: left by interrupted backups. Nothing references them (snapshots
    // are written after their index files), and no backup runs under our exclusive lock.
    let orphans: Vec<String> = sizes
        .keys()
        .filter(|n| {
            n.parse::<Id>()
                .map_or(true, |id| !by_pack.contains_key(&id))
        })
        .cloned()
        .collect();
    report.packs_deleted += orphans.len();
    report.bytes_before += orphans.iter().map(|n| sizes[n]).sum::<u64>();

    if let Some((blob, pack)) = keep_copy
        .iter()
        .find(|(_, p)| !sizes.contains_key(&p.to_hex()))
    {
        return Err(Error::InvalidInput(format!(
            "pack {} holding referenced blob {} is missing; refusing to prune a damaged \
             repository — run `kura check`",
            pack.short(),
            blob.short()
        )));
    }

    let mut keep: Vec<Id> = Vec::new();
    let mut delete: Vec<Id> = Vec::new();
    let mut repack: Vec<(Id, Vec<BlobLocation>)> = Vec::new();
    for (pack, blobs) in &by_pack {
        let size = sizes.get(&pack.to_hex()).copied().unwrap_or(0);
        report.bytes_before += size;
        let (used_here, unused_here): (Vec<&BlobLocation>, Vec<&BlobLocation>) = blobs
            .iter()
            .partition(|l| keep_copy.contains(&(l.id, *pack)));
        report.blobs_unused += unused_here.len();
        let unused_bytes: u64 = unused_here.iter().map(|l| l.length as u64).sum();
        if used_here.is_empty() {
            delete.push(*pack);
        } else if unused_here.is_empty()
            || (unused_bytes as f64) < opts.repack_threshold * size.max(1) as f64
        {
            keep.push(*pack);
            report.bytes_after += size;
        } else {
            repack.push((*pack, used_here.into_iter().copied().collect()));
        }
    }
    report.blobs_used = used.len();
    report.packs_kept = keep.len();
    report.packs_deleted += delete.len();
    report.packs_repacked = repack.len();
    let old_index: Vec<String> = repo
        .backend()
        .list(FileKind::Index)?
        .into_iter()
        .map(|f| f.name)
        .collect();
    report.index_files_replaced = old_index.len();
    if opts.dry_run {
        report.bytes_after += repack
            .iter()
            .flat_map(|(_, b)| b.iter().map(|l| l.length as u64 + 45))
            .sum::<u64>();
        return Ok(report);
    }

    // 3. Repack.
    progress.start("prune: repacking", None);
    let pack_size = repo.config().pack_size as usize;
    let mut new_index = IndexFile::default();
    let mut writers: [Option<PackWriter>; 2] = [None, None];
    let flush =
        |w: PackWriter, new_index: &mut IndexFile, report: &mut PruneReport| -> Result<()> {
            let (id, bytes, blobs) = w.finish(repo.key())?;
            let size = bytes.len() as u64;
            repo.backend()
                .put(FileKind::Pack, &id.to_hex(), bytes.into())?;
            report.packs_written += 1;
            report.bytes_after += size;
            new_index.packs.push((id, blobs));
            Ok(())
        };
    for (pack, blobs) in &repack {
        cancel.check()?;
        let bytes = repo.backend().get(FileKind::Pack, &pack.to_hex())?;
        progress.advance(bytes.len() as u64, 1);
        for l in blobs {
            let stored = bytes
                .get(l.offset as usize..l.offset as usize + l.length as usize)
                .ok_or_else(|| {
                    Error::corrupt(
                        format!("pack {}", pack.short()),
                        "shorter than its index says",
                    )
                })?;
            // Verify before the old copy is deleted; a bad blob aborts the prune.
            decode_blob(repo.key(), l.ty, &l.id, stored.to_vec(), l.raw_length).map_err(|e| {
                Error::InvalidInput(format!(
                    "{e}; refusing to prune a damaged repository — run `kura check`"
                ))
            })?;
            let slot = &mut writers[l.ty as usize];
            let w = slot.get_or_insert_with(|| PackWriter::new(pack_size + pack_size / 8));
            w.add(l.ty, l.id, stored, l.raw_length)?;
            if w.len() >= pack_size
                && let Some(w) = slot.take()
            {
                flush(w, &mut new_index, &mut report)?;
            }
        }
    }
    for w in writers.into_iter().flatten() {
        flush(w, &mut new_index, &mut report)?;
    }
    progress.finish();

    // 4. New index: the packs that stay as they are, with all their blobs (the index must
    // match each pack's header), plus the new packs.
    for pack in &keep {
        let blobs: Vec<PackBlob> = by_pack[pack]
            .iter()
            .map(|l| PackBlob {
                ty: l.ty,
                id: l.id,
                offset: l.offset,
                length: l.length,
                raw_length: l.raw_length,
            })
            .collect();
        new_index.packs.push((*pack, blobs));
    }
    cancel.check()?;
    for chunk in new_index.packs.chunks(4096) {
        repo.save_index_file(&IndexFile {
            packs: chunk.to_vec(),
        })?;
    }
    let new_names: HashSet<String> = repo
        .backend()
        .list(FileKind::Index)?
        .into_iter()
        .map(|f| f.name)
        .filter(|n| !old_index.contains(n))
        .collect();
    for name in &old_index {
        if new_names.contains(name) {
            continue;
        }
        ignore_missing(repo.backend().delete(FileKind::Index, name))?;
    }
    for pack in delete.iter().chain(repack.iter().map(|(p, _)| p)) {
        ignore_missing(repo.backend().delete(FileKind::Pack, &pack.to_hex()))?;
    }
    for name in &orphans {
        ignore_missing(repo.backend().delete(FileKind::Pack, name))?;
    }
    Ok(report)
}

fn ignore_missing(r: std::result::Result<(), kura_backend::BackendError>) -> Result<()> {
    match r {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
