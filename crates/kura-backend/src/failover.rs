//! One repository written to one target at a time, moving on to the next when it fails
//! (issue 5's fail-over mode, seed 000/001: a stream that fails mid-job continues on a spare
//! subsystem, *extent by extent*, without starting over).
//!
//! The members form a repository group (same master key and chunking), so a pack has the
//! same bytes and name on every member and can be sent to any of them unchanged.
//!
//! # Extents and acknowledgement
//! The repository's saver writes an index file after every *extent* (about
//! [`FailoverOptions::extent_bytes`] of packs) and says which packs the index lists
//! ([`Backend::put_index`]). Here:
//! - A pack `put` is queued for the *active* member and kept in memory as *pending*; writer
//!   threads send it. `put` waits while an extent's worth of pack bytes is pending, so memory
//!   and the bytes that may have to be sent again are bounded.
//! - An index `put` waits until every pack it lists is durable on the active member, then
//!   writes the index there. Only when that returns is the extent *acknowledged*: its packs
//!   leave the pending set for good and a [`Section`] (member, index file, packs, bytes)
//!   is recorded. Nothing acknowledged is ever sent again.
//! - When a write to the active member fails (after that target's own retries), or nothing
//!   on it finishes for [`FailoverOptions::extent_timeout`], the member is marked failed
//!   with its reason and the next member in order becomes active; every pending pack (the
//!   unacknowledged extent, and the next pack already queued) is sent again to it. Writers
//!   of the old member are abandoned (a hung call ends on its own deadline; its result is
//!   ignored). With no member left, every write fails with each member's reason.
//!
//! So the bytes sent are at most the data plus, per fail-over, one extent (closed at the
//! first pack boundary past `extent_bytes`) and one queued pack.
//!
//! # Snapshot and records
//! The snapshot is written to the active member (failing over if that fails) and then, best
//! effort, to every other member that holds a section and has not failed: each live target
//! holding part of a backup names it. Catalog records go to the same set. A failed member is
//! not written to again in the run (each attempt would cost a whole deadline); `kura heal`
//! completes it once it is back.
//!
//! # Reads and listings
//! Reads try the active member first, then the others. Listings are the *intersection* over
//! members not failed (locks: the union): deduplication only skips a chunk every member
//! holds, so a backup's data lies in its own sections or on every target.
//!
//! Deletes go to every member not failed; one that cannot delete (other than "not found")
//! is failed with its reason, like one that cannot write, so what it keeps is reported. The
//! calls to members outside the writer threads go through [`Members`] (bounded by the extent
//! timeout, on the shared deadline pool).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::members::{Members, Merge, Missed, fallback_order, merge};
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// How a fail-over backend behaves.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Pack bytes that may be unacknowledged at once (the extent size).
    pub extent_bytes: u64,
    /// The active member is failed when nothing on it finishes for this long.
    pub extent_timeout: Duration,
    /// Writer threads for the active member.
    pub writers: usize,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            extent_bytes: 64 << 20,
            extent_timeout: Duration::from_secs(120),
            writers: 2,
        }
    }
}

/// An acknowledged extent: durable on `member` and listed by its index file `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub member: usize,
    pub index: String,
    pub packs: usize,
    /// Pack bytes in the section.
    pub bytes: u64,
}

/// One member's part so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverMember {
    pub location: String,
    /// Why it was failed, if it was.
    pub failed: Option<String>,
    /// Bytes of packs, index files and snapshots sent to it (acknowledged or not).
    pub sent: u64,
    /// Whether it holds the snapshot.
    pub snapshot: bool,
}

/// The state of a fail-over backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverStatus {
    pub members: Vec<FailoverMember>,
    /// Acknowledged extents, in order.
    pub sections: Vec<Section>,
    /// The member now written to; `None` when all have failed.
    pub active: Option<usize>,
    pub failovers: usize,
}

struct Pending {
    name: String,
    data: Bytes,
    durable: bool,
}

struct State {
    active: Option<usize>,
    /// Bumped at each fail-over; writers of an older generation stop.
    generation: u64,
    failed: Vec<Option<String>>,
    sent: Vec<u64>,
    snapshot: Vec<bool>,
    pending: Vec<Pending>,
    pending_bytes: u64,
    queue: VecDeque<String>,
    /// Writes finished on the active member (tells a slow member from a stalled one).
    progress: u64,
    sections: Vec<Section>,
    failovers: usize,
    closing: bool,
    /// A write was given up by the caller ([`ErrorKind::Cancelled`]): every wait ends with
    /// that error instead of failing a member over.
    cancelled: Option<String>,
}

struct Inner {
    members: Members,
    opts: FailoverOptions,
    st: Mutex<State>,
    cv: Condvar,
}

/// A backend that writes to one member at a time (see the module docs).
pub struct FailoverBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FailoverBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverBackend")
            .field("location", &self.location())
            .finish()
    }
}

fn err(op: &'static str, name: &str, location: String, detail: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::Unreachable, op, name, location, detail)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under the lock; a poisoned state is still consistent.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn location(&self) -> String {
        self.members.location()
    }

    fn all_failed(&self, st: &State, op: &'static str, name: &str) -> BackendError {
        let reasons = self.members.reasons(
            st.failed
                .iter()
                .enumerate()
                .map(|(i, r)| (i, r.as_deref().unwrap_or("?"))),
        );
        err(
            op,
            name,
            self.location(),
            format!("every target failed ({reasons})"),
        )
    }

    /// Call member `m`, waiting at most the extent timeout.
    fn within<T: Send + 'static>(
        &self,
        m: usize,
        op: &'static str,
        name: &str,
        f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let limit = Some(self.opts.extent_timeout);
        self.members
            .call(m, limit, op, name, f)
            .map_err(Missed::into_error)
    }

    /// Fail member `m` (if it is still the active one) and move to the next member: every
    /// pending pack is queued again for it.
    fn fail_over(self: &Arc<Self>, st: &mut State, m: usize, reason: String) {
        if st.failed[m].is_none() {
            tracing::warn!(
                "failover: {} failed: {reason}",
                self.members.get(m).location()
            );
            st.failed[m] = Some(reason);
        }
        if st.active != Some(m) {
            return;
        }
        st.failovers += 1;
        st.generation += 1;
        st.active = (m + 1..self.members.len()).find(|&i| st.failed[i].is_none());
        st.queue.clear();
        for p in &mut st.pending {
            p.durable = false;
        }
        if let Some(next) = st.active {
            tracing::warn!(
                "failover: continuing on {} ({} pending bytes sent again)",
                self.members.get(next).location(),
                st.pending_bytes
            );
            st.queue = st.pending.iter().map(|p| p.name.clone()).collect();
            self.spawn_writers(st, next);
        }
        self.cv.notify_all();
    }

    fn spawn_writers(self: &Arc<Self>, st: &mut State, m: usize) {
        let g = st.generation;
        for i in 0..self.opts.writers.max(1) {
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("failover-w{i}"))
                .spawn(move || me.writer(g, m));
            if let Err(e) = spawned {
                st.failed[m] = Some(format!("start a writer: {e}"));
            }
        }
    }

    fn writer(self: Arc<Self>, g: u64, m: usize) {
        loop {
            let (name, data) = {
                let mut st = self.lock();
                loop {
                    if st.closing || st.generation != g {
                        return;
                    }
                    if let Some(name) = st.queue.pop_front()
                        && let Some(p) = st.pending.iter().find(|p| p.name == name)
                    {
                        let data = p.data.clone();
                        st.sent[m] += data.len() as u64;
                        break (name, data);
                    }
                    st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            let r = self.members.get(m).put(FileKind::Pack, &name, data);
            let mut st = self.lock();
            if st.generation != g {
                return; // failed over meanwhile: this member's answers no longer count
            }
            match r {
                Ok(()) => {
                    if let Some(p) = st.pending.iter_mut().find(|p| p.name == name) {
                        p.durable = true;
                    }
                    st.progress += 1;
                    self.cv.notify_all();
                }
                Err(e) if e.kind() == ErrorKind::Cancelled => {
                    st.cancelled = Some(e.to_string());
                    self.cv.notify_all();
                    return;
                }
                Err(e) => self.fail_over(&mut st, m, e.to_string()),
            }
        }
    }

    /// Wait until `ready`, failing over when the active member makes no progress for the
    /// extent timeout. Errors once every member has failed.
    fn wait_until(
        self: &Arc<Self>,
        op: &'static str,
        name: &str,
        ready: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        let (mut seen, mut gen_seen, mut since) = (st.progress, st.generation, Instant::now());
        loop {
            if let Some(why) = &st.cancelled {
                return Err(BackendError::new(
                    ErrorKind::Cancelled,
                    op,
                    name,
                    self.members.location(),
                    why.clone(),
                ));
            }
            let Some(active) = st.active else {
                return Err(self.all_failed(&st, op, name));
            };
            if ready(&st) {
                return Ok(st);
            }
            // A member waiting for its traffic limit is slow on purpose, not stalled.
            let pacing = self.members.get(active).pacing();
            if st.progress != seen || st.generation != gen_seen || pacing {
                (seen, gen_seen, since) = (st.progress, st.generation, Instant::now());
            }
            let left = self.opts.extent_timeout.saturating_sub(since.elapsed());
            if left.is_zero() {
                let reason = format!(
                    "stalled: no write finished for {} s",
                    self.opts.extent_timeout.as_secs_f64().round()
                );
                self.fail_over(&mut st, active, reason);
                continue;
            }
            st = self
                .cv
                .wait_timeout(st, left.min(Duration::from_millis(200)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Write one file to the active member, failing over until one takes it. Returns the
    /// member that did.
    fn put_on_active(
        self: &Arc<Self>,
        kind: FileKind,
        name: &str,
        data: &Bytes,
        ready: impl Fn(&State) -> bool,
    ) -> Result<(usize, MutexGuard<'_, State>)> {
        loop {
            let (m, g) = {
                let mut st = self.wait_until("put", name, &ready)?;
                let m = st.active.ok_or_else(|| self.all_failed(&st, "put", name))?;
                st.sent[m] += data.len() as u64;
                (m, st.generation)
            };
            let (n, d) = (name.to_string(), data.clone());
            let r = self.within(m, "put", name, move |b| b.put(kind, &n, d));
            let mut st = self.lock();
            match r {
                Ok(()) if st.generation == g => return Ok((m, st)),
                // Failed over while this write ran (a pack write failed): the packs this
                // file may name are being sent again; write it there too.
                Ok(()) => continue,
                Err(e) if e.kind() == ErrorKind::Cancelled => {
                    st.cancelled = Some(e.to_string());
                    self.cv.notify_all();
                    return Err(e);
                }
                Err(e) => self.fail_over(&mut st, m, e.to_string()),
            }
        }
    }

    /// Best effort: write to each of `to` at once; returns those that took it.
    fn put_to(&self, to: &[usize], kind: FileKind, name: &str, data: &Bytes) -> Vec<usize> {
        let (n, d) = (name.to_string(), data.clone());
        let limit = Some(self.opts.extent_timeout);
        let answers = self
            .members
            .each(to, limit, "put", name, move |b| b.put(kind, &n, d.clone()));
        let mut ok = Vec::new();
        for (m, answer) in answers {
            match answer {
                Ok(()) => ok.push(m),
                Err(e) => tracing::warn!(
                    "failover: {kind} {name} not written to {}: {}",
                    self.members.get(m).location(),
                    e.error()
                ),
            }
        }
        ok
    }
}

impl FailoverBackend {
    /// Members in fail-over order: the first is active until it fails.
    pub fn new(members: Vec<Arc<dyn Backend>>, opts: FailoverOptions) -> Result<FailoverBackend> {
        if members.is_empty() {
            return Err(err("failover", "", String::new(), "no targets"));
        }
        let n = members.len();
        let inner = Arc::new(Inner {
            members: Members::new("failover", members),
            opts,
            st: Mutex::new(State {
                active: Some(0),
                generation: 0,
                failed: vec![None; n],
                sent: vec![0; n],
                snapshot: vec![false; n],
                pending: Vec::new(),
                pending_bytes: 0,
                queue: VecDeque::new(),
                progress: 0,
                sections: Vec::new(),
                failovers: 0,
                closing: false,
                cancelled: None,
            }),
            cv: Condvar::new(),
        });
        {
            let mut st = inner.lock();
            inner.spawn_writers(&mut st, 0);
        }
        Ok(FailoverBackend { inner })
    }

    /// The member backends, in fail-over order.
    pub fn members(&self) -> Vec<Arc<dyn Backend>> {
        self.inner.members.all().to_vec()
    }

    pub fn status(&self) -> FailoverStatus {
        let st = self.inner.lock();
        FailoverStatus {
            members: self
                .inner
                .members
                .all()
                .iter()
                .enumerate()
                .map(|(i, m)| FailoverMember {
                    location: m.location(),
                    failed: st.failed[i].clone(),
                    sent: st.sent[i],
                    snapshot: st.snapshot[i],
                })
                .collect(),
            sections: st.sections.clone(),
            active: st.active,
            failovers: st.failovers,
        }
    }

    /// Fail a member by hand (e.g. it could not be read when the job opened the group).
    pub fn fail(&self, index: usize, reason: &str) {
        if index < self.inner.members.len() {
            let mut st = self.inner.lock();
            self.inner.fail_over(&mut st, index, reason.to_string());
        }
    }

    /// An error naming every member's reason once all have failed.
    pub fn check_alive(&self) -> Result<()> {
        let st = self.inner.lock();
        match st.active {
            Some(_) => Ok(()),
            None => Err(self.inner.all_failed(&st, "open", "repository group")),
        }
    }

    /// Members holding a section or the snapshot that have not failed. A failed member is
    /// not written to again in this run: each attempt would cost it a whole deadline, and
    /// `kura heal` gives it the snapshot and record once it is back.
    fn holders(st: &State) -> Vec<usize> {
        let mut v: Vec<usize> = st.sections.iter().map(|s| s.member).collect();
        v.extend((0..st.snapshot.len()).filter(|&i| st.snapshot[i]));
        v.retain(|&i| st.failed[i].is_none());
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Members not failed.
    fn healthy(&self) -> Vec<usize> {
        let st = self.inner.lock();
        (0..self.inner.members.len())
            .filter(|&i| st.failed[i].is_none())
            .collect()
    }

    /// Write directly to every member not failed; one that fails is failed over. Errors
    /// when none is left.
    fn put_direct(&self, kind: FileKind, name: &str, data: &Bytes) -> Result<()> {
        let to = self.healthy();
        let ok = self.inner.put_to(&to, kind, name, data);
        let mut st = self.inner.lock();
        for m in to.into_iter().filter(|m| !ok.contains(m)) {
            self.inner
                .fail_over(&mut st, m, format!("could not write {kind} {name}"));
        }
        if st.active.is_none() {
            return Err(self.inner.all_failed(&st, "put", name));
        }
        Ok(())
    }

    fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        name: &str,
        f: impl Fn(&dyn Backend) -> Result<T> + Send + Sync + 'static,
    ) -> Result<T> {
        // The active member first, then the others, failed ones last.
        let order = {
            let st = self.inner.lock();
            fallback_order(self.inner.members.len(), st.active, |i| {
                st.failed[i].is_some()
            })
        };
        let limit = Some(self.inner.opts.extent_timeout);
        self.inner
            .members
            .read_first(order, limit, op, name, f, |_, _| {})
    }
}

impl Drop for FailoverBackend {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.closing = true;
        self.inner.cv.notify_all();
    }
}

impl Backend for FailoverBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self) -> Result<()> {
        self.inner.members.create_all()
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        let inner = &self.inner;
        match kind {
            FileKind::Pack => {
                let limit = inner.opts.extent_bytes;
                let mut st = inner.wait_until("put", name, |st| {
                    st.pending.is_empty() || st.pending_bytes < limit
                })?;
                if st.pending.iter().any(|p| p.name == name) {
                    return Ok(());
                }
                st.pending_bytes += data.len() as u64;
                st.queue.push_back(name.to_string());
                st.pending.push(Pending {
                    name: name.to_string(),
                    data,
                    durable: false,
                });
                inner.cv.notify_all();
                Ok(())
            }
            FileKind::Index => self.put_index(name, data, &[]),
            FileKind::Snapshot => {
                // Every pack must be durable somewhere before a snapshot names it.
                let (m, mut st) = inner
                    .put_on_active(kind, name, &data, |st| st.pending.iter().all(|p| p.durable))?;
                st.snapshot[m] = true;
                let others: Vec<usize> =
                    Self::holders(&st).into_iter().filter(|&i| i != m).collect();
                drop(st);
                let ok = inner.put_to(&others, kind, name, &data);
                let mut st = inner.lock();
                for i in ok {
                    st.snapshot[i] = true;
                    st.sent[i] += data.len() as u64;
                }
                Ok(())
            }
            FileKind::Catalog => {
                let to = Self::holders(&inner.lock());
                if to.is_empty() {
                    return self.put_direct(kind, name, &data);
                }
                if inner.put_to(&to, kind, name, &data).is_empty() {
                    return Err(err(
                        "put",
                        name,
                        self.location(),
                        "no target holding the backup took its catalog record",
                    ));
                }
                Ok(())
            }
            _ => self.put_direct(kind, name, &data),
        }
    }

    fn put_index(&self, name: &str, data: Bytes, packs: &[String]) -> Result<()> {
        let inner = &self.inner;
        let (m, mut st) = inner.put_on_active(FileKind::Index, name, &data, |st| {
            packs.iter().all(|n| {
                st.pending
                    .iter()
                    .find(|p| &p.name == n)
                    .is_none_or(|p| p.durable)
            })
        })?;
        // Acknowledged: these packs are durable on `m` and indexed there; they are never
        // sent again.
        let (mut count, mut bytes) = (0, 0);
        st.pending.retain(|p| {
            if packs.contains(&p.name) {
                count += 1;
                bytes += p.data.len() as u64;
                false
            } else {
                true
            }
        });
        st.pending_bytes -= bytes;
        st.sections.push(Section {
            member: m,
            index: name.to_string(),
            packs: count,
            bytes,
        });
        inner.cv.notify_all();
        Ok(())
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
        // Every member not failed, at once; one that cannot list is failed over.
        let limit = Some(self.inner.opts.extent_timeout);
        let answers =
            self.inner
                .members
                .each(&self.healthy(), limit, "list", kind.dir(), move |b| {
                    b.list(kind)
                });
        let mut lists = Vec::new();
        for (m, answer) in answers {
            match answer {
                Ok(files) => lists.push(files),
                Err(e) => {
                    let mut st = self.inner.lock();
                    self.inner.fail_over(&mut st, m, e.into_error().to_string());
                }
            }
        }
        if lists.is_empty() {
            let st = self.inner.lock();
            return Err(self.inner.all_failed(&st, "list", kind.dir()));
        }
        Ok(merge(lists, Merge::for_writers(kind)))
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        let n = name.to_string();
        self.read("stat", name, move |b| b.stat(kind, &n))
    }

    /// On every member not failed, at once. A member that fails (other than "not found":
    /// already gone) or stalls is failed with the reason, as a write would be: the file it
    /// keeps is then named in the status instead of silently left behind. Errors once no
    /// member is left.
    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let n = name.to_string();
        let limit = Some(self.inner.opts.extent_timeout);
        let answers = self
            .inner
            .members
            .each(&self.healthy(), limit, "delete", name, move |b| {
                b.delete(kind, &n)
            });
        let mut st = self.inner.lock();
        for (m, answer) in answers {
            match answer {
                Err(Missed::Failed(e)) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    let reason = e.into_error().to_string();
                    self.inner.fail_over(&mut st, m, reason);
                }
                Ok(()) => {}
            }
        }
        if st.active.is_none() {
            return Err(self.inner.all_failed(&st, "delete", name));
        }
        Ok(())
    }
}
