//! The file-backed virtual library: what the tests and the quick start write to, and a
//! stand-in for a real library anywhere a tape library is not at hand. Bacula's `vtape` and
//! Proxmox Backup Server's emulated drive are its models.
//!
//! # Layout (a directory)
//! - `library.json`: the library's shape (drives, slots, import/export slots), each tape's
//!   capacity and early-warning zone, the changer's load delay. Written once, at creation.
//! - `state.json`: what is where (slot → barcode, drive → barcode). Changed only under the
//!   library lock (`flock` on `lock`), written whole (temporary file, fsync, rename), so a
//!   crash leaves the old state or the new one.
//! - `tapes/BARCODE.tape`: one file per tape. A tape not in any slot or drive is *on the
//!   shelf* (exported); `import` puts it back.
//! - `drives/N.lock`: held (`flock`) by the process that uses drive `N`, so two processes
//!   never write one drive.
//!
//! # A tape file
//! A sequence of records, each an 8-byte header and its payload: `u32 length` (little-endian;
//! `0` = a filemark, no payload) and `u32 length ^ 0x4152554B` — the drive's own framing. A
//! header whose two halves disagree reads as a medium error (as a real drive reports a block
//! it cannot read); a record cut short by the end of the file reads as the end of data (a
//! short tape, never a panic). Writing at a position first cuts the file there: writing
//! erases everything after, as on tape. A block that would pass `capacity` is not written
//! ([`Error::EndOfMedium`]); once past `capacity − early_warning`, writes report early warning.
//! A filemark always fits (drives keep room for it). Filemarks flush the file to disk
//! (`fdatasync`): what was written before one is durable.
//!
//! A failure of the host file system under a tape file (a full file system, an I/O error) is
//! a *device* error, not the end of the medium: the writer takes it as a broken drive.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::barcode::{check_barcode, parse_barcodes};
use crate::drive::{
    Changer, Drive, DriveSlotStatus, DriveStatus, LibraryStatus, Record, SlotStatus, Written,
};
use crate::{Error, Result};

const HEADER: u64 = 8;
const CHECK: u32 = 0x4152_554B;
/// Start writing back dirty pages every this many bytes.
const WRITEBACK: u64 = 8 << 20;

/// Ask the kernel to start writing `len` bytes at `off` of `file` to disk, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); only a hint, so its failure is ignored.
fn start_writeback(file: &File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: `sync_file_range` only reads its integer arguments; the descriptor is valid for
    // the call (borrowed from `file`), and the call neither reads nor writes our memory.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// The largest block a virtual drive takes (as a real drive's maximum block size).
pub const MAX_BLOCK: usize = 16 << 20;

/// The shape of a virtual library (`library.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlibConfig {
    pub v: u32,
    pub drives: u32,
    /// Storage slots, numbered from 1.
    pub slots: u32,
    /// Import/export slots, numbered after the storage slots.
    #[serde(default)]
    pub import_export: u32,
    /// Bytes one tape holds (record headers included).
    pub capacity: u64,
    /// The early-warning zone before `capacity`.
    pub early_warning: u64,
    /// How long the changer takes to load a tape.
    #[serde(default)]
    pub load_delay_ms: u64,
}

impl VlibConfig {
    /// A shape a library can have (checked at creation and every time it is opened: the file
    /// may have been edited).
    pub fn check(&self) -> Result<()> {
        if self.drives == 0
            || self.slots == 0
            || self.drives > 64
            || self.slots + self.import_export > 10_000
        {
            return Err(Error::Invalid(
                "a library has 1 to 64 drives and 1 to 10000 slots".into(),
            ));
        }
        if self.early_warning >= self.capacity {
            return Err(Error::Invalid(format!(
                "early warning ({} bytes) must be less than the capacity ({} bytes)",
                self.early_warning, self.capacity
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    slots: Vec<Option<String>>,
    drives: Vec<Option<(String, Option<u32>)>>,
}

/// A virtual library (see the module docs).
#[derive(Debug, Clone)]
pub struct VirtualLibrary {
    dir: PathBuf,
    config: VlibConfig,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::device(what, e)
}

impl VirtualLibrary {
    /// Create a library in `dir` (which must not exist or be empty) with blank tapes of these
    /// barcodes in the first slots.
    pub fn create(dir: &Path, config: VlibConfig, barcodes: &[String]) -> Result<VirtualLibrary> {
        config.check()?;
        if barcodes.len() > config.slots as usize {
            return Err(Error::Invalid(format!(
                "{} tapes do not fit in {} slots",
                barcodes.len(),
                config.slots
            )));
        }
        for b in barcodes {
            check_barcode(b)?;
        }
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(io(format!("{}", dir.display())))?
                .next()
                .is_some()
        {
            return Err(Error::Invalid(format!(
                "{} exists and is not empty",
                dir.display()
            )));
        }
        for sub in ["tapes", "drives"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(format!("{}", dir.display())))?;
        }
        let lib = VirtualLibrary {
            dir: dir.to_path_buf(),
            config,
        };
        write_json(&dir.join("library.json"), &lib.config)?;
        let mut state = State {
            slots: vec![None; (lib.config.slots + lib.config.import_export) as usize],
            drives: vec![None; lib.config.drives as usize],
        };
        for (i, b) in barcodes.iter().enumerate() {
            lib.new_tape(b)?;
            state.slots[i] = Some(b.clone());
        }
        write_json(&dir.join("state.json"), &state)?;
        Ok(lib)
    }

    pub fn open(dir: &Path) -> Result<VirtualLibrary> {
        let path = dir.join("library.json");
        let text = std::fs::read(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::Invalid(format!("{}: not a virtual library", dir.display()))
            } else {
                Error::device(path.display().to_string(), e)
            }
        })?;
        let config: VlibConfig = serde_json::from_slice(&text)
            .map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
        if config.v != 1 {
            return Err(Error::Format(format!(
                "{}: version {} (this kura reads 1)",
                path.display(),
                config.v
            )));
        }
        config
            .check()
            .map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
        Ok(VirtualLibrary {
            dir: dir.to_path_buf(),
            config,
        })
    }

    pub fn config(&self) -> &VlibConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the tape with this barcode.
    pub fn tape_path(&self, barcode: &str) -> PathBuf {
        self.dir.join("tapes").join(format!("{barcode}.tape"))
    }

    fn new_tape(&self, barcode: &str) -> Result<()> {
        let path = self.tape_path(barcode);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(path.display().to_string()))?;
        Ok(())
    }

    fn locked<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let lock_path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(lock_path.display().to_string()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::device(lock_path.display().to_string(), e.into()))?;
        let path = self.dir.join("state.json");
        let bytes = std::fs::read(&path).map_err(io(path.display().to_string()))?;
        let mut state: State = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
        // The state names files: a barcode that is not a plain name must never become a path.
        let shape_ok = state.slots.len()
            == (self.config.slots + self.config.import_export) as usize
            && state.drives.len() == self.config.drives as usize;
        let names_ok = state
            .slots
            .iter()
            .flatten()
            .chain(state.drives.iter().flatten().map(|(b, _)| b))
            .all(|b| check_barcode(b).is_ok());
        if !shape_ok || !names_ok {
            return Err(Error::Format(format!(
                "{}: does not match the library's shape or names a tape that is not a barcode",
                path.display()
            )));
        }
        let before = serde_json::to_vec(&state).unwrap_or_default();
        let out = f(&mut state)?;
        if serde_json::to_vec(&state).unwrap_or_default() != before {
            write_json(&path, &state)?;
        }
        Ok(out)
    }

    /// Put a tape into the first empty slot (import/export slots last): one from the shelf,
    /// or a new blank one when no tape of that barcode exists.
    pub fn import(&self, barcode: &str) -> Result<u32> {
        check_barcode(barcode)?;
        self.locked(|st| {
            if st.slots.iter().flatten().any(|b| b == barcode)
                || st.drives.iter().flatten().any(|(b, _)| b == barcode)
            {
                return Err(Error::Invalid(format!(
                    "{barcode} is already in the library"
                )));
            }
            let Some(i) = st.slots.iter().position(Option::is_none) else {
                return Err(Error::Invalid("no empty slot".into()));
            };
            if !self.tape_path(barcode).exists() {
                self.new_tape(barcode)?;
            }
            st.slots[i] = Some(barcode.to_string());
            Ok(i as u32 + 1)
        })
    }

    /// Take a tape out of its slot onto the shelf.
    pub fn export(&self, barcode: &str) -> Result<()> {
        self.locked(|st| {
            if st.drives.iter().flatten().any(|(b, _)| b == barcode) {
                return Err(Error::Invalid(format!(
                    "{barcode} is in a drive; unload it first"
                )));
            }
            let Some(slot) = st.slots.iter_mut().find(|s| s.as_deref() == Some(barcode)) else {
                return Err(Error::Invalid(format!("{barcode} is not in the library")));
            };
            *slot = None;
            Ok(())
        })
    }

    /// Tapes on the shelf (known to the library, in no slot or drive).
    pub fn shelf(&self) -> Result<Vec<String>> {
        let status = self.changer().status()?;
        let inside: Vec<&str> = status
            .slots
            .iter()
            .filter_map(|s| s.barcode.as_deref())
            .chain(status.drives.iter().filter_map(|d| d.barcode.as_deref()))
            .collect();
        let dir = self.dir.join("tapes");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(dir.display().to_string()))? {
            let e = e.map_err(io(dir.display().to_string()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(b) = name.strip_suffix(".tape")
                && !inside.contains(&b)
            {
                out.push(b.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn changer(&self) -> VirtualChanger {
        VirtualChanger { lib: self.clone() }
    }

    /// Open drive `n` for this process alone (refused while another process has it).
    pub fn drive(&self, n: u32) -> Result<VirtualDrive> {
        if n >= self.config.drives {
            return Err(Error::Invalid(format!(
                "drive {n}: the library has drives 0 to {}",
                self.config.drives.saturating_sub(1)
            )));
        }
        let path = self.dir.join("drives").join(format!("{n}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(path.display().to_string()))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(Error::Refused(format!(
                "{}: drive {n} is in use by another process",
                self.dir.display()
            )));
        }
        Ok(VirtualDrive {
            lib: self.clone(),
            n,
            _lock: lock,
            tape: None,
            pos: 0,
            file_no: 0,
            cut_pending: true,
            written_back: 0,
        })
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
    let mut f = File::create(&tmp).map_err(io(tmp.display().to_string()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(tmp.display().to_string()))?;
    std::fs::rename(&tmp, path).map_err(io(path.display().to_string()))?;
    Ok(())
}

/// The virtual library's robot.
pub struct VirtualChanger {
    lib: VirtualLibrary,
}

impl Changer for VirtualChanger {
    fn status(&mut self) -> Result<LibraryStatus> {
        let storage = self.lib.config.slots;
        self.lib.locked(|st| {
            Ok(LibraryStatus {
                drives: st
                    .drives
                    .iter()
                    .enumerate()
                    .map(|(i, d)| DriveSlotStatus {
                        drive: i as u32,
                        barcode: d.as_ref().map(|(b, _)| b.clone()),
                        source_slot: d.as_ref().and_then(|(_, s)| *s),
                    })
                    .collect(),
                slots: st
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, b)| SlotStatus {
                        slot: i as u32 + 1,
                        barcode: b.clone(),
                        import_export: i as u32 >= storage,
                    })
                    .collect(),
            })
        })
    }

    fn load(&mut self, slot: u32, drive: u32) -> Result<()> {
        let delay = Duration::from_millis(self.lib.config.load_delay_ms);
        self.lib.locked(|st| {
            let d = st
                .drives
                .get(drive as usize)
                .ok_or_else(|| Error::Invalid(format!("no drive {drive}")))?;
            if let Some((b, _)) = d {
                return Err(Error::Changer {
                    what: format!("load slot {slot} into drive {drive}"),
                    reason: format!("drive {drive} holds {b}"),
                });
            }
            let s = slot
                .checked_sub(1)
                .and_then(|i| st.slots.get_mut(i as usize))
                .ok_or_else(|| Error::Invalid(format!("no slot {slot}")))?;
            let Some(b) = s.take() else {
                return Err(Error::Changer {
                    what: format!("load slot {slot} into drive {drive}"),
                    reason: format!("slot {slot} is empty"),
                });
            };
            st.drives[drive as usize] = Some((b, Some(slot)));
            Ok(())
        })?;
        std::thread::sleep(delay);
        Ok(())
    }

    fn unload(&mut self, drive: u32, slot: u32) -> Result<()> {
        self.lib.locked(|st| {
            let what = || format!("unload drive {drive} into slot {slot}");
            let s = slot
                .checked_sub(1)
                .and_then(|i| st.slots.get(i as usize))
                .ok_or_else(|| Error::Invalid(format!("no slot {slot}")))?;
            if let Some(b) = s {
                return Err(Error::Changer {
                    what: what(),
                    reason: format!("slot {slot} holds {b}"),
                });
            }
            let Some((b, _)) = st.drives.get_mut(drive as usize).and_then(Option::take) else {
                return Err(Error::Changer {
                    what: what(),
                    reason: format!("drive {drive} is empty"),
                });
            };
            st.slots[slot as usize - 1] = Some(b);
            Ok(())
        })
    }
}

/// One drive of a virtual library (see the module docs for the tape file format).
pub struct VirtualDrive {
    lib: VirtualLibrary,
    n: u32,
    _lock: File,
    /// The tape open now: barcode, file, opened read-only.
    tape: Option<(String, File, bool)>,
    pos: u64,
    file_no: u32,
    /// The next write cuts the file at `pos` first (writing erases what follows).
    cut_pending: bool,
    /// Up to where writeback was started.
    written_back: u64,
}

impl VirtualDrive {
    fn what(&self, op: &str) -> String {
        match &self.tape {
            Some((b, _, _)) => format!("{} drive {} ({b}): {op}", self.lib.dir.display(), self.n),
            None => format!("{} drive {}: {op}", self.lib.dir.display(), self.n),
        }
    }

    /// The tape open now; opened from the library's state when none is.
    fn tape(&mut self) -> Result<&mut (String, File, bool)> {
        if self.tape.is_none() {
            self.check_loaded()?;
        }
        self.tape
            .as_mut()
            .ok_or_else(|| Error::NoTape(String::new()))
    }

    /// Ask the library what is in the drive, and open it (again, if the changer swapped
    /// it). Positioning and status do this; blocks are read and written without it.
    fn check_loaded(&mut self) -> Result<&mut (String, File, bool)> {
        let status = self.lib.changer().status()?;
        let loaded = status
            .drives
            .get(self.n as usize)
            .and_then(|d| d.barcode.clone());
        let Some(barcode) = loaded else {
            self.tape = None;
            return Err(Error::NoTape(self.what("")));
        };
        if self.tape.as_ref().is_none_or(|(b, _, _)| *b != barcode) {
            let path = self.lib.tape_path(&barcode);
            let (file, ro) = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => (f, false),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    (
                        File::open(&path).map_err(io(path.display().to_string()))?,
                        true,
                    )
                }
                Err(e) => return Err(Error::device(path.display().to_string(), e)),
            };
            self.tape = Some((barcode, file, ro));
            self.pos = 0;
            self.file_no = 0;
            self.cut_pending = true;
        }
        self.tape
            .as_mut()
            .ok_or_else(|| Error::NoTape(String::new()))
    }

    /// The header at `pos`: `None` at the end of data (or a header cut short).
    fn header_at(&mut self, pos: u64) -> Result<Option<u32>> {
        let what = self.what("read");
        let (_, file, _) = self.tape()?;
        let mut h = [0u8; HEADER as usize];
        match read_full_at(file, &mut h, pos) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => return Err(Error::device(what, e)),
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let check = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len ^ CHECK != check || len as usize > MAX_BLOCK {
            return Err(Error::device(
                what,
                std::io::Error::other(format!("medium error: unreadable record at byte {pos}")),
            ));
        }
        Ok(Some(len))
    }

    fn put(&mut self, len: u32, data: &[u8]) -> Result<Written> {
        let capacity = self.lib.config.capacity;
        let ew = capacity.saturating_sub(self.lib.config.early_warning);
        let what = self.what("write");
        let pos = self.pos;
        let cut = self.cut_pending;
        let mut written_back = if cut { pos } else { self.written_back.min(pos) };
        let (_, file, ro) = self.tape()?;
        if *ro {
            return Err(Error::device(
                what,
                std::io::Error::new(ErrorKind::PermissionDenied, "the tape is write-protected"),
            ));
        }
        let total = HEADER + data.len() as u64;
        if len != 0 && pos + total > capacity {
            return Err(Error::EndOfMedium(what));
        }
        if cut {
            file.set_len(pos).map_err(io(what.clone()))?;
        }
        let mut head = [0u8; HEADER as usize];
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..].copy_from_slice(&(len ^ CHECK).to_le_bytes());
        file.write_all_at(&head, pos)
            .and_then(|()| file.write_all_at(data, pos + HEADER))
            .map_err(io(what))?;
        let end = pos + total;
        // Start writing back what accumulated, without waiting: the flush at the next
        // filemark then has little left to do, and the disk streams like a drive.
        if end - written_back >= WRITEBACK {
            start_writeback(file, written_back, end - written_back);
            written_back = end;
        }
        self.written_back = written_back;
        self.cut_pending = false;
        self.pos = end;
        Ok(Written {
            early_warning: self.pos >= ew,
        })
    }
}

/// Read all of `buf` at `pos`; `false` when the file ends first.
fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Drive for VirtualDrive {
    fn name(&self) -> String {
        format!("{} drive {}", self.lib.dir.display(), self.n)
    }

    fn status(&mut self) -> Result<DriveStatus> {
        match self.check_loaded() {
            Ok((_, _, ro)) => {
                let write_protected = *ro;
                Ok(DriveStatus {
                    loaded: true,
                    write_protected,
                    file: Some(self.file_no),
                    at_start: self.pos == 0,
                })
            }
            Err(Error::NoTape(_)) => Ok(DriveStatus::default()),
            Err(e) => Err(e),
        }
    }

    fn rewind(&mut self) -> Result<()> {
        self.check_loaded()?;
        self.pos = 0;
        self.file_no = 0;
        self.cut_pending = true;
        Ok(())
    }

    fn locate_file(&mut self, n: u32) -> Result<()> {
        self.rewind()?;
        while self.file_no < n {
            match self.header_at(self.pos)? {
                None => {
                    return Err(Error::Format(format!(
                        "{}: the tape has {} files; file {n} does not exist",
                        self.what("locate"),
                        self.file_no
                    )));
                }
                Some(0) => {
                    self.file_no += 1;
                    self.pos += HEADER;
                }
                Some(len) => self.pos += HEADER + len as u64,
            }
        }
        Ok(())
    }

    fn to_end_of_data(&mut self) -> Result<u32> {
        self.rewind()?;
        loop {
            match self.header_at(self.pos)? {
                None => return Ok(self.file_no),
                Some(0) => {
                    self.file_no += 1;
                    self.pos += HEADER;
                }
                Some(len) => self.pos += HEADER + len as u64,
            }
        }
    }

    fn write_block(&mut self, data: &[u8]) -> Result<Written> {
        if data.is_empty() || data.len() > MAX_BLOCK {
            return Err(Error::Invalid(format!(
                "a block is 1 to {MAX_BLOCK} bytes, not {}",
                data.len()
            )));
        }
        self.put(data.len() as u32, data)
    }

    fn write_filemarks(&mut self, n: u32) -> Result<Written> {
        let mut w = Written::default();
        for _ in 0..n {
            w = self.put(0, &[])?;
            self.file_no += 1;
        }
        let what = self.what("sync");
        let (_, file, ro) = self.tape()?;
        if !*ro {
            file.sync_data().map_err(io(what))?;
        }
        if n == 0 {
            w.early_warning = self.pos
                >= self
                    .lib
                    .config
                    .capacity
                    .saturating_sub(self.lib.config.early_warning);
        }
        Ok(w)
    }

    fn read_block(&mut self, buf: &mut [u8]) -> Result<Record> {
        let Some(len) = self.header_at(self.pos)? else {
            return Ok(Record::EndOfData);
        };
        self.cut_pending = true;
        if len == 0 {
            self.pos += HEADER;
            self.file_no += 1;
            return Ok(Record::Filemark);
        }
        let len = len as usize;
        if buf.len() < len {
            return Err(Error::Format(format!(
                "{}: a block of {len} bytes does not fit a buffer of {}",
                self.what("read"),
                buf.len()
            )));
        }
        let what = self.what("read");
        let pos = self.pos;
        let (_, file, _) = self.tape()?;
        match read_full_at(file, &mut buf[..len], pos + HEADER) {
            Ok(true) => {}
            Ok(false) => return Ok(Record::EndOfData),
            Err(e) => return Err(Error::device(what, e)),
        }
        self.pos += HEADER + len as u64;
        Ok(Record::Block(len))
    }

    fn unload(&mut self) -> Result<()> {
        self.tape = None;
        self.pos = 0;
        self.file_no = 0;
        self.cut_pending = true;
        Ok(())
    }
}
