//! The volume engine's host-free backup policies (seed 004): the policy table (its
//! configuration table 100) and the runs of each entry (its backup information table 140).
//!
//! **Why the catalog.** Every daemon sharing a catalog sees the same table, so a table
//! applied through any of them (or by `kura policy apply` with no daemon at all) is picked
//! up by all at their next look, without a restart; the table is replaced in one
//! transaction, so no daemon ever sees half of it; and a run row doubles as the claim of its
//! occurrence ([`crate::ClaimOn::Policy`], the scheduler's mechanism), so each occurrence
//! runs on one daemon only.
//!
//! **Identity.** An entry is its volume and target: re-applying a table updates the entries
//! it keeps (their schedule, route, freeze mode, position) in place, so their run history
//! stays; entries it drops are deleted with their runs.

use kura_types::{Freeze, PolicyEntry};
use sqlx::Row;

use crate::{Catalog, ClaimState, Error, Result};

/// A policy as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub id: i64,
    /// Its place in the table as applied, from 1.
    pub position: i64,
    pub entry: PolicyEntry,
    /// The repository URL the entry's target resolved to when it was applied.
    pub target_url: String,
    /// When the table holding it was applied (ms since the epoch).
    pub applied: i64,
}

/// One run of a policy (a row of the backup information table; also its claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRunRow {
    pub policy: i64,
    /// The occurrence (ms since the epoch).
    pub due: i64,
    pub daemon: String,
    pub claimed: i64,
    pub lease_until: i64,
    pub state: ClaimState,
    pub reason: Option<String>,
    /// The daemon task that ran it.
    pub task: Option<String>,
    pub snapshot: Option<String>,
    /// When it ended (ms since the epoch).
    pub finished: Option<i64>,
}

const POLICY_COLUMNS: &str =
    "id, position, volume, target, target_url, schedule, route, freeze_mode, applied";
const RUN_COLUMNS: &str =
    "policy, due, daemon, claimed, lease_until, state, reason, task, snapshot, finished";

fn row_to_policy(r: &sqlx::any::AnyRow) -> Result<PolicyRow> {
    let get = |e: sqlx::Error| Error::Other(format!("read a policy: {e}"));
    let freeze: String = r.try_get(7).map_err(get)?;
    Ok(PolicyRow {
        id: r.try_get(0).map_err(get)?,
        position: r.try_get(1).map_err(get)?,
        entry: PolicyEntry {
            volume: r.try_get(2).map_err(get)?,
            target: r.try_get(3).map_err(get)?,
            schedule: r.try_get(5).map_err(get)?,
            route: r.try_get(6).map_err(get)?,
            freeze: Freeze::parse(&freeze)
                .ok_or_else(|| Error::Other(format!("a policy's freeze mode {freeze:?}")))?,
        },
        target_url: r.try_get(4).map_err(get)?,
        applied: r.try_get(8).map_err(get)?,
    })
}

fn row_to_run(r: &sqlx::any::AnyRow) -> Result<PolicyRunRow> {
    let get = |e: sqlx::Error| Error::Other(format!("read a policy run: {e}"));
    let state: String = r.try_get(5).map_err(get)?;
    Ok(PolicyRunRow {
        policy: r.try_get(0).map_err(get)?,
        due: r.try_get(1).map_err(get)?,
        daemon: r.try_get(2).map_err(get)?,
        claimed: r.try_get(3).map_err(get)?,
        lease_until: r.try_get(4).map_err(get)?,
        state: ClaimState::parse(&state)?,
        reason: r.try_get(6).map_err(get)?,
        task: r.try_get(7).map_err(get)?,
        snapshot: r.try_get(8).map_err(get)?,
        finished: r.try_get(9).map_err(get)?,
    })
}

impl Catalog {
    /// Replace the whole policy table by `entries` (each with the URL its target resolved
    /// to), in one transaction: entries kept (same volume and target) are updated in place
    /// and keep their runs, the others are inserted, and entries not in `entries` are
    /// deleted with their runs. The caller has validated the table.
    pub fn replace_policies(&self, entries: &[(PolicyEntry, String)]) -> Result<()> {
        let now = self.now();
        self.rt.block_on(async {
            let db = |e| self.db(e);
            let mut tx = self.write_tx().await.map_err(db)?;
            let old: Vec<(i64, String, String)> =
                sqlx::query("SELECT id, volume, target FROM volume_policies")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db)?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect::<std::result::Result<_, sqlx::Error>>()
                    .map_err(db)?;
            let mut kept = Vec::new();
            for (i, (e, url)) in entries.iter().enumerate() {
                let position = i as i64 + 1;
                let same = old
                    .iter()
                    .find(|(_, v, t)| *v == e.volume && *t == e.target)
                    .map(|(id, _, _)| *id);
                match same {
                    Some(id) => {
                        kept.push(id);
                        sqlx::query(
                            "UPDATE volume_policies SET position = $1, target_url = $2, \
                             schedule = $3, route = $4, freeze_mode = $5, applied = $6 WHERE id = $7",
                        )
                        .bind(position)
                        .bind(url.as_str())
                        .bind(e.schedule.as_str())
                        .bind(e.route.as_deref())
                        .bind(e.freeze.as_str())
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                    }
                    None => {
                        sqlx::query(
                            "INSERT INTO volume_policies (position, volume, target, target_url, \
                             schedule, route, freeze_mode, applied) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        )
                        .bind(position)
                        .bind(e.volume.as_str())
                        .bind(e.target.as_str())
                        .bind(url.as_str())
                        .bind(e.schedule.as_str())
                        .bind(e.route.as_deref())
                        .bind(e.freeze.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                    }
                }
            }
            for (id, _, _) in old.iter().filter(|(id, _, _)| !kept.contains(id)) {
                // Explicitly, not only by the cascade: SQLite enforces foreign keys only
                // with the pragma on, and this must not depend on it.
                for sql in [
                    "DELETE FROM policy_runs WHERE policy = $1",
                    "DELETE FROM volume_policies WHERE id = $1",
                ] {
                    sqlx::query(sql)
                        .bind(*id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
            }
            tx.commit().await.map_err(db)
        })
    }

    /// The policy table, in its order.
    pub fn policies(&self) -> Result<Vec<PolicyRow>> {
        let rows = self.rt.block_on(async {
            sqlx::query(&format!(
                "SELECT {POLICY_COLUMNS} FROM volume_policies ORDER BY position"
            ))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))
        })?;
        rows.iter().map(row_to_policy).collect()
    }

    /// The newest `limit` runs of policy `policy`, newest occurrence first.
    pub fn policy_runs(&self, policy: i64, limit: i64) -> Result<Vec<PolicyRunRow>> {
        let rows = self.rt.block_on(async {
            sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM policy_runs WHERE policy = $1 \
                 ORDER BY due DESC LIMIT $2"
            ))
            .bind(policy)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))
        })?;
        rows.iter().map(row_to_run).collect()
    }

    /// Note the task that runs a claimed occurrence.
    pub fn policy_run_task(&self, policy: i64, due: i64, task: &str) -> Result<()> {
        self.exec(
            "UPDATE policy_runs SET task = $1 WHERE policy = $2 AND due = $3",
            |q| q.bind(task).bind(policy).bind(due),
        )
    }

    /// Record how a started run ended: its state (`succeeded`: a normal end; `failed`: an
    /// abnormal one, with its reason) and the snapshot it made.
    pub fn finish_policy_run(
        &self,
        policy: i64,
        due: i64,
        state: ClaimState,
        reason: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<()> {
        let now = self.now();
        self.exec(
            "UPDATE policy_runs SET state = $1, reason = $2, snapshot = $3, finished = $4 \
             WHERE policy = $5 AND due = $6 AND state = 'started'",
            |q| {
                q.bind(state.as_str())
                    .bind(reason)
                    .bind(snapshot)
                    .bind(now)
                    .bind(policy)
                    .bind(due)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClaimOn;

    fn entry(volume: &str, target: &str, schedule: &str) -> (PolicyEntry, String) {
        (
            PolicyEntry {
                volume: volume.into(),
                target: target.into(),
                schedule: schedule.into(),
                route: None,
                freeze: Freeze::Auto,
            },
            format!("/srv/{target}"),
        )
    }

    #[test]
    fn a_reapplied_table_keeps_the_runs_of_the_entries_it_keeps() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path().join("c.db").to_str().unwrap()).unwrap();
        c.replace_policies(&[entry("db", "t0", "hourly"), entry("web", "t0", "daily")])
            .unwrap();
        let ps = c.policies().unwrap();
        assert_eq!(ps.len(), 2);
        let (db, web) = (ps[0].id, ps[1].id);
        assert!(c.claim_on(ClaimOn::Policy(db), 1000, "a", 60_000).unwrap());
        assert!(!c.claim_on(ClaimOn::Policy(db), 1000, "b", 60_000).unwrap());
        c.policy_run_task(db, 1000, "task-1").unwrap();
        c.finish_policy_run(db, 1000, ClaimState::Failed, Some("down"), None)
            .unwrap();
        assert!(c.claim_on(ClaimOn::Policy(web), 1000, "a", 60_000).unwrap());
        // db kept with a new schedule and first; web dropped; a new entry added.
        c.replace_policies(&[entry("new", "t1", "daily"), entry("db", "t0", "*:0/5")])
            .unwrap();
        let ps = c.policies().unwrap();
        assert_eq!(
            ps.iter()
                .map(|p| (
                    p.entry.volume.as_str(),
                    p.entry.schedule.as_str(),
                    p.position
                ))
                .collect::<Vec<_>>(),
            vec![("new", "daily", 1), ("db", "*:0/5", 2)]
        );
        assert_eq!(ps[1].id, db);
        let runs = c.policy_runs(db, 10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].state, ClaimState::Failed);
        assert_eq!(runs[0].reason.as_deref(), Some("down"));
        assert_eq!(runs[0].task.as_deref(), Some("task-1"));
        assert!(runs[0].finished.is_some());
        assert!(c.policy_runs(web, 10).unwrap().is_empty());
        // A lapsed policy claim expires like a job's.
        assert!(c.claim_on(ClaimOn::Policy(db), 2000, "a", 1000).unwrap());
        c.advance_clock(std::time::Duration::from_secs(5));
        assert_eq!(c.expire_claims().unwrap(), 1);
        assert_eq!(c.policy_runs(db, 1).unwrap()[0].state, ClaimState::Expired);
    }
}
