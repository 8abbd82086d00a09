//! The volume engine's errors: by what the caller must do (exit codes follow them).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no volume {0:?}")]
    NotFound(String),
    #[error("volume {0:?} already exists")]
    Exists(String),
    #[error("volume {0:?} is in use (being served); stop serving it first")]
    InUse(String),
    /// In use, the message saying by what (whole: also what the volume server answers).
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("volume metadata {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error(transparent)]
    Repo(#[from] kura_repo::Error),
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

/// An I/O error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
