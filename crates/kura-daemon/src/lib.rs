//! kura's service: `kura serve`, the daemon that runs jobs by itself.
//!
//! One process holds:
//! - **[`tasks`]**: every piece of work it starts is a task with an id, state, progress and
//!   a log on disk (PBS's worker tasks);
//! - **the scheduler** ([`scheduler`]): it reads the jobs' schedules from the catalog and
//!   starts each occurrence exactly once across all daemons sharing the catalog (a claim row
//!   per occurrence, no leader);
//! - **the volume engine**, when it hosts volumes ([`policies`]): their host-free backup
//!   policies run at each occurrence, claimed like the scheduler's;
//! - **windows** ([`window`]): every running job run is watched against its window and
//!   `max-run`, with a prediction of its finish from the job's history and its own progress
//!   ([`predict`]); a predicted overrun is warned of before it happens ([`notify`]), and
//!   the window's end is enforced;
//! - **the REST API** ([`api`]): axum, versioned under `/api/v1/`, its OpenAPI document
//!   generated from the handlers (utoipa) at `/api/v1/openapi.json`, API tokens
//!   ([`auth`]), Prometheus metrics at `/metrics`.
//!
//! # Threads
//! The HTTP side is async (tokio); the work is not: repository pipelines are threads and
//! the catalog is a blocking API over its own runtime. So handlers never call the catalog
//! or run work on the async workers: catalog calls go through `spawn_blocking`, and each
//! task runs on a thread of its own.
//!
//! # What the daemon may not do
//! It owns no repository format, no catalog schema and no backup logic: those are
//! `kura-repo`, `kura-catalog` and `kura-manager`, which the CLI uses the same way. The
//! daemon decides *when* work runs and *records* it; how a job runs is given to it as a
//! [`JobRunner`], and how a repository is opened, restored, checked, pruned, healed or read
//! back into the catalog as [`ops::Operations`] (the binary's commands' own code).

pub mod api;
pub mod auth;
pub mod client;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod pace;
pub mod policies;
pub mod predict;
pub mod scheduler;
pub mod server;
pub mod tasks;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;

use kura_catalog::{Catalog, JobDef};

pub use tasks::{Task, TaskFilter, TaskInfo, TaskState, Tasks};

/// The daemon's errors, by what an API client must do (each has a stable code, see
/// [`Error::code`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// No valid token (unknown, expired, malformed, missing): deliberately says no more.
    #[error("a valid API token is required (Authorization: Bearer …)")]
    Unauthorized,
    /// Something the daemon depends on (the catalog) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The stable code an API error carries (`{"error": {"code": …, "message": …}}`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::Invalid(_) => "invalid",
            Error::Conflict(_) => "conflict",
            Error::Unauthorized => "unauthorized",
            Error::Unavailable(_) => "unavailable",
            Error::Io { .. } | Error::Internal(_) => "internal",
        }
    }

    /// A catalog error, by what it means for a client.
    pub fn catalog(e: kura_catalog::Error) -> Error {
        use kura_catalog::Error as C;
        match e {
            C::UnknownJob(_) | C::UnknownResource(_) | C::UnknownBackup(_) => {
                Error::NotFound(e.to_string())
            }
            C::Invalid(_) => Error::Invalid(e.to_string()),
            C::Duplicate(_) | C::InUse(_) => Error::Conflict(e.to_string()),
            e if e.is_unreachable() => Error::Unavailable(e.to_string()),
            e => Error::Internal(e.to_string()),
        }
    }

    /// A job engine error, by what it means for a client.
    pub fn manager(e: kura_manager::Error) -> Error {
        match e {
            kura_manager::Error::Catalog(c) => Error::catalog(c),
            kura_manager::Error::Invalid(m) => Error::Invalid(m),
            e => Error::Internal(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How a job runs: given to the daemon by whoever knows targets, credentials and options
/// (the `kura` binary). Called on a thread of the task's own; the work polls the task's
/// cancel token and reports progress to the task.
///
/// `start_by`: a scheduled run with a start window may wait for busy targets until then
/// (and ends [`RunError::NotStarted`] if they stay busy); `None`: it does not wait.
pub trait JobRunner: Send + Sync {
    fn run(
        &self,
        job: &JobDef,
        task: &Task,
        start_by: Option<std::time::Instant>,
    ) -> std::result::Result<(), RunError>;
}

/// How a job run ended without a backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// It never began: what it needed stayed busy to the end of its start window. The
    /// scheduler records the occurrence *missed* with this reason.
    #[error("{0}")]
    NotStarted(String),
    #[error("{0}")]
    Failed(String),
}

impl From<String> for RunError {
    fn from(e: String) -> RunError {
        RunError::Failed(e)
    }
}

/// Called with a run's final record when it ends (the scheduler records its claim there);
/// `Some(why)` when the run never started (see [`RunError::NotStarted`]).
pub(crate) type Then = Box<dyn FnOnce(&TaskInfo, Option<&str>) + Send>;

/// Settings of a daemon (`[daemon]` in the config file, `kura serve` flags).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Where tasks and their logs live.
    pub state_dir: PathBuf,
    /// This daemon's name in claims and logs (default: the host name and process id).
    pub name: String,
    /// The time zone of schedules that name none.
    pub zone: kura_schedule::Tz,
    /// Restores started through the API may write only inside this directory (`None`: any
    /// absolute path).
    pub restore_root: Option<PathBuf>,
    /// The notification hook (`[daemon] notify`), see [`notify`].
    pub notify: Option<String>,
}

/// A running daemon's shared state.
pub struct Daemon {
    pub catalog: Arc<Catalog>,
    pub tasks: Tasks,
    pub tokens: auth::Tokens,
    pub runner: Arc<dyn JobRunner>,
    /// Repository and volume work (restore, check, prune, heal, rebuild, browsing).
    pub ops: Arc<dyn ops::Operations>,
    pub options: DaemonOptions,
    pub metrics: metrics::Metrics,
    /// The volumes it hosts, once [`host_volumes`](Self::host_volumes) was called.
    volumes: std::sync::OnceLock<Arc<policies::Volumes>>,
    pub windows: window::Windows,
    /// The job list as the API last answered it ([`api::cache`]).
    pub job_list: api::cache::AnswerCache,
}

impl Daemon {
    pub fn new(
        catalog: Arc<Catalog>,
        runner: Arc<dyn JobRunner>,
        options: DaemonOptions,
    ) -> Result<Arc<Daemon>> {
        Daemon::with_operations(catalog, runner, Arc::new(ops::NoOperations), options)
    }

    /// A daemon that can also restore, check, prune, heal, rebuild and browse.
    pub fn with_operations(
        catalog: Arc<Catalog>,
        runner: Arc<dyn JobRunner>,
        ops: Arc<dyn ops::Operations>,
        options: DaemonOptions,
    ) -> Result<Arc<Daemon>> {
        let tasks = Tasks::open(&options.state_dir.join("tasks"))?;
        Ok(Arc::new(Daemon {
            catalog,
            tasks,
            tokens: auth::Tokens::default(),
            runner,
            ops,
            options,
            metrics: metrics::Metrics::default(),
            volumes: std::sync::OnceLock::new(),
            windows: window::Windows::default(),
            job_list: api::cache::AnswerCache::default(),
        }))
    }

    /// Host volumes: their policies run from now on ([`policies::runner`]). Once only.
    pub fn host_volumes(
        &self,
        engine: Arc<kura_volume::Engine>,
        env: Arc<dyn policies::PolicyEnv>,
    ) -> Result<()> {
        let already = || Error::Conflict("this daemon hosts volumes already".into());
        if self.volumes.get().is_some() {
            return Err(already()); // before its metrics are registered a second time
        }
        let v = Arc::new(policies::Volumes::new(engine, env, self));
        self.volumes.set(v).map_err(|_| already())
    }

    /// The volumes this daemon hosts, if it hosts any.
    pub fn volumes(&self) -> Option<&Arc<policies::Volumes>> {
        self.volumes.get()
    }

    /// Start job `name` now, as a task on a thread of its own; `started_by` says who asked.
    /// Refused while a run of the same job started by this daemon still runs.
    pub fn run_job(self: &Arc<Self>, name: &str, started_by: &str) -> Result<TaskInfo> {
        let job = self.catalog.job(name).map_err(Error::catalog)?;
        self.start_job(job, started_by, None, None)
    }

    /// Start a run of `job` as a task, watched against its window (`due`: the scheduled
    /// time of a scheduled run); `then` is called with its final record when it ends.
    pub(crate) fn start_job(
        self: &Arc<Self>,
        job: JobDef,
        started_by: &str,
        due: Option<chrono::DateTime<chrono::Utc>>,
        then: Option<Then>,
    ) -> Result<TaskInfo> {
        let running = self.tasks.running().into_iter().any(|t| {
            let i = t.info();
            i.kind == "job-run" && i.subject == job.name
        });
        if running {
            return Err(Error::Conflict(format!(
                "job {} is already running on this daemon",
                job.name
            )));
        }
        let task = self.tasks.start("job-run", &job.name, started_by)?;
        self.windows.watch(Arc::clone(&task), job.clone(), due);
        let info = task.info();
        let d = Arc::clone(self);
        let t = Arc::clone(&task);
        let spawned = ops::on_own_thread(&task, move || {
            let task = t;
            let started = std::time::Instant::now();
            let start_by = due.zip(job.settings.start_within).map(|(due, within)| {
                let left = (due - chrono::Utc::now()).to_std().unwrap_or_default();
                started + left.saturating_add(within.std())
            });
            let result = d.runner.run(&job, &task, start_by);
            let not_started = match &result {
                Err(RunError::NotStarted(why)) => Some(why.clone()),
                _ => None,
            };
            let result = result.map_err(|e| e.to_string());
            if let Some(ended) = d.windows.end(&task.id())
                && ended.overran
                && result.is_ok()
                && let Some(dl) = ended.deadline
            {
                let late = (chrono::Utc::now() - dl.at).num_milliseconds().max(0);
                let what = format!(
                    "finished {:.1} s after its deadline: {}",
                    late as f64 / 1000.0,
                    dl.what.replace("ends", "ended")
                );
                task.log(format!("overrun: {what}"));
                task.set_overrun(what);
            }
            task.finish(result);
            let info = task.info();
            d.metrics.job_ended(&job.name, &info, started.elapsed());
            d.metrics.outlook(&job.name, None, None);
            if let Some(then) = then {
                then(&info, not_started.as_deref());
            }
            d.tasks.reap();
        });
        if let Err(e) = spawned {
            self.windows.end(&info.id);
            return Err(e);
        }
        Ok(info)
    }
}
