//! Repository locks.
//!
//! A lock is a small sealed file in `locks/` (magic `KURALCK1`) naming the host, user, process
//! and time, and whether it is exclusive. Backup, restore and check take *shared* locks and may
//! run together; maintenance (which deletes data) takes an *exclusive* lock and runs alone.
//!
//! Taking a lock writes the lock file first and then lists the others: two processes racing
//! both see each other, and both back off if they conflict, so no interleaving lets two
//! conflicting holders proceed.
//!
//! A held lock is rewritten every [`REFRESH_INTERVAL`] by a background thread. A lock is
//! **stale** when its process is gone (same host, PID not alive) or it has not been refreshed
//! for [`STALE_AFTER`]; stale locks are ignored (and reported) when locking, and
//! `kura unlock` removes them.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use kura_backend::{Backend, ErrorKind, FileKind};
use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::format::{BlobEncoder, MAGIC_LOCK, open_file};
use crate::id::Id;
use crate::repo::{Repository, cbor, from_cbor};
use crate::util::{Timestamp, hostname, username};

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Contents of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub time: Timestamp,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
}

impl LockInfo {
    fn current(exclusive: bool) -> LockInfo {
        LockInfo {
            time: Timestamp::now(),
            exclusive,
            hostname: hostname(),
            username: username(),
            pid: std::process::id(),
        }
    }

    /// Why this lock is stale, if it is.
    pub fn stale_reason(&self) -> Option<String> {
        if self.hostname == hostname() && !pid_alive(self.pid) {
            return Some(format!("process {} on {} is gone", self.pid, self.hostname));
        }
        let age = Timestamp::now().0.saturating_sub(self.time.0);
        if age > STALE_AFTER.as_secs() as i64 {
            return Some(format!("not refreshed for {} min", age / 60));
        }
        None
    }

    pub fn describe(&self) -> String {
        format!(
            "{} lock held by {}@{} (pid {}) since {}",
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.username,
            self.hostname,
            self.pid,
            self.time.to_rfc3339()
        )
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A lock file as listed.
#[derive(Debug, Clone)]
pub struct ListedLock {
    pub name: String,
    pub info: LockInfo,
    pub stale: Option<String>,
}

fn write_lock(backend: &dyn Backend, key: &MasterKey, info: &LockInfo) -> Result<String> {
    let sealed = BlobEncoder::new(0)?.seal_file(key, MAGIC_LOCK, &cbor(info)?)?;
    let name = Id::of_file(&sealed).to_hex();
    backend.put(FileKind::Lock, &name, sealed.into())?;
    Ok(name)
}

/// Every lock in the repository. Unreadable lock files are reported as stale.
pub fn list_locks(repo: &Repository) -> Result<Vec<ListedLock>> {
    let mut out = Vec::new();
    for f in repo.backend().list(FileKind::Lock)? {
        let bytes = match repo.backend().get(FileKind::Lock, &f.name) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        let what = format!("lock {}", f.name);
        match open_file(repo.key(), MAGIC_LOCK, &bytes, &what)
            .and_then(|b| from_cbor::<LockInfo>(&b, &what))
        {
            Ok(info) => out.push(ListedLock {
                name: f.name,
                stale: info.stale_reason(),
                info,
            }),
            Err(e) => out.push(ListedLock {
                name: f.name,
                info: LockInfo {
                    time: Timestamp::default(),
                    exclusive: false,
                    hostname: String::new(),
                    username: String::new(),
                    pid: 0,
                },
                stale: Some(format!("unreadable: {e}")),
            }),
        }
    }
    Ok(out)
}

/// Remove stale locks (or all locks with `all`). Returns the removed ones.
pub fn remove_locks(repo: &Repository, all: bool) -> Result<Vec<ListedLock>> {
    let mut removed = Vec::new();
    for l in list_locks(repo)? {
        if all || l.stale.is_some() {
            match repo.backend().delete(FileKind::Lock, &l.name) {
                Ok(()) => removed.push(l),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}

/// Marker: a shared lock (backup, restore, check).
#[derive(Debug)]
pub struct Shared;
/// Marker: an exclusive lock (maintenance that deletes data).
#[derive(Debug)]
pub struct Exclusive;

/// A held lock; released (file deleted) on drop. Operations that need a lock take a
/// `&RepoLock<Shared>` or `&RepoLock<Exclusive>` so they cannot be called without one.
pub struct RepoLock<K> {
    backend: Arc<dyn Backend>,
    name: Arc<std::sync::Mutex<String>>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
    /// Stale locks that were ignored when this lock was taken (for reporting).
    pub ignored_stale: Vec<ListedLock>,
    abandoned: bool,
    _kind: PhantomData<K>,
}

impl<K> std::fmt::Debug for RepoLock<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoLock")
    }
}

impl RepoLock<Shared> {
    pub fn shared(repo: &Repository) -> Result<RepoLock<Shared>> {
        acquire(repo, false)
    }
}

impl RepoLock<Exclusive> {
    pub fn exclusive(repo: &Repository) -> Result<RepoLock<Exclusive>> {
        acquire(repo, true)
    }
}

fn acquire<K>(repo: &Repository, exclusive: bool) -> Result<RepoLock<K>> {
    let backend = repo.backend_arc();
    let mine = LockInfo::current(exclusive);
    let name = write_lock(backend.as_ref(), repo.key(), &mine)?;
    let others = match list_locks(repo) {
        Ok(l) => l,
        Err(e) => {
            let _ = backend.delete(FileKind::Lock, &name);
            return Err(e);
        }
    };
    let mut ignored_stale = Vec::new();
    for l in others {
        if l.name == name {
            continue;
        }
        if let Some(reason) = &l.stale {
            tracing::warn!(
                "ignoring stale lock {} ({reason}); `kura unlock` removes it",
                &l.name[..8]
            );
            ignored_stale.push(l);
            continue;
        }
        if exclusive || l.info.exclusive {
            let _ = backend.delete(FileKind::Lock, &name);
            return Err(Error::Locked {
                location: repo.location(),
                detail: l.info.describe(),
            });
        }
    }
    let name = Arc::new(std::sync::Mutex::new(name));
    let (stop, stopped) = mpsc::channel::<()>();
    let refresher = {
        let backend = backend.clone();
        let name = name.clone();
        let key = repo.key().clone();
        std::thread::Builder::new()
            .name("kura-lock-refresh".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(REFRESH_INTERVAL)
                {
                    let info = LockInfo::current(exclusive);
                    match write_lock(backend.as_ref(), &key, &info) {
                        Ok(new) => {
                            if let Ok(mut cur) = name.lock() {
                                let old = std::mem::replace(&mut *cur, new);
                                let _ = backend.delete(FileKind::Lock, &old);
                            }
                        }
                        Err(e) => tracing::warn!("refreshing lock: {e}"),
                    }
                }
            })
            .map_err(|e| Error::io("start lock refresher", e))?
    };
    Ok(RepoLock {
        backend,
        name,
        stop: Some(stop),
        refresher: Some(refresher),
        ignored_stale,
        abandoned: false,
        _kind: PhantomData,
    })
}

impl<K> RepoLock<K> {
    /// Give the lock up without deleting its file: for when the target stopped answering,
    /// where a delete would only wait out another deadline. The file becomes a stale lock
    /// (its process is gone), which others ignore and `kura unlock` removes.
    pub fn abandon(mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        self.abandoned = true;
    }
}

impl<K> Drop for RepoLock<K> {
    fn drop(&mut self) {
        if self.abandoned {
            return;
        }
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        if let Ok(name) = self.name.lock()
            && let Err(e) = self.backend.delete(FileKind::Lock, &name)
        {
            tracing::warn!("removing lock {}: {e}", &name[..8.min(name.len())]);
        }
    }
}
