//! A background backup job of the volume engine: its reported status, and what the engine
//! keeps of it while it runs ([`Job`]: live progress, the session, and the frozen bits that
//! either the job's thaw or [`Engine::stop`](crate::Engine::stop) puts back, exactly once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use kura_repo::progress::Progress;
use serde::{Deserialize, Serialize};

use crate::chains::Frozen;
use crate::engine::Freeze;
use crate::export::VolumeExport;
use crate::pair::ResyncOutcome;
use crate::records::RecordArea;
use crate::session::{Session, SessionStats};

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// A background backup, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub volume: String,
    /// `session` or `split`.
    pub freeze: Freeze,
    pub state: JobState,
    pub repository: String,
    pub started: String,
    pub finished: Option<String>,
    /// Bytes of the image to cover, and covered so far.
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub incremental: bool,
    pub full_reason: Option<String>,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    /// What a failed job's caller must do about it (an unreachable target: retry).
    #[serde(default)]
    pub failure: Option<kura_repo::Failure>,
    pub work_volume: Option<String>,
    /// Session block states (live while running, final after).
    pub session: Option<SessionStats>,
    /// What the resync after a split backup copied.
    pub resync: Option<ResyncOutcome>,
    /// The split area backed up (`volume backup --area`), with its split time; `None`: the
    /// whole volume.
    #[serde(default)]
    pub area: Option<RecordArea>,
}

pub(crate) struct Job {
    pub(crate) status: Mutex<JobStatus>,
    pub(crate) done: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) session: Mutex<Option<Arc<Session>>>,
    /// Weak: jobs are kept after they end (for [`Engine::jobs`]), and a strong reference
    /// would count as a client of the volume forever. While the job runs, its thread holds
    /// the export.
    pub(crate) export: Weak<VolumeExport>,
    /// The chain's bits taken at the freeze, until the job thaws them, or until
    /// [`Engine::stop`] gives up on the job; whichever comes first takes them (under this
    /// lock, which also guards `abandoned`), so the bits go back exactly once.
    pub(crate) frozen: Mutex<Option<Frozen>>,
    /// Set by [`Engine::stop`]: the job's volume was thawed and closed without it; its
    /// thread must touch nothing more.
    pub(crate) abandoned: AtomicBool,
    /// The copy's cancellation: this job's alone ([`Engine::cancel_job`]), or every job's
    /// when the engine stops.
    pub(crate) cancel: kura_repo::backup::CancelToken,
}

impl Job {
    pub(crate) fn snapshot(&self) -> JobStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if s.state == JobState::Running {
            s.bytes_done = self.done.load(Ordering::Relaxed);
            s.bytes_total = self.total.load(Ordering::Relaxed).max(s.bytes_total);
            if let Some(sess) = &*self.session.lock().unwrap_or_else(|p| p.into_inner()) {
                s.session = Some(sess.stats());
            }
        }
        s
    }
}

pub(crate) struct JobProgress(pub(crate) Arc<Job>);

impl Progress for JobProgress {
    fn start(&self, _phase: &str, total: Option<u64>) {
        if let Some(t) = total {
            self.0.total.store(t, Ordering::Relaxed);
        }
    }
    fn advance(&self, bytes: u64, _items: u64) {
        self.0.done.fetch_add(bytes, Ordering::Relaxed);
    }
}
