//! The tree walk of a file-tree restore: directories, existing entries, hard links, batches.
//! See the module docs of [`super`] for the guarantees; [`super::at`] for how the target is
//! touched.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, OnceLock};

use globset::GlobSet;
use rustix::fs::FileType;

use super::at::{Dir, Entry, Ident};
use super::fetch::{BlobJob, fetch_all};
use super::files::{
    FileSink, Finished, PARTIAL_SUFFIX, PlannedFile, content_matches, lossy, partial_name,
};
use super::{Damaged, Overwrite, RestoreOptions, RestoreOutcome};
use crate::backup::CancelToken;
use crate::error::Result;
use crate::fsmeta::{apply_metadata_at, apply_metadata_fd, can_chown};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::IndexedRepo;
use crate::tree::{ChunkRef, Node, NodeKind};

mod links;
use links::{DeferredLink, Leader, LeaderState};

/// Directory levels whose descriptors stay open below the current one; outer levels are
/// closed and reopened (checked) when the walk comes back to them.
const OPEN_LEVELS: usize = 64;
/// Flush a batch once its files are spread over this many directories (each held open).
const BATCH_DIRS: usize = 256;

/// One directory level of the walk.
struct Frame {
    /// Open handle; `None` before the directory is created (with includes, a directory is
    /// created only when something in it is restored) or after it was closed to save
    /// descriptors (then `ident` says which directory to reopen).
    dir: Option<Arc<Dir>>,
    ident: Option<Ident>,
    /// Name in the parent (empty for the target itself).
    name: OsString,
    /// The directory's own metadata (none for the target).
    node: Option<Node>,
    /// Path in the snapshot, `/a/b`.
    spath: PathBuf,
    nodes: std::vec::IntoIter<Node>,
    /// The tree's sorted names, kept when needed (`--delete`, or a name that looks like a
    /// temporary one).
    names: Option<Vec<Vec<u8>>>,
    /// Everything below is restored (an ancestor matched the includes, or there are none).
    all: bool,
    /// Created by this restore, so it was empty: no need to look for existing entries.
    fresh: bool,
    /// Could not be created or opened: the rest of the subtree is skipped.
    failed: bool,
    /// The snapshot's tree was read whole (a `--delete` pass is safe).
    loaded: bool,
}

struct TreeRestorer<'a> {
    repo: &'a IndexedRepo,
    opts: &'a RestoreOptions,
    includes: GlobSet,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    target: &'a Path,
    /// The target directory (also frame 0 while the walk runs; kept for the links made
    /// after it).
    root: Arc<Dir>,
    chown: bool,
    outcome: RestoreOutcome,
    stack: Vec<Frame>,
    // The current batch.
    files: Vec<PlannedFile>,
    jobs: HashMap<Id, Vec<(u32, u64)>>,
    planned: usize,
    pre_damaged: HashMap<u32, String>,
    batch_dirs: HashSet<Ident>,
    batch_leaders: Vec<(usize, (u64, u64))>,
    deferred_links: Vec<DeferredLink>,
    deferred_meta: Vec<(Arc<Dir>, Node, String)>,
    /// With `--delete`: temporary names of the batch's files, and of files left partial by
    /// earlier batches, by directory (never deleted: the first are being written, the second
    /// are listed in the outcome).
    in_flight: HashMap<Ident, HashSet<OsString>>,
    partials: HashMap<Ident, HashSet<OsString>>,
    /// (dev, inode) in the snapshot of multiply-linked files → the first one restored.
    hardlinks: HashMap<(u64, u64), Leader>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn restore_tree(
    repo: &IndexedRepo,
    root: &Id,
    root_dir: Dir,
    target: &Path,
    includes: GlobSet,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreOutcome> {
    let root_dir = Arc::new(root_dir);
    let mut r = TreeRestorer {
        root: root_dir.clone(),
        repo,
        opts,
        includes,
        progress,
        cancel,
        target,
        chown: can_chown(),
        outcome: RestoreOutcome::default(),
        stack: Vec::new(),
        files: Vec::new(),
        jobs: HashMap::new(),
        planned: 0,
        pre_damaged: HashMap::new(),
        batch_dirs: HashSet::new(),
        batch_leaders: Vec::new(),
        deferred_links: Vec::new(),
        deferred_meta: Vec::new(),
        in_flight: HashMap::new(),
        partials: HashMap::new(),
        hardlinks: HashMap::new(),
    };
    progress.start("restore", None);
    let ident = root_dir.ident();
    r.stack.push(Frame {
        dir: Some(root_dir),
        ident: Some(ident),
        name: OsString::new(),
        node: None,
        spath: PathBuf::from("/"),
        nodes: Vec::new().into_iter(),
        names: None,
        all: opts.includes.is_empty(),
        fresh: false,
        failed: false,
        loaded: false,
    });
    r.load(0, root);
    r.walk()?;
    r.flush()?;
    progress.finish();
    Ok(r.outcome)
}

impl TreeRestorer<'_> {
    fn error(&mut self, msg: String) {
        tracing::debug!("{msg}");
        self.progress.warn(&msg);
        self.outcome.errors.push(msg);
    }

    fn damaged(&mut self, display: String, reason: String) {
        let msg = format!("{display}: damaged: {reason}");
        tracing::debug!("{msg}");
        self.progress.warn(&msg);
        self.outcome.damaged.push(Damaged {
            path: display,
            reason,
        });
    }

    /// Where a snapshot path lands, for messages.
    fn display(&self, spath: &Path) -> String {
        let rel = spath.strip_prefix("/").unwrap_or(spath);
        self.target.join(rel).display().to_string()
    }

    /// Read the tree of frame `k` (a damaged tree costs only its own entries).
    fn load(&mut self, k: usize, id: &Id) {
        match self.repo.load_tree(id) {
            Ok(tree) => {
                let needs_names = self.opts.delete
                    || tree.nodes.iter().any(|n| {
                        n.name
                            .windows(PARTIAL_SUFFIX.len())
                            .any(|w| w == PARTIAL_SUFFIX)
                    });
                let f = &mut self.stack[k];
                f.names = needs_names.then(|| tree.nodes.iter().map(|n| n.name.clone()).collect());
                f.nodes = tree.nodes.into_iter();
                f.loaded = true;
            }
            Err(e) => {
                let display = self.display(&self.stack[k].spath);
                if e.is_data_damage() {
                    self.outcome.damaged.push(Damaged {
                        path: display.clone(),
                        reason: e.to_string(),
                    });
                    self.error(format!("{display}: directory contents lost: {e}"));
                } else {
                    self.error(format!("{display}: directory contents not restored: {e}"));
                }
            }
        }
    }

    fn walk(&mut self) -> Result<()> {
        loop {
            self.cancel.check()?;
            let Some(top) = self.stack.last_mut() else {
                return Ok(());
            };
            let next = if top.failed { None } else { top.nodes.next() };
            let Some(node) = next else {
                self.leave()?;
                continue;
            };
            let k = self.stack.len() - 1;
            let spath = self.stack[k].spath.join(OsStr::from_bytes(&node.name));
            let included = self.stack[k].all || self.includes.is_match(&spath);
            if node.kind == NodeKind::Dir {
                let Some(sub) = node.subtree else { continue };
                self.push(node, spath, included);
                if included && !self.ensure(k + 1) {
                    continue;
                }
                self.load(k + 1, &sub);
                continue;
            }
            if !included || !self.ensure(k) {
                continue;
            }
            self.restore_entry(k, node, &spath);
            if self.planned >= self.opts.batch_chunks || self.batch_dirs.len() >= BATCH_DIRS {
                self.flush()?;
            }
        }
    }

    fn push(&mut self, mut node: Node, spath: PathBuf, all: bool) {
        node.subtree = None;
        node.content = None;
        self.stack.push(Frame {
            dir: None,
            ident: None,
            name: OsString::from_vec(node.name.clone()),
            node: Some(node),
            spath,
            nodes: Vec::new().into_iter(),
            names: None,
            all,
            fresh: false,
            failed: false,
            loaded: false,
        });
        // Close the descriptor of a level that fell out of the window (never the target's).
        let n = self.stack.len();
        if n > OPEN_LEVELS + 1 {
            let f = &mut self.stack[n - 1 - OPEN_LEVELS];
            if f.ident.is_some() {
                f.dir = None;
            }
        }
    }

    /// The open directory of frame `k`, reopened from the nearest open ancestor if it was
    /// closed (each level checked to be the same directory).
    fn dir_at(&mut self, k: usize) -> std::io::Result<Arc<Dir>> {
        if let Some(d) = &self.stack[k].dir {
            return Ok(d.clone());
        }
        let mut i = k;
        while self.stack[i].dir.is_none() {
            i -= 1; // frame 0 (the target) is always open
        }
        let mut d = self.stack[i]
            .dir
            .clone()
            .ok_or_else(|| std::io::Error::other("no open level"))?;
        for m in i + 1..=k {
            let ident = self.stack[m]
                .ident
                .ok_or_else(|| std::io::Error::other("directory not created"))?;
            d = Arc::new(d.reopen_dir(&self.stack[m].name, ident)?);
            self.stack[m].dir = Some(d.clone());
        }
        Ok(d)
    }

    /// Make sure the directories of frames `..=k` exist (with includes they are created on
    /// first need). False when one could not be: its subtree is skipped, reported once.
    fn ensure(&mut self, k: usize) -> bool {
        if self.stack[k].failed {
            return false;
        }
        let Some(first) = (0..=k).find(|&j| self.stack[j].ident.is_none()) else {
            return true;
        };
        for j in first..=k {
            if let Err(e) = self.create_dir(j) {
                let display = self.display(&self.stack[j].spath);
                self.error(format!(
                    "{display}: directory not restored, nor anything in it: {e}"
                ));
                for f in &mut self.stack[j..] {
                    f.failed = true;
                }
                return false;
            }
        }
        true
    }

    fn create_dir(&mut self, j: usize) -> std::io::Result<()> {
        let parent = self.dir_at(j - 1)?;
        let parent_fresh = self.stack[j - 1].fresh;
        let name = self.stack[j].name.clone();
        let existing = if parent_fresh {
            None
        } else {
            parent.entry(&name)?
        };
        let fresh = match existing {
            None => {
                parent.mkdir(&name)?;
                true
            }
            Some(e) if e.is_dir() => false,
            Some(e) => {
                let node = self.stack[j].node.as_ref();
                if !node.is_some_and(|n| self.replaces(&e, n)) {
                    self.outcome.kept += 1;
                    return Err(std::io::Error::other(
                        "an existing non-directory is in the way (kept: --overwrite)",
                    ));
                }
                parent.unlink(&name)?;
                parent.mkdir(&name)?;
                true
            }
        };
        let d = parent.open_dir(&name)?;
        let f = &mut self.stack[j];
        f.ident = Some(d.ident());
        f.dir = Some(Arc::new(d));
        f.fresh = fresh;
        self.outcome.dirs += 1;
        Ok(())
    }

    /// Leave the innermost directory: `--delete` pass, then its metadata (now, or after
    /// the batch if entries of it are still in flight).
    fn leave(&mut self) -> Result<()> {
        let k = self.stack.len().saturating_sub(1);
        if k > 0
            && self.stack[k].ident.is_some()
            && !self.stack[k].failed
            && let Err(e) = self.dir_at(k)
        {
            let display = self.display(&self.stack[k].spath);
            self.error(format!("{display}: reopen: {e}"));
            self.stack[k].failed = true;
        }
        let Some(f) = self.stack.pop() else {
            return Ok(());
        };
        let display = self.display(&f.spath);
        if let (Some(dir), false) = (&f.dir, f.failed) {
            if self.opts.delete && f.all && f.loaded && !f.fresh {
                let mut in_flight = self.in_flight.remove(&dir.ident()).unwrap_or_default();
                in_flight.extend(self.partials.remove(&dir.ident()).unwrap_or_default());
                self.delete_extra(
                    dir,
                    f.names.as_deref().unwrap_or_default(),
                    &in_flight,
                    &display,
                );
            }
            if let Some(node) = f.node {
                if self.batch_dirs.contains(&dir.ident()) {
                    self.deferred_meta.push((dir.clone(), node, display));
                } else if let Err(e) = apply_metadata_fd(dir.as_ref(), &node, self.chown) {
                    self.error(format!("{display}: metadata: {e}"));
                }
            }
        }
        // Reopen the parent through `..` if its descriptor was closed.
        if let (Some(parent), Some(child)) = (self.stack.last_mut(), &f.dir)
            && parent.dir.is_none()
            && let Some(ident) = parent.ident
        {
            // On failure, dir_at reopens it from above when needed.
            if let Ok(d) = child.parent(ident) {
                parent.dir = Some(Arc::new(d));
            }
        }
        Ok(())
    }

    /// Remove what the snapshot does not have from a directory restored whole.
    fn delete_extra(
        &mut self,
        dir: &Arc<Dir>,
        names: &[Vec<u8>],
        in_flight: &HashSet<OsString>,
        display: &str,
    ) {
        let present = match dir.names() {
            Ok(n) => n,
            Err(e) => {
                self.error(format!("{display}: --delete: list: {e}"));
                return;
            }
        };
        for n in present {
            // Files of this directory still being fetched are under temporary names.
            if names
                .binary_search_by(|x| x.as_slice().cmp(n.as_bytes()))
                .is_ok()
                || in_flight.contains(&n)
            {
                continue;
            }
            match dir.remove_all(&n) {
                Ok(()) => self.outcome.deleted += 1,
                Err(e) => self.error(format!("{display}/{}: --delete: {e}", lossy(&n))),
            }
        }
    }

    /// Whether the existing entry `e` gives way to the snapshot's `node` (by `--overwrite`,
    /// before any content comparison).
    fn replaces(&self, e: &Entry, node: &Node) -> bool {
        match self.opts.overwrite {
            Overwrite::Never => false,
            Overwrite::IfNewer => (node.mtime.0, node.mtime.1) > e.mtime,
            Overwrite::Always | Overwrite::IfChanged => true,
        }
    }

    /// Does the existing entry already hold what the snapshot has (so it is kept and only its
    /// metadata set)?
    fn matches(&self, dir: &Dir, name: &OsStr, e: &Entry, node: &Node) -> bool {
        match node.kind {
            NodeKind::File => {
                if e.kind != FileType::RegularFile || e.nlink != 1 || e.size != node.size {
                    return false;
                }
                match self.opts.overwrite {
                    Overwrite::IfChanged => e.mtime == (node.mtime.0, node.mtime.1),
                    _ => content_matches(self.repo, dir, name, e, node),
                }
            }
            NodeKind::Symlink => {
                e.kind == FileType::Symlink
                    && rustix::fs::readlinkat(dir, name, Vec::new())
                        .is_ok_and(|t| Some(t.as_bytes()) == node.target.as_deref())
            }
            NodeKind::Fifo => e.kind == FileType::Fifo,
            NodeKind::Blockdev => e.kind == FileType::BlockDevice && e.rdev == node.rdev,
            NodeKind::Chardev => e.kind == FileType::CharacterDevice && e.rdev == node.rdev,
            NodeKind::Socket | NodeKind::Dir => false,
        }
    }

    fn restore_entry(&mut self, k: usize, node: Node, spath: &Path) {
        let display = self.display(spath);
        let dir = match self.dir_at(k) {
            Ok(d) => d,
            Err(e) => {
                self.error(format!("{display}: {e}"));
                return;
            }
        };
        let fresh = self.stack[k].fresh;
        let name = OsString::from_vec(node.name.clone());
        if node.links > 1 && node.kind != NodeKind::Dir {
            let key = (node.dev, node.inode);
            if self.hardlinks.contains_key(&key) {
                let link = DeferredLink {
                    tmp: partial_name(&node.name, self.stack[k].names.as_deref()),
                    dir,
                    fresh,
                    name,
                    node,
                    key,
                    display,
                };
                self.follower(link);
                return;
            }
        }
        if let Err(e) = self.restore_new(k, &dir, fresh, name, node, display.clone()) {
            self.error(format!("{display}: {e}"));
        }
    }

    /// Restore a non-directory entry that is not a later link of a hard-link group.
    fn restore_new(
        &mut self,
        k: usize,
        dir: &Arc<Dir>,
        fresh: bool,
        name: OsString,
        node: Node,
        display: String,
    ) -> std::io::Result<()> {
        let tmp = partial_name(&node.name, self.stack[k].names.as_deref());
        let existing = if fresh { None } else { dir.entry(&name)? };
        if let Some(e) = existing {
            if !self.replaces(&e, &node) {
                // Kept by `--overwrite`, untouched: not (known to be) the snapshot's content,
                // so no link of its group is made to it (the next one becomes the first).
                self.outcome.kept += 1;
                return Ok(());
            }
            if !e.is_dir() && self.matches(dir, &name, &e, &node) {
                self.keep_matching(dir, &name, &tmp, &e, node, &display);
                return Ok(());
            }
            if e.is_dir() {
                // A directory where the snapshot has something else: it gives way whole.
                dir.remove_all(&name)?;
            }
        }
        if !fresh {
            dir.unlink(&tmp)?; // left by an earlier, interrupted restore
        }
        match node.kind {
            NodeKind::File => self.plan_file(dir, name, tmp, node, display),
            NodeKind::Socket => Ok(()), // sockets are not restorable; skipped
            NodeKind::Dir => Err(std::io::Error::other("directory handled by the walker")),
            kind => {
                match kind {
                    NodeKind::Symlink => {
                        dir.symlink(node.target.as_deref().unwrap_or_default(), &tmp)?
                    }
                    NodeKind::Fifo => dir.mknod(&tmp, FileType::Fifo, 0)?,
                    NodeKind::Blockdev => dir.mknod(&tmp, FileType::BlockDevice, node.rdev)?,
                    _ => dir.mknod(&tmp, FileType::CharacterDevice, node.rdev)?,
                }
                let e = dir
                    .entry(&tmp)?
                    .ok_or_else(|| std::io::Error::other("vanished after creation"))?;
                let meta = apply_metadata_at(dir.as_ref(), &tmp, e.ident, &node, self.chown);
                dir.rename(&tmp, &name)?;
                self.outcome.other += 1;
                self.note_leader(dir, &node, &name, LeaderState::Done(e.ident));
                meta.map_err(|e| std::io::Error::other(format!("metadata: {e}")))
            }
        }
    }

    /// An existing entry that already matches: keep it, set its metadata, drop a stale
    /// temporary file beside it.
    fn keep_matching(
        &mut self,
        dir: &Arc<Dir>,
        name: &OsStr,
        tmp: &OsStr,
        e: &Entry,
        node: Node,
        display: &str,
    ) {
        let meta = if node.kind == NodeKind::File {
            dir.open_existing(name, e.ident)
                .and_then(|f| apply_metadata_fd(&f, &node, self.chown))
        } else {
            apply_metadata_at(dir.as_ref(), name, e.ident, &node, self.chown)
        };
        if let Err(err) = meta {
            self.error(format!("{display}: metadata: {err}"));
        }
        if let Err(err) = dir.unlink(tmp) {
            self.error(format!("{display}: remove stale {}: {err}", lossy(tmp)));
        }
        self.outcome.unchanged += 1;
        if node.kind == NodeKind::File {
            self.outcome.files += 1;
            self.outcome.bytes += node.size;
        } else {
            self.outcome.other += 1;
        }
        self.note_leader(dir, &node, name, LeaderState::Done(e.ident));
    }

    /// A regular file: written now if it has no stored data, else planned for the fetchers.
    fn plan_file(
        &mut self,
        dir: &Arc<Dir>,
        name: OsString,
        tmp: OsString,
        node: Node,
        display: String,
    ) -> std::io::Result<()> {
        let idx = self.files.len() as u32;
        let mut off = 0u64;
        let mut writes = 0u32;
        let mut damage = None;
        let mut jobs: Vec<(Id, u64)> = Vec::new();
        for c in node.content.iter().flatten() {
            match c {
                ChunkRef::Zero(n) => off += n,
                ChunkRef::Blob(id) => match self.repo.index().get(id) {
                    Some(loc) => {
                        jobs.push((*id, off));
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
        self.progress.add_total(node.size, 1);
        let (file, ident) = dir.create_file(&tmp)?;
        let planned = PlannedFile {
            dir: dir.clone(),
            name,
            tmp,
            ident,
            node,
            display,
            remaining: AtomicU32::new(writes),
            finished: OnceLock::new(),
        };
        if writes == 0 {
            let done = planned.finish(Some(file), damage, self.chown);
            let state = self.record(&planned, &done);
            self.note_leader(dir, &planned.node, &planned.name, state);
            return Ok(());
        }
        drop(file);
        for (id, off) in jobs {
            self.jobs.entry(id).or_default().push((idx, off));
        }
        if let Some(reason) = damage {
            self.pre_damaged.insert(idx, reason);
        }
        if planned.node.links > 1 {
            self.batch_leaders
                .push((idx as usize, (planned.node.dev, planned.node.inode)));
            self.note_leader(
                dir,
                &planned.node,
                &planned.name,
                LeaderState::Pending(idx as usize),
            );
        }
        self.planned += writes as usize;
        self.batch_dirs.insert(dir.ident());
        if self.opts.delete {
            self.in_flight
                .entry(dir.ident())
                .or_default()
                .insert(planned.tmp.clone());
        }
        self.files.push(planned);
        Ok(())
    }

    /// Count a finished file in the outcome; the leader state it gives its links.
    fn record(&mut self, f: &PlannedFile, done: &Finished) -> LeaderState {
        match done {
            Finished::Done { meta_error } => {
                self.outcome.files += 1;
                self.outcome.bytes += f.node.size;
                if let Some(e) = meta_error {
                    self.error(format!("{}: {e}", f.display));
                }
                LeaderState::Done(f.ident)
            }
            Finished::Partial { reason } => {
                let partial = Path::new(&f.display)
                    .with_file_name(&f.tmp)
                    .display()
                    .to_string();
                self.damaged(
                    f.display.clone(),
                    format!("{reason} (kept as {})", lossy(&f.tmp)),
                );
                self.outcome.partial.push(partial);
                if self.opts.delete {
                    self.partials
                        .entry(f.dir.ident())
                        .or_default()
                        .insert(f.tmp.clone());
                }
                LeaderState::Bad(reason.clone())
            }
        }
    }

    /// Fetch the current batch's contents (the sink finishes each file as its last chunk
    /// lands), then make the links that waited for them and set the metadata of the
    /// directories that waited for both.
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
        };
        fetch_all(
            self.repo,
            jobs,
            &sink,
            self.opts.threads,
            self.progress,
            self.cancel,
        )?;
        let mut states: HashMap<usize, LeaderState> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let done = f.finished.get().cloned().unwrap_or(Finished::Partial {
                reason: "not every chunk was written".into(),
            });
            let state = self.record(f, &done);
            states.insert(i, state);
        }
        for (i, key) in std::mem::take(&mut self.batch_leaders) {
            if let (Some(l), Some(s)) = (self.hardlinks.get_mut(&key), states.remove(&i))
                && matches!(l.state, LeaderState::Pending(p) if p == i)
            {
                l.state = s;
            }
        }
        for link in std::mem::take(&mut self.deferred_links) {
            self.follower(link);
        }
        for (dir, node, display) in std::mem::take(&mut self.deferred_meta) {
            if let Err(e) = apply_metadata_fd(dir.as_ref(), &node, self.chown) {
                self.error(format!("{display}: metadata: {e}"));
            }
        }
        self.batch_dirs.clear();
        self.in_flight.clear();
        Ok(())
    }
}
