//! Reading tapes back: load a tape by label (asking an operator for it when it is not in
//! the library), check it is the tape wanted, position at a file by number and read its
//! archive; or scan a whole tape (a rebuild).

use std::time::{Duration, Instant};

use crate::archive::{ArchiveEnd, ArchiveReader, ReadEntry};
use crate::drive::{Changer, Drive};
use crate::label::{self, MediumLabel, SetLabel};
use crate::library::Library;
use crate::session::unload_to_slot;
use crate::{Error, Result};

/// What a reader asks of its owner while it waits for a tape.
pub trait MountHost {
    /// A tape is wanted and not in the library: tell an operator (once per wait).
    fn mount_request(&mut self, message: &str) -> Result<()>;
    fn mount_satisfied(&mut self) -> Result<()>;
    fn cancelled(&self) -> bool {
        false
    }
}

/// A mount host that only logs.
pub struct LogMounts;

impl MountHost for LogMounts {
    fn mount_request(&mut self, message: &str) -> Result<()> {
        tracing::warn!("{message}");
        Ok(())
    }
    fn mount_satisfied(&mut self) -> Result<()> {
        Ok(())
    }
}

/// One drive of a library, used to read.
pub struct TapeReader {
    lib: Library,
    changer: Box<dyn Changer>,
    drive: Box<dyn Drive>,
    n: u32,
    loaded: Option<(MediumLabel, Option<SetLabel>)>,
    pub mount_timeout: Duration,
    pub poll: Duration,
}

impl TapeReader {
    /// Use the first drive of the library that no other process has.
    pub fn open(lib: &Library) -> Result<TapeReader> {
        let mut last = None;
        for n in 0..lib.drive_count() {
            match lib.drive(n) {
                Ok(drive) => {
                    return Ok(TapeReader {
                        changer: lib.changer()?,
                        lib: lib.clone(),
                        drive,
                        n,
                        loaded: None,
                        mount_timeout: Duration::from_secs(3600),
                        poll: Duration::from_secs(1),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("the library has no drive".into())))
    }

    pub fn drive_name(&self) -> String {
        self.drive.name()
    }

    /// The library this reader's drive belongs to.
    pub fn library(&self) -> &Library {
        &self.lib
    }

    /// Get the tape `label` into the drive and check its labels; with `set`, it must be a
    /// tape of that media set. Waits (mount request) up to `mount_timeout` for it.
    pub fn load(
        &mut self,
        label: &str,
        set: Option<&str>,
        host: &mut dyn MountHost,
    ) -> Result<&(MediumLabel, Option<SetLabel>)> {
        if self.loaded.as_ref().is_some_and(|(l, _)| l.label == label) {
            return self.loaded.as_ref().ok_or(Error::Cancelled);
        }
        self.load_unchecked(label, host)?;
        let found = label::read_label(self.drive.as_mut())?
            .ok_or_else(|| Error::Refused(format!("tape {label} is not labelled")))?;
        if found.label != label {
            return Err(Error::Refused(format!(
                "the tape with barcode {label} is labelled {}",
                found.label
            )));
        }
        let set_label = label::read_set_label(self.drive.as_mut())?;
        if let Some(want) = set
            && set_label.as_ref().is_none_or(|s| s.set != want)
        {
            return Err(Error::Refused(format!(
                "tape {label} is not of media set {want} (it says {})",
                set_label
                    .as_ref()
                    .map_or("no set".to_string(), |s| format!("set {}", s.set))
            )));
        }
        self.loaded = Some((found, set_label));
        self.loaded.as_ref().ok_or(Error::Cancelled)
    }

    /// Get the tape with barcode `label` into the drive (waiting for it as [`load`] does),
    /// without reading its labels: for labelling.
    ///
    /// [`load`]: Self::load
    pub fn load_unchecked(
        &mut self,
        label: &str,
        host: &mut dyn MountHost,
    ) -> Result<&mut dyn Drive> {
        self.loaded = None;
        let deadline = Instant::now() + self.mount_timeout;
        let mut asked = false;
        loop {
            if host.cancelled() {
                return Err(Error::Cancelled);
            }
            let status = self.changer.status()?;
            if status.drive_of(label) == Some(self.n) {
                break;
            }
            // In another drive: if no process uses that drive, take the tape out of it.
            if let Some(d) = status.drive_of(label)
                && let Ok(mut other) = self.lib.drive(d)
            {
                other.unload()?;
                drop(other);
                unload_to_slot(self.changer.as_mut(), &status, d)?;
                continue;
            }
            if let Some(slot) = status.slot_of(label) {
                self.empty_drive(&status)?;
                self.changer.load(slot, self.n)?;
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::MountTimeout(format!(
                    "tape {label} was not put into the library within {:.0} s",
                    self.mount_timeout.as_secs_f64()
                )));
            }
            if !asked {
                asked = true;
                let where_ = match status.drive_of(label) {
                    Some(d) => format!(" (it is in drive {d}, in use)"),
                    None => String::new(),
                };
                host.mount_request(&format!(
                    "please insert tape {label} into the library{where_}"
                ))?;
            }
            std::thread::sleep(
                self.poll
                    .min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        if asked {
            host.mount_satisfied()?;
        }
        Ok(self.drive.as_mut())
    }

    /// Read the archive at file `file` of the loaded tape, entry by entry, until `each`
    /// says it has what it wanted (`Ok(false)`): then `None`, the rest unread. Else how the
    /// archive ended.
    pub fn read_archive(
        &mut self,
        file: u32,
        mut each: impl FnMut(ReadEntry) -> Result<bool>,
    ) -> Result<Option<ArchiveEnd>> {
        self.drive.locate_file(file)?;
        let mut r = ArchiveReader::new(self.drive.as_mut());
        while let Some(e) = r.next_entry()? {
            if !each(e)? {
                return Ok(None);
            }
        }
        r.drain().map(Some)
    }

    /// Read every archive from file 2 (the first after the labels) to the end of data.
    pub fn scan(
        &mut self,
        mut each: impl FnMut(u32, ReadEntry) -> Result<()>,
    ) -> Result<Vec<(u32, ArchiveEnd)>> {
        let mut ends = Vec::new();
        match self.drive.locate_file(2) {
            Ok(()) => {}
            Err(Error::Format(_)) => return Ok(ends),
            Err(e) => return Err(e),
        }
        let mut file = 2;
        loop {
            let mut r = ArchiveReader::new(self.drive.as_mut());
            while let Some(e) = r.next_entry()? {
                each(file, e)?;
            }
            let started = r.started();
            let end = r.drain()?;
            let stop = end.end_of_data || end.error.is_some();
            if started {
                ends.push((file, end));
            }
            if stop {
                return Ok(ends);
            }
            file += 1;
        }
    }

    /// Put the tape back in a slot.
    pub fn put_away(&mut self) -> Result<()> {
        self.loaded = None;
        let status = self.changer.status()?;
        self.empty_drive(&status)
    }

    /// Unload whatever tape is in this reader's drive to a slot.
    fn empty_drive(&mut self, status: &crate::drive::LibraryStatus) -> Result<()> {
        if status
            .drives
            .get(self.n as usize)
            .is_some_and(|d| d.barcode.is_some())
        {
            self.drive.unload()?;
            unload_to_slot(self.changer.as_mut(), status, self.n)?;
        }
        Ok(())
    }
}
