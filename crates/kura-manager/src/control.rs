//! [`RunControl`]: a running mirror run's members, for whoever supervises the run (the
//! daemon's window watcher). It sees each member's pace and may drop the one that would
//! make the run overrun its window while the quorum holds; such a target is left out of
//! this backup but not counted as failing (its health is untouched); it keeps its earlier
//! snapshots and the run's lock is removed from it, and the job's next run brings it up to
//! date (uploading only what it lacks).
//!
//! The run attaches its mirror when its backup starts and detaches it when the backup
//! ends, so a supervisor never acts on a finished run's targets.

use std::sync::{Arc, Mutex, MutexGuard};

use kura_backend::{MemberStatus, MirrorBackend};

/// See the module docs. Shared between the run and its supervisor.
#[derive(Default)]
pub struct RunControl {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The mirror and its members' target names (stream order), while the backup runs.
    mirror: Option<(Arc<MirrorBackend>, Vec<String>)>,
}

/// One member of a running mirror.
#[derive(Debug, Clone)]
pub struct Member {
    /// The target's name in the catalog.
    pub target: String,
    pub status: MemberStatus,
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl").finish_non_exhaustive()
    }
}

impl RunControl {
    pub fn new() -> Arc<RunControl> {
        Arc::new(RunControl::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The members of the mirror being written, with their quorum; `None` when no mirror
    /// backup is running (not started yet, ended, or a fail-over run).
    pub fn members(&self) -> Option<(Vec<Member>, usize)> {
        let g = self.lock();
        let (mirror, names) = g.mirror.as_ref()?;
        let members = mirror
            .status()
            .into_iter()
            .zip(names)
            .map(|(status, target)| Member {
                target: target.clone(),
                status,
            })
            .collect();
        Some((members, mirror.quorum()))
    }

    /// Drop member `index` from the running backup for `reason` (see the module docs);
    /// refused with the reason when no mirror runs, or the quorum would not hold.
    pub fn drop_member(&self, index: usize, reason: &str) -> Result<(), String> {
        let g = self.lock();
        let Some((mirror, _)) = g.mirror.as_ref() else {
            return Err("no mirror backup is running".into());
        };
        mirror.drop_while_quorum_holds(index, reason)
    }

    pub(crate) fn attach(&self, mirror: Arc<MirrorBackend>, targets: Vec<String>) {
        self.lock().mirror = Some((mirror, targets));
    }

    pub(crate) fn detach(&self) {
        self.lock().mirror = None;
    }
}
