//! Storage backends for kura repositories.
//!
//! A kura repository is a small set of *files* of a few kinds (config, key files, packs, index
//! files, snapshot manifests, lock files), each immutable once written except locks. Everything
//! above this crate addresses storage only through the [`Backend`] trait, by `(FileKind, name)`,
//! never by path, so that a local directory, an S3 bucket or (later) labelled media can hold the
//! same repository.
//!
//! # Why a synchronous trait
//! The repository's data path is a pipeline of OS threads (chunking, hashing, compressing and
//! encrypting are CPU-bound and run best on plain threads). Backends that are asynchronous
//! underneath (object stores) own a runtime and block on it; the repository never sees futures.
//!
//! # Invariants every implementation keeps
//! - `put` is atomic: a reader sees either nothing or the whole file, never a prefix. On local
//!   disks this is temp file + `fsync` + `rename` + `fsync` of the directory.
//! - `put` is durable when it returns: callers write catalog-like records (index files, snapshot
//!   manifests) only after the data they reference has been `put`.
//! - Errors are classified ([`ErrorKind`]) so callers can tell "target unreachable" from
//!   "permission denied" from "no space" without parsing messages, and every error names the
//!   operation, the object and the backend location.

mod aws_profile;
mod counted;
mod deadline;
mod error;
mod failover;
mod local;
mod members;
mod mirror;
mod probe;
pub mod retry;
mod s3;
mod target;
pub mod throttle;
mod throttled;
mod union;

pub use counted::Counted;
pub use error::{BackendError, ErrorKind};
pub use failover::{FailoverBackend, FailoverMember, FailoverOptions, FailoverStatus, Section};
pub use local::LocalBackend;
pub use mirror::{MemberStatus, MirrorBackend, MirrorOptions};
pub use probe::{ProbeReport, probe};
pub use retry::RetryPolicy;
pub use s3::{S3Backend, S3Config};
pub use target::{BackendOptions, Target, open, same_url};
pub use throttle::{Limiter, RateSchedule, parse_rate};
pub use throttled::Throttled;
pub use union::UnionBackend;

use std::fmt;

pub use bytes::Bytes;

/// The kinds of files a repository holds. Each kind has its own namespace (directory or key
/// prefix); see `docs/FORMAT.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The single repository config file (name is always `config`).
    Config,
    /// Key files: the master key wrapped by a passphrase.
    Key,
    /// Pack files holding blobs; stored under a two-hex-digit fan-out directory.
    Pack,
    /// Index files mapping blobs to packs.
    Index,
    /// Snapshot manifests.
    Snapshot,
    /// Lock files.
    Lock,
    /// The catalog's records of backups held here (so the catalog can be rebuilt from the
    /// targets alone).
    Catalog,
    /// Objects written and removed by `kura target probe` (never part of a repository).
    Probe,
    /// Records of packs prune condemned (deleted by a later prune).
    Condemned,
}

impl FileKind {
    /// Every kind, in the order `init` creates their directories.
    pub const ALL: [FileKind; 8] = [
        FileKind::Config,
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Lock,
        FileKind::Catalog,
        FileKind::Condemned,
    ];

    /// The directory (or key prefix) holding files of this kind; empty for the config file.
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Lock => "locks",
            FileKind::Catalog => "catalog",
            FileKind::Probe => "probe",
            FileKind::Condemned => "condemned",
        }
    }

    /// The path of `name` relative to the repository root, e.g. `data/3f/3f2a…`.
    pub fn relative_path(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            FileKind::Pack => {
                let fan = name.get(..2).unwrap_or("__");
                format!("data/{fan}/{name}")
            }
            other => format!("{}/{}", other.dir(), name),
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Config => "config",
            FileKind::Key => "key",
            FileKind::Pack => "pack",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshot",
            FileKind::Lock => "lock",
            FileKind::Catalog => "catalog record",
            FileKind::Probe => "probe",
            FileKind::Condemned => "condemned record",
        })
    }
}

/// A listed or stat-ed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
}

/// Result alias for backend operations.
pub type Result<T> = std::result::Result<T, BackendError>;

/// One repository location. Implementations must be safe to share between threads; the
/// repository calls them concurrently from its pipeline.
pub trait Backend: Send + Sync + fmt::Debug {
    /// A human-readable location used in every error message (`/srv/repo`, `s3://b/p`).
    fn location(&self) -> String;

    /// Create the repository layout. Fails with [`ErrorKind::AlreadyExists`] if a config file
    /// is already present.
    fn create(&self) -> Result<()>;

    /// Store a whole file atomically and durably (see the crate docs). `Bytes` lets
    /// implementations hand the data to another thread or an async client without copying.
    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()>;

    /// Write an index file that lists `packs` (pack names). Backends that acknowledge
    /// extents (fail-over) wait here until those packs are durable; the rest just `put`.
    fn put_index(&self, name: &str, data: Bytes, packs: &[String]) -> Result<()> {
        let _ = packs;
        self.put(FileKind::Index, name, data)
    }

    /// Read a whole file.
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;

    /// Read `len` bytes at `offset`. Reading past the end is [`ErrorKind::Corrupt`]: callers
    /// only ask for ranges an index or header told them exist.
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(kind, name, offset, len, &mut buf)?;
        Ok(buf)
    }

    /// As [`get_range`](Self::get_range), into `buf` (replacing its contents), so callers
    /// reading many ranges can reuse one allocation.
    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()>;

    /// How many independent sources this backend reads from: 1, or for a view over several
    /// targets one per target. Readers that find a blob damaged try the other sources.
    fn sources(&self) -> usize {
        1
    }

    /// As [`get_range_into`](Self::get_range_into), from one source (`0..sources()`).
    fn get_range_from(
        &self,
        source: usize,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let _ = source;
        self.get_range_into(kind, name, offset, len, buf)
    }

    /// A reader found what `source` served for `name` damaged (it read, but does not
    /// verify). A view over several targets remembers it against that target, as it does a
    /// failed read; a single target has nobody to tell.
    fn damaged(&self, source: usize, kind: FileKind, name: &str, why: &str) {
        let _ = (source, kind, name, why);
    }

    /// List every file of a kind (names without directories). Temporary files are never listed.
    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>>;

    /// Size of one file; [`ErrorKind::NotFound`] if it does not exist.
    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo>;

    /// Remove a file. Removing a file that does not exist may succeed (object stores) or
    /// fail with [`ErrorKind::NotFound`] (directories); callers treat both as done.
    fn delete(&self, kind: FileKind, name: &str) -> Result<()>;

    /// Free space in bytes, where the backend can tell (`None` for object stores).
    fn free_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Whether a call is now waiting for a traffic limit ([`Throttled`]): the target is slow
    /// on purpose, not stalled. Group backends do not count such time against a member.
    fn pacing(&self) -> bool {
        false
    }

    /// Whether a file exists.
    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        match self.stat(kind, name) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_paths_fan_out_by_first_two_hex_digits() {
        assert_eq!(FileKind::Pack.relative_path("3f2a00"), "data/3f/3f2a00");
        assert_eq!(FileKind::Index.relative_path("ab"), "index/ab");
        assert_eq!(FileKind::Config.relative_path("anything"), "config");
    }
}
