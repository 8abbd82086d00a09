//! The mirror backend over real directories, with real faults: a member whose directory is
//! replaced by a file mid-stream (every write fails with ENOTDIR), members that diverged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kura_backend::{Backend, Bytes, FileKind, LocalBackend, MirrorBackend, MirrorOptions};

fn members(dir: &Path, n: usize) -> (Vec<PathBuf>, Vec<Arc<dyn Backend>>) {
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("t{i}"))).collect();
    let backends = paths
        .iter()
        .map(|p| {
            let b = LocalBackend::new(p);
            b.create().unwrap();
            Arc::new(b) as Arc<dyn Backend>
        })
        .collect();
    (paths, backends)
}

fn pack(i: usize) -> (String, Bytes) {
    (
        format!("{i:064x}"),
        Bytes::from(vec![(i % 251) as u8; 256 * 1024 + i]),
    )
}

fn names(b: &dyn Backend, kind: FileKind) -> Vec<String> {
    let mut v: Vec<String> = b.list(kind).unwrap().into_iter().map(|f| f.name).collect();
    v.sort();
    v
}

/// A real fault: the target's directory is swapped for a plain file.
fn break_dir(p: &Path) {
    std::fs::rename(p, p.with_extension("gone")).unwrap();
    std::fs::write(p, b"not a directory").unwrap();
}

#[test]
fn every_member_gets_the_same_files_and_indexes_follow_their_packs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, backends) = members(dir.path(), 3);
    let m = MirrorBackend::new(
        backends.clone(),
        MirrorOptions {
            quorum: 3,
            ..MirrorOptions::default()
        },
    )
    .unwrap();
    for round in 0..3 {
        for i in 0..20 {
            let (n, d) = pack(round * 100 + i);
            m.put(FileKind::Pack, &n, d).unwrap();
        }
        // The barrier: whenever a member holds this index, it holds every pack queued
        // before it (watched while the writers work).
        let idx = format!("idx{round}");
        m.put(FileKind::Index, &idx, Bytes::from_static(b"i"))
            .unwrap();
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(5) {
            for b in &backends {
                if b.exists(FileKind::Index, &idx).unwrap() {
                    assert_eq!(b.list(FileKind::Pack).unwrap().len(), 20 * (round + 1));
                }
            }
            if backends
                .iter()
                .all(|b| b.exists(FileKind::Index, &idx).unwrap())
            {
                break;
            }
        }
    }
    m.put(FileKind::Snapshot, "snap", Bytes::from_static(b"s"))
        .unwrap();
    // A snapshot put returns once the snapshot is written on every live member.
    for b in &backends {
        assert!(b.exists(FileKind::Snapshot, "snap").unwrap());
        assert_eq!(b.list(FileKind::Index).unwrap().len(), 3);
    }
    m.flush().unwrap();
    let first = names(backends[0].as_ref(), FileKind::Pack);
    for b in &backends[1..] {
        assert_eq!(names(b.as_ref(), FileKind::Pack), first);
        for n in &first {
            assert_eq!(
                b.get(FileKind::Pack, n).unwrap(),
                backends[0].get(FileKind::Pack, n).unwrap()
            );
        }
    }
    let st = m.status();
    assert!(
        st.iter().all(|s| s.dropped.is_none() && s.files == 64),
        "{st:?}"
    );
    assert_eq!(m.get(FileKind::Snapshot, "snap").unwrap(), b"s");
}

#[test]
fn a_failing_member_is_dropped_with_its_reason_and_the_others_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, backends) = members(dir.path(), 3);
    let m = MirrorBackend::new(
        backends.clone(),
        MirrorOptions {
            quorum: 2,
            ..MirrorOptions::default()
        },
    )
    .unwrap();
    for i in 0..10 {
        let (n, d) = pack(i);
        m.put(FileKind::Pack, &n, d).unwrap();
    }
    m.flush().unwrap();
    break_dir(&paths[1]);
    for i in 10..30 {
        let (n, d) = pack(i);
        m.put(FileKind::Pack, &n, d).unwrap();
    }
    m.put(FileKind::Index, "idx", Bytes::from_static(b"i"))
        .unwrap();
    m.put(FileKind::Snapshot, "snap", Bytes::from_static(b"s"))
        .unwrap();
    let st = m.status();
    assert!(st[0].dropped.is_none() && st[2].dropped.is_none(), "{st:?}");
    let why = st[1].dropped.as_deref().expect("member 1 dropped");
    assert!(why.contains("Not a directory"), "{why}");
    for i in [0, 2] {
        assert_eq!(backends[i].list(FileKind::Pack).unwrap().len(), 30);
        assert!(backends[i].exists(FileKind::Snapshot, "snap").unwrap());
    }
    // The dropped member never got the snapshot (restore its directory to look).
    std::fs::remove_file(&paths[1]).unwrap();
    std::fs::rename(paths[1].with_extension("gone"), &paths[1]).unwrap();
    assert!(!backends[1].exists(FileKind::Snapshot, "snap").unwrap());
    assert!(!backends[1].exists(FileKind::Index, "idx").unwrap());
    // Below quorum the snapshot fails, names the reasons, and lands nowhere; later writes
    // fail at once.
    break_dir(&paths[2]);
    let (n, d) = pack(99);
    let _ = m.put(FileKind::Pack, &n, d);
    let _ = m.put(FileKind::Index, "idx2", Bytes::from_static(b"i"));
    let e = m
        .put(FileKind::Snapshot, "snap2", Bytes::from_static(b"s"))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("quorum 2 lost") && msg.contains("Not a directory"),
        "{msg}"
    );
    assert!(
        m.put(FileKind::Lock, "l", Bytes::from_static(b"l"))
            .is_err()
    );
    // Member 0 alone is below quorum, but it still writes in order; what it holds is
    // consistent, and the caller was told the backup failed.
    m.flush().ok();
    if backends[0].exists(FileKind::Snapshot, "snap2").unwrap() {
        assert!(backends[0].exists(FileKind::Index, "idx2").unwrap());
    }
}

#[test]
fn listings_are_what_every_member_holds_and_locks_are_anyones() {
    let dir = tempfile::tempdir().unwrap();
    let (_, backends) = members(dir.path(), 2);
    // Member 0 has an index and a snapshot member 1 missed (it was down for a backup).
    backends[0]
        .put(FileKind::Index, "only0", Bytes::from_static(b"x"))
        .unwrap();
    backends[0]
        .put(FileKind::Snapshot, "only0", Bytes::from_static(b"x"))
        .unwrap();
    backends[1]
        .put(FileKind::Lock, "lock1", Bytes::from_static(b"l"))
        .unwrap();
    for b in &backends {
        b.put(FileKind::Index, "both", Bytes::from_static(b"y"))
            .unwrap();
    }
    let m = MirrorBackend::new(backends.clone(), MirrorOptions::default()).unwrap();
    assert_eq!(names(&m, FileKind::Index), ["both"]);
    assert!(names(&m, FileKind::Snapshot).is_empty());
    assert_eq!(names(&m, FileKind::Lock), ["lock1"]);
    // A file only one member has is still readable (reads try the next member).
    assert_eq!(m.get(FileKind::Snapshot, "only0").unwrap(), b"x");
    assert_eq!(m.get(FileKind::Lock, "lock1").unwrap(), b"l");
    assert!(
        MirrorBackend::new(
            backends,
            MirrorOptions {
                quorum: 3,
                ..MirrorOptions::default()
            }
        )
        .is_err()
    );
}

#[test]
fn abandoned_writes_fail_the_snapshot_but_leave_the_members_live_and_unlockable() {
    use kura_backend::{Limiter, Throttled};
    let dir = tempfile::tempdir().unwrap();
    let (_, plain) = members(dir.path(), 1);
    // A slow member (256 KiB/s): its queue still holds packs when the run is abandoned.
    let limit = Arc::new(Limiter::fixed("slow", Some(256 << 10)));
    let slow: Arc<dyn Backend> =
        Arc::new(Throttled::new(Arc::clone(&plain[0]), vec![limit], vec![]));
    let m = Arc::new(MirrorBackend::new(vec![slow], MirrorOptions::default()).unwrap());
    for i in 0..8 {
        let (n, d) = pack(i);
        m.put(FileKind::Pack, &n, d).unwrap();
    }
    let m2 = Arc::clone(&m);
    let abandon = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        m2.abandon("the run was cancelled");
    });
    let snap = format!("{:064x}", 999);
    let e = m
        .put(FileKind::Snapshot, &snap, Bytes::from_static(b"snapshot"))
        .unwrap_err();
    abandon.join().unwrap();
    assert!(e.to_string().contains("the run was cancelled"), "{e}");
    assert!(names(plain[0].as_ref(), FileKind::Snapshot).is_empty());
    // Not every pack was sent; the member is not dropped, and still takes locks.
    assert!(names(plain[0].as_ref(), FileKind::Pack).len() < 8);
    assert!(m.status().iter().all(|s| s.dropped.is_none()));
    m.put(FileKind::Lock, "l1", Bytes::from_static(b"lock"))
        .unwrap();
    m.delete(FileKind::Lock, "l1").unwrap();
    assert!(m.put(FileKind::Pack, &pack(50).0, pack(50).1).is_err());
}

/// A run cancelled while its members wait for their traffic limit: the waits end at once,
/// and neither a mirror nor a fail-over group holds the cancellation against a member (a
/// fail-over group does not move to the next one).
#[test]
fn a_cancel_during_a_throttled_upload_ends_it_at_once_and_fails_no_member() {
    use kura_backend::{ErrorKind, FailoverBackend, FailoverOptions, Limiter, Throttled};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (_, plain) = members(dir.path(), 2);
    let cancel = Arc::new(AtomicBool::new(false));
    let slow = |b: &Arc<dyn Backend>| {
        let c = Arc::clone(&cancel);
        Throttled::wrap_abortable(
            Arc::clone(b),
            vec![Arc::new(Limiter::fixed("slow", Some(128 << 10)))],
            vec![],
            Arc::new(move || c.load(Ordering::SeqCst)),
        )
    };
    let m = Arc::new(MirrorBackend::new(vec![slow(&plain[0])], MirrorOptions::default()).unwrap());
    let f = Arc::new(
        FailoverBackend::new(
            vec![slow(&plain[1]), Arc::clone(&plain[0])],
            FailoverOptions {
                extent_bytes: 1 << 20,
                extent_timeout: Duration::from_secs(60),
                ..FailoverOptions::default()
            },
        )
        .unwrap(),
    );
    let (m2, f2) = (Arc::clone(&m), Arc::clone(&f));
    let writer = std::thread::spawn(move || {
        let snap = format!("{:064x}", 999);
        let mut errors = Vec::new();
        let groups: [Arc<dyn Backend>; 2] = [m2, f2];
        for b in &groups {
            let r = (0..8)
                .map(pack)
                .try_for_each(|(n, d)| b.put(FileKind::Pack, &n, d))
                .and_then(|()| b.put(FileKind::Snapshot, &snap, Bytes::from_static(b"s")));
            errors.push(r.unwrap_err());
        }
        errors
    });
    std::thread::sleep(Duration::from_millis(800));
    let t = Instant::now();
    cancel.store(true, Ordering::SeqCst);
    let errors = writer.join().unwrap();
    // The fail-over group is written after the mirror: both ended within a few polls.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(errors[0].kind(), ErrorKind::Cancelled, "{}", errors[0]);
    let f_err = &errors[1];
    assert_eq!(f_err.kind(), ErrorKind::Cancelled, "{f_err}");
    assert!(
        m.status().iter().all(|s| s.dropped.is_none()),
        "{:?}",
        m.status()
    );
    let st = f.status();
    assert_eq!(st.failovers, 0);
    assert!(st.members.iter().all(|m| m.failed.is_none()));
    assert_eq!(st.active, Some(0));
    // Nothing reached the snapshot directory, and the other member was never written.
    assert!(names(plain[0].as_ref(), FileKind::Snapshot).is_empty());
    assert!(names(plain[1].as_ref(), FileKind::Snapshot).is_empty());
    assert!(names(plain[0].as_ref(), FileKind::Pack).len() < 8);
}
