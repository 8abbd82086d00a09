//! Fail-over backups (`--mode failover`) with real faults: three targets of one group — an S3
//! bucket on a private SeaweedFS server (first in line) and two local directories. The S3
//! server is killed at many points through the backup, or stopped (SIGSTOP); then killed and
//! the next directory's file system turned read-only (a read-only bind mount) so the run
//! moves on twice; every target is dead. Asserted each time: the run goes on from the first unacknowledged extent on the next
//! target, nothing acknowledged is sent again (bytes sent ≤ data + one extent and one pack per
//! fail-over), the sectioned backup restores byte-identical from the union of its targets,
//! `heal` leaves a complete copy on each target, and the catalog rebuilt from a target alone
//! restores it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::weed::Weed;
use common::{Kura, TestRepo, assert_same_tree, pseudo_random, step_until, write};
use kura_repo::backend::FileKind;
use serde_json::Value;

const DEGRADED: i32 = 9;
const EXTENT: u64 = 4 << 20;
/// The largest pack these repositories write: a pack closes once past 1 MiB, so it holds up
/// to 1 MiB plus one chunk (4 MiB at most, incompressible here), plus headers.
const MAX_PACK: u64 = (5 << 20) + (64 << 10);

/// These tests run one at a time: each starts its own SeaweedFS and kills or stops it, and
/// five such servers competing for two cores and one disk only add noise to timings that the
/// tests assert on (deadlines, stall timeouts).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Fo {
    _scratch: tempfile::TempDir,
    /// The group, opened at its S3 member (t0); scratch space in `repo.dir`.
    repo: TestRepo,
    s3: String,
    dirs: [PathBuf; 2],
    catalog: PathBuf,
    src: PathBuf,
}

impl Fo {
    fn new(weed: &Weed, name: &str, mib: usize) -> Fo {
        let s3 = weed.location(name);
        let scratch_dir = tempfile::tempdir().unwrap();
        let scratch = scratch_dir.path().to_path_buf();
        let dirs = [scratch.join("t1"), scratch.join("t2")];
        let repo = TestRepo::at(
            s3.clone(),
            &[
                "--mirror",
                dirs[0].to_str().unwrap(),
                "--mirror",
                dirs[1].to_str().unwrap(),
                "--pack-size-mib",
                "1",
            ],
        );
        let src = repo.dir.path().join("src");
        for i in 0..mib / 4 {
            write(
                &src.join(format!("d{}/f{i}.bin", i % 3)),
                &pseudo_random(4 << 20, i as u64 + 101),
            );
        }
        write(&src.join("small.txt"), b"hello failover");
        let fo = Fo {
            _scratch: scratch_dir,
            catalog: scratch.join("catalog.db"),
            repo,
            s3,
            dirs,
            src,
        };
        fo.register();
        fo
    }

    fn register(&self) {
        self.ok(&["resource", "add", "target", "t0", &self.s3]);
        for (i, d) in self.dirs.iter().enumerate() {
            self.ok(&[
                "resource",
                "add",
                "target",
                &format!("t{}", i + 1),
                d.to_str().unwrap(),
            ]);
        }
    }

    fn location(&self, target: &str) -> String {
        match target {
            "t0" => self.s3.clone(),
            "t1" => self.dirs[0].display().to_string(),
            "t2" => self.dirs[1].display().to_string(),
            _ => panic!("{target}"),
        }
    }

    /// Start a fail-over backup with these target deadline and extent timeout.
    fn spawn(&self, timeout: &str, extent_timeout: &str) -> std::process::Child {
        self.cmd()
            .args(["--timeout", timeout])
            .args(self.backup_args(extent_timeout))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn backup_args(&self, extent_timeout: &str) -> Vec<String> {
        [
            "--json",
            "backup",
            self.src.to_str().unwrap(),
            "--redundancy",
            "3",
            "--mode",
            "failover",
            "--extent-size",
            "4MiB",
            "--extent-timeout",
            extent_timeout,
        ]
        .map(String::from)
        .to_vec()
    }

    /// `kura restore --backup N` and compare with the source.
    fn restores(&self, backup: i64, tag: &str) {
        let dest = self.repo.dir.path().join(format!("restore-{tag}"));
        self.ok(&[
            "restore",
            "--backup",
            &backup.to_string(),
            "--target",
            dest.to_str().unwrap(),
        ]);
        assert_same_tree(&self.src, &dest.join(self.src.strip_prefix("/").unwrap()));
    }

    /// Restore `snapshot` from one target alone (no catalog) and verify every blob there.
    fn restores_alone(&self, target: &str, snapshot: &str) {
        let dest = self.repo.dir.path().join(format!("alone-{target}"));
        let loc = self.location(target);
        let o = self
            .cmd()
            .args(["-r", &loc, "restore", snapshot, "--target"])
            .arg(&dest)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same_tree(&self.src, &dest.join(self.src.strip_prefix("/").unwrap()));
        let o = self
            .cmd()
            .args(["-r", &loc, "check", "--read-data"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    fn nothing_held(&self) {
        for r in self.json(&["resource", "list"]).as_array().unwrap() {
            assert_eq!(r["allocations"], Value::Array(vec![]), "{r}");
        }
    }
}

fn sections(v: &Value) -> Vec<(String, u64)> {
    v["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["target"].as_str().unwrap().to_string(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn sent(v: &Value) -> u64 {
    v["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["bytes"].as_u64().unwrap())
        .sum()
}

/// Bytes sent may exceed what was stored by one extent plus one pack per fail-over, plus
/// index files and the snapshot.
fn assert_sent_bound(v: &Value, what: &str) {
    let added = v["summary"]["bytes_added"].as_u64().unwrap();
    let failovers = v["failovers"].as_u64().unwrap();
    let bound = added + failovers * (EXTENT + MAX_PACK) + (1 << 20);
    let s = sent(v);
    assert!(
        s <= bound,
        "{what}: sent {s} bytes for {added} stored with {failovers} fail-over(s) (bound {bound})"
    );
}

#[test]
fn an_undisturbed_failover_backup_stays_on_the_first_target() {
    let _serial = serial();
    let wdir = tempfile::tempdir().unwrap();
    let weed = Weed::single(wdir.path());
    let fo = Fo::new(&weed, "calm", 16);
    // A stored definition, run on demand.
    fo.ok(&[
        "job",
        "add",
        "fo",
        "--object",
        fo.src.to_str().unwrap(),
        "--redundancy",
        "3",
        "--mode",
        "failover",
        "--extent-size",
        "4MiB",
        "--extent-timeout",
        "30s",
    ]);
    let bad = fo.run(&[
        "job",
        "add",
        "bad",
        "--object",
        "/x",
        "--mode",
        "failover",
        "--extent-size",
        "12parsecs",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let def = fo.json(&["job", "show", "fo"]);
    assert_eq!(def["mode"], "failover", "{def}");
    let o = fo.run(&["--json", "job", "run", "fo"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mode"], "failover");
    assert_eq!(v["failovers"], 0);
    let secs = sections(&v);
    assert!(secs.len() >= 3, "16 MiB in 4 MiB extents: {v}");
    assert!(secs.iter().all(|(t, _)| t == "t0"), "{v}");
    // Extents close at the first pack past the extent size.
    for (_, size) in &secs[..secs.len() - 1] {
        assert!(*size >= EXTENT && *size < EXTENT + MAX_PACK, "{secs:?}");
    }
    // The sections hold the new data (blobs plus their packs' headers), nothing else.
    let in_sections = secs.iter().map(|s| s.1).sum::<u64>();
    let added = v["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        in_sections >= added && in_sections < added + (64 << 10),
        "{in_sections} bytes in sections for {added} added"
    );
    assert_sent_bound(&v, "undisturbed");
    fo.restores(v["backup"].as_i64().unwrap(), "calm");
    // Only t0 holds anything; it is a complete repository by itself.
    for d in &fo.dirs {
        assert_eq!(std::fs::read_dir(d.join("snapshots")).unwrap().count(), 0);
    }
    fo.restores_alone("t0", &v["snapshot_id"].as_str().unwrap()[..8]);
    fo.nothing_held();
}

#[test]
fn the_first_target_killed_at_many_points_continues_on_the_next() {
    let _serial = serial();
    let wdir = tempfile::tempdir().unwrap();
    let mut weed = Weed::single(wdir.path());
    let mut landed = Vec::new();
    let mut healed = false;
    for cut in [1usize, 5, 11, 18] {
        let fo = Fo::new(&weed, &format!("cut-{cut}"), 32);
        // Deadline and extent timeout are both far away: only giving up on an unreachable
        // target (`--unreachable-timeout`, 1 s by default) moves this run on in time.
        let mut child = fo.spawn("5m", "5m");
        let running = step_until(&mut child, Duration::from_secs(60), || {
            fo.repo.count(FileKind::Pack) >= cut
        });
        weed.kill_s3();
        let killed = Instant::now();
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        let out = child.wait_with_output().unwrap();
        let after_kill = killed.elapsed();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !running {
            weed.restart_s3();
            continue; // finished before the cut: nothing tested
        }
        landed.push(cut);
        assert_eq!(out.status.code(), Some(DEGRADED), "cut {cut}: {err}");
        assert!(
            err.contains("target t0 (stream 0) failed"),
            "cut {cut}: {err}"
        );
        assert!(
            after_kill < Duration::from_secs(60),
            "cut {cut}: the run waited {after_kill:?} on a dead target (deadline 5 min): {err}"
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["failovers"], 1, "cut {cut}: {v}");
        let secs = sections(&v);
        // In order: t0's sections (none if the kill came before the first acknowledgement),
        // then t1's; t2 was never needed.
        let on_t1 = secs.iter().filter(|(t, _)| t == "t1").count();
        assert!(on_t1 >= 1, "cut {cut}: {v}");
        assert!(secs.iter().all(|(t, _)| t != "t2"), "cut {cut}: {v}");
        let first_t1 = secs.iter().position(|(t, _)| t == "t1").unwrap();
        assert!(
            secs[..first_t1].iter().all(|(t, _)| t == "t0"),
            "cut {cut}: {secs:?}"
        );
        assert_sent_bound(&v, &format!("cut {cut}"));
        let backup = v["backup"].as_i64().unwrap();
        let snap = v["snapshot_id"].as_str().unwrap().to_string();
        // t0 is dead: a backup with sections there cannot be read until it is back.
        weed.restart_s3();
        fo.restores(backup, &format!("cut-{cut}"));
        let listed = fo.json(&["backups"]);
        assert_eq!(listed[0]["extents"].as_array().unwrap().len(), secs.len());
        fo.nothing_held();
        if !healed && first_t1 > 0 {
            heal_and_rebuild(&fo, backup, &snap);
            healed = true;
        }
    }
    assert!(
        landed.len() >= 3,
        "too few cuts landed mid-backup: {landed:?}"
    );
    assert!(healed, "no cut left sections on both targets to heal");
}

/// After a fail-over with sections on t0 and t1: `heal` gives each a complete copy (each
/// restores alone and passes `check --read-data`); then the catalog, deleted, is rebuilt
/// from t1 alone and restores the backup.
fn heal_and_rebuild(fo: &Fo, backup: i64, snap: &str) {
    let before = fo.json(&["backups"]);
    let h = fo.json(&["heal", &backup.to_string()]);
    let healed: Vec<&str> = h["healed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["target"].as_str().unwrap())
        .collect();
    assert!(healed.contains(&"t0") && healed.contains(&"t1"), "{h}");
    assert!(h["packs_copied"].as_u64().unwrap() > 0, "{h}");
    for t in ["t0", "t1"] {
        fo.restores_alone(t, &snap[..8]);
    }
    // Each target now holds a copy: its section rows became one copy row (judged by its
    // manifest from now on); healing again copies nothing.
    let after = fo.json(&["backups"]);
    assert!(
        before[0]["extents"].as_array().unwrap().len() >= 2,
        "{before}"
    );
    let mut copies: Vec<(&str, &str)> = after[0]["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["target"].as_str().unwrap(),
                e["position"].as_str().unwrap(),
            )
        })
        .collect();
    copies.sort();
    assert_eq!(copies, [("t0", snap), ("t1", snap)], "{after}");
    let again = fo.json(&["heal", &backup.to_string()]);
    assert_eq!(again["packs_copied"], 0, "{again}");
    // The catalog database is lost; the targets rebuild it.
    std::fs::remove_file(&fo.catalog).unwrap();
    fo.register();
    let r = fo.json(&["catalog", "rebuild", "--from", "t1"]);
    assert_eq!(r["imported"], 1, "{r}");
    let rebuilt = fo.json(&["backups"]);
    assert_eq!(rebuilt[0]["extents"], after[0]["extents"], "{rebuilt}");
    fo.restores(rebuilt[0]["backup"].as_i64().unwrap(), "rebuilt");
}

#[test]
fn a_stopped_target_is_left_after_the_extent_timeout() {
    let _serial = serial();
    let wdir = tempfile::tempdir().unwrap();
    let weed = Weed::single(wdir.path());
    let fo = Fo::new(&weed, "stall", 32);
    // The backend's own deadline is long; the extent timeout must move the run on.
    let mut child = fo.spawn("5m", "3s");
    let running = step_until(&mut child, Duration::from_secs(60), || {
        fo.repo.count(FileKind::Pack) >= 6
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
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = v["copies"][0]["dropped"].as_str().unwrap_or_default();
    assert!(why.contains("stalled"), "{v}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_sent_bound(&v, "stopped");
    fo.restores(v["backup"].as_i64().unwrap(), "stall");
    fo.nothing_held();
}

/// A real fault for directories: swap the directory for a plain file (ENOTDIR).
fn break_dir(p: &Path) {
    std::fs::rename(p, p.with_extension("gone")).unwrap();
    std::fs::write(p, b"not a directory").unwrap();
}

#[test]
fn with_every_target_dead_the_run_fails_cleanly() {
    let _serial = serial();
    let wdir = tempfile::tempdir().unwrap();
    let mut weed = Weed::single(wdir.path());
    let fo = Fo::new(&weed, "dead", 8);
    weed.kill_s3();
    for d in &fo.dirs {
        break_dir(d);
    }
    let o = fo
        .cmd()
        .args(["--timeout", "3s"])
        .args(fo.backup_args("10s"))
        .output()
        .unwrap();
    weed.restart_s3();
    let err = String::from_utf8_lossy(&o.stderr);
    // The check before securing finds every target unreachable: the run fails at once
    // (exit 15), naming each and why, and counts one error against each.
    assert_eq!(o.status.code(), Some(15), "{err}");
    for t in ["t0", "t1", "t2"] {
        assert!(
            err.contains(&format!("{t}: unreachable")),
            "{t} named: {err}"
        );
        let r = fo.json(&["resource", "show", t]);
        assert_eq!(r["errors"], 1, "{r}");
    }
    assert!(fo.json(&["backups"]).as_array().unwrap().is_empty());
    assert_eq!(fo.repo.snapshot_count(), 0);
    fo.nothing_held();
}

fn local_packs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("data"))
        .map(|fans| {
            fans.filter_map(|f| std::fs::read_dir(f.ok()?.path()).ok())
                .map(|f| f.count())
                .sum()
        })
        .unwrap_or(0)
}

/// A real read-only file system over a directory (a read-only bind mount of itself), undone
/// on drop. `None` where this process may not mount.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn over(p: &Path) -> Option<ReadOnly> {
        let ok = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let d = p.to_str().unwrap();
        if !ok(&["--bind", d, d]) {
            return None;
        }
        let ro = ReadOnly(p.to_path_buf());
        ok(&["-o", "remount,bind,ro", d]).then_some(ro)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn with_three_targets_the_run_moves_on_twice() {
    let _serial = serial();
    let wdir = tempfile::tempdir().unwrap();
    let mut weed = Weed::single(wdir.path());
    let fo = Fo::new(&weed, "twice", 48);
    let mut child = fo.spawn("4s", "30s");
    // First fault: t0's S3 server is killed once it holds a few packs.
    let running = step_until(&mut child, Duration::from_secs(60), || {
        fo.repo.count(FileKind::Pack) >= 6
    });
    assert!(
        running,
        "finished before the first fault; make the source larger"
    );
    weed.kill_s3();
    // Second fault: t1's file system turns read-only once the run has moved there.
    let running = step_until(&mut child, Duration::from_secs(90), || {
        local_packs(&fo.dirs[0]) >= 6
    });
    assert!(
        running,
        "finished before the second fault; make the source larger"
    );
    let Some(ro) = ReadOnly::over(&fo.dirs[0]) else {
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        weed.restart_s3();
        eprintln!("skipped: this process may not mount (needs CAP_SYS_ADMIN)");
        return;
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    let out = child.wait_with_output().unwrap();
    drop(ro);
    weed.restart_s3();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(DEGRADED), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failovers"], 2, "{v}");
    let why = v["copies"][1]["dropped"].as_str().unwrap_or_default();
    assert!(why.contains("Read-only file system"), "{v}");
    let order: Vec<String> = sections(&v).into_iter().map(|(t, _)| t).collect();
    let mut runs = order.clone();
    runs.dedup();
    assert_eq!(
        runs,
        ["t0", "t1", "t2"],
        "sections in order on each target: {order:?}"
    );
    assert_sent_bound(&v, "two fail-overs");
    fo.restores(v["backup"].as_i64().unwrap(), "twice");
    fo.nothing_held();
}

impl Kura for Fo {
    fn cmd(&self) -> Command {
        let mut c = self.repo.cmd();
        c.env("KURA_CATALOG", &self.catalog)
            .env_remove("KURA_REPOSITORY");
        c
    }
}
