//! Restore: from a snapshot to a directory (file trees) or to a file or block device (images).
//!
//! # Nothing written where it should not be
//! Names come from trees, which [`crate::tree::Tree::decode`] has validated (no `/`, `.`,
//! `..`, NUL, duplicates). Below the target, nothing is reached by path: every directory is
//! an open descriptor reached from its parent's by one name with `O_NOFOLLOW`, every entry is
//! created relative to its parent's descriptor, and an existing entry is never written
//! through — it is replaced by renaming a new entry over it (see [`at`]). A directory swapped
//! for a symlink while the restore runs makes the entries below it fail (reported); it never
//! sends them elsewhere. Hard links and symlinks already in the target are never followed.
//!
//! # Nothing left looking whole that is not
//! A regular file is written under a temporary name, `NAME.kura-partial`, and renamed to its
//! name only once every byte and its metadata are in place. A file that could not be restored
//! whole (data missing or damaged, a write failed) keeps the temporary name and is listed in
//! [`RestoreOutcome::partial`]; a killed restore leaves only such names. Because a file's
//! times are set last, "same size and same mtime as the snapshot" also marks a complete file,
//! which is what `--overwrite if-changed` relies on.
//!
//! # Existing entries ([`Overwrite`])
//! `always` (the default) replaces every entry that differs from the snapshot, checking a
//! single-linked regular file's content chunk by chunk first, so rerunning a killed restore
//! rewrites only what is not yet right; `if-changed` trusts size and mtime instead of reading
//! content; `if-newer` replaces only entries older than the snapshot's; `never` keeps every
//! existing entry untouched. An entry kept by the policy is not a hard-link group's first
//! link: the group's next entry is restored instead. An existing file with several links is always replaced, never compared or
//! touched in place: its other links may be outside the target. `delete` removes entries the
//! snapshot does not have, in directories restored whole.
//!
//! # Failures stay local
//! A directory that cannot be created or opened costs its own subtree, reported once; a file
//! that cannot be written costs itself. Trees of any depth restore: the walk keeps a stack,
//! not a recursion, and keeps descriptors open only for the innermost levels (an outer one is
//! reopened through `..` of its child, checked to be the same directory).
//!
//! # Order
//! The walker creates directories, symlinks, special files and files without stored data;
//! files with data are planned in batches and written by [`fetch`] (many files, pack by pack,
//! in parallel). The worker that writes a file's last chunk sets its size, owner, mode,
//! xattrs and times through its descriptor and renames it into place. A directory's own
//! metadata is set when everything in it is done (creating entries changes its mtime).

pub(crate) mod at;
mod fetch;
mod files;
pub(crate) mod image;
pub use image::{ImageTarget, restore_image_into};
mod tree;

use std::path::Path;

use globset::{Glob, GlobSetBuilder};
use serde::Serialize;

use crate::backup::CancelToken;
use crate::error::{Error, Result};
use crate::lock::{RepoLock, Shared};
use crate::progress::Progress;
use crate::repo::IndexedRepo;
use crate::snapshot::{Content, SnapshotEntry};

pub(crate) use image::load_fixed_index;

/// What to do with an entry that already exists where the snapshot has one (restic's
/// `--overwrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    /// Replace whatever differs from the snapshot; a regular file's content is compared
    /// chunk by chunk, and a file that already matches is kept (its metadata is set).
    #[default]
    Always,
    /// As `Always`, but a regular file with the snapshot's size and mtime is taken to match
    /// without reading it.
    IfChanged,
    /// Replace only entries whose mtime is older than the snapshot's (those are compared
    /// like `Always`).
    IfNewer,
    /// Keep every existing entry untouched.
    Never,
}

impl std::str::FromStr for Overwrite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Overwrite> {
        Ok(match s {
            "always" => Overwrite::Always,
            "if-changed" => Overwrite::IfChanged,
            "if-newer" => Overwrite::IfNewer,
            "never" => Overwrite::Never,
            other => {
                return Err(Error::InvalidInput(format!(
                    "--overwrite {other:?}: use always, if-changed, if-newer or never"
                )));
            }
        })
    }
}

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
    /// Existing entries: see [`Overwrite`].
    pub overwrite: Overwrite,
    /// Remove entries the snapshot does not have from directories restored whole.
    pub delete: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            includes: Vec::new(),
            threads: 4,
            batch_chunks: 200_000,
            overwrite: Overwrite::Always,
            delete: false,
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
    /// Regular files restored whole (written now, or found already matching and kept).
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    /// Existing entries kept because they already matched the snapshot (counted in `files`
    /// and `other` too).
    pub unchanged: u64,
    /// Existing entries kept because `--overwrite` said so.
    pub kept: u64,
    /// Entries removed by `--delete`.
    pub deleted: u64,
    /// Files whose contents could not be restored (missing or corrupt data).
    pub damaged: Vec<Damaged>,
    /// Where the incomplete files are: `NAME.kura-partial` beside where `NAME` belongs.
    pub partial: Vec<String>,
    /// Entries refused or partly restored (hostile names, directories that could not be
    /// created, metadata that could not be set).
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
    at::raise_fd_limit();
    match &snap.snapshot.content {
        Content::Image(info) => {
            if !opts.includes.is_empty() || opts.delete {
                return Err(Error::InvalidInput(
                    "--include and --delete do not apply to image snapshots".into(),
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
            let root_dir = at::Dir::open_target(target)
                .map_err(|e| Error::io(format!("open target {}", target.display()), e))?;
            tree::restore_tree(
                repo, root, root_dir, target, includes, opts, progress, cancel,
            )
        }
    }
}
