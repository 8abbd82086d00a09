//! `kura prune`: free the space of data no snapshot references — without ever deleting a
//! pack a running backup may still reference.
//!
//! # Two-phase deletion
//! A backup loads the index once and then dedups against it for hours; a prune that deleted
//! every pack no *current* snapshot needs could delete a pack whose blobs that backup's
//! future snapshot will name. So prune deletes in two phases:
//!
//! 1. **Condemn.** A pack no snapshot needs (or whose used blobs prune has just copied into a
//!    new pack) is recorded in a condemned file ([`crate::condemned`], `KURACND1`) with the time
//!    `tc`, and left out of the new index files. From then on backups that load the index
//!    treat its blobs as absent and store them again if they need them; readers can still read
//!    them.
//! 2. **Delete.** A later prune deletes a condemned pack only when *all* of these hold:
//!    - (a) the grace period `--keep-condemned` (default [`DEFAULT_KEEP_CONDEMNED`]) has passed
//!      since `tc`;
//!    - (b) no live (non-stale) shared lock was taken before `tc` + [`CLOCK_SKEW`] — only the
//!      holders of such locks can have loaded an index that still listed the pack;
//!    - (c) re-checked against the snapshots listed *after* the locks: no snapshot needs a
//!      blob that lives only in this pack. If one does, the pack is **recovered**: listed in
//!      the index again and no longer condemned.
//!
//! # Why that is safe
//! Let backup B reference blob x from pack P, which B did not write. B found P live (not
//! condemned) when it loaded the index, after taking its lock at `since`. If P is condemned at
//! `tc` it is after B listed the condemned files, so `since < tc`. A prune that deletes P
//! listed the locks first: (b) says B's lock was not live then — either B had released it, so
//! B's snapshot was written before and the prune's later snapshot listing sees it and (c)
//! recovers P; or B's lock was stale. A lock that others can judge stale is one B could not
//! refresh for more than half the staleness window, which B checks before and after writing its
//! snapshot ([`crate::lock::RepoLock::verify`]): it then writes none, or removes it. Orphan
//! packs (no index lists them: an interrupted backup, or one still running) are condemned
//! like any other, so a running backup's fresh packs are protected the same way.
//!
//! `tc` is taken just before the condemned file is written, and [`CLOCK_SKEW`] also covers the
//! time that write takes (a backup locking while it is in flight cannot have seen it).
//!
//! The grace period is not what makes this safe; it covers what locks cannot see: clocks of
//! other hosts that are off by more than [`CLOCK_SKEW`], and object stores whose listings lag.
//!
//! # Order of writes (crash safety)
//! Repacked packs are uploaded, then the new condemned file, then the new index files; then
//! the packs due are deleted, and only then the old index files and old condemned files. A
//! crash at any point leaves every needed blob indexed or condemned (readable and
//! recoverable), at worst listed twice; a pack deleted while an old condemned file still names
//! it is reported by `check` as a harmless warning and dropped by the next prune.
//!
//! Prune runs under the exclusive lock, which excludes only other prunes (and `forget
//! --prune`): backups, checks, restores and plain `forget` run beside it. A snapshot that
//! vanishes while prune reads it (a concurrent `forget`) is simply not a root.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kura_backend::{ErrorKind, FileKind};
use serde::Serialize;

use crate::backup::CancelToken;
use crate::condemned::{self, CondemnedPack};
use crate::error::{Error, Result};
use crate::format::{BlobType, decode_blob};
use crate::id::Id;
use crate::index::{BlobLocation, IndexFile};
use crate::lock::{Exclusive, RepoLock, list_locks};
use crate::pack::{PackBlob, PackWriter};
use crate::progress::Progress;
use crate::repo::{IndexedRepo, Repository};
use crate::restore::load_fixed_index;
use crate::snapshot::Content;
use crate::tree::{ChunkRef, NodeKind};
use crate::util::Timestamp;

/// Default grace period between condemning a pack and deleting it. One hour: several times the
/// clock skew NTP-less hosts show in practice and far longer than object-store listing lag,
/// while `forget` + `prune` run daily still frees yesterday's space. Locks, not this period,
/// protect running backups (see the module docs).
pub const DEFAULT_KEEP_CONDEMNED: Duration = Duration::from_secs(3600);

/// How far another host's clock may be behind ours for condition (b).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Options of `kura prune`.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Repack a partly used pack when at least this fraction of its bytes is unused.
    pub repack_threshold: f64,
    /// Grace period before a condemned pack may be deleted (0: as soon as no lock holds it).
    pub keep_condemned: Duration,
    /// Parts of fail-over backups this repository holds, as the catalog knows them.
    pub sections: Sections,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            repack_threshold: 0.2,
            keep_condemned: DEFAULT_KEEP_CONDEMNED,
            sections: Sections::default(),
        }
    }
}

/// What the catalog knows of the sectioned (fail-over) backups a repository holds part of.
///
/// A fail-over run leaves a backup in sections on several targets of a group: a target may
/// hold a section (the packs one index file lists) of a backup whose snapshot manifest is on
/// another target — it failed before the manifest was written — and the target holding the
/// manifest lacks the blobs of the other sections. From the repository alone the first looks
/// like garbage and the second like damage, so prune is told:
/// - [`Sections::index_files`] name sections that must stay: every pack they list is kept
///   whole (never condemned or repacked; recovered if an earlier prune condemned it), and
///   the files themselves are kept as they are, since `kura heal` copies a section by its
///   index file;
/// - [`Sections::partial`] snapshots have sections elsewhere: their blobs missing here are
///   not damage (what of them is here is kept like any snapshot's).
#[derive(Debug, Clone, Default)]
pub struct Sections {
    pub index_files: HashSet<String>,
    pub partial: HashSet<Id>,
}

/// What prune did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub blobs_used: usize,
    pub blobs_unused: usize,
    pub packs_kept: usize,
    /// Condemned packs deleted by this run.
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_written: usize,
    /// Packs condemned by this run (unused, orphaned, or repacked).
    pub packs_condemned: usize,
    /// Condemned packs a snapshot turned out to need: indexed again.
    pub packs_recovered: usize,
    /// Condemned packs left for a later prune (grace period or a live lock).
    pub packs_waiting: usize,
    pub index_files_replaced: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Bytes of the packs still condemned after this run.
    pub bytes_condemned: u64,
}

/// Every blob (type, id) reachable from a snapshot; of a `partial` one (a sectioned backup's,
/// see [`Sections`]), those this repository holds.
pub fn used_blobs(
    repo: &IndexedRepo,
    partial: &HashSet<Id>,
    cancel: &CancelToken,
) -> Result<HashSet<(BlobType, Id)>> {
    let mut used: HashSet<(BlobType, Id)> = HashSet::new();
    // What sectioned snapshots reference: only what of it is here counts.
    let mut sectioned: HashSet<(BlobType, Id)> = HashSet::new();
    for snap in snapshots_now(repo)? {
        cancel.check()?;
        let is_partial = partial.contains(&snap.id);
        let what = |e: Error| {
            Error::InvalidInput(format!(
                "snapshot {} cannot be read completely ({e}); refusing to prune a damaged \
             repository — run `kura check`",
                snap.id.short()
            ))
        };
        let into = if is_partial {
            &mut sectioned
        } else {
            &mut used
        };
        match &snap.snapshot.content {
            Content::Tree { root } => {
                let mut stack = vec![*root];
                while let Some(t) = stack.pop() {
                    if !into.insert((BlobType::Tree, t)) {
                        continue;
                    }
                    if is_partial && !repo.index().contains(&t) {
                        continue; // a tree in a section elsewhere: so is what it names
                    }
                    let tree = repo.load_tree(&t).map_err(what)?;
                    for n in tree.nodes {
                        match n.kind {
                            NodeKind::Dir => stack.extend(n.subtree),
                            NodeKind::File => {
                                for c in n.content.iter().flatten() {
                                    if let ChunkRef::Blob(id) = c {
                                        into.insert((BlobType::Data, *id));
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            Content::Image(info) => {
                into.extend(info.pieces.iter().map(|p| (BlobType::Tree, *p)));
                if is_partial && !info.pieces.iter().all(|p| repo.index().contains(p)) {
                    continue; // its fixed index is partly elsewhere: so is its data
                }
                for id in load_fixed_index(repo, info).map_err(what)? {
                    if !id.is_zero() {
                        into.insert((BlobType::Data, id));
                    }
                }
            }
        }
    }
    let indexed = |(ty, id): &(BlobType, Id)| repo.index().get_all(id).iter().any(|l| l.ty == *ty);
    // Everything used must be indexed, or the repository is already damaged.
    if let Some((ty, id)) = used.iter().find(|b| !indexed(b)) {
        return Err(Error::InvalidInput(format!(
            "{} blob {} is referenced but in no index; refusing to prune a damaged \
             repository — run `kura check`",
            ty.as_str(),
            id.short()
        )));
    }
    used.extend(sectioned.into_iter().filter(|b| indexed(b)));
    Ok(used)
}

/// Every snapshot now. One that vanishes between listing and reading (a concurrent `forget`)
/// is not a root; a damaged one stops the prune, naming the way out.
pub fn snapshots_now(repo: &Repository) -> Result<Vec<crate::snapshot::SnapshotEntry>> {
    let mut out = Vec::new();
    for f in repo.backend().list(FileKind::Snapshot)? {
        match repo.load_snapshot_file(&f.name) {
            Ok(s) => out.push(s),
            Err(Error::Backend(e)) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.is_data_damage() || matches!(e, Error::Unsupported(_)) => {
                return Err(crate::repo::damaged_snapshot_refusal(
                    &f.name,
                    &e.to_string(),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What prune decides for the packs that were condemned before it ran.
#[derive(Default)]
struct Verdicts {
    delete: Vec<Id>,
    recover: Vec<Id>,
    wait: Vec<CondemnedPack>,
}

/// Prune. Takes the repository by value: its in-memory index is stale afterwards.
pub fn prune(
    repo: Repository,
    _lock: &RepoLock<Exclusive>,
    opts: &PruneOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let now = Timestamp::now();
    // Locks first, then the index, then the snapshots (see the module docs for why).
    let holders: Vec<Timestamp> = list_locks(&repo)?
        .into_iter()
        .filter(|l| l.stale.is_none() && !l.info.exclusive)
        .map(|l| l.info.since)
        .collect();
    let (repo, old_index) = repo.load_index_listing()?;
    let condemned_before = repo.condemned().clone();
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let snapshots_before = repo.backend().list(FileKind::Snapshot)?.len();
    let used = used_blobs(&repo, &opts.sections.partial, cancel)?;
    report.snapshots = snapshots_before;
    // Sections the catalog claims here stay whole, with their index files.
    let mut protected: HashSet<Id> = HashSet::new();
    let mut kept_index: HashSet<String> = HashSet::new();
    for name in &opts.sections.index_files {
        if !old_index.contains(name) {
            continue; // not here (any more): nothing to keep
        }
        let file = repo.load_index_file(name)?;
        protected.extend(file.packs.iter().map(|(p, _)| *p));
        kept_index.insert(name.clone());
    }

    // The one copy of each used blob that survives: the first one in a live pack, else the
    // first condemned one (whose pack is then recovered).
    let is_condemned = |p: &Id| condemned_before.contains(p);
    let mut keep_copy: HashSet<(Id, Id)> = HashSet::new(); // (blob, pack)
    let mut by_pack: HashMap<Id, Vec<BlobLocation>> = HashMap::new();
    for loc in repo.index().iter() {
        by_pack.entry(loc.pack).or_default().push(loc);
    }
    for &(ty, id) in &used {
        let mut locs: Vec<BlobLocation> = repo
            .index()
            .get_all(&id)
            .into_iter()
            .filter(|l| l.ty == ty)
            .collect();
        locs.sort_by_key(|l| is_condemned(&l.pack));
        if let Some(l) = locs.first() {
            keep_copy.insert((id, l.pack));
        }
    }
    let sizes: HashMap<String, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect();
    let size_of = |p: &Id| sizes.get(&p.to_hex()).copied().unwrap_or(0);

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

    // Condemned before this run: recover, delete, or wait.
    let mut v = Verdicts::default();
    let grace = opts.keep_condemned.as_secs() as i64;
    for (pack, c) in &condemned_before.packs {
        let needed = by_pack
            .get(pack)
            .is_some_and(|bs| bs.iter().any(|l| keep_copy.contains(&(l.id, *pack))));
        let locked = holders
            .iter()
            .any(|since| since.0 <= c.since.0 + CLOCK_SKEW.as_secs() as i64);
        if needed || protected.contains(pack) {
            v.recover.push(*pack);
        } else if now.0 - c.since.0 >= grace && !locked {
            v.delete.push(*pack);
        } else {
            let mut c = c.clone();
            if c.blobs.is_empty() {
                c.blobs = match by_pack.get(pack) {
                    Some(bs) => bs.iter().map(to_pack_blob).collect(),
                    None => orphan_blobs(&repo, pack, size_of(pack)),
                };
            }
            v.wait.push(c);
        }
    }

    // Live packs (and recovered ones): keep, condemn, or repack.
    let mut keep: Vec<Id> = Vec::new();
    let mut condemn: Vec<CondemnedPack> = Vec::new();
    let mut repack: Vec<(Id, Vec<BlobLocation>)> = Vec::new();
    let recovered: HashSet<Id> = v.recover.iter().copied().collect();
    for (pack, blobs) in &by_pack {
        if is_condemned(pack) && !recovered.contains(pack) {
            continue;
        }
        let size = size_of(pack);
        report.bytes_before += size;
        if protected.contains(pack) {
            keep.push(*pack);
            report.bytes_after += size;
            continue;
        }
        let (used_here, unused_here): (Vec<&BlobLocation>, Vec<&BlobLocation>) = blobs
            .iter()
            .partition(|l| keep_copy.contains(&(l.id, *pack)));
        report.blobs_unused += unused_here.len();
        let unused_bytes: u64 = unused_here.iter().map(|l| l.length as u64).sum();
        if used_here.is_empty() {
            condemn.push(CondemnedPack {
                pack: *pack,
                since: now,
                blobs: blobs.iter().map(to_pack_blob).collect(),
            });
        } else if unused_here.is_empty()
            || (unused_bytes as f64) < opts.repack_threshold * size.max(1) as f64
        {
            keep.push(*pack);
            report.bytes_after += size;
        } else {
            repack.push((*pack, used_here.into_iter().copied().collect()));
        }
    }
    // Packs no index file and no condemned file lists: left by an interrupted backup, or
    // uploaded by a running one whose index file is not written yet. Condemned like the rest:
    // the running backup's lock protects them, its snapshot recovers them. Their record lists
    // their blobs (from the pack header): if the index file that would list them is lost, the
    // record is what still locates the blobs a snapshot of that backup needs.
    for name in sizes.keys() {
        let Ok(id) = name.parse::<Id>() else { continue };
        if !by_pack.contains_key(&id) && !is_condemned(&id) {
            report.bytes_before += size_of(&id);
            condemn.push(CondemnedPack {
                pack: id,
                since: now,
                blobs: if opts.dry_run {
                    Vec::new()
                } else {
                    orphan_blobs(&repo, &id, size_of(&id))
                },
            });
        }
    }
    for c in condemned_before.packs.values() {
        if !recovered.contains(&c.pack) {
            report.bytes_before += size_of(&c.pack);
        }
    }
    report.blobs_used = used.len();
    report.packs_kept = keep.len();
    report.packs_deleted = v.delete.len();
    report.packs_recovered = v.recover.len();
    report.packs_waiting = v.wait.len();
    report.packs_repacked = repack.len();
    report.packs_condemned = condemn.len() + repack.len();
    report.index_files_replaced = old_index.len() - kept_index.len();
    report.bytes_condemned = v.wait.iter().map(|c| size_of(&c.pack)).sum::<u64>()
        + condemn.iter().map(|c| size_of(&c.pack)).sum::<u64>()
        + repack.iter().map(|(p, _)| size_of(p)).sum::<u64>();
    if opts.dry_run {
        report.bytes_after += repack
            .iter()
            .flat_map(|(_, b)| b.iter().map(|l| l.length as u64 + 45))
            .sum::<u64>();
        report.bytes_after += report.bytes_condemned;
        return Ok(report);
    }

    // Repack.
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
            // Verify before the old copy is condemned; a bad blob aborts the prune.
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
        condemn.push(CondemnedPack {
            pack: *pack,
            since: now,
            blobs: by_pack[pack].iter().map(to_pack_blob).collect(),
        });
    }
    for w in writers.into_iter().flatten() {
        flush(w, &mut new_index, &mut report)?;
    }
    progress.finish();

    // The new condemned file: still waiting plus newly condemned. The condemnation time is
    // taken now, just before the file is written, not when this prune started: a backup that
    // locked in between may have loaded an index still listing these packs, and condition (b)
    // must count its lock as older than the condemnation.
    cancel.check()?;
    let tc = Timestamp::now();
    for c in &mut condemn {
        c.since = tc;
    }
    let still: Vec<&CondemnedPack> = v.wait.iter().chain(condemn.iter()).collect();
    let new_condemned = condemned::save(&repo, &still)?;

    // The new index: the packs that stay as they are (recovered ones included), with all
    // their blobs (the index must match each pack's header), plus the new packs. Packs of
    // kept sections are listed by their own index files.
    for pack in keep.iter().filter(|p| !protected.contains(p)) {
        let blobs: Vec<PackBlob> = by_pack[pack].iter().map(to_pack_blob).collect();
        new_index.packs.push((*pack, blobs));
    }
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

    // Phase two for the packs that are due, then the files the new ones replace.
    for pack in &v.delete {
        ignore_missing(repo.backend().delete(FileKind::Pack, &pack.to_hex()))?;
    }
    for name in &old_index {
        if !new_names.contains(name) && !kept_index.contains(name) {
            ignore_missing(repo.backend().delete(FileKind::Index, name))?;
        }
    }
    for name in &condemned_before.files {
        if new_condemned.as_deref() != Some(name.as_str()) {
            ignore_missing(repo.backend().delete(FileKind::Condemned, name))?;
        }
    }
    Ok(report)
}

/// The blobs of a pack no index file lists, from its header; none when the header cannot be
/// read (the pack is condemned all the same: nothing else can locate its blobs either).
fn orphan_blobs(repo: &IndexedRepo, pack: &Id, size: u64) -> Vec<PackBlob> {
    match crate::pack::read_header(repo.backend(), repo.key(), &pack.to_hex(), size) {
        Ok(blobs) => blobs,
        Err(e) => {
            tracing::warn!("orphan pack {}: header unreadable: {e}", pack.short());
            Vec::new()
        }
    }
}

fn to_pack_blob(l: &BlobLocation) -> PackBlob {
    PackBlob {
        ty: l.ty,
        id: l.id,
        offset: l.offset,
        length: l.length,
        raw_length: l.raw_length,
    }
}

fn ignore_missing(r: std::result::Result<(), kura_backend::BackendError>) -> Result<()> {
    match r {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
