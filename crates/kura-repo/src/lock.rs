//! Repository locks.
//!
//! A lock is a small sealed file in `locks/` (magic `KURALCK1`) naming the host, user, process,
//! the time it was taken (`since`) and last refreshed (`time`), and whether it is exclusive.
//!
//! **Who excludes whom.** Backup, restore, check, forget and the readers take *shared* locks;
//! prune (and `forget --prune`) take an *exclusive* lock. Exclusive locks exclude only each
//! other: two processes that delete packs or index files never run together, but a prune runs
//! beside backups and checks. That is safe because prune never deletes a pack directly — it
//! *condemns* it (see [`crate::prune`]) and deletes it only after every lock taken before the
//! condemnation is gone. So the locks that matter to a prune are the ones that are *live*, and
//! a backup must know whether its own lock stayed live the whole time.
//!
//! Taking a lock writes the lock file first and then lists the others: two processes racing
//! both see each other, and both back off if they conflict, so no interleaving lets two
//! conflicting holders proceed.
//!
//! **Keeping a lock.** A held lock is rewritten every [`refresh_interval`] (default 1 min) by a
//! background thread. A lock is **stale** when its process is gone (same host, PID not alive)
//! or it has not been refreshed for [`stale_after`] (default 30 min, i.e. 30 refresh intervals,
//! so a few failed refreshes never make a lock stale); stale locks are ignored (and reported)
//! when locking and by prune, and `kura unlock` removes them. The holder records every refresh:
//! [`RepoLock::verify`] fails with [`Error::LockLost`] when the lock file was removed by someone
//! else, or when more than half the staleness window ever passed without a successful refresh
//! (the process was stopped, the machine suspended, the target refused the writes) — then
//! another process may have judged the lock stale and acted on it. A backup verifies its lock
//! before and after writing its snapshot and writes none (or removes it) if the lock was lost.
//!
//! `KURA_LOCK_REFRESH` and `KURA_LOCK_STALE` (durations such as `2s`; a number alone is
//! seconds) override the two intervals; they exist for tests and unusual deployments, and
//! every process sharing a repository must agree on the staleness window.

use std::marker::PhantomData;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
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

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// A duration from the environment (the one grammar: `30s`, `2m`; a number alone is
/// seconds), else `default`; a value that does not parse is warned of and ignored.
fn env_duration(name: &str, default: Duration) -> Duration {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    match kura_types::Duration::parse_positive(&v) {
        Ok(d) => d.std(),
        Err(e) => {
            tracing::warn!("{name}: {e}; using {}s", default.as_secs());
            default
        }
    }
}

/// How often a held lock is rewritten (`KURA_LOCK_REFRESH`, a duration; default 60 s).
pub fn refresh_interval() -> Duration {
    static V: OnceLock<Duration> = OnceLock::new();
    *V.get_or_init(|| env_duration("KURA_LOCK_REFRESH", REFRESH_INTERVAL))
}

/// After how long without a refresh a lock is stale (`KURA_LOCK_STALE`, a duration; default
/// 30 min).
pub fn stale_after() -> Duration {
    static V: OnceLock<Duration> = OnceLock::new();
    *V.get_or_init(|| env_duration("KURA_LOCK_STALE", STALE_AFTER))
}

/// Contents of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub time: Timestamp,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
    /// When the lock was taken (unchanged by refreshes). Lock files written before this field
    /// existed read as the epoch: taken before anything, which is the safe reading.
    #[serde(default)]
    pub since: Timestamp,
}

impl LockInfo {
    fn current(exclusive: bool, since: Timestamp) -> LockInfo {
        LockInfo {
            since,
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
        if age > stale_after().as_secs() as i64 {
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

/// How many listings [`list_locks`] takes at most while lock files vanish under it.
const LIST_ATTEMPTS: usize = 8;

/// Every lock in the repository. Unreadable lock files are reported as stale.
///
/// A refresh writes the holder's new lock file before it removes the old one, so a file that
/// vanishes between the listing and its read may have been replaced by one the listing did
/// not see: the locks are then listed again and the names not seen before are read, until a
/// listing brings no vanished file. (A prune that missed a live lock could delete packs its
/// holder relies on.)
pub fn list_locks(repo: &Repository) -> Result<Vec<ListedLock>> {
    let mut out: Vec<ListedLock> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for _ in 0..LIST_ATTEMPTS {
        let mut vanished = false;
        for f in repo.backend().list(FileKind::Lock)? {
            if !seen.insert(f.name.clone()) {
                continue;
            }
            match read_lock(repo, f.name)? {
                Some(l) => out.push(l),
                None => vanished = true,
            }
        }
        if !vanished {
            return Ok(out);
        }
    }
    Err(Error::Backend(kura_backend::BackendError::new(
        ErrorKind::Other,
        "list",
        "locks",
        repo.location(),
        format!("lock files kept vanishing while they were read ({LIST_ATTEMPTS} listings)"),
    )))
}

/// Read one listed lock file; `None` when it is gone.
fn read_lock(repo: &Repository, name: String) -> Result<Option<ListedLock>> {
    let bytes = match repo.backend().get(FileKind::Lock, &name) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let what = format!("lock {name}");
    Ok(Some(
        match open_file(repo.key(), MAGIC_LOCK, &bytes, &what)
            .and_then(|b| from_cbor::<LockInfo>(&b, &what))
        {
            Ok(info) => ListedLock {
                name,
                stale: info.stale_reason(),
                info,
            },
            Err(e) => ListedLock {
                name,
                info: LockInfo {
                    time: Timestamp::default(),
                    exclusive: false,
                    hostname: String::new(),
                    username: String::new(),
                    pid: 0,
                    since: Timestamp::default(),
                },
                stale: Some(format!("unreadable: {e}")),
            },
        },
    ))
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

/// Marker: a shared lock (backup, restore, check, forget, readers).
#[derive(Debug)]
pub struct Shared;
/// Marker: an exclusive lock (prune: deletes packs and index files). Excludes other exclusive
/// locks only.
#[derive(Debug)]
pub struct Exclusive;

/// What the refresher knows about the lock it keeps.
#[derive(Debug)]
struct Health {
    /// Wall-clock seconds of the last successful write of the lock file.
    last_ok: i64,
    /// Longest time between two successful writes so far.
    worst_gap: i64,
    /// Refreshes that failed since the last success.
    failures: u32,
    /// Set when the lock file was found removed by someone else.
    removed: Option<String>,
}

/// A held lock; released (file deleted) on drop. Operations that need a lock take a
/// `&RepoLock<Shared>` or `&RepoLock<Exclusive>` so they cannot be called without one.
pub struct RepoLock<K> {
    backend: Arc<dyn Backend>,
    location: String,
    name: Arc<Mutex<String>>,
    health: Arc<Mutex<Health>>,
    since: Timestamp,
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

    /// A shared lock for a command that only reads (restore, check): when the lock file
    /// cannot be written because the repository refuses writes (read-only mount, permission
    /// denied), go on without one and say so, as restic does. Nothing is then written to the
    /// repository location.
    pub fn shared_or_read_only(repo: &Repository) -> Result<RepoLock<Shared>> {
        match acquire(repo, false) {
            Ok(l) => Ok(l),
            Err(Error::Backend(e)) if e.kind() == ErrorKind::PermissionDenied => {
                tracing::warn!(
                    "cannot write a lock in {} ({e}); reading without a lock",
                    repo.location()
                );
                Ok(Self::none(repo))
            }
            Err(e) => Err(e),
        }
    }

    /// No lock at all, for a reader that asked for none (`--no-lock`) or cannot write one.
    /// It writes nothing; a concurrent prune does not see it, so what the reader reads may be
    /// condemned and deleted under it (reads then fail; they never return wrong data).
    /// [`RepoLock::verify`] always fails: a writer must hold a real lock.
    pub fn none(repo: &Repository) -> RepoLock<Shared> {
        RepoLock {
            backend: repo.backend_arc(),
            location: repo.location(),
            name: Arc::new(Mutex::new(String::new())),
            health: Arc::new(Mutex::new(Health {
                last_ok: now_secs(),
                worst_gap: 0,
                failures: 0,
                removed: Some("no lock was taken".into()),
            })),
            since: Timestamp::now(),
            stop: None,
            refresher: None,
            ignored_stale: Vec::new(),
            abandoned: true,
            _kind: PhantomData,
        }
    }
}

impl RepoLock<Exclusive> {
    pub fn exclusive(repo: &Repository) -> Result<RepoLock<Exclusive>> {
        acquire(repo, true)
    }
}

fn now_secs() -> i64 {
    Timestamp::now().0
}

fn acquire<K>(repo: &Repository, exclusive: bool) -> Result<RepoLock<K>> {
    let backend = repo.backend_arc();
    let since = Timestamp::now();
    let mine = LockInfo::current(exclusive, since);
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
                &l.name[..8.min(l.name.len())]
            );
            ignored_stale.push(l);
            continue;
        }
        if exclusive && l.info.exclusive {
            let _ = backend.delete(FileKind::Lock, &name);
            return Err(Error::Locked {
                location: repo.location(),
                detail: l.info.describe(),
            });
        }
    }
    let name = Arc::new(Mutex::new(name));
    let health = Arc::new(Mutex::new(Health {
        last_ok: now_secs(),
        worst_gap: 0,
        failures: 0,
        removed: None,
    }));
    let (stop, stopped) = mpsc::channel::<()>();
    let refresher = {
        let backend = backend.clone();
        let name = name.clone();
        let health = health.clone();
        let key = repo.key().clone();
        std::thread::Builder::new()
            .name("kura-lock-refresh".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(refresh_interval())
                {
                    refresh(backend.as_ref(), &key, &name, &health, exclusive, since);
                }
            })
            .map_err(|e| Error::io("start lock refresher", e))?
    };
    Ok(RepoLock {
        backend,
        location: repo.location(),
        name,
        health,
        since,
        stop: Some(stop),
        refresher: Some(refresher),
        ignored_stale,
        abandoned: false,
        _kind: PhantomData,
    })
}

/// One refresh: write a new lock file, then remove the previous one. Finding the previous one
/// already gone means someone removed our lock (`kura unlock --all`, or judged it stale): the
/// lock is lost for good, whatever later refreshes do.
fn refresh(
    backend: &dyn Backend,
    key: &MasterKey,
    name: &Mutex<String>,
    health: &Mutex<Health>,
    exclusive: bool,
    since: Timestamp,
) {
    let info = LockInfo::current(exclusive, since);
    let written = write_lock(backend, key, &info);
    let Ok(mut h) = health.lock() else { return };
    match written {
        Ok(new) => {
            let now = now_secs();
            h.worst_gap = h.worst_gap.max(now - h.last_ok);
            h.last_ok = now;
            h.failures = 0;
            if let Ok(mut cur) = name.lock() {
                let old = std::mem::replace(&mut *cur, new);
                match backend.delete(FileKind::Lock, &old) {
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        h.removed.get_or_insert_with(|| {
                            format!("lock file {} was removed by another process", short(&old))
                        });
                    }
                    Err(e) => tracing::warn!("removing old lock file {}: {e}", short(&old)),
                    Ok(()) => {}
                }
            }
        }
        Err(e) => {
            h.failures += 1;
            tracing::warn!(
                "refreshing lock failed ({} in a row; stale after {} s without one): {e}",
                h.failures,
                stale_after().as_secs()
            );
        }
    }
}

fn short(name: &str) -> &str {
    &name[..8.min(name.len())]
}

impl<K> RepoLock<K> {
    /// When this lock was taken.
    pub fn since(&self) -> Timestamp {
        self.since
    }

    /// Whether the lock was held without interruption from when it was taken until now: its
    /// file was never removed by someone else, and no more than half the staleness window
    /// ever passed between successful refreshes (so no other process can have judged it
    /// stale, with room for clock skew). The current lock file must still exist.
    pub fn verify(&self) -> Result<()> {
        let lost = |detail: String| Error::LockLost {
            location: self.location.clone(),
            detail,
        };
        let limit = (stale_after().as_secs() / 2) as i64;
        {
            let h = self
                .health
                .lock()
                .map_err(|_| lost("lock refresher panicked".into()))?;
            if let Some(why) = &h.removed {
                return Err(lost(why.clone()));
            }
            let gap = h.worst_gap.max(now_secs() - h.last_ok);
            if gap > limit {
                return Err(lost(format!(
                    "not refreshed for {gap} s (limit {limit} s: half the {} s staleness \
                     window; {} failed refresh(es) since the last success)",
                    stale_after().as_secs(),
                    h.failures
                )));
            }
        }
        let name = self
            .name
            .lock()
            .map_err(|_| lost("lock refresher panicked".into()))?;
        match self.backend.stat(FileKind::Lock, &name) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(lost(format!(
                "lock file {} was removed by another process",
                short(&name)
            ))),
            Err(e) => Err(lost(format!(
                "cannot confirm lock file {}: {e}",
                short(&name)
            ))),
        }
    }

    /// Release the lock after the work it guarded ended with `error` (if any): deleted as
    /// usual, or abandoned ([`Self::abandon`]) when the error says the target stopped
    /// answering ([`Failure::Unreachable`](crate::Failure)), so a dead target costs one
    /// deadline, not two.
    pub fn finish(self, error: Option<&(dyn std::error::Error + 'static)>) {
        match error.and_then(crate::Failure::find) {
            Some(crate::Failure::Unreachable) => self.abandon(),
            _ => drop(self),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(dir: &std::path::Path) -> Repository {
        crate::repo::test_repository(dir)
    }

    #[test]
    fn exclusive_excludes_only_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let ex = RepoLock::exclusive(&r).unwrap();
        assert!(matches!(RepoLock::exclusive(&r), Err(Error::Locked { .. })));
        let sh = RepoLock::shared(&r).unwrap();
        let sh2 = RepoLock::shared(&r).unwrap();
        drop((ex, sh, sh2));
        assert!(list_locks(&r).unwrap().is_empty());
    }

    #[test]
    fn verify_fails_once_the_lock_file_is_removed_and_for_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let l = RepoLock::shared(&r).unwrap();
        l.verify().unwrap();
        let info = &list_locks(&r).unwrap()[0];
        assert!(info.info.since.0 > 0 && !info.info.exclusive);
        remove_locks(&r, true).unwrap();
        assert!(matches!(l.verify(), Err(Error::LockLost { .. })));
        assert!(matches!(
            RepoLock::none(&r).verify(),
            Err(Error::LockLost { .. })
        ));
    }

    /// A backend that runs a hook just before the first read of a lock file: the moment a
    /// holder's refresh can land between a lister's listing and its read.
    struct RacyBackend {
        inner: kura_backend::LocalBackend,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl std::fmt::Debug for RacyBackend {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("RacyBackend")
        }
    }

    impl Backend for RacyBackend {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn create(&self) -> kura_backend::Result<()> {
            self.inner.create()
        }
        fn put(&self, k: FileKind, n: &str, d: kura_backend::Bytes) -> kura_backend::Result<()> {
            self.inner.put(k, n, d)
        }
        fn get(&self, k: FileKind, n: &str) -> kura_backend::Result<Vec<u8>> {
            if k == FileKind::Lock {
                let hook = self.hook.lock().unwrap().take();
                if let Some(h) = hook {
                    h();
                }
            }
            self.inner.get(k, n)
        }
        fn get_range_into(
            &self,
            k: FileKind,
            n: &str,
            o: u64,
            l: u64,
            b: &mut Vec<u8>,
        ) -> kura_backend::Result<()> {
            self.inner.get_range_into(k, n, o, l, b)
        }
        fn list(&self, k: FileKind) -> kura_backend::Result<Vec<kura_backend::FileInfo>> {
            self.inner.list(k)
        }
        fn stat(&self, k: FileKind, n: &str) -> kura_backend::Result<kura_backend::FileInfo> {
            self.inner.stat(k, n)
        }
        fn delete(&self, k: FileKind, n: &str) -> kura_backend::Result<()> {
            self.inner.delete(k, n)
        }
    }

    /// A live lock refreshed between a lister's listing and its read (new file written, old
    /// one removed) is still listed: a prune that missed it would delete packs its holder
    /// relies on.
    #[test]
    fn a_lock_refreshed_while_listed_is_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let racy = Arc::new(RacyBackend {
            inner: kura_backend::LocalBackend::new(dir.path().join("r")),
            hook: Mutex::new(None),
        });
        let opts = crate::repo::InitOptions {
            kdf: crate::crypto::KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            ..Default::default()
        };
        let r = Repository::init(racy.clone(), b"pw", &opts).unwrap();
        let held = RepoLock::shared(&r).unwrap();
        let (backend, key, name, health, since) = (
            held.backend.clone(),
            r.key().clone(),
            held.name.clone(),
            held.health.clone(),
            held.since,
        );
        *racy.hook.lock().unwrap() = Some(Box::new(move || {
            refresh(backend.as_ref(), &key, &name, &health, false, since);
        }));
        let seen = list_locks(&r).unwrap();
        assert!(racy.hook.lock().unwrap().is_none(), "the refresh ran");
        let live: Vec<_> = seen.iter().filter(|l| l.stale.is_none()).collect();
        assert_eq!(live.len(), 1, "{seen:?}");
        assert_eq!(live[0].info.since, since);
        held.verify().unwrap();
    }

    #[test]
    fn verify_fails_after_a_long_gap_between_refreshes() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let l = RepoLock::shared(&r).unwrap();
        if let Ok(mut h) = l.health.lock() {
            h.last_ok -= stale_after().as_secs() as i64; // as if stopped that long
        }
        let e = l.verify().unwrap_err();
        assert!(e.to_string().contains("not refreshed"), "{e}");
    }
}
