//! Pack files: many blobs in one stored file, with an encrypted header at the end.
//!
//! ```text
//! "KURAPAK1" | blob 0 | blob 1 | … | sealed header | header_len: u32 LE | "KURAPKE1"
//! ```
//! The header (sealed with associated data `KURAPHD1`) lists every blob as
//! `type u8 | id [32] | offset u32 | length u32 | raw_length u32` (little endian), preceded by
//! `count u32`. The header sits at the end so a pack can be streamed out before its contents are
//! known; the index files duplicate it, and `check` compares the two. A pack's name is the
//! BLAKE3 of its bytes, so `check --read-data` can verify a whole pack without the key.
//!
//! Packs are written whole (the backend's `put` is atomic) and never modified.

use kura_backend::{Backend, FileKind};

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::format::{AAD_PACK_HEADER, BlobType, MAGIC_PACK, MAGIC_PACK_END};
use crate::id::Id;

/// Size of one header entry.
pub const HEADER_ENTRY_LEN: usize = 1 + 32 + 4 + 4 + 4;
/// Bytes after the sealed header: its length and the end magic.
pub const TRAILER_LEN: usize = 4 + 8;

/// One blob's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackBlob {
    pub ty: BlobType,
    pub id: Id,
    pub offset: u32,
    /// Stored (encrypted) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// Accumulates encoded blobs into a pack in memory.
pub struct PackWriter {
    buf: Vec<u8>,
    blobs: Vec<PackBlob>,
}

impl PackWriter {
    pub fn new(capacity: usize) -> PackWriter {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(MAGIC_PACK);
        PackWriter {
            buf,
            blobs: Vec::new(),
        }
    }

    /// Bytes so far (without header).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn add(&mut self, ty: BlobType, id: Id, encoded: &[u8], raw_length: u32) -> Result<()> {
        let offset = u32::try_from(self.buf.len())
            .map_err(|_| Error::InvalidInput("pack exceeds 4 GiB".into()))?;
        let length = u32::try_from(encoded.len())
            .map_err(|_| Error::InvalidInput("blob exceeds 4 GiB".into()))?;
        self.buf.extend_from_slice(encoded);
        self.blobs.push(PackBlob {
            ty,
            id,
            offset,
            length,
            raw_length,
        });
        Ok(())
    }

    /// Append the header and trailer. Returns the pack's id (its name), its bytes and blobs.
    pub fn finish(mut self, key: &MasterKey) -> Result<(Id, Vec<u8>, Vec<PackBlob>)> {
        let header = encode_header(&self.blobs);
        let sealed = key.seal(AAD_PACK_HEADER, &header)?;
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(MAGIC_PACK_END);
        let id = Id::of_file(&self.buf);
        Ok((id, self.buf, self.blobs))
    }
}

/// Plaintext header bytes for `blobs`.
pub fn encode_header(blobs: &[PackBlob]) -> Vec<u8> {
    let mut h = Vec::with_capacity(4 + blobs.len() * HEADER_ENTRY_LEN);
    h.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    for b in blobs {
        h.push(b.ty as u8);
        h.extend_from_slice(&b.id.0);
        h.extend_from_slice(&b.offset.to_le_bytes());
        h.extend_from_slice(&b.length.to_le_bytes());
        h.extend_from_slice(&b.raw_length.to_le_bytes());
    }
    h
}

/// A little-endian cursor that fails instead of panicking; shared by the pack and index
/// parsers.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'a str) -> Self {
        Reader { data, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(Error::corrupt(self.what, "truncated"));
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn id(&mut self) -> Result<Id> {
        let b = self.take(32)?;
        Id::from_slice(b).ok_or_else(|| Error::corrupt(self.what, "bad id"))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    /// Read one `type | id | offset | length | raw_length` entry.
    pub(crate) fn blob_entry(&mut self) -> Result<PackBlob> {
        let ty = self.u8()?;
        let ty = BlobType::from_u8(ty)
            .ok_or_else(|| Error::corrupt(self.what, format!("unknown blob type {ty}")))?;
        Ok(PackBlob {
            ty,
            id: self.id()?,
            offset: self.u32()?,
            length: self.u32()?,
            raw_length: self.u32()?,
        })
    }

    /// Read a count, refusing counts the remaining bytes cannot hold (no huge allocations
    /// from hostile input).
    pub(crate) fn count(&mut self, entry_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(entry_len) > self.remaining() {
            return Err(Error::corrupt(self.what, format!("count {n} exceeds data")));
        }
        Ok(n)
    }
}

/// Parse a plaintext header. Every blob must lie inside `[8, data_end)` and blobs must not
/// overlap.
pub fn parse_header(plain: &[u8], data_end: u64, what: &str) -> Result<Vec<PackBlob>> {
    let mut r = Reader::new(plain, what);
    let n = r.count(HEADER_ENTRY_LEN)?;
    let mut blobs = Vec::with_capacity(n);
    for _ in 0..n {
        blobs.push(r.blob_entry()?);
    }
    if r.remaining() != 0 {
        return Err(Error::corrupt(what, "trailing bytes after header entries"));
    }
    let mut spans: Vec<(u64, u64)> = blobs
        .iter()
        .map(|b| (b.offset as u64, b.offset as u64 + b.length as u64))
        .collect();
    spans.sort_unstable();
    let mut prev_end = MAGIC_PACK.len() as u64;
    for (start, end) in spans {
        if start < prev_end || end > data_end {
            return Err(Error::corrupt(
                what,
                "blob outside pack data or overlapping",
            ));
        }
        prev_end = end;
    }
    Ok(blobs)
}

/// Split a pack's last bytes into (sealed header length). `tail` must end at the file end.
fn trailer_header_len(tail: &[u8], what: &str) -> Result<u64> {
    if tail.len() < TRAILER_LEN || &tail[tail.len() - 8..] != MAGIC_PACK_END {
        return Err(Error::corrupt(what, "missing pack trailer"));
    }
    let l = &tail[tail.len() - 12..tail.len() - 8];
    Ok(u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as u64)
}

/// Read and authenticate the header of a stored pack of `size` bytes.
pub fn read_header(
    backend: &dyn Backend,
    key: &MasterKey,
    name: &str,
    size: u64,
) -> Result<Vec<PackBlob>> {
    let what = format!("pack {name}");
    let min = (MAGIC_PACK.len() + TRAILER_LEN) as u64;
    if size < min {
        return Err(Error::corrupt(&what, format!("only {size} bytes")));
    }
    // One request usually gets trailer and header together.
    let guess = size.min(64 * 1024);
    let tail = backend.get_range(FileKind::Pack, name, size - guess, guess)?;
    let hlen = trailer_header_len(&tail, &what)?;
    if hlen + min > size {
        return Err(Error::corrupt(&what, "header length exceeds pack"));
    }
    let need = hlen + TRAILER_LEN as u64;
    let sealed = if need <= guess {
        tail[(guess - need) as usize..tail.len() - TRAILER_LEN].to_vec()
    } else {
        backend.get_range(FileKind::Pack, name, size - need, hlen)?
    };
    header_from_sealed(key, &sealed, size - need, &what)
}

/// Parse a header from a whole pack held in memory (used by `check --read-data`).
pub fn header_from_pack_bytes(key: &MasterKey, pack: &[u8], what: &str) -> Result<Vec<PackBlob>> {
    if pack.len() < MAGIC_PACK.len() + TRAILER_LEN || &pack[..8] != MAGIC_PACK {
        return Err(Error::corrupt(what, "not a pack (bad magic)"));
    }
    let hlen = trailer_header_len(pack, what)? as usize;
    let end = pack.len() - TRAILER_LEN;
    if hlen > end - MAGIC_PACK.len() {
        return Err(Error::corrupt(what, "header length exceeds pack"));
    }
    header_from_sealed(key, &pack[end - hlen..end], (end - hlen) as u64, what)
}

fn header_from_sealed(
    key: &MasterKey,
    sealed: &[u8],
    data_end: u64,
    what: &str,
) -> Result<Vec<PackBlob>> {
    let plain = key
        .open(AAD_PACK_HEADER, sealed)
        .map_err(|e| Error::corrupt(what, format!("header: {e}")))?;
    parse_header(&plain, data_end, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlobEncoder;
    use proptest::prelude::*;

    #[test]
    fn pack_round_trip_through_backend() {
        let key = MasterKey::generate().unwrap();
        let mut enc = BlobEncoder::new(3).unwrap();
        let mut w = PackWriter::new(1 << 20);
        let datas: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for d in &datas {
            let id = key.chunk_id(d);
            let e = enc.encode(&key, BlobType::Data, &id, d).unwrap();
            w.add(BlobType::Data, id, &e, d.len() as u32).unwrap();
        }
        let (id, bytes, blobs) = w.finish(&key).unwrap();
        assert_eq!(id, Id::of_file(&bytes));
        let dir = tempfile::tempdir().unwrap();
        let b = kura_backend::LocalBackend::new(dir.path());
        b.create().unwrap();
        b.put(FileKind::Pack, &id.to_hex(), bytes.clone().into())
            .unwrap();
        let h = read_header(&b, &key, &id.to_hex(), bytes.len() as u64).unwrap();
        assert_eq!(h, blobs);
        assert_eq!(header_from_pack_bytes(&key, &bytes, "p").unwrap(), blobs);
        for (pb, d) in h.iter().zip(&datas) {
            let stored = bytes[pb.offset as usize..(pb.offset + pb.length) as usize].to_vec();
            let back =
                crate::format::decode_blob(&key, pb.ty, &pb.id, stored, pb.raw_length).unwrap();
            assert_eq!(&back, d);
        }
    }

    proptest! {
        #[test]
        fn parse_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), end in 0u64..10_000) {
            let _ = parse_header(&bytes, end, "fuzz");
        }

        #[test]
        fn pack_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let key = MasterKey::from_secret([7; 32]);
            let mut b = bytes.clone();
            if b.len() >= 12 { let n = b.len(); b[n-8..].copy_from_slice(MAGIC_PACK_END); }
            let _ = header_from_pack_bytes(&key, &b, "fuzz");
            let _ = header_from_pack_bytes(&key, &bytes, "fuzz");
        }

        #[test]
        fn header_encode_parse_round_trip(entries in proptest::collection::vec((any::<[u8;32]>(), 1u32..5000, any::<u32>(), any::<bool>()), 0..40)) {
            let mut off = 8u32;
            let blobs: Vec<PackBlob> = entries.iter().map(|(id, len, raw, tree)| {
                let b = PackBlob { ty: if *tree { BlobType::Tree } else { BlobType::Data }, id: Id(*id), offset: off, length: *len, raw_length: *raw };
                off += len;
                b
            }).collect();
            let parsed = parse_header(&encode_header(&blobs), off as u64, "t").unwrap();
            prop_assert_eq!(parsed, blobs);
        }
    }
}
