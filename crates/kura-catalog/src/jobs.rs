//! Job definitions (seed: backup processing information 410), their runs and streams, and
//! the backups they wrote with each backup's extents (seed: backup data save information 460).
//!
//! # Durability
//! The catalog must never claim data that is not durable. So an extent is recorded only
//! after its target acknowledged the write ([`Catalog::record_extent`] is called with what
//! the target returned), and a backup becomes `complete` only through
//! [`Catalog::finish_backup`], after every stream has finished. A manager that dies leaves
//! its backup `running`: restores and retention treat anything but `complete` as unusable.

use kura_types::JobSettings;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Catalog, Error, Result};

/// How a job uses its n subsystems (seed 001: mirror writes every extent to each;
/// fail-over moves a stream to a spare when one fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Mirror,
    Failover,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mirror => "mirror",
            Mode::Failover => "failover",
        }
    }

    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "mirror" => Ok(Mode::Mirror),
            "failover" => Ok(Mode::Failover),
            _ => Err(Error::Invalid(format!(
                "unknown mode {s:?} (mirror, failover)"
            ))),
        }
    }
}

/// A job definition: what to back up, when, onto how many subsystems, how.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDef {
    /// The job number (the seed's "process number" of a run is [`Run::id`]).
    pub id: i64,
    pub name: String,
    /// What is backed up: a path, a volume name, an image.
    pub object: String,
    /// When it runs (kept for the scheduler; not interpreted by the catalog).
    pub schedule: Option<String>,
    /// How many disjoint subsystems a run secures.
    pub redundancy: i64,
    pub mode: Mode,
    /// How its runs use their targets (stored as JSON in `config`).
    pub settings: JobSettings,
}

/// One stream of a run: the subsystem it used and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    pub stream: i64,
    pub worker: String,
    pub path: String,
    pub target: String,
    pub medium: String,
    /// `secured`, `ended`, or `lost` (lease expired).
    pub state: String,
}

/// One run of a job (or an ad-hoc run, `job == None`): the process number and its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: i64,
    pub job: Option<i64>,
    pub started: i64,
    pub ended: Option<i64>,
    /// `running`, `succeeded`, `failed`, `aborted`, `released`, or `expired`.
    pub state: String,
    pub error: Option<String>,
    pub streams: Vec<StreamRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    Running,
    Complete,
    Failed,
    /// `kura backups forget` is deleting it (metadata first; a crash leaves this state for
    /// `catalog verify --fix` to finish).
    Forgetting,
    /// Every copy was removed from its target (forget, prune): history, not restorable.
    Forgotten,
}

impl BackupState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupState::Running => "running",
            BackupState::Complete => "complete",
            BackupState::Failed => "failed",
            BackupState::Forgetting => "forgetting",
            BackupState::Forgotten => "forgotten",
        }
    }

    fn parse(s: &str) -> BackupState {
        match s {
            "complete" => BackupState::Complete,
            "running" => BackupState::Running,
            "forgetting" => BackupState::Forgetting,
            "forgotten" => BackupState::Forgotten,
            _ => BackupState::Failed,
        }
    }
}

/// A backup of one object by one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub id: i64,
    pub run: Option<i64>,
    pub object: String,
    pub started: i64,
    pub ended: Option<i64>,
    /// The point in time the data represents (a snapshot's or split's time), ms.
    pub data_time: i64,
    pub state: BackupState,
}

/// Where one piece of a backup's source was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub stream: i64,
    pub seq: i64,
    pub source_offset: i64,
    pub source_length: i64,
    pub target: String,
    pub medium: String,
    /// Where on the medium (a pack id, an object key, a tape block).
    pub position: String,
    /// Bytes stored.
    pub size: i64,
}

fn valid_job_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.bytes().all(|b| b.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "job name {name:?}: use 1–128 letters, digits, '-', '_', '.', ':' or '@', \
             not only digits (numbers name jobs by id)"
        )))
    }
}

/// What [`Catalog::add_job`] and [`Catalog::update_job`] refuse: a bad name, an empty object
/// or schedule, a redundancy below 1, settings that do not fit the redundancy.
fn check_job(
    name: &str,
    object: &str,
    schedule: Option<&str>,
    redundancy: i64,
    settings: &JobSettings,
) -> Result<()> {
    valid_job_name(name)?;
    if object.trim().is_empty() {
        return Err(Error::Invalid(format!("job {name}: the object is empty")));
    }
    if redundancy < 1 {
        return Err(Error::Invalid(format!(
            "job {name}: redundancy must be at least 1 (got {redundancy})"
        )));
    }
    if schedule.is_some_and(|s| s.trim().is_empty()) {
        return Err(Error::Invalid(format!("job {name}: the schedule is empty")));
    }
    settings
        .check(
            &format!("job {name}"),
            usize::try_from(redundancy).unwrap_or(usize::MAX),
        )
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(())
}

const BACKUP_SELECT: &str = "SELECT id, run, object, started, ended, data_time, state FROM backups";

fn row_to_backup(r: &AnyRow) -> std::result::Result<Backup, sqlx::Error> {
    Ok(Backup {
        id: r.try_get(0)?,
        run: r.try_get(1)?,
        object: r.try_get(2)?,
        started: r.try_get(3)?,
        ended: r.try_get(4)?,
        data_time: r.try_get(5)?,
        state: BackupState::parse(&r.try_get::<String, _>(6)?),
    })
}

fn row_to_job(r: &AnyRow) -> std::result::Result<JobDef, sqlx::Error> {
    let mode: String = r.try_get("mode")?;
    let config: String = r.try_get("config")?;
    let name: String = r.try_get("name")?;
    let settings = JobSettings::from_json(&format!("job {name}"), &config)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(JobDef {
        id: r.try_get("id")?,
        name,
        object: r.try_get("object")?,
        schedule: r.try_get("schedule")?,
        redundancy: r.try_get("redundancy")?,
        mode: Mode::parse(&mode).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
        settings,
    })
}

impl Catalog {
    /// Define a job. `redundancy` is the n its runs secure (at least 1); `settings` are
    /// checked against it ([`JobSettings::check`]).
    pub fn add_job(
        &self,
        name: &str,
        object: &str,
        schedule: Option<&str>,
        redundancy: i64,
        mode: Mode,
        settings: &JobSettings,
    ) -> Result<i64> {
        check_job(name, object, schedule, redundancy, settings)?;
        let cfg = settings.to_json();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            self.refuse_duplicate(&mut tx, "SELECT id FROM jobs WHERE name = $1", name)
                .await?;
            let id: i64 = sqlx::query(
                "INSERT INTO jobs (name, object, schedule, redundancy, mode, config) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(name)
            .bind(object)
            .bind(schedule)
            .bind(redundancy)
            .bind(mode.as_str())
            .bind(&cfg)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(id)
        })
    }

    /// Change a job's definition (everything but its name and number), checked as
    /// [`Catalog::add_job`] checks a new one; one statement, so a refused change leaves the
    /// job as it was.
    pub fn update_job(
        &self,
        id: i64,
        object: &str,
        schedule: Option<&str>,
        redundancy: i64,
        mode: Mode,
        settings: &JobSettings,
    ) -> Result<()> {
        let name: String = self
            .rt
            .block_on(
                sqlx::query("SELECT name FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .map_err(|e| self.db(e))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| self.db(e))?
            .ok_or_else(|| Error::UnknownJob(id.to_string()))?;
        check_job(&name, object, schedule, redundancy, settings)?;
        let cfg = settings.to_json();
        self.exec(
            "UPDATE jobs SET object = $1, schedule = $2, redundancy = $3, mode = $4, \
             config = $5 WHERE id = $6",
            |q| {
                q.bind(object)
                    .bind(schedule)
                    .bind(redundancy)
                    .bind(mode.as_str())
                    .bind(cfg.clone())
                    .bind(id)
            },
        )
    }

    /// Change a job's schedule (`Some(None)` removes it; `None` leaves it) and its run
    /// settings, checked as [`add_job`](Self::add_job) checks them: all or nothing.
    pub fn edit_job(
        &self,
        name_or_number: &str,
        schedule: Option<Option<&str>>,
        settings: &JobSettings,
    ) -> Result<JobDef> {
        let j = self.job(name_or_number)?;
        let schedule = match schedule {
            Some(s) => s.map(str::to_string),
            None => j.schedule.clone(),
        };
        self.update_job(
            j.id,
            &j.object,
            schedule.as_deref(),
            j.redundancy,
            j.mode,
            settings,
        )?;
        Ok(JobDef {
            schedule,
            settings: settings.clone(),
            ..j
        })
    }

    /// Every job definition, by number.
    pub fn jobs(&self) -> Result<Vec<JobDef>> {
        self.rt.block_on(async {
            sqlx::query(
                "SELECT id, name, object, schedule, redundancy, mode, config FROM jobs ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| rows.iter().map(row_to_job).collect())
            .map_err(|e| self.db(e))
        })
    }

    /// A job by name or by number.
    pub fn job(&self, name_or_number: &str) -> Result<JobDef> {
        let number: Option<i64> = name_or_number.parse().ok();
        self.jobs()?
            .into_iter()
            .find(|j| j.name == name_or_number || Some(j.id) == number)
            .ok_or_else(|| Error::UnknownJob(name_or_number.to_string()))
    }

    /// Delete a job definition. Its runs and backups stay (their job becomes unknown).
    /// Found by number and name alone, so that a job whose stored settings no longer parse
    /// can still be removed.
    pub fn remove_job(&self, name_or_number: &str) -> Result<()> {
        let number: Option<i64> = name_or_number.parse().ok();
        let (id, name): (i64, String) = self
            .rt
            .block_on(sqlx::query("SELECT id, name FROM jobs ORDER BY id").fetch_all(&self.pool))
            .and_then(|rows| {
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<std::result::Result<Vec<(i64, String)>, sqlx::Error>>()
            })
            .map_err(|e| self.db(e))?
            .into_iter()
            .find(|(id, name)| name == name_or_number || Some(*id) == number)
            .ok_or_else(|| Error::UnknownJob(name_or_number.to_string()))?;
        self.reclaim()?;
        let running = self
            .runs(Some(id), 1)?
            .into_iter()
            .any(|r| r.ended.is_none());
        if running {
            return Err(Error::InUse(format!(
                "job {name} is running; wait for it to end or its lease to expire"
            )));
        }
        self.exec("DELETE FROM jobs WHERE id = $1", |q| q.bind(id))
    }

    /// The newest `limit` runs (of one job, or of all), newest first, with their streams.
    pub fn runs(&self, job: Option<i64>, limit: i64) -> Result<Vec<Run>> {
        self.rt.block_on(async {
            let db = |e| self.db(e);
            let rows = match job {
                Some(j) => {
                    sqlx::query(
                        "SELECT id, job, started, ended, state, error FROM job_runs \
                         WHERE job = $1 ORDER BY id DESC LIMIT $2",
                    )
                    .bind(j)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                }
                None => {
                    sqlx::query(
                        "SELECT id, job, started, ended, state, error FROM job_runs \
                         ORDER BY id DESC LIMIT $1",
                    )
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                }
            }
            .map_err(db)?;
            let mut runs = Vec::new();
            for r in &rows {
                let id: i64 = r.try_get("id").map_err(db)?;
                let streams = sqlx::query(
                    "SELECT s.stream, w.name, p.name, t.name, m.name, s.state FROM streams s \
                     LEFT JOIN resources w ON w.id = s.worker \
                     LEFT JOIN resources p ON p.id = s.path \
                     LEFT JOIN resources t ON t.id = s.target \
                     LEFT JOIN resources m ON m.id = s.medium \
                     WHERE s.run = $1 ORDER BY s.stream",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                let name = |row: &AnyRow, i: usize| -> std::result::Result<String, sqlx::Error> {
                    Ok(row
                        .try_get::<Option<String>, _>(i)?
                        .unwrap_or_else(|| "(removed)".into()))
                };
                let streams = streams
                    .iter()
                    .map(|s| {
                        Ok(StreamRow {
                            stream: s.try_get(0)?,
                            worker: name(s, 1)?,
                            path: name(s, 2)?,
                            target: name(s, 3)?,
                            medium: name(s, 4)?,
                            state: s.try_get(5)?,
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
                    .map_err(db)?;
                runs.push(Run {
                    id,
                    job: r.try_get("job").map_err(db)?,
                    started: r.try_get("started").map_err(db)?,
                    ended: r.try_get("ended").map_err(db)?,
                    state: r.try_get("state").map_err(db)?,
                    error: r.try_get("error").map_err(db)?,
                    streams,
                });
            }
            Ok(runs)
        })
    }

    /// Start recording a backup of `object` by run `run`, begun at `started` (ms: the
    /// snapshot's start, or the run's; the same value the records on the targets carry, so a
    /// rebuild finds the row again), representing the data as of `data_time` (ms). It stays
    /// `running` until [`finish_backup`](Self::finish_backup).
    pub fn begin_backup(
        &self,
        run: i64,
        object: &str,
        started: i64,
        data_time: i64,
    ) -> Result<i64> {
        self.rt.block_on(async {
            let known = sqlx::query("SELECT ended FROM job_runs WHERE id = $1")
                .bind(run)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            match known {
                None => return Err(Error::Invalid(format!("no run (process) {run}"))),
                Some(r)
                    if r.try_get::<Option<i64>, _>(0)
                        .map_err(|e| self.db(e))?
                        .is_some() =>
                {
                    return Err(Error::Invalid(format!("run {run} has already ended")));
                }
                Some(_) => {}
            }
            sqlx::query(
                "INSERT INTO backups (run, object, started, data_time, state) \
                 VALUES ($1, $2, $3, $4, 'running') RETURNING id",
            )
            .bind(run)
            .bind(object)
            .bind(started)
            .bind(data_time)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.db(e))
        })
    }

    /// Record an extent the target has acknowledged as durable. Call it only after the write
    /// returned: the catalog's promise is that every recorded extent can be read back.
    pub fn record_extent(&self, backup: i64, e: &Extent) -> Result<()> {
        let (t, m) = (self.resource(&e.target)?, self.resource(&e.medium)?);
        if m.parent != Some(t.id) {
            return Err(Error::Invalid(format!(
                "medium {} does not belong to target {}",
                e.medium, e.target
            )));
        }
        if e.source_offset < 0 || e.source_length < 0 || e.size < 0 || e.seq < 0 {
            return Err(Error::Invalid(format!(
                "extent {} of backup {backup}: negative offset, length, size or sequence",
                e.seq
            )));
        }
        let state = self.backup(backup)?.state;
        if state != BackupState::Running {
            return Err(Error::Invalid(format!(
                "backup {backup} is {}; extents are recorded while it runs",
                state.as_str()
            )));
        }
        self.exec(
            "INSERT INTO extents (backup, stream, seq, source_offset, source_length, target, \
             medium, position, size, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'durable')",
            |q| {
                q.bind(backup)
                    .bind(e.stream)
                    .bind(e.seq)
                    .bind(e.source_offset)
                    .bind(e.source_length)
                    .bind(t.id)
                    .bind(m.id)
                    .bind(e.position.clone())
                    .bind(e.size)
            },
        )
    }

    /// End a backup: `Complete` only when the caller has every extent durable, else `Failed`.
    pub fn finish_backup(&self, backup: i64, state: BackupState) -> Result<()> {
        if state == BackupState::Running {
            return Err(Error::Invalid("a backup cannot finish as running".into()));
        }
        let now = self.now();
        self.exec(
            "UPDATE backups SET state = $1, ended = $2 WHERE id = $3 AND state = 'running'",
            |q| q.bind(state.as_str()).bind(now).bind(backup),
        )
    }

    /// Re-enter a backup read back from a target's catalog record (`kura catalog rebuild`):
    /// `complete`, without a run. A backup the catalog already has (same object, start and
    /// data time) gets only the extents it lacks. Returns the backup's number, whether it is
    /// new, and the extents left out because their target or medium is not registered here.
    pub fn import_backup(
        &self,
        object: &str,
        started: i64,
        ended: i64,
        data_time: i64,
        extents: &[Extent],
    ) -> Result<(i64, bool, Vec<Extent>)> {
        // The same backup: same object and data time, and the same start or a copy of the
        // same snapshot (rows written before the start was the snapshot's carry another).
        let snapshots: Vec<&str> = extents
            .iter()
            .filter_map(|e| e.position.split(':').next())
            .collect();
        let mut existing = None;
        for b in self.backups(Some(object))? {
            if b.data_time != data_time {
                continue;
            }
            let same = b.started == started
                || self
                    .extents(b.id)?
                    .iter()
                    .any(|e| snapshots.contains(&e.position.split(':').next().unwrap_or("")));
            if same {
                existing = Some(b);
                break;
            }
        }
        // A backup being deleted gets nothing back.
        if let Some(b) = &existing
            && b.state == BackupState::Forgetting
        {
            return Ok((b.id, false, Vec::new()));
        }
        let have: Vec<(i64, String)> = match &existing {
            Some(b) => self
                .extents(b.id)?
                .into_iter()
                .map(|e| (e.seq, e.target))
                .collect(),
            None => Vec::new(),
        };
        let known: Vec<String> = self.resources()?.into_iter().map(|r| r.name).collect();
        let (usable, skipped): (Vec<&Extent>, Vec<&Extent>) = extents
            .iter()
            .filter(|e| !have.contains(&(e.seq, e.target.clone())))
            .partition(|e| known.contains(&e.target) && known.contains(&e.medium));
        let existing_id = existing.as_ref().map(|b| b.id);
        let id: i64 = self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            let id: i64 = match existing_id {
                Some(id) => id,
                None => sqlx::query(
                    "INSERT INTO backups (run, object, started, ended, data_time, state) \
                     VALUES (NULL, $1, $2, $3, $4, 'complete') RETURNING id",
                )
                .bind(object)
                .bind(started)
                .bind(ended)
                .bind(data_time)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| self.db(e))?,
            };
            // A forgotten backup whose copy turned up again (verified by the caller) is
            // complete again.
            if existing_id.is_some() && !usable.is_empty() {
                sqlx::query(
                    "UPDATE backups SET state = 'complete' WHERE id = $1 AND state = 'forgotten'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            }
            for e in &usable {
                sqlx::query(
                    "INSERT INTO extents (backup, stream, seq, source_offset, source_length, \
                     target, medium, position, size, state) SELECT $1, $2, $3, $4, $5, t.id, \
                     m.id, $6, $7, 'durable' FROM resources t, resources m \
                     WHERE t.name = $8 AND m.name = $9",
                )
                .bind(id)
                .bind(e.stream)
                .bind(e.seq)
                .bind(e.source_offset)
                .bind(e.source_length)
                .bind(e.position.clone())
                .bind(e.size)
                .bind(e.target.clone())
                .bind(e.medium.clone())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            }
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok::<_, Error>(id)
        })?;
        Ok((
            id,
            existing_id.is_none(),
            skipped.into_iter().cloned().collect(),
        ))
    }

    pub fn backup(&self, id: i64) -> Result<Backup> {
        let row = self
            .rt
            .block_on(
                sqlx::query(&format!("{BACKUP_SELECT} WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .map_err(|e| self.db(e))?;
        match row {
            Some(r) => row_to_backup(&r).map_err(|e| self.db(e)),
            None => Err(Error::UnknownBackup(id)),
        }
    }

    /// Backups (of one object, or all), newest first.
    pub fn backups(&self, object: Option<&str>) -> Result<Vec<Backup>> {
        let rows = self.rt.block_on(async {
            match object {
                Some(o) => {
                    sqlx::query(&format!(
                        "{BACKUP_SELECT} WHERE object = $1 ORDER BY id DESC"
                    ))
                    .bind(o)
                    .fetch_all(&self.pool)
                    .await
                }
                None => {
                    sqlx::query(&format!("{BACKUP_SELECT} ORDER BY id DESC"))
                        .fetch_all(&self.pool)
                        .await
                }
            }
        });
        rows.and_then(|rows| rows.iter().map(row_to_backup).collect())
            .map_err(|e| self.db(e))
    }

    /// The extents of a backup in source order (then by target).
    pub fn extents(&self, backup: i64) -> Result<Vec<Extent>> {
        self.rt.block_on(async {
            sqlx::query(
                "SELECT e.stream, e.seq, e.source_offset, e.source_length, t.name, m.name, \
                 e.position, e.size FROM extents e \
                 JOIN resources t ON t.id = e.target JOIN resources m ON m.id = e.medium \
                 WHERE e.backup = $1 ORDER BY e.seq, t.name",
            )
            .bind(backup)
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|r| {
                        Ok(Extent {
                            stream: r.try_get(0)?,
                            seq: r.try_get(1)?,
                            source_offset: r.try_get(2)?,
                            source_length: r.try_get(3)?,
                            target: r.try_get(4)?,
                            medium: r.try_get(5)?,
                            position: r.try_get(6)?,
                            size: r.try_get(7)?,
                        })
                    })
                    .collect()
            })
            .map_err(|e| self.db(e))
        })
    }
}
