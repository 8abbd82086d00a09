//! File-tree backup: walker, readers and tree assembler (see the parent module's docs).
//!
//! The walker visits directories depth-first in name order and emits, per directory, a
//! [`PendingDir`] in post-order (children before parents). A file either reuses its parent
//! snapshot's chunk list (size, mtime, ctime and inode unchanged and every chunk still
//! indexed) or becomes a [`FileJob`] for the readers, whose result the assembler awaits
//! through a one-shot channel. Because the walker never waits for file contents, it stays
//! ahead of the readers by at most the bounded job queue.
//!
//! Trees of any depth: a path longer than the kernel's `PATH_MAX` cannot be passed to a
//! system call, so beyond [`LONG_PATH`] bytes the walker opens an `O_PATH` descriptor of the
//! directory (an [`Anchor`]) and names everything under it `/proc/self/fd/N/REST`, a short
//! path the kernel resolves through the descriptor. Readers hold the anchor while they read.
//!
//! Source files are opened with `O_NONBLOCK | O_NOFOLLOW | O_NOCTTY` and checked through the
//! descriptor against the walker's `lstat` ([`open_source`]): a file swapped for a FIFO,
//! device, symlink or directory is never read or waited on. A file whose size, mtime or
//! ctime moved while it was read is saved as read and counted (`files_changed_while_read`).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, bounded};
use globset::{Glob, GlobSet, GlobSetBuilder};

use super::oneshot::{SlotRx, SlotTx, slot};
use super::saver::Saver;
use super::source::open_source;
use super::{BackupOptions, CancelToken};
use crate::chunker::{Cdc, is_zero};
use crate::error::{Error, Result};
use crate::format::BlobType;
use crate::fsmeta::{node_from_metadata, read_xattrs};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::IndexedRepo;
use crate::snapshot::Summary;
use crate::tree::{ChunkRef, Node, NodeKind, Tree};

/// New or changed, for the summary.
#[derive(Debug, Clone, Copy)]
enum FileStatus {
    New,
    Changed,
}

struct FileJob {
    /// The path to open (possibly `/proc/self/fd/N/…` under an anchor).
    path: PathBuf,
    /// The path as the user knows it, for messages.
    shown: PathBuf,
    /// Keeps the anchor descriptor `path` goes through open until the file is read.
    _anchor: Option<Arc<OwnedFd>>,
    /// What the walker's `lstat` saw; the reader reads only that same regular file.
    seen: Seen,
    result: SlotTx<FileResult>,
}

/// The identity and version of a file as the walker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Seen {
    fn of(md: &std::fs::Metadata) -> Seen {
        Seen {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// A file read whole: its chunks and the bytes read.
struct ReadFile {
    chunks: Vec<ChunkRef>,
    size: u64,
}

/// `Err` is a warning: the file is left out.
type FileResult = std::result::Result<ReadFile, String>;

enum PendingNode {
    Ready(Node),
    File {
        node: Node,
        status: FileStatus,
        rx: SlotRx<FileResult>,
    },
    Dir {
        node: Node,
        token: usize,
    },
}

struct PendingDir {
    token: usize,
    nodes: Vec<PendingNode>,
}

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    other: AtomicU64,
    total_bytes: AtomicU64,
    bytes_read: AtomicU64,
    changed_while_read: AtomicU64,
}

/// Shared state of one tree backup.
struct Ctx<'a> {
    repo: &'a IndexedRepo,
    saver: &'a Saver<'a>,
    opts: &'a BackupOptions,
    excludes: GlobSet,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    counters: Counters,
    warnings: Mutex<Vec<String>>,
}

impl Ctx<'_> {
    /// A warning that loses nothing (the entry is saved): shown, not counted as left out.
    fn notice(&self, msg: String) {
        tracing::debug!("{msg}");
        self.progress.warn(&msg);
    }

    fn warn(&self, msg: String) {
        tracing::debug!("{msg}");
        self.progress.warn(&msg);
        if let Ok(mut w) = self.warnings.lock() {
            w.push(msg);
        }
    }
}

/// Intermediate directories from `/` to the backed-up paths.
#[derive(Default)]
struct VirtualDir {
    children: BTreeMap<Vec<u8>, VirtualEntry>,
}

enum VirtualEntry {
    Dir(VirtualDir),
    Source,
}

fn virtual_root(paths: &[PathBuf]) -> VirtualEntry {
    let mut root = VirtualEntry::Dir(VirtualDir::default());
    for p in paths {
        let comps: Vec<Vec<u8>> = p
            .components()
            .skip(1)
            .map(|c| c.as_os_str().as_bytes().to_vec())
            .collect();
        let mut cur = &mut root;
        for c in comps {
            cur = match cur {
                VirtualEntry::Source => break, // an ancestor is already backed up whole
                VirtualEntry::Dir(d) => d
                    .children
                    .entry(c)
                    .or_insert_with(|| VirtualEntry::Dir(VirtualDir::default())),
            };
        }
        *cur = match cur {
            VirtualEntry::Source => VirtualEntry::Source,
            VirtualEntry::Dir(_) => VirtualEntry::Source,
        };
    }
    root
}

pub(super) fn backup_tree(
    saver: &Saver<'_>,
    repo: &IndexedRepo,
    paths: &[PathBuf],
    parent_root: Option<Id>,
    opts: &BackupOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<(Id, Summary, Vec<String>)> {
    let mut gs = GlobSetBuilder::new();
    for pat in &opts.excludes {
        gs.add(
            Glob::new(pat).map_err(|e| {
                Error::InvalidInput(format!("invalid exclude pattern {pat:?}: {e}"))
            })?,
        );
    }
    let ctx = Ctx {
        repo,
        saver,
        opts,
        excludes: gs
            .build()
            .map_err(|e| Error::InvalidInput(format!("exclude patterns: {e}")))?,
        progress,
        cancel,
        counters: Counters::default(),
        warnings: Mutex::new(Vec::new()),
    };
    progress.start("backup", None);
    let readers = opts.readers.max(1);
    let (job_tx, job_rx) = bounded::<FileJob>(readers * 16);
    let (dir_tx, dir_rx) = bounded::<PendingDir>(1024);

    let root = std::thread::scope(|s| -> Result<Id> {
        let ctx = &ctx;
        let mut reader_handles = Vec::new();
        for i in 0..readers {
            let job_rx = job_rx.clone();
            reader_handles.push(
                std::thread::Builder::new()
                    .name(format!("kura-read-{i}"))
                    .spawn_scoped(s, move || reader_loop(ctx, job_rx))
                    .map_err(|e| Error::io("spawn reader", e))?,
            );
        }
        drop(job_rx);
        let assembler = std::thread::Builder::new()
            .name("kura-assemble".into())
            .spawn_scoped(s, move || assemble_loop(ctx, dir_rx))
            .map_err(|e| Error::io("spawn assembler", e))?;
        // Deep trees recurse (about 1 KiB per level); give the walker a generous stack (only
        // the pages touched are ever allocated).
        let walker = std::thread::Builder::new()
            .name("kura-walk".into())
            .stack_size(512 << 20)
            .spawn_scoped(s, move || {
                let mut w = Walker {
                    ctx,
                    jobs: job_tx,
                    dirs: dir_tx,
                    next_token: 0,
                    anchors: Vec::new(),
                };
                let root = virtual_root(paths);
                let parent = match parent_root {
                    Some(id) => w.load_parent_tree(&id, Path::new("/")),
                    None => None,
                };
                w.walk_virtual(&root, Path::new("/"), parent.as_ref())
            })
            .map_err(|e| Error::io("spawn walker", e))?;
        let walked = walker.join().map_err(|_| Error::Interrupted)?;
        let assembled = assembler.join().map_err(|_| Error::Interrupted)?;
        let mut read_err = None;
        for h in reader_handles {
            if let Err(e) = h.join().map_err(|_| Error::Interrupted)? {
                read_err.get_or_insert(e);
            }
        }
        // Report the most specific error: a walker or reader failure explains an assembler
        // that saw its inputs disappear.
        let root_token = walked?;
        if let Some(e) = read_err {
            return Err(e);
        }
        let done = assembled?;
        done.get(&root_token)
            .copied()
            .ok_or_else(|| Error::InvalidInput("backup produced no root tree".into()))
    })?;
    progress.finish();
    let c = &ctx.counters;
    let summary = Summary {
        files_new: c.files_new.load(Ordering::Relaxed),
        files_changed: c.files_changed.load(Ordering::Relaxed),
        files_unmodified: c.files_unmodified.load(Ordering::Relaxed),
        dirs: c.dirs.load(Ordering::Relaxed),
        other_entries: c.other.load(Ordering::Relaxed),
        total_bytes: c.total_bytes.load(Ordering::Relaxed),
        bytes_read: c.bytes_read.load(Ordering::Relaxed),
        files_changed_while_read: c.changed_while_read.load(Ordering::Relaxed),
        ..Summary::default()
    };
    let warnings = ctx.warnings.into_inner().unwrap_or_default();
    Ok((root, summary, warnings))
}

/// Paths longer than this many bytes are reached through an [`Anchor`] (well below Linux's
/// `PATH_MAX` of 4096, leaving room for one more name of up to 255 bytes).
const LONG_PATH: usize = 3072;

/// An `O_PATH` descriptor of a directory deep in the tree, and the short name it gives the
/// directory (`/proc/self/fd/N`).
struct Anchor {
    /// The directory's full path.
    prefix: PathBuf,
    /// `/proc/self/fd/N`.
    short: PathBuf,
    fd: Arc<OwnedFd>,
}

struct Walker<'a> {
    ctx: &'a Ctx<'a>,
    jobs: Sender<FileJob>,
    dirs: Sender<PendingDir>,
    next_token: usize,
    /// Anchors of the directories being walked, outermost first.
    anchors: Vec<Anchor>,
}

impl Walker<'_> {
    /// A name for `path` that system calls accept: itself, or through the innermost anchor.
    fn short(&self, path: &Path) -> PathBuf {
        if path.as_os_str().len() >= LONG_PATH {
            for a in self.anchors.iter().rev() {
                if let Ok(rest) = path.strip_prefix(&a.prefix) {
                    return a.short.join(rest);
                }
            }
        }
        path.to_path_buf()
    }

    fn anchor(&self, path: &Path) -> Option<Arc<OwnedFd>> {
        if path.as_os_str().len() < LONG_PATH {
            return None;
        }
        self.anchors
            .iter()
            .rev()
            .find(|a| path.starts_with(&a.prefix))
            .map(|a| a.fd.clone())
    }

    /// Anchor `path` if its short name grew long; returns whether an anchor was pushed.
    fn push_anchor(&mut self, path: &Path) -> std::io::Result<bool> {
        let short = self.short(path);
        if short.as_os_str().len() < LONG_PATH {
            return Ok(false);
        }
        let fd: OwnedFd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&short)?
            .into();
        self.anchors.push(Anchor {
            prefix: path.to_path_buf(),
            short: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            fd: Arc::new(fd),
        });
        Ok(true)
    }

    fn token(&mut self) -> usize {
        self.next_token += 1;
        self.next_token
    }

    fn emit(&mut self, token: usize, nodes: Vec<PendingNode>) -> Result<usize> {
        self.dirs
            .send(PendingDir { token, nodes })
            .map_err(|_| Error::Interrupted)?;
        Ok(token)
    }

    fn load_parent_tree(&self, id: &Id, path: &Path) -> Option<Tree> {
        match self.ctx.repo.load_tree(id) {
            Ok(t) => Some(t),
            Err(e) => {
                // Not fatal: without the parent entry the files are simply read again.
                tracing::warn!(
                    "parent tree for {}: {e}; reading its files again",
                    path.display()
                );
                None
            }
        }
    }

    fn parent_subtree(&self, parent: Option<&Tree>, name: &[u8], path: &Path) -> Option<Tree> {
        let n = find(parent, name)?;
        if n.kind != NodeKind::Dir {
            return None;
        }
        self.load_parent_tree(n.subtree.as_ref()?, path)
    }

    /// The intermediate directories above the sources.
    fn walk_virtual(
        &mut self,
        entry: &VirtualEntry,
        path: &Path,
        parent: Option<&Tree>,
    ) -> Result<usize> {
        let VirtualEntry::Dir(dir) = entry else {
            // A source of "/" itself.
            let dev = std::fs::symlink_metadata(path)
                .map_err(|e| Error::io(format!("source {}", path.display()), e))?
                .dev();
            return self.walk_dir(path, parent, Some(dev));
        };
        let token = self.token();
        let mut nodes = Vec::new();
        for (name, child) in &dir.children {
            self.ctx.cancel.check()?;
            let child_path = path.join(std::ffi::OsStr::from_bytes(name));
            let md = std::fs::symlink_metadata(&child_path)
                .map_err(|e| Error::io(format!("source {}", child_path.display()), e))?;
            match child {
                VirtualEntry::Source => {
                    if let Some(n) = self.entry(name, &child_path, &md, parent, None)? {
                        nodes.push(n);
                    }
                }
                VirtualEntry::Dir(_) => {
                    // A symlink on a source's path (`/home -> /data/home`) is recorded as the
                    // directory it leads to: a symlink node cannot have contents.
                    let md = if md.file_type().is_symlink() {
                        std::fs::metadata(&child_path)
                            .map_err(|e| Error::io(format!("source {}", child_path.display()), e))?
                    } else {
                        md
                    };
                    if !md.is_dir() {
                        return Err(Error::InvalidInput(format!(
                            "source path component {} is not a directory",
                            child_path.display()
                        )));
                    }
                    let Some(mut node) = node_from_metadata(name, &md) else {
                        continue;
                    };
                    let sub_parent = self.parent_subtree(parent, name, &child_path);
                    let sub = self.walk_virtual(child, &child_path, sub_parent.as_ref())?;
                    node.size = 0;
                    nodes.push(PendingNode::Dir { node, token: sub });
                }
            }
        }
        self.emit(token, nodes)
    }

    /// A real directory's contents.
    fn walk_dir(
        &mut self,
        path: &Path,
        parent: Option<&Tree>,
        root_dev: Option<u64>,
    ) -> Result<usize> {
        let token = self.token();
        let anchored = match self.push_anchor(path) {
            Ok(a) => a,
            Err(e) => {
                self.ctx
                    .warn(format!("{}: reading directory: {e}", path.display()));
                return self.emit(token, Vec::new());
            }
        };
        let r = self.walk_dir_entries(token, path, parent, root_dev);
        if anchored {
            self.anchors.pop();
        }
        r
    }

    fn walk_dir_entries(
        &mut self,
        token: usize,
        path: &Path,
        parent: Option<&Tree>,
        root_dev: Option<u64>,
    ) -> Result<usize> {
        // Names only, stat'ed one by one as they are visited: a directory of 100 000 entries
        // holds 100 000 short names here, not 100 000 `stat` results (about 200 bytes each).
        let mut names: Vec<Box<[u8]>> = Vec::new();
        match std::fs::read_dir(self.short(path)) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => names.push(e.file_name().as_bytes().into()),
                        Err(e) => {
                            self.ctx
                                .warn(format!("{}: reading directory: {e}", path.display()));
                            break;
                        }
                    }
                }
            }
            Err(e) => self
                .ctx
                .warn(format!("{}: reading directory: {e}", path.display())),
        }
        names.sort_unstable();
        let mut nodes = Vec::with_capacity(names.len());
        for name in names {
            self.ctx.cancel.check()?;
            let child = path.join(std::ffi::OsStr::from_bytes(&name));
            let md = match std::fs::symlink_metadata(self.short(&child)) {
                Ok(md) => md,
                Err(e) => {
                    self.ctx.warn(format!("{}: {e}", child.display()));
                    continue;
                }
            };
            if let Some(n) = self.entry(&name, &child, &md, parent, root_dev)? {
                nodes.push(n);
            }
        }
        self.emit(token, nodes)
    }

    /// One entry: decide what it becomes.
    fn entry(
        &mut self,
        name: &[u8],
        path: &Path,
        md: &std::fs::Metadata,
        parent: Option<&Tree>,
        root_dev: Option<u64>,
    ) -> Result<Option<PendingNode>> {
        let ctx = self.ctx;
        if !ctx.excludes.is_empty() && ctx.excludes.is_match(path) {
            return Ok(None);
        }
        let Some(mut node) = node_from_metadata(name, md) else {
            ctx.warn(format!(
                "{}: unsupported file type, skipped",
                path.display()
            ));
            return Ok(None);
        };
        let short = self.short(path);
        match read_xattrs(&short) {
            Ok(x) => node.xattrs = x,
            Err(e) => ctx.warn(format!(
                "{}: extended attributes not saved: {e}",
                path.display()
            )),
        }
        let c = &ctx.counters;
        Ok(Some(match node.kind {
            NodeKind::File => {
                c.total_bytes.fetch_add(node.size, Ordering::Relaxed);
                let old = find(parent, name);
                if let Some(content) = old.and_then(|o| self.reusable(o, &node)) {
                    node.content = Some(content);
                    c.files_unmodified.fetch_add(1, Ordering::Relaxed);
                    ctx.progress.add_total(node.size, 1);
                    ctx.progress.advance(node.size, 1);
                    PendingNode::Ready(node)
                } else {
                    let status = if old.is_some() {
                        FileStatus::Changed
                    } else {
                        FileStatus::New
                    };
                    ctx.progress.add_total(node.size, 1);
                    let (tx, rx) = slot();
                    self.jobs
                        .send(FileJob {
                            path: short,
                            shown: path.to_path_buf(),
                            _anchor: self.anchor(path),
                            seen: Seen::of(md),
                            result: tx,
                        })
                        .map_err(|_| Error::Interrupted)?;
                    PendingNode::File { node, status, rx }
                }
            }
            NodeKind::Dir => {
                c.dirs.fetch_add(1, Ordering::Relaxed);
                let dev = md.dev();
                let root_dev = root_dev.unwrap_or(dev);
                let token = if ctx.opts.one_file_system && dev != root_dev {
                    // A mount point: keep the directory, not what is mounted on it.
                    let t = self.token();
                    self.emit(t, Vec::new())?
                } else {
                    let sub_parent = self.parent_subtree(parent, name, path);
                    self.walk_dir(path, sub_parent.as_ref(), Some(root_dev))?
                };
                PendingNode::Dir { node, token }
            }
            NodeKind::Symlink => {
                c.other.fetch_add(1, Ordering::Relaxed);
                match std::fs::read_link(&short) {
                    Ok(t) => {
                        node.target = Some(t.as_os_str().as_bytes().to_vec());
                        PendingNode::Ready(node)
                    }
                    Err(e) => {
                        ctx.warn(format!("{}: reading symlink: {e}", path.display()));
                        return Ok(None);
                    }
                }
            }
            _ => {
                c.other.fetch_add(1, Ordering::Relaxed);
                PendingNode::Ready(node)
            }
        }))
    }

    /// The parent's chunk list, if the file is unchanged and every chunk is still indexed.
    fn reusable(&self, old: &Node, new: &Node) -> Option<Vec<ChunkRef>> {
        if old.kind != NodeKind::File
            || old.size != new.size
            || old.mtime != new.mtime
            || old.ctime != new.ctime
            || old.inode != new.inode
        {
            return None;
        }
        let content = old.content.as_ref()?;
        // Not condemned either: a blob only a condemned pack holds is read and stored again.
        let repo = self.ctx.repo;
        let all_present = content.iter().all(|c| match c {
            ChunkRef::Blob(id) => repo.has_live(BlobType::Data, id),
            ChunkRef::Zero(_) => true,
        });
        all_present.then(|| content.clone())
    }
}

fn find<'t>(tree: Option<&'t Tree>, name: &[u8]) -> Option<&'t Node> {
    let t = tree?;
    t.nodes
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()
        .map(|i| &t.nodes[i])
}

fn reader_loop(ctx: &Ctx<'_>, jobs: Receiver<FileJob>) -> Result<()> {
    let mut window = Vec::new();
    for job in jobs {
        ctx.cancel.check()?;
        let r = read_file(ctx, &job.path, &job.shown, &job.seen, &mut window)?;
        // The assembler may have stopped (failure elsewhere); that error is reported there, and
        // a result nobody waits for is simply dropped.
        job.result.send(r);
    }
    Ok(())
}

/// Read and chunk one file. The outer `Result` is fatal (pipeline failure, cancel); the
/// inner one is a per-file warning.
fn read_file(
    ctx: &Ctx<'_>,
    open_path: &Path,
    path: &Path,
    seen: &Seen,
    window: &mut Vec<u8>,
) -> Result<FileResult> {
    let mut f = match open_source(open_path, seen.dev, seen.ino) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
    };
    let md = match f.metadata() {
        Ok(md) => md,
        Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
    };
    let cdc: &Cdc = ctx.repo.cdc();
    let mut chunks: Vec<ChunkRef> = Vec::new();
    let mut total = 0u64;
    let mut push = |ctx: &Ctx<'_>, data: Vec<u8>, chunks: &mut Vec<ChunkRef>| -> Result<()> {
        let n = data.len() as u64;
        total += n;
        ctx.counters.bytes_read.fetch_add(n, Ordering::Relaxed);
        if is_zero(&data) {
            if let Some(ChunkRef::Zero(z)) = chunks.last_mut() {
                *z += n;
            } else {
                chunks.push(ChunkRef::Zero(n));
            }
        } else {
            let (id, new) = ctx.saver.save(BlobType::Data, data)?;
            if new {
                ctx.progress.new_data(n);
            }
            chunks.push(ChunkRef::Blob(id));
        }
        ctx.progress.advance(n, 0);
        Ok(())
    };
    if md.len() < cdc.params().min as u64 {
        // Small file: one chunk, read straight into an exact-size buffer.
        let mut data = Vec::with_capacity(md.len() as usize + 1);
        if let Err(e) = f.read_to_end(&mut data) {
            return Ok(Err(format!("{}: {e}", path.display())));
        }
        if data.len() > cdc.params().min as usize {
            // Grew while we read; chunk it properly.
            for n in cdc.boundaries(&data) {
                let rest = data.split_off(n);
                push(ctx, data, &mut chunks)?;
                data = rest;
            }
        } else if !data.is_empty() {
            push(ctx, data, &mut chunks)?;
        }
    } else {
        let mut stream = cdc.stream_with_buffer(&mut f, std::mem::take(window));
        loop {
            ctx.cancel.check()?;
            match stream.next_chunk() {
                Ok(Some(data)) => push(ctx, data, &mut chunks)?,
                Ok(None) => break,
                Err(e) => {
                    *window = stream.into_buffer();
                    return Ok(Err(format!("{}: {e}", path.display())));
                }
            }
        }
        *window = stream.into_buffer();
    }
    ctx.progress.advance(0, 1);
    // Compared with what the walker saw (the node keeps those times, so a file that changed
    // is read again by the next backup).
    let changed = match f.metadata() {
        Ok(after) => {
            let a = Seen::of(&after);
            (a.size, a.mtime, a.ctime) != (seen.size, seen.mtime, seen.ctime) || a.size != total
        }
        Err(_) => true,
    };
    if changed {
        ctx.counters
            .changed_while_read
            .fetch_add(1, Ordering::Relaxed);
        ctx.notice(format!(
            "{}: changed while it was read; saved as read, possibly inconsistent",
            path.display()
        ));
    }
    Ok(Ok(ReadFile {
        chunks,
        size: total,
    }))
}

fn assemble_loop(ctx: &Ctx<'_>, dirs: Receiver<PendingDir>) -> Result<HashMap<usize, Id>> {
    let mut done: HashMap<usize, Id> = HashMap::new();
    let mut last = None;
    for dir in dirs {
        let mut nodes = Vec::with_capacity(dir.nodes.len());
        for p in dir.nodes {
            match p {
                PendingNode::Ready(n) => nodes.push(n),
                PendingNode::File {
                    mut node,
                    status,
                    rx,
                } => match rx.recv() {
                    Some(Ok(read)) => {
                        node.size = read.size;
                        node.content = Some(read.chunks);
                        let c = match status {
                            FileStatus::New => &ctx.counters.files_new,
                            FileStatus::Changed => &ctx.counters.files_changed,
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                        nodes.push(node);
                    }
                    Some(Err(warning)) => {
                        ctx.warn(format!("{warning} (left out of the snapshot)"));
                    }
                    None => return Err(Error::Interrupted),
                },
                PendingNode::Dir { mut node, token } => {
                    let id = done.remove(&token).ok_or(Error::Interrupted)?;
                    node.subtree = Some(id);
                    nodes.push(node);
                }
            }
        }
        let bytes = Tree::new(nodes).encode()?;
        let (id, _) = ctx.saver.save(BlobType::Tree, bytes)?;
        done.insert(dir.token, id);
        last = Some(dir.token);
    }
    // Keep only the root (the last directory finished).
    let mut out = HashMap::new();
    if let Some(t) = last
        && let Some(id) = done.remove(&t)
    {
        out.insert(t, id);
    }
    Ok(out)
}
