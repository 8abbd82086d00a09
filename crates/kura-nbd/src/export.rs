//! What the server serves: an [`Export`] is a byte-addressed device; [`Exports`] names them.
//! The volume engine implements these over its volumes (and can intercept every write: that
//! is how it tracks dirty blocks and copies before writing); [`FileExport`] is the plain
//! implementation over a raw file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

/// (length, status flags) runs describing a range, in order.
pub type Runs = Vec<(u32, u32)>;

/// One exported device. Offsets and lengths are checked by the server against
/// [`size`](Export::size) before any call.
pub trait Export: Send + Sync {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write; with `fua` durable before returning.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// The range's contents become unspecified (zero here); space may be released.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads as zeroes; `may_trim` allows releasing its space.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()>;
    /// `base:allocation` of a range: runs of (length, `STATE_HOLE | STATE_ZERO` bits). May
    /// describe less than asked (at least one run), never more.
    fn allocation(&self, offset: u64, len: u32) -> io::Result<Runs>;
    /// Further metadata contexts this export offers (e.g. `qemu:dirty-bitmap:kura`).
    fn contexts(&self) -> Vec<String> {
        Vec::new()
    }
    /// Status runs of one of [`contexts`](Export::contexts).
    fn context_status(&self, name: &str, offset: u64, len: u32) -> io::Result<Runs> {
        let _ = (offset, len);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("no metadata context {name}"),
        ))
    }
}

/// The set of exports a server offers, by name.
pub trait Exports: Send + Sync {
    /// (name, description) of every export, for NBD_OPT_LIST.
    fn list(&self) -> Vec<(String, String)>;
    /// Open an export for one connection; `Err` says why not (unknown, in use as a work
    /// volume, …).
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, String>;
}

/// A raw file as an export: `pread`/`pwrite`, `fdatasync`, hole punching, and
/// `SEEK_DATA`/`SEEK_HOLE` for `base:allocation`.
#[derive(Debug)]
pub struct FileExport {
    file: File,
    size: u64,
    read_only: bool,
}

impl FileExport {
    pub fn new(file: File, read_only: bool) -> io::Result<FileExport> {
        let size = file.metadata()?.len();
        Ok(FileExport {
            file,
            size,
            read_only,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None) // no data (or hole) at or after offset
        } else {
            Err(e)
        }
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        let mode = if may_trim {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        if self.fallocate(mode, offset, len).is_err() {
            // File systems without the fallocate mode: write the zeroes.
            let zeroes = vec![0u8; len.min(1 << 20) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeroes.len() as u64) as usize;
                self.file.write_all_at(&zeroes[..n], at)?;
                at += n as u64;
            }
        }
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn allocation(&self, offset: u64, len: u32) -> io::Result<Runs> {
        let end = (offset + u64::from(len)).min(self.size);
        let mut runs = Vec::new();
        let mut at = offset;
        while at < end {
            let data = self
                .seek(at, libc::SEEK_DATA)?
                .unwrap_or(self.size)
                .min(end);
            if data > at {
                runs.push((
                    (data - at) as u32,
                    crate::proto::STATE_HOLE | crate::proto::STATE_ZERO,
                ));
                at = data;
                continue;
            }
            let hole = self
                .seek(at, libc::SEEK_HOLE)?
                .unwrap_or(self.size)
                .min(end);
            let hole = hole.max(at + 1);
            runs.push(((hole - at) as u32, 0));
            at = hole;
        }
        Ok(runs)
    }
}
