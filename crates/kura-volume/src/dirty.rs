//! A persistent granule bitmap (`KURADBM1`): one bit per 4 MiB granule (the repository's
//! fixed chunk size for volumes). A mirror pair's difference bitmap (`PRIMARY.pairdiff`) is
//! one; changed-block tracking for backups keeps one bitmap per backup chain in its own file
//! (see [`crate::chains`]).
//!
//! The file carries an *in use* flag, set (and made durable) when a process opens it and
//! cleared only by a clean close after the bits are written: found set, the last holder died
//! ([`DirtyMap::was_unclean`]). Bits that could not be read (a new, damaged or resized file)
//! are reported by [`DirtyMap::lost`]; the caller decides what that means.
//!
//! # Format (`KURADBM1`)
//! A 32-byte header — magic `KURADBM1`, u32 version 1, u32 flags (bit 0: in use; bit 1: set
//! by earlier versions, ignored), u64 granule bytes, u64 volume size — then
//! ⌈size / granule / 8⌉ bytes of bits, granule `i` in bit `i % 8` of byte `i / 8`.
//! Little-endian. Specified in `docs/FORMAT.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Result, io};

pub const MAGIC: &[u8; 8] = b"KURADBM1";
pub const GRANULE: u64 = 4 << 20;
const HEADER: u64 = 32;
const FLAG_IN_USE: u32 = 1;

/// An open bitmap, held by one process.
#[derive(Debug)]
pub struct DirtyMap {
    path: PathBuf,
    file: File,
    size: u64,
    bits: Mutex<Vec<u8>>,
    /// The file was found in use at open: its last holder died without closing it.
    unclean: bool,
    /// The bits could not be read at open (a new, damaged or resized file): they start empty.
    lost: bool,
    /// Serializes writes of the file: a later write never carries fewer bits than an earlier
    /// one that has returned (a durable mark must stay durable).
    io: Mutex<()>,
}

fn header(size: u64, flags: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&GRANULE.to_le_bytes());
    h[24..32].copy_from_slice(&size.to_le_bytes());
    h
}

fn bitmap_len(size: u64) -> usize {
    size.div_ceil(GRANULE).div_ceil(8) as usize
}

fn u64_at(h: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(a)
}

impl DirtyMap {
    /// Open (or start) the bitmap of a volume of `size` bytes and mark it in use. Fails with
    /// [`Error::InUse`] when another process holds it.
    pub fn open(path: &Path, size: u64) -> Result<DirtyMap> {
        let what = || format!("bitmap {}", path.display());
        let file = crate::hold::open_held(path, &what())?;
        let len = file.metadata().map_err(io(what()))?.len();
        let n = bitmap_len(size);
        let mut bits = vec![0u8; n];
        let mut unclean = false;
        let mut lost = true;
        if len == HEADER + n as u64 {
            let mut h = [0u8; 32];
            file.read_exact_at(&mut h, 0).map_err(io(what()))?;
            let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
            if &h[..8] == MAGIC
                && h[8..12] == 1u32.to_le_bytes()
                && u64_at(&h, 16) == GRANULE
                && u64_at(&h, 24) == size
            {
                file.read_exact_at(&mut bits, HEADER).map_err(io(what()))?;
                unclean = flags & FLAG_IN_USE != 0;
                lost = false;
            }
        }
        let m = DirtyMap {
            path: path.to_path_buf(),
            file,
            size,
            bits: Mutex::new(bits),
            unclean,
            lost,
            io: Mutex::new(()),
        };
        // In use from now on, durably, before any write is accepted.
        m.write(FLAG_IN_USE)?;
        Ok(m)
    }

    fn write(&self, flags: u32) -> Result<()> {
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let what = || format!("bitmap {}", self.path.display());
        let bits = self.bits.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.file
            .write_all_at(&bits, HEADER)
            .and_then(|()| self.file.set_len(HEADER + bits.len() as u64))
            .and_then(|()| self.file.sync_data())
            .map_err(io(what()))?;
        self.file
            .write_all_at(&header(self.size, flags), 0)
            .and_then(|()| self.file.sync_data())
            .map_err(io(what()))
    }

    /// Mark `[offset, offset + len)` changed. Returns whether a bit was newly set.
    pub fn mark(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let first = offset / GRANULE;
        let last = (offset + len - 1) / GRANULE;
        let mut bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = false;
        for g in first..=last {
            if let Some(b) = bits.get_mut((g / 8) as usize) {
                new |= *b & (1 << (g % 8)) == 0;
                *b |= 1 << (g % 8);
            }
        }
        new
    }

    /// Mark, and when that set a new bit, write the bitmap before returning: the mark is
    /// durable before the change it announces is acknowledged (a pair's difference bitmap).
    pub fn mark_durable(&self, offset: u64, len: u64) -> Result<()> {
        if self.mark(offset, len) {
            self.persist()?;
        }
        Ok(())
    }

    /// Set every bit (nothing is known to be equal).
    pub fn set_all(&self) {
        self.mark(0, self.size);
    }

    /// Clear the bits of these granules (they were copied), in memory; [`persist`] writes.
    ///
    /// [`persist`]: Self::persist
    pub fn clear_granules(&self, granules: &[u64]) {
        let mut bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        for g in granules {
            if let Some(b) = bits.get_mut((g / 8) as usize) {
                *b &= !(1 << (g % 8));
            }
        }
    }

    /// Dirty granule numbers.
    pub fn dirty_granules(&self) -> Vec<u64> {
        let bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        (0..self.size.div_ceil(GRANULE))
            .filter(|g| bits[(g / 8) as usize] & (1 << (g % 8)) != 0)
            .collect()
    }

    /// Bytes in dirty granules.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_granules()
            .iter()
            .map(|g| GRANULE.min(self.size - g * GRANULE))
            .sum()
    }

    /// Write the bits (keeping the in-use flag): called on every flush.
    pub fn persist(&self) -> Result<()> {
        self.write(FLAG_IN_USE)
    }

    /// Whether the last holder died without closing the bitmap.
    pub fn was_unclean(&self) -> bool {
        self.unclean
    }

    /// Whether the bits could not be read at open (new, damaged or resized file).
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Close cleanly: bits written, the in-use flag cleared.
    pub fn close(&self) -> Result<()> {
        self.write(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn bits_survive_a_clean_close_and_a_crash_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.pairdiff");
        let size = 40 << 20;
        let m = DirtyMap::open(&p, size).unwrap();
        assert!(m.lost());
        m.mark(5 << 20, 1); // granule 1
        m.mark((12 << 20) - 1, 2); // granules 2 and 3
        m.mark(39 << 20, 1 << 20); // the last granule
        assert_eq!(m.dirty_granules(), [1, 2, 3, 9]);
        // A second holder is refused while this one has it.
        assert!(matches!(DirtyMap::open(&p, size), Err(Error::InUse(_))));
        m.close().unwrap();
        drop(m);
        let m = DirtyMap::open(&p, size).unwrap();
        assert!(!m.was_unclean() && !m.lost());
        assert_eq!(m.dirty_granules(), [1, 2, 3, 9]);
        // Dropped without close (a crash): the next open sees it.
        m.persist().unwrap();
        drop(m);
        let m = DirtyMap::open(&p, size).unwrap();
        assert!(m.was_unclean());
        assert_eq!(m.dirty_granules(), [1, 2, 3, 9]);
        m.close().unwrap();
        drop(m);
        // Another size: the bits are lost.
        assert!(DirtyMap::open(&p, size * 2).unwrap().lost());
    }
}

/// A bitmap's state as seen from outside the process holding it (`kura pair list`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirtyState {
    /// Bytes in dirty granules (as last written to the file).
    pub dirty_bytes: u64,
    /// A process holds the bitmap now (its newest bits are in memory there).
    pub served: bool,
    /// The last holder did not close it (killed or crashed).
    pub unclean: bool,
    /// The bits could not be read (missing, damaged, or of another size).
    pub lost: bool,
    /// The dirty granules (as last written to the file).
    #[serde(skip)]
    pub granules: Vec<u64>,
}

/// Read a bitmap without holding it.
pub fn peek(path: &Path, size: u64) -> Result<DirtyState> {
    let what = || format!("bitmap {}", path.display());
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DirtyState {
                dirty_bytes: 0,
                served: false,
                unclean: false,
                lost: true,
                granules: Vec::new(),
            });
        }
        Err(e) => return Err(io(what())(e)),
    };
    let served = !crate::hold::try_lock(&file, false);
    let len = file.metadata().map_err(io(what()))?.len();
    let n = bitmap_len(size);
    let mut h = [0u8; 32];
    let mut bits = vec![0u8; n];
    let readable = len == HEADER + n as u64
        && file.read_exact_at(&mut h, 0).is_ok()
        && file.read_exact_at(&mut bits, HEADER).is_ok()
        && &h[..8] == MAGIC
        && u64_at(&h, 24) == size;
    if !readable {
        return Ok(DirtyState {
            dirty_bytes: 0,
            served,
            unclean: false,
            lost: true,
            granules: Vec::new(),
        });
    }
    let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let granules: Vec<u64> = (0..size.div_ceil(GRANULE))
        .filter(|g| bits[(g / 8) as usize] & (1 << (g % 8)) != 0)
        .collect();
    let dirty_bytes = granules
        .iter()
        .map(|g| GRANULE.min(size - g * GRANULE))
        .sum();
    Ok(DirtyState {
        dirty_bytes,
        served,
        unclean: flags & FLAG_IN_USE != 0 && !served,
        lost: false,
        granules,
    })
}
