//! Sequential media for kura: tape drives and changers behind two traits, the tape format,
//! and the writer and reader that span a stream of archives over several tapes.
//!
//! (Crate docs are completed as the modules land.)

pub mod archive;
pub mod drive;
pub mod error;
pub mod format;
pub mod label;
pub mod library;
pub mod mtx;
pub mod read;
pub mod scsi;
pub mod session;
pub mod vlib;

pub use drive::{
    Changer, Drive, DriveSlotStatus, DriveStatus, LibraryStatus, Record, SlotStatus, Written,
};
pub use error::{Error, Result};
