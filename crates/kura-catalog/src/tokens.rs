//! What daemons sharing a catalog share besides jobs: API tokens and scheduled-run claims.
//!
//! **Tokens.** Only a hash of each token's secret is stored (the secret is random and long,
//! so a fast hash is enough: nothing to brute-force); the caller hashes. A token has a name
//! (for logs and `started_by`), an optional expiry and the time it was last used.
//!
//! **Claims.** A scheduled occurrence of a job (its job and due time) is run by whichever
//! daemon inserts its row first: the primary key makes the insert succeed exactly once
//! however many daemons race, with no leader and no lock held across the run. The claiming
//! daemon renews the claim's lease while the run goes on and records how it ended; a claim
//! whose lease lapsed (its daemon was killed) is recorded `expired` by the next daemon that
//! looks, and the job's next occurrence goes ahead as usual.
//!
//! The same mechanism claims the occurrences of the volume engine's policies ([`ClaimOn`]):
//! their claims are the rows of `policy_runs` (the backup information table, see
//! `policies.rs`), which has the claim columns of `schedule_claims` and more.

use sqlx::Row;

use crate::{Catalog, Error, Result};

/// An API token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    /// ms since the epoch.
    pub created: i64,
    pub expires: Option<i64>,
    pub last_used: Option<i64>,
}

fn row_to_token(r: &sqlx::any::AnyRow) -> std::result::Result<ApiToken, sqlx::Error> {
    Ok(ApiToken {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created: r.try_get(2)?,
        expires: r.try_get(3)?,
        last_used: r.try_get(4)?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// Claimed; the run goes on (while its lease is renewed).
    Started,
    Succeeded,
    Failed,
    /// Not started in time (its start window passed, or resources stayed busy).
    Missed,
    /// Skipped by the job's overlap policy (a run was still going).
    Skipped,
    /// Its daemon stopped renewing the lease.
    Expired,
    /// Cancelled by the daemon: its window or `max-run` ended (or was predicted to end
    /// before it could finish), or a newer occurrence replaced it (overlap `cancel-older`).
    Cancelled,
}

impl ClaimState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Started => "started",
            ClaimState::Succeeded => "succeeded",
            ClaimState::Failed => "failed",
            ClaimState::Missed => "missed",
            ClaimState::Skipped => "skipped",
            ClaimState::Expired => "expired",
            ClaimState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<ClaimState> {
        Ok(match s {
            "started" => ClaimState::Started,
            "succeeded" => ClaimState::Succeeded,
            "failed" => ClaimState::Failed,
            "missed" => ClaimState::Missed,
            "skipped" => ClaimState::Skipped,
            "expired" => ClaimState::Expired,
            "cancelled" => ClaimState::Cancelled,
            other => {
                return Err(Error::Other(format!("unknown claim state {other:?}")));
            }
        })
    }
}

/// One scheduled occurrence of a job, as claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub job: i64,
    /// When it was due (ms since the epoch).
    pub due: i64,
    /// The daemon that claimed it.
    pub daemon: String,
    pub claimed: i64,
    pub lease_until: i64,
    pub state: ClaimState,
    pub reason: Option<String>,
}

fn row_to_claim(r: &sqlx::any::AnyRow) -> Result<Claim> {
    let state: String = r.try_get(5).map_err(|e| Error::Other(e.to_string()))?;
    let get = |e: sqlx::Error| Error::Other(format!("read a claim: {e}"));
    Ok(Claim {
        job: r.try_get(0).map_err(get)?,
        due: r.try_get(1).map_err(get)?,
        daemon: r.try_get(2).map_err(get)?,
        claimed: r.try_get(3).map_err(get)?,
        lease_until: r.try_get(4).map_err(get)?,
        state: ClaimState::parse(&state)?,
        reason: r.try_get(6).map_err(get)?,
    })
}

/// What a claim is of: a job's scheduled occurrence (`schedule_claims`) or a volume
/// policy's (`policy_runs`). Both tables have the same claim columns, keyed by the owner's
/// id and the due time, so one set of statements serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOn {
    Job(i64),
    Policy(i64),
}

impl ClaimOn {
    fn table(self) -> &'static str {
        match self {
            ClaimOn::Job(_) => "schedule_claims",
            ClaimOn::Policy(_) => "policy_runs",
        }
    }

    fn key(self) -> &'static str {
        match self {
            ClaimOn::Job(_) => "job",
            ClaimOn::Policy(_) => "policy",
        }
    }

    fn id(self) -> i64 {
        match self {
            ClaimOn::Job(id) | ClaimOn::Policy(id) => id,
        }
    }
}

const CLAIM_COLUMNS: &str = "job, due, daemon, claimed, lease_until, state, reason";

impl Catalog {
    /// Store a new token by the hash of its secret. Names are unique.
    pub fn add_token(&self, name: &str, hash: &str, expires: Option<i64>) -> Result<ApiToken> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::Invalid(format!(
                "token name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let now = self.now();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            self.refuse_duplicate(&mut tx, "SELECT id FROM api_tokens WHERE name = $1", name)
                .await?;
            let id: i64 = sqlx::query(
                "INSERT INTO api_tokens (name, hash, created, expires) VALUES ($1, $2, $3, $4) \
                 RETURNING id",
            )
            .bind(name)
            .bind(hash)
            .bind(now)
            .bind(expires)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(ApiToken {
                id,
                name: name.to_string(),
                created: now,
                expires,
                last_used: None,
            })
        })
    }

    pub fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.rt.block_on(async {
            sqlx::query(
                "SELECT id, name, created, expires, last_used FROM api_tokens ORDER BY name",
            )
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| rows.iter().map(row_to_token).collect())
            .map_err(|e| self.db(e))
        })
    }

    /// The token whose secret hashes to `hash`, if any (expired or not: the caller decides).
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>> {
        self.rt.block_on(async {
            sqlx::query(
                "SELECT id, name, created, expires, last_used FROM api_tokens WHERE hash = $1",
            )
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .and_then(|r| r.as_ref().map(row_to_token).transpose())
            .map_err(|e| self.db(e))
        })
    }

    /// Record that token `id` was used (callers rate-limit this).
    pub fn token_used(&self, id: i64) -> Result<()> {
        let now = self.now();
        self.exec("UPDATE api_tokens SET last_used = $1 WHERE id = $2", |q| {
            q.bind(now).bind(id)
        })
    }

    /// Remove a token; every daemon refuses it from its next check.
    pub fn revoke_token(&self, name: &str) -> Result<()> {
        let n = self.rt.block_on(async {
            sqlx::query("DELETE FROM api_tokens WHERE name = $1")
                .bind(name)
                .execute(&self.pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| self.db(e))
        })?;
        if n == 0 {
            return Err(Error::Invalid(format!("no token named {name:?}")));
        }
        Ok(())
    }

    /// Claim job `job`'s occurrence due at `due` (ms) for `daemon`, with a lease of
    /// `lease_ms`: `true` if this call claimed it, `false` if another daemon (or an earlier
    /// call) already had.
    pub fn claim_run(&self, job: i64, due: i64, daemon: &str, lease_ms: i64) -> Result<bool> {
        self.claim_on(ClaimOn::Job(job), due, daemon, lease_ms)
    }

    /// Claim an occurrence (see [`claim_run`](Self::claim_run)) of a job or a policy.
    pub fn claim_on(&self, on: ClaimOn, due: i64, daemon: &str, lease_ms: i64) -> Result<bool> {
        let now = self.now();
        let (table, key) = (on.table(), on.key());
        self.rt.block_on(async {
            sqlx::query(&format!(
                "INSERT INTO {table} ({key}, due, daemon, claimed, lease_until) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT ({key}, due) DO NOTHING"
            ))
            .bind(on.id())
            .bind(due)
            .bind(daemon)
            .bind(now)
            .bind(now + lease_ms)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(|e| self.db(e))
        })
    }

    /// Record an occurrence that was never started (missed, skipped) — claimed and ended at
    /// once, so it is recorded exactly once too. `false` if another daemon had it.
    pub fn record_unrun(
        &self,
        job: i64,
        due: i64,
        daemon: &str,
        state: ClaimState,
        reason: &str,
    ) -> Result<bool> {
        self.record_unrun_on(ClaimOn::Job(job), due, daemon, state, reason)
    }

    /// [`record_unrun`](Self::record_unrun) for a job or a policy.
    pub fn record_unrun_on(
        &self,
        on: ClaimOn,
        due: i64,
        daemon: &str,
        state: ClaimState,
        reason: &str,
    ) -> Result<bool> {
        let now = self.now();
        let (table, key) = (on.table(), on.key());
        self.rt.block_on(async {
            sqlx::query(&format!(
                "INSERT INTO {table} ({key}, due, daemon, claimed, lease_until, state, \
                 reason) VALUES ($1, $2, $3, $4, $4, $5, $6) ON CONFLICT ({key}, due) DO NOTHING"
            ))
            .bind(on.id())
            .bind(due)
            .bind(daemon)
            .bind(now)
            .bind(state.as_str())
            .bind(reason)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(|e| self.db(e))
        })
    }

    /// Extend a started claim's lease; `false` if it is no longer this daemon's started
    /// claim (it expired and was recorded so).
    pub fn renew_claim(&self, job: i64, due: i64, daemon: &str, lease_ms: i64) -> Result<bool> {
        self.renew_on(ClaimOn::Job(job), due, daemon, lease_ms)
    }

    /// [`renew_claim`](Self::renew_claim) for a job or a policy.
    pub fn renew_on(&self, on: ClaimOn, due: i64, daemon: &str, lease_ms: i64) -> Result<bool> {
        let until = self.now() + lease_ms;
        let (table, key) = (on.table(), on.key());
        self.rt.block_on(async {
            sqlx::query(&format!(
                "UPDATE {table} SET lease_until = $1 WHERE {key} = $2 AND due = $3 \
                 AND daemon = $4 AND state = 'started'"
            ))
            .bind(until)
            .bind(on.id())
            .bind(due)
            .bind(daemon)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(|e| self.db(e))
        })
    }

    /// Record how a started claim ended.
    pub fn finish_claim(
        &self,
        job: i64,
        due: i64,
        state: ClaimState,
        reason: Option<&str>,
    ) -> Result<()> {
        self.exec(
            "UPDATE schedule_claims SET state = $1, reason = $2 WHERE job = $3 AND due = $4 \
             AND state = 'started'",
            |q| q.bind(state.as_str()).bind(reason).bind(job).bind(due),
        )
    }

    /// Record every started claim (of jobs and of policies) whose lease lapsed as
    /// `expired`; how many.
    pub fn expire_claims(&self) -> Result<u64> {
        let now = self.now();
        let mut n = 0;
        for table in ["schedule_claims", "policy_runs"] {
            n += self.rt.block_on(async {
                sqlx::query(&format!(
                    "UPDATE {table} SET state = 'expired', \
                     reason = 'its daemon stopped renewing the lease' \
                     WHERE state = 'started' AND lease_until < $1"
                ))
                .bind(now)
                .execute(&self.pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| self.db(e))
            })?;
        }
        Ok(n)
    }

    /// The newest `limit` claims of a job (all jobs with `None`), newest due first.
    pub fn claims(&self, job: Option<i64>, limit: i64) -> Result<Vec<Claim>> {
        let rows = self.rt.block_on(async {
            let q = match job {
                Some(_) => format!(
                    "SELECT {CLAIM_COLUMNS} FROM schedule_claims WHERE job = $1 \
                     ORDER BY due DESC LIMIT $2"
                ),
                None => format!(
                    "SELECT {CLAIM_COLUMNS} FROM schedule_claims WHERE job <> $1 \
                     ORDER BY due DESC LIMIT $2"
                ),
            };
            sqlx::query(&q)
                .bind(job.unwrap_or(-1))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db(e))
        })?;
        rows.iter().map(row_to_claim).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path().join("c.db").to_str().unwrap()).unwrap();
        (d, c)
    }

    #[test]
    fn tokens_are_found_by_hash_and_revoked_by_name() {
        let (_d, c) = catalog();
        c.add_token("ops", "h1", None).unwrap();
        assert!(matches!(
            c.add_token("ops", "h2", None),
            Err(Error::Duplicate(_))
        ));
        assert!(matches!(
            c.add_token("a/b", "h3", None),
            Err(Error::Invalid(_))
        ));
        let t = c.token_by_hash("h1").unwrap().unwrap();
        assert_eq!(t.name, "ops");
        c.token_used(t.id).unwrap();
        assert!(c.token_by_hash("h1").unwrap().unwrap().last_used.is_some());
        assert!(c.token_by_hash("nope").unwrap().is_none());
        c.revoke_token("ops").unwrap();
        assert!(c.token_by_hash("h1").unwrap().is_none());
        assert!(c.revoke_token("ops").is_err());
    }

    #[test]
    fn an_occurrence_is_claimed_once_and_a_lapsed_lease_expires() {
        let (_d, c) = catalog();
        let job = c
            .add_job(
                "nightly",
                "/srv",
                Some("daily"),
                1,
                crate::Mode::Mirror,
                &kura_types::JobSettings::default(),
            )
            .unwrap();
        assert!(c.claim_run(job, 1000, "a", 60_000).unwrap());
        assert!(!c.claim_run(job, 1000, "b", 60_000).unwrap());
        assert!(
            !c.record_unrun(job, 1000, "b", ClaimState::Missed, "x")
                .unwrap()
        );
        assert!(c.renew_claim(job, 1000, "a", 60_000).unwrap());
        assert!(!c.renew_claim(job, 1000, "b", 60_000).unwrap());
        assert_eq!(c.expire_claims().unwrap(), 0);
        c.advance_clock(std::time::Duration::from_secs(120));
        assert_eq!(c.expire_claims().unwrap(), 1);
        assert!(!c.renew_claim(job, 1000, "a", 60_000).unwrap());
        let cl = c.claims(Some(job), 10).unwrap();
        assert_eq!(cl.len(), 1);
        assert_eq!(cl[0].state, ClaimState::Expired);
        assert!(c.claim_run(job, 2000, "b", 60_000).unwrap());
        c.finish_claim(job, 2000, ClaimState::Succeeded, None)
            .unwrap();
        let cl = c.claims(None, 10).unwrap();
        assert_eq!(
            cl.iter().map(|c| (c.due, c.state)).collect::<Vec<_>>(),
            vec![(2000, ClaimState::Succeeded), (1000, ClaimState::Expired)]
        );
    }
}
