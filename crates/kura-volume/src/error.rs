//! The volume engine's errors: by what the caller must do (exit codes follow them).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The whole message (see [`Error::no_volume`]): messages cross the control socket and
    /// must not be wrapped again on the other side.
    #[error("{0}")]
    NotFound(String),
    #[error("volume {0:?} already exists")]
    Exists(String),
    /// The whole message, saying what holds the thing (see [`Error::served`]).
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("volume metadata {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error(transparent)]
    Repo(#[from] kura_repo::Error),
    /// The volume server failed at something other than the request itself (a repository
    /// it opened, its own I/O), as its control socket reported it: the whole message, and
    /// what the caller must do about it.
    #[error("{message}")]
    Remote {
        failure: kura_repo::Failure,
        message: String,
    },
    #[error(transparent)]
    Nbd(#[from] kura_nbd::ClientError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Volume `name` is held by a server (or another process serving it).
    pub fn served(name: &str) -> Error {
        Error::InUse(format!(
            "volume {name:?} is in use (being served); stop serving it first"
        ))
    }

    /// What the caller must do about it, where a repository or the volume server says so
    /// (`Other` for the engine's own errors, which exit codes tell apart by variant).
    pub fn failure(&self) -> kura_repo::Failure {
        match self {
            Error::Repo(r) => r.failure(),
            Error::Remote { failure, .. } => *failure,
            _ => kura_repo::Failure::Other,
        }
    }

    /// There is no volume `name`.
    pub fn no_volume(name: &str) -> Error {
        Error::NotFound(format!("no volume {name:?}"))
    }
}

/// An I/O error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
