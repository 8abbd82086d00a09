//! Volume backup records (seed 002's 512-byte "volume information", as kura keeps it): for
//! each backup of a volume, its format id, label, host, mount point, time, and the backup
//! (repository location and snapshot id). They live in `NAME.records` beside the volume —
//! outside its address space, so no host write can touch them — one JSON object per line,
//! appended and fsynced after the snapshot is durable. Listing them is enough to find every
//! backup of the volume again, and the newest is the parent of the next incremental backup.

use serde::{Deserialize, Serialize};

/// The format id of a kura volume backup: the raw bytes, as a fixed-chunk image snapshot.
pub const FORMAT_RAW: &str = "kura-raw-image";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub v: u32,
    /// What the backup holds ([`FORMAT_RAW`]).
    pub format: String,
    pub label: Option<String>,
    pub host: String,
    pub mount_point: Option<String>,
    /// When the backup's data was taken (RFC 3339, UTC).
    pub time: String,
    /// The repository: its URL as given (endpoint and options included — never credentials,
    /// which no target URL carries; a local path absolute), and its id (what identifies it
    /// however it is reached); the snapshot id there.
    pub repository: String,
    pub repository_id: String,
    pub backup: String,
    /// Bytes of the image: the volume's size, or the area's length.
    pub size: u64,
    /// Whether only changed chunks were read.
    pub incremental: bool,
    /// Set when the backup holds one split area of the volume (its secondary's frozen
    /// bytes), not the whole volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<RecordArea>,
}

/// The area of a volume a backup holds: `length` bytes from `offset`, as they were at
/// `split` (the time the area of its mirror pair was split; also the record's `time`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordArea {
    pub offset: u64,
    pub length: u64,
    pub split: String,
}
