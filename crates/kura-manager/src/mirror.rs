//! Mirror mode: one backup onto n secured targets at once through a
//! [`MirrorBackend`]; each finished target holds a complete copy (see the crate docs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kura_backend::{Backend, MirrorBackend, MirrorOptions};
use kura_repo::Repository;
use kura_repo::backup::{CancelToken, backup};
use kura_repo::lock::RepoLock;
use kura_repo::progress::Progress;

use crate::Result;
use crate::run::{JobSpec, ModeDone, Piece};

pub(crate) fn back_up(
    job: &JobSpec,
    members: Vec<(String, Arc<dyn Backend>)>,
    quorum: usize,
    stall_timeout: Duration,
    password: &[u8],
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<ModeDone> {
    // (target name, backend) per secured stream.
    let (targets, members): (Vec<String>, Vec<Arc<dyn Backend>>) = members.into_iter().unzip();
    let mirror = Arc::new(MirrorBackend::new(
        members,
        MirrorOptions {
            quorum,
            stall_timeout,
            ..MirrorOptions::default()
        },
    )?);
    kura_repo::group::verify(&mirror)?;
    let repo = Repository::open(Arc::clone(&mirror) as Arc<dyn Backend>, password)?;
    let lock = RepoLock::shared(&repo)?;
    let (indexed, _) = repo.load_index_adopting_orphans()?;
    if let Some(c) = &job.control {
        c.attach(Arc::clone(&mirror), targets);
    }
    // The mirror writes behind (its members' queues): a backup whose pipeline is done may
    // still wait for them in its snapshot's write. A cancel abandons what is queued, so
    // the snapshot write fails and nothing more is sent; what the members hold stays (the
    // next run adopts it), and the lock is released as usual.
    let finished = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            while !finished.load(Ordering::SeqCst) {
                if cancel.is_cancelled() {
                    mirror.abandon("the run was cancelled");
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = backup(&indexed, &lock, &job.sources, &job.backup, progress, cancel);
        finished.store(true, Ordering::SeqCst);
        r
    });
    if let Some(c) = &job.control {
        c.detach();
    }
    drop(lock);
    let status = mirror.status();
    let total = outcome
        .as_ref()
        .map_or(0, |o| o.snapshot.summary.total_bytes as i64);
    // One whole copy per finished target.
    // Members dropped on purpose (their pace), not to be held against their health.
    let spared = status
        .iter()
        .enumerate()
        .filter(|(_, st)| st.spared)
        .map(|(i, _)| i)
        .collect();
    let pieces = status
        .iter()
        .enumerate()
        .filter(|(_, st)| st.dropped.is_none())
        .map(|(i, st)| Piece {
            member: i,
            seq: 0,
            source_offset: 0,
            source_length: total,
            size: st.bytes as i64,
            section: None,
        })
        .collect();
    Ok(ModeDone {
        outcome,
        members: status
            .into_iter()
            .map(|s| (s.location, s.dropped, s.bytes))
            .collect(),
        repo: Some(indexed.into_repository()),
        pieces,
        failovers: 0,
        spared,
    })
}
