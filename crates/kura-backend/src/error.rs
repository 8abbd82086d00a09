//! Classified backend errors.
//!
//! The manager (later) fails over on target errors, so the class must be decided here, where
//! the cause is known, and never by parsing a message upstream.

use std::fmt;
use std::io;

/// What kind of failure a backend operation met. Callers match on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The target could not be reached (connection refused, host down, device gone).
    Unreachable,
    /// The operation did not finish within its deadline.
    TimedOut,
    /// Authentication failed or the caller may not do this (EACCES, EPERM, EROFS, HTTP 403).
    PermissionDenied,
    /// The object does not exist.
    NotFound,
    /// The object exists but must not be overwritten.
    AlreadyExists,
    /// The object is shorter than expected or otherwise malformed at the storage level.
    Corrupt,
    /// The target is full (ENOSPC, EDQUOT).
    NoSpace,
    /// The request itself is invalid (a malformed target URL or option): a usage error,
    /// never worth retrying.
    Invalid,
    /// The caller gave the operation up (its run was cancelled) before it was sent: the
    /// target did nothing wrong, and group backends must not hold it against the member.
    Cancelled,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Whether errors of this class are usually worth retrying.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unreachable | ErrorKind::TimedOut)
    }

    /// A short stable name, used in JSON output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::TimedOut => "timed-out",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Other => "other",
        }
    }

    /// Classify an OS error.
    pub fn from_io(e: &io::Error) -> ErrorKind {
        if let Some(code) = e.raw_os_error() {
            match code {
                libc::ENOSPC | libc::EDQUOT => return ErrorKind::NoSpace,
                libc::EACCES | libc::EPERM | libc::EROFS => return ErrorKind::PermissionDenied,
                libc::ENOENT => return ErrorKind::NotFound,
                libc::EEXIST => return ErrorKind::AlreadyExists,
                libc::ETIMEDOUT => return ErrorKind::TimedOut,
                libc::ECONNREFUSED
                | libc::ECONNRESET
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ENODEV
                | libc::ENXIO
                | libc::ESTALE => return ErrorKind::Unreachable,
                _ => {}
            }
        }
        match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ErrorKind::PermissionDenied
            }
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            io::ErrorKind::TimedOut => ErrorKind::TimedOut,
            io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::NoSpace,
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable => ErrorKind::Unreachable,
            _ => ErrorKind::Other,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed backend operation: what was tried, on which object, where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{op} {object} on {location}: {detail}")]
pub struct BackendError {
    kind: ErrorKind,
    op: &'static str,
    object: String,
    location: String,
    detail: String,
    /// Worth retrying (connection trouble, timeouts, 5xx); decided where the cause is known.
    transient: bool,
    /// The repository's own location is gone (see [`BackendError::repository_missing`]).
    repository_missing: bool,
    #[source]
    source: Option<io::Error>,
}

impl BackendError {
    /// An error with an explicit class and detail message.
    pub fn new(
        kind: ErrorKind,
        op: &'static str,
        object: impl Into<String>,
        location: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        BackendError {
            kind,
            op,
            object: object.into(),
            location: location.into(),
            detail: detail.into(),
            transient: kind.is_transient(),
            repository_missing: false,
            source: None,
        }
    }

    /// A write into a repository whose location does not exist (an unmounted NAS, a wrong
    /// path): `NotFound`, and the caller reports "no repository" rather than a lost object.
    pub fn repository_missing(
        op: &'static str,
        object: impl Into<String>,
        location: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(ErrorKind::NotFound, op, object, location, detail);
        e.repository_missing = true;
        e
    }

    /// Whether the repository location itself is missing.
    pub fn is_repository_missing(&self) -> bool {
        self.repository_missing
    }

    /// `create` on a location that already holds a repository.
    pub fn repository_exists(location: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::AlreadyExists,
            "create",
            "config",
            location,
            "a repository already exists here",
        )
    }

    /// Wrap an OS error, classifying it.
    pub fn io(
        op: &'static str,
        object: impl Into<String>,
        location: impl Into<String>,
        err: io::Error,
    ) -> Self {
        let kind = ErrorKind::from_io(&err);
        let detail = err.to_string();
        BackendError {
            kind,
            op,
            object: object.into(),
            location: location.into(),
            detail,
            transient: kind.is_transient(),
            repository_missing: false,
            source: Some(err),
        }
    }

    /// Override whether retrying may help (e.g. an HTTP 503 classified as `Other`).
    pub fn with_transient(mut self, transient: bool) -> Self {
        self.transient = transient;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// Record how many attempts were made and how long they took, in the message:
    /// "… connection refused after 3 tries, 12.1 s".
    pub fn after_tries(mut self, tries: u32, elapsed: std::time::Duration) -> Self {
        if tries > 1 {
            self.detail = format!(
                "{} after {tries} tries, {:.1} s",
                self.detail,
                elapsed.as_secs_f64()
            );
        }
        self
    }

    /// The detail message (without operation, object and location).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed: `put`, `get`, `list`, …
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The object the operation was on, relative to the repository (`data/3f/3f2a…`).
    pub fn object(&self) -> &str {
        &self.object
    }

    pub fn location(&self) -> &str {
        &self.location
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_common_os_errors() {
        let cases = [
            (libc::ENOSPC, ErrorKind::NoSpace),
            (libc::EDQUOT, ErrorKind::NoSpace),
            (libc::EACCES, ErrorKind::PermissionDenied),
            (libc::EROFS, ErrorKind::PermissionDenied),
            (libc::ENOENT, ErrorKind::NotFound),
            (libc::ECONNREFUSED, ErrorKind::Unreachable),
            (libc::ETIMEDOUT, ErrorKind::TimedOut),
            (libc::EIO, ErrorKind::Other),
        ];
        for (code, kind) in cases {
            assert_eq!(
                ErrorKind::from_io(&io::Error::from_raw_os_error(code)),
                kind,
                "{code}"
            );
        }
    }

    #[test]
    fn message_names_operation_object_and_location() {
        let e = BackendError::io(
            "put",
            "data/3f/3f2a",
            "/srv/repo",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let msg = e.to_string();
        assert!(msg.starts_with("put data/3f/3f2a on /srv/repo: "), "{msg}");
        assert_eq!(e.kind(), ErrorKind::NoSpace);
    }
}
