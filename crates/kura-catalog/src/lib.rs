//! The catalog: kura's resource inventory (seed tables 420–470), job definitions (backup
//! processing information 410) and backups with their extents (backup data save information
//! 460), in SQLite for one manager on one machine or PostgreSQL for several managers and
//! workers — the same code and the same queries (sqlx's `Any` driver) on both.
//!
//! # Model
//! - **Resources** (`resources`): workers, targets, media, paths, copy engines. A resource has
//!   `slots` (how many streams it serves at once: 1 for targets and media, so no two streams
//!   share one; more for a machine's own worker and path), an operator switch (`enabled`) and
//!   a health flag set by repeated errors. Its state is derived, never stored twice:
//!   *not usable* (disabled or unhealthy), *in use* (every slot allocated), else *usable*.
//! - **Allocations** (`allocations`): which process (job run) holds a slot of which resource
//!   for which stream, until when (a lease). A manager that dies stops renewing; the next
//!   `secure` reclaims expired leases, so nothing stays stuck.
//! - **Routes** (`routes`): which worker reaches which target over which path. A target that
//!   is not sequential media gets one implicit medium (`<target>.medium`) when it is added.
//! - **Policies** (`volume_policies`, `policy_runs`): the volume engine's host-free backup
//!   policies and their runs (see `policies.rs`).
//! - **Events** (`events`): every state change, with its reason. Kept for
//!   [`EVENT_RETENTION`] (the CLI prunes older ones whenever it opens the catalog).
//!
//! # Locking
//! `secure` must be all-or-nothing and safe against concurrent managers. Each securing
//! transaction starts by updating the `meta` row `alloc`: on PostgreSQL that row lock
//! serialises securing across managers (and the transaction sees every committed allocation
//! once it holds it); on SQLite the write takes the database's reserved lock at once, so a
//! second writer waits (busy timeout) instead of failing at commit. Securing is rare (once per
//! job), so serialising it costs nothing measurable, and the same statement works on both.

mod copies;
mod jobs;
mod media;
mod policies;
mod resources;
mod secure;
mod stats;
mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection};

pub use copies::position_names;
pub use jobs::{Backup, BackupState, Extent, JobDef, Mode, Run, StreamRow};
pub use media::{
    AppendPolicy, MediaSet, MountRequest, Pool, Tape, TapeBackup, TapePiece, TapeState, covered,
    covered_from_zero,
};
pub use policies::{PolicyRow, PolicyRunRow};
pub use resources::{Kind, Resource, State};

/// How long resource events are kept: a quarter of history for "why was this target not
/// usable last month", without a table that grows with every job run forever.
pub const EVENT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
pub use secure::{Constraints, Secured, SecuredGuard, Subsystem};
pub use stats::RecordedStats;
pub use tokens::{ApiToken, Claim, ClaimOn, ClaimState};

/// Errors the catalog reports; each says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("catalog {url}")]
    Db {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no resource named {0:?}")]
    UnknownResource(String),
    #[error("{0:?} already exists")]
    Duplicate(String),
    /// The thing is in use by a running job; the message says by whom.
    #[error("{0}")]
    InUse(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("no job {0:?}")]
    UnknownJob(String),
    #[error("no backup {0} in the catalog")]
    UnknownBackup(i64),
    /// `secure` could not find enough disjoint subsystems; the message says why.
    #[error("cannot secure {need} subsystem(s): {why}")]
    Unavailable { need: usize, why: String },
    /// A renewal came too late: the lease had expired and the resources were reclaimed.
    #[error("process {0} lost its resources: its lease expired before renewal")]
    LeaseLost(i64),
    #[error("catalog: {0}")]
    Other(String),
    /// A stored job's settings or resource's configuration does not fit its type (it names
    /// the job or resource and the field).
    #[error("catalog holds a bad configuration: {0}")]
    Config(#[from] kura_types::ConfigError),
}

impl Error {
    /// The database could not be reached (connection refused, timed out, TLS): transient,
    /// unlike a query or schema error.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Db {
                source: sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolClosed,
                ..
            }
        )
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long opening the catalog waits for the database to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database is behind the catalog (DDL differs; queries do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A catalog database. Blocking API (kura's pipelines are threads); an internal runtime
/// drives sqlx.
pub struct Catalog {
    pool: AnyPool,
    rt: tokio::runtime::Runtime,
    dialect: Dialect,
    url: String,
    /// Added to the wall clock (ms); see [`Catalog::advance_clock`].
    skew: std::sync::atomic::AtomicI64,
}

/// Create a new SQLite catalog file 0600 before SQLite does (it would use 0644); its `-wal`
/// and `-shm` files take the database file's mode. An existing file is left as it is.
fn create_private(path: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let file = path.split('?').next().unwrap_or(path);
    if file.is_empty() || file.starts_with(':') || file.starts_with("file:") {
        return; // in-memory or URI forms: SQLite's business
    }
    // An existing file is kept; any other failure (a missing directory…) SQLite reports
    // itself, naming the URL.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file);
}

impl Catalog {
    /// Open (creating a SQLite file if needed) and migrate. `url`: `sqlite:///path/catalog.db`,
    /// a plain path (SQLite), or `postgres://user@host:port/db`.
    pub fn open(url: &str) -> Result<Catalog> {
        sqlx::any::install_default_drivers();
        let shown = redact(url);
        let (url, dialect) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_string(), Dialect::Postgres)
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            create_private(path);
            (format!("sqlite://{path}?mode=rwc"), Dialect::Sqlite)
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("start runtime: {e}")))?;
        let db = |source| Error::Db {
            url: shown.clone(),
            source,
        };
        let opts = AnyConnectOptions::from_str(&url)
            .map_err(db)?
            .log_statements(tracing::log::LevelFilter::Trace);
        // One direct connection first: a pool retries until its acquire timeout and then
        // reports only "pool timed out", hiding "connection refused" or a wrong password.
        rt.block_on(async {
            match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect_with(&opts))
                .await
            {
                Ok(Ok(conn)) => conn.close().await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                ))),
            }
        })
        .map_err(db)?;
        let pool = rt
            .block_on(
                AnyPoolOptions::new()
                    .max_connections(if dialect == Dialect::Sqlite { 1 } else { 4 })
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            if dialect == Dialect::Sqlite {
                                sqlx::query("PRAGMA foreign_keys = ON")
                                    .execute(&mut *conn)
                                    .await?;
                                sqlx::query("PRAGMA busy_timeout = 30000")
                                    .execute(&mut *conn)
                                    .await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(opts),
            )
            .map_err(db)?;
        let cat = Catalog {
            pool,
            rt,
            dialect,
            url: shown.clone(),
            skew: std::sync::atomic::AtomicI64::new(0),
        };
        cat.migrate()?;
        Ok(cat)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// An embedded (SQLite) catalog: one manager on one machine.
    pub fn is_embedded(&self) -> bool {
        self.dialect == Dialect::Sqlite
    }

    /// Whether the database answers (one trivial query): health checks and metrics.
    pub fn ping(&self) -> Result<()> {
        self.rt
            .block_on(sqlx::query("SELECT 1").execute(&self.pool))
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// The catalog's location, password removed (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Now, in ms since the epoch, as this handle sees it. Leases compare wall clocks of
    /// different managers, so managers sharing a PostgreSQL catalog need synchronised clocks
    /// (NTP); a lease of minutes tolerates the usual skew of milliseconds.
    pub(crate) fn now(&self) -> i64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        wall + self.skew.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Move this handle's clock forward, as if `by` had passed: leases held by others look
    /// that much older. For simulations and tests of lease expiry (a crashed manager) that
    /// should not sleep for minutes.
    pub fn advance_clock(&self, by: Duration) {
        self.skew
            .fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::Relaxed);
    }

    fn migrate(&self) -> Result<()> {
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        let id = match self.dialect {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let migration = |version: i64, name: &str, sql: &str| {
            Migration::new(
                version,
                name.to_string().into(),
                MigrationType::Simple,
                sql.replace("{{ID}}", id).into(),
                false,
            )
        };
        let migrator = Migrator {
            migrations: vec![
                migration(
                    1,
                    "inventory",
                    include_str!("../migrations/0001_inventory.sql"),
                ),
                migration(2, "daemon", include_str!("../migrations/0002_daemon.sql")),
                migration(
                    3,
                    "run_stats",
                    include_str!("../migrations/0003_run_stats.sql"),
                ),
                migration(
                    4,
                    "policies",
                    include_str!("../migrations/0004_policies.sql"),
                ),
                migration(5, "media", include_str!("../migrations/0005_media.sql")),
            ]
            .into(),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        self.rt.block_on(migrator.run(&self.pool))?;
        Ok(())
    }

    /// A transaction that will write. On SQLite it takes the write lock at BEGIN
    /// (`BEGIN IMMEDIATE`), so a second writer waits its busy timeout; a deferred transaction
    /// that reads first and then writes would instead fail at once with "database is locked"
    /// when another connection wrote meanwhile (SQLite cannot upgrade its lock then).
    pub(crate) async fn write_tx(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    /// Fail with [`Error::Duplicate`] when `sql` (a `SELECT … WHERE name = $1`) finds a row:
    /// checked inside the inserting transaction, so the message is ours on both databases
    /// rather than each one's unique-constraint text.
    pub(crate) async fn refuse_duplicate(
        &self,
        conn: &mut sqlx::AnyConnection,
        sql: &str,
        name: &str,
    ) -> Result<()> {
        let found = sqlx::query(sql)
            .bind(name)
            .fetch_optional(conn)
            .await
            .map_err(|e| self.db(e))?;
        match found {
            Some(_) => Err(Error::Duplicate(name.to_string())),
            None => Ok(()),
        }
    }

    /// A database error; a stored configuration that did not parse (carried out of a row
    /// decoder as `Decode`) comes back as [`Error::Config`].
    pub(crate) fn db(&self, source: sqlx::Error) -> Error {
        if let sqlx::Error::Decode(inner) = &source
            && let Some(c) = inner.downcast_ref::<kura_types::ConfigError>()
        {
            return Error::Config(c.clone());
        }
        Error::Db {
            url: self.url.clone(),
            source,
        }
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("postgres://kura:secret@db:5432/kura"),
            "postgres://kura:***@db:5432/kura"
        );
        assert_eq!(super::redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
