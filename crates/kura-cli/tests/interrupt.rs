//! Backups killed at many points (SIGKILL) or interrupted (SIGINT) leave a consistent
//! repository: no partial snapshot, `check` passes, and the next backup reuses what was
//! written.

mod common;

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use kura_repo::backend::FileKind;

/// Kill after the k-th pack has landed, for several k: every cut point leaves a repository
/// that checks clean and a rerun that completes, reusing the packs already written.
fn sigkill_at_many_points_leaves_a_consistent_repository(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    // 48 MiB of incompressible data in files of varied sizes, plus many small files.
    for i in 0..12u64 {
        write(
            &src.join(format!("big{i}")),
            &pseudo_random(((i % 4) as usize + 2) << 20, i),
        );
    }
    for i in 0..200u64 {
        write(
            &src.join(format!("small/{i}")),
            &pseudo_random(3000 + i as usize, 1000 + i),
        );
    }
    let total: u64 = walkdir(&src)
        .iter()
        .filter(|p| p.is_file())
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let mut killed_after = Vec::new();
    for cut in [0usize, 1, 4, 9, 17, 30] {
        let before = repo.count(FileKind::Pack);
        let mut child = repo
            .cmd()
            .args(["backup", "--force"])
            .arg(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let finished = !step_until(&mut child, Duration::from_secs(60), || {
            repo.count(FileKind::Pack) >= before + cut
        });
        child.kill().ok();
        child.wait().unwrap();
        if finished {
            // The backup won the race; remove its snapshot so the next cut starts clean.
            let b = repo.backend();
            for f in b.list(FileKind::Snapshot).unwrap() {
                b.delete(FileKind::Snapshot, &f.name).unwrap();
            }
            continue;
        }
        killed_after.push(cut);
        assert_eq!(
            repo.snapshot_count(),
            0,
            "no partial snapshot after a kill at cut {cut}"
        );
        let o = repo.run(&["check"]);
        assert!(
            o.status.success(),
            "check after kill at cut {cut}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(
        killed_after.len() >= 3,
        "too few kills landed mid-backup: {killed_after:?}"
    );
    // The rerun completes, and stores only what the killed runs had not.
    let v = repo.backup(&[src.to_str().unwrap()]);
    let added = v["summary"]["bytes_added_raw"].as_u64().unwrap();
    assert!(
        added < total / 2,
        "rerun re-stored {added} of {total} bytes"
    );
    repo.ok(&["check", "--read-data"]);
    let t = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&src, &t.join(src.strip_prefix("/").unwrap()));
}

fn sigint_stops_cleanly_with_exit_130(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    for i in 0..16u64 {
        write(&src.join(format!("f{i}")), &pseudo_random(4 << 20, i));
    }
    let child = repo
        .cmd()
        .args(["backup"])
        .arg(&src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while repo.count(FileKind::Pack) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(repo.snapshot_count(), 0);
    assert_eq!(repo.count(FileKind::Lock), 0, "lock removed");
    repo.ok(&["check"]);
    // Packs written before the interrupt were indexed on the way out: nothing to adopt.
    let out = repo.ok(&["backup", src.to_str().unwrap()]);
    assert!(!out.contains("adopted"), "{out}");
}

on_both!(
    sigkill_at_many_points_leaves_a_consistent_repository,
    sigint_stops_cleanly_with_exit_130,
);
