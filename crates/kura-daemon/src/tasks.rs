//! Tasks: every piece of work the daemon starts (a job run, a volume backup, a restore, a
//! check, a prune, a heal, a rebuild) is a task with an id, a state, progress and a log that
//! outlives the daemon — what PBS calls a worker task, and what an operator greps after a
//! bad night.
//!
//! # On disk
//! `STATE_DIR/tasks/ID.json` holds a task's [`TaskInfo`], rewritten atomically (temporary
//! file, fsync, rename) at each change of state; `ID.log` is its log, appended one line at a
//! time (`RFC3339 message`). Ids sort by start time (`YYYYMMDDTHHMMSSZ-NNNNNN`, `N` counting up
//! within the daemon's life and never reused while its files exist).
//!
//! # Crash consistency
//! A daemon killed while tasks ran leaves them `running` on disk. [`Tasks::open`] marks
//! each such task `failed` with "the daemon stopped while it ran" before anything else
//! looks at them, so no task claims to be running that nobody runs. (What the task did to a
//! repository or the catalog is theirs to keep consistent; a task is only the record.)
//!
//! # Retention
//! The newest [`KEEP`] tasks are kept; older ones' files are removed when the daemon opens
//! the directory.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kura_repo::backup::CancelToken;
use kura_repo::progress::Progress;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::{Error, Result};

/// How many finished tasks are kept.
pub const KEEP: usize = 1000;

/// Lines a follower may lag behind before it misses some (it is told how many).
const FOLLOW_BUFFER: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub const ALL: [TaskState; 4] = [
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];
}

/// A task as reported (API, CLI, the files on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskInfo {
    pub id: String,
    /// What kind of work: `job-run`, `volume-backup`, `restore`, `check`, `prune`, …
    pub kind: String,
    /// What it works on: a job's name, a volume, a repository.
    pub subject: String,
    pub state: TaskState,
    /// Who or what started it: `schedule`, `api:TOKEN-NAME`, `cli`.
    pub started_by: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub finished: Option<String>,
    pub bytes_total: Option<u64>,
    pub bytes_done: u64,
    pub items_done: u64,
    /// A job run: bytes its targets acknowledged (packs, indexes, snapshot), all targets
    /// together.
    #[serde(default)]
    pub bytes_uploaded: u64,
    /// A backup: new data (not in the repository yet) queued for storing, and how much of
    /// it is stored, before compression.
    #[serde(default)]
    pub bytes_new: u64,
    #[serde(default)]
    pub bytes_stored: u64,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// A job run: when it is predicted to finish (RFC 3339, UTC; while it runs).
    #[serde(default)]
    pub predicted_finish: Option<String>,
    /// A job run: when its window (or `max-run`) ends (RFC 3339, UTC).
    #[serde(default)]
    pub window_end: Option<String>,
    /// A job run that ran past its window's end (`at-window-end finish`): by how much.
    #[serde(default)]
    pub overrun: Option<String>,
}

/// A running task: its record, its log and its cancellation.
pub struct Task {
    info: Mutex<TaskInfo>,
    dir: PathBuf,
    log: Mutex<Option<File>>,
    cancel: CancelToken,
    /// Why the daemon cancelled it (its window ended…), reported as its error.
    cancel_reason: Mutex<Option<String>>,
    /// What its work uploaded (see [`Task::upload_counter`]).
    uploaded: Arc<AtomicU64>,
    /// A job run's mirror, for the window watcher (see [`Task::run_control`]).
    control: Arc<kura_manager::RunControl>,
    lines: broadcast::Sender<String>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A task's record stays consistent under a panic elsewhere: every change is one
    // assignment.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Write `bytes` to `path` atomically: a temporary file beside it, fsynced, renamed over.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Task {
    pub fn id(&self) -> String {
        lock(&self.info).id.clone()
    }

    pub fn info(&self) -> TaskInfo {
        let mut i = lock(&self.info).clone();
        i.bytes_uploaded = self.uploaded.load(Ordering::Relaxed);
        i
    }

    /// The counter its work adds uploaded bytes to (e.g. through
    /// [`kura_repo::backend::Counted`]).
    pub fn upload_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.uploaded)
    }

    /// A job run hands its running mirror here ([`kura_manager::JobSpec::control`]), so
    /// the window watcher may drop a target that would make it overrun.
    pub fn run_control(&self) -> Arc<kura_manager::RunControl> {
        Arc::clone(&self.control)
    }

    /// The token the task's work must poll (see [`Tasks::cancel`]).
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Cancel the task for `why` (its error once it ends); the first reason stands.
    pub fn cancel_because(&self, why: impl Into<String>) {
        let why = why.into();
        {
            let mut r = lock(&self.cancel_reason);
            if r.is_some() || lock(&self.info).state != TaskState::Running {
                return;
            }
            *r = Some(why.clone());
        }
        self.log(format!("cancelling: {why}"));
        self.cancel.cancel();
    }

    /// The daemon's outlook for a running job run: its predicted finish and window end.
    pub fn set_outlook(&self, predicted_finish: Option<String>, window_end: Option<String>) {
        let mut i = lock(&self.info);
        i.predicted_finish = predicted_finish;
        i.window_end = window_end;
    }

    /// Note that the run ran past its window's end (reported with its record).
    pub fn set_overrun(&self, what: String) {
        lock(&self.info).overrun = Some(what);
    }

    /// Append a line to the task's log (and to its followers). File and followers are
    /// written under one lock, which [`Tasks::follow`] also takes: a follower sees every
    /// line once.
    pub fn log(&self, line: impl AsRef<str>) {
        let line = format!("{} {}", now(), line.as_ref());
        let mut f = lock(&self.log);
        if let Some(f) = f.as_mut()
            && let Err(e) = writeln!(f, "{line}")
        {
            tracing::warn!("task log: {e}");
        }
        let _ = self.lines.send(line);
    }

    fn persist(&self, info: &TaskInfo) {
        let path = self.dir.join(format!("{}.json", info.id));
        let written = serde_json::to_vec_pretty(info)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&path, &b));
        if let Err(e) = written {
            tracing::error!("writing task record {}: {e}", path.display());
        }
    }

    /// End the task: `Ok` succeeded; `Err(why)` failed, or cancelled if it was asked to be.
    pub fn finish(&self, result: std::result::Result<(), String>) {
        let info = {
            let mut i = lock(&self.info);
            if i.state != TaskState::Running {
                return;
            }
            i.finished = Some(now());
            match &result {
                Ok(()) => i.state = TaskState::Succeeded,
                Err(e) => {
                    i.state = if self.cancel.is_cancelled() {
                        TaskState::Cancelled
                    } else {
                        TaskState::Failed
                    };
                    i.error = Some(match lock(&self.cancel_reason).as_ref() {
                        Some(why) if i.state == TaskState::Cancelled => why.clone(),
                        _ => e.clone(),
                    });
                }
            }
            i.predicted_finish = None;
            i.bytes_uploaded = self.uploaded.load(Ordering::Relaxed);
            i.clone()
        };
        match (&result, &info.error) {
            (Ok(()), _) => self.log("task succeeded"),
            (Err(_), Some(e)) | (Err(e), None) => {
                self.log(format!("task {}: {e}", info.state.as_str()))
            }
        }
        self.persist(&info);
        // Followers see the end as the channel closing: drop the file and let the sender go
        // with the task.
        lock(&self.log).take();
    }
}

/// Progress of a task's work, for the repository's pipelines.
impl Progress for Task {
    fn start(&self, phase: &str, total: Option<u64>) {
        lock(&self.info).bytes_total = total;
        self.log(format!("{phase}…"));
    }
    fn add_total(&self, bytes: u64, _items: u64) {
        let mut i = lock(&self.info);
        i.bytes_total = Some(i.bytes_total.unwrap_or(0) + bytes);
    }
    fn new_data(&self, raw_bytes: u64) {
        lock(&self.info).bytes_new += raw_bytes;
    }
    fn stored(&self, raw_bytes: u64) {
        lock(&self.info).bytes_stored += raw_bytes;
    }
    fn advance(&self, bytes: u64, items: u64) {
        let mut i = lock(&self.info);
        i.bytes_done += bytes;
        i.items_done += items;
    }
    fn warn(&self, msg: &str) {
        self.log(format!("warning: {msg}"));
    }
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub kind: Option<String>,
    pub subject: Option<String>,
    /// At most this many, newest first (default 100).
    pub limit: Option<usize>,
}

/// The daemon's tasks: running ones in memory, all of them on disk.
pub struct Tasks {
    dir: PathBuf,
    running: Mutex<BTreeMap<String, Arc<Task>>>,
    next: AtomicU64,
}

impl Tasks {
    /// Open (creating) `dir`: tasks a dead daemon left running are marked failed, and all
    /// but the newest [`KEEP`] are removed.
    pub fn open(dir: &Path) -> Result<Tasks> {
        let io = |what: &str| {
            let what = format!("{what} {}", dir.display());
            move |source| Error::Io { what, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create the task directory"))?;
        let mut ids = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io("list"))? {
            let e = e.map_err(io("list"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        let stale = ids.len().saturating_sub(KEEP);
        for id in &ids[..stale] {
            let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
            let _ = std::fs::remove_file(dir.join(format!("{id}.log")));
        }
        let tasks = Tasks {
            dir: dir.to_path_buf(),
            running: Mutex::default(),
            next: AtomicU64::new(1),
        };
        for id in &ids[stale..] {
            let Some(mut info) = tasks.read(id) else {
                continue;
            };
            if info.state == TaskState::Running {
                info.state = TaskState::Failed;
                info.finished = Some(now());
                info.error = Some("the daemon stopped while it ran".into());
                let path = dir.join(format!("{id}.json"));
                let b = serde_json::to_vec_pretty(&info).map_err(|e| Error::Io {
                    what: format!("encode {}", path.display()),
                    source: std::io::Error::other(e),
                })?;
                write_atomic(&path, &b).map_err(io("mark a dead task failed in"))?;
            }
        }
        Ok(tasks)
    }

    fn read(&self, id: &str) -> Option<TaskInfo> {
        if !valid_id(id) {
            return None;
        }
        let b = std::fs::read(self.dir.join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Start a task: recorded (and its log created) before its work begins.
    pub fn start(&self, kind: &str, subject: &str, started_by: &str) -> Result<Arc<Task>> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let id = loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let id = format!("{stamp}-{n:06}");
            if !self.dir.join(format!("{id}.json")).exists() {
                break id;
            }
        };
        let log = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.dir.join(format!("{id}.log")))
            .map_err(|source| Error::Io {
                what: format!("create the log of task {id}"),
                source,
            })?;
        let info = TaskInfo {
            id: id.clone(),
            kind: kind.into(),
            subject: subject.into(),
            state: TaskState::Running,
            started_by: started_by.into(),
            started: now(),
            finished: None,
            bytes_total: None,
            bytes_done: 0,
            items_done: 0,
            bytes_uploaded: 0,
            bytes_new: 0,
            bytes_stored: 0,
            error: None,
            predicted_finish: None,
            window_end: None,
            overrun: None,
        };
        let task = Arc::new(Task {
            info: Mutex::new(info.clone()),
            dir: self.dir.clone(),
            log: Mutex::new(Some(log)),
            cancel: CancelToken::new(),
            cancel_reason: Mutex::new(None),
            uploaded: Arc::default(),
            control: kura_manager::RunControl::new(),
            lines: broadcast::channel(FOLLOW_BUFFER).0,
        });
        task.persist(&info);
        task.log(format!("{kind} {subject} started by {started_by}"));
        lock(&self.running).insert(id, Arc::clone(&task));
        Ok(task)
    }

    /// Forget a finished task's in-memory handle (its files stay).
    pub fn reap(&self) {
        lock(&self.running).retain(|_, t| t.info().state == TaskState::Running);
    }

    /// One task, running or not.
    pub fn get(&self, id: &str) -> Result<TaskInfo> {
        if let Some(t) = lock(&self.running).get(id) {
            return Ok(t.info());
        }
        self.read(id)
            .ok_or_else(|| Error::NotFound(format!("no task {id:?}")))
    }

    /// Tasks, newest first.
    pub fn list(&self, f: &TaskFilter) -> Vec<TaskInfo> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_suffix(".json").map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_by(|a, b| b.cmp(a));
        let limit = f.limit.unwrap_or(100);
        ids.into_iter()
            .filter_map(|id| self.get(&id).ok())
            .filter(|t| f.state.is_none_or(|s| t.state == s))
            .filter(|t| f.kind.as_ref().is_none_or(|k| &t.kind == k))
            .filter(|t| f.subject.as_ref().is_none_or(|s| &t.subject == s))
            .take(limit)
            .collect()
    }

    /// Ask a running task to stop (its work ends at its next check, leaving state
    /// consistent); it ends `cancelled`.
    pub fn cancel(&self, id: &str) -> Result<TaskInfo> {
        let t = lock(&self.running).get(id).cloned();
        match t {
            Some(t) if t.info().state == TaskState::Running => {
                t.log("cancel requested");
                t.cancel.cancel();
                Ok(t.info())
            }
            _ => {
                let info = self.get(id)?;
                Err(Error::Conflict(format!(
                    "task {id} is not running ({})",
                    info.state.as_str()
                )))
            }
        }
    }

    /// Cancel every running task (a stopping daemon).
    pub fn cancel_all(&self) {
        for t in lock(&self.running).values() {
            t.cancel.cancel();
        }
    }

    /// The running tasks.
    pub fn running(&self) -> Vec<Arc<Task>> {
        lock(&self.running)
            .values()
            .filter(|t| t.info().state == TaskState::Running)
            .cloned()
            .collect()
    }

    /// A task's log lines from line `from` (0-based).
    pub fn log(&self, id: &str, from: usize) -> Result<Vec<String>> {
        self.get(id)?;
        let text =
            std::fs::read_to_string(self.dir.join(format!("{id}.log"))).map_err(|source| {
                Error::Io {
                    what: format!("read the log of task {id}"),
                    source,
                }
            })?;
        Ok(text.lines().skip(from).map(str::to_string).collect())
    }

    /// Follow a running task's log: the lines so far, then a receiver of new ones (closed
    /// when the task ends). `None` for a finished task (its log is complete).
    pub fn follow(&self, id: &str) -> Result<(Vec<String>, Option<broadcast::Receiver<String>>)> {
        let t = lock(&self.running).get(id).cloned();
        if let Some(t) = t.filter(|t| t.info().state == TaskState::Running) {
            // Under the log's lock no line is written: the file holds every line before
            // the subscription, the receiver every line after.
            let g = lock(&t.log);
            let rx = t.lines.subscribe();
            let so_far = self.log(id, 0)?;
            drop(g);
            return Ok((so_far, Some(rx)));
        }
        Ok((self.log(id, 0)?, None))
    }

    /// How many tasks are in each state (for metrics), over the kept ones.
    pub fn counts(&self) -> BTreeMap<TaskState, u64> {
        let mut m = BTreeMap::new();
        for t in self.list(&TaskFilter {
            limit: Some(KEEP),
            ..TaskFilter::default()
        }) {
            *m.entry(t.state).or_insert(0) += 1;
        }
        m
    }
}

impl PartialOrd for TaskState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TaskState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Task ids are file names: only what [`Tasks::start`] makes (no path separators, no dots).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_recorded_logged_and_survives_a_dead_daemon() {
        let d = tempfile::tempdir().unwrap();
        let tasks = Tasks::open(d.path()).unwrap();
        let a = tasks.start("job-run", "nightly", "schedule").unwrap();
        a.log("hello");
        let b = tasks.start("check", "repo", "cli").unwrap();
        b.finish(Ok(()));
        assert_eq!(tasks.get(&b.id()).unwrap().state, TaskState::Succeeded);
        assert_eq!(tasks.list(&TaskFilter::default()).len(), 2);
        let log = tasks.log(&a.id(), 0).unwrap();
        assert!(log.iter().any(|l| l.ends_with(" hello")), "{log:?}");
        // The daemon dies with `a` running: reopened, `a` is failed, `b` unchanged.
        drop(tasks);
        let tasks = Tasks::open(d.path()).unwrap();
        let a2 = tasks.get(&a.id()).unwrap();
        assert_eq!(a2.state, TaskState::Failed);
        assert_eq!(a2.error.as_deref(), Some("the daemon stopped while it ran"));
        assert_eq!(tasks.get(&b.id()).unwrap().state, TaskState::Succeeded);
    }

    #[test]
    fn cancel_ends_a_task_cancelled_and_refuses_a_finished_one() {
        let d = tempfile::tempdir().unwrap();
        let tasks = Tasks::open(d.path()).unwrap();
        let t = tasks.start("prune", "repo", "api:ops").unwrap();
        let id = t.id();
        tasks.cancel(&id).unwrap();
        assert!(t.cancel_token().is_cancelled());
        t.finish(Err("interrupted".into()));
        assert_eq!(tasks.get(&id).unwrap().state, TaskState::Cancelled);
        assert!(matches!(tasks.cancel(&id), Err(Error::Conflict(_))));
        assert!(matches!(tasks.cancel("nope"), Err(Error::NotFound(_))));
    }

    #[test]
    fn a_task_cancelled_for_a_reason_reports_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let tasks = Tasks::open(d.path()).unwrap();
        let t = tasks.start("job-run", "nightly", "schedule").unwrap();
        t.set_outlook(
            Some("2026-01-01T02:10:00Z".into()),
            Some("2026-01-01T02:00:00Z".into()),
        );
        t.upload_counter().fetch_add(7, Ordering::Relaxed);
        t.cancel_because("its window ended");
        t.cancel_because("a second reason is ignored");
        assert!(t.cancel_token().is_cancelled());
        t.finish(Err("interrupted".into()));
        let i = tasks.get(&t.id()).unwrap();
        assert_eq!(i.state, TaskState::Cancelled);
        assert_eq!(i.error.as_deref(), Some("its window ended"));
        assert_eq!(i.predicted_finish, None);
        assert_eq!(i.window_end.as_deref(), Some("2026-01-01T02:00:00Z"));
        assert_eq!(i.bytes_uploaded, 7);
    }

    #[test]
    fn ids_that_are_not_ours_are_not_files() {
        let d = tempfile::tempdir().unwrap();
        let tasks = Tasks::open(d.path()).unwrap();
        for bad in ["../x", "a/b", "", ".json", "x.json"] {
            assert!(matches!(tasks.get(bad), Err(Error::NotFound(_))), "{bad}");
        }
    }

    #[test]
    fn followers_get_new_lines_and_see_the_end() {
        let d = tempfile::tempdir().unwrap();
        let tasks = Tasks::open(d.path()).unwrap();
        let t = tasks.start("heal", "backup 7", "cli").unwrap();
        let (so_far, rx) = tasks.follow(&t.id()).unwrap();
        assert_eq!(so_far.len(), 1);
        let mut rx = rx.unwrap();
        t.log("copying");
        t.finish(Ok(()));
        assert!(rx.try_recv().unwrap().ends_with(" copying"));
        assert!(rx.try_recv().unwrap().ends_with(" task succeeded"));
        drop(t);
        tasks.reap();
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn only_the_newest_are_kept() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..(KEEP + 5) {
            let id = format!("20000101T000000Z-{i:05}");
            std::fs::write(d.path().join(format!("{id}.json")), "{}").unwrap();
            std::fs::write(d.path().join(format!("{id}.log")), "").unwrap();
        }
        Tasks::open(d.path()).unwrap();
        let n = std::fs::read_dir(d.path()).unwrap().count();
        assert_eq!(n, 2 * KEEP);
        assert!(!d.path().join("20000101T000000Z-00000.json").exists());
    }
}
