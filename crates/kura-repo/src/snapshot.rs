//! Snapshot manifests.
//!
//! A snapshot is a sealed file (magic `KURASNP1`) holding a CBOR map: when, where from, what
//! (a directory tree's root blob, or an image's fixed index), its parent, tags, and the backup
//! summary. Its name is the BLAKE3 of its stored bytes. A snapshot is written last, after every
//! blob it references is in a durable, indexed pack: a snapshot that exists is restorable.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::id::Id;
use crate::util::Timestamp;

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    /// A file tree: the root tree blob. Backed-up paths appear in it under their absolute
    /// path (`/home/a/docs` is `home` → `a` → `docs`).
    Tree { root: Id },
    /// A block image or block device.
    Image(ImageInfo),
}

/// An image backup: size and fixed index (see [`crate::image`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The source path (file or device).
    pub source: ByteBuf,
    pub size: u64,
    pub chunk_size: u32,
    /// True when the source was a block device.
    pub device: bool,
    /// Tree blobs holding the fixed index, in order.
    pub pieces: Vec<Id>,
}

/// Counters of one backup run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub backup_start: Timestamp,
    pub backup_end: Timestamp,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    pub other_entries: u64,
    /// Logical bytes of every file (or the image) in the snapshot.
    pub total_bytes: u64,
    /// Bytes actually read from the source (unchanged files are not read).
    pub bytes_read: u64,
    pub data_blobs_new: u64,
    pub tree_blobs_new: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_added_raw: u64,
    /// Stored bytes of new blobs (compressed, encrypted).
    pub bytes_added: u64,
    /// Entries that could not be read and were left out.
    pub warnings: u64,
    /// Files saved whose size, mtime or ctime changed while they were read (saved as read,
    /// possibly inconsistent; the next backup reads them again).
    pub files_changed_while_read: u64,
}

/// A snapshot manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub v: u32,
    pub time: Timestamp,
    pub host: String,
    pub username: String,
    pub paths: Vec<ByteBuf>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub parent: Option<Id>,
    pub content: Content,
    #[serde(default)]
    pub summary: Summary,
    /// For a snapshot written by `kura repair snapshots`: the damaged snapshot it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
}

impl Snapshot {
    pub fn paths_lossy(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    pub fn is_image(&self) -> bool {
        matches!(self.content, Content::Image(_))
    }
}

/// A snapshot with its id, as listed.
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    pub id: Id,
    pub snapshot: Snapshot,
}
