//! The tape format (specified in `docs/FORMAT.md`, "Tapes"): blocks that check themselves,
//! archives (one tape file each) made of entries, and the entries' kinds.
//!
//! # Why blocks carry their own checksum and entry offset
//! A drive reports a block it cannot read; a block that reads but was damaged must be caught
//! by us. Each block has a BLAKE3 checksum over its header and payload, so a damaged block is
//! *one* block lost, and the offset of the first entry that starts in it lets a reader pick
//! up again at the next good block: damage stays local to the entries that overlap it.
//!
//! # Why entries are pieces
//! An object (a pack, a snapshot manifest) may not fit on what is left of a tape. An entry
//! holds bytes `offset .. offset + len` of an object of `total` bytes; an object split at
//! the end of a tape continues in an entry on the next. An archive that ended at the early
//! warning (its last block flagged `LAST`) may end inside an entry: the entry is cut there,
//! and the bytes before the cut are valid.

use crate::{Error, Result};

/// Block magic, and the version of the tape format.
pub const BLOCK_MAGIC: &[u8; 4] = b"KTB1";
/// The block header's length.
pub const BLOCK_HEADER: usize = 64;
/// The default block size (header included): what LTO drives stream well.
pub const DEFAULT_BLOCK: usize = 256 << 10;
/// Flag: the last block of its archive (written before its filemark).
pub const FLAG_LAST: u8 = 1;
/// `first_entry` when no entry starts in the block.
pub const NO_ENTRY: u32 = u32::MAX;
/// An entry header's length.
pub const ENTRY_HEADER: usize = 56;

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum EntryKind {
    /// The medium label (file 0): CBOR [`crate::label::MediumLabel`].
    Label = 1,
    /// The media-set label (file 1): CBOR [`crate::label::SetLabel`].
    SetLabel = 2,
    /// A backup's management information: CBOR [`crate::label::BackupInfo`].
    BackupInfo = 3,
    /// A piece of a repository pack (its bytes as the repository stores them: encrypted).
    Pack = 4,
    /// The media set's catalog: CBOR [`crate::label::SetCatalog`].
    SetCatalog = 5,
}

impl EntryKind {
    pub fn from_u8(b: u8) -> Option<EntryKind> {
        Some(match b {
            1 => EntryKind::Label,
            2 => EntryKind::SetLabel,
            3 => EntryKind::BackupInfo,
            4 => EntryKind::Pack,
            5 => EntryKind::SetCatalog,
            _ => return None,
        })
    }
}

/// A block's header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub flags: u8,
    /// The archive this block belongs to.
    pub archive: [u8; 16],
    /// The block's number in its archive, from 0.
    pub seq: u32,
    /// Offset in the payload of the first entry header that starts in this block.
    pub first_entry: u32,
    pub len: u32,
}

/// Fill in the header of a block whose payload is already in `frame[BLOCK_HEADER..]` (the
/// writer builds blocks in place: the payload is never copied again).
pub fn seal_block(h: &BlockHeader, frame: &mut [u8]) {
    let len = (frame.len() - BLOCK_HEADER) as u32;
    let (head, payload) = frame.split_at_mut(BLOCK_HEADER);
    head[..4].copy_from_slice(BLOCK_MAGIC);
    head[4] = h.flags;
    head[5..8].fill(0);
    head[8..24].copy_from_slice(&h.archive);
    head[24..28].copy_from_slice(&h.seq.to_le_bytes());
    head[28..32].copy_from_slice(&h.first_entry.to_le_bytes());
    head[32..36].copy_from_slice(&len.to_le_bytes());
    head[36..48].fill(0);
    let sum = checksum(&head[..48], payload);
    head[48..64].copy_from_slice(&sum);
}

/// Frame one block: header and payload.
pub fn encode_block(h: &BlockHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(BLOCK_HEADER, 0);
    out.extend_from_slice(payload);
    seal_block(h, out);
}

fn checksum(head: &[u8], payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(payload);
    let mut out = [0; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// Decode one block read from tape; `Err(Format)` names why it is not a good block.
pub fn decode_block(block: &[u8]) -> Result<(BlockHeader, &[u8])> {
    if block.len() < BLOCK_HEADER || &block[..4] != BLOCK_MAGIC {
        return Err(Error::Format(format!(
            "not a kura tape block ({} bytes, magic {:02x?})",
            block.len(),
            &block[..block.len().min(4)]
        )));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([block[i], block[i + 1], block[i + 2], block[i + 3]]);
    let len = u32_at(32) as usize;
    if BLOCK_HEADER + len != block.len() {
        return Err(Error::Format(format!(
            "damaged block: header says {len} bytes of payload, the block holds {}",
            block.len() - BLOCK_HEADER
        )));
    }
    let payload = &block[BLOCK_HEADER..];
    if checksum(&block[..48], payload) != block[48..64] {
        return Err(Error::Format("damaged block: checksum mismatch".into()));
    }
    let mut archive = [0; 16];
    archive.copy_from_slice(&block[8..24]);
    Ok((
        BlockHeader {
            flags: block[4],
            archive,
            seq: u32_at(24),
            first_entry: u32_at(28),
            len: len as u32,
        },
        payload,
    ))
}

/// An entry's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: EntryKind,
    /// The object's id (a pack's id; zeros for labels and catalogs).
    pub id: [u8; 32],
    /// Where this piece starts in the object.
    pub offset: u64,
    /// The object's whole length.
    pub total: u64,
    /// This piece's length (a piece cut at the end of its archive holds fewer).
    pub len: u32,
}

impl EntryHeader {
    pub fn encode(&self) -> [u8; ENTRY_HEADER] {
        let mut out = [0; ENTRY_HEADER];
        out[0] = self.kind as u8;
        out[4..36].copy_from_slice(&self.id);
        out[36..44].copy_from_slice(&self.offset.to_le_bytes());
        out[44..52].copy_from_slice(&self.total.to_le_bytes());
        out[52..56].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8; ENTRY_HEADER]) -> Result<EntryHeader> {
        let kind = EntryKind::from_u8(b[0])
            .ok_or_else(|| Error::Format(format!("unknown entry kind {}", b[0])))?;
        let mut id = [0; 32];
        id.copy_from_slice(&b[4..36]);
        let u64_at = |i: usize| {
            let mut x = [0; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let h = EntryHeader {
            kind,
            id,
            offset: u64_at(36),
            total: u64_at(44),
            len: u32::from_le_bytes([b[52], b[53], b[54], b[55]]),
        };
        if b[1..4] != [0; 3]
            || h.offset
                .checked_add(h.len as u64)
                .is_none_or(|end| end > h.total)
        {
            return Err(Error::Format(format!(
                "entry header out of range: {} bytes at {} of {}",
                h.len, h.offset, h.total
            )));
        }
        Ok(h)
    }
}
