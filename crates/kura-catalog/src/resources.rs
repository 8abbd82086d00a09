//! Resources: registration, the derived state, operator switches, health and events.

use std::time::Duration;

use kura_types::{ConfigKind, MediumConfig, ResourceConfig, TargetConfig};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Catalog, Error, Result};

/// Consecutive errors after which a resource is taken out of service automatically.
pub const ERRORS_TO_NOT_USABLE: i64 = 3;

/// What a resource is (seed: library device / tape / FC path / backup server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Worker,
    Target,
    Medium,
    Path,
    CopyEngine,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Worker => "worker",
            Kind::Target => "target",
            Kind::Medium => "medium",
            Kind::Path => "path",
            Kind::CopyEngine => "copy-engine",
        }
    }

    /// Which configuration a resource of this kind has.
    pub fn config_kind(self) -> ConfigKind {
        match self {
            Kind::Target => ConfigKind::Target,
            Kind::Medium => ConfigKind::Medium,
            Kind::Worker | Kind::Path | Kind::CopyEngine => ConfigKind::None,
        }
    }

    pub fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "worker" => Kind::Worker,
            "target" => Kind::Target,
            "medium" => Kind::Medium,
            "path" => Kind::Path,
            "copy-engine" => Kind::CopyEngine,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown resource kind {s:?} (worker, target, medium, path, copy-engine)"
                )));
            }
        })
    }
}

/// The seed's three states, derived from the switches, health and allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Usable,
    InUse,
    NotUsable,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Usable => "usable",
            State::InUse => "in use",
            State::NotUsable => "not usable",
        }
    }
}

/// One resource with its allocations.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: i64,
    pub kind: Kind,
    pub name: String,
    /// Its configuration, of its kind's type (stored as JSON, parsed as it is read).
    pub config: ResourceConfig,
    /// The target a medium belongs to.
    pub parent: Option<i64>,
    pub slots: i64,
    pub enabled: bool,
    pub healthy: bool,
    pub errors: i64,
    pub last_error: Option<String>,
    /// When the switches or health last changed (ms since the epoch).
    pub since: i64,
    /// (process, stream, lease until) for each allocated slot.
    pub allocations: Vec<(i64, i64, i64)>,
}

impl Resource {
    /// A target's configuration; an error for any other kind of resource.
    pub fn target(&self) -> Result<&TargetConfig> {
        self.config.target().ok_or_else(|| {
            Error::Invalid(format!(
                "{} is a {}, not a target",
                self.name,
                self.kind.as_str()
            ))
        })
    }

    /// A target's URL; an error for any other kind of resource.
    pub fn target_url(&self) -> Result<&str> {
        self.target().map(|t| t.url.as_str())
    }

    pub fn state(&self) -> State {
        if !self.enabled || !self.healthy {
            State::NotUsable
        } else if self.allocations.len() as i64 >= self.slots {
            State::InUse
        } else {
            State::Usable
        }
    }

    /// Free slots (0 when not usable).
    pub fn free(&self) -> i64 {
        if !self.enabled || !self.healthy {
            0
        } else {
            (self.slots - self.allocations.len() as i64).max(0)
        }
    }

    /// Why it cannot be used, for messages ("not usable since 14:02 (probe: …)").
    pub fn why_not(&self) -> String {
        let when = utc_minute(self.since);
        if !self.enabled {
            format!("{} disabled since {when}", self.name)
        } else if !self.healthy {
            format!(
                "{} not usable since {when} ({} ×{})",
                self.name,
                self.last_error.as_deref().unwrap_or("errors"),
                self.errors
            )
        } else {
            format!("{} in use by process {}", self.name, self.allocations[0].0)
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` of a millisecond timestamp.
fn utc_minute(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

pub(crate) fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "resource name {name:?}: use 1–128 letters, digits, '-', '_', '.', ':' or '@'"
        )))
    }
}

/// A target URL must parse as one (same rules as `--repo`) and, for a directory, be
/// absolute: managers and workers run in different directories, a relative path would name
/// different places for each.
fn valid_target_url(name: &str, url: &str, sequential: bool) -> Result<()> {
    if sequential && kura_tape::library::LibrarySpec::is_library_url(url) {
        return kura_tape::library::LibrarySpec::parse(url)
            .map(|_| ())
            .map_err(|e| Error::Invalid(format!("target {name}: {e}")));
    }
    match kura_backend::Target::parse(url) {
        Err(e) => Err(Error::Invalid(format!("target {name}: {e}"))),
        Ok(kura_backend::Target::Local(p)) if !p.is_absolute() => Err(Error::Invalid(format!(
            "target {name}: {url:?} is a relative path; give an absolute one"
        ))),
        Ok(_) => Ok(()),
    }
}

fn config_name(k: ConfigKind) -> &'static str {
    match k {
        ConfigKind::Target => "target",
        ConfigKind::Medium => "medium",
        ConfigKind::None => "empty",
    }
}

fn row_to_resource(r: &AnyRow) -> std::result::Result<Resource, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    let kind = Kind::parse(&kind).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
    let config: String = r.try_get("config")?;
    let name: String = r.try_get("name")?;
    let config = ResourceConfig::from_json(
        kind.config_kind(),
        &format!("{} {name}", kind.as_str()),
        &config,
    )
    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Resource {
        id: r.try_get("id")?,
        kind,
        name,
        config,
        parent: r.try_get("parent")?,
        slots: r.try_get("slots")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        healthy: r.try_get::<i64, _>("healthy")? != 0,
        errors: r.try_get("errors")?,
        last_error: r.try_get("last_error")?,
        since: r.try_get("since")?,
        allocations: Vec::new(),
    })
}

const SELECT: &str = "SELECT id, kind, name, config, parent, slots, enabled, healthy, errors, \
                      last_error, since FROM resources";

impl Catalog {
    /// Register a resource with the configuration of its kind. A target gets its implicit
    /// medium (`NAME.medium`) unless it is `sequential` (labelled media are then added one by
    /// one).
    pub fn add_resource(
        &self,
        kind: Kind,
        name: &str,
        config: ResourceConfig,
        slots: i64,
    ) -> Result<i64> {
        valid_name(name)?;
        if slots < 1 {
            return Err(Error::Invalid(format!("{name}: slots must be at least 1")));
        }
        if config.kind() != kind.config_kind() {
            return Err(Error::Invalid(format!(
                "{} {name}: needs a {} configuration, not a {} one",
                kind.as_str(),
                config_name(kind.config_kind()),
                config_name(config.kind())
            )));
        }
        let mut sequential = false;
        if let ResourceConfig::Target(t) = &config {
            valid_target_url(name, &t.url, t.sequential)?;
            sequential = t.sequential;
        }
        let now = self.now();
        let cfg = config.to_json();
        let implicit = ResourceConfig::Medium(MediumConfig { implicit: true }).to_json();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            self.refuse_duplicate(&mut tx, "SELECT id FROM resources WHERE name = $1", name)
                .await?;
            let id: i64 = sqlx::query(
                "INSERT INTO resources (kind, name, config, slots, since) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(kind.as_str())
            .bind(name)
            .bind(&cfg)
            .bind(slots)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.db(e))?;
            if kind == Kind::Target && !sequential {
                sqlx::query(
                    "INSERT INTO resources (kind, name, config, parent, slots, since) \
                     VALUES ('medium', $1, $2, $3, 1, $4)",
                )
                .bind(format!("{name}.medium"))
                .bind(&implicit)
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            }
            event(&mut tx, id, now, "added", kind.as_str())
                .await
                .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(id)
        })
    }

    /// Add a labelled medium to a sequential target.
    pub fn add_medium(&self, target: &str, label: &str) -> Result<i64> {
        let t = self.resource(target)?;
        if t.kind != Kind::Target {
            return Err(Error::Invalid(format!(
                "{target} is a {}, not a target",
                t.kind.as_str()
            )));
        }
        let id = self.add_resource(
            Kind::Medium,
            label,
            ResourceConfig::Medium(MediumConfig::default()),
            1,
        )?;
        self.exec("UPDATE resources SET parent = $1 WHERE id = $2", |q| {
            q.bind(t.id).bind(id)
        })?;
        Ok(id)
    }

    /// Declare that `worker` reaches `target` over `path`.
    pub fn add_route(&self, worker: &str, path: &str, target: &str) -> Result<()> {
        let (w, p, t) = (
            self.resource(worker)?,
            self.resource(path)?,
            self.resource(target)?,
        );
        for (r, k) in [(&w, Kind::Worker), (&p, Kind::Path), (&t, Kind::Target)] {
            if r.kind != k {
                return Err(Error::Invalid(format!(
                    "{} is a {}, not a {}",
                    r.name,
                    r.kind.as_str(),
                    k.as_str()
                )));
            }
        }
        self.exec(
            "INSERT INTO routes (worker, path, target) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            |q| q.bind(w.id).bind(p.id).bind(t.id),
        )
    }

    /// The embedded single-machine default: this machine as worker `local` and path `local`
    /// (several streams at once), routed to every target added later by
    /// [`add_local_target`](Self::add_local_target).
    pub fn ensure_local(&self, slots: i64) -> Result<()> {
        for kind in [Kind::Worker, Kind::Path] {
            match self.add_resource(
                kind,
                &format!("local-{}", kind.as_str()),
                ResourceConfig::None,
                slots,
            ) {
                Ok(_) | Err(Error::Duplicate(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Add a target reachable from this machine (the single-machine default).
    pub fn add_local_target(&self, name: &str, url: &str) -> Result<i64> {
        self.ensure_local(64)?;
        let config = ResourceConfig::Target(TargetConfig::new(url));
        let id = self.add_resource(Kind::Target, name, config, 1)?;
        self.add_route("local-worker", "local-path", name)?;
        Ok(id)
    }

    /// Every declared route as (worker, path, target) names.
    pub fn routes(&self) -> Result<Vec<(String, String, String)>> {
        self.rt.block_on(async {
            sqlx::query(
                "SELECT w.name, p.name, t.name FROM routes r JOIN resources w ON w.id = r.worker \
                 JOIN resources p ON p.id = r.path JOIN resources t ON t.id = r.target \
                 ORDER BY w.name, p.name, t.name",
            )
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect()
            })
            .map_err(|e| self.db(e))
        })
    }

    /// Every resource with its allocations, by kind then name.
    pub fn resources(&self) -> Result<Vec<Resource>> {
        self.rt.block_on(async {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            load_all(&mut conn).await.map_err(|e| self.db(e))
        })
    }

    pub fn resource(&self, name: &str) -> Result<Resource> {
        self.resources()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::UnknownResource(name.to_string()))
    }

    /// Take a resource out of service (maintenance) or put it back.
    pub fn set_enabled(&self, name: &str, enabled: bool, reason: &str) -> Result<()> {
        let r = self.resource(name)?;
        let now = self.now();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            sqlx::query("UPDATE resources SET enabled = $1, since = $2 WHERE id = $3")
                .bind(i64::from(enabled))
                .bind(now)
                .bind(r.id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let what = if enabled { "enabled" } else { "disabled" };
            event(&mut tx, r.id, now, what, reason)
                .await
                .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// Remove a resource (its medium, routes and allocations go with it).
    pub fn remove_resource(&self, name: &str) -> Result<()> {
        self.reclaim()?;
        let r = self.resource(name)?;
        if !r.allocations.is_empty() {
            return Err(Error::InUse(format!(
                "{name} is in use by process {}; wait for it to end (disable it to keep new \
                 jobs off)",
                r.allocations[0].0
            )));
        }
        let held: i64 = self
            .rt
            .block_on(
                sqlx::query(
                    "SELECT COUNT(*) FROM extents e LEFT JOIN resources m ON m.id = e.medium \
                     WHERE e.target = $1 OR e.medium = $1 OR m.parent = $1",
                )
                .bind(r.id)
                .fetch_one(&self.pool),
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.db(e))?;
        if held > 0 {
            return Err(Error::Invalid(format!(
                "{name} holds {held} extent(s) of recorded backups; removing it would lose \
                 track of them (disable it instead)"
            )));
        }
        self.exec("DELETE FROM resources WHERE id = $1", |q| q.bind(r.id))?;
        self.exec(
            "INSERT INTO events (resource, at, what, reason) VALUES ($1, $2, 'removed', '')",
            |q| q.bind(r.id).bind(self.now()),
        )
    }

    /// Report a failed operation on a resource; the third in a row makes it not usable.
    pub fn record_error(&self, name: &str, error: &str) -> Result<State> {
        let r = self.resource(name)?;
        let now = self.now();
        let errors = r.errors + 1;
        let fail = r.healthy && errors >= ERRORS_TO_NOT_USABLE;
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            sqlx::query(
                "UPDATE resources SET errors = errors + 1, last_error = $1, \
                 healthy = CASE WHEN errors + 1 >= $2 THEN 0 ELSE healthy END, \
                 since = CASE WHEN healthy = 1 AND errors + 1 >= $2 THEN $3 ELSE since END \
                 WHERE id = $4",
            )
            .bind(error)
            .bind(ERRORS_TO_NOT_USABLE)
            .bind(now)
            .bind(r.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            if fail {
                let why = format!("{error} ×{errors}");
                event(&mut tx, r.id, now, "not usable", &why)
                    .await
                    .map_err(|e| self.db(e))?;
            }
            tx.commit().await.map_err(|e| self.db(e))
        })?;
        Ok(self.resource(name)?.state())
    }

    /// Report a successful operation: the error count resets and an unhealthy resource
    /// becomes usable again.
    pub fn record_ok(&self, name: &str) -> Result<()> {
        let r = self.resource(name)?;
        let now = self.now();
        self.rt.block_on(async {
            let mut tx = self.write_tx().await.map_err(|e| self.db(e))?;
            sqlx::query(
                "UPDATE resources SET errors = 0, healthy = 1, \
                 since = CASE WHEN healthy = 0 THEN $1 ELSE since END WHERE id = $2",
            )
            .bind(now)
            .bind(r.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            if !r.healthy {
                event(&mut tx, r.id, now, "usable", "healthy again")
                    .await
                    .map_err(|e| self.db(e))?;
            }
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// Delete events older than `keep`, returning how many went. Every securing adds an
    /// "in use" and a "released" event per resource, so without this the table grows by a
    /// few rows per job run forever. Each resource's current state and its `since` live in
    /// `resources`, not here, so nothing a decision needs is lost.
    pub fn prune_events(&self, keep: Duration) -> Result<u64> {
        let cutoff = self.now() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        self.rt
            .block_on(
                sqlx::query("DELETE FROM events WHERE at < $1")
                    .bind(cutoff)
                    .execute(&self.pool),
            )
            .map(|r| r.rows_affected())
            .map_err(|e| self.db(e))
    }

    /// The event rows of a resource, oldest first: (at, what, reason).
    pub fn events(&self, name: &str) -> Result<Vec<(i64, String, String)>> {
        let r = self.resource(name)?;
        self.rt.block_on(async {
            sqlx::query("SELECT at, what, reason FROM events WHERE resource = $1 ORDER BY id")
                .bind(r.id)
                .fetch_all(&self.pool)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                        .collect()
                })
                .map_err(|e| self.db(e))
        })
    }

    pub(crate) fn exec<'q>(
        &self,
        sql: &'q str,
        bind: impl FnOnce(
            sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<()> {
        self.rt
            .block_on(bind(sqlx::query(sql)).execute(&self.pool))
            .map(|_| ())
            .map_err(|e| self.db(e))
    }
}

pub(crate) async fn event(
    conn: &mut sqlx::AnyConnection,
    resource: i64,
    at: i64,
    what: &str,
    reason: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO events (resource, at, what, reason) VALUES ($1, $2, $3, $4)")
        .bind(resource)
        .bind(at)
        .bind(what)
        .bind(reason)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Every resource with its allocations, on one connection (inside a transaction when the
/// caller holds one).
pub(crate) async fn load_all(
    conn: &mut sqlx::AnyConnection,
) -> std::result::Result<Vec<Resource>, sqlx::Error> {
    let rows = sqlx::query(&format!("{SELECT} ORDER BY kind, name"))
        .fetch_all(&mut *conn)
        .await?;
    let mut out = rows
        .iter()
        .map(row_to_resource)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let allocs = sqlx::query(
        "SELECT resource, process, stream, lease_until FROM allocations ORDER BY process, stream",
    )
    .fetch_all(&mut *conn)
    .await?;
    for a in &allocs {
        let id: i64 = a.try_get(0)?;
        if let Some(r) = out.iter_mut().find(|r| r.id == id) {
            r.allocations
                .push((a.try_get(1)?, a.try_get(2)?, a.try_get(3)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_minutes() {
        assert_eq!(super::utc_minute(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc_minute(1_700_000_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(super::utc_minute(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(super::utc_minute(1_798_761_599_000), "2026-12-31 23:59 UTC");
    }
}
