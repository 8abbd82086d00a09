//! One repository written to several targets at once (issue 5's mirror mode, seed 001).
//!
//! The targets of a *repository group* share the master key and the chunking parameters, so
//! the repository layer above produces exactly one byte stream of files and this backend fans
//! each file out to every member. The members end up byte-identical without re-encoding.
//!
//! # Ordering and durability
//! - **Packs** are written behind: `put` queues the pack for each live member and returns;
//!   each member has its own writer threads and a byte-bounded queue. The repository's
//!   pipeline therefore runs at the speed of the slowest *live* member, never of a dead one.
//! - **Index files and snapshots** are queued too, as barriers: a member's writer starts one
//!   only when every file queued before it on that member is written, so a member never holds
//!   an index or snapshot naming a pack it does not have (the invariant a single backend gets
//!   from the pipeline's order) — without stalling the pipeline while the queues drain. A
//!   snapshot `put` then waits until the snapshot is written on every live member.
//! - **Locks, keys, config** are written to every live member directly.
//!
//! # Dropping a member
//! A member whose write fails (after its own retries within its deadline) or whose queue
//! makes no progress for `stall_timeout` is dropped with the reason; it gets nothing more
//! (in particular no snapshot, so it never claims the backup). Writes succeed while at least
//! `quorum` members are live; below that every write fails with the members' reasons, and
//! no further index or snapshot is written anywhere. (Targets have no common transaction: if
//! members fail *during* the snapshot's own write, those that finished it keep it.)
//!
//! # Reads
//! Reads go to the first live member that answers. Listings of packs, index files and
//! snapshots are the *intersection* over live members: after a member missed a backup, only
//! what every member holds counts as present, so deduplication never skips a chunk that one
//! member lacks. Lock listings are the union (a lock anywhere is a lock).
//!
//! Deletes go to every live member; one that fails (other than "not found") is dropped,
//! and below the quorum the delete fails. Every call to members outside the writer threads
//! goes through [`Members`] (bounded by the stall timeout, on the shared deadline pool).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::members::{Members, Merge, Missed, merge};
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// How a mirror behaves.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Writes succeed while at least this many members are live (1..=members).
    pub quorum: usize,
    /// Bytes of packs queued per member before `put` waits for it.
    pub queue_bytes: usize,
    /// A member whose queue makes no progress this long is dropped.
    pub stall_timeout: Duration,
    /// Writer threads per member.
    pub writers: usize,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            quorum: 1,
            queue_bytes: 64 << 20,
            stall_timeout: Duration::from_secs(120),
            writers: 2,
        }
    }
}

/// What became of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub location: String,
    /// `None` while live; the reason once dropped.
    pub dropped: Option<String>,
    /// Files and bytes this member has durably written.
    pub files: u64,
    pub bytes: u64,
    /// How long it has had a write in flight (waits for its traffic limit included): with
    /// `bytes`, its pace when busy — a member idle for want of data has a high one, the
    /// one holding the mirror back is busy all the time.
    pub busy: Duration,
    /// Bytes queued for it, not yet written.
    pub queued: u64,
    /// Dropped on purpose ([`MirrorBackend::drop_while_quorum_holds`]), not for a fault.
    pub spared: bool,
}

struct Queue {
    items: VecDeque<(FileKind, String, Bytes)>,
    queued_bytes: usize,
    in_flight: usize,
    /// Files completed; waiters watch it to tell a slow member from a stalled one.
    done: u64,
    bytes: u64,
    dropped: Option<String>,
    closing: bool,
    /// Abandoned by the caller ([`MirrorBackend::abandon`]): nothing more is queued or
    /// written behind; the member stays live.
    abandoned: bool,
    /// Dropped on purpose ([`MirrorBackend::drop_while_quorum_holds`]): nothing more is
    /// written to it, but the run's lock is still removed from it at the end.
    spared: bool,
    /// Time with a write in flight before `busy_since` (see [`MemberStatus::busy`]).
    busy: Duration,
    /// Since when a write is in flight, while one is.
    busy_since: Option<Instant>,
}

impl Queue {
    fn begin_write(&mut self) {
        if self.in_flight == 0 {
            self.busy_since = Some(Instant::now());
        }
        self.in_flight += 1;
    }

    fn end_write(&mut self, len: usize) {
        self.in_flight -= 1;
        self.queued_bytes = self.queued_bytes.saturating_sub(len);
        if self.in_flight == 0
            && let Some(since) = self.busy_since.take()
        {
            self.busy += since.elapsed();
        }
    }

    fn busy(&self) -> Duration {
        self.busy + self.busy_since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

struct Member {
    backend: Arc<dyn Backend>,
    q: Mutex<Queue>,
    cv: Condvar,
    /// Live members of the whole mirror and its quorum, shared by all members: a writer does
    /// not write a snapshot once the mirror fell below its quorum.
    live: Arc<std::sync::atomic::AtomicUsize>,
    quorum: usize,
    /// The mirror's [`MirrorBackend::abandoned`], shared: a writer whose run was cancelled
    /// under it ([`ErrorKind::Cancelled`]) abandons the whole mirror's writes.
    group_abandoned: Arc<Mutex<Option<String>>>,
}

impl Member {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A writer thread never panics while holding the lock (no user code runs under it);
        // if one did, the queue's data is still consistent, so keep going.
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drop_with(&self, q: &mut Queue, reason: String) {
        if q.dropped.is_none() {
            tracing::info!("mirror: dropping {}: {reason}", self.backend.location());
            q.dropped = Some(reason);
            self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        q.items.clear();
        q.queued_bytes = 0;
        self.cv.notify_all();
    }

    /// Wait until `ready(q)` or the member is dropped; a wait without progress for `stall`
    /// drops it. Returns whether it is still live.
    fn wait_for(&self, stall: Duration, what: &str, ready: impl Fn(&Queue) -> bool) -> bool {
        let mut q = self.lock();
        let mut seen = q.done;
        let mut since = Instant::now();
        loop {
            if q.dropped.is_some() || q.abandoned {
                return false;
            }
            if ready(&q) {
                return true;
            }
            // A member waiting for its traffic limit is slow on purpose, not stalled.
            if q.done != seen || self.backend.pacing() {
                seen = q.done;
                since = Instant::now();
            }
            let left = stall.saturating_sub(since.elapsed());
            if left.is_zero() {
                let reason = format!(
                    "stalled: no write finished for {} s while {what}",
                    stall.as_secs()
                );
                self.drop_with(&mut q, reason);
                return false;
            }
            q = self
                .cv
                .wait_timeout(q, left.min(Duration::from_millis(500)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn writer(self: Arc<Self>) {
        loop {
            let (kind, name, data) = {
                let mut q = self.lock();
                loop {
                    if q.dropped.is_some() || q.abandoned || (q.closing && q.items.is_empty()) {
                        return;
                    }
                    // A barrier (index, snapshot) waits at the front until every write
                    // before it finished: a member never holds an index naming a pack it
                    // does not have, or a snapshot before its index.
                    let front_ready = match q.items.front() {
                        Some((FileKind::Index | FileKind::Snapshot, _, _)) => q.in_flight == 0,
                        Some(_) => true,
                        None => false,
                    };
                    if front_ready && let Some(item) = q.items.pop_front() {
                        q.begin_write();
                        break item;
                    }
                    q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            let len = data.len();
            if kind == FileKind::Snapshot
                && self.live.load(std::sync::atomic::Ordering::SeqCst) < self.quorum
            {
                // The backup failed (below quorum): this member must not claim it.
                let mut q = self.lock();
                q.end_write(len);
                self.cv.notify_all();
                continue;
            }
            let r = self.backend.put(kind, &name, data);
            let mut q = self.lock();
            q.end_write(len);
            match r {
                Ok(()) => {
                    q.done += 1;
                    q.bytes += len as u64;
                    self.cv.notify_all();
                }
                // The run gave up (not the member): nothing more is sent, as by `abandon`
                // (the mirror's next call spreads it to the other members).
                Err(e) if e.kind() == ErrorKind::Cancelled => {
                    self.group_abandoned
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(|| format!("the run was cancelled ({e})"));
                    q.abandoned = true;
                    q.items.clear();
                    q.queued_bytes = 0;
                    self.cv.notify_all();
                }
                Err(e) => self.drop_with(&mut q, format!("{e}")),
            }
        }
    }
}

/// A backend that writes every file to each of its members (see the module docs).
pub struct MirrorBackend {
    members: Vec<Arc<Member>>,
    /// The same targets, for calls made on the caller's behalf (bounded by the stall
    /// timeout) and for the group's location.
    targets: Members,
    opts: MirrorOptions,
    /// Writer threads with the index of their member.
    threads: Mutex<Vec<(usize, std::thread::JoinHandle<()>)>>,
    /// Why the caller abandoned the writes behind, if it did ([`MirrorBackend::abandon`]).
    abandoned: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for MirrorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorBackend")
            .field("location", &self.location())
            .finish()
    }
}

impl MirrorBackend {
    pub fn new(backends: Vec<Arc<dyn Backend>>, opts: MirrorOptions) -> Result<MirrorBackend> {
        if backends.is_empty() || opts.quorum == 0 || opts.quorum > backends.len() {
            return Err(BackendError::new(
                ErrorKind::Other,
                "mirror",
                "",
                "mirror",
                format!(
                    "quorum {} must be between 1 and the number of targets ({})",
                    opts.quorum,
                    backends.len()
                ),
            ));
        }
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(backends.len()));
        let abandoned = Arc::new(Mutex::new(None));
        let targets = Members::new("mirror", backends.clone());
        let members: Vec<Arc<Member>> = backends
            .into_iter()
            .map(|backend| {
                Arc::new(Member {
                    live: Arc::clone(&live),
                    quorum: opts.quorum,
                    group_abandoned: Arc::clone(&abandoned),
                    backend,
                    q: Mutex::new(Queue {
                        items: VecDeque::new(),
                        queued_bytes: 0,
                        in_flight: 0,
                        done: 0,
                        bytes: 0,
                        dropped: None,
                        closing: false,
                        abandoned: false,
                        spared: false,
                        busy: Duration::ZERO,
                        busy_since: None,
                    }),
                    cv: Condvar::new(),
                })
            })
            .collect();
        let mut threads = Vec::new();
        for (mi, m) in members.iter().enumerate() {
            for i in 0..opts.writers.max(1) {
                let m = Arc::clone(m);
                let t = std::thread::Builder::new()
                    .name(format!("mirror-w{i}"))
                    .spawn(move || m.writer())
                    .map_err(|e| {
                        BackendError::new(
                            ErrorKind::Other,
                            "mirror",
                            "",
                            "mirror",
                            format!("start writer: {e}"),
                        )
                    })?;
                threads.push((mi, t));
            }
        }
        Ok(MirrorBackend {
            members,
            targets,
            opts,
            threads: Mutex::new(threads),
            abandoned,
        })
    }

    /// How many members must finish for a backup to succeed.
    pub fn quorum(&self) -> usize {
        self.opts.quorum
    }

    /// The member backends, in the order given.
    pub fn members(&self) -> Vec<Arc<dyn Backend>> {
        self.targets.all().to_vec()
    }

    /// Drop a member by hand (its reason is recorded), e.g. when a probe found it unhealthy.
    pub fn drop_member(&self, index: usize, reason: &str) {
        if let Some(m) = self.members.get(index) {
            let mut q = m.lock();
            m.drop_with(&mut q, reason.to_string());
        }
    }

    /// Abandon what is written behind (a cancelled backup): queued packs, index files and
    /// snapshots are discarded, writes in progress finish, and every later queued write — a
    /// snapshot waiting for its barrier included — fails with `why`. The members stay live
    /// and healthy: locks, keys and deletes still reach them (a cancelled run releases its
    /// lock), and what they already hold stays.
    pub fn abandon(&self, why: &str) {
        {
            let mut a = self.abandoned.lock().unwrap_or_else(|p| p.into_inner());
            if a.is_none() {
                *a = Some(why.to_string());
            }
        }
        for m in &self.members {
            let mut q = m.lock();
            q.abandoned = true;
            q.items.clear();
            q.queued_bytes = 0;
            m.cv.notify_all();
        }
    }

    fn check_abandoned(&self, op: &'static str, name: &str) -> Result<()> {
        // (Read into a binding first: `abandon` takes the same lock.)
        let abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match abandoned {
            None => Ok(()),
            Some(why) => {
                // A writer's cancelled upload abandons the mirror too: spread it.
                self.abandon(&why);
                Err(BackendError::new(
                    ErrorKind::Cancelled,
                    op,
                    name,
                    self.location(),
                    format!("the writes were abandoned: {why}"),
                ))
            }
        }
    }

    /// Each member's state, in the order given to [`new`](Self::new).
    pub fn status(&self) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|m| {
                let q = m.lock();
                MemberStatus {
                    location: m.backend.location(),
                    dropped: q.dropped.clone(),
                    files: q.done,
                    bytes: q.bytes,
                    busy: q.busy(),
                    queued: q.queued_bytes as u64,
                    spared: q.spared,
                }
            })
            .collect()
    }

    /// Drop member `index` on purpose (it would make the run overrun its window): nothing
    /// more is written to it, and the backup goes on with the others. Refused — with the
    /// reason — when it is dropped already or the live members would fall below the
    /// quorum.
    pub fn drop_while_quorum_holds(
        &self,
        index: usize,
        reason: &str,
    ) -> std::result::Result<(), String> {
        let Some(m) = self.members.get(index) else {
            return Err(format!("no member {index}"));
        };
        let live = self.live().len();
        let mut q = m.lock();
        if let Some(why) = &q.dropped {
            return Err(format!("dropped already: {why}"));
        }
        if live <= self.opts.quorum {
            return Err(format!(
                "{live} of {} targets live, quorum {}: none may go",
                self.members.len(),
                self.opts.quorum
            ));
        }
        q.spared = true;
        m.drop_with(&mut q, reason.to_string());
        Ok(())
    }

    /// Wait until every live member has written everything queued (or was dropped).
    pub fn flush(&self) -> Result<()> {
        for m in &self.members {
            m.wait_for(self.opts.stall_timeout, "flushing", |q| {
                q.items.is_empty() && q.in_flight == 0
            });
        }
        self.check_quorum("flush", "")
    }

    fn live(&self) -> Vec<&Arc<Member>> {
        self.members
            .iter()
            .filter(|m| m.lock().dropped.is_none())
            .collect()
    }

    fn check_quorum(&self, op: &'static str, name: &str) -> Result<()> {
        let live = self.live().len();
        if live >= self.opts.quorum {
            return Ok(());
        }
        let dropped: Vec<(usize, String)> = self
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.lock().dropped.clone().map(|r| (i, r)))
            .collect();
        let reasons = self
            .targets
            .reasons(dropped.iter().map(|(i, r)| (*i, r.as_str())));
        Err(BackendError::new(
            ErrorKind::Unreachable,
            op,
            name,
            self.location(),
            format!(
                "{live} of {} targets left, quorum {} lost ({})",
                self.members.len(),
                self.opts.quorum,
                reasons
            ),
        ))
    }

    /// Indices of the live members.
    fn live_indices(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].lock().dropped.is_none())
            .collect()
    }

    fn drop_index(&self, i: usize, reason: String) {
        let m = &self.members[i];
        let mut q = m.lock();
        m.drop_with(&mut q, reason);
    }

    /// Run `f` on every live member at once and wait at most the stall timeout for the
    /// answers (see [`Members::each`]). A member that does not answer in time is dropped;
    /// one that fails is dropped too unless `keep_on_error` says the error is an answer
    /// (e.g. "not found"). Returns (member index, result) for every member asked.
    fn on_each<T: Send + 'static>(
        &self,
        op: &'static str,
        name: &str,
        keep_on_error: impl Fn(&BackendError) -> bool,
        f: impl Fn(&dyn Backend) -> Result<T> + Send + Sync + 'static,
    ) -> Vec<(usize, Result<T>)> {
        let live = self.live_indices();
        let answers = self
            .targets
            .each(&live, Some(self.opts.stall_timeout), op, name, f);
        answers
            .into_iter()
            .map(|(i, answer)| {
                if let Err(m) = &answer
                    && (m.stalled() || !keep_on_error(m.error()))
                {
                    self.drop_index(i, m.error().to_string());
                }
                (i, answer.map_err(Missed::into_error))
            })
            .collect()
    }

    /// Queue a file for every live member, waiting (up to the stall timeout) for room. Index
    /// files and snapshots are barriers: a writer starts one only when everything queued
    /// before it is written (see [`Member::writer`]).
    fn enqueue(&self, kind: FileKind, name: &str, data: &Bytes) {
        let cap = self.opts.queue_bytes;
        let len = data.len();
        for m in self.live() {
            let room = m.wait_for(self.opts.stall_timeout, "its queue was full", |q| {
                q.items.is_empty() || q.queued_bytes + len <= cap
            });
            if room {
                let mut q = m.lock();
                if q.dropped.is_none() {
                    q.items.push_back((kind, name.to_string(), data.clone()));
                    q.queued_bytes += len;
                    m.cv.notify_all();
                }
            }
        }
    }

    /// Write to every live member now, in parallel; a failure or a stall drops that member.
    fn put_direct(&self, kind: FileKind, name: &str, data: &Bytes) {
        let (n, d) = (name.to_string(), data.clone());
        let len = data.len() as u64;
        for (i, r) in self.on_each("put", name, |_| false, move |b| b.put(kind, &n, d.clone())) {
            if r.is_ok() {
                let mut q = self.members[i].lock();
                q.done += 1;
                q.bytes += len;
            }
        }
    }

    /// Read one file from every live member (e.g. to compare their configs); a member that
    /// stalls or fails other than "not found" is dropped.
    pub fn get_each(&self, kind: FileKind, name: &str) -> Vec<(usize, Result<Vec<u8>>)> {
        let n = name.to_string();
        self.on_each(
            "get",
            name,
            |e| e.kind() == ErrorKind::NotFound,
            move |b| b.get(kind, &n),
        )
    }

    /// The first live member's answer; on an error (or a stall) the next one is asked (a
    /// member that missed a backup may lack a file another has). A member that stalls is
    /// dropped; one that answers with an error is not (another may serve the file).
    fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        name: &str,
        f: impl Fn(&dyn Backend) -> Result<T> + Send + Sync + 'static,
    ) -> Result<T> {
        let limit = Some(self.opts.stall_timeout);
        self.targets
            .read_first(self.live_indices(), limit, op, name, f, |i, m| {
                if m.stalled() {
                    self.drop_index(i, m.error().to_string());
                }
            })
    }
}

impl Drop for MirrorBackend {
    fn drop(&mut self) {
        for m in &self.members {
            let mut q = m.lock();
            q.closing = true;
            m.cv.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for (mi, t) in threads {
            // A dropped member's writer may sit in a put until that target's deadline; it
            // holds its own reference and ends by itself. Live members' writers are done.
            if self.members[mi].lock().dropped.is_none() {
                let _ = t.join();
            }
        }
    }
}

impl Backend for MirrorBackend {
    fn location(&self) -> String {
        self.targets.location()
    }

    fn create(&self) -> Result<()> {
        self.targets.create_all()
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        self.check_quorum("put", name)?;
        if matches!(kind, FileKind::Pack | FileKind::Index | FileKind::Snapshot) {
            self.check_abandoned("put", name)?;
        }
        match kind {
            FileKind::Pack | FileKind::Index => self.enqueue(kind, name, &data),
            FileKind::Snapshot => {
                // Queued behind everything before it, then waited for: the backup succeeds
                // only once its snapshot is durable on at least the quorum.
                self.enqueue(kind, name, &data);
                for m in self.live() {
                    m.wait_for(self.opts.stall_timeout, "writing the snapshot", |q| {
                        q.items.is_empty() && q.in_flight == 0
                    });
                }
                self.check_abandoned("put", name)?;
            }
            _ => self.put_direct(kind, name, &data),
        }
        self.check_quorum("put", name)
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let n = name.to_string();
        self.read("get", name, move |b| b.get(kind, &n))
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let n = name.to_string();
        *buf = self.read("get", name, move |b| b.get_range(kind, &n, offset, len))?;
        Ok(())
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        let answers = self.on_each("list", kind.dir(), |_| false, move |b| b.list(kind));
        self.check_quorum("list", kind.dir())?;
        let lists = answers.into_iter().filter_map(|(_, r)| r.ok());
        Ok(merge(lists, Merge::for_writers(kind)))
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        let n = name.to_string();
        self.read("stat", name, move |b| b.stat(kind, &n))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let n = name.to_string();
        // A member that fails (other than "not found": already gone) is dropped with the
        // reason; below the quorum the delete fails, naming every dropped member's reason.
        self.on_each(
            "delete",
            name,
            |e| e.kind() == ErrorKind::NotFound,
            move |b| b.delete(kind, &n),
        );
        if kind == FileKind::Lock {
            // A member dropped on purpose still loses the run's lock (best effort).
            let spared: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].lock().spared)
                .collect();
            if !spared.is_empty() {
                let n = name.to_string();
                let limit = Some(self.opts.stall_timeout);
                for (i, r) in self
                    .targets
                    .each(&spared, limit, "delete", name, move |b| b.delete(kind, &n))
                {
                    if let Err(e) = r {
                        tracing::warn!(
                            "mirror: removing lock {name} from {}: {}",
                            self.members[i].backend.location(),
                            e.error()
                        );
                    }
                }
            }
        }
        self.check_quorum("delete", name)
    }

    fn free_space(&self) -> Result<Option<u64>> {
        let mut min: Option<u64> = None;
        for m in self.live() {
            if let Some(v) = m.backend.free_space()? {
                min = Some(min.map_or(v, |x| x.min(v)));
            }
        }
        Ok(min)
    }
}
