//! What one snapshot needs from a repository: its blobs, the packs that hold them (with their
//! sizes) and an index file listing exactly those packs — what a copy of the snapshot to
//! another place (a tape) must carry, and what a partial restore must read.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::format::BlobType;
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::PackBlob;
use crate::repo::IndexedRepo;
use crate::restore::load_fixed_index;
use crate::snapshot::{Content, Snapshot};
use crate::tree::{ChunkRef, NodeKind};

/// A pack a snapshot needs and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededPack {
    pub id: Id,
    pub size: u64,
    /// It holds tree blobs (a restore reads these first).
    pub trees: bool,
}

/// Every blob a restore of `snap` reads: all its trees, and the data of the files that match
/// `includes` (glob patterns over snapshot paths, as `kura restore --include` takes them: a
/// matching directory brings everything under it; none = everything).
pub fn blobs_needed(
    repo: &IndexedRepo,
    snap: &Snapshot,
    includes: &[String],
) -> Result<HashSet<(BlobType, Id)>> {
    let mut out = HashSet::new();
    match &snap.content {
        Content::Image(info) => {
            out.extend(info.pieces.iter().map(|p| (BlobType::Tree, *p)));
            for id in load_fixed_index(repo, info)? {
                if !id.is_zero() {
                    out.insert((BlobType::Data, id));
                }
            }
        }
        Content::Tree { root } => {
            let mut gs = GlobSetBuilder::new();
            for p in includes {
                gs.add(Glob::new(p).map_err(|e| {
                    Error::InvalidInput(format!("invalid include pattern {p:?}: {e}"))
                })?);
            }
            let set: GlobSet = gs
                .build()
                .map_err(|e| Error::InvalidInput(format!("include patterns: {e}")))?;
            let mut stack = vec![(*root, PathBuf::from("/"), includes.is_empty())];
            while let Some((t, path, all)) = stack.pop() {
                out.insert((BlobType::Tree, t));
                for n in repo.load_tree(&t)?.nodes {
                    let spath = path.join(OsStr::from_bytes(&n.name));
                    let included = all || set.is_match(&spath);
                    match n.kind {
                        NodeKind::Dir => {
                            if let Some(sub) = n.subtree {
                                stack.push((sub, spath, included));
                            }
                        }
                        NodeKind::File if included => {
                            for c in n.content.iter().flatten() {
                                if let ChunkRef::Blob(id) = c {
                                    out.insert((BlobType::Data, *id));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The packs holding `blobs` (one location each, preferring packs already chosen), with
/// their sizes; an error names a blob no index lists.
pub fn packs_for(repo: &IndexedRepo, blobs: &HashSet<(BlobType, Id)>) -> Result<Vec<NeededPack>> {
    let mut chosen: HashMap<Id, bool> = HashMap::new();
    let mut sorted: Vec<&(BlobType, Id)> = blobs.iter().collect();
    sorted.sort();
    for (ty, id) in sorted {
        let locs: Vec<_> = repo
            .index()
            .get_all(id)
            .into_iter()
            .filter(|l| l.ty == *ty)
            .collect();
        let Some(first) = locs.first() else {
            return Err(Error::InvalidInput(format!(
                "{} blob {} is in no index; run `kura check`",
                ty.as_str(),
                id.short()
            )));
        };
        let pick = locs
            .iter()
            .find(|l| chosen.contains_key(&l.pack))
            .unwrap_or(first);
        *chosen.entry(pick.pack).or_default() |= *ty == BlobType::Tree;
    }
    let blobs = pack_blobs(repo, &chosen.keys().copied().collect());
    let mut out: Vec<NeededPack> = chosen
        .into_iter()
        .map(|(id, trees)| NeededPack {
            id,
            size: blobs.get(&id).map_or(0, |b| pack_size(b)),
            trees,
        })
        .collect();
    out.sort_by_key(|p| (!p.trees, p.id));
    Ok(out)
}

/// The blobs of each of these packs, as the index lists them.
fn pack_blobs(repo: &IndexedRepo, packs: &HashSet<Id>) -> HashMap<Id, Vec<PackBlob>> {
    let mut out: HashMap<Id, Vec<PackBlob>> = HashMap::new();
    for l in repo.index().iter() {
        if packs.contains(&l.pack) {
            let v = out.entry(l.pack).or_default();
            if !v.iter().any(|b| b.offset == l.offset) {
                v.push(PackBlob {
                    ty: l.ty,
                    id: l.id,
                    offset: l.offset,
                    length: l.length,
                    raw_length: l.raw_length,
                });
            }
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|b| b.offset);
    }
    out
}

/// A pack's size from its blobs (see `docs/FORMAT.md`, "Packs").
fn pack_size(blobs: &[PackBlob]) -> u64 {
    let end = blobs
        .iter()
        .map(|b| b.offset as u64 + b.length as u64)
        .max()
        .unwrap_or(8);
    end + 40 + 4 + 45 * blobs.len() as u64 + 12
}

/// An index file listing exactly these packs and their blobs.
pub fn index_for(repo: &IndexedRepo, packs: &[NeededPack]) -> IndexFile {
    let set: HashSet<Id> = packs.iter().map(|p| p.id).collect();
    let mut blobs = pack_blobs(repo, &set);
    IndexFile {
        packs: packs
            .iter()
            .map(|p| (p.id, blobs.remove(&p.id).unwrap_or_default()))
            .collect(),
    }
}
