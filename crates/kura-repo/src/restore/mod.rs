//! Restore: from a snapshot to a directory (file trees) or to a file or block device (images).
//!
//! # Safety
//! Names come from trees, which [`crate::tree::Tree::decode`] has validated (no `/`, `.`,
//! `..`, NUL, duplicates). Paths are built component by component under the target; an
//! existing symlink where a directory is to be created is refused, and files are opened with
//! `O_NOFOLLOW`, so nothing is written outside the target even if the target already holds
//! symlinks from an earlier, hostile restore.
//!
//! # Order
//! The walker creates directories, symlinks, special files and files without stored data;
//! files with data are planned in batches and written by [`fetch`] (many files, pack by pack,
//! in parallel). The worker that writes a file's last chunk sets its size, owner, mode,
//! xattrs and times through its open descriptor, so metadata work is parallel too and takes
//! no path lookups. Directory metadata comes last (deepest first), because creating entries
//! changes a directory's mtime. Inside directories this restore created, nothing can be in
//! the way, so entries are created without a prior `lstat`.

mod fetch;
pub(crate) mod image;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::backup::CancelToken;
use crate::error::{Error, Result};
use crate::fsmeta::{apply_metadata, apply_metadata_fd, can_chown};
use crate::id::Id;
use crate::lock::{RepoLock, Shared};
use crate::progress::Progress;
use crate::repo::IndexedRepo;
use crate::snapshot::{Content, SnapshotEntry};
use crate::tree::{ChunkRef, Node, NodeKind};

use fetch::{BlobJob, Sink, fetch_all};
pub(crate) use image::load_fixed_index;

/// Options of `kura restore`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Glob patterns over snapshot paths (`/home/a/docs/**`, `*.conf`); empty = everything.
    /// A matching directory is restored whole.
    pub includes: Vec<String>,
    /// Parallel pack readers.
    pub threads: usize,
    /// Plan at most this many chunk writes before fetching (bounds memory).
    pub batch_chunks: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            includes: Vec::new(),
            threads: 4,
            batch_chunks: 200_000,
        }
    }
}

/// A file that could not be restored completely.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub path: String,
    pub reason: String,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreOutcome {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    /// Files whose contents could not be restored (missing or corrupt data).
    pub damaged: Vec<Damaged>,
    /// Entries refused or partly restored (hostile names, metadata that could not be set).
    pub errors: Vec<String>,
}

/// Restore `snap` to `target`. For an image, `target` is a file, a block device, or an
/// existing directory (the image is written there under its source's name).
pub fn restore(
    repo: &IndexedRepo,
    _lock: &RepoLock<Shared>,
    snap: &SnapshotEntry,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreOutcome> {
    match &snap.snapshot.content {
        Content::Image(info) => {
            if !opts.includes.is_empty() {
                return Err(Error::InvalidInput(
                    "--include does not apply to image snapshots".into(),
                ));
            }
            image::restore_image(repo, info, target, opts, progress, cancel)
        }
        Content::Tree { root } => {
            let mut gs = GlobSetBuilder::new();
            for p in &opts.includes {
                gs.add(Glob::new(p).map_err(|e| {
                    Error::InvalidInput(format!("invalid include pattern {p:?}: {e}"))
                })?);
            }
            let includes = gs
                .build()
                .map_err(|e| Error::InvalidInput(format!("include patterns: {e}")))?;
            fs::create_dir_all(target)
                .map_err(|e| Error::io(format!("create target {}", target.display()), e))?;
            let mut r = TreeRestorer {
                repo,
                opts,
                includes,
                progress,
                cancel,
                chown: can_chown(),
                outcome: RestoreOutcome::default(),
                files: Vec::new(),
                jobs: HashMap::new(),
                planned: 0,
                hardlinks: HashMap::new(),
                dirs: Vec::new(),
                pre_damaged: HashMap::new(),
            };
            progress.start("restore", None);
            let all = opts.includes.is_empty();
            r.walk(root, target, Path::new("/"), &mut Vec::new(), all, false)?;
            r.flush()?;
            for (path, node) in r.dirs.iter().rev() {
                if let Err(e) = apply_metadata(path, node, r.chown) {
                    r.outcome
                        .errors
                        .push(format!("{}: metadata: {e}", path.display()));
                }
            }
            progress.finish();
            Ok(r.outcome)
        }
    }
}

/// A file whose contents are being fetched.
struct PlannedFile {
    path: PathBuf,
    node: Node,
    /// Chunk writes still to come; the writer that brings it to zero finishes the file.
    remaining: AtomicU32,
}

/// A directory on the way to an included entry; created on first need.
struct PendingDir {
    path: PathBuf,
    node: Node,
    created: bool,
}

struct TreeRestorer<'a> {
    repo: &'a IndexedRepo,
    opts: &'a RestoreOptions,
    includes: GlobSet,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    chown: bool,
    outcome: RestoreOutcome,
    /// Files of the current batch.
    files: Vec<PlannedFile>,
    jobs: HashMap<Id, Vec<(u32, u64)>>,
    planned: usize,
    /// (dev, inode) of multiply-linked files → the path restored first.
    hardlinks: HashMap<(u64, u64), PathBuf>,
    /// Directories created, in creation order, for metadata at the end.
    dirs: Vec<(PathBuf, Node)>,
    /// Files of the current batch known to be damaged before fetching.
    pre_damaged: HashMap<u32, String>,
}

fn os(name: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(name)
}

/// Open (creating if needed) a file being restored, never following a symlink.
fn open_restored(path: &Path, create_new: bool) -> io::Result<fs::File> {
    let mut o = OpenOptions::new();
    o.write(true).custom_flags(libc::O_NOFOLLOW).mode(0o600);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    o.open(path)
}

impl TreeRestorer<'_> {
    fn error(&mut self, msg: String) {
        tracing::debug!("{msg}");
        self.progress.warn(&msg);
        self.outcome.errors.push(msg);
    }

    /// Walk the tree `id` whose entries go below `dir` (on disk) and `snap_path` (in the
    /// snapshot). `pending` holds ancestor directories (with includes, a directory is created
    /// only when something in it is restored). `all` = an ancestor matched the include
    /// patterns (or there are none). `fresh` = `dir` was created by this restore.
    fn walk(
        &mut self,
        id: &Id,
        dir: &Path,
        snap_path: &Path,
        pending: &mut Vec<PendingDir>,
        all: bool,
        fresh: bool,
    ) -> Result<()> {
        let tree = match self.repo.load_tree(id) {
            Ok(t) => t,
            Err(e) if e.is_data_damage() => {
                let msg = format!("{}: directory contents lost: {e}", snap_path.display());
                self.outcome.damaged.push(Damaged {
                    path: snap_path.display().to_string(),
                    reason: e.to_string(),
                });
                self.error(msg);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for node in tree.nodes {
            self.cancel.check()?;
            let path = dir.join(os(&node.name));
            let spath = snap_path.join(os(&node.name));
            let included = all || self.includes.is_match(&spath);
            if node.kind == NodeKind::Dir {
                let Some(sub) = node.subtree else { continue };
                pending.push(PendingDir {
                    path: path.clone(),
                    node,
                    created: false,
                });
                let mut child_fresh = false;
                if included {
                    child_fresh = self.create_pending(pending, fresh)?;
                }
                self.walk(&sub, &path, &spath, pending, included, child_fresh)?;
                pending.pop();
                continue;
            }
            if !included {
                continue;
            }
            let parent_fresh = self.create_pending(pending, fresh)?;
            if let Err(e) = self.restore_entry(&path, node, parent_fresh) {
                let msg = format!("{}: {e}", spath.display());
                self.error(msg);
            }
            if self.planned >= self.opts.batch_chunks {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Create the directories in `pending` that do not exist yet. Returns whether the last
    /// one is fresh (created now or earlier by this restore, so it was empty). `fresh` says
    /// whether the first one's parent is.
    fn create_pending(&mut self, pending: &mut [PendingDir], mut fresh: bool) -> Result<bool> {
        for d in pending.iter_mut() {
            if d.created {
                fresh = true;
                continue;
            }
            let existing = if fresh {
                None
            } else {
                fs::symlink_metadata(&d.path).ok()
            };
            match existing {
                Some(md) if md.is_dir() => fresh = false,
                Some(md) if md.file_type().is_symlink() => {
                    return Err(Error::InvalidInput(format!(
                        "refusing to restore into {}: it is a symlink",
                        d.path.display()
                    )));
                }
                Some(_) => {
                    return Err(Error::InvalidInput(format!(
                        "cannot restore directory {}: a non-directory is in the way",
                        d.path.display()
                    )));
                }
                None => {
                    fs::create_dir(&d.path).map_err(|e| {
                        Error::io(format!("create directory {}", d.path.display()), e)
                    })?;
                    fresh = true;
                }
            }
            self.outcome.dirs += 1;
            let mut meta = d.node.clone();
            meta.subtree = None;
            self.dirs.push((d.path.clone(), meta));
            d.created = true;
        }
        Ok(fresh)
    }

    fn restore_entry(&mut self, path: &Path, node: Node, parent_fresh: bool) -> io::Result<()> {
        // Replace whatever non-directory is in the way (restore overwrites).
        if !parent_fresh && let Ok(md) = fs::symlink_metadata(path) {
            if md.is_dir() {
                return Err(io::Error::other("a directory is in the way"));
            }
            fs::remove_file(path)?;
        }
        let multiply_linked = node.links > 1;
        if multiply_linked {
            if let Some(first) = self.hardlinks.get(&(node.dev, node.inode)) {
                fs::hard_link(first, path)?;
                self.outcome.files += u64::from(node.kind == NodeKind::File);
                return Ok(());
            }
            self.hardlinks
                .insert((node.dev, node.inode), path.to_path_buf());
        }
        match node.kind {
            NodeKind::File => return self.plan_file(path, node, multiply_linked),
            NodeKind::Symlink => {
                let target = node.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(os(target), path)?;
            }
            NodeKind::Fifo => mknod(path, libc::S_IFIFO | (node.mode & 0o7777), 0)?,
            NodeKind::Blockdev => mknod(path, libc::S_IFBLK | (node.mode & 0o7777), node.rdev)?,
            NodeKind::Chardev => mknod(path, libc::S_IFCHR | (node.mode & 0o7777), node.rdev)?,
            NodeKind::Socket => return Ok(()), // sockets are not restorable; skipped
            NodeKind::Dir => return Err(io::Error::other("directory handled by the walker")),
        }
        self.outcome.other += 1;
        apply_metadata(path, &node, self.chown)
    }

    /// A regular file: created now if it has no stored data (or is the first of a hardlink
    /// group, which later links need to exist), else planned for the fetchers.
    fn plan_file(&mut self, path: &Path, node: Node, create_now: bool) -> io::Result<()> {
        let idx = self.files.len() as u32;
        let mut off = 0u64;
        let mut writes = 0u32;
        let mut damage = None;
        for c in node.content.iter().flatten() {
            match c {
                ChunkRef::Zero(n) => off += n,
                ChunkRef::Blob(id) => match self.repo.index().get(id) {
                    Some(loc) => {
                        self.jobs.entry(*id).or_default().push((idx, off));
                        writes += 1;
                        off += loc.raw_length as u64;
                    }
                    None => {
                        // Later chunks' offsets are unknown without this one's length.
                        damage = Some(format!(
                            "data blob {} is in no index (pack lost?); restored up to offset {off}",
                            id.short()
                        ));
                        break;
                    }
                },
            }
        }
        if damage.is_none() && off != node.size {
            damage = Some(format!(
                "chunks add up to {off} bytes, the tree says {}",
                node.size
            ));
        }
        self.outcome.files += 1;
        self.outcome.bytes += node.size;
        self.progress.add_total(node.size, 1);
        if writes == 0 {
            let f = open_restored(path, true)?;
            f.set_len(node.size)?;
            if let Some(reason) = damage {
                self.outcome.damaged.push(Damaged {
                    path: path.display().to_string(),
                    reason,
                });
            }
            return apply_metadata_fd(&f, &node, self.chown);
        }
        if create_now {
            open_restored(path, true)?;
        }
        if let Some(reason) = damage {
            self.pre_damaged.insert(idx, reason);
        }
        self.planned += writes as usize;
        self.files.push(PlannedFile {
            path: path.to_path_buf(),
            node,
            remaining: AtomicU32::new(writes),
        });
        Ok(())
    }

    /// Fetch the current batch's contents; the sink finishes each file as its last chunk
    /// lands.
    fn flush(&mut self) -> Result<()> {
        let jobs: Vec<BlobJob> = self
            .jobs
            .drain()
            .map(|(id, dests)| BlobJob { id, dests })
            .collect();
        self.planned = 0;
        let files = std::mem::take(&mut self.files);
        let sink = FileSink {
            files: &files,
            chown: self.chown,
            damaged: Mutex::new(std::mem::take(&mut self.pre_damaged)),
            errors: Mutex::new(Vec::new()),
        };
        fetch_all(
            self.repo,
            jobs,
            &sink,
            self.opts.threads,
            self.progress,
            self.cancel,
        )?;
        let damaged = sink.damaged.into_inner().unwrap_or_default();
        self.outcome
            .errors
            .extend(sink.errors.into_inner().unwrap_or_default());
        for (i, f) in files.iter().enumerate() {
            if let Some(reason) = damaged.get(&(i as u32)) {
                let msg = format!("{}: damaged: {reason}", f.path.display());
                tracing::debug!("{msg}");
                self.progress.warn(&msg);
                self.outcome.damaged.push(Damaged {
                    path: f.path.display().to_string(),
                    reason: reason.clone(),
                });
            }
        }
        Ok(())
    }
}

fn mknod(path: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct FileSink<'a> {
    files: &'a [PlannedFile],
    chown: bool,
    damaged: Mutex<HashMap<u32, String>>,
    errors: Mutex<Vec<String>>,
}

impl FileSink<'_> {
    /// One chunk of `dest` is done (written or lost); the last one finishes the file: final
    /// size (a trailing zero run is a hole), then metadata, through the open descriptor.
    fn chunk_done(&self, f: &PlannedFile, file: Option<fs::File>) {
        if f.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let file = match file {
            Some(file) => Ok(file),
            None => open_restored(&f.path, false),
        };
        let r = file.and_then(|file| {
            file.set_len(f.node.size)?;
            apply_metadata_fd(&file, &f.node, self.chown)
        });
        if let Err(e) = r
            && let Ok(mut errs) = self.errors.lock()
        {
            errs.push(format!("{}: metadata: {e}", f.path.display()));
        }
    }
}

impl Sink for FileSink<'_> {
    fn write(&self, dest: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self
            .files
            .get(dest as usize)
            .ok_or_else(|| io::Error::other("no such destination"))?;
        let file = open_restored(&f.path, false)?;
        let r = fetch::write_sparse(&file, offset, data);
        if r.is_ok() {
            self.chunk_done(f, Some(file));
        }
        r
    }

    fn damaged(&self, dest: u32, reason: String) {
        if let Ok(mut d) = self.damaged.lock() {
            d.entry(dest).or_insert(reason);
        }
        if let Some(f) = self.files.get(dest as usize) {
            self.chunk_done(f, None);
        }
    }
}
