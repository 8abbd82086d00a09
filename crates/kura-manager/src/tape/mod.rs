//! Backups on tape (seeds 000/001/002/004): copying chosen backups of a repository onto the
//! media sets of one or more libraries, reading them back, and entering what tapes hold into
//! a catalog that lost it.
//!
//! - [`copy`]: `kura tape backup` — management information first, then the packs the set
//!   does not hold yet (deduplicated within the media set), to several libraries at once
//!   (a mirror: each library its own media set), with spanning, mount waits and drive
//!   fail-over done by [`kura_tape::session`]. The catalog learns each piece only after its
//!   archive's filemark.
//! - [`restore`]: a tape backup into a private staging repository (its packs read from tape,
//!   by file number, tape by tape, each asked for by label), then restored by the one restore
//!   path every repository uses, so every guarantee of `kura restore` holds.
//! - [`scan`]: `kura catalog rebuild --from-media` — labels, sets, backups and pieces read
//!   from the tapes alone, each entered once.

pub mod copy;
mod feed;
pub mod media;
pub mod restore;
pub mod scan;

use kura_catalog::Catalog;
use kura_tape::library::{Library, LibrarySpec};

use crate::{Error, Result};

/// Open the library registered as target `name` (a sequential target with a library URL).
pub fn open_library(catalog: &Catalog, name: &str) -> Result<Library> {
    let r = catalog.resource(name)?;
    let t = r.target()?;
    if !t.sequential || !LibrarySpec::is_library_url(&t.url) {
        return Err(Error::Invalid(format!(
            "target {name} is not a tape library (a sequential target with a vlib:// or \
             tape:// URL)"
        )));
    }
    Ok(LibrarySpec::parse(&t.url)?.open()?)
}

/// What a tape operation tells its caller as it goes (the CLI prints, the daemon logs and
/// runs its hook).
pub trait TapeEvents: Sync {
    /// An operator must act: put a tape into a library.
    fn mount_request(&self, library: &str, message: &str);
    fn mount_satisfied(&self, library: &str);
    /// Something worth a line in a log.
    fn note(&self, message: &str);
}

/// Events that go to the log only.
pub struct LogEvents;

impl TapeEvents for LogEvents {
    fn mount_request(&self, library: &str, message: &str) {
        tracing::warn!(library, "mount request: {message}");
    }
    fn mount_satisfied(&self, library: &str) {
        tracing::info!(library, "mount request satisfied");
    }
    fn note(&self, message: &str) {
        tracing::info!("{message}");
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn random_hex() -> String {
    hex::encode(kura_tape::archive::new_archive_id())
}
