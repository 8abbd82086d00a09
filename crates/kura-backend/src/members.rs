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
        let detail = match call.wait_until(deadline) {
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
