//! Fail-over mode: one backup written extent by extent to the active target of n secured
//! ones through a [`FailoverBackend`]; on an error or a timeout the unacknowledged extent and
//! everything after it go to the next target. The backup ends *sectioned*: each
//! acknowledged extent is a catalog row naming its target and the index file that lists its
//! packs there (see the crate docs and `kura_backend::FailoverBackend`).

use std::sync::Arc;
use std::time::Duration;

use kura_backend::{Backend, FailoverBackend, FailoverOptions, FileKind};
use kura_repo::Repository;
use kura_repo::backup::{CancelToken, backup};
use kura_repo::lock::RepoLock;
use kura_repo::progress::Progress;

use crate::Result;
use crate::run::{JobSpec, ModeDone, Piece};

pub(crate) fn back_up(
    job: &JobSpec,
    members: Vec<Arc<dyn Backend>>,
    extent_bytes: u64,
    extent_timeout: Duration,
    password: &[u8],
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<ModeDone> {
    let answers: Vec<_> = members
        .iter()
        .map(|m| (m.location(), m.get(FileKind::Config, "config")))
        .collect();
    let unreadable = kura_repo::group::compare(&answers)?;
    let fo = Arc::new(FailoverBackend::new(
        members,
        FailoverOptions {
            extent_bytes,
            extent_timeout,
            ..FailoverOptions::default()
        },
    )?);
    for (i, why) in unreadable {
        fo.fail(i, &format!("at open: {why}"));
    }
    // Everything from here on is the backup proper: whatever fails, the members' fates
    // (failed, with reasons) go back for the health record.
    let mut repo_out = None;
    let outcome = (|| {
        fo.check_alive()?;
        let repo = Repository::open(Arc::clone(&fo) as Arc<dyn Backend>, password)?;
        let lock = RepoLock::shared(&repo)?;
        let (indexed, _) = repo.load_index_adopting_orphans()?;
        let mut opts = job.backup.clone();
        opts.extent_bytes = Some(extent_bytes);
        let outcome = backup(&indexed, &lock, &job.sources, &opts, progress, cancel);
        drop(lock);
        repo_out = Some(indexed.into_repository());
        outcome
    })();
    let status = fo.status();
    let mut pieces = Vec::new();
    let mut offset = 0i64;
    for (seq, s) in status.sections.iter().enumerate() {
        pieces.push(Piece {
            member: s.member,
            seq: seq as i64,
            source_offset: offset,
            source_length: s.bytes as i64,
            size: s.bytes as i64,
            section: Some(s.index.clone()),
        });
        offset += s.bytes as i64;
    }
    // A target holding the snapshot but no section (it became active after the last
    // extent) still holds part of the backup: its manifest.
    for (i, m) in status.members.iter().enumerate() {
        if m.snapshot && !status.sections.iter().any(|s| s.member == i) {
            pieces.push(Piece {
                member: i,
                seq: pieces.len() as i64,
                source_offset: offset,
                source_length: 0,
                size: 0,
                section: Some(String::new()),
            });
        }
    }
    Ok(ModeDone {
        outcome,
        members: status
            .members
            .into_iter()
            .map(|m| (m.location, m.failed, m.sent))
            .collect(),
        repo: repo_out,
        pieces,
        failovers: status.failovers,
        spared: Vec::new(),
    })
}
