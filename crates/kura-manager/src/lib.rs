//! The job engine: runs a backup job over subsystems the catalog secured (seeds 000/001).
//!
//! A run goes: secure n disjoint subsystems (`kura_catalog::Catalog::secure`) → keep the
//! lease alive from a side thread → pre hook → open the targets as one repository group →
//! back up → record what is durable in the catalog → post hook (always) → release with the
//! outcome. Resources are released on every path, panics included (the catalog's guard).
//!
//! # Modes
//! - **mirror**: every file goes to all n targets at once through a
//!   [`MirrorBackend`](kura_backend::MirrorBackend); a target that fails or stalls is dropped
//!   with its reason and the others go on; the run succeeds when at least `quorum` finish.
//!   Each finished target holds a complete repository with the snapshot, and the catalog
//!   records one copy per finished target (an extent covering the whole source, positioned
//!   at the snapshot id).
//! - **failover**: one target at a time through a
//!   [`FailoverBackend`](kura_backend::FailoverBackend). The saver closes an extent every
//!   `extent_bytes` of packs by writing the index file listing them; the extent is
//!   acknowledged when that index is durable on the active target. A write error, or no
//!   progress for `extent_timeout`, moves the run to the next target, which gets the
//!   unacknowledged extent and everything after; nothing acknowledged is sent again. The run
//!   fails only when every target has failed. The catalog records one row per acknowledged
//!   extent — target, medium, and position `SNAPSHOT:INDEX` ([`Position`]) — and the
//!   snapshot goes to every target holding a section that has not failed.
//!
//! Reading a backup back ([`open_backup`]) gives one view over every target holding part of
//! it, healthiest first; [`heal()`] copies the sections each target lacks so that each ends
//! with a complete copy.
//!
//! # What the catalog is told
//! Only what is durable: the backup row and its copies or sections are written after the
//! snapshot was written on those targets. A target dropped or failed during the run gets an
//! error recorded against its health (three in a row make it *not usable*). A run that fails
//! records no backup at all.

pub mod control;
mod failover;
pub mod fit;
pub mod heal;
pub mod health;
mod hooks;
mod mirror;
pub mod position;
pub mod rebuild;
mod run;
pub mod spec;
pub mod sync;
pub mod tape;
pub mod verify;

pub use control::RunControl;
pub use heal::{BackupView, HealReport, heal, open_backup};
pub use hooks::{Hook, HookPhase};
pub use position::Position;
pub use run::{Copy, JobReport, JobSpec, Route, RunMode, run_job};
pub use spec::Timings;

/// Errors of a job run, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] kura_catalog::Error),
    #[error(transparent)]
    Repo(#[from] kura_repo::Error),
    #[error(transparent)]
    Backend(#[from] kura_backend::BackendError),
    #[error(transparent)]
    Tape(#[from] kura_tape::Error),
    #[error("{0}")]
    Hook(String),
    #[error("{0}")]
    Invalid(String),
    /// The run could not start in time: its targets stayed busy to the end of the wait it
    /// was given ([`JobSpec::secure_by`]).
    #[error("not started: {0}")]
    NotStarted(String),
}

pub type Result<T> = std::result::Result<T, Error>;
