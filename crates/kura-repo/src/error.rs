//! The repository's error type.

use std::io;
use std::path::PathBuf;

use kura_backend::{BackendError, ErrorKind};

/// Everything that can go wrong in a repository operation. The CLI maps variants to exit codes
/// (see README), so variants are by *what the user must do*, not by where the error arose.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backend(#[from] BackendError),

    #[error("no kura repository at {0} (no config file); create one with `kura init`")]
    NotARepository(String),

    #[error("wrong password: none of the {keys} key file(s) in {location} opens with it")]
    WrongPassword { location: String, keys: usize },

    #[error("repository {location} is locked: {detail}")]
    Locked { location: String, detail: String },

    /// The lock a writer held could not be kept the whole time (removed, or not refreshed
    /// for long enough that others may have judged it stale): what it wrote may rely on data a
    /// concurrent prune removed, so it is not committed.
    #[error("lock on repository {location} was lost: {detail}; nothing was committed")]
    LockLost { location: String, detail: String },

    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },

    #[error("{0}: unsupported format or version (written by a newer kura?)")]
    Unsupported(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("{0}")]
    InvalidInput(String),

    /// Targets given together do not hold one repository (see `group`).
    #[error("{0}")]
    NotAGroup(String),

    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),

    #[error("path {path:?} not found in snapshot {snapshot}")]
    PathNotFound { snapshot: String, path: PathBuf },

    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error means stored data is damaged or missing (as opposed to the
    /// repository being unreachable): the checker and restorer report these per file.
    pub fn is_data_damage(&self) -> bool {
        match self {
            Error::Corrupt { .. } => true,
            Error::Backend(b) => matches!(b.kind(), ErrorKind::NotFound | ErrorKind::Corrupt),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the caller must do about an error, as a small closed set: the CLI's exit codes
/// follow it, and the volume server sends it with an error across its control socket, so
/// that a client's exit code is the same whether the repository was opened here or there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The target could not be reached or did not answer within its deadline: retry later.
    Unreachable,
    /// The target refused access.
    Denied,
    /// The target is full.
    Full,
    /// The request itself was wrong.
    Invalid,
    /// Something of that name exists already.
    Conflict,
    /// There is no repository there.
    NoRepository,
    WrongPassword,
    /// Locked by another process, or the lock was lost.
    Locked,
    Interrupted,
    /// Anything else: the operation did not complete.
    Other,
}

impl Failure {
    pub fn of_backend(e: &BackendError) -> Failure {
        match e.kind() {
            ErrorKind::Unreachable | ErrorKind::TimedOut => Failure::Unreachable,
            ErrorKind::PermissionDenied => Failure::Denied,
            ErrorKind::NoSpace => Failure::Full,
            ErrorKind::Invalid => Failure::Invalid,
            ErrorKind::AlreadyExists => Failure::Conflict,
            ErrorKind::NotFound if e.is_repository_missing() => Failure::NoRepository,
            ErrorKind::Cancelled => Failure::Interrupted,
            _ => Failure::Other,
        }
    }

    /// The failure behind `e`: the first repository or backend error among it and its
    /// sources (context wrappers are looked through); `None` when there is none.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<Failure> {
        let mut cur = Some(e);
        while let Some(c) = cur {
            if let Some(r) = c.downcast_ref::<Error>() {
                return Some(r.failure());
            }
            if let Some(b) = c.downcast_ref::<BackendError>() {
                return Some(Failure::of_backend(b));
            }
            cur = c.source();
        }
        None
    }
}

impl Error {
    /// What the caller must do about it ([`Failure`]).
    pub fn failure(&self) -> Failure {
        match self {
            Error::NotARepository(_) => Failure::NoRepository,
            Error::WrongPassword { .. } => Failure::WrongPassword,
            Error::Locked { .. } | Error::LockLost { .. } => Failure::Locked,
            Error::Interrupted => Failure::Interrupted,
            Error::NotAGroup(_) => Failure::Invalid,
            Error::Backend(b) => Failure::of_backend(b),
            _ => Failure::Other,
        }
    }
}
