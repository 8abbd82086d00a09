//! kura's shared vocabulary: the types that the CLI, the catalog, the manager, the volume
//! engine and the daemon's API all speak, each defined once.
//!
//! - [`ByteSize`] — the one size grammar (`4096`, `512K`, `64MiB`, `1.5GiB`, `10GB`);
//! - [`Duration`] and [`CalendarSpan`] — the one duration grammar (`500ms`, `30s`, `1h30m`,
//!   `2d`; and for retention `1y6m`, `2w3d12h`), sharing one tokenizer;
//! - [`JobSettings`], [`TargetConfig`], [`MediumConfig`], [`ResourceConfig`] — what the
//!   catalog stores as JSON, read strictly: a configuration that does not parse is a
//!   [`ConfigError`] naming the job or resource and the field, never a silent `null`;
//! - [`CatchUp`], [`Overlap`], [`WindowEnd`] — a scheduled job's policies and window;
//! - [`PolicyTable`], [`PolicyEntry`], [`Freeze`], [`PolicyView`] — the volume engine's
//!   host-free backup policies and what is reported about them;
//! - [`Extent`] — a byte range with a checked end (split areas of volumes);
//! - [`JobRunReport`], [`BackupSummary`] — what a job run and a backup report (the CLI's
//!   `--json`, the REST API's answers).
//!
//! Why a crate of its own: these were parsed in several places with different grammars
//! (three size parsers, three duration parsers) and read from `serde_json::Value` by string
//! key where they were used. The daemon and its REST API need the same types again, so
//! they live here, once.
//!
//! What may depend on it: every kura crate. What it may depend on: nothing kura-specific
//! (serde, serde_json, thiserror, chrono) — it is the bottom of the dependency graph, so
//! that no crate has to depend on another's internals to share a type.

mod config;
mod duration;
mod error;
mod extent;
mod lex;
#[cfg(feature = "openapi")]
mod openapi;
mod policy;
mod report;
mod size;
mod window;

pub use config::{ConfigKind, JobSettings, MediumConfig, ResourceConfig, TapeJob, TargetConfig};
pub use duration::{CalendarSpan, Duration};
pub use error::{ConfigError, ParseError};
pub use extent::Extent;
pub use policy::{Freeze, PolicyEntry, PolicyProblem, PolicyRun, PolicyTable, PolicyView};
pub use report::{
    BackupSummary, CopyReport, JobRunReport, RunModeName, RunStats, SectionReport, SkippedTarget,
    TargetStats,
};
pub use size::ByteSize;
pub use window::{CatchUp, Overlap, WindowEnd};
