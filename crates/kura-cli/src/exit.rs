//! Exit codes (documented in README.md). Scripts depend on these; do not renumber.

use kura_repo::backend::BackendError;
use kura_repo::{Error, Failure};

/// The exit code for what the caller must do.
pub fn failure_code(f: Failure) -> i32 {
    match f {
        Failure::Unreachable => TARGET_UNREACHABLE,
        Failure::Denied => TARGET_DENIED,
        Failure::Full => TARGET_FULL,
        Failure::Invalid => USAGE,
        Failure::Conflict => CONFLICT,
        Failure::NoRepository => NO_REPOSITORY,
        Failure::WrongPassword => WRONG_PASSWORD,
        Failure::Locked => LOCKED,
        Failure::Interrupted => INTERRUPTED,
        Failure::Other => FATAL,
    }
}

fn backend_code(e: &BackendError) -> i32 {
    failure_code(Failure::of_backend(e))
}

fn repo_code(e: &Error) -> i32 {
    failure_code(e.failure())
}

fn tape_code(e: &kura_tape::Error) -> i32 {
    use kura_tape::Error as T;
    match e {
        T::MountTimeout(_) | T::NoDrive(_) => NO_MEDIUM,
        T::Refused(_) => MEDIUM_REFUSED,
        T::EndOfMedium(_) => TARGET_FULL,
        T::Device { .. } | T::NoTape(_) | T::Changer { .. } | T::TimedOut { .. } => {
            TARGET_UNREACHABLE
        }
        T::Invalid(_) => USAGE,
        T::Cancelled => INTERRUPTED,
        T::Format(_) => DAMAGED,
    }
}

fn catalog_code(e: &kura_catalog::Error) -> i32 {
    use kura_catalog::Error as C;
    match e {
        C::Invalid(_) => USAGE,
        C::UnknownResource(_) | C::UnknownJob(_) | C::UnknownBackup(_) => NOT_FOUND,
        C::Duplicate(_) | C::InUse(_) => CONFLICT,
        C::Unavailable { .. } | C::LeaseLost(_) => UNAVAILABLE,
        C::Db { .. } if e.is_unreachable() => CATALOG_UNREACHABLE,
        _ => FATAL,
    }
}

pub const OK: i32 = 0;
/// A fatal error (the operation did not complete).
pub const FATAL: i32 = 1;
/// Wrong command-line usage (clap's own code).
pub const USAGE: i32 = 2;
/// Completed, but incomplete: some source files could not be read (backup), or some files
/// could not be restored (restore).
pub const INCOMPLETE: i32 = 3;
/// `check` found damage; `catalog verify` found differences.
pub const DAMAGED: i32 = 4;
/// `target probe` found the target unhealthy.
pub const TARGET_UNHEALTHY: i32 = 5;
/// A storage target could not be reached or did not answer within its deadline (transient:
/// retry later or use another target).
pub const TARGET_UNREACHABLE: i32 = 6;
/// A storage target refused access (credentials, permissions, read-only file system).
pub const TARGET_DENIED: i32 = 7;
/// A storage target is full.
pub const TARGET_FULL: i32 = 8;
/// A mirrored backup succeeded (quorum met) but one or more targets were dropped; the report
/// names them and why.
pub const DEGRADED: i32 = 9;
/// There is no repository at the given location.
pub const NO_REPOSITORY: i32 = 10;
/// The repository is locked by another process (only another prune excludes a prune), or a
/// backup lost its lock while it ran (nothing was committed; run it again).
pub const LOCKED: i32 = 11;
/// Wrong password.
pub const WRONG_PASSWORD: i32 = 12;
/// A named resource or job does not exist in the catalog.
pub const NOT_FOUND: i32 = 13;
/// A resource or job of that name already exists, or the resource is in use.
pub const CONFLICT: i32 = 14;
/// Not enough usable resources to secure what a job needs.
pub const UNAVAILABLE: i32 = 15;
/// The catalog database could not be reached or opened.
pub const CATALOG_UNREACHABLE: i32 = 16;
/// The daemon this command is configured to use (`KURA_DAEMON`, `[daemon] url`) could not
/// be reached.
pub const DAEMON_UNREACHABLE: i32 = 17;
/// The daemon refused the API token (unknown, revoked or expired).
pub const DAEMON_REFUSED: i32 = 18;
/// No usable tape came: a mount request went unanswered until `--mount-timeout`, or every
/// drive of the library failed.
pub const NO_MEDIUM: i32 = 19;
/// A tape was refused: not the one asked for, unlabelled, of another pool or media set
/// (nothing was written to it).
pub const MEDIUM_REFUSED: i32 = 20;
/// Interrupted (SIGINT, SIGTERM or SIGHUP).
pub const INTERRUPTED: i32 = 130;
/// Standard output was a pipe whose reader went away (`kura … | head`): the exit a shell
/// shows for SIGPIPE, without its message. What was written so far stays consistent (a
/// backup cut here is like a killed one).
pub const BROKEN_PIPE: i32 = 141;

/// The exit code for a fatal error, by the first `kura_repo::Error` in its chain.
pub fn code_for(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return repo_code(e);
        }
        if let Some(e) = cause.downcast_ref::<kura_catalog::Error>() {
            return catalog_code(e);
        }
        if let Some(e) = cause.downcast_ref::<kura_manager::Error>() {
            return match e {
                kura_manager::Error::Catalog(c) => catalog_code(c),
                kura_manager::Error::Repo(r) => repo_code(r),
                kura_manager::Error::Backend(b) => backend_code(b),
                kura_manager::Error::Invalid(_) => USAGE,
                kura_manager::Error::NotStarted(_) => UNAVAILABLE,
                kura_manager::Error::Hook(_) => FATAL,
                kura_manager::Error::Tape(t) => tape_code(t),
            };
        }
        if let Some(t) = cause.downcast_ref::<kura_tape::Error>() {
            return tape_code(t);
        }
        if let Some(b) = cause.downcast_ref::<BackendError>() {
            return backend_code(b);
        }
        if let Some(v) = cause.downcast_ref::<kura_volume::Error>() {
            use kura_volume::Error as V;
            return match v {
                V::NotFound(_) => NOT_FOUND,
                V::Exists(_) | V::InUse(_) => CONFLICT,
                V::Invalid(_) => USAGE,
                V::Repo(r) => repo_code(r),
                V::Remote { failure, .. } => failure_code(*failure),
                V::Nbd(kura_nbd::ClientError::Address(_)) => USAGE,
                V::Nbd(kura_nbd::ClientError::Io { .. }) => TARGET_UNREACHABLE,
                V::Nbd(_) => FATAL,
                V::Corrupt { .. } | V::Io { .. } => FATAL,
            };
        }
        if let Some(d) = cause.downcast_ref::<kura_daemon::Error>() {
            use kura_daemon::Error as D;
            return match d {
                D::Invalid(_) => USAGE,
                D::NotFound(_) => NOT_FOUND,
                D::Conflict(_) => CONFLICT,
                D::Unavailable(_) => CATALOG_UNREACHABLE,
                D::Unauthorized | D::Io { .. } | D::Internal(_) => FATAL,
            };
        }
        if let Some(c) = cause.downcast_ref::<kura_daemon::client::ClientError>() {
            return crate::commands::task::client_code(c);
        }
        if let Some(UsageError(_)) = cause.downcast_ref::<UsageError>() {
            return USAGE;
        }
    }
    FATAL
}

/// A usage mistake found after argument parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
