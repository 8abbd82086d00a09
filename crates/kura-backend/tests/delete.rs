//! Deleting through the group backends (mirror, fail-over, union) over real directories: a
//! member that fails a delete is reported — recorded against that member with its reason, and
//! an error once too few members are left — never silently kept; a file already gone is not a
//! failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kura_backend::{
    Backend, Bytes, ErrorKind, FailoverBackend, FailoverOptions, FileKind, LocalBackend,
    MirrorBackend, MirrorOptions, UnionBackend,
};

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

/// A real fault: the target's directory is swapped for a plain file (ENOTDIR).
fn break_dir(p: &Path) {
    std::fs::rename(p, p.with_extension("gone")).unwrap();
    std::fs::write(p, b"not a directory").unwrap();
}

fn lock_everywhere(backends: &[Arc<dyn Backend>], name: &str) {
    for b in backends {
        b.put(FileKind::Lock, name, Bytes::from_static(b"l"))
            .unwrap();
    }
}

#[test]
fn failover_delete_fails_the_member_that_could_not_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, backends) = members(dir.path(), 3);
    let fo = FailoverBackend::new(backends.clone(), FailoverOptions::default()).unwrap();
    lock_everywhere(&backends, "l1");
    // Already gone everywhere: done, nobody failed.
    fo.delete(FileKind::Lock, "never-written").unwrap();
    assert!(fo.status().members.iter().all(|m| m.failed.is_none()));
    // One member cannot delete: it is failed with its reason; the others deleted.
    break_dir(&paths[1]);
    fo.delete(FileKind::Lock, "l1").unwrap();
    let st = fo.status();
    let why = st.members[1]
        .failed
        .as_deref()
        .expect("member 1 not failed");
    assert!(why.contains("delete") && why.contains("locks/l1"), "{why}");
    assert!(st.members[0].failed.is_none() && st.members[2].failed.is_none());
    assert_eq!(st.active, Some(0));
    assert!(!backends[0].exists(FileKind::Lock, "l1").unwrap());
    assert!(!backends[2].exists(FileKind::Lock, "l1").unwrap());
    // The active member fails a delete: the next one becomes active.
    lock_everywhere(&[backends[0].clone(), backends[2].clone()], "l2");
    break_dir(&paths[0]);
    fo.delete(FileKind::Lock, "l2").unwrap();
    let st = fo.status();
    assert!(st.members[0].failed.is_some());
    assert_eq!(st.active, Some(2));
    // The last one too: the delete errors, naming every member's reason.
    break_dir(&paths[2]);
    let e = fo.delete(FileKind::Lock, "l3").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("every target failed"), "{msg}");
    for p in &paths {
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
}

#[test]
fn mirror_delete_drops_the_member_that_could_not_delete_and_keeps_its_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, backends) = members(dir.path(), 2);
    let quorum = |q| MirrorOptions {
        quorum: q,
        ..MirrorOptions::default()
    };
    // Quorum 1: the delete succeeds, the failing member is dropped with its reason.
    let m = MirrorBackend::new(backends.clone(), quorum(1)).unwrap();
    lock_everywhere(&backends, "l1");
    m.delete(FileKind::Lock, "never-written").unwrap();
    assert!(m.status().iter().all(|s| s.dropped.is_none()));
    break_dir(&paths[1]);
    m.delete(FileKind::Lock, "l1").unwrap();
    let st = m.status();
    assert!(st[0].dropped.is_none());
    let why = st[1].dropped.as_deref().expect("member 1 not dropped");
    assert!(why.contains("delete"), "{why}");
    assert!(!backends[0].exists(FileKind::Lock, "l1").unwrap());
    drop(m);
    // Quorum 2: the same failure fails the delete.
    std::fs::remove_file(&paths[1]).unwrap();
    std::fs::rename(paths[1].with_extension("gone"), &paths[1]).unwrap();
    let m = MirrorBackend::new(backends.clone(), quorum(2)).unwrap();
    lock_everywhere(&backends, "l2");
    break_dir(&paths[1]);
    let e = m.delete(FileKind::Lock, "l2").unwrap_err();
    assert!(e.to_string().contains("quorum 2 lost"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Unreachable);
}

#[test]
fn union_lock_delete_names_the_member_that_could_not_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, backends) = members(dir.path(), 2);
    let u = UnionBackend::new(backends.clone());
    u.put(FileKind::Lock, "l1", Bytes::from_static(b"l"))
        .unwrap();
    u.delete(FileKind::Lock, "never-written").unwrap();
    assert!(u.failures().is_empty());
    break_dir(&paths[0]);
    u.delete(FileKind::Lock, "l1").unwrap();
    assert!(!backends[1].exists(FileKind::Lock, "l1").unwrap());
    let failures = u.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, 0);
    assert!(failures[0].1.contains("delete"), "{failures:?}");
    // No member could delete: an error.
    break_dir(&paths[1]);
    assert!(u.delete(FileKind::Lock, "l1").is_err());
    // Other kinds are never deleted through the view.
    assert!(u.delete(FileKind::Pack, "aa").is_err());
}
