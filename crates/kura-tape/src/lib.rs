//! Sequential media for kura: tape drives and changers behind two traits, the tape format,
//! and the writer and reader that span a stream of archives over several tapes.
//!
//! # Layers
//! - **Devices** ([`drive`]): a [`Drive`] moves blocks and filemarks and reports the early
//!   warning; a [`Changer`] moves tapes between slots and drives. Two implementations: the
//!   Linux SCSI tape driver with an `mtx` changer ([`scsi`], [`mtx`]) and the file-backed
//!   virtual library ([`vlib`]). [`library`] names a library by URL and opens its parts.
//! - **Format** ([`format`](mod@format), [`archive`], [`label`]): self-checking blocks, archives (one tape
//!   file each) of entries that may be cut at the early warning and go on on the next tape,
//!   and the labels and records kura writes. Specified in `docs/FORMAT.md`, "Tapes".
//! - **Sessions** ([`session`], [`read`]): writing a media set (label checks before any
//!   write, spanning, acknowledgement only after a filemark, drive fail-over, bounded mount
//!   waits) and reading it back by label and file number.
//!
//! # Why nothing here knows a repository
//! What goes on tape is objects (repository packs and files, as bytes) given by the caller
//! (`kura-manager`), and what is acknowledged is reported back through [`session::MediaHost`]
//! so that the caller's catalog records only what a filemark made durable. The crate can be
//! tested, and a tape read, without a repository or a catalog.

pub mod archive;
pub mod barcode;
pub mod drive;
pub mod error;
pub mod format;
pub mod label;
pub mod library;
pub mod mtx;
pub mod probe;
pub mod read;
pub mod scsi;
pub mod session;
pub mod vlib;

pub use drive::{
    Changer, Drive, DriveSlotStatus, DriveStatus, LibraryStatus, Record, SlotStatus, Written,
};
pub use error::{Error, Result};
