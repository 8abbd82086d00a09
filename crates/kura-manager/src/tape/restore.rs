//! Restoring a backup from tape: its management information and packs are read into a
//! private staging repository, then restored by `kura_repo::restore` — the same path as any
//! restore, so its guarantees (nothing written outside the target, never through an
//! existing inode, damaged files named and the rest restored) hold here too.
//!
//! # Reading only what is needed, in tape order
//! The catalog knows where every piece is (tape label, file number). A restore reads the
//! pieces of the packs it needs, grouped by tape and ordered by file number: each tape is
//! loaded once (asked for by label, with a mount request when it is not in the library),
//! the drive spaces to each file (no reading from the start), and an archive is read only
//! until what is wanted from it has come. With `--include`, the packs holding trees come
//! first; then only the packs of the matching files.
//!
//! # Damage
//! A block that fails its checksum leaves zeros in the pack it belonged to; the blobs there
//! fail their authentication, and the restore names exactly the files that needed them.
//! A pack whose pieces cannot be read at all is missing the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kura_backend::{Backend, FileKind, LocalBackend};
use kura_catalog::{Catalog, TapeBackup, TapePiece};
use kura_repo::backup::CancelToken;
use kura_repo::format::BlobType;
use kura_repo::lock::RepoLock;
use kura_repo::progress::Progress;
use kura_repo::repo::Repository;
use kura_repo::restore::{RestoreOptions, RestoreOutcome};
use kura_tape::format::EntryKind;
use kura_tape::label::{self, BackupInfo};
use kura_tape::read::{MountHost, TapeReader};

use super::copy::info_name;
use super::{TapeEvents, open_library};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct TapeRestoreOptions {
    pub restore: RestoreOptions,
    /// Where the staging repository is made (a fresh directory inside); default the system's
    /// temporary directory. It needs room for the packs the restore reads.
    pub staging: Option<PathBuf>,
    pub mount_timeout: Duration,
}

/// What a tape restore read and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TapeRestoreReport {
    pub snapshot: String,
    /// Tapes loaded, in order.
    pub tapes: Vec<String>,
    /// Archives (tape files) read, and bytes of pieces taken from them.
    pub archives_read: u64,
    pub bytes_read: u64,
    pub packs: u64,
    /// Packs with bytes that could not be read (damaged blocks, a tape cut short).
    pub damaged_packs: Vec<String>,
    #[serde(skip)]
    pub outcome: Option<RestoreOutcome>,
}

/// The newest complete tape backup whose snapshot id starts with `spec` (or of any
/// snapshot, for `latest`), on `library` when given.
pub fn find_tape_backup(
    catalog: &Catalog,
    spec: &str,
    library: Option<&str>,
) -> Result<TapeBackup> {
    let sets: HashMap<String, String> = catalog
        .media_sets()?
        .into_iter()
        .map(|s| (s.id, s.library))
        .collect();
    let mut found: Vec<TapeBackup> = catalog
        .tape_backups()?
        .into_iter()
        .filter(|b| b.state == "complete" && (spec == "latest" || b.snapshot.starts_with(spec)))
        .filter(|b| library.is_none_or(|l| sets.get(&b.media_set).is_some_and(|x| x == l)))
        .collect();
    found.sort_by_key(|b| (b.taken, b.id));
    let snaps: HashSet<&str> = found.iter().map(|b| b.snapshot.as_str()).collect();
    if spec != "latest" && snaps.len() > 1 {
        return Err(Error::Invalid(format!(
            "{spec} names {} backups on tape; give more of the id",
            snaps.len()
        )));
    }
    found
        .pop()
        .ok_or_else(|| Error::Invalid(format!("no complete backup {spec} on tape in the catalog")))
}

/// Mount requests of a reader: recorded in the catalog and told to the caller.
pub(crate) struct Mounts<'a> {
    pub catalog: &'a Catalog,
    pub library: String,
    pub events: &'a dyn TapeEvents,
    pub cancel: &'a CancelToken,
    pub open: Option<i64>,
}

impl<'a> Mounts<'a> {
    pub fn new(
        catalog: &'a Catalog,
        library: &str,
        events: &'a dyn TapeEvents,
        cancel: &'a CancelToken,
    ) -> Mounts<'a> {
        Mounts {
            catalog,
            library: library.to_string(),
            events,
            cancel,
            open: None,
        }
    }
}

impl MountHost for Mounts<'_> {
    fn mount_request(&mut self, message: &str) -> kura_tape::Result<()> {
        self.open = self.catalog.add_mount_request(&self.library, message).ok();
        self.events.mount_request(&self.library, message);
        Ok(())
    }
    fn mount_satisfied(&mut self) -> kura_tape::Result<()> {
        if let Some(id) = self.open.take() {
            let _ = self.catalog.end_mount_request(id, "satisfied");
        }
        self.events.mount_satisfied(&self.library);
        Ok(())
    }
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Drop for Mounts<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.open.take() {
            let _ = self.catalog.end_mount_request(id, "abandoned");
        }
    }
}

/// An object being put together from its pieces.
struct Assembly {
    data: Vec<u8>,
    /// Byte ranges received whole.
    got: Vec<(u64, u64)>,
    damaged: bool,
}

/// Reads objects (packs, management information) of one media set from tape.
pub(crate) struct Fetcher<'a> {
    pub reader: TapeReader,
    pub mounts: Mounts<'a>,
    pub set: String,
    /// Tape label → its number in the set.
    pub seq: HashMap<String, i64>,
    pub pieces: HashMap<String, Vec<TapePiece>>,
    pub report: TapeRestoreReport,
}

impl Fetcher<'_> {
    /// Read the named objects; each is handed to `done` once (whole, or with zeros where it
    /// could not be read: then `damaged`). Objects with no recorded piece are not handed.
    pub fn fetch(
        &mut self,
        names: &[String],
        mut done: impl FnMut(&str, Vec<u8>, bool) -> Result<()>,
    ) -> Result<()> {
        // (seq, label, file) → names wanted there.
        let mut plan: BTreeMap<(i64, String, i64), HashSet<(String, i64)>> = BTreeMap::new();
        // (name, start) → the piece's recorded length.
        let mut expect: HashMap<(String, i64), i64> = HashMap::new();
        let mut asm: HashMap<String, Assembly> = HashMap::new();
        for n in names {
            let Some(ps) = self.pieces.get(n) else {
                continue;
            };
            for p in ps {
                let seq = self.seq.get(&p.label).copied().unwrap_or(i64::MAX);
                plan.entry((seq, p.label.clone(), p.file))
                    .or_default()
                    .insert((n.clone(), p.start));
                expect.insert((n.clone(), p.start), p.len);
            }
            if let Some(p) = ps.first() {
                asm.insert(
                    n.clone(),
                    Assembly {
                        data: vec![0; p.total as usize],
                        got: Vec::new(),
                        damaged: false,
                    },
                );
            }
        }
        let mut remaining: HashMap<String, usize> = HashMap::new();
        for wanted in plan.values() {
            for (n, _) in wanted {
                *remaining.entry(n.clone()).or_default() += 1;
            }
        }
        for ((_, label, file), wanted) in plan {
            if self.mounts.cancel.is_cancelled() {
                return Err(Error::Tape(kura_tape::Error::Cancelled));
            }
            let loaded = self.reader.load(&label, Some(&self.set), &mut self.mounts);
            if let Err(e) = loaded {
                if matches!(
                    e,
                    kura_tape::Error::MountTimeout(_) | kura_tape::Error::Cancelled
                ) {
                    return Err(e.into());
                }
                // A tape that is not the one named: its pieces stay missing, the objects come
                // out damaged, the rest goes on.
                tracing::warn!(tape = %label, "cannot read tape: {e}");
                self.finish_missing(&wanted, &mut asm, &mut remaining, &mut done)?;
                continue;
            }
            if self.report.tapes.last() != Some(&label) {
                self.report.tapes.push(label.clone());
            }
            let mut left = wanted.clone();
            let mut taken = 0u64;
            let mut found: Vec<(String, u64, Vec<u8>, bool)> = Vec::new();
            let read = self.reader.read_archive(file as u32, |e| {
                let name = match e.header.kind {
                    EntryKind::Pack => hex::encode(e.header.id),
                    EntryKind::BackupInfo => info_name(&hex::encode(e.header.id)),
                    _ => return Ok(true),
                };
                let key = (name, e.header.offset as i64);
                if left.remove(&key) {
                    taken += e.data.len() as u64;
                    // A piece cut at its archive's end holds what the catalog recorded of
                    // it; fewer bytes than that are missing bytes.
                    let short = (e.data.len() as i64) < expect.get(&key).copied().unwrap_or(0);
                    found.push((key.0, e.header.offset, e.data, !e.holes.is_empty() || short));
                }
                Ok(!left.is_empty())
            });
            self.report.archives_read += 1;
            self.report.bytes_read += taken;
            if let Err(e) = read {
                tracing::warn!(tape = %label, file, "cannot read archive: {e}");
            }
            for (name, offset, data, damaged) in found {
                if let Some(a) = asm.get_mut(&name) {
                    let start = (offset as usize).min(a.data.len());
                    let end = (start + data.len()).min(a.data.len());
                    a.data[start..end].copy_from_slice(&data[..end - start]);
                    a.got.push((start as u64, end as u64));
                    a.damaged |= damaged;
                }
            }
            // Pieces that were not in the archive.
            for (n, _) in &left {
                if let Some(a) = asm.get_mut(n) {
                    a.damaged = true;
                }
            }
            let all: Vec<(String, i64)> = wanted.into_iter().collect();
            self.finish_some(&all, &mut asm, &mut remaining, &mut done)?;
        }
        Ok(())
    }

    fn finish_missing(
        &mut self,
        wanted: &HashSet<(String, i64)>,
        asm: &mut HashMap<String, Assembly>,
        remaining: &mut HashMap<String, usize>,
        done: &mut impl FnMut(&str, Vec<u8>, bool) -> Result<()>,
    ) -> Result<()> {
        for (n, _) in wanted {
            if let Some(a) = asm.get_mut(n) {
                a.damaged = true;
            }
        }
        let all: Vec<(String, i64)> = wanted.iter().cloned().collect();
        self.finish_some(&all, asm, remaining, done)
    }

    /// Hand over the objects whose last piece was just dealt with.
    fn finish_some(
        &mut self,
        dealt: &[(String, i64)],
        asm: &mut HashMap<String, Assembly>,
        remaining: &mut HashMap<String, usize>,
        done: &mut impl FnMut(&str, Vec<u8>, bool) -> Result<()>,
    ) -> Result<()> {
        for (n, _) in dealt {
            let Some(r) = remaining.get_mut(n) else {
                continue;
            };
            *r -= 1;
            if *r > 0 {
                continue;
            }
            remaining.remove(n);
            if let Some(a) = asm.remove(n) {
                let got = a.got.iter().map(|(s, e)| (*s as i64, *e as i64));
                let whole = kura_catalog::covered_from_zero(got) >= a.data.len() as i64;
                let damaged = a.damaged || !whole;
                if damaged {
                    self.report.damaged_packs.push(n.clone());
                }
                self.report.packs += 1;
                done(n, a.data, damaged)?;
            }
        }
        Ok(())
    }
}

/// Make a reader for a tape backup's media set.
pub(crate) fn fetcher<'a>(
    catalog: &'a Catalog,
    set: &str,
    mount_timeout: Duration,
    events: &'a dyn TapeEvents,
    cancel: &'a CancelToken,
) -> Result<Fetcher<'a>> {
    let ms = catalog
        .media_sets()?
        .into_iter()
        .find(|s| s.id == set)
        .ok_or_else(|| Error::Invalid(format!("media set {set} is not in the catalog")))?;
    let lib = open_library(catalog, &ms.library)?;
    let mut reader = TapeReader::open(&lib)?;
    reader.mount_timeout = mount_timeout;
    let seq = catalog
        .set_tapes(set)?
        .into_iter()
        .map(|t| (t.label, t.set_seq.unwrap_or(i64::MAX)))
        .collect();
    Ok(Fetcher {
        reader,
        mounts: Mounts::new(catalog, &ms.library, events, cancel),
        set: set.to_string(),
        seq,
        pieces: catalog.set_pieces(set)?,
        report: TapeRestoreReport::default(),
    })
}

/// Read a backup's management information from its set.
pub(crate) fn read_info(f: &mut Fetcher, snapshot: &str) -> Result<BackupInfo> {
    let mut info = None;
    let mut bad = false;
    f.fetch(&[info_name(snapshot)], |_, data, damaged| {
        bad = damaged;
        info = Some(data);
        Ok(())
    })?;
    match info {
        Some(d) if !bad => Ok(label::from_cbor(&d, "backup management information")?),
        Some(_) => Err(Error::Tape(kura_tape::Error::Format(format!(
            "the management information of backup {} is damaged on tape",
            &snapshot[..8.min(snapshot.len())]
        )))),
        None => Err(Error::Invalid(format!(
            "the catalog knows no place of backup {snapshot}'s management information"
        ))),
    }
}

/// Restore tape backup `b` into `target`.
#[allow(clippy::too_many_arguments)]
pub fn tape_restore(
    catalog: &Catalog,
    b: &TapeBackup,
    password: &[u8],
    target: &Path,
    opts: &TapeRestoreOptions,
    events: &dyn TapeEvents,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<TapeRestoreReport> {
    let mut f = fetcher(catalog, &b.media_set, opts.mount_timeout, events, cancel)?;
    let info = read_info(&mut f, &b.snapshot)?;
    let parent = opts.staging.clone().unwrap_or_else(std::env::temp_dir);
    let staging = tempfile::Builder::new()
        .prefix(".kura-tape-restore-")
        .tempdir_in(&parent)
        .map_err(|e| Error::Invalid(format!("staging directory in {}: {e}", parent.display())))?;
    let backend = Arc::new(LocalBackend::new(staging.path()));
    backend.create()?;
    let put =
        |kind: FileKind, f: &label::RepoFile| backend.put(kind, &f.name, f.bytes.to_vec().into());
    put(FileKind::Config, &info.config)?;
    for k in &info.keys {
        put(FileKind::Key, k)?;
    }
    put(FileKind::Index, &info.index_file)?;
    put(FileKind::Snapshot, &info.snapshot_file)?;
    let repo = Repository::open(backend.clone(), password)?.load_index()?;
    let snap = repo.find_snapshot(&b.snapshot)?;
    let mut put_pack = |name: &str, data: Vec<u8>, _damaged: bool| -> Result<()> {
        backend.put(FileKind::Pack, name, data.into())?;
        Ok(())
    };
    let all: Vec<String> = info.packs.iter().map(|p| p.id.clone()).collect();
    if opts.restore.includes.is_empty() {
        f.fetch(&all, &mut put_pack)?;
    } else {
        // Trees first, then what the matching files need.
        let mut tree_packs: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for l in repo.index().iter() {
            if l.ty == BlobType::Tree && seen.insert(l.pack) {
                tree_packs.push(l.pack.to_hex());
            }
        }
        f.fetch(&tree_packs, &mut put_pack)?;
        let blobs = kura_repo::needs::blobs_needed(&repo, &snap.snapshot, &opts.restore.includes)?;
        let need: Vec<String> = kura_repo::needs::packs_for(&repo, &blobs)?
            .into_iter()
            .map(|p| p.id.to_hex())
            .filter(|h| !tree_packs.contains(h))
            .collect();
        f.fetch(&need, &mut put_pack)?;
    }
    let _ = f.reader.put_away();
    let lock = RepoLock::none(&repo);
    let outcome =
        kura_repo::restore::restore(&repo, &lock, &snap, target, &opts.restore, progress, cancel)?;
    let mut report = std::mem::take(&mut f.report);
    report.snapshot = b.snapshot.clone();
    report.outcome = Some(outcome);
    Ok(report)
}
