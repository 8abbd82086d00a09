//! The two device traits every library is built from: a [`Drive`] (one tape transport:
//! blocks, filemarks, positioning) and a [`Changer`] (slots, drives, barcodes, moves).
//!
//! # Semantics, as Linux's `st` driver gives them
//! - A tape is a sequence of *files* separated by filemarks; a file is a sequence of
//!   variable-length *blocks*. File numbers count filemarks from the beginning of the tape.
//! - Writing anywhere erases everything after it (there is no overwrite in place), so a
//!   writer appends only after [`Drive::to_end_of_data`] or rewrites from a file boundary.
//! - Near the end, the drive signals *early warning*: the write succeeded, but only a little
//!   more fits. A writer finishes what it must (the current block, a filemark) and changes
//!   tapes. Past that, [`Error::EndOfMedium`] means the block was *not* written.
//! - [`Drive::write_filemarks`] with `0` flushes the drive's buffer to the medium: what was
//!   written before it returned is on the tape. Nothing is *acknowledged* (recorded in a
//!   catalog) before that.
//!
//! [`Error::EndOfMedium`]: crate::Error::EndOfMedium

use crate::Result;

/// What reading one record gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A block of this many bytes, now in the caller's buffer.
    Block(usize),
    /// A filemark: the end of a file. The drive is now at the start of the next file.
    Filemark,
    /// Nothing more is written on this tape (blank, or the end of what was written; a tape
    /// cut short reads the same).
    EndOfData,
}

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Written {
    /// The drive passed the early-warning point: finish up and change tapes.
    pub early_warning: bool,
}

/// What a drive says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriveStatus {
    /// A tape is in the drive and ready.
    pub loaded: bool,
    /// The tape may not be written (write-protect tab, read-only tape file).
    pub write_protected: bool,
    /// The current file number, when the drive knows it.
    pub file: Option<u32>,
    /// At the beginning of the tape.
    pub at_start: bool,
}

/// One tape drive. Not shared between threads: a job owns the drive it writes.
pub trait Drive: Send {
    /// How the drive is named in messages (`/dev/nst0`, `vlib drive 1`).
    fn name(&self) -> String;
    fn status(&mut self) -> Result<DriveStatus>;
    fn rewind(&mut self) -> Result<()>;
    /// Position at the first block of file `n` (after the `n`-th filemark from the start),
    /// by spacing over filemarks (the drive positions at speed; the data is not read).
    fn locate_file(&mut self, n: u32) -> Result<()>;
    /// Position after the last thing written; returns the number of the file that the next
    /// write starts (the number of filemarks before the end of data).
    fn to_end_of_data(&mut self) -> Result<u32>;
    fn write_block(&mut self, data: &[u8]) -> Result<Written>;
    /// Write `n` filemarks; `0` only flushes the drive's buffer to the medium (see module docs).
    fn write_filemarks(&mut self, n: u32) -> Result<Written>;
    /// Read the next record into `buf` (which must hold the largest block written).
    fn read_block(&mut self, buf: &mut [u8]) -> Result<Record>;
    /// Rewind and take the tape offline (ready for the changer to take it out).
    fn unload(&mut self) -> Result<()>;
}

/// One storage slot of a library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotStatus {
    /// Numbered from 1, as `mtx` and libraries number them.
    pub slot: u32,
    /// The barcode of the tape in it; `None` when empty.
    pub barcode: Option<String>,
    /// The slot is an import/export (mail) slot.
    pub import_export: bool,
}

/// One drive as the changer sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriveSlotStatus {
    /// Numbered from 0, as `mtx` numbers data transfer elements.
    pub drive: u32,
    /// The barcode of the tape in it; `None` when empty.
    pub barcode: Option<String>,
    /// The slot the tape came from, when the changer knows it.
    pub source_slot: Option<u32>,
}

/// What is where in a library.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LibraryStatus {
    pub drives: Vec<DriveSlotStatus>,
    pub slots: Vec<SlotStatus>,
}

impl LibraryStatus {
    /// The slot holding `barcode`.
    pub fn slot_of(&self, barcode: &str) -> Option<u32> {
        self.slots
            .iter()
            .find(|s| s.barcode.as_deref() == Some(barcode))
            .map(|s| s.slot)
    }

    /// The drive holding `barcode`.
    pub fn drive_of(&self, barcode: &str) -> Option<u32> {
        self.drives
            .iter()
            .find(|d| d.barcode.as_deref() == Some(barcode))
            .map(|d| d.drive)
    }

    /// An empty storage slot (not an import/export one), to unload into.
    pub fn empty_slot(&self) -> Option<u32> {
        self.slots
            .iter()
            .find(|s| s.barcode.is_none() && !s.import_export)
            .map(|s| s.slot)
    }
}

/// A medium changer (the robot). Every command is bounded in time by the implementation.
pub trait Changer: Send {
    fn status(&mut self) -> Result<LibraryStatus>;
    /// Move the tape in `slot` into `drive`.
    fn load(&mut self, slot: u32, drive: u32) -> Result<()>;
    /// Move the tape in `drive` into `slot` (the drive has unloaded it).
    fn unload(&mut self, drive: u32, slot: u32) -> Result<()>;
}
