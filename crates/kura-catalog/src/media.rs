//! Sequential media: pools, media sets, tapes and their states, backups copied to tape and
//! where each piece of their data is (tape label, file number).
//!
//! # States of a tape
//! `blank` (labelled, in no media set: may join one), `writable` (in a set, may be appended
//! to), `full`, `retired` (the operator took it out of use), `error` (refused or failed: a
//! wrong label, a drive error while it was written; never chosen until the operator
//! labels it again). A media set's tapes all expire together, when the pool's retention has
//! passed since the set was last written: its backups leave the catalog and its tapes become
//! `blank` again (remembering the set they may overwrite).
//!
//! # What is recorded when
//! A piece of a pack is recorded only once its archive's filemark is written (the drive
//! flushed): the catalog never claims what a tape does not hold. A tape backup is
//! `writing` until every pack it needs has all its bytes recorded in its set, then
//! `complete`. Recording is idempotent (a rebuild from the tapes enters nothing twice).

use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Catalog, Error, Result};

/// What a pool does with a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppendPolicy {
    /// Go on writing the pool's newest media set (its last tape, then new ones).
    Append,
    /// Start a new media set each session.
    NewSet,
}

impl AppendPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AppendPolicy::Append => "append",
            AppendPolicy::NewSet => "new-set",
        }
    }

    pub fn parse(s: &str) -> Result<AppendPolicy> {
        match s {
            "append" => Ok(AppendPolicy::Append),
            "new-set" => Ok(AppendPolicy::NewSet),
            _ => Err(Error::Invalid(format!(
                "append policy {s:?}: expected append or new-set"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pool {
    pub name: String,
    /// How long a media set is kept after it was last written (a duration, `30d`); `None`:
    /// forever.
    pub retention: Option<String>,
    pub append: AppendPolicy,
    pub created: i64,
}

/// A tape's state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TapeState {
    Blank,
    Writable,
    Full,
    Retired,
    Error,
}

impl TapeState {
    pub fn as_str(self) -> &'static str {
        match self {
            TapeState::Blank => "blank",
            TapeState::Writable => "writable",
            TapeState::Full => "full",
            TapeState::Retired => "retired",
            TapeState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Result<TapeState> {
        Ok(match s {
            "blank" => TapeState::Blank,
            "writable" => TapeState::Writable,
            "full" => TapeState::Full,
            "retired" => TapeState::Retired,
            "error" => TapeState::Error,
            _ => return Err(Error::Invalid(format!("tape state {s:?}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tape {
    pub label: String,
    pub library: String,
    pub pool: String,
    pub uuid: String,
    pub state: TapeState,
    pub media_set: Option<String>,
    pub set_seq: Option<i64>,
    /// The expired set whose label this blank tape still carries (it may be overwritten).
    pub expired_set: Option<String>,
    pub bytes: i64,
    pub files: i64,
    pub labelled: i64,
    pub written: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MediaSet {
    pub id: String,
    pub pool: String,
    pub library: String,
    pub created: i64,
    pub last_written: Option<i64>,
}

/// A backup copied to tape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TapeBackup {
    pub id: i64,
    pub media_set: String,
    pub repository: String,
    pub snapshot: String,
    /// The snapshot's time, ms since the epoch.
    pub taken: i64,
    /// Where its management information is.
    pub label: String,
    pub file: i64,
    pub bytes: i64,
    /// `writing` or `complete`.
    pub state: String,
    pub added: i64,
}

/// Where a piece of a pack is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TapePiece {
    pub pack: String,
    pub start: i64,
    pub len: i64,
    pub total: i64,
    pub label: String,
    pub file: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MountRequest {
    pub id: i64,
    pub library: String,
    pub message: String,
    pub since: i64,
    pub ended: Option<i64>,
    pub outcome: Option<String>,
}

const TAPE_SELECT: &str = "SELECT label, library, pool, uuid, state, media_set, set_seq, \
     expired_set, bytes, files, labelled, written, reason FROM tapes";
const BACKUP_SELECT: &str = "SELECT id, media_set, repository, snapshot, taken, label, file, \
     bytes, state, added FROM tape_backups";

fn row_to_tape(r: &AnyRow) -> std::result::Result<Tape, sqlx::Error> {
    let state: String = r.try_get(4)?;
    Ok(Tape {
        label: r.try_get(0)?,
        library: r.try_get(1)?,
        pool: r.try_get(2)?,
        uuid: r.try_get(3)?,
        state: TapeState::parse(&state).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
        media_set: r.try_get(5)?,
        set_seq: r.try_get(6)?,
        expired_set: r.try_get(7)?,
        bytes: r.try_get(8)?,
        files: r.try_get(9)?,
        labelled: r.try_get(10)?,
        written: r.try_get(11)?,
        reason: r.try_get(12)?,
    })
}

fn row_to_backup(r: &AnyRow) -> std::result::Result<TapeBackup, sqlx::Error> {
    Ok(TapeBackup {
        id: r.try_get(0)?,
        media_set: r.try_get(1)?,
        repository: r.try_get(2)?,
        snapshot: r.try_get(3)?,
        taken: r.try_get(4)?,
        label: r.try_get(5)?,
        file: r.try_get(6)?,
        bytes: r.try_get(7)?,
        state: r.try_get(8)?,
        added: r.try_get(9)?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl Catalog {
    fn rows<'q>(
        &self,
        sql: &'q str,
        bind: impl FnOnce(Query<'q>) -> Query<'q>,
    ) -> Result<Vec<AnyRow>> {
        self.rt
            .block_on(bind(sqlx::query(sql)).fetch_all(&self.pool))
            .map_err(|e| self.db(e))
    }

    fn changed<'q>(&self, sql: &'q str, bind: impl FnOnce(Query<'q>) -> Query<'q>) -> Result<u64> {
        self.rt
            .block_on(bind(sqlx::query(sql)).execute(&self.pool))
            .map(|r| r.rows_affected())
            .map_err(|e| self.db(e))
    }

    // ----- pools -----

    pub fn add_pool(
        &self,
        name: &str,
        retention: Option<&str>,
        append: AppendPolicy,
    ) -> Result<()> {
        crate::resources::valid_name(name)?;
        if let Some(r) = retention {
            kura_types::Duration::parse_positive(r)
                .map_err(|e| Error::Invalid(format!("pool {name}: retention: {e}")))?;
        }
        if !self
            .rows("SELECT name FROM media_pools WHERE name = $1", |q| {
                q.bind(name)
            })?
            .is_empty()
        {
            return Err(Error::Duplicate(name.to_string()));
        }
        self.exec(
            "INSERT INTO media_pools (name, retention, append_policy, created) VALUES ($1, $2, $3, $4)",
            |q| q.bind(name).bind(retention.map(str::to_string)).bind(append.as_str()).bind(self.now()),
        )
    }

    pub fn pools(&self) -> Result<Vec<Pool>> {
        let rows = self.rows(
            "SELECT name, retention, append_policy, created FROM media_pools ORDER BY name",
            |q| q,
        )?;
        rows.iter()
            .map(|r| {
                let append: String = r.try_get(2).map_err(|e| self.db(e))?;
                Ok(Pool {
                    name: r.try_get(0).map_err(|e| self.db(e))?,
                    retention: r.try_get(1).map_err(|e| self.db(e))?,
                    append: AppendPolicy::parse(&append)?,
                    created: r.try_get(3).map_err(|e| self.db(e))?,
                })
            })
            .collect()
    }

    pub fn pool(&self, name: &str) -> Result<Pool> {
        self.pools()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Invalid(format!("no media pool {name:?} (kura media pool add)")))
    }

    // ----- tapes -----

    /// Record a tape just labelled (a new one, or one labelled again: its old set's pieces
    /// are no longer on it, so it must be in no set with backups).
    pub fn label_tape(&self, label: &str, library: &str, pool: &str, uuid: &str) -> Result<()> {
        self.pool(pool)?;
        if let Ok(t) = self.tape(label)
            && let Some(set) = &t.media_set
        {
            return Err(Error::InUse(format!(
                "tape {label} is tape {} of media set {set}; it can be labelled again once \
                 the set expired or after `kura media retire`",
                t.set_seq.unwrap_or(0)
            )));
        }
        self.changed("DELETE FROM tapes WHERE label = $1", |q| q.bind(label))?;
        self.exec(
            "INSERT INTO tapes (label, library, pool, uuid, state, labelled) \
             VALUES ($1, $2, $3, $4, 'blank', $5)",
            |q| {
                q.bind(label)
                    .bind(library)
                    .bind(pool)
                    .bind(uuid)
                    .bind(self.now())
            },
        )
    }

    pub fn tapes(&self, library: Option<&str>) -> Result<Vec<Tape>> {
        let rows = match library {
            Some(l) => {
                let sql = format!("{TAPE_SELECT} WHERE library = $1 ORDER BY label");
                self.rows(&sql, |q| q.bind(l.to_string()))?
            }
            None => {
                let sql = format!("{TAPE_SELECT} ORDER BY label");
                self.rows(&sql, |q| q)?
            }
        };
        rows.iter()
            .map(row_to_tape)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.db(e))
    }

    pub fn tape(&self, label: &str) -> Result<Tape> {
        self.tapes(None)?
            .into_iter()
            .find(|t| t.label == label)
            .ok_or_else(|| Error::Invalid(format!("no tape {label:?} in the catalog")))
    }

    pub fn set_tape_state(
        &self,
        label: &str,
        state: TapeState,
        reason: Option<&str>,
    ) -> Result<()> {
        let n = self.changed(
            "UPDATE tapes SET state = $1, reason = $2 WHERE label = $3",
            |q| {
                q.bind(state.as_str())
                    .bind(reason.map(str::to_string))
                    .bind(label)
            },
        )?;
        if n == 0 {
            return Err(Error::Invalid(format!("no tape {label:?} in the catalog")));
        }
        Ok(())
    }

    /// A tape became tape `seq` of `set`.
    pub fn join_set(&self, label: &str, set: &str, seq: i64) -> Result<()> {
        self.changed(
            "UPDATE tapes SET media_set = $1, set_seq = $2, expired_set = NULL, \
             state = 'writable', reason = NULL, written = $3 WHERE label = $4",
            |q| q.bind(set).bind(seq).bind(self.now()).bind(label),
        )?;
        Ok(())
    }

    /// An archive of `bytes` was acknowledged on a tape.
    pub fn tape_written(&self, label: &str, set: &str, bytes: i64) -> Result<()> {
        let now = self.now();
        self.changed(
            "UPDATE tapes SET bytes = bytes + $1, files = files + 1, written = $2 WHERE label = $3",
            |q| q.bind(bytes).bind(now).bind(label),
        )?;
        self.changed(
            "UPDATE media_sets SET last_written = $1 WHERE id = $2",
            |q| q.bind(now).bind(set),
        )?;
        Ok(())
    }

    // ----- media sets -----

    pub fn create_media_set(
        &self,
        id: &str,
        pool: &str,
        library: &str,
        created: i64,
    ) -> Result<()> {
        self.changed(
            "INSERT INTO media_sets (id, pool, library, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
            |q| q.bind(id).bind(pool).bind(library).bind(created),
        )?;
        Ok(())
    }

    pub fn media_sets(&self) -> Result<Vec<MediaSet>> {
        let rows = self.rows(
            "SELECT id, pool, library, created, last_written FROM media_sets ORDER BY created, id",
            |q| q,
        )?;
        rows.iter()
            .map(|r| {
                Ok(MediaSet {
                    id: r.try_get(0)?,
                    pool: r.try_get(1)?,
                    library: r.try_get(2)?,
                    created: r.try_get(3)?,
                    last_written: r.try_get(4)?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| self.db(e))
    }

    /// The tapes of a set, in their order.
    pub fn set_tapes(&self, set: &str) -> Result<Vec<Tape>> {
        let mut t: Vec<Tape> = self
            .tapes(None)?
            .into_iter()
            .filter(|t| t.media_set.as_deref() == Some(set))
            .collect();
        t.sort_by_key(|t| t.set_seq);
        Ok(t)
    }

    /// Expire the pool's media sets whose retention has passed: their backups leave the
    /// catalog, their tapes become blank (remembering the set they may overwrite). Returns
    /// the sets expired.
    pub fn expire_sets(&self, pool: &str) -> Result<Vec<String>> {
        let p = self.pool(pool)?;
        let Some(retention) = &p.retention else {
            return Ok(Vec::new());
        };
        let keep = kura_types::Duration::parse_positive(retention)
            .map_err(|e| Error::Invalid(format!("pool {pool}: retention: {e}")))?;
        let cutoff = self.now() - keep.std().as_millis() as i64;
        let mut expired = Vec::new();
        for s in self.media_sets()? {
            if s.pool != pool || s.last_written.unwrap_or(s.created) > cutoff {
                continue;
            }
            self.changed(
                "UPDATE tapes SET expired_set = media_set, media_set = NULL, set_seq = NULL, \
                 state = 'blank', bytes = 0, files = 0 WHERE media_set = $1 AND state <> 'retired'",
                |q| q.bind(s.id.clone()),
            )?;
            self.changed(
                "UPDATE tapes SET media_set = NULL, set_seq = NULL WHERE media_set = $1",
                |q| q.bind(s.id.clone()),
            )?;
            self.changed("DELETE FROM tape_pieces WHERE media_set = $1", |q| {
                q.bind(s.id.clone())
            })?;
            self.changed("DELETE FROM tape_backups WHERE media_set = $1", |q| {
                q.bind(s.id.clone())
            })?;
            self.changed("DELETE FROM media_sets WHERE id = $1", |q| {
                q.bind(s.id.clone())
            })?;
            expired.push(s.id);
        }
        Ok(expired)
    }

    // ----- backups on tape -----

    /// Record a backup whose management information is at (label, file). Returns its id, or
    /// `None` when the set already has it (nothing entered twice).
    pub fn add_tape_backup(&self, b: &TapeBackup, packs: &[(String, i64)]) -> Result<Option<i64>> {
        let now = self.now();
        self.rt
            .block_on(async {
                let mut tx = self.write_tx().await?;
                let inserted = sqlx::query(
                    "INSERT INTO tape_backups (media_set, repository, snapshot, taken, label, \
                     file, bytes, state, added) VALUES ($1, $2, $3, $4, $5, $6, $7, 'writing', $8) \
                     ON CONFLICT (media_set, snapshot) DO NOTHING",
                )
                .bind(b.media_set.clone())
                .bind(b.repository.clone())
                .bind(b.snapshot.clone())
                .bind(b.taken)
                .bind(b.label.clone())
                .bind(b.file)
                .bind(b.bytes)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let id: i64 = sqlx::query(
                    "SELECT id FROM tape_backups WHERE media_set = $1 AND snapshot = $2",
                )
                .bind(b.media_set.clone())
                .bind(b.snapshot.clone())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                for (pack, size) in packs {
                    sqlx::query(
                        "INSERT INTO tape_backup_packs (backup, pack, size) VALUES ($1, $2, $3) \
                         ON CONFLICT (backup, pack) DO NOTHING",
                    )
                    .bind(id)
                    .bind(pack.clone())
                    .bind(*size)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Some(id))
            })
            .map_err(|e| self.db(e))
    }

    /// Record pieces acknowledged on a tape (ignoring any already recorded), in one
    /// transaction.
    pub fn add_pieces(&self, set: &str, pieces: &[TapePiece]) -> Result<()> {
        self.acknowledge_archive(set, None, pieces)
    }

    /// An archive reached the tape: its pieces, and (with `written`: label, bytes) the
    /// tape's and the set's counters — one transaction, so one flush of the database per
    /// archive.
    pub fn acknowledge_archive(
        &self,
        set: &str,
        written: Option<(&str, i64)>,
        pieces: &[TapePiece],
    ) -> Result<()> {
        let now = self.now();
        self.rt
            .block_on(async {
                let mut tx = self.write_tx().await?;
                for p in pieces {
                    sqlx::query(
                        "INSERT INTO tape_pieces (media_set, pack, start, len, total, label, file) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (media_set, pack, start) DO NOTHING",
                    )
                    .bind(set)
                    .bind(p.pack.clone())
                    .bind(p.start)
                    .bind(p.len)
                    .bind(p.total)
                    .bind(p.label.clone())
                    .bind(p.file)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some((label, bytes)) = written {
                    sqlx::query(
                        "UPDATE tapes SET bytes = bytes + $1, files = files + 1, written = $2 \
                         WHERE label = $3",
                    )
                    .bind(bytes)
                    .bind(now)
                    .bind(label)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE media_sets SET last_written = $1 WHERE id = $2")
                        .bind(now)
                        .bind(set)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            })
            .map_err(|e| self.db(e))
    }

    /// Every piece recorded in a set, by pack.
    pub fn set_pieces(&self, set: &str) -> Result<HashMap<String, Vec<TapePiece>>> {
        let rows = self.rows(
            "SELECT pack, start, len, total, label, file FROM tape_pieces WHERE media_set = $1 \
             ORDER BY pack, start",
            |q| q.bind(set),
        )?;
        let mut out: HashMap<String, Vec<TapePiece>> = HashMap::new();
        for r in &rows {
            let p = TapePiece {
                pack: r.try_get(0).map_err(|e| self.db(e))?,
                start: r.try_get(1).map_err(|e| self.db(e))?,
                len: r.try_get(2).map_err(|e| self.db(e))?,
                total: r.try_get(3).map_err(|e| self.db(e))?,
                label: r.try_get(4).map_err(|e| self.db(e))?,
                file: r.try_get(5).map_err(|e| self.db(e))?,
            };
            out.entry(p.pack.clone()).or_default().push(p);
        }
        Ok(out)
    }

    /// The packs a tape backup needs, with their sizes.
    pub fn tape_backup_packs(&self, backup: i64) -> Result<Vec<(String, i64)>> {
        let rows = self.rows(
            "SELECT pack, size FROM tape_backup_packs WHERE backup = $1 ORDER BY pack",
            |q| q.bind(backup),
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| self.db(e))
    }

    /// Mark a tape backup complete once all its packs are whole in its set; returns whether
    /// it is.
    pub fn complete_if_whole(&self, backup: i64) -> Result<bool> {
        let b = self.tape_backup(backup)?;
        let pieces = self.set_pieces(&b.media_set)?;
        let whole = self.tape_backup_packs(backup)?.iter().all(|(pack, size)| {
            covered(pieces.get(pack).map(Vec::as_slice).unwrap_or(&[])) >= *size
        });
        if whole {
            self.changed(
                "UPDATE tape_backups SET state = 'complete' WHERE id = $1",
                |q| q.bind(backup),
            )?;
        }
        Ok(whole)
    }

    pub fn tape_backups(&self) -> Result<Vec<TapeBackup>> {
        let sql = format!("{BACKUP_SELECT} ORDER BY taken, id");
        let rows = self.rows(&sql, |q| q)?;
        rows.iter()
            .map(row_to_backup)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.db(e))
    }

    pub fn tape_backup(&self, id: i64) -> Result<TapeBackup> {
        self.tape_backups()?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| Error::Invalid(format!("no tape backup {id}")))
    }

    // ----- mount requests -----

    pub fn add_mount_request(&self, library: &str, message: &str) -> Result<i64> {
        let now = self.now();
        self.exec(
            "INSERT INTO mount_requests (library, message, since) VALUES ($1, $2, $3)",
            |q| q.bind(library).bind(message).bind(now),
        )?;
        let rows = self.rows(
            "SELECT id FROM mount_requests WHERE library = $1 AND since = $2 ORDER BY id DESC",
            |q| q.bind(library).bind(now),
        )?;
        rows.first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| self.db(e))?
            .ok_or_else(|| Error::Other("mount request vanished".into()))
    }

    pub fn end_mount_request(&self, id: i64, outcome: &str) -> Result<()> {
        self.changed(
            "UPDATE mount_requests SET ended = $1, outcome = $2 WHERE id = $3 AND ended IS NULL",
            |q| q.bind(self.now()).bind(outcome).bind(id),
        )?;
        Ok(())
    }

    /// Mount requests, the open ones (`ended` null) first.
    pub fn mount_requests(&self, open_only: bool) -> Result<Vec<MountRequest>> {
        let rows = self.rows(
            "SELECT id, library, message, since, ended, outcome FROM mount_requests \
             ORDER BY (ended IS NOT NULL), id DESC",
            |q| q,
        )?;
        let all = rows
            .iter()
            .map(|r| {
                Ok(MountRequest {
                    id: r.try_get(0)?,
                    library: r.try_get(1)?,
                    message: r.try_get(2)?,
                    since: r.try_get(3)?,
                    ended: r.try_get(4)?,
                    outcome: r.try_get(5)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.db(e))?;
        Ok(all
            .into_iter()
            .filter(|m| !open_only || m.ended.is_none())
            .collect())
    }
}

/// How many bytes from 0 the pieces cover without a gap.
pub fn covered(pieces: &[TapePiece]) -> i64 {
    covered_from_zero(pieces.iter().map(|p| (p.start, p.start + p.len)))
}

/// How far from 0 these `[start, end)` ranges reach without a gap.
pub fn covered_from_zero(ranges: impl IntoIterator<Item = (i64, i64)>) -> i64 {
    let mut v: Vec<(i64, i64)> = ranges.into_iter().collect();
    v.sort_unstable();
    let mut end = 0;
    for (s, e) in v {
        if s > end {
            break;
        }
        end = end.max(e);
    }
    end
}
