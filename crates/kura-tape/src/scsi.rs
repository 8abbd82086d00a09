//! A Linux SCSI tape drive through the kernel's `st` driver: [`ScsiDrive`] opens the
//! non-rewinding node (`/dev/nst0`) and speaks `read(2)`, `write(2)` and the `mtio` ioctls.
//!
//! **This driver is written to the kernel's documented interface and is untested on
//! hardware here**: there is no tape drive and no kernel tape emulation on the machines
//! that build kura. It follows `Documentation/scsi/st.rst` and `include/uapi/linux/mtio.h`,
//! and where those are silent `drivers/scsi/st.c` (all cited below from the kernel tree).
//! The virtual library (`vlib`) is what the tests drive.
//!
//! # How `st` is used
//! - The node is opened `O_RDWR | O_NONBLOCK` (`O_RDONLY` when the node may not be written:
//!   then the drive is write-protected to us), so the open succeeds with no tape in the
//!   drive; `O_NONBLOCK` is then cleared so that reads and writes wait for the drive
//!   (st.rst, "Basics" point 4). `st` looks for a tape only when the node is opened, so a
//!   drive that says it is offline is reopened before a positioning command or a status.
//! - Variable block mode (`MTSETBLK 0`): one `write(2)` is one block on tape, one `read(2)`
//!   returns one block, and a block larger than the read buffer fails with `ENOMEM`
//!   (st.rst, "Basics") — reported as [`Error::Format`], the block skipped.
//! - A filemark reads as 0 bytes, the tape then after it; the end of data reads as 0 bytes
//!   once more (st.rst: "end of data is signified by returning zero bytes for two
//!   consecutive reads"), or as `EIO` with `GMT_EOD` in `MTIOCGET`. Where no filemark comes
//!   before the end of data (a blank tape, a write cut short) `st` answers `EIO` alone,
//!   like a medium error (st.c `read_tape`: `BLANK CHECK` is turned into end of data only
//!   after a filemark). Then the drive spaces to the end of data (`MTEOM`): if that does not
//!   move the tape (`MTIOCPOS` before and after) the read was at the end of data.
//! - `MTWEOF` with a count of 0 writes no filemark but makes the drive write its buffer to
//!   the medium (a SCSI WRITE FILEMARKS without the immediate bit, st.rst "Basics"), unless
//!   the `MT_ST_NOWAIT_EOF` option was set for the drive (it is off by default).
//! - `MTEOM` counts the filemarks it spaces over unless the `MT_ST_FAST_MTEOM` option is set
//!   (st.rst, "Miscellaneous Compile Options"); without the count there is no file number to
//!   return, and [`Drive::to_end_of_data`] fails saying so.
//! - Closing the node after a write, or rewinding or unloading right after one, makes `st`
//!   write a filemark (st.rst, "Basics").
//!
//! # Early warning, as the kernel really does it
//! st.rst, "EOM Behaviour When Writing": "When the end of medium early warning is
//! encountered, the current write is finished and the number of bytes is returned. The next
//! write returns -1 and errno is set to ENOSPC. To enable writing a trailer, the next write
//! is allowed to proceed and, if successful, the number of bytes is returned. After this, -1
//! and the number of bytes are alternately returned until the physical end of medium (or
//! some other error) is encountered."
//!
//! `st_write` in st.c is what makes that true: the write that meets early warning (a
//! CHECK CONDITION with the EOM bit and nothing left over) returns its full count and sets
//! the partition's state to `ST_EOM_OK`; the next `write` sees `ST_EOM_OK`, moves it to
//! `ST_EOD_1` ("allow next write") and returns `-ENOSPC` *before sending anything to the
//! drive*; the one after that is sent. With asynchronous writes (variable blocks, no direct
//! I/O), the early warning of a write is found by `write_behind_check` when the *next*
//! write, or an ioctl's buffer flush, starts: `-ENOSPC` only when all its data was written,
//! `-EIO` when some was lost. At the physical end (`VOLUME OVERFLOW`) the whole block is
//! left over and `st_write` returns `-ENOSPC` with nothing written. A filemark written past
//! early warning succeeds (st.c `st_int_ioctl`, `MTWEOF`: "EOF(s) written successfully at
//! EOM"), and a failed one is `-EIO`.
//!
//! So `ENOSPC` from a write *always* means "this block is not on tape", and the first one
//! past early warning is a refusal to be retried. [`ScsiDrive`] retries a write (or a
//! filemark, or any ioctl whose buffer flush found the early warning) once after `ENOSPC`;
//! it reports [`Written::early_warning`] from then on until the tape is repositioned, and
//! [`Error::EndOfMedium`] when the retry is refused as well (or, past early warning, fails
//! with `EIO`). The early warning is therefore reported one block after the one that met
//! it, which the early-warning zone (many megabytes) leaves room for. `GMT_EOT` is not
//! relied on: `st` sets it only while the state is `ST_EOM_OK`, and an ioctl flushing an
//! asynchronous write returns the `ENOSPC` instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use libc::{c_int, c_long, c_short};

use crate::drive::{Drive, DriveStatus, Record, Written};
use crate::{Error, Result};

// `mtio.h` operations (`struct mtop.mt_op`).
const MTFSF: c_short = 1;
const MTWEOF: c_short = 5;
const MTREW: c_short = 6;
const MTOFFL: c_short = 7;
const MTEOM: c_short = 12;
const MTSETBLK: c_short = 20;

// `mtio.h` generic status bits (`struct mtget.mt_gstat`).
const GMT_BOT: c_long = 0x4000_0000;
const GMT_EOD: c_long = 0x0800_0000;
const GMT_WR_PROT: c_long = 0x0400_0000;
const GMT_ONLINE: c_long = 0x0100_0000;
const MT_ST_BLKSIZE_MASK: c_long = 0x00ff_ffff;

/// The largest count `st` passes to the drive (24-bit signed fields of SPACE and WRITE
/// FILEMARKS).
const MAX_COUNT: u32 = 0x7f_ffff;

/// `__kernel_daddr_t`: `int`, except on MIPS where it is `long`.
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
type KernelDaddr = c_long;
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
type KernelDaddr = c_int;

/// `struct mtop`, the argument of `MTIOCTOP`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MtOp {
    mt_op: c_short,
    mt_count: c_int,
}

/// `struct mtget`, filled by `MTIOCGET`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MtGet {
    mt_type: c_long,
    mt_resid: c_long,
    mt_dsreg: c_long,
    mt_gstat: c_long,
    mt_erreg: c_long,
    mt_fileno: KernelDaddr,
    mt_blkno: KernelDaddr,
}

/// `struct mtpos`, filled by `MTIOCPOS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MtPos {
    mt_blkno: c_long,
}

/// The `_IOC` encoding (`asm-generic/ioctl.h`): direction, argument size, type, number.
/// PowerPC, MIPS and SPARC have 13 size bits and write is 4 there.
const IOC_ALT: bool = cfg!(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
));
const IOC_SIZEBITS: u32 = if IOC_ALT { 13 } else { 14 };
const IOC_WRITE: u32 = if IOC_ALT { 4 } else { 1 };
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS), "ioctl argument too large");
    (dir << (16 + IOC_SIZEBITS)) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

const MTIOCTOP: u32 = ioc(IOC_WRITE, b'm', 1, size_of::<MtOp>());
const MTIOCGET: u32 = ioc(IOC_READ, b'm', 2, size_of::<MtGet>());
const MTIOCPOS: u32 = ioc(IOC_READ, b'm', 3, size_of::<MtPos>());

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const _: () = {
    assert!(size_of::<MtOp>() == 8);
    assert!(size_of::<MtGet>() == 48);
    assert!(size_of::<MtPos>() == 8);
    assert!(MTIOCTOP == 0x4008_6d01);
    assert!(MTIOCGET == 0x8030_6d02);
    assert!(MTIOCPOS == 0x8008_6d03);
};

/// `ioctl(fd, request, arg)`, retried when a signal interrupted it before `st` took its
/// lock (nothing was done then).
///
/// # Safety
/// `request` must be one of the `mtio` requests above and `T` the structure it reads or
/// fills (its size is encoded in the request).
unsafe fn mtio<T>(file: &File, request: u32, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: the caller guarantees `arg` is the structure `request` reads or fills;
        // the pointer is valid and exclusive for the duration of the call, and `file` keeps
        // the descriptor open.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg as *mut T) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn mt_op(file: &File, op: c_short, count: c_int) -> io::Result<()> {
    let mut arg = MtOp {
        mt_op: op,
        mt_count: count,
    };
    // SAFETY: MTIOCTOP reads a `struct mtop`, which `MtOp` is (layout asserted above).
    unsafe { mtio(file, MTIOCTOP, &mut arg) }
}

fn mt_get(file: &File) -> io::Result<MtGet> {
    let mut arg = MtGet::default();
    // SAFETY: MTIOCGET fills a `struct mtget`, which `MtGet` is (layout asserted above).
    unsafe { mtio(file, MTIOCGET, &mut arg) }?;
    Ok(arg)
}

fn mt_pos(file: &File) -> io::Result<c_long> {
    let mut arg = MtPos::default();
    // SAFETY: MTIOCPOS fills a `struct mtpos`, which `MtPos` is (layout asserted above).
    unsafe { mtio(file, MTIOCPOS, &mut arg) }?;
    Ok(arg.mt_blkno)
}

fn errno_is(e: &io::Error, errno: c_int) -> bool {
    e.raw_os_error() == Some(errno)
}

/// A SCSI tape drive through `st` (see the module docs).
#[derive(Debug)]
pub struct ScsiDrive {
    path: PathBuf,
    /// `None` only between closing the node and reopening it.
    file: Option<File>,
    /// The node could be opened only for reading.
    read_only: bool,
    /// `st` had a tape ready when last asked.
    online: bool,
    /// Past early warning since the tape was last positioned (see the module docs).
    past_ew: bool,
    /// The last read returned a filemark.
    after_filemark: bool,
}

impl ScsiDrive {
    /// Open a tape drive's non-rewinding node (`/dev/nst0`). A drive with no tape opens;
    /// a path that is not a tape device is [`Error::Invalid`].
    pub fn open(path: impl AsRef<Path>) -> Result<ScsiDrive> {
        let path = path.as_ref().to_path_buf();
        let (file, read_only) = open_node(&path)?;
        let status = mt_get(&file).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL) => Error::Invalid(format!(
                "{}: not a tape device (MTIOCGET: {e})",
                path.display()
            )),
            _ => Error::device(format!("{}: status", path.display()), e),
        })?;
        let mut drive = ScsiDrive {
            path,
            file: Some(file),
            read_only,
            online: false,
            past_ew: false,
            after_filemark: false,
        };
        drive.take_status(&status)?;
        Ok(drive)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open node (closed only while being reopened, or when reopening failed).
    fn fd(&self) -> io::Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn fail(&mut self, what: &str, e: io::Error) -> Error {
        if errno_is(&e, libc::ENOMEDIUM) {
            self.online = false;
            return Error::NoTape(self.name());
        }
        Error::device(format!("{}: {what}", self.name()), e)
    }

    /// An `mtio` call, retried once when it failed with `ENOSPC`: its buffer flush found
    /// that an asynchronous write met early warning (all written; see the module docs).
    fn with_ew<T>(&mut self, call: impl Fn(&File) -> io::Result<T>) -> io::Result<T> {
        let file = self.fd()?;
        let (result, ew) = match call(file) {
            Err(e) if errno_is(&e, libc::ENOSPC) => (call(file), true),
            r => (r, false),
        };
        self.past_ew |= ew;
        result
    }

    fn get(&mut self, what: &str) -> Result<MtGet> {
        self.with_ew(mt_get).map_err(|e| self.fail(what, e))
    }

    fn op(&mut self, what: &str, op: c_short, count: c_int) -> Result<()> {
        self.with_ew(|f| mt_op(f, op, count))
            .map_err(|e| self.fail(what, e))
    }

    /// Note what `MTIOCGET` said; with a tape ready, make sure of variable block mode
    /// (`st` resets the block size to the drive's default for each new tape).
    fn take_status(&mut self, s: &MtGet) -> Result<()> {
        self.online = s.mt_gstat & GMT_ONLINE != 0;
        if self.online && s.mt_dsreg & MT_ST_BLKSIZE_MASK != 0 {
            self.op("set variable block mode (MTSETBLK 0)", MTSETBLK, 0)?;
        }
        Ok(())
    }

    /// The drive's status; a drive that says it has no tape is reopened first, as `st`
    /// looks for a tape only at open.
    fn refresh(&mut self) -> Result<MtGet> {
        if self.file.is_some() {
            let s = self.get("status")?;
            if s.mt_gstat & GMT_ONLINE != 0 {
                self.online = true;
                return Ok(s);
            }
        }
        self.file = None; // `st` allows one open at a time: close before reopening.
        let (file, read_only) = open_node(&self.path)?;
        self.file = Some(file);
        self.read_only = read_only;
        self.past_ew = false;
        self.after_filemark = false;
        let s = self.get("status")?;
        self.take_status(&s)?;
        Ok(s)
    }

    /// Refresh, and fail with [`Error::NoTape`] when there is still no tape ready.
    fn ready(&mut self) -> Result<()> {
        self.refresh()?;
        if self.online {
            Ok(())
        } else {
            Err(Error::NoTape(self.name()))
        }
    }

    fn positioned(&mut self) {
        self.past_ew = false;
        self.after_filemark = false;
    }

    fn read_only_error(&self, what: &str) -> Error {
        Error::device(
            format!(
                "{}: {what}: opened read-only (the device node may not be written)",
                self.name()
            ),
            io::Error::from_raw_os_error(libc::EBADF),
        )
    }

    fn write_error(&mut self, what: &str, e: io::Error) -> Error {
        if errno_is(&e, libc::ENOSPC) || (self.past_ew && errno_is(&e, libc::EIO)) {
            tracing::warn!(drive = %self.name(), "{what}: {e}: end of medium");
            return Error::EndOfMedium(self.name());
        }
        if errno_is(&e, libc::EINVAL) {
            return Error::Invalid(format!(
                "{}: {what}: the drive refused the size (outside its block size limits): {e}",
                self.name()
            ));
        }
        if errno_is(&e, libc::EACCES) {
            return Error::device(
                format!("{}: {what}: the tape is write-protected", self.name()),
                e,
            );
        }
        self.fail(what, e)
    }

    /// One `write(2)` of the whole block; the count written.
    fn write_once(&self, data: &[u8]) -> io::Result<usize> {
        let mut file = self.fd()?;
        loop {
            match file.write(data) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// A read failed with `EIO`: the end of data `st` did not recognise, or a read error.
    fn read_eio(&mut self, e: io::Error) -> Result<Record> {
        let Ok(s) = self.get("read") else {
            return Err(self.fail("read", e));
        };
        if s.mt_gstat & GMT_EOD != 0 {
            return Ok(Record::EndOfData);
        }
        let Ok(here) = self.with_ew(mt_pos) else {
            return Err(self.fail("read", e));
        };
        if self.with_ew(|f| mt_op(f, MTEOM, 1)).is_err() {
            return Err(self.fail("read", e));
        }
        match self.with_ew(mt_pos) {
            Ok(end) if end == here => Ok(Record::EndOfData),
            Ok(end) => Err(self.fail(
                &format!("read at block {here} (the tape is now at its end of data, block {end})"),
                e,
            )),
            Err(_) => Err(self.fail("read", e)),
        }
    }
}

/// Open the node as `st` wants it (see the module docs).
fn open_node(path: &Path) -> Result<(File, bool)> {
    let open = |write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    let failed = |e: io::Error| {
        let what = if errno_is(&e, libc::EBUSY) {
            format!(
                "{}: open: in use (st allows one open at a time)",
                path.display()
            )
        } else {
            format!("{}: open", path.display())
        };
        Error::device(what, e)
    };
    let (file, read_only) = match open(true) {
        Ok(f) => (f, false),
        Err(e)
            if [libc::EACCES, libc::EROFS, libc::EPERM]
                .contains(&e.raw_os_error().unwrap_or(0)) =>
        {
            (open(false).map_err(failed)?, true)
        }
        Err(e) => return Err(failed(e)),
    };
    let flags = rustix::fs::fcntl_getfl(&file)
        .map_err(|e| Error::device(format!("{}: fcntl(F_GETFL)", path.display()), e.into()))?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| Error::device(format!("{}: fcntl(F_SETFL)", path.display()), e.into()))?;
    Ok((file, read_only))
}

impl Drive for ScsiDrive {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn status(&mut self) -> Result<DriveStatus> {
        let s = self.refresh()?;
        let online = self.online;
        Ok(DriveStatus {
            loaded: online,
            write_protected: online && (self.read_only || s.mt_gstat & GMT_WR_PROT != 0),
            file: (online && s.mt_fileno >= 0).then_some(s.mt_fileno as u32),
            at_start: online && s.mt_gstat & GMT_BOT != 0,
        })
    }

    fn rewind(&mut self) -> Result<()> {
        self.ready()?;
        self.positioned();
        self.op("rewind (MTREW)", MTREW, 1)
    }

    fn locate_file(&mut self, n: u32) -> Result<()> {
        if n > MAX_COUNT {
            return Err(Error::Invalid(format!(
                "{}: file {n}: too far",
                self.name()
            )));
        }
        self.rewind()?;
        if n == 0 {
            return Ok(());
        }
        match self.with_ew(|f| mt_op(f, MTFSF, n as c_int)) {
            Ok(()) => Ok(()),
            Err(e) if errno_is(&e, libc::EIO) => match self.get("status") {
                Ok(s) if s.mt_gstat & GMT_EOD != 0 => Err(Error::Format(format!(
                    "{}: there is no file {n}: the data ends after {} filemarks",
                    self.name(),
                    s.mt_fileno
                ))),
                _ => Err(self.fail(&format!("space over {n} filemarks (MTFSF)"), e)),
            },
            Err(e) => Err(self.fail(&format!("space over {n} filemarks (MTFSF)"), e)),
        }
    }

    fn to_end_of_data(&mut self) -> Result<u32> {
        self.ready()?;
        self.positioned();
        self.op("space to end of data (MTEOM)", MTEOM, 1)?;
        let s = self.get("status after MTEOM")?;
        u32::try_from(s.mt_fileno).map_err(|_| {
            self.fail(
                "space to end of data (MTEOM)",
                io::Error::other(
                    "the file number is unknown after MTEOM: the st option MT_ST_FAST_MTEOM is \
                     set for this drive; clear it",
                ),
            )
        })
    }

    fn write_block(&mut self, data: &[u8]) -> Result<Written> {
        if data.is_empty() {
            return Err(Error::Invalid(format!("{}: an empty block", self.name())));
        }
        if !self.online {
            self.ready()?;
        }
        if self.read_only {
            return Err(self.read_only_error("write"));
        }
        self.after_filemark = false;
        let result = match self.write_once(data) {
            // Refused, not written: early warning (or the end). `st` lets the next one
            // through.
            Err(e) if errno_is(&e, libc::ENOSPC) => {
                self.past_ew = true;
                self.write_once(data)
            }
            r => r,
        };
        match result {
            Ok(n) if n == data.len() => Ok(Written {
                early_warning: self.past_ew,
            }),
            // Only the end-of-medium path of `st_write` returns a partial count. The part
            // is on tape; writing the block again after it would hide that.
            Ok(n) => {
                tracing::warn!(
                    drive = %self.name(),
                    "only {n} of {} bytes of a block written: end of medium",
                    data.len()
                );
                Err(Error::EndOfMedium(self.name()))
            }
            Err(e) => Err(self.write_error("write", e)),
        }
    }

    fn write_filemarks(&mut self, n: u32) -> Result<Written> {
        if n > MAX_COUNT {
            return Err(Error::Invalid(format!("{}: {n} filemarks", self.name())));
        }
        if !self.online {
            self.ready()?;
        }
        if self.read_only {
            return Err(self.read_only_error("write filemarks"));
        }
        self.after_filemark = false;
        let what = format!("write {n} filemarks (MTWEOF)");
        match self.with_ew(|f| mt_op(f, MTWEOF, n as c_int)) {
            Ok(()) => Ok(Written {
                early_warning: self.past_ew,
            }),
            Err(e) => Err(self.write_error(&what, e)),
        }
    }

    fn read_block(&mut self, buf: &mut [u8]) -> Result<Record> {
        if buf.is_empty() {
            // `st` answers a read of 0 bytes with 0, which would read as a filemark.
            return Err(Error::Invalid(format!(
                "{}: an empty read buffer",
                self.name()
            )));
        }
        if !self.online {
            self.ready()?;
        }
        let r = loop {
            match self.fd().and_then(|mut f| f.read(buf)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match r {
            Ok(0) if self.after_filemark => Ok(Record::EndOfData),
            Ok(0) => {
                let s = self.get("status after a filemark")?;
                if s.mt_gstat & GMT_EOD != 0 {
                    Ok(Record::EndOfData)
                } else {
                    self.after_filemark = true;
                    Ok(Record::Filemark)
                }
            }
            Ok(n) => {
                self.after_filemark = false;
                Ok(Record::Block(n))
            }
            Err(e) if errno_is(&e, libc::ENOMEM) => {
                self.after_filemark = false;
                Err(Error::Format(format!(
                    "{}: a block larger than the {}-byte read buffer (skipped)",
                    self.name(),
                    buf.len()
                )))
            }
            Err(e) if errno_is(&e, libc::EINVAL) => Err(Error::Invalid(format!(
                "{}: read of {} bytes refused (outside the drive's block size limits): {e}",
                self.name(),
                buf.len()
            ))),
            Err(e) if errno_is(&e, libc::EIO) => self.read_eio(e),
            Err(e) => Err(self.fail("read", e)),
        }
    }

    fn unload(&mut self) -> Result<()> {
        self.ready()?;
        self.positioned();
        self.op("unload (MTOFFL)", MTOFFL, 1)?;
        self.online = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_and_requests_match_the_kernel() {
        assert_eq!(size_of::<MtOp>(), 8);
        assert_eq!(size_of::<MtPos>(), size_of::<c_long>());
        assert_eq!(
            size_of::<MtGet>(),
            5 * size_of::<c_long>() + 2 * size_of::<KernelDaddr>()
        );
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            assert_eq!(size_of::<MtGet>(), 48);
            assert_eq!(MTIOCTOP, 0x4008_6d01);
            assert_eq!(MTIOCGET, 0x8030_6d02);
            assert_eq!(MTIOCPOS, 0x8008_6d03);
        }
        // Another request of the same encoding, from <linux/fs.h>: FS_IOC_GETFLAGS is
        // _IOR('f', 1, long).
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_eq!(ioc(2, b'f', 1, size_of::<c_long>()), 0x8008_6601);
    }

    #[test]
    fn what_is_not_a_tape_device_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nst0");
        std::fs::write(&file, b"not a tape").unwrap();
        for path in [file.as_path(), Path::new("/dev/null")] {
            match ScsiDrive::open(path) {
                Err(Error::Invalid(m)) => {
                    assert!(m.contains(&path.display().to_string()), "{m}");
                    assert!(m.contains("not a tape device"), "{m}");
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let missing = dir.path().join("nst9");
        let e = ScsiDrive::open(&missing).unwrap_err();
        assert!(matches!(e, Error::Device { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }
}
