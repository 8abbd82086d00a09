//! The plumbing shared by the backends over several targets of one repository group.
//!
//! A mirror writes every file to all its members, a fail-over to one member at a time, a
//! union reads from whichever holds the file. Those are *policies*: which member to ask, and
//! what becomes of one that fails (dropped, failed over, asked last). Underneath, they need the
//! same mechanics, and a mechanic written three times drifts three ways — one copy bounds its
//! calls and another does not, one reports a failed delete and another swallows it. So the
//! mechanics live here, once, and each backend keeps only its policy:
//!
//! - **Bounded calls** ([`Members::call`], [`Members::each`]): a call to a member runs on the
//!   shared deadline pool ([`Executor`]) and the caller waits at most its limit, then gets a
//!   [`Missed::Stalled`] answer naming the member. Threads are reused, never more than
//!   [`POOL_THREADS`] run, and a member that already has [`MAX_STUCK_PER_MEMBER`] calls
//!   hanging past their deadline is not asked again until one returns: a hung target costs a
//!   bounded number of threads, not one per call.
//! - **Read fallback** ([`Members::read_first`]): members asked one after the other in the
//!   policy's order until one answers; if none does, one error naming each member's answer
//!   ("not found" only when every member said so).
//! - **List merging** ([`merge`]): the union or the intersection of the members' listings.
//! - **Naming**: the group's location (`mirror(a, b)`) and lists of members' reasons.
//!
//! Calls without a limit run on the caller's thread (a union relies on its members' own
//! deadlines and reads on its hot path).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::deadline::{Executor, NoAnswer};
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// Threads the shared pool of member calls runs at most, over every group in the process.
pub(crate) const POOL_THREADS: usize = 64;

/// Calls to one member that may hang past their deadline before it is refused further calls.
pub(crate) const MAX_STUCK_PER_MEMBER: usize = 4;

/// The pool every group's bounded calls run on.
fn shared_pool() -> Arc<Executor> {
    static POOL: OnceLock<Arc<Executor>> = OnceLock::new();
    Arc::clone(POOL.get_or_init(|| Executor::elastic(POOL_THREADS, "kura-member")))
}

/// A member's answer that is not a result.
#[derive(Debug)]
pub(crate) enum Missed {
    /// The member answered with an error.
    Failed(BackendError),
    /// The member gave no answer within the limit (or was not asked: too many of its calls
    /// hang). The error is `TimedOut` and says which.
    Stalled(BackendError),
}

impl Missed {
    pub(crate) fn error(&self) -> &BackendError {
        match self {
            Missed::Failed(e) | Missed::Stalled(e) => e,
        }
    }

    pub(crate) fn into_error(self) -> BackendError {
        match self {
            Missed::Failed(e) | Missed::Stalled(e) => e,
        }
    }

    pub(crate) fn stalled(&self) -> bool {
        matches!(self, Missed::Stalled(_))
    }
}

/// One member's answer.
pub(crate) type Answer<T> = std::result::Result<T, Missed>;

/// The members of a group, in the order given, and the means to call them.
pub(crate) struct Members {
    /// What the group is (`mirror`, `failover`, `union`), for its location.
    label: &'static str,
    backends: Vec<Arc<dyn Backend>>,
    /// Per member, its calls abandoned at their deadline that have not returned.
    stuck: Vec<Arc<AtomicUsize>>,
    pool: Arc<Executor>,
}

impl Members {
    pub(crate) fn new(label: &'static str, backends: Vec<Arc<dyn Backend>>) -> Members {
        Self::with_pool(label, backends, shared_pool())
    }

    /// As [`new`](Self::new), calling through `pool` (tests use a small one).
    pub(crate) fn with_pool(
        label: &'static str,
        backends: Vec<Arc<dyn Backend>>,
        pool: Arc<Executor>,
    ) -> Members {
        let stuck = backends
            .iter()
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();
        Members {
            label,
            backends,
            stuck,
            pool,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.backends.len()
    }

    pub(crate) fn get(&self, i: usize) -> &Arc<dyn Backend> {
        &self.backends[i]
    }

    pub(crate) fn all(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    /// `label(loc1, loc2, …)`.
    pub(crate) fn location(&self) -> String {
        let locs: Vec<String> = self.backends.iter().map(|m| m.location()).collect();
        format!("{}({})", self.label, locs.join(", "))
    }

    /// `loc1: reason; loc2: reason` for the members given.
    pub(crate) fn reasons<'a>(
        &self,
        reasons: impl IntoIterator<Item = (usize, &'a str)>,
    ) -> String {
        let v: Vec<String> = reasons
            .into_iter()
            .map(|(i, r)| format!("{}: {r}", self.backends[i].location()))
            .collect();
        v.join("; ")
    }

    /// Create the repository layout on every member, in order; the first failure stops.
    pub(crate) fn create_all(&self) -> Result<()> {
        for m in &self.backends {
            m.create()?;
        }
        Ok(())
    }

    /// Calls to member `i` now hanging past their deadline.
    pub(crate) fn stuck(&self, i: usize) -> usize {
        self.stuck[i].load(Ordering::SeqCst)
    }

    /// Refuse member `i` at once when too many of its calls hang.
    fn refuse(&self, i: usize, op: &'static str, name: &str) -> Option<Missed> {
        let n = self.stuck(i);
        (n >= MAX_STUCK_PER_MEMBER).then(|| {
            Missed::Stalled(BackendError::new(
                ErrorKind::TimedOut,
                op,
                name,
                self.backends[i].location(),
                format!(
                    "stalled: {n} earlier calls to it have not returned; not asked again \
                     until one does"
                ),
            ))
        })
    }

    fn submit<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    ) -> crate::deadline::Call<Result<T>> {
        let b = Arc::clone(&self.backends[i]);
        self.pool
            .submit(Some(Arc::clone(&self.stuck[i])), move || f(b.as_ref()))
    }

    /// What waiting for a call to member `i` until `deadline` gave.
    fn collect<T>(
        &self,
        i: usize,
        call: crate::deadline::Call<Result<T>>,
        deadline: Instant,
        limit: Duration,
        op: &'static str,
        name: &str,
    ) -> Answer<T> {
        let loc = self.backends[i].location();
        // A member waiting for its traffic limit is slow on purpose: its limit restarts.
        let member = &self.backends[i];
        let detail = match call.wait_until_or_longer(deadline, limit, || member.pacing()) {
            Ok(r) => return r.map_err(Missed::Failed),
            Err(NoAnswer::Running) => {
                tracing::warn!("{op} {name} on {loc}: no answer within {}", secs(limit));
                format!("stalled: no answer for {}", secs(limit))
            }
            Err(NoAnswer::NotStarted) => format!(
                "stalled: no worker free for {} ({} calls hang on unresponsive targets, at \
                 most {} threads)",
                secs(limit),
                self.pool.stuck(),
                self.pool.max_threads()
            ),
            Err(NoAnswer::Panicked) => {
                return Err(Missed::Failed(BackendError::new(
                    ErrorKind::Other,
                    op,
                    name,
                    loc,
                    "the call panicked",
                )));
            }
        };
        Err(Missed::Stalled(BackendError::new(
            ErrorKind::TimedOut,
            op,
            name,
            loc,
            detail,
        )))
    }

    /// Call member `i`, waiting at most `limit` (`None`: on this thread, no limit).
    pub(crate) fn call<T: Send + 'static>(
        &self,
        i: usize,
        limit: Option<Duration>,
        op: &'static str,
        name: &str,
        f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    ) -> Answer<T> {
        let Some(limit) = limit else {
            return f(self.backends[i].as_ref()).map_err(Missed::Failed);
        };
        if let Some(refused) = self.refuse(i, op, name) {
            return Err(refused);
        }
        let deadline = Instant::now() + limit;
        let call = self.submit(i, f);
        self.collect(i, call, deadline, limit, op, name)
    }

    /// Call each of `which` at once (with a limit; one after the other without) and wait at
    /// most `limit` for all. One answer per member asked, in the order of `which`.
    pub(crate) fn each<T: Send + 'static>(
        &self,
        which: &[usize],
        limit: Option<Duration>,
        op: &'static str,
        name: &str,
        f: impl Fn(&dyn Backend) -> Result<T> + Send + Sync + 'static,
    ) -> Vec<(usize, Answer<T>)> {
        let Some(limit) = limit else {
            return which
                .iter()
                .map(|&i| (i, f(self.backends[i].as_ref()).map_err(Missed::Failed)))
                .collect();
        };
        let f = Arc::new(f);
        let deadline = Instant::now() + limit;
        let calls: Vec<(usize, std::result::Result<_, Missed>)> = which
            .iter()
            .map(|&i| match self.refuse(i, op, name) {
                Some(refused) => (i, Err(refused)),
                None => {
                    let f = Arc::clone(&f);
                    (i, Ok(self.submit(i, move |b| f(b))))
                }
            })
            .collect();
        calls
            .into_iter()
            .map(|(i, call)| {
                let answer = call.and_then(|c| self.collect(i, c, deadline, limit, op, name));
                (i, answer)
            })
            .collect()
    }

    /// Ask the members in `order`, one after the other, until one answers; `on_miss` hears
    /// of each that did not. If none answers, the error names each member's answer.
    pub(crate) fn read_first<T: Send + 'static>(
        &self,
        order: impl IntoIterator<Item = usize>,
        limit: Option<Duration>,
        op: &'static str,
        name: &str,
        f: impl Fn(&dyn Backend) -> Result<T> + Send + Sync + 'static,
        mut on_miss: impl FnMut(usize, &Missed),
    ) -> Result<T> {
        let f = Arc::new(f);
        let attempts = order.into_iter().map(|i| {
            let f = Arc::clone(&f);
            let answer = self.call(i, limit, op, name, move |b| f(b));
            if let Err(m) = &answer {
                on_miss(i, m);
            }
            (
                self.backends[i].location(),
                answer.map_err(Missed::into_error),
            )
        });
        first_served(op, name, self.location(), attempts)
    }
}

/// `1.5 s`, `120 s`.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} s", d.as_secs_f64().round())
    }
}

/// Members `0..n` in the order a read tries them: `first` (if any) first, members that
/// `failed` last, the rest as given — a dead target costs its deadline once, not per read.
pub(crate) fn fallback_order(
    n: usize,
    first: Option<usize>,
    failed: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut o: Vec<usize> = (0..n).collect();
    o.sort_by_key(|&i| (Some(i) != first, failed(i)));
    o
}

/// How the members' listings combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    /// A file is present if any member lists it.
    Union,
    /// A file is present only if every member lists it.
    Intersection,
}

impl Merge {
    /// For groups that write every member (mirror, fail-over): what every member holds
    /// counts as present, so deduplication never skips a chunk that one member lacks; but a
    /// lock anywhere is a lock.
    pub(crate) fn for_writers(kind: FileKind) -> Merge {
        if kind == FileKind::Lock {
            Merge::Union
        } else {
            Merge::Intersection
        }
    }
}

/// Combine listings, sorted by name; a file's size is the first listing's.
pub(crate) fn merge(lists: impl IntoIterator<Item = Vec<FileInfo>>, how: Merge) -> Vec<FileInfo> {
    let mut counts: BTreeMap<String, (usize, FileInfo)> = BTreeMap::new();
    let mut listed = 0;
    for files in lists {
        listed += 1;
        for f in files {
            counts.entry(f.name.clone()).or_insert((0, f)).0 += 1;
        }
    }
    counts
        .into_values()
        .filter(|(n, _)| how == Merge::Union || *n == listed)
        .map(|(_, f)| f)
        .collect()
}

/// A read through several targets: the first answer of `attempts` — an iterator over
/// (target location, its answer), evaluated lazily so that targets after the first success
/// are not asked. If none answers: "not found" only when every target asked said so, else
/// unreachable, naming each target's answer (and unreachable when none could be asked).
pub(crate) fn first_served<T>(
    op: &'static str,
    name: &str,
    location: String,
    attempts: impl IntoIterator<Item = (String, Result<T>)>,
) -> Result<T> {
    let mut errors = Vec::new();
    let mut all_not_found = true;
    for (member, answer) in attempts {
        match answer {
            Ok(v) => return Ok(v),
            Err(e) => {
                all_not_found &= e.kind() == ErrorKind::NotFound;
                errors.push(format!("{member}: {}", e.detail()));
            }
        }
    }
    if errors.is_empty() {
        return Err(BackendError::new(
            ErrorKind::Unreachable,
            op,
            name,
            location,
            "no live target left",
        ));
    }
    Err(BackendError::new(
        if all_not_found {
            ErrorKind::NotFound
        } else {
            ErrorKind::Unreachable
        },
        op,
        name,
        location,
        format!("no target could serve it ({})", errors.join("; ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBackend;
    use bytes::Bytes;
    use std::sync::{Condvar, Mutex};

    /// A real directory whose calls block while its gate is closed, counting every call.
    #[derive(Debug)]
    struct Gated {
        inner: LocalBackend,
        closed: Mutex<bool>,
        cv: Condvar,
        calls: AtomicUsize,
    }

    impl Gated {
        fn new(dir: &std::path::Path) -> Arc<Gated> {
            let inner = LocalBackend::new(dir);
            inner.create().unwrap();
            Arc::new(Gated {
                inner,
                closed: Mutex::new(false),
                cv: Condvar::new(),
                calls: AtomicUsize::new(0),
            })
        }
        fn set_closed(&self, closed: bool) {
            *self.closed.lock().unwrap() = closed;
            self.cv.notify_all();
        }
        fn enter(&self) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut c = self.closed.lock().unwrap();
            while *c {
                c = self.cv.wait(c).unwrap();
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Backend for Gated {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn create(&self) -> Result<()> {
            self.enter();
            self.inner.create()
        }
        fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
            self.enter();
            self.inner.put(kind, name, data)
        }
        fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
            self.enter();
            self.inner.get(kind, name)
        }
        fn get_range_into(
            &self,
            kind: FileKind,
            name: &str,
            offset: u64,
            len: u64,
            buf: &mut Vec<u8>,
        ) -> Result<()> {
            self.enter();
            self.inner.get_range_into(kind, name, offset, len, buf)
        }
        fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
            self.enter();
            self.inner.list(kind)
        }
        fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
            self.enter();
            self.inner.stat(kind, name)
        }
        fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
            self.enter();
            self.inner.delete(kind, name)
        }
    }

    /// `n` gated members in a temporary directory, on a pool of `threads`.
    fn group(n: usize, threads: usize) -> (tempfile::TempDir, Vec<Arc<Gated>>, Members) {
        let dir = tempfile::tempdir().unwrap();
        let gated: Vec<Arc<Gated>> = (0..n)
            .map(|i| Gated::new(&dir.path().join(format!("t{i}"))))
            .collect();
        let backends = gated
            .iter()
            .map(|g| Arc::clone(g) as Arc<dyn Backend>)
            .collect();
        let pool = Executor::elastic(threads, "test-members");
        (dir, gated, Members::with_pool("test", backends, pool))
    }

    fn get(name: &str) -> impl Fn(&dyn Backend) -> Result<Vec<u8>> + Send + Sync + 'static {
        let n = name.to_string();
        move |b| b.get(FileKind::Pack, &n)
    }

    const LIMIT: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn reads_fall_back_in_the_order_given_and_stop_at_the_first_answer() {
        let (_d, g, m) = group(3, 4);
        g[1].inner
            .put(FileKind::Pack, "aa", Bytes::from_static(b"one"))
            .unwrap();
        g[2].inner
            .put(FileKind::Pack, "aa", Bytes::from_static(b"two"))
            .unwrap();
        for limit in [None, LIMIT] {
            let mut missed = Vec::new();
            let got = m
                .read_first([0, 1, 2], limit, "get", "aa", get("aa"), |i, e| {
                    missed.push((i, e.error().kind()))
                })
                .unwrap();
            assert_eq!(got, b"one");
            assert_eq!(missed, [(0, ErrorKind::NotFound)]);
            // Another order, another answer; the member after the first answer is not asked.
            let before = g[1].calls();
            let got = m
                .read_first([2, 1, 0], limit, "get", "aa", get("aa"), |_, _| {})
                .unwrap();
            assert_eq!(got, b"two");
            assert_eq!(g[1].calls(), before);
        }
        // Nobody has it: "not found", naming every member's answer.
        let e = m
            .read_first([0, 1, 2], LIMIT, "get", "bb", get("bb"), |_, _| {})
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        for gi in &g {
            assert!(e.to_string().contains(&gi.location()), "{e}");
        }
        assert!(e.to_string().starts_with("get bb on test("), "{e}");
        // Nobody to ask: unreachable, not "not found".
        let e = m
            .read_first([], LIMIT, "get", "aa", get("aa"), |_, _| {})
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unreachable);
    }

    #[test]
    fn fallback_order_puts_the_preferred_first_and_the_failed_last() {
        assert_eq!(fallback_order(4, None, |i| i == 1), [0, 2, 3, 1]);
        assert_eq!(fallback_order(4, Some(2), |i| i == 0), [2, 1, 3, 0]);
        assert_eq!(fallback_order(3, Some(1), |_| false), [1, 0, 2]);
    }

    #[test]
    fn listings_merge_as_union_or_intersection() {
        let f = |n: &str, size| FileInfo {
            name: n.to_string(),
            size,
        };
        let lists = || {
            vec![
                vec![f("b", 2), f("a", 1)],
                vec![f("a", 1), f("c", 3)],
                vec![f("a", 1), f("b", 2)],
            ]
        };
        let names = |v: Vec<FileInfo>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(names(merge(lists(), Merge::Union)), ["a", "b", "c"]);
        assert_eq!(names(merge(lists(), Merge::Intersection)), ["a"]);
        assert!(merge(Vec::new(), Merge::Intersection).is_empty());
        assert_eq!(Merge::for_writers(FileKind::Lock), Merge::Union);
        for k in [
            FileKind::Pack,
            FileKind::Index,
            FileKind::Snapshot,
            FileKind::Key,
        ] {
            assert_eq!(Merge::for_writers(k), Merge::Intersection);
        }
    }

    #[test]
    fn a_hanging_member_times_out_at_the_limit_while_the_others_answer() {
        let (_d, g, m) = group(3, 8);
        g[1].set_closed(true);
        let limit = Duration::from_millis(300);
        let t = Instant::now();
        let answers = m.each(&[0, 1, 2], Some(limit), "list", "data", |b| {
            b.list(FileKind::Pack)
        });
        let waited = t.elapsed();
        // Asked at once, so the whole round costs one limit, not one per member.
        assert!(waited >= limit && waited < limit * 5, "{waited:?}");
        assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(answers[0].1.is_ok() && answers[2].1.is_ok());
        let Err(miss) = &answers[1].1 else {
            panic!("a hung member answered")
        };
        assert!(miss.stalled());
        assert_eq!(miss.error().kind(), ErrorKind::TimedOut);
        assert!(
            miss.error().to_string().contains(&g[1].location()),
            "{}",
            miss.error()
        );
        assert!(
            miss.error().detail().contains("stalled"),
            "{}",
            miss.error()
        );
        // A single call, and a read that falls back past the hung member.
        let t = Instant::now();
        let r = m.call(1, Some(limit), "stat", "x", |b| b.stat(FileKind::Pack, "x"));
        assert!(matches!(r, Err(Missed::Stalled(_))));
        assert!(t.elapsed() < limit * 5);
        g[2].inner
            .put(FileKind::Pack, "cc", Bytes::from_static(b"c"))
            .unwrap();
        let mut stalled = Vec::new();
        let got = m
            .read_first([1, 2], Some(limit), "get", "cc", get("cc"), |i, e| {
                stalled.push((i, e.stalled()))
            })
            .unwrap();
        assert_eq!(
            (got.as_slice(), stalled.as_slice()),
            (&b"c"[..], &[(1, true)][..])
        );
        g[1].set_closed(false);
    }

    #[test]
    fn a_member_that_keeps_hanging_pins_a_bounded_number_of_threads() {
        let (_d, g, m) = group(2, 16);
        g[0].set_closed(true);
        let limit = Some(Duration::from_millis(50));
        // Many calls to the hung member: only the first few reach it, the rest are refused
        // at once without taking a thread.
        let mut refused = 0;
        for _ in 0..40 {
            let t = Instant::now();
            match m.call(0, limit, "get", "aa", get("aa")) {
                Err(Missed::Stalled(e)) if e.detail().contains("earlier calls") => {
                    refused += 1;
                    assert!(t.elapsed() < Duration::from_millis(40), "{:?}", t.elapsed());
                }
                Err(Missed::Stalled(_)) => {}
                other => panic!("a hung member answered: {other:?}"),
            }
        }
        assert_eq!(m.stuck(0), MAX_STUCK_PER_MEMBER);
        assert_eq!(refused, 40 - MAX_STUCK_PER_MEMBER);
        assert_eq!(g[0].calls(), MAX_STUCK_PER_MEMBER);
        assert_eq!(m.pool.stuck(), MAX_STUCK_PER_MEMBER);
        assert!(m.pool.threads() <= MAX_STUCK_PER_MEMBER + 1);
        // The other member is served meanwhile.
        assert!(
            m.call(
                1,
                limit.map(|_| Duration::from_secs(10)),
                "list",
                "data",
                |b| b.list(FileKind::Pack)
            )
            .is_ok()
        );
        // Once the target answers again, its stuck calls return and it is asked again.
        g[0].set_closed(false);
        let t = Instant::now();
        while m.stuck(0) > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "stuck calls never returned"
            );
            std::thread::yield_now();
        }
        assert_eq!(m.pool.stuck(), 0);
        let r = m.call(0, LIMIT, "get", "aa", get("aa"));
        assert!(
            matches!(r, Err(Missed::Failed(ref e)) if e.kind() == ErrorKind::NotFound),
            "{r:?}"
        );
    }

    #[test]
    fn when_every_thread_is_stuck_calls_fail_at_their_deadline_and_never_run_late() {
        // A pool of two threads, three hung members.
        let (_d, g, m) = group(3, 2);
        for gi in &g {
            gi.set_closed(true);
        }
        let limit = Some(Duration::from_millis(100));
        let answers = m.each(&[0, 1, 2], limit, "put", "ll", |b| {
            b.put(FileKind::Lock, "ll", Bytes::from_static(b"l"))
        });
        let details: Vec<String> = answers
            .iter()
            .map(|(_, a)| match a {
                Err(Missed::Stalled(e)) => e.detail().to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        let no_worker = details
            .iter()
            .filter(|d| d.contains("no worker free"))
            .count();
        assert_eq!(no_worker, 1, "{details:?}");
        assert_eq!(m.pool.stuck(), 2);
        assert!(m.pool.threads() <= 2);
        for gi in &g {
            gi.set_closed(false);
        }
        let t = Instant::now();
        while m.pool.stuck() > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "stuck calls never returned"
            );
            std::thread::yield_now();
        }
        // The call that never started was never made: its member has no lock file, and was
        // never entered.
        let (never, _) = answers
            .iter()
            .find(|(_, a)| matches!(a, Err(e) if e.error().detail().contains("no worker free")))
            .unwrap();
        assert_eq!(g[*never].calls(), 0);
        assert!(!g[*never].inner.exists(FileKind::Lock, "ll").unwrap());
    }

    #[test]
    fn location_and_reasons_name_the_members() {
        let (_d, g, m) = group(2, 1);
        assert_eq!(
            m.location(),
            format!("test({}, {})", g[0].location(), g[1].location())
        );
        assert_eq!(
            m.reasons([(1, "gone"), (0, "full")]),
            format!("{}: gone; {}: full", g[1].location(), g[0].location())
        );
    }
}
