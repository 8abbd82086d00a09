//! The volume engine (issue 6): kura's software disk array. It owns the write path of the
//! volumes it serves, so it can freeze, track and copy them without stalling hosts.
//!
//! # Volumes on disk
//! A volume `NAME` is two files in the data directory:
//! - `NAME.raw`: the volume's bytes, a sparse file exactly the volume's size. Its address
//!   space holds the host's data and nothing else.
//! - `NAME.vol`: the volume's metadata (JSON, `"magic": "KURAVOL1"`, specified in
//!   `docs/FORMAT.md`), kept *outside* the address space: size, creation time, attributes.
//!   Written atomically (temp file, fsync, rename, fsync of the directory).
//!
//! - `NAME.dirty`: the changed-block tracking bitmap (`KURADBM1`, see [`dirty`]).
//! - `NAME.records`: one volume backup record per backup (see [`VolumeRecord`]).
//!
//! # Serving and exclusion
//! A served volume's raw file holds a shared `flock`; `resize` and `delete` take it
//! exclusively without waiting, so they refuse a volume that is being served ("in use")
//! instead of pulling it from under a host. Several connections of one server share one
//! [`VolumeExport`] (and one dirty bitmap); a second server process is refused, since two
//! processes could not keep one bitmap. The NBD server advertises multi-connection
//! consistency because every flush is an `fdatasync` of the one file (and writes the bitmap).

mod backup;
pub mod control;
pub mod dirty;
pub mod engine;
mod export;
pub mod pair;
mod records;
pub mod session;
mod store;

pub use backup::{VolumeBackup, backup_volume};
pub use dirty::{DirtyMap, DirtyState, Trust};
pub use engine::{Engine, Freeze, JobState, JobStatus, Opened, RepoOpener};
pub use export::{DIRTY_CONTEXT, VolumeExport};
pub use pair::{PairConfig, PairInfo, PairState, ResyncOutcome, parse_area};
pub use records::{FORMAT_RAW, VolumeRecord};
pub use session::{BlockState, Session, SessionSource, SessionStats, WorkVolume};
pub use store::{Error, Result, VolumeInfo, VolumeMeta, VolumeStore, parse_size};
