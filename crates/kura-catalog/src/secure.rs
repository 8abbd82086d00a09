//! Securing n disjoint backup subsystems for a job, all or nothing; releasing them always.

use std::time::{Duration, Instant};

use sqlx::Row;

use crate::resources::{Kind, Resource, event, load_all};
use crate::{Catalog, Error, Result};

/// What a job asks for besides the count.
#[derive(Debug, Clone)]
pub struct Constraints {
    /// Only these targets (by name), if set.
    pub targets: Option<Vec<String>>,
    /// How long an allocation lives without renewal.
    pub lease: Duration,
    /// Keep trying this long when not enough is usable (0: fail at once).
    pub wait: Duration,
}

impl Default for Constraints {
    fn default() -> Self {
        Constraints {
            targets: None,
            lease: Duration::from_secs(300),
            wait: Duration::ZERO,
        }
    }
}

/// One secured route: worker + path + target + medium, for stream `stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subsystem {
    pub stream: i64,
    pub worker: String,
    pub path: String,
    pub target: String,
    pub medium: String,
}

/// What `secure` returned: the process number and its subsystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secured {
    pub process: i64,
    pub subsystems: Vec<Subsystem>,
}

/// Holds a process's allocations and releases them when it ends: [`finish`](Self::finish)
/// records the outcome; dropping it unfinished (an early return or a panic) records the run
/// as `aborted`. Either way nothing stays in use.
pub struct SecuredGuard<'a> {
    catalog: &'a Catalog,
    pub secured: Secured,
    finished: bool,
}

impl SecuredGuard<'_> {
    /// Release everything and record how the run ended (`Err` carries the reason).
    pub fn finish(mut self, outcome: std::result::Result<(), String>) -> Result<()> {
        self.finished = true;
        let (state, error) = match &outcome {
            Ok(()) => ("succeeded", None),
            Err(e) => ("failed", Some(e.as_str())),
        };
        self.catalog.end_run(self.secured.process, state, error)
    }

    /// Extend the leases (call well within the lease, e.g. every lease/3).
    pub fn renew(&self, lease: Duration) -> Result<()> {
        self.catalog.renew(self.secured.process, lease)
    }
}

impl Drop for SecuredGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let why = if std::thread::panicking() {
            "the job panicked"
        } else {
            "the job ended without reporting an outcome"
        };
        if let Err(e) = self
            .catalog
            .end_run(self.secured.process, "aborted", Some(why))
        {
            // The lease still expires; log so an operator sees why resources stayed busy.
            tracing::warn!(
                "release process {}: {e} (lease will expire)",
                self.secured.process
            );
        }
    }
}

struct Candidate<'r> {
    worker: &'r Resource,
    path: &'r Resource,
    target: &'r Resource,
    medium: &'r Resource,
}

/// Depth-first search for `n` routes with no target or medium twice and no worker or path
/// over its free slots. Candidates come sorted best first, so the first answer found is
/// the preferred one.
fn pick<'r>(cands: &[Candidate<'r>], n: usize, chosen: &mut Vec<usize>) -> bool {
    if chosen.len() == n {
        return true;
    }
    let start = chosen.last().map_or(0, |&i| i + 1);
    for i in start..cands.len() {
        let c = &cands[i];
        let uses = |id: i64| {
            chosen
                .iter()
                .filter(|&&j| {
                    let d = &cands[j];
                    [d.worker.id, d.path.id, d.target.id, d.medium.id].contains(&id)
                })
                .count() as i64
        };
        let fits = uses(c.target.id) == 0
            && uses(c.medium.id) == 0
            && uses(c.worker.id) < c.worker.free()
            && uses(c.path.id) < c.path.free();
        if fits {
            chosen.push(i);
            if pick(cands, n, chosen) {
                return true;
            }
            chosen.pop();
        }
    }
    false
}

impl Catalog {
    /// Secure `n` disjoint subsystems for `job` (a job definition id, or 0 for an ad-hoc
    /// backup): a new process number, allocations for streams 0..n, all in one transaction.
    pub fn secure(&self, job: i64, n: usize, c: &Constraints) -> Result<SecuredGuard<'_>> {
        if n == 0 {
            return Err(Error::Invalid(
                "a job needs at least one subsystem (n = 0)".into(),
            ));
        }
        let deadline = Instant::now() + c.wait;
        loop {
            match self.try_secure(job, n, c) {
                Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                r => {
                    return r.map(|secured| SecuredGuard {
                        catalog: self,
                        secured,
                        finished: false,
                    });
                }
            }
        }
    }

    fn try_secure(&self, job: i64, n: usize, c: &Constraints) -> Result<Secured> {
        let now = self.now();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            // The allocation lock (see the crate docs), then reclaim dead managers' leases.
            lock_allocations(&mut tx).await.map_err(|e| self.db(e))?;
            reclaim_expired(&mut tx, now).await.map_err(|e| self.db(e))?;
            if job > 0 {
                let known = sqlx::query("SELECT id FROM jobs WHERE id = $1")
                    .bind(job)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.db(e))?;
                if known.is_none() {
                    return Err(self.refuse(tx, Error::UnknownJob(job.to_string())).await);
                }
            }
            let all = load_all(&mut tx).await.map_err(|e| self.db(e))?;
            let routes = sqlx::query("SELECT worker, path, target FROM routes")
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let by_id = |id: i64| all.iter().find(|r| r.id == id);
            let wanted = |t: &Resource| {
                c.targets
                    .as_ref()
                    .is_none_or(|names| names.contains(&t.name))
            };
            if let Some(names) = &c.targets
                && let Some(missing) = names.iter().find(|n| !all.iter().any(|r| r.name == **n))
            {
                return Err(self.refuse(tx, Error::UnknownResource(missing.clone())).await);
            }
            let targets: Vec<&Resource> =
                all.iter().filter(|r| r.kind == Kind::Target && wanted(r)).collect();
            if n > targets.len() {
                let e = Error::Invalid(format!(
                    "a job asks for {n} subsystems but only {} target(s) exist",
                    targets.len()
                ));
                return Err(self.refuse(tx, e).await);
            }
            let mut cands = Vec::new();
            for row in &routes {
                let ids: [i64; 3] = [
                    row.try_get(0).map_err(|e| self.db(e))?,
                    row.try_get(1).map_err(|e| self.db(e))?,
                    row.try_get(2).map_err(|e| self.db(e))?,
                ];
                let (Some(w), Some(p), Some(t)) = (by_id(ids[0]), by_id(ids[1]), by_id(ids[2]))
                else {
                    continue;
                };
                if !wanted(t) || t.free() == 0 || w.free() == 0 || p.free() == 0 {
                    continue;
                }
                for m in all.iter().filter(|m| m.kind == Kind::Medium && m.parent == Some(t.id)) {
                    if m.free() > 0 {
                        cands.push(Candidate { worker: w, path: p, target: t, medium: m });
                    }
                }
            }
            // Best first: fewest recent errors, then least loaded worker and path.
            cands.sort_by_key(|c| {
                (
                    c.target.errors + c.worker.errors + c.path.errors,
                    c.worker.allocations.len() + c.path.allocations.len(),
                    c.target.name.clone(),
                )
            });
            let mut chosen = Vec::new();
            if !pick(&cands, n, &mut chosen) {
                let usable = targets.iter().filter(|t| t.free() > 0).count();
                let why: Vec<String> =
                    targets.iter().filter(|t| t.free() == 0).map(|t| t.why_not()).collect();
                let mut msg = format!("need {n} targets, {usable} usable");
                if !why.is_empty() {
                    msg.push_str(": ");
                    msg.push_str(&why.join("; "));
                } else if usable >= n {
                    msg.push_str(", but not enough disjoint routes (workers, paths, media)");
                }
                return Err(self.refuse(tx, Error::Unavailable { need: n, why: msg }).await);
            }
            let process: i64 = sqlx::query(
                "INSERT INTO job_runs (job, started, state) VALUES ($1, $2, 'running') RETURNING id",
            )
            .bind(if job > 0 { Some(job) } else { None })
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.db(e))?;
            let lease_until = now + c.lease.as_millis() as i64;
            let mut subsystems = Vec::new();
            for (stream, &i) in chosen.iter().enumerate() {
                let cand = &cands[i];
                let stream = stream as i64;
                for r in [cand.worker, cand.path, cand.target, cand.medium] {
                    sqlx::query(
                        "INSERT INTO allocations (resource, process, stream, lease_until) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(r.id)
                    .bind(process)
                    .bind(stream)
                    .bind(lease_until)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db(e))?;
                    let why = format!("process {process} stream {stream}");
                    event(&mut tx, r.id, now, "in use", &why)
                        .await
                        .map_err(|e| self.db(e))?;
                }
                sqlx::query(
                    "INSERT INTO streams (run, stream, worker, path, target, medium, state) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'secured')",
                )
                .bind(process)
                .bind(stream)
                .bind(cand.worker.id)
                .bind(cand.path.id)
                .bind(cand.target.id)
                .bind(cand.medium.id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
                subsystems.push(Subsystem {
                    stream,
                    worker: cand.worker.name.clone(),
                    path: cand.path.name.clone(),
                    target: cand.target.name.clone(),
                    medium: cand.medium.name.clone(),
                });
            }
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(Secured { process, subsystems })
        })
    }

    /// End a securing transaction that secures nothing, with `e`. It still commits: the
    /// expired leases it reclaimed stay reclaimed (a rollback would leave a dead manager's
    /// run `running` and its resources in use until some later secure succeeded).
    async fn refuse(&self, tx: sqlx::Transaction<'static, sqlx::Any>, e: Error) -> Error {
        match tx.commit().await {
            Ok(()) => e,
            Err(db) => self.db(db),
        }
    }

    /// Extend the leases of a process (call well within the lease). Fails with
    /// [`Error::LeaseLost`] when the lease had already expired and was reclaimed: the job
    /// must stop, its resources may now belong to another.
    pub fn renew(&self, process: i64, lease: Duration) -> Result<()> {
        let now = self.now();
        let until = now + lease.as_millis() as i64;
        let done = self.rt.block_on(async {
            // Under the allocation lock, so a renewal and a reclaim never interleave.
            let mut tx = self.write_tx().await?;
            lock_allocations(&mut tx).await?;
            let done = sqlx::query(
                "UPDATE allocations SET lease_until = $1 WHERE process = $2 AND lease_until >= $3",
            )
            .bind(until)
            .bind(process)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(done.rows_affected())
        });
        if done.map_err(|e| self.db(e))? == 0 {
            return Err(Error::LeaseLost(process));
        }
        Ok(())
    }

    /// Free the resources of every process whose lease ran out; returns how many allocations
    /// were freed. `secure` does this itself; call it before showing or changing the
    /// inventory so that a dead manager's holdings do not look alive.
    pub fn reclaim(&self) -> Result<usize> {
        let now = self.now();
        self.rt
            .block_on(async {
                let mut tx = self.write_tx().await?;
                lock_allocations(&mut tx).await?;
                let n = reclaim_expired(&mut tx, now).await?;
                tx.commit().await?;
                Ok(n)
            })
            .map_err(|e| self.db(e))
    }

    /// Free everything a process holds and end its run as `released` (prefer
    /// [`SecuredGuard::finish`], which records the outcome).
    pub fn release(&self, process: i64) -> Result<()> {
        self.end_run(process, "released", None)
    }

    /// Free a process's allocations (an event per resource) and record its end, in one
    /// transaction. A run already ended (e.g. reclaimed after its lease expired) keeps its
    /// first outcome.
    pub(crate) fn end_run(&self, process: i64, state: &str, error: Option<&str>) -> Result<()> {
        let now = self.now();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            let held = sqlx::query("SELECT resource, stream FROM allocations WHERE process = $1")
                .bind(process)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            for row in &held {
                let (resource, stream): (i64, i64) = (
                    row.try_get(0).map_err(|e| self.db(e))?,
                    row.try_get(1).map_err(|e| self.db(e))?,
                );
                let why = format!("process {process} stream {stream} ({state})");
                event(&mut tx, resource, now, "released", &why)
                    .await
                    .map_err(|e| self.db(e))?;
            }
            sqlx::query("DELETE FROM allocations WHERE process = $1")
                .bind(process)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            sqlx::query(
                "UPDATE job_runs SET ended = $1, state = $2, error = $3 \
                 WHERE id = $4 AND ended IS NULL",
            )
            .bind(now)
            .bind(state)
            .bind(error)
            .bind(process)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            sqlx::query("UPDATE streams SET state = 'ended' WHERE run = $1 AND state = 'secured'")
                .bind(process)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))
        })
    }
}

/// The allocation lock (see the crate docs): held until the transaction ends.
async fn lock_allocations(conn: &mut sqlx::AnyConnection) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("UPDATE meta SET v = v WHERE k = 'alloc'")
        .execute(conn)
        .await
        .map(|_| ())
}

/// Free the allocations of processes whose lease ran out (their manager died or hung): an
/// event per resource, the run ends as `expired`, its streams as `lost`.
async fn reclaim_expired(
    conn: &mut sqlx::AnyConnection,
    now: i64,
) -> std::result::Result<usize, sqlx::Error> {
    // Act only on the rows this statement deleted: what a concurrent renewal saved is not
    // reported as lost.
    let expired = sqlx::query(
        "DELETE FROM allocations WHERE lease_until < $1 RETURNING resource, process, stream",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    if expired.is_empty() {
        return Ok(0);
    }
    let mut processes = Vec::new();
    for row in &expired {
        let (resource, process, stream): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let why = format!("lease of process {process} stream {stream} expired");
        event(&mut *conn, resource, now, "reclaimed", &why).await?;
        if !processes.contains(&process) {
            processes.push(process);
        }
    }
    for p in processes {
        tracing::warn!("process {p}: lease expired, its resources are reclaimed");
        sqlx::query(
            "UPDATE job_runs SET ended = $1, state = 'expired', \
             error = 'lease expired (manager died or hung)' WHERE id = $2 AND ended IS NULL",
        )
        .bind(now)
        .bind(p)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE streams SET state = 'lost' WHERE run = $1 AND state = 'secured'")
            .bind(p)
            .execute(&mut *conn)
            .await?;
    }
    Ok(expired.len())
}
