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

use kura_types::ResourceConfig;
use sqlx::Row;

use crate::{BackupState, Catalog, Result};

/// Can a backup whose extents are `rows` (position, source offset, source length) still be
/// restored, given it held `total` bytes of data? Yes with a whole copy anywhere (a position
/// without an index); else only if its sections still cover every byte: a sectioned backup
/// that lost one section is lost whole, whatever the other targets still hold (their
/// manifests included).
fn restorable(rows: &[(String, i64, i64)], total: i64) -> bool {
    if rows.is_empty() {
        return false;
    }
    if rows.iter().any(|(p, _, _)| !p.contains(':')) {
        return true;
    }
    let mut sections: Vec<(i64, i64)> = rows
        .iter()
        .filter(|(p, _, len)| !p.ends_with(':') && *len > 0)
        .map(|(_, off, len)| (*off, off + len))
        .collect();
    sections.sort_unstable();
    let mut covered = 0;
    for (start, end) in sections {
        if start > covered {
            return false;
        }
        covered = covered.max(end);
    }
    covered >= total
}

/// Does an extent's `position` (`SNAPSHOT` or `SNAPSHOT:INDEX`) belong to snapshot `hex`?
pub fn position_names(position: &str, hex: &str) -> bool {
    position.split(':').next() == Some(hex)
}

impl Catalog {
    /// Target `target` no longer holds snapshot `snapshot` (hex): delete every copy or
    /// section of it there (only section `seq`, if given). A complete backup that can no
    /// longer be restored — no copy left, or a sectioned one missing a section — becomes
    /// `forgotten`. Returns the backups that lost a copy (ascending).
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
            // How much data each affected backup holds (a sectioned backup's manifest-only
            // rows sit at its end), taken before the rows go.
            let mut totals = Vec::new();
            for id in &ids {
                let t: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(source_offset + source_length) FROM extents WHERE backup = $1",
                )
                .bind(*id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
                totals.push(t.unwrap_or(0));
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
            for (id, total) in ids.iter().zip(totals) {
                let left = sqlx::query(
                    "SELECT position, source_offset, source_length FROM extents WHERE backup = $1",
                )
                .bind(*id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
                let mut rows = Vec::new();
                for r in &left {
                    rows.push((
                        r.try_get::<String, _>(0).map_err(db)?,
                        r.try_get::<i64, _>(1).map_err(db)?,
                        r.try_get::<i64, _>(2).map_err(db)?,
                    ));
                }
                if !restorable(&rows, total) {
                    sqlx::query(
                        "UPDATE backups SET state = 'forgotten' WHERE id = $1 AND state = 'complete'",
                    )
                    .bind(*id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
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
        Ok(self.resource(target)?.target()?.repository.clone())
    }

    /// Record the repository a target holds (kept in its config as `repository`), with an
    /// event when it changes.
    pub fn set_target_repository(&self, target: &str, id: &str) -> Result<()> {
        let r = self.resource(target)?;
        let mut config = r.target()?.clone();
        if config.repository.as_deref() == Some(id) {
            return Ok(());
        }
        config.repository = Some(id.to_string());
        let text = ResourceConfig::Target(config).to_json();
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

    /// Target `copy.target` now holds backup `backup` whole (every section and the manifest:
    /// `kura heal` copied what it lacked): its section rows become the one copy row `copy`,
    /// in one transaction — a crash leaves either.
    pub fn sections_to_copy(&self, backup: i64, copy: &crate::Extent) -> Result<()> {
        let t = self.resource(&copy.target)?;
        let m = self.resource(&copy.medium)?;
        let pattern = format!("{}:%", copy.position);
        self.rt.block_on(async {
            let db = |e| self.db(e);
            let mut tx = self.write_tx().await.map_err(db)?;
            sqlx::query(
                "DELETE FROM extents WHERE backup = $1 AND target = $2 \
                 AND (position = $3 OR position LIKE $4)",
            )
            .bind(backup)
            .bind(t.id)
            .bind(&copy.position)
            .bind(&pattern)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            sqlx::query(
                "INSERT INTO extents (backup, stream, seq, source_offset, source_length, target, \
                 medium, position, size, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'durable')",
            )
            .bind(backup)
            .bind(copy.stream)
            .bind(copy.seq)
            .bind(copy.source_offset)
            .bind(copy.source_length)
            .bind(t.id)
            .bind(m.id)
            .bind(&copy.position)
            .bind(copy.size)
            .execute(&mut *tx)
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

#[cfg(test)]
mod tests {
    use super::restorable;

    fn row(p: &str, off: i64, len: i64) -> (String, i64, i64) {
        (p.to_string(), off, len)
    }

    #[test]
    fn a_backup_is_restorable_with_a_whole_copy_or_every_section() {
        assert!(!restorable(&[], 0));
        assert!(restorable(&[row("s", 0, 10)], 10), "a whole copy");
        let sections = [row("s:a", 0, 4), row("s:b", 4, 6), row("s:", 10, 0)];
        assert!(restorable(&sections, 10));
        assert!(!restorable(&sections[1..], 10), "the first section is gone");
        assert!(
            !restorable(&[row("s:a", 0, 4), row("s:", 10, 0)], 10),
            "the last one"
        );
        assert!(!restorable(&[row("s:", 10, 0)], 10), "a manifest alone");
        // Healed: a section held twice survives losing one holder.
        assert!(restorable(
            &[row("s:a", 0, 4), row("s:b", 4, 6), row("s:b", 4, 6)],
            10
        ));
        // An empty backup needs only its manifest.
        assert!(restorable(&[row("s:", 0, 0)], 0));
    }
}
