//! A model-based property test of the catalog against the targets: random sequences of
//! mirrored job runs, fail-over runs that fill the first target mid-backup (a real
//! `ENOSPC`: it is a tmpfs whose size is set just above what it holds, so the backup leaves
//! sections on both targets), `forget --prune` on one target, `prune` (sometimes with no
//! grace for condemned packs, so sections a target holds without their snapshot manifest
//! are exposed to deletion), `backups forget`, snapshots deleted behind the catalog's back
//! (then `catalog verify --fix`), `heal`, `catalog rebuild` and `catalog verify --fix`,
//! against an oracle of which target holds which part of which backup. After every step:
//! `catalog verify` finds nothing, every backup the oracle can restore is `complete` with
//! exactly its holders, every other one is gone or `forgotten`, the snapshot files on disk
//! are the oracle's, and the newest complete backup restores byte-identical.
//!
//! Bounded by default (`KURA_MODEL_CASES`, default 5 cases of up to 8 steps; raise it for a
//! longer run). Runs on SQLite and PostgreSQL. The fail-over runs need root (a tmpfs mount);
//! without it they are left out and the test says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use catalog_common::{Db, Fresh, fresh};
use common::{Kura, pseudo_random, write};

const TARGETS: usize = 2;

/// Fail-over runs that left sections on both targets, over all cases: the test says how many
/// (and insists on some where it can mount a tmpfs).
static SPLIT_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Runs killed while still running, and snapshots such runs left (adopted or orphaned).
static KILLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static LEFT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Debug, Clone)]
enum Op {
    /// A mirrored run onto `n` targets (1 or 2), or onto one named target.
    Backup {
        n: usize,
        only: Option<usize>,
    },
    /// `forget --prune` of the k-th live backup's snapshot on target t.
    ForgetOn {
        t: usize,
        k: usize,
    },
    /// A fail-over run whose first target runs out of space after `budget_kib` more.
    Failover {
        budget_kib: u64,
    },
    Prune {
        t: usize,
        /// `--keep-condemned 0s`: what an earlier prune condemned is deleted now.
        now: bool,
    },
    /// `backups forget` of the k-th live backup.
    BackupsForget {
        k: usize,
    },
    /// The k-th backup's snapshot file deleted on t behind the catalog's back, then
    /// `catalog verify --fix`.
    DeleteBehind {
        t: usize,
        k: usize,
    },
    Heal {
        k: usize,
    },
    Rebuild,
    VerifyFix,
    /// A mirrored run onto `n` targets killed (SIGKILL) after `after_ms`, then the
    /// operator's recovery: `catalog verify --fix`.
    KillRun {
        n: usize,
        after_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=TARGETS, prop::option::of(0..TARGETS)).prop_map(|(n, only)| Op::Backup { n, only }),
        2 => (0..TARGETS, 0..4usize).prop_map(|(t, k)| Op::ForgetOn { t, k }),
        2 => (0..4096u64).prop_map(|k| Op::Failover { budget_kib: 128 + k }),
        1 => (0..TARGETS, any::<bool>()).prop_map(|(t, now)| Op::Prune { t, now }),
        1 => (0..4usize).prop_map(|k| Op::BackupsForget { k }),
        1 => (0..TARGETS, 0..4usize).prop_map(|(t, k)| Op::DeleteBehind { t, k }),
        1 => (0..4usize).prop_map(|k| Op::Heal { k }),
        1 => Just(Op::Rebuild),
        1 => Just(Op::VerifyFix),
        1 => (1..=TARGETS, 0..1500u64).prop_map(|(n, after_ms)| Op::KillRun { n, after_ms }),
    ]
}

/// What the oracle knows of one backup.
#[derive(Debug, Clone)]
struct Known {
    snap: String,
    /// How many parts: 1 for a mirrored run (its part is the whole backup), the number of
    /// sections for a fail-over run.
    parts: usize,
    /// target → the parts it holds.
    held: BTreeMap<usize, BTreeSet<usize>>,
    /// The targets holding its snapshot manifest.
    manifests: BTreeSet<usize>,
}

impl Known {
    fn restorable(&self) -> bool {
        !self.manifests.is_empty()
            && (0..self.parts).all(|p| self.held.values().any(|h| h.contains(&p)))
    }

    fn holders(&self) -> BTreeSet<usize> {
        self.held
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(t, _)| *t)
            .collect()
    }

    /// Target `t` no longer holds anything of it.
    fn drop_target(&mut self, t: usize) {
        self.held.remove(&t);
        self.manifests.remove(&t);
    }
}

/// A tmpfs mounted over a directory (unmounted on drop): a target whose size can be set.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(p: &std::path::Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(p).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512m,mode=0700", "tmpfs"])
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(p.to_path_buf()))
    }

    fn used(&self) -> u64 {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path and `st` a zeroed statvfs the call fills in.
        let st = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
            st
        };
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }

    fn resize(&self, bytes: u64) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,size={}k", bytes.div_ceil(1024))])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

struct World {
    /// Declared first: unmounted before the directory holding it is removed.
    t0fs: Option<Tmpfs>,
    f: Fresh,
    targets: Vec<PathBuf>,
    src: PathBuf,
    /// backup number → what the oracle knows of it.
    oracle: BTreeMap<i64, Known>,
    /// Snapshots a killed run left on targets that the catalog does not know (no record
    /// reached a target): snapshot → targets holding its manifest.
    orphans: BTreeMap<String, BTreeSet<usize>>,
    runs: u64,
}

impl Kura for World {
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.f.url)
            .env("KURA_PASSWORD", "test-password")
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_CONFIG")
            .env_remove("KURA_TEST_DIE_AFTER")
            // A killed run's targets return to the pool quickly.
            .env("KURA_LEASE", "2s")
            .env("KURA_LEASE_RENEW", "500ms")
            .env("XDG_CONFIG_HOME", self.f._dir.path().join("no-config"));
        c
    }
}

impl World {
    fn new(db: Db) -> World {
        let f = fresh(db);
        let base = f._dir.path().to_path_buf();
        let targets: Vec<PathBuf> = (0..TARGETS).map(|i| base.join(format!("t{i}"))).collect();
        let t0fs = Tmpfs::mount(&targets[0]);
        if common::is_root() {
            assert!(t0fs.is_some(), "root could not mount a tmpfs");
        }
        let w = World {
            t0fs,
            targets,
            src: base.join("src"),
            f,
            oracle: BTreeMap::new(),
            orphans: BTreeMap::new(),
            runs: 0,
        };
        let t0 = w.targets[0].to_str().unwrap().to_string();
        let t1 = w.targets[1].to_str().unwrap().to_string();
        w.ok(&[
            "-r",
            &t0,
            "--mirror",
            &t1,
            "init",
            "--kdf-memory-kib",
            "64",
            "--pack-size-mib",
            "1",
        ]);
        if matches!(db, Db::Postgres) {
            w.ok(&["resource", "add", "worker", "w", "--slots", "8"]);
            w.ok(&["resource", "add", "path", "p", "--slots", "8"]);
        }
        for (i, t) in w.targets.iter().enumerate() {
            let name = format!("t{i}");
            w.ok(&["resource", "add", "target", &name, t.to_str().unwrap()]);
            if matches!(db, Db::Postgres) {
                w.ok(&["resource", "route", "w", "p", &name]);
            }
        }
        w
    }

    /// The k-th backup the oracle can still restore, if there is one.
    fn live(&self, k: usize) -> Option<(i64, String)> {
        let live: Vec<_> = self.oracle.iter().filter(|(_, b)| b.restorable()).collect();
        if live.is_empty() {
            return None;
        }
        let (b, known) = live[k % live.len()];
        Some((*b, known.snap.clone()))
    }

    fn target_number(v: &Value) -> usize {
        v.as_str().unwrap()[1..].parse().unwrap()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Backup { n, only } => {
                self.runs += 1;
                write(
                    &self.src.join(format!("f{}", self.runs)),
                    &pseudo_random(50_000, self.runs),
                );
                let src = self.src.to_str().unwrap().to_string();
                let (n, target) = match only {
                    Some(t) => (1, Some(format!("t{t}"))),
                    None => (*n, None),
                };
                let ns = n.to_string();
                let mut args = vec!["--json", "backup", &src, "--redundancy", &ns];
                if let Some(t) = &target {
                    args.extend(["--target", t.as_str()]);
                }
                let v: Value = serde_json::from_str(&self.ok(&args)).unwrap();
                let held: BTreeSet<usize> = v["copies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["complete"] == true)
                    .map(|c| Self::target_number(&c["target"]))
                    .collect();
                self.oracle.insert(
                    v["backup"].as_i64().unwrap(),
                    Known {
                        snap: v["snapshot_id"].as_str().unwrap().to_string(),
                        parts: 1,
                        held: held.iter().map(|t| (*t, BTreeSet::from([0]))).collect(),
                        manifests: held,
                    },
                );
            }
            Op::Failover { budget_kib } => {
                let Some(fs) = &self.t0fs else {
                    return;
                };
                self.runs += 1;
                write(
                    &self.src.join(format!("f{}", self.runs)),
                    &pseudo_random(4 << 20, self.runs),
                );
                fs.resize(fs.used() + budget_kib * 1024);
                let src = self.src.to_str().unwrap().to_string();
                let o = self.run(&[
                    "--json",
                    "backup",
                    &src,
                    "--redundancy",
                    "2",
                    "--mode",
                    "failover",
                    "--extent-size",
                    "1MiB",
                ]);
                fs.resize(512 << 20);
                // Exit 9: degraded (it failed over); 0 when t0 had room after all.
                assert!(
                    matches!(o.status.code(), Some(0 | 9)),
                    "fail-over run: {}\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                let mut held: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
                let extents = v["extents"].as_array().unwrap();
                if v["failovers"] == 1 && extents.first().is_some_and(|e| e["target"] == "t0") {
                    SPLIT_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                for (part, e) in extents.iter().enumerate() {
                    held.entry(Self::target_number(&e["target"]))
                        .or_default()
                        .insert(part);
                }
                // The snapshot goes to the member active at the end and to every other one
                // holding a section that has not failed: t0 fails when the run moves on.
                let last = Self::target_number(&extents.last().unwrap()["target"]);
                let manifests = if v["failovers"] == 0 {
                    held.keys().copied().collect()
                } else {
                    BTreeSet::from([last])
                };
                self.oracle.insert(
                    v["backup"].as_i64().unwrap(),
                    Known {
                        snap: v["snapshot_id"].as_str().unwrap().to_string(),
                        parts: extents.len(),
                        held,
                        manifests,
                    },
                );
            }
            Op::ForgetOn { t, k } => {
                let Some((b, snap)) = self.live(*k) else {
                    return;
                };
                if !self.oracle[&b].manifests.contains(t) {
                    return;
                }
                let loc = self.targets[*t].to_str().unwrap().to_string();
                self.ok(&["-r", &loc, "forget", &snap, "--prune"]);
                self.oracle.get_mut(&b).unwrap().drop_target(*t);
            }
            Op::Prune { t, now } => {
                let loc = self.targets[*t].to_str().unwrap().to_string();
                let mut args = vec!["-r", loc.as_str(), "prune"];
                if *now {
                    args.extend(["--keep-condemned", "0s"]);
                }
                self.ok(&args);
            }
            Op::BackupsForget { k } => {
                let Some((b, _)) = self.live(*k) else {
                    return;
                };
                self.ok(&["backups", "forget", &b.to_string()]);
                self.oracle.remove(&b);
            }
            Op::DeleteBehind { t, k } => {
                let Some((b, snap)) = self.live(*k) else {
                    return;
                };
                if !self.oracle[&b].manifests.contains(t) {
                    return;
                }
                std::fs::remove_file(self.targets[*t].join("snapshots").join(&snap)).unwrap();
                let known = self.oracle.get_mut(&b).unwrap();
                // Its parts on t are no longer claimed: a prune may take them.
                known.drop_target(*t);
                let o = self.run(&["catalog", "verify"]);
                assert_eq!(o.status.code(), Some(4), "the deletion is found");
                self.ok(&["catalog", "verify", "--fix"]);
            }
            Op::Heal { k } => {
                if let Some((b, _)) = self.live(*k) {
                    self.ok(&["heal", &b.to_string()]);
                    // Every target holding part of it now holds all of it.
                    let known = self.oracle.get_mut(&b).unwrap();
                    let all: BTreeSet<usize> = (0..known.parts).collect();
                    for t in known.holders() {
                        known.held.insert(t, all.clone());
                        known.manifests.insert(t);
                    }
                }
            }
            Op::Rebuild => {
                self.ok(&["catalog", "rebuild", "--from", "t0", "--from", "t1"]);
            }
            Op::VerifyFix => {
                self.ok(&["catalog", "verify", "--fix"]);
            }
            Op::KillRun { n, after_ms } => {
                self.runs += 1;
                write(
                    &self.src.join(format!("f{}", self.runs)),
                    &pseudo_random(3 << 20, self.runs),
                );
                let mut child = self
                    .cmd()
                    .args(["--json", "backup"])
                    .arg(&self.src)
                    .args(["--redundancy", &n.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(*after_ms));
                if child.try_wait().unwrap().is_none() {
                    KILLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                let _ = child.wait();
                // Its lease runs out; then the operator's recovery.
                std::thread::sleep(std::time::Duration::from_millis(2100));
                self.ok(&["catalog", "verify", "--fix"]);
                self.adopt();
            }
        }
    }

    /// After a killed run and `catalog verify --fix`: snapshot manifests on the targets that
    /// the oracle does not know are the killed run's. One the catalog now has as complete
    /// (a record reached a target) is a backup like any other, claimed exactly where its
    /// manifest is; one it does not know stays an orphan (on disk, never claimed).
    fn adopt(&mut self) {
        let known: BTreeSet<String> = self
            .oracle
            .values()
            .map(|k| k.snap.clone())
            .chain(self.orphans.keys().cloned())
            .collect();
        let mut found: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (t, dir) in self.targets.iter().enumerate() {
            for e in std::fs::read_dir(dir.join("snapshots")).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    found.entry(name).or_default().insert(t);
                }
            }
        }
        if found.is_empty() {
            return;
        }
        LEFT.fetch_add(found.len(), std::sync::atomic::Ordering::Relaxed);
        let rows: Vec<Value> = self.json(&["backups"]).as_array().unwrap().clone();
        for (snap, on) in found {
            let row = rows.iter().find(|r| {
                r["extents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["position"].as_str().unwrap().starts_with(&snap))
            });
            match row {
                Some(r) if r["state"] == "complete" => {
                    let claimed: BTreeSet<usize> = r["extents"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| Self::target_number(&e["target"]))
                        .collect();
                    assert_eq!(claimed, on, "a killed run's backup, adopted: {r}");
                    self.oracle.insert(
                        r["backup"].as_i64().unwrap(),
                        Known {
                            snap,
                            parts: 1,
                            held: on.iter().map(|t| (*t, BTreeSet::from([0]))).collect(),
                            manifests: on,
                        },
                    );
                }
                _ => {
                    self.orphans.insert(snap, on);
                }
            }
        }
    }

    /// The catalog equals the targets equals the oracle.
    fn check(&self, step: usize) {
        let o = self.run(&["--json", "catalog", "verify"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "step {step}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let rows: Vec<Value> = self.json(&["backups"]).as_array().unwrap().clone();
        let by_id: BTreeMap<i64, &Value> = rows
            .iter()
            .map(|r| (r["backup"].as_i64().unwrap(), r))
            .collect();
        for (b, known) in &self.oracle {
            let row = by_id.get(b);
            if !known.restorable() {
                assert!(
                    row.is_none_or(|r| r["state"] == "forgotten"),
                    "step {step}: backup {b} cannot be restored but is {row:?}"
                );
                continue;
            }
            let row = row.unwrap_or_else(|| panic!("step {step}: backup {b} is gone"));
            assert_eq!(row["state"], "complete", "step {step}: {row}");
            let got: BTreeSet<usize> = row["extents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| Self::target_number(&e["target"]))
                .collect();
            assert_eq!(
                got,
                known.holders(),
                "step {step}: backup {b} ({}): {row}",
                &known.snap[..8]
            );
        }
        // Rows the oracle does not know are only forgotten ones.
        for (b, r) in &by_id {
            if !self.oracle.contains_key(b) {
                assert_ne!(r["state"], "complete", "step {step}: unknown backup {r}");
            }
        }
        // The manifests on disk are the oracle's.
        for (t, dir) in self.targets.iter().enumerate() {
            let on_disk: BTreeSet<String> = std::fs::read_dir(dir.join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let want: BTreeSet<String> = self
                .oracle
                .values()
                .filter(|k| k.manifests.contains(&t))
                .map(|k| k.snap.clone())
                .chain(
                    self.orphans
                        .iter()
                        .filter(|(_, on)| on.contains(&t))
                        .map(|(s, _)| s.clone()),
                )
                .collect();
            assert_eq!(on_disk, want, "step {step}: snapshots on t{t}");
        }
        // The newest complete backup restores, byte-identical for what it backed up.
        if let Some((b, _)) = self.oracle.iter().rev().find(|(_, k)| k.restorable()) {
            let dest = self.f._dir.path().join(format!("r{step}-{b}"));
            self.ok(&[
                "restore",
                "--backup",
                &b.to_string(),
                "--target",
                dest.to_str().unwrap(),
            ]);
            let restored = dest.join(self.src.strip_prefix("/").unwrap());
            for entry in std::fs::read_dir(&restored).unwrap() {
                let p = entry.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert_eq!(
                    std::fs::read(&p).unwrap(),
                    std::fs::read(self.src.join(&name)).unwrap(),
                    "step {step}: backup {b}: {name}"
                );
            }
        }
    }
}

fn the_catalog_equals_the_targets_after_any_sequence(db: Db) {
    let cases = std::env::var("KURA_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(5);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 2..=8), |ops| {
            let mut w = World::new(db);
            if w.t0fs.is_none() {
                eprintln!("not root: the fail-over runs are left out");
            }
            for (i, op) in ops.iter().enumerate() {
                w.apply(op);
                w.check(i);
            }
            Ok(())
        })
        .unwrap();
    let split = SPLIT_RUNS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{cases} case(s); {split} fail-over run(s) left sections on both targets; {} run(s) \
         killed mid-run, leaving {} snapshot(s)",
        KILLED.load(std::sync::atomic::Ordering::Relaxed),
        LEFT.load(std::sync::atomic::Ordering::Relaxed)
    );
    if common::is_root() && cases >= 5 {
        assert!(
            split > 0,
            "no fail-over run split a backup: the model tests too little"
        );
    }
}

on_both_dbs!(the_catalog_equals_the_targets_after_any_sequence);
