//! Writing a media set: the tape changes, the mount waits and the drive fail-over, around a
//! stream of objects (seed 004's storage device; PBS's and Bareos's tape writers).
//!
//! # What a session guarantees
//! - **Only the right tape is written.** Before a tape joins the set its label (file 0) is
//!   read and must name the tape the host chose, of the set's pool; a tape that is blank,
//!   labelled otherwise, or already in another media set is refused with the reason (the
//!   host records it) and never written.
//! - **Acknowledged means on the tape.** Objects go into archives; an archive is
//!   acknowledged ([`MediaHost::acknowledged`]) only after its filemark, which flushes the
//!   drive. Until then its pieces are kept, and on a drive error or the end of the medium
//!   they are written again on the next tape. Nothing acknowledged is written twice.
//! - **Spanning.** At the early warning the current block is finished, the archive closed
//!   (flagged last block, filemark), the tape unloaded to its slot, and the next tape loaded
//!   and verified; the object goes on from the byte it had reached.
//! - **Fail-over.** A drive error (I/O error, a tape file that cannot be written, no answer)
//!   fails that drive for the session; the host is told, the tape in it is left as it is
//!   (its acknowledged files stay valid), and the rest continues on a new tape in another
//!   drive.
//! - **Mount waits are bounded.** With no usable tape in the library, the host gets a mount
//!   request once; the session polls for one until `mount_timeout`, then ends with
//!   [`Error::MountTimeout`] and the reason.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::archive::ArchiveWriter;
use crate::drive::{Changer, Drive, LibraryStatus};
use crate::format::EntryKind;
use crate::label::{self, SetLabel};
use crate::library::Library;
use crate::{Error, Result};

/// How a session writes.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Tape block size, header included.
    pub block_size: usize,
    /// An archive is closed (and acknowledged) once it holds this many bytes.
    pub archive_size: u64,
    /// How long to wait for an operator to make a writable tape available.
    pub mount_timeout: Duration,
    /// How often to look again while waiting.
    pub poll: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            block_size: crate::format::DEFAULT_BLOCK,
            archive_size: 512 << 20,
            mount_timeout: Duration::from_secs(3600),
            poll: Duration::from_secs(1),
        }
    }
}

/// A tape the host offers for the set, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub label: String,
    /// `true`: the set's last tape, appended to after its end of data; `false`: a writable
    /// tape joining the set as tape `seq`.
    pub append: bool,
    pub seq: u32,
    /// A tape still carrying the label of this expired media set may be written over.
    pub overwrite_set: Option<String>,
}

/// A piece of an object in an acknowledged archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub kind: EntryKind,
    pub id: [u8; 32],
    pub offset: u64,
    pub len: u64,
    pub total: u64,
}

/// An archive now durable on a tape.
#[derive(Debug)]
pub struct Ack<'a> {
    pub label: &'a str,
    pub seq: u32,
    pub file: u32,
    pub pieces: &'a [Piece],
}

/// What the session asks of its owner, which keeps the media catalog.
pub trait MediaHost {
    /// Tapes that may be written next, best first.
    fn candidates(&mut self) -> Result<Vec<Candidate>>;
    /// A tape was refused (never written): record why.
    fn refused(&mut self, label: &str, reason: &str) -> Result<()>;
    /// No usable tape: tell an operator (once per wait).
    fn mount_request(&mut self, message: &str) -> Result<()>;
    /// The wait is over (a tape came).
    fn mount_satisfied(&mut self) -> Result<()>;
    /// A tape joined the set as tape `seq`.
    fn joined(&mut self, label: &str, seq: u32) -> Result<()>;
    /// A tape is full.
    fn full(&mut self, label: &str) -> Result<()>;
    /// A drive failed while writing `label`.
    fn drive_failed(&mut self, drive: &str, label: &str, reason: &str) -> Result<()>;
    fn acknowledged(&mut self, ack: &Ack) -> Result<()>;
    /// Give up (checked between objects and while waiting).
    fn cancelled(&self) -> bool {
        false
    }
}

/// What a session did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionStats {
    pub bytes: u64,
    pub archives: u64,
    pub tapes: Vec<String>,
    /// Tape changes (unload, load, label check), and the time they took (waits for an
    /// operator not counted).
    pub changes: u32,
    pub change_time: Duration,
    pub failed_drives: Vec<String>,
    pub mount_waits: u32,
}

struct DriveSlot {
    n: u32,
    drive: Option<Box<dyn Drive>>,
    failed: bool,
}

struct Current {
    drive: usize,
    label: String,
    seq: u32,
    file: u32,
    /// The file the first archive of this mount went to.
    first_file: u32,
}

#[derive(Clone)]
struct Pending {
    kind: EntryKind,
    id: [u8; 32],
    data: Arc<Vec<u8>>,
    offset: u64,
    len: u64,
}

/// Writes one session of a media set (see the module docs).
pub struct Session<'h> {
    lib: Library,
    changer: Box<dyn Changer>,
    drives: Vec<DriveSlot>,
    host: &'h mut dyn MediaHost,
    opts: SessionOptions,
    set: SetLabel,
    cur: Option<Current>,
    arch: Option<(ArchiveWriter, Vec<Pending>)>,
    excluded: HashSet<String>,
    stats: SessionStats,
}

impl<'h> Session<'h> {
    /// `set` names the media set (its `seq` is ignored: each tape gets its own).
    pub fn new(
        lib: &Library,
        host: &'h mut dyn MediaHost,
        opts: SessionOptions,
        set: SetLabel,
    ) -> Result<Session<'h>> {
        let drives = (0..lib.drive_count())
            .map(|n| DriveSlot {
                n,
                drive: None,
                failed: false,
            })
            .collect();
        Ok(Session {
            changer: lib.changer()?,
            lib: lib.clone(),
            drives,
            host,
            opts,
            set,
            cur: None,
            arch: None,
            excluded: HashSet::new(),
            stats: SessionStats::default(),
        })
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Write a whole object, spanning tapes as needed.
    pub fn write_object(
        &mut self,
        kind: EntryKind,
        id: [u8; 32],
        data: Arc<Vec<u8>>,
    ) -> Result<()> {
        if self.host.cancelled() {
            return Err(Error::Cancelled);
        }
        let len = data.len() as u64;
        self.write_piece(Pending {
            kind,
            id,
            data,
            offset: 0,
            len,
        })
    }

    /// Write an object from byte `from` on (its bytes before are on the set already).
    pub fn write_object_from(
        &mut self,
        kind: EntryKind,
        id: [u8; 32],
        data: Arc<Vec<u8>>,
        from: u64,
    ) -> Result<()> {
        if self.host.cancelled() {
            return Err(Error::Cancelled);
        }
        let len = (data.len() as u64).saturating_sub(from);
        if len == 0 {
            return Ok(());
        }
        self.write_piece(Pending {
            kind,
            id,
            data,
            offset: from,
            len,
        })
    }

    /// Write an object as an archive of its own (closing the one open before).
    pub fn write_alone(&mut self, kind: EntryKind, id: [u8; 32], data: Arc<Vec<u8>>) -> Result<()> {
        self.close_archive()?;
        self.write_object(kind, id, data)?;
        self.close_archive()
    }

    fn write_piece(&mut self, mut p: Pending) -> Result<()> {
        loop {
            self.ensure_archive()?;
            let (Some(cur), Some((aw, pending))) = (&self.cur, &mut self.arch) else {
                return Err(Error::Invalid("no archive open".into()));
            };
            let Some(drive) = self.drives[cur.drive].drive.as_deref_mut() else {
                return Err(Error::Invalid("no drive open".into()));
            };
            let total = p.data.len() as u64;
            let bytes = &p.data[p.offset as usize..(p.offset + p.len) as usize];
            match aw.write_entry(drive, p.kind, p.id, p.offset, total, bytes) {
                Ok(n) => {
                    let n = n as u64;
                    pending.push(Pending {
                        len: n,
                        ..p.clone()
                    });
                    self.stats.bytes += n;
                    if n < p.len {
                        // The early warning: close here, go on from this byte on the next tape.
                        self.close_archive()?;
                        p.offset += n;
                        p.len -= n;
                        continue;
                    }
                    if aw.bytes() >= self.opts.archive_size {
                        self.close_archive()?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    let mut pending = self.arch.take().map(|(_, p)| p).unwrap_or_default();
                    self.lose_tape(e)?;
                    pending.push(p);
                    return self.replay(pending);
                }
            }
        }
    }

    /// Write again what an archive that did not reach its filemark held.
    fn replay(&mut self, pending: Vec<Pending>) -> Result<()> {
        for p in pending {
            self.write_piece(p)?;
        }
        Ok(())
    }

    /// Close the open archive: filemark, acknowledge its pieces; change tapes at the early
    /// warning.
    pub fn close_archive(&mut self) -> Result<()> {
        let Some((aw, pending)) = self.arch.take() else {
            return Ok(());
        };
        let Some(cur) = &mut self.cur else {
            return Err(Error::Invalid("an archive with no tape".into()));
        };
        let Some(drive) = self.drives[cur.drive].drive.as_deref_mut() else {
            return Err(Error::Invalid("no drive open".into()));
        };
        match aw.finish(drive) {
            Ok(ew) => {
                let pieces: Vec<Piece> = pending
                    .iter()
                    .map(|p| Piece {
                        kind: p.kind,
                        id: p.id,
                        offset: p.offset,
                        len: p.len,
                        total: p.data.len() as u64,
                    })
                    .collect();
                self.host.acknowledged(&Ack {
                    label: &cur.label,
                    seq: cur.seq,
                    file: cur.file,
                    pieces: &pieces,
                })?;
                cur.file += 1;
                self.stats.archives += 1;
                if ew {
                    let label = cur.label.clone();
                    self.host.full(&label)?;
                    self.put_away()?;
                }
                Ok(())
            }
            Err(e) => {
                self.lose_tape(e)?;
                self.replay(pending)?;
                // The replayed pieces are in an archive on the next tape: close that too, so
                // a caller that asked for a close gets everything acknowledged.
                self.close_archive()
            }
        }
    }

    /// The tape in use can take no more: the end of the medium (it is full) or a drive
    /// error (the drive is failed for this session). Any other error ends the session.
    fn lose_tape(&mut self, e: Error) -> Result<()> {
        let Some(cur) = self.cur.take() else {
            return Err(e);
        };
        match e {
            Error::EndOfMedium(what) if cur.file == cur.first_file => {
                // Not one archive fitted before the end: the early-warning zone is smaller than
                // what is written after the warning (a block). Every tape would go the same way.
                self.cur = Some(cur);
                Err(Error::Invalid(format!(
                    "{what}: the tape ended before its early warning let an archive close; the \
                     early-warning zone must be larger than the block size ({} bytes)",
                    self.opts.block_size
                )))
            }
            Error::EndOfMedium(_) => {
                // End the cut archive where it stopped (drives keep room for a filemark); it
                // has no flagged last block, so readers know it as unfinished.
                if let Some(d) = self.drives[cur.drive].drive.as_deref_mut() {
                    let _ = d.write_filemarks(1);
                }
                self.host.full(&cur.label)?;
                self.cur = Some(cur);
                self.put_away()
            }
            e if e.is_drive_fault() => {
                let slot = &mut self.drives[cur.drive];
                let name = slot
                    .drive
                    .as_ref()
                    .map(|d| d.name())
                    .unwrap_or_else(|| format!("drive {}", slot.n));
                slot.failed = true;
                if let Some(d) = slot.drive.as_deref_mut() {
                    let _ = d.unload();
                }
                slot.drive = None;
                self.excluded.insert(cur.label.clone());
                self.stats.failed_drives.push(name.clone());
                self.host.drive_failed(&name, &cur.label, &e.to_string())?;
                tracing::warn!(drive = %name, tape = %cur.label, error = %e, "drive failed; going on in another drive");
                // The tape stays in the failed drive: a changer may not be able to move it.
                Ok(())
            }
            e => Err(e),
        }
    }

    /// Unload the current tape back to a slot (counted in the change time: each tape
    /// mounted is unloaded once).
    fn put_away(&mut self) -> Result<()> {
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let r = self.unload_current(cur);
        self.stats.change_time += started.elapsed();
        r
    }

    fn unload_current(&mut self, cur: Current) -> Result<()> {
        self.excluded.insert(cur.label.clone());
        let slot = &mut self.drives[cur.drive];
        if let Some(d) = slot.drive.as_deref_mut() {
            d.unload()?;
        }
        let n = slot.n;
        let status = self.changer.status()?;
        unload_to_slot(self.changer.as_mut(), &status, n)
    }

    fn ensure_archive(&mut self) -> Result<()> {
        if self.cur.is_none() {
            self.mount()?;
        }
        if self.arch.is_none() {
            self.arch = Some((ArchiveWriter::begin(self.opts.block_size)?, Vec::new()));
        }
        Ok(())
    }

    fn working_drive(&mut self, prefer: Option<u32>) -> Option<usize> {
        let ok = |s: &DriveSlot| !s.failed;
        if let Some(p) = prefer
            && let Some(i) = self.drives.iter().position(|s| s.n == p && ok(s))
        {
            return Some(i);
        }
        self.drives.iter().position(ok)
    }

    /// Get a verified tape into a working drive, waiting for one up to the mount timeout.
    fn mount(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.opts.mount_timeout;
        let mut asked = false;
        // Time spent waiting for an operator: not part of a tape change's cost.
        let mut waited = Duration::ZERO;
        loop {
            if self.host.cancelled() {
                return Err(Error::Cancelled);
            }
            if self.drives.iter().all(|d| d.failed) {
                return Err(Error::NoDrive(format!(
                    "no working drive left in the library ({} failed)",
                    self.stats.failed_drives.join(", ")
                )));
            }
            let status = self.changer.status()?;
            let mut reasons = Vec::new();
            for c in self.host.candidates()? {
                if self.excluded.contains(&c.label) {
                    continue;
                }
                if status.slot_of(&c.label).is_none() && status.drive_of(&c.label).is_none() {
                    reasons.push(format!("{} is not in the library", c.label));
                    continue;
                }
                match self.try_tape(&c) {
                    Ok(true) => {
                        if asked {
                            self.host.mount_satisfied()?;
                        }
                        self.stats.changes += 1;
                        self.stats.change_time += started.elapsed().saturating_sub(waited);
                        return Ok(());
                    }
                    Ok(false) => {}
                    Err(e) if e.is_drive_fault() => {
                        // try_tape failed the drive; look again with what is left.
                        reasons.push(e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::MountTimeout(format!(
                    "no writable tape of pool {} came within {:.0} s{}",
                    self.set.pool,
                    self.opts.mount_timeout.as_secs_f64(),
                    if reasons.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", reasons.join("; "))
                    }
                )));
            }
            if !asked {
                asked = true;
                self.stats.mount_waits += 1;
                let msg = format!(
                    "please insert a writable tape of pool {} (media set {}) into the library{}",
                    self.set.pool,
                    short(&self.set.set),
                    if reasons.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", reasons.join("; "))
                    }
                );
                self.host.mount_request(&msg)?;
            }
            let nap = self
                .opts
                .poll
                .min(deadline.saturating_duration_since(Instant::now()));
            std::thread::sleep(nap);
            waited += nap;
        }
    }

    /// Load and verify one candidate; `Ok(false)` when it was refused (it is put back in
    /// its slot then).
    fn try_tape(&mut self, c: &Candidate) -> Result<bool> {
        let status = &self.changer.status()?;
        let in_drive = status.drive_of(&c.label);
        let Some(di) = self.working_drive(in_drive.or(self.cur.as_ref().map(|x| x.drive as u32)))
        else {
            return Err(Error::NoDrive("no working drive".into()));
        };
        let n = self.drives[di].n;
        if in_drive != Some(n) {
            if in_drive.is_some() {
                // In another drive (a failed one, or another process's): not ours to take.
                return Ok(false);
            }
            if status
                .drives
                .get(n as usize)
                .is_some_and(|d| d.barcode.is_some())
            {
                if let Some(d) = self.drives[di].drive.as_deref_mut() {
                    d.unload()?;
                }
                unload_to_slot(self.changer.as_mut(), status, n)?;
            }
            let Some(slot) = status.slot_of(&c.label) else {
                return Ok(false);
            };
            self.changer.load(slot, n)?;
        }
        if self.drives[di].drive.is_none() {
            self.drives[di].drive = Some(self.lib.drive(n)?);
        }
        match self.verify_and_position(di, c) {
            Ok(Some(file)) => {
                self.cur = Some(Current {
                    drive: di,
                    label: c.label.clone(),
                    seq: c.seq,
                    file,
                    first_file: file,
                });
                if !self.stats.tapes.contains(&c.label) {
                    self.stats.tapes.push(c.label.clone());
                }
                if !c.append {
                    self.host.joined(&c.label, c.seq)?;
                }
                Ok(true)
            }
            Ok(None) => {
                // Refused: back to its slot, so the drive is free for the next candidate.
                if let Some(d) = self.drives[di].drive.as_deref_mut() {
                    d.unload()?;
                }
                let status = self.changer.status()?;
                unload_to_slot(self.changer.as_mut(), &status, n)?;
                Ok(false)
            }
            Err(e) if e.is_drive_fault() => {
                let slot = &mut self.drives[di];
                slot.failed = true;
                let name = slot.drive.as_ref().map(|d| d.name()).unwrap_or_default();
                slot.drive = None;
                self.stats.failed_drives.push(name.clone());
                self.excluded.insert(c.label.clone());
                self.host.drive_failed(&name, &c.label, &e.to_string())?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Check the tape's label (and set label when appending); join it to the set or find
    /// its end. `Some(next file)` when it may be written; `None` when refused.
    fn verify_and_position(&mut self, di: usize, c: &Candidate) -> Result<Option<u32>> {
        let Some(drive) = self.drives[di].drive.as_deref_mut() else {
            return Ok(None);
        };
        let refuse = |host: &mut dyn MediaHost, why: String| -> Result<Option<u32>> {
            tracing::warn!(tape = %c.label, "{why}");
            host.refused(&c.label, &why)?;
            Ok(None)
        };
        if drive.status()?.write_protected {
            self.excluded.insert(c.label.clone());
            return refuse(self.host, format!("tape {} is write-protected", c.label));
        }
        let found = match label::read_label(drive) {
            Ok(l) => l,
            Err(Error::Format(why)) => {
                self.excluded.insert(c.label.clone());
                return refuse(
                    self.host,
                    format!("tape {}: its label cannot be read ({why})", c.label),
                );
            }
            Err(e) => return Err(e),
        };
        let Some(found) = found else {
            self.excluded.insert(c.label.clone());
            return refuse(
                self.host,
                format!(
                    "tape {} is not labelled; label it first (kura media label)",
                    c.label
                ),
            );
        };
        if found.label != c.label {
            self.excluded.insert(c.label.clone());
            return refuse(
                self.host,
                format!(
                    "the tape with barcode {} is labelled {}",
                    c.label, found.label
                ),
            );
        }
        if found.pool != self.set.pool {
            self.excluded.insert(c.label.clone());
            return refuse(
                self.host,
                format!(
                    "tape {} belongs to pool {}, not {}",
                    c.label, found.pool, self.set.pool
                ),
            );
        }
        let set = label::read_set_label(drive)?;
        if c.append {
            match set {
                Some(s) if s.set == self.set.set && s.seq == c.seq => {
                    Ok(Some(append_position(drive)?))
                }
                other => {
                    self.excluded.insert(c.label.clone());
                    refuse(
                        self.host,
                        format!(
                            "tape {} is not tape {} of media set {} (it says {})",
                            c.label,
                            c.seq,
                            short(&self.set.set),
                            other.map_or("no set".into(), |s| format!(
                                "set {} tape {}",
                                short(&s.set),
                                s.seq
                            ))
                        ),
                    )
                }
            }
        } else {
            if let Some(s) = set
                && c.overwrite_set.as_deref() != Some(s.set.as_str())
            {
                self.excluded.insert(c.label.clone());
                return refuse(
                    self.host,
                    format!(
                        "tape {} already belongs to media set {} (tape {}); it is not overwritten",
                        c.label,
                        short(&s.set),
                        s.seq
                    ),
                );
            }
            let mut l = self.set.clone();
            l.seq = c.seq;
            label::write_set_label(drive, self.opts.block_size, &l)?;
            Ok(Some(2))
        }
    }

    /// Close the last archive and put the tape away.
    pub fn end(mut self) -> Result<SessionStats> {
        self.close_archive()?;
        self.put_away()?;
        Ok(self.stats)
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// Where to append on a tape: after its last filemark. Blocks after that filemark are an
/// archive a crash (or a lost drive) never finished: it is ended with a filemark first, so
/// the next archive is a file of its own (a reader takes a file's blocks as one archive).
fn append_position(drive: &mut dyn Drive) -> Result<u32> {
    let files = drive.to_end_of_data()?;
    drive.locate_file(files)?;
    let mut buf = vec![0u8; crate::vlib::MAX_BLOCK];
    let unfinished = matches!(drive.read_block(&mut buf)?, crate::drive::Record::Block(_));
    drive.to_end_of_data()?;
    if unfinished {
        drive.write_filemarks(1)?;
        return Ok(files + 1);
    }
    Ok(files)
}

/// Move the tape in drive `n` to the slot it came from, or the first empty one.
pub fn unload_to_slot(changer: &mut dyn Changer, status: &LibraryStatus, n: u32) -> Result<()> {
    let Some(d) = status.drives.iter().find(|d| d.drive == n) else {
        return Ok(());
    };
    if d.barcode.is_none() {
        return Ok(());
    }
    let slot = d
        .source_slot
        .filter(|s| {
            status
                .slots
                .iter()
                .any(|x| x.slot == *s && x.barcode.is_none())
        })
        .or_else(|| status.empty_slot())
        .ok_or_else(|| Error::Changer {
            what: format!("unload drive {n}"),
            reason: "no empty slot".into(),
        })?;
    changer.unload(n, slot)
}
