//! A volume as an NBD export: the raw file, with every change marked in the volume's dirty
//! bitmap before it is acknowledged, and the bitmap offered to clients as the metadata
//! context `qemu:dirty-bitmap:kura` (the name qemu's clients look for).
//!
//! One process serves a volume through one `VolumeExport` shared by all its connections (the
//! store keeps a registry), so there is one bitmap in memory; a second process is refused
//! (the bitmap file's exclusive lock). When the last connection ends, the bitmap is written
//! and closed cleanly.

use std::io;
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

use kura_nbd::proto::STATE_DIRTY;
use kura_nbd::{Export, FileExport, Runs};

use crate::dirty::{DirtyMap, GRANULE};
use crate::pair::Pair;
use crate::session::Session;

/// The metadata context name of the dirty bitmap.
pub const DIRTY_CONTEXT: &str = "qemu:dirty-bitmap:kura";

#[derive(Debug)]
pub struct VolumeExport {
    pub(crate) name: String,
    pub(crate) file: FileExport,
    pub(crate) dirty: Arc<DirtyMap>,
    /// Changes hold it shared (mark, then write); [`shutdown`](Self::shutdown) takes it
    /// exclusively, so no change is acknowledged after the bitmap was closed. Freezes (a
    /// split, a session start) take it exclusively too: no change is in flight at the
    /// instant an image is frozen.
    pub(crate) closed: RwLock<bool>,
    /// The volume's mirror pair, when it is a primary.
    pub(crate) pair: Mutex<Option<Arc<Pair>>>,
    /// The copy-before-write backup session running on it.
    pub(crate) session: Mutex<Option<Arc<Session>>>,
}

/// What a change must pass through, fixed for its duration (both are only replaced under the
/// exclusive change lock).
struct Hooks {
    pair: Option<Arc<Pair>>,
    session: Option<Arc<Session>>,
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
        if let Some(p) = self.pair() {
            p.secondary.flush().map_err(|source| crate::Error::Io {
                what: format!("flush the secondary of {}", self.name),
                source,
            })?;
            p.diff.close()?;
        }
        // A session ends with its server: the working volume goes back to the pool.
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.dirty.close()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pair(&self) -> Option<Arc<Pair>> {
        self.pair.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Start a copy-before-write session: under the exclusive change lock (nothing in
    /// flight), take the dirty bits ([`DirtyMap::freeze`]) and let `needed` decide, from
    /// them, which byte ranges the backup will read (`None`: all); then every later change
    /// passes through the session. End it with [`end_session`](Self::end_session).
    pub fn begin_session(
        &self,
        work: crate::session::WorkVolume,
        needed: impl FnOnce(&crate::dirty::Frozen) -> crate::Result<Option<Vec<(u64, u64)>>>,
    ) -> crate::Result<(Arc<Session>, crate::dirty::Frozen)> {
        let _g = self.exclusive()?;
        if self.session().is_some() {
            return Err(crate::Error::InUse(format!(
                "{} (a backup session is already running on it)",
                self.name
            )));
        }
        let frozen = self.dirty.freeze();
        let ranges = match needed(&frozen) {
            Ok(r) => r,
            Err(e) => {
                self.dirty.thaw_failed(frozen)?;
                return Err(e);
            }
        };
        let s = Arc::new(Session::new(self.size(), work, ranges.as_deref()));
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&s));
        Ok((s, frozen))
    }

    /// End the session (between two changes); its working volume returns to the pool when
    /// the last reference to the session goes.
    pub fn end_session(&self) -> crate::Result<()> {
        let _g = self.exclusive()?;
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(())
    }

    /// Hold off every change (in flight ones finish first): for freezes, resync copies and
    /// attaching or detaching a pair or a session.
    pub(crate) fn exclusive(&self) -> crate::Result<RwLockWriteGuard<'_, bool>> {
        let g = self.closed.write().unwrap_or_else(|p| p.into_inner());
        if *g {
            return Err(crate::Error::Invalid(format!(
                "volume {} is shutting down",
                self.name
            )));
        }
        Ok(g)
    }

    /// Run a change while the export is open.
    fn change(&self, f: impl FnOnce(&Hooks) -> io::Result<()>) -> io::Result<()> {
        let closed = self.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(io::Error::other(format!(
                "volume {} is shutting down",
                self.name
            )));
        }
        let hooks = Hooks {
            pair: self.pair(),
            session: self.session(),
        };
        f(&hooks)
    }

    /// A change to `[offset, offset + len)`: mark it dirty, save frozen data (session), mark
    /// the pair's difference durably where split, change the primary (`apply`), then the
    /// secondary where duplex.
    fn apply(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        apply: impl Fn(&FileExport, u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        self.change(|h| {
            self.dirty.mark(offset, len);
            if let Some(s) = &h.session {
                s.before_change(&self.file, offset, len)?;
            }
            if let Some(p) = &h.pair {
                p.before_change(offset, len)?;
            }
            apply(&self.file, offset, len)?;
            if let Some(p) = &h.pair {
                p.after_change(offset, len, &apply)?;
            }
            if fua {
                self.dirty.persist().map_err(to_io)?;
            }
            Ok(())
        })
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
        self.apply(offset, data.len() as u64, fua, |f, o, l| {
            let from = (o - offset) as usize;
            f.write_at(o, &data[from..from + l as usize], fua)
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.change(|h| {
            self.file.flush()?;
            if let Some(p) = &h.pair {
                p.flush()?;
            }
            self.dirty.persist().map_err(to_io)
        })
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.apply(offset, len, false, |f, o, l| f.trim(o, l))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        self.apply(offset, len, fua, |f, o, l| {
            f.write_zeroes(o, l, may_trim, fua)
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
