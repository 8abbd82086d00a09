//! Group backends over members that wait for their traffic limits: a member that is slow on
//! purpose is not stalled. Each stall, extent or read limit here is far shorter than the
//! member's wait for its limit; without `Backend::pacing` the member would be dropped or
//! failed over. Real directories; each test takes about a second.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_backend::{
    Backend, Bytes, FailoverBackend, FailoverOptions, FileKind, Limiter, LocalBackend,
    MirrorBackend, MirrorOptions, Throttled,
};

const MIB: usize = 1 << 20;

fn local(dir: &Path, name: &str) -> Arc<dyn Backend> {
    let b = LocalBackend::new(dir.join(name));
    std::fs::create_dir(dir.join(name)).unwrap();
    b.create().unwrap();
    Arc::new(b)
}

/// 1 MiB/s: its one second of burst spent, each further MiB waits a second.
fn slow(b: Arc<dyn Backend>, upload: bool) -> Arc<dyn Backend> {
    let l = Arc::new(Limiter::fixed("test limit", Some(MIB as u64)));
    if upload {
        Throttled::wrap(b, vec![l], vec![])
    } else {
        Throttled::wrap(b, vec![], vec![l])
    }
}

fn pack(i: usize) -> (String, Bytes) {
    (format!("{i:064x}"), Bytes::from(vec![i as u8; MIB / 2]))
}

#[test]
fn a_mirror_member_waiting_for_its_limit_is_not_dropped_as_stalled() {
    let dir = tempfile::tempdir().unwrap();
    let members = vec![slow(local(dir.path(), "a"), true), local(dir.path(), "b")];
    let m = MirrorBackend::new(
        members,
        MirrorOptions {
            quorum: 2,
            stall_timeout: Duration::from_millis(300),
            ..MirrorOptions::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let mut names = Vec::new();
    for i in 0..5 {
        let (n, d) = pack(i);
        m.put(FileKind::Pack, &n, d).unwrap();
        names.push(n);
    }
    m.put(FileKind::Index, "idx", Bytes::from_static(b"index"))
        .unwrap();
    m.put(FileKind::Snapshot, "snap", Bytes::from_static(b"snapshot"))
        .unwrap();
    // 2.5 MiB at 1 MiB/s, one second of it free.
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    for s in m.status() {
        assert_eq!(s.dropped, None, "{s:?}");
        assert_eq!(s.files, 7, "{s:?}");
    }
}

#[test]
fn a_mirror_read_from_a_member_waiting_for_its_limit_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let a = local(dir.path(), "a");
    a.put(FileKind::Snapshot, "s", Bytes::from(vec![3u8; 2 * MIB]))
        .unwrap();
    let m = MirrorBackend::new(
        vec![slow(a, false)],
        MirrorOptions {
            stall_timeout: Duration::from_millis(300),
            ..MirrorOptions::default()
        },
    )
    .unwrap();
    // The first read spends the burst, the second waits a second (after reading).
    for _ in 0..2 {
        let answers = m.get_each(FileKind::Snapshot, "s");
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].1.as_ref().unwrap().len(), 2 * MIB);
    }
    assert_eq!(m.status()[0].dropped, None);
}

#[test]
fn a_failover_member_waiting_for_its_limit_is_not_failed_over() {
    let dir = tempfile::tempdir().unwrap();
    let members = vec![slow(local(dir.path(), "a"), true), local(dir.path(), "b")];
    let f = FailoverBackend::new(
        members,
        FailoverOptions {
            extent_timeout: Duration::from_millis(300),
            ..FailoverOptions::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let mut names = Vec::new();
    for i in 0..5 {
        let (n, d) = pack(i);
        f.put(FileKind::Pack, &n, d).unwrap();
        names.push(n);
    }
    // Acknowledged only once every pack is durable on the active member.
    f.put_index("idx", Bytes::from_static(b"index"), &names)
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    let st = f.status();
    assert_eq!(st.failovers, 0, "{st:?}");
    assert_eq!(st.active, Some(0));
    assert!(st.members.iter().all(|m| m.failed.is_none()), "{st:?}");
    assert_eq!(st.sections.len(), 1);
    assert_eq!(st.sections[0].member, 0);
}
