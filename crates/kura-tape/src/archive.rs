//! Archives: one tape file each, a stream of entries cut into self-checking blocks (see
//! [`crate::format`]). [`ArchiveWriter`] fills fixed-size blocks and stops an entry at the
//! early warning; [`ArchiveReader`] reads entries back, turning damaged blocks into holes.

use crate::drive::{Drive, Record};
use crate::format::{
    BLOCK_HEADER, BlockHeader, ENTRY_HEADER, EntryHeader, EntryKind, FLAG_LAST, NO_ENTRY,
    decode_block, seal_block,
};
use crate::{Error, Result};

/// Writes one archive (one tape file) on a drive positioned where it starts. Holds no
/// drive: each call is given the one the archive is on, so its owner can keep both.
pub struct ArchiveWriter {
    id: [u8; 16],
    /// Payload bytes per block.
    capacity: usize,
    /// The block being filled: header space, then its payload so far.
    frame: Vec<u8>,
    first_entry: u32,
    seq: u32,
    early_warning: bool,
    bytes: u64,
}

/// A fresh random archive id.
pub fn new_archive_id() -> [u8; 16] {
    let mut id = [0; 16];
    // A failing system random source would make ids collide; fall back to time and pid.
    if getrandom::fill(&mut id).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        id.copy_from_slice(&(t ^ (std::process::id() as u128) << 64).to_le_bytes());
    }
    id
}

impl ArchiveWriter {
    /// Start an archive; blocks are `block_size` bytes, header included.
    pub fn begin(block_size: usize) -> Result<ArchiveWriter> {
        if !(BLOCK_HEADER + ENTRY_HEADER..=crate::vlib::MAX_BLOCK).contains(&block_size) {
            return Err(Error::Invalid(format!("block size {block_size}")));
        }
        let capacity = block_size - BLOCK_HEADER;
        let mut frame = Vec::with_capacity(block_size);
        frame.resize(BLOCK_HEADER, 0);
        Ok(ArchiveWriter {
            id: new_archive_id(),
            capacity,
            frame,
            first_entry: NO_ENTRY,
            seq: 0,
            early_warning: false,
            bytes: 0,
        })
    }

    /// The drive passed its early warning: finish this archive and change tapes.
    pub fn early_warning(&self) -> bool {
        self.early_warning
    }

    /// Bytes of entries (headers included) written to this archive.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn payload_len(&self) -> usize {
        self.frame.len() - BLOCK_HEADER
    }

    fn flush(&mut self, drive: &mut dyn Drive, flags: u8) -> Result<()> {
        let h = BlockHeader {
            flags,
            archive: self.id,
            seq: self.seq,
            first_entry: self.first_entry,
            len: self.payload_len() as u32,
        };
        seal_block(&h, &mut self.frame);
        let w = drive.write_block(&self.frame)?;
        self.early_warning |= w.early_warning;
        self.seq += 1;
        self.frame.truncate(BLOCK_HEADER);
        self.first_entry = NO_ENTRY;
        Ok(())
    }

    fn push(
        &mut self,
        drive: &mut dyn Drive,
        mut bytes: &[u8],
        stop_at_warning: bool,
    ) -> Result<usize> {
        let mut done = 0;
        while !bytes.is_empty() {
            if stop_at_warning && self.early_warning {
                break;
            }
            let n = (self.capacity - self.payload_len()).min(bytes.len());
            self.frame.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            done += n;
            if self.payload_len() == self.capacity {
                self.flush(drive, 0)?;
            }
        }
        self.bytes += done as u64;
        Ok(done)
    }

    /// Write bytes `offset .. offset + data.len()` of an object of `total` bytes. Returns how
    /// many of them are in this archive: fewer than all when the early warning came first
    /// (the rest goes, from there, into an archive on the next tape); 0 when it had come
    /// before this call.
    pub fn write_entry(
        &mut self,
        drive: &mut dyn Drive,
        kind: EntryKind,
        id: [u8; 32],
        offset: u64,
        total: u64,
        data: &[u8],
    ) -> Result<usize> {
        if self.early_warning {
            return Ok(0);
        }
        let len = u32::try_from(data.len())
            .map_err(|_| Error::Invalid("an entry holds at most 4 GiB".into()))?;
        let h = EntryHeader {
            kind,
            id,
            offset,
            total,
            len,
        };
        if self.first_entry == NO_ENTRY {
            self.first_entry = self.payload_len() as u32;
        }
        // The header goes whole even past the warning: an entry is never cut inside it.
        self.push(drive, &h.encode(), false)?;
        self.push(drive, data, true)
    }

    /// End the archive: its last block (flagged), then a filemark, which flushes the drive.
    /// Everything written is on the tape when this returns. Returns the early warning.
    pub fn finish(mut self, drive: &mut dyn Drive) -> Result<bool> {
        self.flush(drive, FLAG_LAST)?;
        let w = drive.write_filemarks(1)?;
        Ok(self.early_warning || w.early_warning)
    }
}

/// A piece read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub header: EntryHeader,
    /// The piece's bytes (zeros where `holes` are), as many as the archive held: fewer than
    /// `header.len` when it was cut.
    pub data: Vec<u8>,
    /// Ranges of `data` (start, length) that came from damaged blocks.
    pub holes: Vec<(u64, u64)>,
    /// The archive ended inside this piece: at the writer's early warning when
    /// `clean_end`, else because the writer stopped (crash) or the tape ends early.
    pub cut: bool,
}

/// How an archive ended, once read to its end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchiveEnd {
    /// Its last block was flagged: the writer finished it.
    pub clean: bool,
    /// Blocks that failed their checksum or could not be read.
    pub damaged_blocks: u32,
    /// The tape ended (end of data) instead of a filemark.
    pub end_of_data: bool,
    /// Why reading stopped early, when it did (a medium error).
    pub error: Option<String>,
}

/// Reads the entries of the archive the drive is positioned at.
pub struct ArchiveReader<'d> {
    drive: &'d mut dyn Drive,
    buf: Vec<u8>,
    /// The current block's payload and where we are in it.
    cur: Vec<u8>,
    at: usize,
    /// Is `cur` from a damaged block (its bytes are zeros)?
    cur_bad: bool,
    cur_first_entry: u32,
    end: Option<ArchiveEnd>,
    damaged: u32,
    id: Option<[u8; 16]>,
    /// Lost track of entry boundaries (a header in a damaged block): skip to the next block
    /// that names where an entry starts.
    lost: bool,
    started: bool,
}

impl<'d> ArchiveReader<'d> {
    pub fn new(drive: &'d mut dyn Drive) -> ArchiveReader<'d> {
        ArchiveReader {
            drive,
            buf: vec![0; crate::vlib::MAX_BLOCK],
            cur: Vec::new(),
            at: 0,
            cur_bad: false,
            cur_first_entry: NO_ENTRY,
            end: None,
            damaged: 0,
            id: None,
            lost: false,
            started: false,
        }
    }

    /// How the archive ended (after [`next_entry`](Self::next_entry) returned `None`).
    pub fn end(&self) -> Option<&ArchiveEnd> {
        self.end.as_ref()
    }

    /// Read the next block into `cur`; false at the end of the archive.
    fn next_block(&mut self) -> Result<bool> {
        if self.end.is_some() {
            return Ok(false);
        }
        let rec = match self.drive.read_block(&mut self.buf) {
            Ok(r) => r,
            Err(Error::Device { what, source }) => {
                self.damaged += 1;
                self.end = Some(ArchiveEnd {
                    clean: false,
                    damaged_blocks: self.damaged,
                    end_of_data: false,
                    error: Some(format!("{what}: {source}")),
                });
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        match rec {
            Record::Block(n) => {
                self.started = true;
                match decode_block(&self.buf[..n]) {
                    Ok((h, payload)) if self.id.is_none_or(|id| id == h.archive) => {
                        self.id = Some(h.archive);
                        self.cur.clear();
                        self.cur.extend_from_slice(payload);
                        self.cur_bad = false;
                        self.cur_first_entry = h.first_entry;
                        if h.flags & FLAG_LAST != 0 {
                            // Read the filemark that follows, so the drive is at the next file.
                            self.finish_after_last()?;
                        }
                    }
                    _ => {
                        self.damaged += 1;
                        self.cur.clear();
                        self.cur.resize(n.saturating_sub(BLOCK_HEADER), 0);
                        self.cur_bad = true;
                        self.cur_first_entry = NO_ENTRY;
                    }
                }
                self.at = 0;
                Ok(true)
            }
            Record::Filemark | Record::EndOfData => {
                self.end = Some(ArchiveEnd {
                    clean: false,
                    damaged_blocks: self.damaged,
                    end_of_data: rec == Record::EndOfData,
                    error: None,
                });
                Ok(false)
            }
        }
    }

    /// After the flagged last block: consume the filemark and record a clean end.
    fn finish_after_last(&mut self) -> Result<()> {
        let eod = match self.drive.read_block(&mut self.buf) {
            Ok(Record::Filemark) => false,
            Ok(Record::EndOfData) => true,
            // A block after the last one: the archive still ended; leave the drive there.
            Ok(Record::Block(_)) | Err(_) => false,
        };
        self.end = Some(ArchiveEnd {
            clean: true,
            damaged_blocks: self.damaged,
            end_of_data: eod,
            error: None,
        });
        Ok(())
    }

    /// Take up to `n` bytes of the stream into `out`, recording holes; returns how many.
    fn take(&mut self, n: usize, out: &mut Vec<u8>, holes: &mut Vec<(u64, u64)>) -> Result<usize> {
        let mut got = 0;
        while got < n {
            if self.at == self.cur.len() && !self.next_block()? {
                break;
            }
            if self.at == self.cur.len() {
                continue;
            }
            let k = (self.cur.len() - self.at).min(n - got);
            if self.cur_bad {
                let start = out.len() as u64;
                match holes.last_mut() {
                    Some((s, l)) if *s + *l == start => *l += k as u64,
                    _ => holes.push((start, k as u64)),
                }
            }
            out.extend_from_slice(&self.cur[self.at..self.at + k]);
            self.at += k;
            got += k;
        }
        Ok(got)
    }

    /// Skip to the next good block that names where an entry starts.
    fn resync(&mut self) -> Result<bool> {
        loop {
            if !self.next_block()? && self.at == self.cur.len() {
                return Ok(false);
            }
            if !self.cur_bad && self.cur_first_entry != NO_ENTRY {
                self.at = self.cur_first_entry as usize;
                self.lost = false;
                return Ok(true);
            }
            self.at = self.cur.len();
            if self.end.is_some() {
                return Ok(false);
            }
        }
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<ReadEntry>> {
        loop {
            if self.lost && !self.resync()? {
                return Ok(None);
            }
            let mut head = Vec::with_capacity(ENTRY_HEADER);
            let mut holes = Vec::new();
            let got = self.take(ENTRY_HEADER, &mut head, &mut holes)?;
            if got == 0 {
                return Ok(None);
            }
            if got < ENTRY_HEADER || !holes.is_empty() {
                if got < ENTRY_HEADER && self.end.is_some() {
                    return Ok(None);
                }
                self.lost = true;
                continue;
            }
            let mut h = [0u8; ENTRY_HEADER];
            h.copy_from_slice(&head);
            let header = match EntryHeader::decode(&h) {
                Ok(h) => h,
                Err(_) => {
                    self.lost = true;
                    continue;
                }
            };
            let mut data = Vec::with_capacity(header.len as usize);
            let got = self.take(header.len as usize, &mut data, &mut holes)?;
            return Ok(Some(ReadEntry {
                header,
                data,
                holes,
                cut: got < header.len as usize,
            }));
        }
    }

    /// Read to the end of the archive (so the drive is at the next file) and say how it ended.
    pub fn drain(&mut self) -> Result<ArchiveEnd> {
        while self.next_entry()?.is_some() {}
        while self.next_block()? {}
        Ok(self.end.clone().unwrap_or_default())
    }

    /// Did the archive have any block at all? (An empty file reads as none.)
    pub fn started(&self) -> bool {
        self.started
    }

    /// Blocks found damaged so far.
    pub fn damaged_blocks(&self) -> u32 {
        self.damaged
    }

    /// The kind-checked single entry of a small archive (a label): its whole bytes.
    pub fn single(&mut self, kind: EntryKind) -> Result<Option<Vec<u8>>> {
        match self.next_entry()? {
            Some(e) if e.header.kind == kind && !e.cut && e.holes.is_empty() => Ok(Some(e.data)),
            Some(e) if e.header.kind == kind => Err(Error::Format(format!(
                "{kind:?} entry damaged ({} holes, cut {})",
                e.holes.len(),
                e.cut
            ))),
            Some(e) => Err(Error::Format(format!(
                "expected a {kind:?} entry, found {:?}",
                e.header.kind
            ))),
            None => Ok(None),
        }
    }
}
