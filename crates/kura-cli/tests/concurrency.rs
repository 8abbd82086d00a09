//! Backup, prune, forget and check running at the same time, with real processes: a backup
//! stopped (SIGSTOP) until its lock goes stale while prunes delete what it deduped against, a
//! backup whose lock file is taken away, checks beside running backups and prunes, and reads
//! of a repository that refuses writes.
//!
//! Lock timing comes from `KURA_LOCK_REFRESH` / `KURA_LOCK_STALE` (1 s / 4 s here), so a
//! stale lock takes seconds, not half an hour. Waiting for staleness polls the lock listing
//! (the real signal), bounded.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use kura_repo::Repository;
use kura_repo::backend::FileKind;

const REFRESH: &str = "1";
const STALE: &str = "4";

fn timed(mut c: Command) -> Command {
    c.env("KURA_LOCK_REFRESH", REFRESH)
        .env("KURA_LOCK_STALE", STALE);
    c
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process by its pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Poll until every lock in the repository is stale (by this process's clock and the knobs
/// above, which the test process shares through the environment of its children only — so
/// compare ages directly).
fn wait_until_locks_stale(repo: &TestRepo) {
    let stale = Duration::from_secs(STALE.parse().unwrap());
    let lib = Repository::open(repo.backend(), PASSWORD.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let locks = kura_repo::lock::list_locks(&lib).unwrap();
        let now = kura_repo::util::Timestamp::now().0;
        if locks
            .iter()
            .all(|l| now - l.info.time.0 > stale.as_secs() as i64 + 1)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "locks never went stale: {locks:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn first_snapshot_id(v: &serde_json::Value) -> String {
    v["snapshot_id"].as_str().unwrap().to_string()
}

/// The outcome every interfered-with backup must have: exit 0 with a snapshot that restores
/// byte-identical, or exit 11 (lock lost) with no snapshot. Never exit 0 with missing data.
fn assert_whole_or_nothing(
    repo: &TestRepo,
    code: Option<i32>,
    err: &str,
    snaps_before: usize,
    src: &Path,
) {
    match code {
        Some(0) => {
            assert_eq!(repo.snapshot_count(), snaps_before + 1);
            let t = repo.dir.path().join(format!("t-{}", rand_suffix()));
            repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
            assert_same_tree(src, &t.join(src.strip_prefix("/").unwrap()));
        }
        Some(11) => {
            assert!(err.contains("was lost"), "{err}");
            assert_eq!(
                repo.snapshot_count(),
                snaps_before,
                "no snapshot after a lost lock"
            );
        }
        other => panic!("backup ended with {other:?}: {err}"),
    }
    repo.ok(&["check", "--read-data"]);
}

fn rand_suffix() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

fn stopped_backup_whose_lock_went_stale_loses_nothing(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    let other = repo.dir.path().join("other");
    write(&other.join("o"), &pseudo_random(300_000, 999));
    let other_id = first_snapshot_id(&repo.backup(&[other.to_str().unwrap()]));
    // An old generation, forgotten: its packs are unused, and the next backup dedups
    // against them.
    for i in 0..6u64 {
        write(&src.join(format!("a{i}")), &pseudo_random(500_000, i));
    }
    let old = first_snapshot_id(&repo.backup(&[src.to_str().unwrap()]));
    repo.ok(&["forget", &old[..8]]);
    for i in 0..12u64 {
        write(&src.join(format!("b{i}")), &pseudo_random(500_000, 100 + i));
    }
    let packs0 = repo.count(FileKind::Pack);
    let mut child = timed(repo.cmd())
        .args(["backup"])
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once it uploaded its first pack: it has loaded the index and deduped.
    let running = step_until(&mut child, Duration::from_secs(60), || {
        repo.count(FileKind::Pack) > packs0
    });
    assert!(running, "the backup finished before it could be stopped");
    // Prune condemns the old generation (and the stopped backup's unindexed packs) ...
    let p1 = timed(repo.cmd())
        .args(["--json", "prune", "--keep-condemned", "0"])
        .output()
        .unwrap();
    assert!(
        p1.status.success(),
        "prune beside a backup: {}",
        stderr(&p1)
    );
    // ... forget runs beside both ...
    let f = timed(repo.cmd())
        .args(["forget", &other_id[..8]])
        .output()
        .unwrap();
    assert!(f.status.success(), "forget beside backup: {}", stderr(&f));
    // ... and once the stopped backup's lock is stale, a second prune deletes them.
    wait_until_locks_stale(&repo);
    let p2 = timed(repo.cmd())
        .args(["--json", "prune", "--keep-condemned", "0"])
        .output()
        .unwrap();
    assert!(p2.status.success(), "second prune: {}", stderr(&p2));
    let r2: serde_json::Value = serde_json::from_slice(&p2.stdout).unwrap();
    assert!(r2["packs_deleted"].as_u64().unwrap() > 0, "{r2}");
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_whole_or_nothing(&repo, out.status.code(), &err, 0, &src);
    // This interleaving must be caught: the lock was stale and packs were deleted.
    assert_eq!(out.status.code(), Some(11), "{err}");
    // The next backup stores what is gone again.
    repo.backup(&[src.to_str().unwrap()]);
    assert_whole_or_nothing(&repo, Some(0), "", 0, &src);
}

/// `kura unlock --all` (or anything) removing a running backup's lock: no snapshot.
fn backup_whose_lock_file_vanished_writes_no_snapshot(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    for i in 0..12u64 {
        write(&src.join(format!("f{i}")), &pseudo_random(500_000, i));
    }
    let mut child = timed(repo.cmd())
        .args(["backup"])
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = step_until(&mut child, Duration::from_secs(60), || {
        repo.count(FileKind::Pack) > 0
    });
    assert!(running, "the backup finished before it could be stopped");
    repo.ok(&["unlock", "--remove-all"]);
    assert_eq!(repo.count(FileKind::Lock), 0);
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert_whole_or_nothing(&repo, out.status.code(), &err, 0, &src);
}

/// Lock refreshes that keep failing (the locks directory replaced by a file) while the
/// backup runs past half the staleness window: no snapshot.
fn backup_whose_lock_refreshes_fail_writes_no_snapshot(store: Store) {
    if store == Store::S3 {
        return; // needs a local directory to break
    }
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    for i in 0..12u64 {
        write(&src.join(format!("f{i}")), &pseudo_random(500_000, i));
    }
    let mut child = timed(repo.cmd())
        .args(["backup"])
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = step_until(&mut child, Duration::from_secs(60), || {
        repo.count(FileKind::Pack) > 0
    });
    assert!(running, "the backup finished before it could be stopped");
    let locks = repo.path().join("locks");
    let aside = repo.path().join("locks.aside");
    std::fs::rename(&locks, &aside).unwrap();
    std::fs::write(&locks, b"not a directory").unwrap();
    // Let it run with failing refreshes for longer than half the staleness window.
    signal(&child, libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        signal(&child, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(400));
        signal(&child, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&locks).unwrap();
    std::fs::rename(&aside, &locks).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert_whole_or_nothing(&repo, out.status.code(), &err, 0, &src);
}

/// Checks run while backups and prunes run: never a false report of damage.
fn check_beside_backup_and_prune_finds_no_false_damage(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    let rounds: u64 = std::env::var("KURA_CONCURRENCY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        for i in 0..6u64 {
            write(
                &src.join(format!("r{round}-{i}")),
                &pseudo_random(300_000, round * 100 + i),
            );
        }
        let mut backup = repo
            .cmd()
            .arg("backup")
            .arg(&src)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut checks = 0;
        while backup.try_wait().unwrap().is_none() || checks == 0 {
            let o = repo.run(&["check"]);
            assert!(
                o.status.success(),
                "check beside a backup: {}{}",
                String::from_utf8_lossy(&o.stdout),
                stderr(&o)
            );
            checks += 1;
        }
        assert!(backup.wait().unwrap().success());
        // Forget the oldest, prune beside checks.
        let snaps = repo.json(&["snapshots"]);
        if snaps.as_array().unwrap().len() > 1 {
            let id = snaps[0]["id"].as_str().unwrap().to_string();
            repo.ok(&["forget", &id[..8]]);
        }
        for i in 0..3u64 {
            let _ = std::fs::remove_file(src.join(format!("r{round}-{i}")));
        }
        let mut prune = repo
            .cmd()
            .args(["prune", "--keep-condemned", "0", "--repack-threshold", "0"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut checks = 0;
        while prune.try_wait().unwrap().is_none() || checks == 0 {
            let o = repo.run(&["check"]);
            assert!(
                o.status.success(),
                "check beside a prune: {}{}",
                String::from_utf8_lossy(&o.stdout),
                stderr(&o)
            );
            checks += 1;
        }
        assert!(prune.wait().unwrap().success());
    }
    repo.backup(&[src.to_str().unwrap()]);
    repo.ok(&["check", "--read-data"]);
    let t = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&src, &t.join(src.strip_prefix("/").unwrap()));
}

/// A repository that refuses writes (read-only permissions, read by an unprivileged user):
/// snapshots, ls, check and restore work, with a warning, and create nothing in it.
#[test]
fn reads_of_a_read_only_repository_work_and_create_nothing() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    make_rich_tree(&src, 200_000);
    repo.backup(&[src.to_str().unwrap()]);
    // Remove the lock directory too: a read must not create it.
    std::fs::remove_dir(repo.path().join("locks")).unwrap();
    let before: Vec<_> = walkdir(&repo.path());
    let out_dir = repo.dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let chmod = |mode: &str| {
        let st = Command::new("chmod")
            .args(["-R", mode])
            .arg(repo.path())
            .status()
            .unwrap();
        assert!(st.success());
    };
    if is_root() {
        // Repository files are private (0600, directories 0700): the reader owns them, as
        // the account that made the backups would; without write permission even its own.
        let st = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(repo.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    chmod("a-w");
    let as_reader = |args: &[&str]| {
        let mut c = if is_root() {
            // root ignores permissions: read as nobody.
            for p in [repo.dir.path(), out_dir.as_path()] {
                Command::new("chmod").arg("a+rx").arg(p).status().unwrap();
            }
            Command::new("chown")
                .arg("65534:65534")
                .arg(&out_dir)
                .status()
                .unwrap();
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_kura"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_kura"))
        };
        c.env("KURA_REPOSITORY", &repo.location)
            .env("KURA_PASSWORD", PASSWORD)
            .env("KURA_CATALOG", out_dir.join("catalog.db"))
            .env("HOME", &out_dir)
            .env("XDG_CONFIG_HOME", out_dir.join("cfg"))
            .env("XDG_DATA_HOME", out_dir.join("data"))
            .args(args);
        c.output().unwrap()
    };
    let o = as_reader(&["snapshots"]);
    assert!(o.status.success(), "snapshots: {}", stderr(&o));
    let o = as_reader(&["ls", "latest"]);
    assert!(o.status.success(), "ls: {}", stderr(&o));
    let o = as_reader(&["check", "--read-data"]);
    assert!(o.status.success(), "check: {}", stderr(&o));
    assert!(stderr(&o).contains("without a lock"), "{}", stderr(&o));
    let t = out_dir.join("t");
    let o = as_reader(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert!(o.status.success(), "restore: {}", stderr(&o));
    let o = as_reader(&["check", "--no-lock"]);
    assert!(o.status.success(), "check --no-lock: {}", stderr(&o));
    chmod("u+w");
    assert_eq!(walkdir(&repo.path()), before, "a read created something");
    // A missing repository directory (an unmounted share) is not created either.
    let gone = repo.dir.path().join("unmounted");
    let o = repo
        .cmd()
        .env("KURA_REPOSITORY", &gone)
        .args(["restore", "latest", "--target", t.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    assert!(!gone.exists(), "restore created the repository location");
}

/// The live-lock half of the design: a backup whose parent is forgotten and pruned while it
/// runs keeps what it references. Prune condemns the parent's packs but cannot delete them
/// while the backup's (older) lock is live; once the backup's snapshot exists, the next prune
/// recovers them.
fn live_backup_holds_back_deletion_and_its_snapshot_recovers_packs(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    for i in 0..6u64 {
        write(&src.join(format!("a{i}")), &pseudo_random(400_000, i));
    }
    let parent = first_snapshot_id(&repo.backup(&[src.to_str().unwrap()]));
    for i in 0..12u64 {
        write(&src.join(format!("b{i}")), &pseudo_random(500_000, 50 + i));
    }
    let packs0 = repo.count(FileKind::Pack);
    let mut child = repo
        .cmd()
        .args(["backup"])
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = step_until(&mut child, Duration::from_secs(60), || {
        repo.count(FileKind::Pack) > packs0
    });
    assert!(running, "the backup finished before it could be stopped");
    repo.ok(&["forget", &parent[..8]]);
    let first = repo.json(&["prune", "--keep-condemned", "0"]);
    assert!(first["packs_condemned"].as_u64().unwrap() > 0, "{first}");
    let second = repo.json(&["prune", "--keep-condemned", "0"]);
    assert_eq!(
        second["packs_deleted"], 0,
        "the live backup's lock holds deletion: {second}"
    );
    assert!(second["packs_waiting"].as_u64().unwrap() > 0, "{second}");
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_whole_or_nothing(&repo, Some(0), "", 0, &src);
    // The backup's snapshot needs the parent's blobs it reused: recovered, not deleted.
    let third = repo.json(&["prune", "--keep-condemned", "0"]);
    assert!(third["packs_recovered"].as_u64().unwrap() > 0, "{third}");
    assert_whole_or_nothing(&repo, Some(0), "", 0, &src);
}

on_both!(
    live_backup_holds_back_deletion_and_its_snapshot_recovers_packs,
    stopped_backup_whose_lock_went_stale_loses_nothing,
    backup_whose_lock_file_vanished_writes_no_snapshot,
    backup_whose_lock_refreshes_fail_writes_no_snapshot,
    check_beside_backup_and_prune_finds_no_false_damage,
);
