//! Changed-block tracking per backup chain: for each repository a volume is backed up to, one
//! bitmap of the 4 MiB granules changed since the last backup *to that repository*, and the
//! snapshot there it is relative to (qemu and libvirt keep one bitmap per checkpoint chain
//! for the same reason). Kept in `NAME.chains` (`KURACBT1`, specified in `docs/FORMAT.md`).
//!
//! # The rules
//! - Every host write, trim or zeroing marks every chain, before it is acknowledged.
//! - A chain is reset only by a successful backup to its own repository: its bits then hold
//!   what changed since that backup's freeze, and its *base* names the snapshot made.
//! - An incremental backup to a repository is taken only when its chain is trusted and its
//!   base snapshot is still in that repository; anything else reads everything and says why
//!   ([`incremental_reads`]).
//! - A chain for a repository not seen before starts untrusted.
//!
//! # Trust
//! Bits are set in memory before a change is acknowledged and written to the file on every
//! flush and at close; a change can reach the disk without its bit if the server dies between.
//! So the file carries an *in use* flag, made durable when a process opens the volume and
//! cleared only by a clean close after the bits are written. Found set → every chain is
//! untrusted. A clean close also records the raw file's identity (device, inode, size,
//! modification and change times); found different at the next open — someone wrote, replaced
//! or resized the raw file while no engine held it — every chain is untrusted, and says why.
//! An untrusted chain stays untrusted across clean closes until its next backup.
//!
//! A change made right after a clean close could carry the same (coarse-clock) time stamp as
//! the engine's last write; so a close waits until the clock has moved past the recorded
//! times (at most a few tens of milliseconds, only when the volume was just written).

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kura_repo::Id;

use crate::dirty::GRANULE;
use crate::error::{Result, io};

pub const MAGIC: &[u8; 8] = b"KURACBT1";
const VERSION: u32 = 1;
const HEADER: u64 = 128;
const ENTRY: u64 = 256;
const REASON_MAX: usize = (ENTRY as usize) - 70;
const FLAG_IN_USE: u32 = 1;
const CHAIN_TRUSTED: u32 = 1;

/// Why a volume's chains cannot be trusted when it was not closed cleanly.
pub const UNCLEAN: &str = "the volume was not closed cleanly (server killed or crashed): \
                           changes since the last backup are unknown";
/// Why a chain seen for the first time cannot be trusted.
pub const NEW_CHAIN: &str = "no backup of this volume to this repository has been tracked yet";

/// Whether a chain can be used for an incremental backup, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    Untrusted(String),
}

/// What identifies a raw file's content from outside: if any of it differs, someone changed
/// the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Identity {
    pub fn of(md: &Metadata) -> Identity {
        Identity {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }

    /// What differs from `was`, in words (`None`: nothing).
    fn differs(&self, was: &Identity) -> Option<String> {
        let what = if (self.dev, self.ino) != (was.dev, was.ino) {
            "replaced by another file"
        } else if self.size != was.size {
            "resized"
        } else if self.mtime != was.mtime {
            "written"
        } else if self.ctime != was.ctime {
            "changed (its inode)"
        } else {
            return None;
        };
        Some(format!(
            "the raw file was {what} while no volume server held it (e.g. a restore or dd into \
             it): changes since the last backup are unknown"
        ))
    }

    fn encode(&self, h: &mut [u8]) {
        h[40..48].copy_from_slice(&self.dev.to_le_bytes());
        h[48..56].copy_from_slice(&self.ino.to_le_bytes());
        h[56..64].copy_from_slice(&self.size.to_le_bytes());
        h[64..72].copy_from_slice(&self.mtime.0.to_le_bytes());
        h[72..80].copy_from_slice(&self.mtime.1.to_le_bytes());
        h[80..88].copy_from_slice(&self.ctime.0.to_le_bytes());
        h[88..96].copy_from_slice(&self.ctime.1.to_le_bytes());
    }

    fn decode(h: &[u8]) -> Identity {
        Identity {
            dev: u64_at(h, 40),
            ino: u64_at(h, 48),
            size: u64_at(h, 56),
            mtime: (u64_at(h, 64) as i64, u64_at(h, 72) as i64),
            ctime: (u64_at(h, 80) as i64, u64_at(h, 88) as i64),
        }
    }

    /// Wait until the clock is past this identity's times, so that a later change by anyone
    /// gets a later time stamp (file times come from a coarse clock).
    fn settle(&self) {
        let newest = self.mtime.max(self.ctime);
        let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
            return;
        };
        let stamp = std::time::Duration::new(
            newest.0.max(0) as u64,
            newest.1.clamp(0, 999_999_999) as u32,
        );
        let margin = std::time::Duration::from_millis(25);
        if let Some(wait) = (stamp + margin).checked_sub(now) {
            std::thread::sleep(wait.min(margin));
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn bitmap_len(size: u64) -> usize {
    size.div_ceil(GRANULE).div_ceil(8) as usize
}

/// One chain: a repository, the snapshot its bits are relative to, and the bits.
#[derive(Debug, Clone)]
struct Chain {
    repo: Id,
    base: Option<Id>,
    trust: Trust,
    bits: Vec<u8>,
}

/// A chain as reported (`kura volume info`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainState {
    /// The repository's id (from its config: the same however it is reached).
    pub repository_id: String,
    /// Where it was last backed up to (from the volume's newest record for it), if known.
    pub repository: Option<String>,
    /// The snapshot the bits are relative to.
    pub base: Option<String>,
    pub trusted: bool,
    pub reason: Option<String>,
    /// Bytes in dirty granules (as last written to the file when read from outside).
    pub dirty_bytes: u64,
}

/// The bits a freeze took out of one chain (see [`ChainSet::freeze`]).
#[derive(Debug, Clone)]
pub struct Frozen {
    pub repo: Id,
    /// The snapshot the bits are relative to.
    pub base: Option<Id>,
    pub trust: Trust,
    bits: Vec<u8>,
    /// The dirty granules at the freeze, as `(offset, length)` runs.
    pub runs: Vec<(u64, u64)>,
}

/// What an incremental backup from a freeze reads: `Ok(runs)` when the chain is trusted and
/// its base snapshot still exists (`base_exists`, looked up in the repository by the caller),
/// else `Err(why everything is read)`.
pub fn incremental_reads(
    frozen: &Frozen,
    base_exists: std::result::Result<(), String>,
) -> std::result::Result<Vec<(u64, u64)>, String> {
    if let Trust::Untrusted(why) = &frozen.trust {
        return Err(why.clone());
    }
    let Some(base) = frozen.base else {
        return Err(NEW_CHAIN.into());
    };
    base_exists.map_err(|why| {
        format!(
            "the snapshot {} this volume's changes are tracked against is no longer in the \
             repository ({why})",
            base.short()
        )
    })?;
    Ok(frozen.runs.clone())
}

#[derive(Debug)]
struct Inner {
    chains: Vec<Chain>,
}

/// The open chains of one volume, held by the one process that owns the volume.
#[derive(Debug)]
pub struct ChainSet {
    path: PathBuf,
    file: File,
    size: u64,
    inner: Mutex<Inner>,
    /// Why every chain was untrusted at open (unclean shutdown, outside change, resize).
    at_open: Option<String>,
    /// Serializes writes of the file: a later write never carries fewer bits than an earlier
    /// one that has returned.
    io: Mutex<()>,
}

/// A parsed file: the chains, and why they cannot be trusted (volume-wide), if so.
struct Parsed {
    chains: Vec<Chain>,
    in_use: bool,
    reason: Option<String>,
}

/// Parse the file's bytes for a volume of `size` whose raw file is `now`.
fn parse(bytes: &[u8], size: u64, now: &Identity) -> Parsed {
    let damaged = |why: &str| Parsed {
        chains: Vec::new(),
        in_use: false,
        reason: Some(format!("the change-tracking file is damaged ({why})")),
    };
    if bytes.is_empty() {
        return Parsed {
            chains: Vec::new(),
            in_use: false,
            reason: None,
        };
    }
    if (bytes.len() as u64) < HEADER {
        return damaged("shorter than its header");
    }
    let h = &bytes[..HEADER as usize];
    if &h[..8] != MAGIC || u32_at(h, 8) != VERSION || u64_at(h, 16) != GRANULE {
        return damaged("not a KURACBT1 file of this version");
    }
    let flags = u32_at(h, 12);
    let was = u64_at(h, 24);
    let count = u32_at(h, 32) as u64;
    let identity_valid = u32_at(h, 36) == 1;
    let was_bits = bitmap_len(was) as u64;
    let expect = count
        .checked_mul(ENTRY + was_bits)
        .and_then(|b| b.checked_add(HEADER));
    if expect != Some(bytes.len() as u64) {
        return damaged("its length does not match its header");
    }
    let mut chains = Vec::with_capacity(count as usize);
    for i in 0..count {
        let e = &bytes[(HEADER + i * ENTRY) as usize..(HEADER + (i + 1) * ENTRY) as usize];
        let repo = Id::from_slice(&e[..32]).unwrap_or_default();
        let base = Id::from_slice(&e[32..64]).filter(|b| !b.is_zero());
        let cflags = u32_at(e, 64);
        let rlen = (u16::from_le_bytes([e[68], e[69]]) as usize).min(REASON_MAX);
        let trust = if cflags & CHAIN_TRUSTED != 0 {
            Trust::Trusted
        } else {
            let r = String::from_utf8_lossy(&e[70..70 + rlen]).into_owned();
            Trust::Untrusted(if r.is_empty() { NEW_CHAIN.into() } else { r })
        };
        let at = (HEADER + count * ENTRY + i * was_bits) as usize;
        let bits = bytes[at..at + was_bits as usize].to_vec();
        chains.push(Chain {
            repo,
            base,
            trust,
            bits,
        });
    }
    let in_use = flags & FLAG_IN_USE != 0;
    let reason = if was != size {
        for c in &mut chains {
            c.bits = vec![0u8; bitmap_len(size)];
        }
        Some(format!(
            "the volume was resized from {was} to {size} bytes: changes since the last backup \
             are unknown"
        ))
    } else if in_use {
        Some(UNCLEAN.to_string())
    } else if !identity_valid {
        (!chains.is_empty()).then(|| "the raw file's identity was never recorded".to_string())
    } else {
        now.differs(&Identity::decode(h))
    };
    Parsed {
        chains,
        in_use,
        reason,
    }
}

fn untrust_all(chains: &mut [Chain], why: &str) {
    for c in chains {
        if c.trust == Trust::Trusted {
            c.trust = Trust::Untrusted(why.to_string());
        }
    }
}

fn runs_of(bits: &[u8], size: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for g in 0..size.div_ceil(GRANULE) {
        if bits
            .get((g / 8) as usize)
            .is_some_and(|b| b & (1 << (g % 8)) != 0)
        {
            let (off, len) = (g * GRANULE, GRANULE.min(size - g * GRANULE));
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == off => r.1 += len,
                _ => runs.push((off, len)),
            }
        }
    }
    runs
}

impl ChainSet {
    /// Open (or start) the chains of a volume of `size` bytes whose raw file is `raw` now,
    /// and mark them in use. Fails with [`Error::InUse`] when another process holds them.
    pub fn open(path: &Path, size: u64, raw: &Identity) -> Result<ChainSet> {
        let what = || format!("change tracking {}", path.display());
        let file = crate::hold::open_held(path, &what())?;
        let bytes = std::fs::read(path).map_err(io(what()))?;
        let mut p = parse(&bytes, size, raw);
        if let Some(why) = &p.reason {
            untrust_all(&mut p.chains, why);
        }
        let set = ChainSet {
            path: path.to_path_buf(),
            file,
            size,
            inner: Mutex::new(Inner { chains: p.chains }),
            at_open: p.reason,
            io: Mutex::new(()),
        };
        // In use from now on, durably, before any change is accepted.
        set.write(FLAG_IN_USE, None)?;
        Ok(set)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the file: body first, then the header (the in-use flag stays set on disk until
    /// a header without it is written after a durable body).
    fn write(&self, flags: u32, identity: Option<&Identity>) -> Result<()> {
        let _io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let what = || format!("change tracking {}", self.path.display());
        let (count, body) = {
            let inner = self.inner();
            let mut body = Vec::new();
            for c in &inner.chains {
                let mut e = [0u8; ENTRY as usize];
                e[..32].copy_from_slice(&c.repo.0);
                if let Some(b) = c.base {
                    e[32..64].copy_from_slice(&b.0);
                }
                match &c.trust {
                    Trust::Trusted => e[64..68].copy_from_slice(&CHAIN_TRUSTED.to_le_bytes()),
                    Trust::Untrusted(why) => {
                        let mut n = why.len().min(REASON_MAX);
                        while !why.is_char_boundary(n) {
                            n -= 1;
                        }
                        e[68..70].copy_from_slice(&(n as u16).to_le_bytes());
                        e[70..70 + n].copy_from_slice(&why.as_bytes()[..n]);
                    }
                }
                body.extend_from_slice(&e);
            }
            for c in &inner.chains {
                body.extend_from_slice(&c.bits);
            }
            (inner.chains.len() as u32, body)
        };
        let mut h = [0u8; HEADER as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        h[16..24].copy_from_slice(&GRANULE.to_le_bytes());
        h[24..32].copy_from_slice(&self.size.to_le_bytes());
        h[32..36].copy_from_slice(&count.to_le_bytes());
        if let Some(id) = identity {
            h[36..40].copy_from_slice(&1u32.to_le_bytes());
            id.encode(&mut h);
        }
        self.file
            .write_all_at(&body, HEADER)
            .and_then(|()| self.file.set_len(HEADER + body.len() as u64))
            .and_then(|()| self.file.sync_data())
            .map_err(io(what()))?;
        self.file
            .write_all_at(&h, 0)
            .and_then(|()| self.file.sync_data())
            .map_err(io(what()))
    }

    /// Mark `[offset, offset + len)` changed in every chain. Called before the change is
    /// acknowledged.
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / GRANULE;
        let last = (offset + len - 1) / GRANULE;
        let mut inner = self.inner();
        for c in &mut inner.chains {
            for g in first..=last {
                if let Some(b) = c.bits.get_mut((g / 8) as usize) {
                    *b |= 1 << (g % 8);
                }
            }
        }
    }

    /// Write the bits (keeping the in-use flag): called on every flush.
    pub fn persist(&self) -> Result<()> {
        self.write(FLAG_IN_USE, None)
    }

    /// Close cleanly: bits written, the raw file's identity now (`raw`, after its last
    /// write was flushed) recorded, the in-use flag cleared.
    pub fn close(&self, raw: &Identity) -> Result<()> {
        self.write(0, Some(raw))?;
        raw.settle();
        Ok(())
    }

    /// Why every chain was untrusted when the volume was opened, if so.
    pub fn untrusted_at_open(&self) -> Option<&str> {
        self.at_open.as_deref()
    }

    /// The snapshot the chain of `repo` is relative to.
    pub fn base(&self, repo: &Id) -> Option<Id> {
        self.inner()
            .chains
            .iter()
            .find(|c| c.repo == *repo)
            .and_then(|c| c.base)
    }

    /// A backup to `repo` freezes the volume: take that chain's bits (what changed since its
    /// last backup, up to now) and start it afresh, in memory; the other chains keep theirs.
    /// A chain not seen before starts here, untrusted. If the backup fails,
    /// [`thaw_failed`](Self::thaw_failed) puts the bits back; if it succeeds,
    /// [`thaw_done`](Self::thaw_done) makes the chain relative to the new snapshot.
    pub fn freeze(&self, repo: Id) -> Frozen {
        let n = bitmap_len(self.size);
        let mut inner = self.inner();
        let i = match inner.chains.iter().position(|c| c.repo == repo) {
            Some(i) => i,
            None => {
                inner.chains.push(Chain {
                    repo,
                    base: None,
                    trust: Trust::Untrusted(NEW_CHAIN.into()),
                    bits: vec![0u8; n],
                });
                inner.chains.len() - 1
            }
        };
        let c = &mut inner.chains[i];
        let bits = std::mem::replace(&mut c.bits, vec![0u8; n]);
        Frozen {
            repo,
            base: c.base,
            trust: c.trust.clone(),
            runs: runs_of(&bits, self.size),
            bits,
        }
    }

    /// The backup of a freeze failed: its bits are dirty again, and the chain's trust and
    /// base are what they were.
    pub fn thaw_failed(&self, frozen: Frozen) -> Result<()> {
        {
            let mut inner = self.inner();
            if let Some(c) = inner.chains.iter_mut().find(|c| c.repo == frozen.repo) {
                for (b, f) in c.bits.iter_mut().zip(&frozen.bits) {
                    *b |= f;
                }
                if let Trust::Untrusted(_) = &frozen.trust {
                    c.trust = frozen.trust;
                }
            }
        }
        self.persist()
    }

    /// The backup of a freeze to its repository is durable as `snapshot`: the chain is
    /// relative to it, and trusted (every change since the freeze was marked in it).
    pub fn thaw_done(&self, frozen: &Frozen, snapshot: Id) -> Result<()> {
        {
            let mut inner = self.inner();
            if let Some(c) = inner.chains.iter_mut().find(|c| c.repo == frozen.repo) {
                c.base = Some(snapshot);
                c.trust = Trust::Trusted;
            }
        }
        self.persist()
    }

    /// A restore from repository `repo` starts (nothing in flight; the restore's own writes
    /// are not marked): every chain untrusted for `why` (what a restore that never finishes
    /// leaves: the volume holds a mix), written; `repo`'s chain (created if new) starts with
    /// no bits, so that at the end it holds exactly the hosts' changes made meanwhile.
    pub fn begin_restore(&self, repo: Id, why: &str) -> Result<()> {
        {
            let n = bitmap_len(self.size);
            let mut inner = self.inner();
            for c in &mut inner.chains {
                c.trust = Trust::Untrusted(why.to_string());
            }
            match inner.chains.iter_mut().find(|c| c.repo == repo) {
                Some(c) => c.bits = vec![0u8; n],
                None => inner.chains.push(Chain {
                    repo,
                    base: None,
                    trust: Trust::Untrusted(why.to_string()),
                    bits: vec![0u8; n],
                }),
            }
        }
        self.persist()
    }

    /// The volume now equals `snapshot` of `repo` (a restore begun with
    /// [`begin_restore`](Self::begin_restore) finished): reset that chain to it, trusted,
    /// its bits what hosts changed during the restore; untrust the others for `why`.
    pub fn reset_to(&self, repo: Id, snapshot: Id, why: &str) -> Result<()> {
        {
            let mut inner = self.inner();
            for c in &mut inner.chains {
                if c.repo == repo {
                    c.base = Some(snapshot);
                    c.trust = Trust::Trusted;
                } else {
                    c.trust = Trust::Untrusted(why.to_string());
                }
            }
        }
        self.persist()
    }

    /// Whether the granule holding `offset` is dirty in any chain (what changed since the
    /// oldest backup tracked).
    pub fn is_dirty(&self, offset: u64) -> bool {
        let g = offset / GRANULE;
        self.inner().chains.iter().any(|c| {
            c.bits
                .get((g / 8) as usize)
                .is_some_and(|b| b & (1 << (g % 8)) != 0)
        })
    }

    /// Every chain, as reported.
    pub fn states(&self) -> Vec<ChainState> {
        states(&self.inner().chains, self.size)
    }
}

fn states(chains: &[Chain], size: u64) -> Vec<ChainState> {
    chains
        .iter()
        .map(|c| ChainState {
            repository_id: c.repo.to_hex(),
            repository: None,
            base: c.base.map(|b| b.to_hex()),
            trusted: c.trust == Trust::Trusted,
            reason: match &c.trust {
                Trust::Trusted => None,
                Trust::Untrusted(w) => Some(w.clone()),
            },
            dirty_bytes: runs_of(&c.bits, size).iter().map(|r| r.1).sum(),
        })
        .collect()
}

/// A volume's change tracking as seen from outside the owning process (`kura volume info`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tracking {
    /// Whether every chain is trusted (and there is at least one).
    pub trusted: bool,
    /// Why not, when not: volume-wide first (unclean shutdown, outside change, resize).
    pub reason: Option<String>,
    /// The most any chain's next backup reads (bytes in its dirty granules).
    pub dirty_bytes: u64,
    /// A server holds the volume now (its newest bits are in its memory).
    pub served: bool,
    /// One entry per repository the volume is backed up to.
    pub chains: Vec<ChainState>,
}

/// Read a volume's chains without holding them; `raw`: its raw file now.
pub fn peek(path: &Path, size: u64, raw: &Identity) -> Result<Tracking> {
    let what = || format!("change tracking {}", path.display());
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Tracking {
                trusted: false,
                reason: Some(format!("{NEW_CHAIN}: the first backup reads everything")),
                dirty_bytes: 0,
                served: false,
                chains: Vec::new(),
            });
        }
        Err(e) => return Err(io(what())(e)),
    };
    let served = !crate::hold::try_lock(&file, false);
    let bytes = std::fs::read(path).map_err(io(what()))?;
    let mut p = parse(&bytes, size, raw);
    if served && p.in_use {
        // Held: in use is its normal state, and the raw file changes under its owner.
        p.reason = None;
    }
    if let Some(why) = &p.reason {
        untrust_all(&mut p.chains, why);
    }
    let chains = states(&p.chains, size);
    let reason = p
        .reason
        .or_else(|| {
            chains
                .is_empty()
                .then(|| format!("{NEW_CHAIN}: the first backup reads everything"))
        })
        .or_else(|| {
            chains.iter().find_map(|c| {
                c.reason
                    .as_ref()
                    .map(|r| format!("repository {}: {r}", &c.repository_id[..8]))
            })
        });
    Ok(Tracking {
        trusted: reason.is_none(),
        reason,
        dirty_bytes: chains.iter().map(|c| c.dirty_bytes).max().unwrap_or(0),
        served,
        chains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn chains_are_reset_by_their_own_backups_and_untrusted_after_a_crash_or_outside_change() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.chains");
        let raw = d.path().join("v.raw");
        let size = 40 << 20;
        std::fs::write(&raw, vec![0u8; size as usize]).unwrap();
        let ident = || Identity::of(&std::fs::metadata(&raw).unwrap());
        let s = ChainSet::open(&p, size, &ident()).unwrap();
        let (a, b) = (id(1), id(2));
        // First backups: new chains, untrusted.
        let f = s.freeze(a);
        assert_eq!(incremental_reads(&f, Ok(())), Err(NEW_CHAIN.to_string()));
        s.thaw_done(&f, id(10)).unwrap();
        s.mark(5 << 20, 1); // granule 1: in chain a only (b not started)
        let f = s.freeze(b);
        s.thaw_done(&f, id(20)).unwrap();
        s.mark(12 << 20, 1); // granule 3: in both
        let f = s.freeze(a);
        assert_eq!(f.base, Some(id(10)));
        assert_eq!(
            incremental_reads(&f, Ok(())),
            Ok(vec![(4 << 20, 4 << 20), (12 << 20, 4 << 20)])
        );
        // A failed backup puts the bits back.
        s.thaw_failed(f).unwrap();
        let f = s.freeze(a);
        assert_eq!(f.runs, [(4 << 20, 4 << 20), (12 << 20, 4 << 20)]);
        // The base was forgotten: everything is read, and why.
        let why = incremental_reads(&f, Err("not found".into())).unwrap_err();
        assert!(
            why.contains(&id(10).short()) && why.contains("no longer"),
            "{why}"
        );
        s.thaw_done(&f, id(11)).unwrap();
        // A second holder is refused.
        assert!(matches!(
            ChainSet::open(&p, size, &ident()),
            Err(Error::InUse(_))
        ));
        s.close(&ident()).unwrap();
        drop(s);
        // Clean reopen: trusted, bits kept.
        let s = ChainSet::open(&p, size, &ident()).unwrap();
        assert!(s.untrusted_at_open().is_none());
        let f = s.freeze(b);
        assert_eq!(incremental_reads(&f, Ok(())), Ok(vec![(12 << 20, 4 << 20)]));
        s.thaw_failed(f).unwrap();
        // A crash: untrusted, and stays so across a clean close.
        drop(s);
        let s = ChainSet::open(&p, size, &ident()).unwrap();
        assert_eq!(s.untrusted_at_open(), Some(UNCLEAN));
        s.close(&ident()).unwrap();
        drop(s);
        let s = ChainSet::open(&p, size, &ident()).unwrap();
        let f = s.freeze(a);
        assert_eq!(incremental_reads(&f, Ok(())), Err(UNCLEAN.to_string()));
        s.thaw_done(&f, id(12)).unwrap();
        s.close(&ident()).unwrap();
        drop(s);
        // Written behind the engine's back.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&raw)
            .unwrap()
            .write_all_at(b"x", 4096)
            .unwrap();
        let s = ChainSet::open(&p, size, &ident()).unwrap();
        assert!(s.untrusted_at_open().unwrap().contains("written"));
        s.close(&ident()).unwrap();
        drop(s);
        let t = peek(&p, size, &ident()).unwrap();
        assert!(!t.trusted && t.chains.len() == 2, "{t:?}");
        assert!(!t.chains[0].trusted && !t.chains[1].trusted);
        // Resized: untrusted.
        let s = ChainSet::open(&p, size * 2, &ident()).unwrap();
        assert!(s.untrusted_at_open().unwrap().contains("resized"));
    }

    #[test]
    fn damaged_files_are_untrusted_never_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.chains");
        let size = 16 << 20;
        let raw = Identity::default();
        let s = ChainSet::open(&p, size, &raw).unwrap();
        let f = s.freeze(id(1));
        s.thaw_done(&f, id(2)).unwrap();
        s.close(&raw).unwrap();
        drop(s);
        let good = std::fs::read(&p).unwrap();
        for cut in [0, 5, 127, 128, 200, good.len() - 1] {
            std::fs::write(&p, &good[..cut]).unwrap();
            let s = ChainSet::open(&p, size, &raw).unwrap();
            let f = s.freeze(id(1));
            assert!(incremental_reads(&f, Ok(())).is_err(), "cut {cut}");
        }
    }
}
