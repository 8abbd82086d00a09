//! Changed-block tracking: a persistent dirty bitmap per volume (`NAME.dirty`), one bit per
//! 4 MiB granule (the repository's fixed chunk size for volumes), set by every host write,
//! trim or zeroing since the last successful backup.
//!
//! # Trust
//! A bitmap is only useful if it misses nothing. Bits are set in memory before a write is
//! acknowledged and written to the file on every flush and when the volume is closed; but a
//! write can reach the disk without its bit if the server dies between. So the file carries an
//! *in use* flag, set (and made durable) when a server opens the volume and cleared only by a
//! clean close after the bits are written. A bitmap found in use — the server crashed or was
//! killed — is not trusted: the next backup reads everything and says why
//! ([`DirtyMap::trust`]). The same holds for a missing bitmap (no backup baseline yet) and one
//! whose geometry does not match the volume (it was resized).
//!
//! # Format (`KURADBM1`)
//! A 32-byte header — magic `KURADBM1`, u32 version 1, u32 flags (bit 0: in use; bit 1:
//! incomplete — untrusted until the next backup resets it), u64 granule
//! bytes, u64 volume size — then ⌈size / granule / 8⌉ bytes of bits, granule `i` in bit
//! `i % 8` of byte `i / 8`. Little-endian. Specified in `docs/FORMAT.md`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::{Error, Result};

pub const MAGIC: &[u8; 8] = b"KURADBM1";
pub const GRANULE: u64 = 4 << 20;
const HEADER: u64 = 32;
const FLAG_IN_USE: u32 = 1;
/// The bits do not cover every change since the last backup (no baseline yet, or an unclean
/// shutdown was found): kept across clean closes until a backup resets the bitmap.
const FLAG_INCOMPLETE: u32 = 2;

/// Whether a bitmap can be used for an incremental backup, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    Untrusted(String),
}

/// An open bitmap, held by the one process serving the volume.
#[derive(Debug)]
pub struct DirtyMap {
    path: PathBuf,
    file: File,
    size: u64,
    bits: Mutex<Vec<u8>>,
    trust: Mutex<Trust>,
    /// The file was found in use at open: its last holder died without closing it.
    unclean: bool,
    /// Serializes writes of the file: a later write never carries fewer bits than an earlier
    /// one that has returned (a durable mark must stay durable).
    io: Mutex<()>,
}

/// The bits a freeze took out of a bitmap (see [`DirtyMap::freeze`]).
#[derive(Debug, Clone)]
pub struct Frozen {
    bits: Vec<u8>,
    pub trust: Trust,
    /// The dirty granules at the freeze, as `(offset, length)` runs.
    pub runs: Vec<(u64, u64)>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
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

/// What the flags of a bitmap whose geometry matches say about its completeness.
fn trust_of(flags: u32) -> Trust {
    if flags & FLAG_IN_USE != 0 {
        Trust::Untrusted(
            "the volume was not closed cleanly (server killed or crashed): changes since the \
             last backup are unknown"
                .into(),
        )
    } else if flags & FLAG_INCOMPLETE != 0 {
        Trust::Untrusted(
            "the dirty bitmap has been incomplete since it was started or since an unclean \
             shutdown; a backup resets it"
                .into(),
        )
    } else {
        Trust::Trusted
    }
}

fn bitmap_len(size: u64) -> usize {
    size.div_ceil(GRANULE).div_ceil(8) as usize
}

impl DirtyMap {
    /// Open (or start) the bitmap of a volume of `size` bytes and mark it in use. Fails with
    /// [`Error::InUse`] when another process holds it.
    pub fn open(path: &Path, size: u64) -> Result<DirtyMap> {
        let what = || format!("dirty bitmap {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io(what()))?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let name = path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            return Err(Error::InUse(name));
        }
        let len = file.metadata().map_err(io(what()))?.len();
        let n = bitmap_len(size);
        let mut bits = vec![0u8; n];
        let mut unclean = false;
        let trust = if len == 0 {
            Trust::Untrusted("no dirty bitmap yet: the first backup reads everything".into())
        } else if len < HEADER {
            Trust::Untrusted("the dirty bitmap file is damaged (shorter than its header)".into())
        } else {
            let mut h = [0u8; 32];
            file.read_exact_at(&mut h, 0).map_err(io(what()))?;
            let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
            let granule = u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
            let was = u64::from_le_bytes(h[24..32].try_into().unwrap_or_default());
            if &h[..8] != MAGIC || h[8..12] != 1u32.to_le_bytes() {
                Trust::Untrusted("the dirty bitmap file is not a KURADBM1 bitmap".into())
            } else if granule != GRANULE || was != size || len != HEADER + n as u64 {
                Trust::Untrusted(format!(
                    "the dirty bitmap describes a {was}-byte volume; the volume was resized"
                ))
            } else {
                // Geometry matches: the bits are valid as far as they go (a lower bound of
                // what changed), whether or not they can be trusted to be complete.
                file.read_exact_at(&mut bits, HEADER).map_err(io(what()))?;
                unclean = flags & FLAG_IN_USE != 0;
                trust_of(flags)
            }
        };
        let m = DirtyMap {
            path: path.to_path_buf(),
            file,
            size,
            bits: Mutex::new(bits),
            trust: Mutex::new(trust),
            unclean,
            io: Mutex::new(()),
        };
        // In use from now on, durably, before any write is accepted.
        m.write(FLAG_IN_USE)?;
        Ok(m)
    }

    fn write(&self, mut flags: u32) -> Result<()> {
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        if self.trust() != Trust::Trusted {
            flags |= FLAG_INCOMPLETE;
        }
        let what = || format!("dirty bitmap {}", self.path.display());
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

    /// Mark `[offset, offset + len)` changed. Called before the write is acknowledged.
    /// Returns whether a bit was newly set.
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
        self.dirty_runs().iter().map(|r| r.1).sum()
    }

    /// A backup freezes the volume: take the bits (what changed since the last backup, up to
    /// now) and start tracking afresh, in memory. Changes after the freeze belong to the
    /// next backup. If this backup fails, [`thaw_failed`](Self::thaw_failed) puts the bits
    /// back; if it succeeds, [`thaw_done`](Self::thaw_done) trusts what was tracked since.
    /// A crash in between leaves the file in use, so the next backup reads everything.
    pub fn freeze(&self) -> Frozen {
        let runs = self.dirty_runs();
        let trust = self.trust();
        let mut bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        let n = bits.len();
        let taken = std::mem::replace(&mut *bits, vec![0u8; n]);
        Frozen {
            bits: taken,
            trust,
            runs,
        }
    }

    /// The backup of a freeze failed: its bits are dirty again, and an untrusted map stays
    /// untrusted.
    pub fn thaw_failed(&self, frozen: Frozen) -> Result<()> {
        {
            let mut bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
            for (b, f) in bits.iter_mut().zip(&frozen.bits) {
                *b |= f;
            }
        }
        if let Trust::Untrusted(_) = &frozen.trust {
            *self.trust.lock().unwrap_or_else(|p| p.into_inner()) = frozen.trust;
        }
        self.persist()
    }

    /// The backup of a freeze is durable: every change since the freeze was tracked here.
    pub fn thaw_done(&self) -> Result<()> {
        *self.trust.lock().unwrap_or_else(|p| p.into_inner()) = Trust::Trusted;
        self.persist()
    }

    /// Write the bits (keeping the in-use flag): called on every flush.
    pub fn persist(&self) -> Result<()> {
        self.write(FLAG_IN_USE)
    }

    /// Whether the last holder died without closing the bitmap.
    pub fn was_unclean(&self) -> bool {
        self.unclean
    }

    /// Whether granule-level changes since the last backup are known.
    pub fn trust(&self) -> Trust {
        self.trust.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Dirty granules, as `(offset, length)` runs in bytes.
    pub fn dirty_runs(&self) -> Vec<(u64, u64)> {
        let bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        let granules = self.size.div_ceil(GRANULE);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for g in 0..granules {
            if bits[(g / 8) as usize] & (1 << (g % 8)) != 0 {
                let (off, len) = (g * GRANULE, GRANULE.min(self.size - g * GRANULE));
                match runs.last_mut() {
                    Some(r) if r.0 + r.1 == off => r.1 += len,
                    _ => runs.push((off, len)),
                }
            }
        }
        runs
    }

    /// Whether the granule holding `offset` is dirty.
    pub fn is_dirty(&self, offset: u64) -> bool {
        let g = offset / GRANULE;
        let bits = self.bits.lock().unwrap_or_else(|p| p.into_inner());
        bits.get((g / 8) as usize)
            .is_some_and(|b| b & (1 << (g % 8)) != 0)
    }

    /// A backup has captured the volume as of now: start tracking afresh (trusted).
    pub fn reset(&self) -> Result<()> {
        self.bits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .for_each(|b| *b = 0);
        *self.trust.lock().unwrap_or_else(|p| p.into_inner()) = Trust::Trusted;
        self.persist()
    }

    /// Close cleanly: bits written, the in-use flag cleared.
    pub fn close(&self) -> Result<()> {
        self.write(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_survive_a_clean_close_and_a_crash_is_untrusted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.dirty");
        let size = 40 << 20;
        let m = DirtyMap::open(&p, size).unwrap();
        assert!(matches!(m.trust(), Trust::Untrusted(w) if w.contains("first backup")));
        m.reset().unwrap();
        m.mark(5 << 20, 1); // granule 1
        m.mark((12 << 20) - 1, 2); // granules 2 and 3
        m.mark(39 << 20, 1 << 20); // the last granule
        assert_eq!(m.dirty_runs(), [(4 << 20, 12 << 20), (36 << 20, 4 << 20)]);
        // A second holder is refused while this one has it.
        assert!(matches!(DirtyMap::open(&p, size), Err(Error::InUse(_))));
        m.close().unwrap();
        drop(m);
        let m = DirtyMap::open(&p, size).unwrap();
        assert_eq!(m.trust(), Trust::Trusted);
        assert_eq!(m.dirty_runs(), [(4 << 20, 12 << 20), (36 << 20, 4 << 20)]);
        // Dropped without close (a crash): the next open does not trust it.
        m.persist().unwrap();
        drop(m);
        let m = DirtyMap::open(&p, size).unwrap();
        assert!(matches!(m.trust(), Trust::Untrusted(w) if w.contains("not closed cleanly")));
        m.close().unwrap();
        drop(m);
        // Untrusted stays untrusted across clean closes, until a backup resets it.
        let m = DirtyMap::open(&p, size).unwrap();
        assert!(matches!(m.trust(), Trust::Untrusted(w) if w.contains("incomplete")));
        m.reset().unwrap();
        m.close().unwrap();
        drop(m);
        assert_eq!(DirtyMap::open(&p, size).unwrap().trust(), Trust::Trusted);
        // Resized volume: untrusted.
        let m = DirtyMap::open(&p, size * 2).unwrap();
        assert!(matches!(m.trust(), Trust::Untrusted(w) if w.contains("resized")));
    }
}

/// A bitmap's state as seen from outside the serving process (`kura volume info`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirtyState {
    /// Whether the next backup may read only the dirty granules.
    pub trusted: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// Bytes in dirty granules (as last written to the file).
    pub dirty_bytes: u64,
    /// A server holds the bitmap now (its newest bits are in memory there).
    pub served: bool,
    /// The last holder did not close it (killed or crashed).
    #[serde(skip)]
    pub unclean: bool,
}

/// Read a bitmap without holding it.
pub fn peek(path: &Path, size: u64) -> Result<DirtyState> {
    let what = || format!("dirty bitmap {}", path.display());
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DirtyState {
                trusted: false,
                reason: Some("no dirty bitmap yet: the first backup reads everything".into()),
                dirty_bytes: 0,
                served: false,
                unclean: false,
            });
        }
        Err(e) => return Err(io(what())(e)),
    };
    let served = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0;
    let len = file.metadata().map_err(io(what()))?.len();
    let n = bitmap_len(size);
    let mut h = [0u8; 32];
    let mut bits = vec![0u8; n];
    let readable = len == HEADER + n as u64
        && file.read_exact_at(&mut h, 0).is_ok()
        && file.read_exact_at(&mut bits, HEADER).is_ok()
        && &h[..8] == MAGIC
        && u64::from_le_bytes(h[24..32].try_into().unwrap_or_default()) == size;
    if !readable {
        return Ok(DirtyState {
            trusted: false,
            reason: Some("the dirty bitmap does not match the volume (resized or damaged)".into()),
            dirty_bytes: 0,
            served,
            unclean: false,
        });
    }
    let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let granules = size.div_ceil(GRANULE);
    let dirty_bytes = (0..granules)
        .filter(|g| bits[(g / 8) as usize] & (1 << (g % 8)) != 0)
        .map(|g| GRANULE.min(size - g * GRANULE))
        .sum();
    let reason = if flags & FLAG_IN_USE != 0 && !served {
        Some("the volume was not closed cleanly (server killed or crashed)".to_string())
    } else if flags & FLAG_INCOMPLETE != 0 {
        Some("incomplete since it was started or since an unclean shutdown".to_string())
    } else {
        None
    };
    Ok(DirtyState {
        trusted: reason.is_none(),
        reason,
        dirty_bytes,
        served,
        unclean: flags & FLAG_IN_USE != 0 && !served,
    })
}
