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
//! Directories and files are created while walking the tree; file contents are fetched in
//! batches by [`fetch`] (many files, pack by pack, in parallel); file metadata is applied after
//! a batch's contents are written, directory metadata last (deepest first), because writing
//! into a directory changes its mtime.

mod fetch;
pub(crate) mod image;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::backup::CancelToken;
use crate::error::{Error, Result};
use crate::fsmeta::{apply_metadata, can_chown};
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
            r.walk(root, target, Path::new("/"), &mut Vec::new(), opts.includes.is_empty())?;
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

struct PlannedFile {
    path: PathBuf,
    node: Node,
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

impl TreeRestorer<'_> {
    fn error(&mut self, msg: String) {
        tracing::debug!("{msg}");
        self.progress.warn(&msg);
        self.outcome.errors.push(msg);
    }

    /// Walk the tree `id` whose entries go below `dir` (on disk) and `snap_path` (in the
    /// snapshot). `pending` holds ancestor directories not yet created (with includes, a
    /// directory is created only when something in it is restored). `all` = an ancestor
    /// matched the include patterns (or there are none).
    fn walk(
        &mut self,
        id: &Id,
        dir: &Path,
        snap_path: &Path,
        pending: &mut Vec<(PathBuf, Node)>,
        all: bool,
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
                pending.push((path.clone(), node));
                if included {
                    self.create_pending(pending)?;
                }
                self.walk(&sub, &path, &spath, pending, included)?;
                pending.pop();
                continue;
            }
            if !included {
                continue;
            }
            self.create_pending(pending)?;
            if let Err(e) = self.restore_entry(&path, node) {
                let msg = format!("{}: {e}", spath.display());
                self.error(msg);
            }
            if self.planned >= self.opts.batch_chunks {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Create the directories in `pending` that do not exist yet.
    fn create_pending(&mut self, pending: &mut [(PathBuf, Node)]) -> Result<()> {
        for (path, node) in pending.iter_mut() {
            if node.kind != NodeKind::Dir || node.subtree.is_none() {
                continue; // already created (marked by clearing the subtree)
            }
            match fs::symlink_metadata(path.as_path()) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(Error::InvalidInput(format!(
                        "refusing to restore into {}: it is a symlink",
                        path.display()
                    )));
                }
                Ok(_) => {
                    return Err(Error::InvalidInput(format!(
                        "cannot restore directory {}: a non-directory is in the way",
                        path.display()
                    )));
                }
                Err(_) => fs::create_dir(path.as_path())
                    .map_err(|e| Error::io(format!("create directory {}", path.display()), e))?,
            }
            self.outcome.dirs += 1;
            let mut meta = node.clone();
            meta.subtree = None;
            self.dirs.push((path.clone(), meta));
            node.subtree = None;
        }
        Ok(())
    }

    fn restore_entry(&mut self, path: &Path, node: Node) -> io::Result<()> {
        // Replace whatever non-directory is in the way (restore overwrites).
        if let Ok(md) = fs::symlink_metadata(path) {
            if md.is_dir() {
                return Err(io::Error::other("a directory is in the way"));
            }
            fs::remove_file(path)?;
        }
        if node.links > 1 && node.kind != NodeKind::Dir {
            if let Some(first) = self.hardlinks.get(&(node.dev, node.inode)) {
                fs::hard_link(first, path)?;
                self.outcome.files += u64::from(node.kind == NodeKind::File);
                return Ok(());
            }
            self.hardlinks
                .insert((node.dev, node.inode), path.to_path_buf());
        }
        match node.kind {
            NodeKind::File => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(path)?;
                // The final size up front: zero runs stay holes.
                f.set_len(node.size)?;
                let idx = self.files.len() as u32;
                let mut off = 0u64;
                for c in node.content.iter().flatten() {
                    match c {
                        ChunkRef::Zero(n) => off += n,
                        ChunkRef::Blob(id) => match self.repo.index().get(id) {
                            Some(loc) => {
                                self.jobs.entry(*id).or_default().push((idx, off));
                                self.planned += 1;
                                off += loc.raw_length as u64;
                            }
                            None => {
                                // Later chunks' offsets are unknown without this one's length.
                                self.pre_damaged.insert(
                                    idx,
                                    format!("data blob {} is in no index (pack lost?); \
                                             restored up to offset {off}", id.short()),
                                );
                                break;
                            }
                        },
                    }
                }
                if off != node.size && !self.pre_damaged.contains_key(&idx) {
                    self.pre_damaged.insert(
                        idx,
                        format!("chunks add up to {off} bytes, the tree says {}", node.size),
                    );
                }
                self.progress.add_total(node.size, 1);
                self.outcome.files += 1;
                self.outcome.bytes += node.size;
                self.files.push(PlannedFile {
                    path: path.to_path_buf(),
                    node,
                });
                return Ok(());
            }
            NodeKind::Symlink => {
                let target = node.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(os(target), path)?;
            }
            NodeKind::Fifo => mknod(path, libc::S_IFIFO | (node.mode & 0o7777), 0)?,
            NodeKind::Blockdev => mknod(path, libc::S_IFBLK | (node.mode & 0o7777), node.rdev)?,
            NodeKind::Chardev => mknod(path, libc::S_IFCHR | (node.mode & 0o7777), node.rdev)?,
            NodeKind::Socket => return Ok(()), // sockets are not restorable; skipped
            NodeKind::Dir => unreachable_dir()?,
        }
        self.outcome.other += 1;
        apply_metadata(path, &node, self.chown)
    }

    /// Fetch the current batch's contents, then set its files' metadata.
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
            damaged: Mutex::new(std::mem::take(&mut self.pre_damaged)),
        };
        fetch_all(self.repo, jobs, &sink, self.opts.threads, self.progress, self.cancel)?;
        let damaged = sink.damaged.into_inner().unwrap_or_default();
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
            if let Err(e) = apply_metadata(&f.path, &f.node, self.chown) {
                self.outcome
                    .errors
                    .push(format!("{}: metadata: {e}", f.path.display()));
            }
        }
        Ok(())
    }
}

fn unreachable_dir() -> io::Result<()> {
    Err(io::Error::other("directory handled by the walker"))
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
    damaged: Mutex<HashMap<u32, String>>,
}

impl Sink for FileSink<'_> {
    fn write(&self, dest: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self
            .files
            .get(dest as usize)
            .ok_or_else(|| io::Error::other("no such destination"))?;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&f.path)?;
        fetch::write_sparse(&file, offset, data)
    }

    fn damaged(&self, dest: u32, reason: String) {
        if let Ok(mut d) = self.damaged.lock() {
            d.entry(dest).or_insert(reason);
        }
    }
}
