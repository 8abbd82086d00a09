//! The volume engine: kura's software disk array. It owns the write path of the
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
//! - `NAME.chains`: changed-block tracking, one bitmap per repository the volume is backed
//!   up to (`KURACBT1`, see [`chains`]). A `NAME.dirty` of earlier versions (one bitmap for
//!   all repositories) is never trusted and is removed when the chains are first opened.
//! - `NAME.records`: one volume backup record per backup (see [`VolumeRecord`]).
//!
//! # Serving and exclusion
//! A served volume's raw file holds a shared `flock`; `resize` and `delete` take it
//! exclusively without waiting, so they refuse a volume that is being served ("in use")
//! instead of pulling it from under a host. A server holds every volume it serves for as long
//! as it runs, whether or not a client is connected. Several connections of one server share
//! one [`VolumeExport`] (and one set of chains); a second server process is refused, since
//! two processes could not keep one set of chains. The NBD server advertises
//! multi-connection consistency because every flush is an `fdatasync` of the one file (and
//! writes the chains).
//!
//! # Modules, in dependency order
//! `error` ← `dirty` (a granule bitmap) ← `chains`, `pair` (the pair's state and hooks),
//! `session` (copy-before-write) ← `export` (the write path: the only place host changes
//! reach a volume) ← `store` (every `impl VolumeStore`: volumes, records, the pool, serving,
//! pair operations) ← `backup`, `restore` (an image snapshot into a volume or an NBD export)
//! ← `areas` (backups of split areas) ← `engine` ← `control` ← `host` (a serving process:
//! NBD server, control socket, engine and holds, shared by `kura volume serve` and the daemon).

mod areas;
mod backup;
pub mod chains;
pub mod control;
pub mod dirty;
pub mod engine;
mod error;
mod export;
mod hold;
pub mod host;
mod job;
pub mod pair;
mod records;
mod restore;
pub mod session;
mod store;

pub use areas::backup_area;
pub use backup::{VolumeBackup, backup_volume};
pub use chains::{ChainSet, ChainState, Identity, Tracking, Trust};
pub use dirty::{DirtyMap, DirtyState};
pub use engine::{Engine, Freeze, JobState, JobStatus, Opened, RepoAccess, RepoOpener};
pub use error::{Error, Result};
pub use export::{DIRTY_CONTEXT, VolumeExport};
pub use host::Host;
pub use pair::{PairConfig, PairInfo, PairState, ResyncOutcome, SplitArea};
pub use records::{FORMAT_RAW, RecordArea, VolumeRecord};
pub use restore::{VolumeRestore, restore_to_nbd, restore_volume};
pub use session::{BlockState, Session, SessionSource, SessionStats, WorkVolume};
pub use store::{VolumeInfo, VolumeMeta, VolumeStore, parse_area};
