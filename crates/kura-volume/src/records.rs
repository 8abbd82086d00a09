//! Volume backup records (seed 002's 512-byte "volume information", as kura keeps it): for
//! each backup of a volume, its format id, label, host, mount point, time, and the backup
//! (repository location and snapshot id). They live in `NAME.records` beside the volume —
//! outside its address space, so no host write can touch them — one JSON object per line,
//! appended and fsynced after the snapshot is durable. Listing them is enough to find every
//! backup of the volume again, and the newest is the parent of the next incremental backup.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};

use crate::store::{Error, Result, VolumeStore};

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
    /// The repository: its location as given, and its id (what identifies it however it
    /// is reached); the snapshot id there.
    pub repository: String,
    pub repository_id: String,
    pub backup: String,
    pub size: u64,
    /// Whether only changed chunks were read.
    pub incremental: bool,
}

impl VolumeStore {
    fn records_path(&self, name: &str) -> std::path::PathBuf {
        self.dir().join(format!("{name}.records"))
    }

    /// Every backup record of a volume, oldest first.
    pub fn records(&self, name: &str) -> Result<Vec<VolumeRecord>> {
        self.meta(name)?;
        let path = self.records_path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("read {}", path.display()),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            // A torn last line (crash while appending) is not a record; anything else that
            // does not parse is damage worth reporting.
            match serde_json::from_str::<VolumeRecord>(line) {
                Ok(r) if r.v == 1 => out.push(r),
                _ if i + 1 == text.lines().count() && !text.ends_with('\n') => {}
                Ok(r) => {
                    return Err(Error::Corrupt {
                        path,
                        why: format!("line {}: record version {}", i + 1, r.v),
                    });
                }
                Err(e) => {
                    return Err(Error::Corrupt {
                        path,
                        why: format!("line {}: {e}", i + 1),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Append a record (durably).
    pub fn add_record(&self, name: &str, r: &VolumeRecord) -> Result<()> {
        let path = self.records_path(name);
        let io = |source| Error::Io {
            what: format!("append to {}", path.display()),
            source,
        };
        let mut line = serde_json::to_vec(r).map_err(|e| Error::Invalid(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(&line).and_then(|()| f.sync_all()).map_err(io)
    }
}
