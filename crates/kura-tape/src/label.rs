//! What a tape says about itself and its backups: the medium label (file 0), the media-set
//! label (file 1), a backup's management information and the media set's catalog — all
//! CBOR, each the single entry of its archive (see `docs/FORMAT.md`, "Tapes").
//!
//! Labels are in clear (an operator or a rebuild must read them without a password). A
//! backup's data is as the repository stores it: packs, snapshot manifest, index and catalog
//! record sealed under the repository's master key, the key files wrapped by its password.
//! What else is clear: ids, sizes, times and labels.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::archive::{ArchiveReader, ArchiveWriter};
use crate::drive::Drive;
use crate::format::EntryKind;
use crate::{Error, Result};

/// The version every label and record here carries.
pub const VERSION: u32 = 1;

/// File 0: which tape this is and which pool it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediumLabel {
    pub v: u32,
    pub label: String,
    pub pool: String,
    /// Random, hex: tells two tapes given the same label apart.
    pub uuid: String,
    /// When it was labelled, ms since the epoch.
    pub labelled: i64,
}

/// File 1: the media set a tape belongs to, and its place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLabel {
    pub v: u32,
    /// The media set's id (hex).
    pub set: String,
    pub pool: String,
    /// The tape's number in the set, from 1.
    pub seq: u32,
    /// When the set was started, ms since the epoch.
    pub created: i64,
}

/// A repository file carried on tape as the repository stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFile {
    pub name: String,
    pub bytes: ByteBuf,
}

/// A pack a backup needs, and its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// The pack's id (hex).
    pub id: String,
    pub size: u64,
}

/// A backup's management information (seed 002: written before its data): everything
/// needed to enter it into a catalog and to restore it, except its packs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub v: u32,
    /// The source repository's id (hex).
    pub repository: String,
    /// The snapshot's id (hex).
    pub snapshot: String,
    /// The snapshot's time, ms since the epoch.
    pub time: i64,
    /// The repository's `config` file.
    pub config: RepoFile,
    /// The repository's key files (each wrapped by a password).
    pub keys: Vec<RepoFile>,
    /// The snapshot manifest (sealed).
    pub snapshot_file: RepoFile,
    /// An index file (sealed) listing exactly the packs below.
    pub index_file: RepoFile,
    /// The catalog's record of this backup, when the repository holds one (sealed).
    pub catalog_record: Option<RepoFile>,
    /// Every pack the backup needs; those already on the set are not written again.
    pub packs: Vec<PackRef>,
    /// The volume engine's records of this backup (seed 002's "volume backup record"), when
    /// it is a volume's: each named by its volume, its bytes the record's JSON line.
    #[serde(default)]
    pub volume_records: Vec<RepoFile>,
}

/// One piece of a pack on a tape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiecePlace {
    pub pack: String,
    pub offset: u64,
    pub len: u64,
    pub label: String,
    pub file: u32,
}

/// Where a backup's management information is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPlace {
    pub repository: String,
    pub snapshot: String,
    pub time: i64,
    pub label: String,
    pub file: u32,
}

/// The media set's catalog, written at the end of each session on the set's last tape:
/// every tape of the set and everything on them so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetCatalog {
    pub v: u32,
    pub set: String,
    pub pool: String,
    /// (seq, label) of every tape of the set.
    pub tapes: Vec<(u32, String)>,
    pub backups: Vec<BackupPlace>,
    pub pieces: Vec<PiecePlace>,
}

pub fn to_cbor<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| Error::Format(format!("encoding: {e}")))?;
    Ok(out)
}

pub fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    ciborium::from_reader(bytes).map_err(|e| Error::Format(format!("{what}: {e}")))
}

/// Write a one-entry archive at the drive's position.
pub fn write_single(
    drive: &mut dyn Drive,
    block_size: usize,
    kind: EntryKind,
    body: &[u8],
) -> Result<bool> {
    let mut w = ArchiveWriter::begin(block_size)?;
    let n = w.write_entry(drive, kind, [0; 32], 0, body.len() as u64, body)?;
    if n < body.len() {
        return Err(Error::EndOfMedium(format!(
            "{}: a {kind:?} did not fit before the early warning",
            drive.name()
        )));
    }
    w.finish(drive)
}

/// Label the tape in the drive: rewind and write file 0. Everything on it is erased.
pub fn write_label(drive: &mut dyn Drive, block_size: usize, label: &MediumLabel) -> Result<()> {
    drive.rewind()?;
    write_single(drive, block_size, EntryKind::Label, &to_cbor(label)?)?;
    Ok(())
}

/// Read file 0: `None` for a blank tape.
pub fn read_label(drive: &mut dyn Drive) -> Result<Option<MediumLabel>> {
    drive.rewind()?;
    let mut r = ArchiveReader::new(drive);
    let Some(body) = r.single(EntryKind::Label)? else {
        return Ok(None);
    };
    let l: MediumLabel = from_cbor(&body, "medium label")?;
    if l.v != VERSION {
        return Err(Error::Format(format!(
            "medium label version {} (this kura reads {VERSION})",
            l.v
        )));
    }
    Ok(Some(l))
}

/// Read file 1: `None` when the tape is in no set yet.
pub fn read_set_label(drive: &mut dyn Drive) -> Result<Option<SetLabel>> {
    match drive.locate_file(1) {
        Ok(()) => {}
        Err(Error::Format(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut r = ArchiveReader::new(drive);
    let Some(body) = r.single(EntryKind::SetLabel)? else {
        return Ok(None);
    };
    from_cbor(&body, "media-set label")
}

/// Make the tape the `seq`-th of a set: write file 1 (erasing everything after the label).
/// The drive is then at file 2.
pub fn write_set_label(drive: &mut dyn Drive, block_size: usize, set: &SetLabel) -> Result<()> {
    drive.locate_file(1)?;
    write_single(drive, block_size, EntryKind::SetLabel, &to_cbor(set)?)?;
    Ok(())
}
