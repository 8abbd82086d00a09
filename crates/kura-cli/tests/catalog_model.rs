//! A model-based property test of the catalog against the targets: random sequences of
//! mirrored job runs, `forget --prune` on one target, `prune`, `backups forget`, snapshots
//! deleted behind the catalog's back (then `catalog verify --fix`), `heal`, `catalog
//! rebuild` and `catalog verify --fix`, against an oracle of which target holds which
//! snapshot. After every step: `catalog verify` finds nothing, every backup the oracle says
//! some target holds is `complete` with exactly those copies, every other one is gone or
//! `forgotten`, the snapshot files on disk are the oracle's, and a complete backup restores.
//!
//! Bounded by default (`KURA_MODEL_CASES`, default 5 cases of up to 7 steps; raise it for a
//! longer run). Runs on SQLite and PostgreSQL.

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
    Prune {
        t: usize,
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=TARGETS, prop::option::of(0..TARGETS)).prop_map(|(n, only)| Op::Backup { n, only }),
        2 => (0..TARGETS, 0..4usize).prop_map(|(t, k)| Op::ForgetOn { t, k }),
        1 => (0..TARGETS).prop_map(|t| Op::Prune { t }),
        1 => (0..4usize).prop_map(|k| Op::BackupsForget { k }),
        1 => (0..TARGETS, 0..4usize).prop_map(|(t, k)| Op::DeleteBehind { t, k }),
        1 => (0..4usize).prop_map(|k| Op::Heal { k }),
        1 => Just(Op::Rebuild),
        1 => Just(Op::VerifyFix),
    ]
}

struct World {
    f: Fresh,
    targets: Vec<PathBuf>,
    src: PathBuf,
    /// backup number → (snapshot, targets holding it).
    oracle: BTreeMap<i64, (String, BTreeSet<usize>)>,
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
            .env("XDG_CONFIG_HOME", self.f._dir.path().join("no-config"));
        c
    }
}

impl World {
    fn new(db: Db) -> World {
        let f = fresh(db);
        let base = f._dir.path().to_path_buf();
        let w = World {
            targets: (0..TARGETS).map(|i| base.join(format!("t{i}"))).collect(),
            src: base.join("src"),
            f,
            oracle: BTreeMap::new(),
            runs: 0,
        };
        let t0 = w.targets[0].to_str().unwrap().to_string();
        let t1 = w.targets[1].to_str().unwrap().to_string();
        w.ok(&["-r", &t0, "--mirror", &t1, "init", "--kdf-memory-kib", "64"]);
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

    /// The k-th backup the oracle still has (any holder), if there is one.
    fn live(&self, k: usize) -> Option<(i64, String)> {
        let live: Vec<_> = self
            .oracle
            .iter()
            .filter(|(_, (_, h))| !h.is_empty())
            .collect();
        if live.is_empty() {
            return None;
        }
        let (b, (s, _)) = live[k % live.len()];
        Some((*b, s.clone()))
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
                    .map(|c| c["target"].as_str().unwrap()[1..].parse().unwrap())
                    .collect();
                self.oracle.insert(
                    v["backup"].as_i64().unwrap(),
                    (v["snapshot_id"].as_str().unwrap().to_string(), held),
                );
            }
            Op::ForgetOn { t, k } => {
                let Some((b, snap)) = self.live(*k) else {
                    return;
                };
                if !self.oracle[&b].1.contains(t) {
                    return;
                }
                let loc = self.targets[*t].to_str().unwrap().to_string();
                self.ok(&["-r", &loc, "forget", &snap, "--prune"]);
                self.oracle.get_mut(&b).unwrap().1.remove(t);
            }
            Op::Prune { t } => {
                let loc = self.targets[*t].to_str().unwrap().to_string();
                self.ok(&["-r", &loc, "prune"]);
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
                if !self.oracle[&b].1.contains(t) {
                    return;
                }
                std::fs::remove_file(self.targets[*t].join("snapshots").join(&snap)).unwrap();
                self.oracle.get_mut(&b).unwrap().1.remove(t);
                let o = self.run(&["catalog", "verify"]);
                assert_eq!(o.status.code(), Some(4), "the deletion is found");
                self.ok(&["catalog", "verify", "--fix"]);
            }
            Op::Heal { k } => {
                if let Some((b, _)) = self.live(*k) {
                    self.ok(&["heal", &b.to_string()]);
                }
            }
            Op::Rebuild => {
                self.ok(&["catalog", "rebuild", "--from", "t0", "--from", "t1"]);
            }
            Op::VerifyFix => {
                self.ok(&["catalog", "verify", "--fix"]);
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
        for (b, (snap, held)) in &self.oracle {
            let row = by_id.get(b);
            if held.is_empty() {
                assert!(
                    row.is_none_or(|r| r["state"] == "forgotten"),
                    "step {step}: backup {b} has no copy but is {row:?}"
                );
                continue;
            }
            let row = row.unwrap_or_else(|| panic!("step {step}: backup {b} is gone"));
            assert_eq!(row["state"], "complete", "step {step}: {row}");
            let mut got: Vec<usize> = row["extents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["target"].as_str().unwrap()[1..].parse().unwrap())
                .collect();
            got.sort();
            assert_eq!(
                got,
                held.iter().copied().collect::<Vec<_>>(),
                "step {step}: backup {b} ({})",
                &snap[..8]
            );
        }
        // Rows the oracle does not know are only forgotten ones.
        for (b, r) in &by_id {
            if !self.oracle.contains_key(b) {
                assert_ne!(r["state"], "complete", "step {step}: unknown backup {r}");
            }
        }
        // The files on disk are the oracle's.
        for (t, dir) in self.targets.iter().enumerate() {
            let on_disk: BTreeSet<String> = std::fs::read_dir(dir.join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let want: BTreeSet<String> = self
                .oracle
                .values()
                .filter(|(_, h)| h.contains(&t))
                .map(|(s, _)| s.clone())
                .collect();
            assert_eq!(on_disk, want, "step {step}: snapshots on t{t}");
        }
        // The newest complete backup restores.
        if let Some((b, _)) = self.oracle.iter().rev().find(|(_, (_, h))| !h.is_empty()) {
            let dest = self.f._dir.path().join(format!("r{step}-{b}"));
            self.ok(&[
                "restore",
                "--backup",
                &b.to_string(),
                "--target",
                dest.to_str().unwrap(),
            ]);
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
        .run(&prop::collection::vec(op(), 2..=7), |ops| {
            let mut w = World::new(db);
            for (i, op) in ops.iter().enumerate() {
                w.apply(op);
                w.check(i);
            }
            Ok(())
        })
        .unwrap();
}

on_both_dbs!(the_catalog_equals_the_targets_after_any_sequence);
