//! Backup: from a file tree or an image to a snapshot.
//!
//! The work is a pipeline so that both cores stay busy and memory stays bounded:
//! a **walker** thread lists directories (and decides, per file, whether the parent snapshot's
//! entry can be reused without reading); **reader** threads read and chunk files and hash
//! chunks; the [`saver`] encodes, packs and uploads new blobs; an **assembler** thread turns
//! finished directories into tree blobs, children before parents. The snapshot is written only
//! after the saver has made every blob durable and indexed, so an interrupted backup leaves no
//! snapshot and its packs are reused by the next run.

mod image;
mod oneshot;
pub(crate) mod saver;
mod source;
mod walk;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::lock::{RepoLock, Shared};
use crate::progress::Progress;
use crate::repo::{IndexedRepo, validate_compression};
use crate::snapshot::{Content, Snapshot, SnapshotEntry};
use crate::util::{Timestamp, hostname, username};

use saver::{SaverConfig, SaverStats};

/// Cooperative cancellation (SIGINT). Cloned into every pipeline thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// Which snapshot a file-tree backup compares against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The newest snapshot of the same host and the same paths.
    #[default]
    Auto,
    /// This snapshot (id or prefix, or `latest`).
    Snapshot(String),
    /// None: read every file.
    None,
}

/// Options of `kura backup`; shared by the CLI flags and the `[backup]` config section.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this machine's).
    pub host: Option<String>,
    pub parent: ParentChoice,
    /// Glob patterns matched against absolute paths; matches are left out.
    pub excludes: Vec<String>,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    /// Treat regular files given as sources as images (fixed 4 MiB chunks).
    pub image: bool,
    /// zstd level (default: the repository's).
    pub compression: Option<i32>,
    /// Threads reading and chunking files.
    pub readers: usize,
    /// Threads compressing and encrypting.
    pub encoders: usize,
    /// Threads uploading packs.
    pub uploaders: usize,
    /// Bytes of chunk data queued between readers and packer at most.
    pub inflight_bytes: usize,
    /// Close an *extent* (write an index file listing the packs since the last one) once
    /// this many pack bytes were uploaded. A fail-over backend acknowledges extents at their
    /// index file; `None` keeps the default cadence (every 16 packs or 5 minutes).
    pub extent_bytes: Option<u64>,
    /// Changed-block tracking for an image backup whose parent (`parent` must name it) is an
    /// image of the same size: only these byte ranges changed since the parent; every 4 MiB
    /// chunk outside them is taken from the parent's fixed index without being read. `None`
    /// reads everything.
    pub changed_ranges: Option<Vec<(u64, u64)>>,
    /// Read the image through this instead of the source file (which still names the
    /// snapshot's path and gives its kind): the volume engine's frozen views — a backup
    /// session reading blocks from the volume or its working volume, a split pair's
    /// secondary. `None` reads the source file.
    pub image_source: Option<ImageReader>,
}

/// A byte-addressed image a backup reads instead of its source file.
pub trait ImageSource: Send + Sync {
    fn size(&self) -> u64;
    /// Fill `buf` from `offset` (within [`size`](Self::size)).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// An [`ImageSource`] in [`BackupOptions`] (cloneable, printable).
#[derive(Clone)]
pub struct ImageReader(pub std::sync::Arc<dyn ImageSource>);

impl std::fmt::Debug for ImageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageReader({} bytes)", self.0.size())
    }
}

impl Default for BackupOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        BackupOptions {
            tags: Vec::new(),
            host: None,
            parent: ParentChoice::Auto,
            excludes: Vec::new(),
            one_file_system: false,
            image: false,
            compression: None,
            readers: 2,
            encoders: cores,
            uploaders: 2,
            inflight_bytes: 32 << 20,
            extent_bytes: None,
            changed_ranges: None,
            image_source: None,
        }
    }
}

/// What a backup produced.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
    /// Entries that could not be read (left out of the snapshot).
    pub warnings: Vec<String>,
    pub parent: Option<Id>,
}

/// Absolute, lexically normalised (no `.`/`..`), without following symlinks.
pub fn absolute_path(p: &Path) -> Result<PathBuf> {
    let abs =
        std::path::absolute(p).map_err(|e| Error::io(format!("source {}", p.display()), e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

fn path_bytes(p: &Path) -> ByteBuf {
    use std::os::unix::ffi::OsStrExt;
    ByteBuf::from(p.as_os_str().as_bytes().to_vec())
}

/// Back up `sources` (after `kura backup`'s argument rules: one image, or any number of files
/// and directories). Requires a shared lock.
pub fn backup(
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    sources: &[PathBuf],
    opts: &BackupOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<BackupOutcome> {
    if sources.is_empty() {
        return Err(Error::InvalidInput(
            "nothing to back up: no paths given".into(),
        ));
    }
    let compression = opts.compression.unwrap_or(repo.config().compression);
    validate_compression(compression)?;
    let mut paths = Vec::new();
    for s in sources {
        let abs = absolute_path(s)?;
        std::fs::symlink_metadata(&abs)
            .map_err(|e| Error::io(format!("source {}", abs.display()), e))?;
        paths.push(abs);
    }
    paths.sort();
    paths.dedup();
    let image_source = match paths.as_slice() {
        [one] => image::is_image_source(one, opts.image)?,
        many => {
            for p in many {
                if image::is_image_source(p, opts.image)? {
                    return Err(Error::InvalidInput(format!(
                        "{} is an image source; images are backed up one per snapshot",
                        p.display()
                    )));
                }
            }
            false
        }
    };
    let host = opts.host.clone().unwrap_or_else(hostname);
    let snapshot_paths: Vec<ByteBuf> = paths.iter().map(|p| path_bytes(p)).collect();
    let parent = find_parent(repo, opts, &host, &snapshot_paths, image_source)?;

    let start = Timestamp::now();
    let stats = SaverStats::default();
    let cfg = SaverConfig {
        encoders: opts.encoders,
        uploaders: opts.uploaders,
        inflight_bytes: opts.inflight_bytes,
        compression,
        extent_bytes: opts.extent_bytes,
    };
    let (content, mut summary, warnings) = if image_source {
        let reuse = match (&opts.changed_ranges, parent.as_ref()) {
            (None, _) => None,
            (Some(ranges), Some(p)) => match &p.snapshot.content {
                Content::Image(pi) => Some(image::Reuse {
                    parent_size: pi.size,
                    parent_chunk: pi.chunk_size,
                    ids: crate::restore::load_fixed_index(repo, pi)?,
                    changed: ranges.clone(),
                }),
                Content::Tree { .. } => {
                    return Err(Error::InvalidInput(
                        "changed ranges need an image parent snapshot".into(),
                    ));
                }
            },
            (Some(_), None) => {
                return Err(Error::InvalidInput(
                    "changed ranges need a parent snapshot to take the rest from".into(),
                ));
            }
        };
        let (info, summary) = saver::run(repo, lock, cfg, &stats, progress, |saver| {
            image::backup_image(saver, &paths[0], opts, reuse.as_ref(), progress, cancel)
        })?;
        (Content::Image(info), summary, Vec::new())
    } else {
        let parent_root = match parent.as_ref().map(|p| &p.snapshot.content) {
            Some(Content::Tree { root }) => Some(*root),
            _ => None,
        };
        let (root, summary, warnings) = saver::run(repo, lock, cfg, &stats, progress, |saver| {
            walk::backup_tree(saver, repo, &paths, parent_root, opts, progress, cancel)
        })?;
        (Content::Tree { root }, summary, warnings)
    };
    cancel.check()?;
    summary.backup_start = start;
    summary.backup_end = Timestamp::now();
    summary.data_blobs_new = stats.data_blobs_new.load(Ordering::Relaxed);
    summary.tree_blobs_new = stats.tree_blobs_new.load(Ordering::Relaxed);
    summary.bytes_added_raw = stats.bytes_added_raw.load(Ordering::Relaxed);
    summary.bytes_added = stats.bytes_added.load(Ordering::Relaxed);
    summary.warnings = warnings.len() as u64;
    let snapshot = Snapshot {
        v: 1,
        time: start,
        host,
        username: username(),
        paths: snapshot_paths,
        tags: opts.tags.clone(),
        parent: parent.as_ref().map(|p| p.id),
        content,
        summary,
        original: None,
    };
    let id = commit_snapshot(repo, lock, &snapshot)?;
    Ok(BackupOutcome {
        id,
        snapshot,
        warnings,
        parent: parent.map(|p| p.id),
    })
}

/// Write the snapshot only if the lock was kept the whole time, and take it back if the lock
/// turns out lost once it is written (the process may have been stopped in between).
///
/// Why this is enough: every blob the backup references is one it stored, or one it found in a
/// pack that was not condemned when it loaded the index (after taking its lock). Such a pack
/// can be condemned later, but a prune deletes it only once no lock taken before the
/// condemnation is live, so while our lock is live it stays; a prune that runs after we release
/// the lock sees our snapshot (written before the release) and recovers the pack. Only a lock
/// that others may have judged stale breaks that chain — which `verify` detects.
pub(crate) fn commit_snapshot(
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    snapshot: &Snapshot,
) -> Result<Id> {
    lock.verify()?;
    let id = repo.save_snapshot(snapshot)?;
    if let Err(e) = lock.verify() {
        if let Err(d) = repo
            .backend()
            .delete(kura_backend::FileKind::Snapshot, &id.to_hex())
        {
            tracing::error!(
                "snapshot {} written with a lost lock could not be removed: {d}; \
                 remove it with `kura forget {}`",
                id.short(),
                id.short()
            );
        }
        return Err(e);
    }
    Ok(id)
}

fn find_parent(
    repo: &IndexedRepo,
    opts: &BackupOptions,
    host: &str,
    paths: &[ByteBuf],
    image: bool,
) -> Result<Option<SnapshotEntry>> {
    match &opts.parent {
        ParentChoice::None => Ok(None),
        ParentChoice::Snapshot(spec) => {
            let p = repo.find_snapshot(spec)?;
            if p.snapshot.is_image() != image {
                return Err(Error::InvalidInput(format!(
                    "parent snapshot {} is {} snapshot, this backup is not",
                    p.id.short(),
                    if image { "a file-tree" } else { "an image" }
                )));
            }
            Ok(Some(p))
        }
        ParentChoice::Auto => Ok(repo.readable_snapshots()?.into_iter().rev().find(|s| {
            s.snapshot.host == host && s.snapshot.paths == paths && s.snapshot.is_image() == image
        })),
    }
}
