//! A volume as an NBD export: the raw file, with every change marked in the volume's dirty
//! bitmap before it is acknowledged, and the bitmap offered to clients as the metadata
//! context `qemu:dirty-bitmap:kura` (the name qemu's clients look for).
//!
//! One process serves a volume through one `VolumeExport` shared by all its connections (the
//! store keeps a registry), so there is one bitmap in memory; a second process is refused
//! (the bitmap file's exclusive lock). When the last connection ends, the bitmap is written
//! and closed cleanly.

use std::io;
use std::sync::{Arc, RwLock};

use kura_nbd::proto::STATE_DIRTY;
use kura_nbd::{Export, FileExport, Runs};

use crate::dirty::{DirtyMap, GRANULE};

/// The metadata context name of the dirty bitmap.
pub const DIRTY_CONTEXT: &str = "qemu:dirty-bitmap:kura";

#[derive(Debug)]
pub struct VolumeExport {
    pub(crate) name: String,
    pub(crate) file: FileExport,
    pub(crate) dirty: Arc<DirtyMap>,
    /// Changes hold it shared (mark, then write); [`shutdown`](Self::shutdown) takes it
    /// exclusively, so no change is acknowledged after the bitmap was closed.
    pub(crate) closed: RwLock<bool>,
}

impl VolumeExport {
    pub fn dirty(&self) -> &Arc<DirtyMap> {
        &self.dirty
    }

    /// Stop accepting changes, then write the data and the bitmap and close the bitmap
    /// cleanly (the server is stopping while clients may still be connected). Idempotent.
    pub fn shutdown(&self) -> crate::Result<()> {
        let mut closed = self.closed.write().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Ok(());
        }
        *closed = true;
        self.file.flush().map_err(|source| crate::Error::Io {
            what: format!("flush volume {}", self.name),
            source,
        })?;
        self.dirty.close()
    }

    /// Run a change while the export is open.
    fn change(&self, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let closed = self.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(io::Error::other(format!(
                "volume {} is shutting down",
                self.name
            )));
        }
        f()
    }
}

impl Drop for VolumeExport {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("volume {}: closing its dirty bitmap: {e}", self.name);
        }
    }
}

fn to_io(e: crate::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Export for VolumeExport {
    fn size(&self) -> u64 {
        self.file.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.change(|| {
            self.dirty.mark(offset, data.len() as u64);
            self.file.write_at(offset, data, fua)?;
            if fua {
                self.dirty.persist().map_err(to_io)?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.change(|| {
            self.file.flush()?;
            self.dirty.persist().map_err(to_io)
        })
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.change(|| {
            self.dirty.mark(offset, len);
            self.file.trim(offset, len)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        self.change(|| {
            self.dirty.mark(offset, len);
            self.file.write_zeroes(offset, len, may_trim, fua)?;
            if fua {
                self.dirty.persist().map_err(to_io)?;
            }
            Ok(())
        })
    }

    fn allocation(&self, offset: u64, len: u32) -> io::Result<Runs> {
        self.file.allocation(offset, len)
    }

    fn contexts(&self) -> Vec<String> {
        vec![DIRTY_CONTEXT.to_string()]
    }

    fn context_status(&self, name: &str, offset: u64, len: u32) -> io::Result<Runs> {
        if name != DIRTY_CONTEXT {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("no metadata context {name}"),
            ));
        }
        // Runs of equal state, granule by granule, clipped to the range asked.
        let end = (offset + u64::from(len)).min(self.size());
        let mut runs: Runs = Vec::new();
        let mut at = offset;
        while at < end {
            let next = ((at / GRANULE) + 1) * GRANULE;
            let stop = next.min(end);
            let flag = if self.dirty.is_dirty(at) {
                STATE_DIRTY
            } else {
                0
            };
            match runs.last_mut() {
                Some((l, f))
                    if *f == flag && u64::from(*l) + (stop - at) <= u64::from(u32::MAX) =>
                {
                    *l += (stop - at) as u32
                }
                _ => runs.push(((stop - at) as u32, flag)),
            }
            at = stop;
        }
        Ok(runs)
    }
}
