//! What a drive, changer or tape stream can fail with, classified by what the caller must do.

use std::time::Duration;

/// A tape error. The variant says what happened to the *medium* or *device*, so a writer can
/// tell "this tape is full, load the next" from "this drive is broken, fail over" from "this
/// tape is not the one we may write".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The physical end of the medium: the block was not written. (Early warning is not an
    /// error: see [`crate::drive::Written`].)
    #[error("{0}: end of medium, the block was not written")]
    EndOfMedium(String),
    /// The drive or the tape in it failed an operation (I/O error, write-protected medium,
    /// a tape file that cannot be written). The writer fails over to another drive.
    #[error("{what}: {source}")]
    Device {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// No tape is loaded in the drive.
    #[error("{0}: no tape loaded")]
    NoTape(String),
    /// A changer command failed (exit status, or the library refused the move).
    #[error("changer {what}: {reason}")]
    Changer { what: String, reason: String },
    /// A changer or drive command did not finish in time; it was killed.
    #[error("{what}: no answer within {:.1} s", .after.as_secs_f64())]
    TimedOut { what: String, after: Duration },
    /// What was read is not what the tape format says (bad magic, a block whose checksum
    /// fails, a truncated record). Names where.
    #[error("{0}")]
    Format(String),
    /// The tape is not one we may use here: wrong label, unlabelled, another pool or media
    /// set, or a state that forbids the operation. Never written to.
    #[error("{0}")]
    Refused(String),
    /// Waited for an operator to make a tape available, and none came.
    #[error("{0}")]
    MountTimeout(String),
    /// Every drive of the library failed.
    #[error("{0}")]
    NoDrive(String),
    /// Bad arguments or configuration (a library URL that does not parse, a slot that does
    /// not exist).
    #[error("{0}")]
    Invalid(String),
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn device(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Device {
            what: what.into(),
            source,
        }
    }

    /// Is this a fault of the drive (fail over to another) rather than of the tape's contents
    /// or the caller?
    pub fn is_drive_fault(&self) -> bool {
        matches!(
            self,
            Error::Device { .. } | Error::TimedOut { .. } | Error::NoTape(_)
        )
    }
}
