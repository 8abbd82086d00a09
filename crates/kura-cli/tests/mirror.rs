//! Mirrored backups (`--mirror`): one backup written to a local directory and an S3 target at
//! once, with real faults on the S3 side: its server killed at many points through the backup,
//! stopped (SIGSTOP), or dead from the start with a quorum that needs it. Each surviving copy
//! is a complete repository on its own and must restore byte-identical and pass
//! `check --read-data`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::weed::Weed;
use common::{Store, TestRepo, assert_fails, assert_same_tree, pseudo_random, step_until, write};
use kura_repo::backend::FileKind;

const DEGRADED: i32 = 9;
const UNREACHABLE: i32 = 6;

fn source(dir: &Path, mib: usize) -> std::path::PathBuf {
    let src = dir.join("src");
    for i in 0..mib / 4 {
        write(
            &src.join(format!("d{}/f{i}.bin", i % 3)),
            &pseudo_random(4 << 20, i as u64 + 7),
        );
    }
    write(&src.join("small.txt"), b"hello mirror");
    src
}

/// Restore `latest` from `location` alone (no mirror) and compare with `src`; verify every
/// blob.
fn restores_alone(location: &str, src: &Path, scratch: &Path) {
    let alone = TestRepo {
        dir: tempfile::tempdir().unwrap(),
        location: location.to_string(),
        store: if location.starts_with("s3://") {
            Store::S3
        } else {
            Store::Local
        },
    };
    let target = scratch.join(format!("restore-{}", rand_suffix()));
    alone.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(src, &target.join(src.strip_prefix("/").unwrap()));
    alone.ok(&["check", "--read-data"]);
    std::mem::forget(alone.dir); // its location is not inside it; nothing to clean there
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

#[test]
fn a_mirrored_backup_leaves_a_complete_repository_on_each_target() {
    let s3 = {
        let base = std::env::var("KURA_TEST_S3").expect("KURA_TEST_S3 (run scripts/test.sh)");
        let (b, q) = base.split_once('?').unwrap();
        format!("{}/mirror-{}?{q}", b.trim_end_matches('/'), rand_suffix())
    };
    let repo = TestRepo::new(&["--mirror", &s3, "--pack-size-mib", "1"]);
    let src = source(repo.dir.path(), 24);
    let v = repo.json(&["--mirror", &s3, "backup", src.to_str().unwrap()]);
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert!(targets.iter().all(|t| t["complete"] == true), "{v}");
    // A second backup deduplicates against what both hold: nothing new is stored.
    let v2 = repo.json(&["--mirror", &s3, "backup", src.to_str().unwrap()]);
    assert_eq!(v2["summary"]["data_blobs_new"], 0, "{v2}");
    for loc in [repo.location.as_str(), s3.as_str()] {
        restores_alone(loc, &src, repo.dir.path());
    }
    // Maintenance runs per target, never through the mirror.
    for cmd in ["check", "prune", "unlock"] {
        assert_fails(
            &repo.run(&["--mirror", &s3, cmd]),
            2,
            "works on one target at a time",
        );
    }
    // A repository of another group is refused as a mirror.
    let other = TestRepo::new(&[]);
    assert_fails(
        &repo.run(&["--mirror", &other.location, "snapshots"]),
        2,
        "does not hold the same repository",
    );
}

#[test]
fn a_target_killed_at_many_points_leaves_a_complete_copy_on_the_other() {
    let wdir = tempfile::tempdir().unwrap();
    let mut weed = Weed::single(wdir.path());
    let mut landed = Vec::new();
    for cut in [1usize, 4, 9, 16] {
        let s3 = weed.location(&format!("kill-{cut}"));
        let repo = TestRepo::new(&["--mirror", &s3, "--pack-size-mib", "1"]);
        let src = source(repo.dir.path(), 32);
        let mut child = repo
            .cmd()
            .args(["--json", "--timeout", "4s", "--mirror", &s3, "backup"])
            .arg(&src)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let running = step_until(&mut child, Duration::from_secs(60), || {
            repo.count(FileKind::Pack) >= cut
        });
        weed.kill_s3();
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        let out = child.wait_with_output().unwrap();
        weed.restart_s3();
        if !running {
            continue; // the backup finished before the cut; nothing was tested
        }
        landed.push(cut);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(DEGRADED), "cut {cut}: {err}");
        assert!(err.contains("was dropped"), "cut {cut}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["targets"][0]["complete"], true, "{v}");
        assert_eq!(v["targets"][1]["complete"], false, "{v}");
        // The survivor is complete on its own; the dropped target claims no snapshot.
        restores_alone(&repo.location, &src, repo.dir.path());
        let dropped = TestRepo {
            dir: tempfile::tempdir().unwrap(),
            location: s3.clone(),
            store: Store::S3,
        };
        assert_eq!(dropped.snapshot_count(), 0, "cut {cut}");
        dropped.ok(&["check"]);
    }
    assert!(
        landed.len() >= 3,
        "too few cuts landed mid-backup: {landed:?}"
    );
}

#[test]
fn a_stopped_target_is_dropped_after_the_stall_timeout() {
    let wdir = tempfile::tempdir().unwrap();
    let weed = Weed::single(wdir.path());
    let s3 = weed.location("stall");
    let repo = TestRepo::new(&["--mirror", &s3, "--pack-size-mib", "1"]);
    let src = source(repo.dir.path(), 32);
    // The per-operation deadline is long; the stall timeout is what must drop the target.
    let mut child = repo
        .cmd()
        .args(["--json", "--timeout", "5m", "--stall-timeout", "3s"])
        .args(["--mirror", &s3, "backup"])
        .arg(&src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the S3 server once the backup is under way (some packs written locally).
    let running = step_until(&mut child, Duration::from_secs(60), || {
        repo.count(FileKind::Pack) >= 3
    });
    assert!(
        running,
        "the backup finished before the stop; make the source larger"
    );
    weed.stop_s3();
    let t = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    weed.continue_s3();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(DEGRADED), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = v["targets"][1]["dropped"].as_str().unwrap_or_default();
    assert!(why.contains("stalled"), "{v}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    restores_alone(&repo.location, &src, repo.dir.path());
}

#[test]
fn a_quorum_the_survivors_cannot_meet_fails_and_commits_nothing() {
    let wdir = tempfile::tempdir().unwrap();
    let mut weed = Weed::single(wdir.path());
    let s3 = weed.location("quorum");
    let repo = TestRepo::new(&["--mirror", &s3, "--pack-size-mib", "1"]);
    let src = source(repo.dir.path(), 8);
    weed.kill_s3();
    let o = repo.run(&[
        "--timeout",
        "3s",
        "--mirror",
        &s3,
        "--quorum",
        "2",
        "backup",
        src.to_str().unwrap(),
    ]);
    assert_fails(&o, UNREACHABLE, "quorum 2 lost");
    assert_eq!(repo.snapshot_count(), 0, "no snapshot below quorum");
    assert_fails(
        &repo.run(&["--mirror", &s3, "--quorum", "3", "snapshots"]),
        2,
        "--quorum 3",
    );
    weed.restart_s3();
}
