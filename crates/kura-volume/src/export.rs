//! The write path of a volume: a volume as an NBD export, where every host change (write,
//! trim, zeroing) is marked in every backup chain ([`crate::chains`]), passed through the
//! copy-before-write session (the frozen data saved first) and the mirror pair (a durable
//! difference bit where split, the secondary written where duplex) before it is
//! acknowledged. This is the only place host changes reach a volume.
//!
//! The union of the chains' bits is offered to clients as the metadata context
//! `qemu:dirty-bitmap:kura` (the name qemu's clients look for): what changed since the oldest
//! backup tracked.
//!
//! One process serves a volume through one `VolumeExport` shared by all its connections (the
//! store keeps a registry), so there is one set of chains in memory; a second process is
//! refused (the chain file's exclusive lock). When the export closes, the chains are written,
//! with the raw file's identity, and closed cleanly.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

use kura_nbd::proto::STATE_DIRTY;
use kura_nbd::{Export, FileExport, Runs};

use crate::chains::{ChainSet, Frozen, Identity};
use crate::dirty::GRANULE;
use crate::error::{Error, Result};
use crate::pair::Pair;
use crate::session::{Session, WorkVolume};

/// The metadata context name of the dirty bitmap.
pub const DIRTY_CONTEXT: &str = "qemu:dirty-bitmap:kura";

#[derive(Debug)]
pub struct VolumeExport {
    name: String,
    file: FileExport,
    chains: ChainSet,
    /// Changes hold it shared (mark, then write); [`shutdown`](Self::shutdown) takes it
    /// exclusively, so no change is acknowledged after the bitmap was closed. Freezes (a
    /// split, a session start) take it exclusively too: no change is in flight at the
    /// instant an image is frozen.
    pub(crate) closed: RwLock<bool>,
    /// The volume's mirror pair, when it is a primary.
    pair: Mutex<Option<Arc<Pair>>>,
    /// The copy-before-write backup session running on it.
    session: Mutex<Option<Arc<Session>>>,
    /// A restore writing into it: 0 none, 1 (new clients refused), 2 (clients let in).
    restoring: AtomicU8,
}

/// What a change must pass through, fixed for its duration (both are only replaced under the
/// exclusive change lock).
struct Hooks {
    pair: Option<Arc<Pair>>,
    session: Option<Arc<Session>>,
}

impl VolumeExport {
    pub(crate) fn new(name: &str, file: FileExport, chains: ChainSet) -> VolumeExport {
        VolumeExport {
            name: name.to_string(),
            file,
            chains,
            closed: RwLock::new(false),
            pair: Mutex::new(None),
            session: Mutex::new(None),
            restoring: AtomicU8::new(0),
        }
    }

    /// Claim the volume for a restore (one at a time, none during a backup session); until
    /// [`end_restore`](Self::end_restore), new clients are refused unless `let_clients`.
    pub(crate) fn claim_restore(&self, let_clients: bool) -> Result<()> {
        if self.session().is_some() {
            return Err(Error::InUse(format!(
                "volume {} is in use: a backup session is running on it",
                self.name
            )));
        }
        let v = if let_clients { 2 } else { 1 };
        self.restoring
            .compare_exchange(0, v, Ordering::SeqCst, Ordering::SeqCst)
            .map(drop)
            .map_err(|_| {
                Error::InUse(format!(
                    "volume {} is in use: a restore into it is running",
                    self.name
                ))
            })
    }

    /// Whether a restore runs, and if so whether new clients may connect meanwhile.
    pub(crate) fn restoring(&self) -> Option<bool> {
        match self.restoring.load(Ordering::SeqCst) {
            0 => None,
            v => Some(v == 2),
        }
    }

    /// A claimed restore from repository `repo` starts writing: see
    /// [`ChainSet::begin_restore`] (under the change lock: nothing in flight).
    pub(crate) fn begin_restore(&self, repo: kura_repo::Id, why: &str) -> Result<()> {
        let _g = self.exclusive()?;
        self.chains.begin_restore(repo, why)
    }

    /// The restore ended: when it restored `snapshot` of `repo` whole (`done`), the chains are
    /// reset to it ([`ChainSet::reset_to`]); otherwise they stay untrusted. The claim goes.
    pub(crate) fn end_restore(
        &self,
        done: Option<(kura_repo::Id, kura_repo::Id, &str)>,
    ) -> Result<()> {
        let reset = match done {
            Some((repo, snapshot, why)) => self
                .exclusive()
                .and_then(|_g| self.chains.reset_to(repo, snapshot, why)),
            None => Ok(()),
        };
        self.restoring.store(0, Ordering::SeqCst);
        reset
    }

    /// A restore's write: through the session and the pair like a host's, but not marked in
    /// the chains (a restore replaces the volume; [`ChainSet::begin_restore`]).
    pub(crate) fn restore_write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.apply(offset, data.len() as u64, false, false, |f, o, l| {
            let from = (o - offset) as usize;
            f.write_at(o, &data[from..from + l as usize], false)
        })
    }

    /// A restore's zeroing (a punched hole where the file system can).
    pub(crate) fn restore_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.apply(offset, len, false, false, |f, o, l| {
            f.write_zeroes(o, l, true, false)
        })
    }

    /// The volume's backup chains.
    pub fn chains(&self) -> &ChainSet {
        &self.chains
    }

    /// The raw file (reads, and the pair's copies under [`exclusive`](Self::exclusive)).
    pub(crate) fn file(&self) -> &FileExport {
        &self.file
    }

    /// Attach a mirror pair between two changes.
    pub(crate) fn attach_pair(&self, pair: Arc<Pair>) -> Result<()> {
        let _g = self.exclusive()?;
        *self.pair.lock().unwrap_or_else(|p| p.into_inner()) = Some(pair);
        Ok(())
    }

    /// Detach the mirror pair (under the change lock the caller holds).
    pub(crate) fn detach_pair(&self, _held: &RwLockWriteGuard<'_, bool>) -> Option<Arc<Pair>> {
        self.pair.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Freeze the chain of repository `repo` (nothing in flight; the caller holds the change
    /// lock): see [`ChainSet::freeze`].
    pub(crate) fn freeze_chain(
        &self,
        repo: kura_repo::Id,
        _held: &RwLockWriteGuard<'_, bool>,
    ) -> Frozen {
        self.chains.freeze(repo)
    }

    /// Stop accepting changes, then write the data and the chains and close them cleanly
    /// (the server is stopping while clients may still be connected). Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        let mut closed = self.closed.write().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Ok(());
        }
        *closed = true;
        self.file.flush().map_err(|source| Error::Io {
            what: format!("flush volume {}", self.name),
            source,
        })?;
        if let Some(p) = self.pair() {
            p.secondary.flush().map_err(|source| Error::Io {
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
        // The raw file as the engine leaves it: a change by anyone else before the next open
        // shows in its identity.
        let md = self.file.file().metadata().map_err(|source| Error::Io {
            what: format!("stat volume {}", self.name),
            source,
        })?;
        self.chains.close(&Identity::of(&md))
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

    /// Start a copy-before-write session for a backup to repository `repo`: under the
    /// exclusive change lock (nothing in flight), take the bits of that repository's chain
    /// ([`ChainSet::freeze`]) and let `needed` decide, from them, which byte ranges the
    /// backup will read (`None`: all); then every later change passes through the session.
    /// End it with [`end_session`](Self::end_session).
    pub fn begin_session(
        &self,
        work: WorkVolume,
        repo: kura_repo::Id,
        needed: impl FnOnce(&Frozen) -> Result<Option<Vec<(u64, u64)>>>,
    ) -> Result<(Arc<Session>, Frozen)> {
        let _g = self.exclusive()?;
        if self.session().is_some() {
            return Err(Error::InUse(format!(
                "volume {:?} is in use: a backup session is already running on it",
                self.name
            )));
        }
        if self.restoring().is_some() {
            return Err(Error::InUse(format!(
                "volume {} is in use: a restore into it is running",
                self.name
            )));
        }
        let frozen = self.chains.freeze(repo);
        let ranges = match needed(&frozen) {
            Ok(r) => r,
            Err(e) => {
                self.chains.thaw_failed(frozen)?;
                return Err(e);
            }
        };
        let s = Arc::new(Session::new(self.size(), work, ranges.as_deref()));
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&s));
        Ok((s, frozen))
    }

    /// End the session (between two changes); its working volume returns to the pool when
    /// the last reference to the session goes.
    pub fn end_session(&self) -> Result<()> {
        let _g = self.exclusive()?;
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(())
    }

    /// Hold off every change (in flight ones finish first): for freezes, resync copies and
    /// attaching or detaching a pair or a session.
    pub(crate) fn exclusive(&self) -> Result<RwLockWriteGuard<'_, bool>> {
        let g = self.closed.write().unwrap_or_else(|p| p.into_inner());
        if *g {
            return Err(Error::Invalid(format!(
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

    /// A change to `[offset, offset + len)`: mark it in every chain, save frozen data (session), mark
    /// the pair's difference durably where split, change the primary (`apply`), then the
    /// secondary where duplex.
    fn apply(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        mark: bool,
        apply: impl Fn(&FileExport, u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        self.change(|h| {
            if mark {
                self.chains.mark(offset, len);
            }
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
                self.chains.persist().map_err(to_io)?;
            }
            Ok(())
        })
    }
}

impl Drop for VolumeExport {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("volume {}: closing its change tracking: {e}", self.name);
        }
    }
}

fn to_io(e: Error) -> io::Error {
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
        self.apply(offset, data.len() as u64, fua, true, |f, o, l| {
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
            self.chains.persist().map_err(to_io)
        })
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.apply(offset, len, false, true, |f, o, l| f.trim(o, l))
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        self.apply(offset, len, fua, true, |f, o, l| {
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
            let flag = if self.chains.is_dirty(at) {
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
