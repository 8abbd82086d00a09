//! What each completed run did ([`RunStats`]), kept for the operator's history and the
//! daemon's finish predictions.
//!
//! One row per run (`run_stats`), written by the manager once the run's backup is
//! recorded, so a row always describes a run whose snapshot exists. The per-target list is
//! JSON text: it is read whole and never queried by part. Sizes are `u64` in the program and
//! `BIGINT` in the table; a size past `i64::MAX` is stored as `i64::MAX` (no source is that
//! large).

use kura_types::{RunStats, TargetStats};
use sqlx::Row;

use crate::{Catalog, Error, Result};

/// A run's stats as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStats {
    /// The run (process number).
    pub run: i64,
    pub job: Option<i64>,
    /// When it was recorded (ms since the epoch).
    pub ended: i64,
    pub stats: RunStats,
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn small(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Catalog {
    /// Record what run `run` (of `job`, if any) did. Recording it again replaces it.
    pub fn record_run_stats(&self, run: i64, job: Option<i64>, s: &RunStats) -> Result<()> {
        let targets = serde_json::to_string(&s.targets)
            .map_err(|e| Error::Other(format!("encode a run's target stats: {e}")))?;
        let now = self.now();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            sqlx::query("DELETE FROM run_stats WHERE run = $1")
                .bind(run)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            sqlx::query(
                "INSERT INTO run_stats (run, job, ended, duration_ms, bytes_scanned, bytes_read, \
                 bytes_stored, files, targets) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(run)
            .bind(job)
            .bind(now)
            .bind(big(s.duration_ms))
            .bind(big(s.bytes_scanned))
            .bind(big(s.bytes_read))
            .bind(big(s.bytes_stored))
            .bind(big(s.files))
            .bind(targets)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// The newest `limit` recorded runs of `job`, newest first.
    pub fn run_stats(&self, job: i64, limit: i64) -> Result<Vec<RecordedStats>> {
        let rows = self.rt.block_on(async {
            sqlx::query(
                "SELECT run, job, ended, duration_ms, bytes_scanned, bytes_read, bytes_stored, \
                 files, targets FROM run_stats WHERE job = $1 ORDER BY ended DESC, run DESC \
                 LIMIT $2",
            )
            .bind(job)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))
        })?;
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| Error::Other(format!("read a run's stats: {e}"));
                let targets: String = r.try_get(8).map_err(get)?;
                let targets: Vec<TargetStats> = serde_json::from_str(&targets)
                    .map_err(|e| Error::Other(format!("read a run's target stats: {e}")))?;
                Ok(RecordedStats {
                    run: r.try_get(0).map_err(get)?,
                    job: r.try_get(1).map_err(get)?,
                    ended: r.try_get(2).map_err(get)?,
                    stats: RunStats {
                        duration_ms: small(r.try_get(3).map_err(get)?),
                        bytes_scanned: small(r.try_get(4).map_err(get)?),
                        bytes_read: small(r.try_get(5).map_err(get)?),
                        bytes_stored: small(r.try_get(6).map_err(get)?),
                        files: small(r.try_get(7).map_err(get)?),
                        targets,
                    },
                })
            })
            .collect()
    }
}
