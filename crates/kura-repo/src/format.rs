//! Byte-level encodings shared by every stored object: magics, the codec byte, sealed files
//! and blobs. `docs/FORMAT.md` is the specification; this module is its implementation and
//! must change with it.
//!
//! - A **sealed file** (config, index, snapshot, lock) is `magic (8) | nonce | ct | tag`; the
//!   plaintext is `codec (1) | body`; the associated data is the magic, so a file cannot be
//!   passed off as another kind.
//! - A **blob** (a chunk of file data, a tree, a fixed-index piece) is `nonce | ct | tag` with
//!   plaintext `codec (1) | body` and associated data `type (1) | id (32)`. After decryption and
//!   decompression the body's keyed hash must equal the id: every blob read is verified.
//!
//! Codec byte: `0` = stored raw, `1` = zstd frame. Data is stored raw whenever zstd does not
//! make it smaller.

use std::io::Cursor;

use crate::crypto::{MasterKey, NONCE_LEN, OVERHEAD};
use crate::error::{Error, Result};
use crate::id::Id;

pub const MAGIC_CONFIG: &[u8; 8] = b"KURACFG1";
pub const MAGIC_INDEX: &[u8; 8] = b"KURAIDX1";
pub const MAGIC_SNAPSHOT: &[u8; 8] = b"KURASNP1";
pub const MAGIC_LOCK: &[u8; 8] = b"KURALCK1";
pub const MAGIC_CATALOG: &[u8; 8] = b"KURACTL1";
pub const MAGIC_CONDEMNED: &[u8; 8] = b"KURACND1";
pub const MAGIC_PACK: &[u8; 8] = b"KURAPAK1";
pub const MAGIC_PACK_END: &[u8; 8] = b"KURAPKE1";
/// Associated data of a pack header.
pub const AAD_PACK_HEADER: &[u8] = b"KURAPHD1";

pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

/// Bytes a blob adds to its (possibly compressed) body: codec byte + nonce + tag.
pub const BLOB_OVERHEAD: usize = 1 + OVERHEAD;

/// What a blob holds. Part of every blob's associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlobType {
    /// File or image contents.
    Data = 0,
    /// Metadata: a directory tree or a piece of an image's fixed index.
    Tree = 1,
}

impl BlobType {
    pub fn from_u8(b: u8) -> Option<BlobType> {
        match b {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        }
    }
}

fn blob_aad(ty: BlobType, id: &Id) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = ty as u8;
    aad[1..].copy_from_slice(&id.0);
    aad
}

/// Encodes blobs: compress (if it helps) and encrypt. One per pipeline thread (it owns a zstd
/// context, which is reused across blobs).
pub struct BlobEncoder {
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl BlobEncoder {
    /// `level` 0 disables compression.
    pub fn new(level: i32) -> Result<BlobEncoder> {
        let compressor = if level == 0 {
            None
        } else {
            Some(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::io("create zstd compressor", e))?,
            )
        };
        Ok(BlobEncoder { compressor })
    }

    /// Compress `data` behind `prefix` bytes of room, with the codec byte at `prefix`.
    /// Returns a buffer of `prefix + 1 + body` with capacity for a tag after it.
    fn compress_with_room(&mut self, prefix: usize, data: &[u8], mut buf: Vec<u8>) -> Vec<u8> {
        buf.clear();
        // Room for the raw form plus the tag. Spare capacity also caps zstd's output (see
        // below); a recycled buffer may be larger, which only costs a futile compression.
        let want = prefix + 1 + data.len() + crate::crypto::TAG_LEN;
        if buf.capacity() < want {
            buf = Vec::with_capacity(want);
        }
        buf.resize(prefix, 0);
        if let Some(c) = self.compressor.as_mut() {
            buf.push(CODEC_ZSTD);
            let mut cur = Cursor::new(buf);
            cur.set_position((prefix + 1) as u64);
            // The buffer's spare capacity caps zstd's output: if zstd cannot fit, it fails
            // with "destination too small"; if it does not shrink the data, it is stored raw.
            match c.compress_to_buffer(data, &mut cur) {
                Ok(n) if n < data.len() => return cur.into_inner(),
                _ => buf = cur.into_inner(),
            }
            buf.truncate(prefix);
        }
        buf.push(CODEC_RAW);
        buf.extend_from_slice(data);
        buf
    }

    /// Encode a blob whose id the caller computed with [`MasterKey::chunk_id`].
    pub fn encode(
        &mut self,
        key: &MasterKey,
        ty: BlobType,
        id: &Id,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        self.encode_into(key, ty, id, data, Vec::new())
    }

    /// As [`encode`](Self::encode), reusing `out`'s allocation when it has the right size
    /// (the backup pipeline recycles buffers to spare page faults).
    pub fn encode_into(
        &mut self,
        key: &MasterKey,
        ty: BlobType,
        id: &Id,
        data: &[u8],
        out: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut buf = self.compress_with_room(NONCE_LEN, data, out);
        key.seal_in_place(&blob_aad(ty, id), &mut buf)?;
        Ok(buf)
    }

    /// Seal a whole file body behind `magic`.
    pub fn seal_file(&mut self, key: &MasterKey, magic: &[u8; 8], body: &[u8]) -> Result<Vec<u8>> {
        let mut buf = self.compress_with_room(NONCE_LEN, body, Vec::new());
        key.seal_in_place(magic, &mut buf)?;
        let mut out = Vec::with_capacity(8 + buf.len());
        out.extend_from_slice(magic);
        out.extend_from_slice(&buf);
        Ok(out)
    }
}

/// Decode a blob: decrypt, decompress, verify length and id. `what` names it in errors.
pub fn decode_blob(
    key: &MasterKey,
    ty: BlobType,
    id: &Id,
    mut stored: Vec<u8>,
    raw_len: u32,
) -> Result<Vec<u8>> {
    decode_blob_slice(key, ty, id, &mut stored, raw_len)
}

/// As [`decode_blob`], decrypting in place inside a larger buffer (a ranged read of several
/// blobs): the ciphertext is overwritten with plaintext, and only the result is allocated.
pub fn decode_blob_slice(
    key: &MasterKey,
    ty: BlobType,
    id: &Id,
    stored: &mut [u8],
    raw_len: u32,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decode_blob_into(key, ty, id, stored, raw_len, &mut out)?;
    Ok(out)
}

/// As [`decode_blob_slice`], into `out` (replacing its contents, reusing its allocation).
pub fn decode_blob_into(
    key: &MasterKey,
    ty: BlobType,
    id: &Id,
    stored: &mut [u8],
    raw_len: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    let what = || format!("{} blob {}", ty.as_str(), id);
    let plain = key
        .open_slice(&blob_aad(ty, id), stored)
        .map_err(|e| Error::corrupt(what(), e.to_string()))?;
    out.clear();
    match stored[plain].split_first() {
        Some((&CODEC_RAW, body)) => out.extend_from_slice(body),
        Some((&CODEC_ZSTD, body)) => {
            out.reserve(raw_len as usize);
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(body, out))
                .map_err(|e| Error::corrupt(what(), format!("zstd: {e}")))?;
        }
        Some((other, _)) => return Err(Error::corrupt(what(), format!("unknown codec {other}"))),
        None => return Err(Error::corrupt(what(), "empty plaintext")),
    }
    if out.len() != raw_len as usize {
        return Err(Error::corrupt(
            what(),
            format!("length {} != indexed {}", out.len(), raw_len),
        ));
    }
    if key.chunk_id(out) != *id {
        return Err(Error::corrupt(what(), "content does not match its id"));
    }
    Ok(())
}

/// Open a sealed file written by [`BlobEncoder::seal_file`].
pub fn open_file(key: &MasterKey, magic: &[u8; 8], bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    if bytes.len() < 8 || &bytes[..8] != magic {
        let got = bytes.get(..8).unwrap_or(bytes);
        if got.starts_with(b"KURA") {
            return Err(Error::Unsupported(format!(
                "{what} (magic {:?}, expected {:?})",
                String::from_utf8_lossy(got),
                String::from_utf8_lossy(magic)
            )));
        }
        return Err(Error::corrupt(what, "bad magic"));
    }
    let mut buf = bytes[8..].to_vec();
    let plain = key
        .open_slice(magic, &mut buf)
        .map_err(|e| Error::corrupt(what, e.to_string()))?;
    // Sealed files have no recorded plaintext length: stream-decode.
    match buf[plain].split_first() {
        Some((&CODEC_RAW, body)) => Ok(body.to_vec()),
        Some((&CODEC_ZSTD, body)) => {
            zstd::stream::decode_all(body).map_err(|e| Error::corrupt(what, format!("zstd: {e}")))
        }
        Some((other, _)) => Err(Error::corrupt(what, format!("unknown codec {other}"))),
        None => Err(Error::corrupt(what, "empty plaintext")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_compressible_and_not() {
        let key = MasterKey::generate().unwrap();
        let mut enc = BlobEncoder::new(3).unwrap();
        let text = b"abcabcabc".repeat(1000);
        let mut noise = vec![0u8; 5000];
        getrandom::fill(&mut noise).unwrap();
        for data in [&text[..], &noise[..], &b""[..]] {
            let id = key.chunk_id(data);
            let stored = enc.encode(&key, BlobType::Data, &id, data).unwrap();
            if data.len() > 1000 && data == &text[..] {
                assert!(stored.len() < data.len() / 10, "compressed");
            }
            if data == &noise[..] {
                assert_eq!(
                    stored.len(),
                    data.len() + BLOB_OVERHEAD,
                    "incompressible stored raw"
                );
            }
            let back =
                decode_blob(&key, BlobType::Data, &id, stored.clone(), data.len() as u32).unwrap();
            assert_eq!(back, data);
            // Wrong type or id in the associated data is detected.
            assert!(
                decode_blob(&key, BlobType::Tree, &id, stored.clone(), data.len() as u32).is_err()
            );
            assert!(
                decode_blob(&key, BlobType::Data, &Id::ZERO, stored, data.len() as u32).is_err()
            );
        }
    }

    #[test]
    fn sealed_file_round_trip_and_magic_checks() {
        let key = MasterKey::generate().unwrap();
        let mut enc = BlobEncoder::new(3).unwrap();
        let f = enc
            .seal_file(&key, MAGIC_INDEX, b"body body body body")
            .unwrap();
        assert_eq!(&f[..8], MAGIC_INDEX);
        assert_eq!(
            open_file(&key, MAGIC_INDEX, &f, "index").unwrap(),
            b"body body body body"
        );
        assert!(matches!(
            open_file(&key, MAGIC_SNAPSHOT, &f, "snap"),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            open_file(&key, MAGIC_INDEX, b"xx", "index"),
            Err(Error::Corrupt { .. })
        ));
    }
}
