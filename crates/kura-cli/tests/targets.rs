//! Storage targets under real faults: an S3 server killed or frozen mid-backup, a read-only
//! file system, a full file system, and a replicated SeaweedFS cluster losing a volume server.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::weed::Weed;
use common::*;
use kura_repo::backend::FileKind;

/// A source of `mib` MiB of incompressible data in 4 files.
fn source(repo: &TestRepo, mib: usize) -> std::path::PathBuf {
    let src = repo.dir.path().join("src");
    for i in 0..4u64 {
        write(
            &src.join(format!("f{i}")),
            &pseudo_random((mib << 20) / 4, 900 + i),
        );
    }
    src
}

/// Start a backup whose storage operations have deadline `timeout`.
fn spawn_backup(repo: &TestRepo, src: &std::path::Path, timeout: &str) -> Child {
    repo.cmd()
        .args(["--json", "--timeout", timeout, "backup"])
        .arg(src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until at least `n` packs are stored (the backup is under way).
fn wait_for_packs(repo: &TestRepo, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while repo.count(FileKind::Pack) < n {
        assert!(Instant::now() < deadline, "backup made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn total_bytes(src: &std::path::Path) -> u64 {
    walkdir(src)
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn s3_server_killed_mid_backup_fails_fast_leaves_no_snapshot_and_the_rerun_reuses_uploads() {
    let scratch = tempfile::tempdir().unwrap();
    let mut weed = Weed::single(scratch.path());
    let repo = TestRepo::at(weed.location("repo"), &["--pack-size-mib", "1"]);
    let src = source(&repo, 48);
    let child = spawn_backup(&repo, &src, "4s");
    wait_for_packs(&repo, 4);
    weed.kill_s3();
    let killed = Instant::now();
    let o = child.wait_with_output().unwrap();
    let took = killed.elapsed();
    assert_fails(&o, 6, "refused");
    assert!(
        took < Duration::from_secs(10),
        "failed {took:?} after the kill (deadline 4 s)"
    );

    weed.restart_s3();
    assert_eq!(repo.snapshot_count(), 0, "no partial snapshot");
    repo.ok(&["check"]);
    let v = repo.backup(&[src.to_str().unwrap()]);
    let added = v["summary"]["bytes_added_raw"].as_u64().unwrap();
    assert!(
        added < total_bytes(&src) - (3 << 20),
        "rerun re-uploaded {added} bytes: nothing reused"
    );
    repo.ok(&["check", "--read-data"]);
    let t = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&src, &t.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn s3_server_frozen_by_sigstop_hits_the_deadline_instead_of_hanging() {
    let scratch = tempfile::tempdir().unwrap();
    let weed = Weed::single(scratch.path());
    let repo = TestRepo::at(weed.location("repo"), &["--pack-size-mib", "1"]);
    let src = source(&repo, 48);
    let child = spawn_backup(&repo, &src, "3s");
    wait_for_packs(&repo, 3);
    weed.stop_s3();
    let stopped = Instant::now();
    let o = child.wait_with_output().unwrap();
    let took = stopped.elapsed();
    weed.continue_s3();
    assert_fails(&o, 6, "within 3.0 s");
    assert!(
        took < Duration::from_secs(9),
        "took {took:?} after SIGSTOP (deadline 3 s)"
    );
    assert_eq!(repo.snapshot_count(), 0);
    // The probe classifies it the same way.
    weed.stop_s3();
    let o = repo.run(&[
        "--json",
        "--timeout",
        "3s",
        "target",
        "probe",
        &repo.location,
    ]);
    weed.continue_s3();
    assert_eq!(o.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["class"], "timed-out", "{v}");
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: &std::path::Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Mount(at.to_path_buf())
    }

    fn remount_read_only(&self) {
        let st = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn read_only_directory_is_permission_denied() {
    let scratch = tempfile::tempdir().unwrap();
    let mnt = Mount::tmpfs(&scratch.path().join("ro"), "64m");
    let repo = TestRepo::at(mnt.0.join("repo").display().to_string(), &[]);
    let src = source(&repo, 4);
    repo.backup(&[src.to_str().unwrap()]);
    mnt.remount_read_only();
    let o = repo.run(&["backup", src.to_str().unwrap()]);
    assert_fails(&o, 7, "Read-only file system");
    // Reading still works.
    repo.ok(&["snapshots"]);
    let o = repo.run(&["--json", "target", "probe"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["class"], "permission-denied", "{v}");
    assert_eq!(v["reachable"], true, "{v}");
}

#[test]
fn full_file_system_is_no_space_and_leaves_a_consistent_repository() {
    let scratch = tempfile::tempdir().unwrap();
    let mnt = Mount::tmpfs(&scratch.path().join("small"), "24m");
    let repo = TestRepo::at(
        mnt.0.join("repo").display().to_string(),
        &["--pack-size-mib", "1"],
    );
    let src = source(&repo, 40);
    let o = repo.run(&["backup", src.to_str().unwrap()]);
    assert_fails(&o, 8, "No space left on device");
    assert_eq!(repo.snapshot_count(), 0);
    assert_eq!(repo.count(FileKind::Lock), 0, "lock released");
    repo.ok(&["check"]);
    let probe = repo.json(&["target", "probe", "--size", "4096"]);
    assert!(probe["free_bytes"].as_u64().unwrap() < 2 << 20, "{probe}");
}

#[test]
fn replicated_cluster_survives_a_volume_server_killed_during_the_backup() {
    let scratch = tempfile::tempdir().unwrap();
    let mut weed = Weed::cluster(scratch.path(), 3, "001");
    let repo = TestRepo::at(weed.location("repo"), &["--pack-size-mib", "1"]);
    let src = source(&repo, 48);
    let child = spawn_backup(&repo, &src, "60s");
    wait_for_packs(&repo, 6);
    weed.kill_volume(1);
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "backup failed after losing one of three volume servers: {}",
        stderr(&o)
    );
    repo.ok(&["check", "--read-data"]);
    let t = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&src, &t.join(src.strip_prefix("/").unwrap()));
}
