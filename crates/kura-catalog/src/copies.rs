//! Keeping the catalog one with the targets: removing copies a target no longer holds
//! (`forget`, `prune`, `catalog verify --fix`), deleting a backup (`backups forget`), and
//! recording which repository a target holds (securing checks it before a run).
//!
//! # Why the states
//! A backup with no copy left is not deleted from the catalog by a forget on one target: it
//! becomes `forgotten` (the history of what was backed up stays; nothing claims it can be
//! restored). `kura backups forget N` deletes a backup everywhere; it marks the row
//! `forgetting` *first*, so a crash part-way leaves a row that says what was under way, and
//! `catalog verify --fix` finishes it. Only the last step deletes the rows.

use serde_json::Value;
use sqlx::Row;

use crate::{BackupState, Catalog, Error, Result};

/// Does an extent's `position` (`SNAPSHOT` or `SNAPSHOT:INDEX`) belong to snapshot `hex`?
pub fn position_names(position: &str, hex: &str) -> bool {
    position.split(':').next() == Some(hex)
}

impl Catalog {
    /// Target `target` no longer holds snapshot `snapshot` (hex): delete every copy or
    /// section of it there (only section `seq`, if given). A complete backup left without
    /// any copy becomes `forgotten`. Returns the backups that lost a copy (ascending).
    pub fn drop_copies(&self, target: &str, snapshot: &str, seq: Option<i64>) -> Result<Vec<i64>> {
        let t = self.resource(target)?;
        let pattern = format!("{snapshot}:%");
        // -1 matches every sequence number (they are never negative).
        let seq = seq.unwrap_or(-1);
        self.rt.block_on(async {
            let db = |e| self.db(e);
            let mut tx = self.write_tx().await.map_err(db)?;
            let rows = sqlx::query(
                "SELECT DISTINCT backup FROM extents WHERE target = $1 \
                 AND (position = $2 OR position LIKE $3) AND ($4 < 0 OR seq = $4) \
                 ORDER BY backup",
            )
            .bind(t.id)
            .bind(snapshot)
            .bind(&pattern)
            .bind(seq)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            let mut ids = Vec::new();
            for r in &rows {
                ids.push(r.try_get::<i64, _>(0).map_err(db)?);
            }
            sqlx::query(
                "DELETE FROM extents WHERE target = $1 AND (position = $2 OR position LIKE $3) \
                 AND ($4 < 0 OR seq = $4)",
            )
            .bind(t.id)
            .bind(snapshot)
            .bind(&pattern)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            for id in &ids {
                sqlx::query(
                    "UPDATE backups SET state = 'forgotten' WHERE id = $1 AND state = 'complete' \
                     AND NOT EXISTS (SELECT 1 FROM extents WHERE backup = $1)",
                )
                .bind(*id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            Ok(ids)
        })
    }

    /// First step of deleting a backup everywhere: mark it `forgetting`, so restores and
    /// jobs no longer use it and a crash before the end leaves a row saying what was under
    /// way (`catalog verify --fix` finishes it).
    pub fn mark_forgetting(&self, backup: i64) -> Result<()> {
        self.backup(backup)?;
        self.exec("UPDATE backups SET state = $1 WHERE id = $2", |q| {
            q.bind(BackupState::Forgetting.as_str()).bind(backup)
        })
    }

    /// Last step of deleting a backup: its rows go (extents with it).
    pub fn delete_backup(&self, backup: i64) -> Result<()> {
        self.backup(backup)?;
        self.rt.block_on(async {
            let db = |e| self.db(e);
            let mut tx = self.write_tx().await.map_err(db)?;
            for sql in [
                "DELETE FROM extents WHERE backup = $1",
                "DELETE FROM backups WHERE id = $1",
            ] {
                sqlx::query(sql)
                    .bind(backup)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            tx.commit().await.map_err(db)
        })
    }

    /// The repository a target held when a job or `init` last used it (its id, as the
    /// manager computes it), if recorded.
    pub fn target_repository(&self, target: &str) -> Result<Option<String>> {
        Ok(self
            .resource(target)?
            .config
            .get("repository")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// Record the repository a target holds (kept in its config as `repository`), with an
    /// event when it changes.
    pub fn set_target_repository(&self, target: &str, id: &str) -> Result<()> {
        let r = self.resource(target)?;
        if r.config.get("repository").and_then(Value::as_str) == Some(id) {
            return Ok(());
        }
        let mut config = match r.config {
            Value::Object(m) => m,
            _ => {
                return Err(Error::Invalid(format!(
                    "target {target}: its configuration is not an object"
                )));
            }
        };
        config.insert("repository".into(), Value::String(id.to_string()));
        let text = Value::Object(config).to_string();
        let now = self.now();
        self.rt.block_on(async {
            let db = |e| self.db(e);
            let mut tx = self.write_tx().await.map_err(db)?;
            sqlx::query("UPDATE resources SET config = $1 WHERE id = $2")
                .bind(&text)
                .bind(r.id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            crate::resources::event(&mut tx, r.id, now, "repository", id)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)
        })
    }

    /// Note why a target was passed over (securing checks, verify): an event row.
    pub fn note(&self, target: &str, what: &str, reason: &str) -> Result<()> {
        let r = self.resource(target)?;
        let now = self.now();
        self.rt.block_on(async {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            crate::resources::event(&mut conn, r.id, now, what, reason)
                .await
                .map_err(|e| self.db(e))
        })
    }
}
