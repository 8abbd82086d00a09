//! Report shapes: what a backup and a job run tell their caller — the CLI's `--json` output
//! today, the REST API's answers tomorrow. Plain data: the crates that run backups fill them
//! in, the CLI prints them, the API returns them, in one shape.
//!
//! Printed through `serde_json::Value` (keys in alphabetical order), as before these types
//! existed; field names are part of the interface (scripts read them): add, never rename.

use serde::{Deserialize, Serialize};

/// What one backup did (a snapshot's summary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// RFC 3339.
    pub backup_start: String,
    /// RFC 3339.
    pub backup_end: String,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    pub other_entries: u64,
    /// Logical bytes of every file (or the image) in the snapshot.
    pub total_bytes: u64,
    /// Bytes read from the source (unchanged files are not read).
    pub bytes_read: u64,
    pub data_blobs_new: u64,
    pub tree_blobs_new: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_added_raw: u64,
    /// Stored bytes of new blobs (compressed, encrypted).
    pub bytes_added: u64,
    /// Entries that could not be read and were left out.
    pub warnings: u64,
    /// Files whose size or times changed while they were read.
    pub files_changed_while_read: u64,
}

/// How a job run used its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunModeName {
    Mirror,
    Failover,
}

/// A target the check before securing passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedTarget {
    pub target: String,
    pub reason: String,
}

/// One stream of a run: its target and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    pub stream: i64,
    pub target: String,
    pub location: String,
    /// Mirror: the target holds the whole snapshot. Fail-over: always `false` (see
    /// `extents`).
    pub complete: bool,
    /// Why the target was dropped (mirror) or failed (fail-over), if it was.
    pub dropped: Option<String>,
    /// Mirror: bytes written. Fail-over: bytes sent (acknowledged or not).
    pub bytes: u64,
}

/// One acknowledged piece of a run's backup on one target (a catalog extent row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionReport {
    pub seq: i64,
    pub stream: i64,
    pub target: String,
    /// Where on the target: `SNAPSHOT` (a whole copy) or `SNAPSHOT:INDEX` (a section).
    pub position: String,
    pub source_offset: i64,
    pub source_length: i64,
    /// Bytes stored.
    pub size: i64,
}

/// What a job run (`kura job run`, `kura backup --redundancy`) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRunReport {
    /// `summary` (the kind of line in the CLI's JSON stream).
    pub message_type: String,
    /// The run's process number.
    pub process: i64,
    /// The catalog's backup number.
    pub backup: i64,
    pub snapshot_id: String,
    pub summary: BackupSummary,
    /// Entries that could not be read (left out of the snapshot).
    pub warnings: Vec<String>,
    /// The post hook's failure, if it failed after a successful backup.
    pub post_hook_error: Option<String>,
    pub skipped: Vec<SkippedTarget>,
    pub mode: RunModeName,
    /// Fail-over: how often the run moved to the next target.
    pub failovers: usize,
    pub copies: Vec<CopyReport>,
    pub extents: Vec<SectionReport>,
}

/// What one completed run did, as the catalog keeps it for history and finish predictions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    /// Logical bytes of the source (every file, or the image): what a run must scan.
    pub bytes_scanned: u64,
    /// Bytes read from the source (unchanged files are not read).
    pub bytes_read: u64,
    /// Stored bytes of new blobs (compressed, encrypted).
    pub bytes_stored: u64,
    /// Files in the snapshot.
    pub files: u64,
    /// From the run's start (securing included) to its record.
    pub duration_ms: u64,
    /// Per target: the bytes it took and its throughput over the run.
    pub targets: Vec<TargetStats>,
}

/// One target's part in a run's [`RunStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStats {
    pub target: String,
    /// Mirror: bytes written. Fail-over: bytes sent.
    pub bytes: u64,
    /// `bytes` over the run's duration.
    pub bytes_per_second: u64,
}

impl RunStats {
    /// Scanned bytes per second over the whole run (0 for a run that took no time).
    pub fn scan_rate(&self) -> f64 {
        if self.duration_ms == 0 {
            0.0
        } else {
            self.bytes_scanned as f64 * 1000.0 / self.duration_ms as f64
        }
    }
}

impl JobRunReport {
    /// The value of [`JobRunReport::message_type`].
    pub const MESSAGE_TYPE: &'static str = "summary";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_shape() {
        let r = JobRunReport {
            message_type: JobRunReport::MESSAGE_TYPE.into(),
            process: 7,
            backup: 3,
            snapshot_id: "ab".repeat(32),
            summary: BackupSummary::default(),
            warnings: vec![],
            post_hook_error: None,
            skipped: vec![SkippedTarget {
                target: "t2".into(),
                reason: "unreachable".into(),
            }],
            mode: RunModeName::Failover,
            failovers: 1,
            copies: vec![],
            extents: vec![SectionReport {
                seq: 0,
                stream: 0,
                target: "t0".into(),
                position: "ab:cd".into(),
                source_offset: 0,
                source_length: 10,
                size: 12,
            }],
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mode"], "failover");
        assert_eq!(v["skipped"][0]["reason"], "unreachable");
        assert_eq!(v["extents"][0]["source_length"], 10);
        assert_eq!(v["post_hook_error"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<JobRunReport>(v).unwrap(), r);
    }
}
