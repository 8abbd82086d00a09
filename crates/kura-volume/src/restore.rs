//! Restoring an image snapshot into a volume, or into any NBD export.
//!
//! # Into a volume
//! A new volume is created with the snapshot's size; an existing one must have that size.
//! The restore writes through the volume's write path ([`VolumeExport`]): a served volume's
//! server does it ([`crate::engine::Engine::restore`], asked over the control socket), so its
//! mirror pair and tracking see every change; an unserved volume is opened by the restoring
//! process itself, under the same locks a server takes (a server cannot start on it
//! meanwhile, nor can two restores run). Zero chunks and aligned zero blocks become punched
//! holes: holes stay holes, and old data where the snapshot has zeros is deallocated.
//! Refused while a client is connected, unless forced; new clients are refused while it runs
//! (unless forced).
//!
//! # The chains afterwards
//! At the start every chain becomes untrusted ("a restore … did not finish") and the chain of
//! the snapshot's repository starts with no bits; the restore's own writes are not marked,
//! hosts' writes meanwhile are. When the image is whole, that chain is reset to the snapshot
//! (trusted; its bits: what hosts changed during the restore, normally nothing), so the next
//! backup there is incremental against it; every other chain stays untrusted ("restored from
//! snapshot …"), its next backup reads everything. A restore that fails, or a process killed
//! while restoring (the chains' in-use flag), leaves every chain untrusted, never trusted.
//! A restore appends no backup record.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kura_nbd::Client;
use kura_repo::IndexedRepo;
use kura_repo::backup::CancelToken;
use kura_repo::lock::{RepoLock, Shared};
use kura_repo::progress::Progress;
use kura_repo::restore::{ImageTarget, RestoreOutcome, restore_image_into};
use kura_repo::snapshot::{Content, ImageInfo, SnapshotEntry};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::export::VolumeExport;
use crate::store::VolumeStore;

/// What a volume restore did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRestore {
    pub volume: String,
    /// The snapshot restored (full id).
    pub snapshot: String,
    pub size: u64,
    /// The volume was created for the restore.
    pub created: bool,
    /// Done by the volume's server (through its write path).
    pub served: bool,
    /// Clients were connected (`force`).
    pub clients: usize,
    /// Blobs that could not be read (the volume then holds a mix; its chains are untrusted).
    pub damaged: Vec<String>,
}

/// The image of an image snapshot, or why a snapshot cannot be restored into a volume.
pub(crate) fn image_of(snap: &SnapshotEntry) -> Result<&ImageInfo> {
    match &snap.snapshot.content {
        Content::Image(i) => Ok(i),
        Content::Tree { .. } => Err(Error::Invalid(format!(
            "snapshot {} is a file tree, not an image: restore it with `kura restore`",
            snap.id.short()
        ))),
    }
}

/// Create `name` with `size` bytes, or check that the existing volume has that size (or,
/// with `resize`, resize it: its whole content is replaced anyway). Returns whether it was
/// created.
pub(crate) fn prepare(store: &VolumeStore, name: &str, size: u64, resize: bool) -> Result<bool> {
    match store.meta(name) {
        Ok(m) if m.size == size => Ok(false),
        Ok(_) if resize => store.resize(name, size, true).map(|_| false),
        Ok(m) => Err(Error::Invalid(format!(
            "volume {name} has {} bytes, the snapshot's image {size}: restore into a new \
             volume, resize {name} first (kura volume resize {name} --size {size}), or \
             restore with --resize",
            m.size
        ))),
        Err(Error::NotFound(_)) => {
            store.create(name, size)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Restore into a volume no server holds: created if missing (resized to the image's size
/// if `resize`), opened by this process (a served volume is refused: its server restores it).
#[allow(clippy::too_many_arguments)]
pub fn restore_volume(
    store: &VolumeStore,
    name: &str,
    resize: bool,
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    snap: &SnapshotEntry,
    threads: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<VolumeRestore> {
    let info = image_of(snap)?;
    let created = prepare(store, name, info.size, resize)?;
    let export = match store.open_export(name) {
        Err(Error::InUse(_)) => {
            return Err(Error::InUse(format!(
                "volume {name} is in use: another process holds it (a volume server, a \
                 restore, or a backup)"
            )));
        }
        other => other?,
    };
    let r = restore_into(
        store, &export, repo, lock, snap, false, threads, progress, cancel,
    );
    // Closed cleanly here (chains written with the raw file's identity), errors included.
    let closed = export.shutdown();
    let mut r = r?;
    closed?;
    r.created = created;
    Ok(r)
}

/// The restore proper, into an open export: claim, check for clients, untrust, write, reset.
#[allow(clippy::too_many_arguments)]
pub(crate) fn restore_into(
    store: &VolumeStore,
    export: &Arc<VolumeExport>,
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    snap: &SnapshotEntry,
    force: bool,
    threads: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<VolumeRestore> {
    let name = export.name().to_string();
    let info = image_of(snap)?;
    if kura_nbd::Export::size(&**export) != info.size {
        return Err(Error::Invalid(format!(
            "volume {name} has {} bytes, the snapshot's image {}",
            kura_nbd::Export::size(&**export),
            info.size
        )));
    }
    export.claim_restore(force)?;
    // A client that has just said goodbye may still be on its way out: a moment's grace.
    let mut clients = store.clients(&name, export);
    for _ in 0..50 {
        if clients == 0 || force {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        clients = store.clients(&name, export);
    }
    if clients > 0 && !force {
        export.end_restore(None)?;
        return Err(Error::InUse(format!(
            "volume {name} is in use: {clients} client(s) connected, and a restore would \
             change the disk under them; disconnect them first, or restore anyway with --force"
        )));
    }
    let repo_id = repo.config().id;
    let s = snap.id.short();
    let mut loc = repo.location();
    if loc.len() > 48 {
        loc = repo_id.short();
    }
    if let Err(e) = export.begin_restore(
        repo_id,
        &format!(
            "a restore of snapshot {s} of {loc} into the volume did not finish: it holds a \
             mix of old and restored data"
        ),
    ) {
        export.end_restore(None)?;
        return Err(e);
    }
    let out = restore_image_into(
        repo,
        lock,
        info,
        &IntoVolume(export),
        threads,
        progress,
        cancel,
    );
    let (ended, out) = match out {
        Ok(out) if out.damaged.is_empty() => {
            let why = format!(
                "the volume was restored from snapshot {s} of {loc}: changes since this \
                 repository's last backup are unknown"
            );
            (export.end_restore(Some((repo_id, snap.id, &why))), Ok(out))
        }
        Ok(out) => (export.end_restore(None), Ok(out)),
        Err(e) => (export.end_restore(None), Err(e)),
    };
    let out: RestoreOutcome = out?;
    ended?;
    Ok(VolumeRestore {
        volume: name,
        snapshot: snap.id.to_hex(),
        size: info.size,
        created: false,
        served: false,
        clients,
        damaged: out.damaged.iter().map(|d| d.reason.clone()).collect(),
    })
}

/// A volume's write path as a restore's target.
struct IntoVolume<'a>(&'a VolumeExport);

impl ImageTarget for IntoVolume<'_> {
    fn size(&self) -> u64 {
        kura_nbd::Export::size(self.0)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.restore_write(offset, data)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.restore_zeroes(offset, len)
    }
    fn flush(&self) -> std::io::Result<()> {
        kura_nbd::Export::flush(self.0)
    }
}

/// Connections to one NBD export for a restore: writes go to whichever is free (an export
/// takes disjoint writes on several connections; each is flushed at the end).
struct IntoNbd {
    conns: Vec<Mutex<Client>>,
    next: AtomicUsize,
    size: u64,
}

impl IntoNbd {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, kura_nbd::ClientError>,
    ) -> std::io::Result<T> {
        let mut g = self.conns.iter().find_map(|c| c.try_lock().ok());
        if g.is_none() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
            g = Some(self.conns[i].lock().unwrap_or_else(|p| p.into_inner()));
        }
        match g {
            Some(mut c) => f(&mut c).map_err(std::io::Error::other),
            None => Err(std::io::Error::other("no NBD connection")),
        }
    }
}

impl ImageTarget for IntoNbd {
    fn size(&self) -> u64 {
        self.size
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.with(|c| c.write_at(offset, data))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.with(|c| c.write_zeroes(offset, len))
    }
    fn flush(&self) -> std::io::Result<()> {
        for c in &self.conns {
            c.lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush()
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

/// Restore an image snapshot into the NBD export at `url` (`nbd://HOST[:PORT]/EXPORT` or
/// `nbd+unix:///EXPORT?socket=PATH`): the export must be writable and at least the image's
/// size (bytes past it are left alone); zeros are sent as `WRITE_ZEROES` where the export
/// offers it. Up to `threads` connections (at most 4) write at once.
pub fn restore_to_nbd(
    url: &str,
    repo: &IndexedRepo,
    lock: &RepoLock<Shared>,
    snap: &SnapshotEntry,
    threads: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreOutcome> {
    let info = image_of(snap)?;
    let first = Client::connect(url)?;
    if first.read_only() {
        return Err(Error::Invalid(format!("NBD export {url} is read-only")));
    }
    let size = first.size();
    if size < info.size {
        return Err(Error::Invalid(format!(
            "NBD export {url} has {size} bytes, the image needs {}",
            info.size
        )));
    }
    let mut conns = vec![Mutex::new(first)];
    for _ in 1..threads.clamp(1, 4) {
        match Client::connect(url) {
            Ok(c) => conns.push(Mutex::new(c)),
            // A server that takes one client at a time: one connection it is.
            Err(e) => {
                tracing::debug!("NBD restore: one more connection to {url}: {e}");
                break;
            }
        }
    }
    let target = IntoNbd {
        conns,
        next: AtomicUsize::new(0),
        size,
    };
    let out = restore_image_into(repo, lock, info, &target, threads, progress, cancel)?;
    for c in target.conns {
        c.into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .disconnect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_nbd::Export;
    use kura_repo::Id;

    #[test]
    fn a_finished_restore_resets_its_chain_and_untrusts_the_others_a_failed_one_all() {
        let d = tempfile::tempdir().unwrap();
        let st = VolumeStore::open(d.path()).unwrap();
        st.create("v", 32 << 20).unwrap();
        let (a, b, snap) = (Id([1; 32]), Id([2; 32]), Id([9; 32]));
        let e = st.open_export("v").unwrap();
        for repo in [a, b] {
            let f = e.chains().freeze(repo);
            e.chains().thaw_done(&f, Id([3; 32])).unwrap();
        }
        // A restore from A: its own writes unmarked, a host's write meanwhile marked.
        e.claim_restore(true).unwrap();
        assert!(e.claim_restore(true).is_err(), "one restore at a time");
        e.begin_restore(a, "unfinished").unwrap();
        e.restore_write(0, &[1u8; 4096]).unwrap();
        e.restore_zeroes(8 << 20, 4 << 20).unwrap();
        e.write_at(20 << 20, &[2u8; 512], false).unwrap();
        e.end_restore(Some((a, snap, "restored"))).unwrap();
        let states = e.chains().states();
        let ca = states
            .iter()
            .find(|c| c.repository_id == a.to_hex())
            .unwrap();
        let cb = states
            .iter()
            .find(|c| c.repository_id == b.to_hex())
            .unwrap();
        assert!(ca.trusted && ca.base == Some(snap.to_hex()), "{ca:?}");
        assert_eq!(ca.dirty_bytes, 4 << 20, "only the host's write is dirty");
        assert_eq!(
            (cb.trusted, cb.reason.as_deref()),
            (false, Some("restored"))
        );
        // A restore that fails: every chain stays untrusted, for why it began.
        e.claim_restore(false).unwrap();
        e.begin_restore(b, "unfinished").unwrap();
        e.end_restore(None).unwrap();
        assert!(
            e.chains()
                .states()
                .iter()
                .all(|c| !c.trusted && c.reason.as_deref() == Some("unfinished"))
        );
        drop(e);
        st.shutdown().unwrap();
        assert!(!st.info("v").unwrap().dirty.trusted);
    }
}
