//! Work on repositories and volumes the daemon starts but does not know how to do itself:
//! opening a target's repository (the password and target options are the binary's),
//! restoring, checking, pruning, healing, rebuilding the catalog, and reading the volume
//! engine's directory. The `kura` binary implements [`Operations`] with the very code its
//! commands run (`kura restore`, `kura check`, …), so a restore started through the API obeys
//! every rule `kura restore` obeys — there is one restore path, not two.
//!
//! Each long piece of work runs as a task ([`Daemon::start_task`]): recorded before it
//! begins, on a thread of its own, with its progress and log in the task and its
//! cancellation through the task's token.

use std::path::PathBuf;
use std::sync::Arc;

use kura_repo::Repository;
use kura_repo::backend::Backend;
use kura_repo::restore::RestoreOptions;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Daemon, Error, Result, Task, TaskInfo};

/// Where a restore reads from.
#[derive(Debug, Clone)]
pub enum RestoreSource {
    /// A snapshot (`latest` or an id prefix) of the repository on a target.
    Snapshot {
        target: String,
        url: String,
        snapshot: String,
    },
    /// A backup of the catalog: read from every target holding a copy or a section of it.
    Backup(i64),
}

/// A restore, checked by the API before it is started.
#[derive(Debug, Clone)]
pub struct Restore {
    pub source: RestoreSource,
    /// An absolute path without `..`.
    pub destination: PathBuf,
    pub options: RestoreOptions,
}

/// A volume of the volume engine's directory, as `kura volume info` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeView {
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Bytes allocated on disk.
    pub allocated: u64,
    /// RFC 3339.
    pub created: String,
    /// A working volume of a backup session.
    pub work: bool,
    /// The primary whose pair this volume is the secondary of.
    pub secondary_of: Option<String>,
    pub label: Option<String>,
    pub mount_point: Option<String>,
    /// Its raw file.
    pub path: String,
    /// A server holds the volume now.
    pub served: bool,
}

/// A mirror pair, as `kura pair list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PairView {
    pub primary: String,
    pub secondary: String,
    /// `duplex` or `split`.
    pub state: String,
    /// RFC 3339: when the pair entered its state.
    pub since: String,
    /// Bytes that differ between primary and secondary.
    pub dirty_bytes: u64,
    /// The primary is being served (the state is live).
    pub served: bool,
    /// Why the pair is split when no one split it.
    pub note: Option<String>,
}

/// What the daemon asks of the binary. Blocking; the `task` methods run on the task's own
/// thread, poll its cancel token, report progress to it and log what a command would print.
pub trait Operations: Send + Sync {
    /// The repository on target `name` (at `url`), opened with the daemon's password.
    fn open(&self, name: &str, url: &str) -> Result<Repository>;
    /// A target's backend by URL, with the daemon's options (the health sweep probes it).
    fn backend(&self, url: &str) -> std::result::Result<Arc<dyn Backend>, String>;
    fn restore(&self, r: &Restore, task: &Task) -> std::result::Result<(), String>;
    fn check(
        &self,
        target: &str,
        url: &str,
        read_data: bool,
        task: &Task,
    ) -> std::result::Result<(), String>;
    fn prune(&self, target: &str, url: &str, task: &Task) -> std::result::Result<(), String>;
    fn heal(&self, backup: i64, task: &Task) -> std::result::Result<(), String>;
    /// Re-enter the backups recorded on these targets into the catalog.
    fn rebuild(&self, targets: &[String], task: &Task) -> std::result::Result<(), String>;
    fn volumes(&self) -> Result<Vec<VolumeView>>;
    fn pairs(&self) -> Result<Vec<PairView>>;
}

/// A daemon built without [`Operations`] (a library user's): every such call is refused.
pub(crate) struct NoOperations;

fn none() -> Error {
    Error::Unavailable("this daemon was started without repository operations".into())
}

impl Operations for NoOperations {
    fn open(&self, _: &str, _: &str) -> Result<Repository> {
        Err(none())
    }
    fn backend(&self, _: &str) -> std::result::Result<Arc<dyn Backend>, String> {
        Err(none().to_string())
    }
    fn restore(&self, _: &Restore, _: &Task) -> std::result::Result<(), String> {
        Err(none().to_string())
    }
    fn check(&self, _: &str, _: &str, _: bool, _: &Task) -> std::result::Result<(), String> {
        Err(none().to_string())
    }
    fn prune(&self, _: &str, _: &str, _: &Task) -> std::result::Result<(), String> {
        Err(none().to_string())
    }
    fn heal(&self, _: i64, _: &Task) -> std::result::Result<(), String> {
        Err(none().to_string())
    }
    fn rebuild(&self, _: &[String], _: &Task) -> std::result::Result<(), String> {
        Err(none().to_string())
    }
    fn volumes(&self) -> Result<Vec<VolumeView>> {
        Err(none())
    }
    fn pairs(&self) -> Result<Vec<PairView>> {
        Err(none())
    }
}

/// A repository error, by what it means for an API client.
pub fn repo_error(e: kura_repo::Error) -> Error {
    use kura_repo::Error as R;
    use kura_repo::error::Failure;
    match &e {
        R::SnapshotNotFound(_) | R::PathNotFound { .. } => Error::NotFound(e.to_string()),
        R::InvalidInput(_) => Error::Invalid(e.to_string()),
        _ => match e.failure() {
            // The target does not answer, or refuses us: nothing the client can fix.
            Failure::Unreachable | Failure::Denied => Error::Unavailable(e.to_string()),
            Failure::Locked => Error::Conflict(e.to_string()),
            Failure::NoRepository => Error::Conflict(e.to_string()),
            _ => Error::Internal(e.to_string()),
        },
    }
}

impl Daemon {
    /// Start `work` as a task of `kind` on `subject`, on a thread of its own.
    pub fn start_task(
        self: &Arc<Self>,
        kind: &str,
        subject: &str,
        started_by: &str,
        work: impl FnOnce(&Daemon, &Task) -> std::result::Result<(), String> + Send + 'static,
    ) -> Result<TaskInfo> {
        let task = self.tasks.start(kind, subject, started_by)?;
        let info = task.info();
        let d = Arc::clone(self);
        let t = Arc::clone(&task);
        on_own_thread(&task, move || {
            let result = if t.cancel_token().is_cancelled() {
                Err("cancelled before it began".to_string())
            } else {
                work(&d, &t)
            };
            t.finish(result);
            d.tasks.reap();
        })?;
        Ok(info)
    }

    /// The URL of target `name`, or why it is not one.
    pub fn target_url(&self, name: &str) -> Result<String> {
        let r = self.catalog.resource(name).map_err(Error::catalog)?;
        if r.kind != kura_catalog::Kind::Target {
            return Err(Error::Invalid(format!(
                "{name} is a {}, not a target",
                r.kind.as_str()
            )));
        }
        r.target_url()
            .map(str::to_string)
            .map_err(|e| Error::Internal(format!("target {name}: {e}")))
    }
}

/// Run `body` on a thread of the task's own (named after it); when no thread can be
/// started, the task fails with the reason and so does the call.
pub(crate) fn on_own_thread(task: &Arc<Task>, body: impl FnOnce() + Send + 'static) -> Result<()> {
    let spawned = std::thread::Builder::new()
        .name(format!("kura-task-{}", task.id()))
        .spawn(body);
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            task.finish(Err(format!("could not start its thread: {e}")));
            Err(Error::Io {
                what: "start a task thread".into(),
                source: e,
            })
        }
    }
}
