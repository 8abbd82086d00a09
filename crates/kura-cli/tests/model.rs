//! Model-based test of the repository life cycle: random sequences of source edits, backups,
//! forgets (by id and by policy), prunes (no grace period and the default one), checks,
//! backups killed mid-way (SIGKILL) and backups running beside a prune, all through the real
//! binary, against an oracle that knows what every snapshot must contain.
//!
//! After every step: the snapshot listing is exactly the oracle's, every listed snapshot
//! restores byte-identical to the source as it was at its backup, and `check` is clean
//! (`--read-data` after the last step). `KURA_MODEL_CASES` (default 3) and
//! `KURA_MODEL_STEPS` (default 8) make longer runs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
enum Op {
    /// Write file `n` (of a small name pool) with `len` bytes from `seed`.
    Write {
        n: u8,
        len: usize,
        seed: u64,
    },
    Delete {
        n: u8,
    },
    Backup,
    /// Forget the `i`-th snapshot (modulo their count).
    ForgetId {
        i: usize,
    },
    /// Keep only the last `k` snapshots.
    ForgetLast {
        k: usize,
    },
    Prune {
        grace0: bool,
    },
    Check,
    /// A backup SIGKILLed once it has uploaded something (or at once).
    KilledBackup,
    /// A backup and a prune (no grace period) at the same time.
    BackupBesidePrune,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, prop_oneof![Just(0usize), 1usize..5000, 200_000usize..900_000], any::<u64>())
            .prop_map(|(n, len, seed)| Op::Write { n, len, seed }),
        1 => (0u8..6).prop_map(|n| Op::Delete { n }),
        3 => Just(Op::Backup),
        1 => any::<usize>().prop_map(|i| Op::ForgetId { i }),
        1 => (1usize..3).prop_map(|k| Op::ForgetLast { k }),
        2 => any::<bool>().prop_map(|grace0| Op::Prune { grace0 }),
        1 => Just(Op::Check),
        1 => Just(Op::KilledBackup),
        1 => Just(Op::BackupBesidePrune),
    ]
}

type Content = BTreeMap<String, Vec<u8>>;

fn read_tree(dir: &Path) -> Content {
    let mut out = Content::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let e = e.unwrap();
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

struct Model {
    repo: TestRepo,
    /// Snapshot id → the source's content at its backup.
    snaps: BTreeMap<String, Content>,
    /// Snapshot ids oldest first.
    order: Vec<String>,
    restores: usize,
}

impl Model {
    fn src(&self) -> std::path::PathBuf {
        self.repo.dir.path().join("src")
    }

    fn backup(&mut self) {
        let content = read_tree(&self.src());
        let id = self.repo.backup(&[self.src().to_str().unwrap()])["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string();
        self.snaps.insert(id.clone(), content);
        self.order.push(id);
    }

    fn spawn_backup(&self) -> std::process::Child {
        self.repo
            .cmd()
            .args(["--json", "backup"])
            .arg(self.src())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn forget(&mut self, ids: &[String]) {
        for id in ids {
            self.repo.ok(&["forget", &id[..12]]);
            self.snaps.remove(id);
            self.order.retain(|x| x != id);
        }
    }

    fn apply(&mut self, op: &Op) {
        let src = self.src();
        match op {
            Op::Write { n, len, seed } => {
                write(&src.join(format!("f{n}")), &pseudo_random(*len, *seed))
            }
            Op::Delete { n } => {
                let _ = fs::remove_file(src.join(format!("f{n}")));
            }
            Op::Backup => self.backup(),
            Op::ForgetId { i } => {
                if !self.order.is_empty() {
                    let id = self.order[i % self.order.len()].clone();
                    self.forget(&[id]);
                }
            }
            Op::ForgetLast { k } => {
                let drop: Vec<String> = self
                    .order
                    .iter()
                    .take(self.order.len().saturating_sub(*k))
                    .cloned()
                    .collect();
                self.repo.ok(&["forget", "--keep-last", &k.to_string()]);
                for id in drop {
                    self.snaps.remove(&id);
                    self.order.retain(|x| *x != id);
                }
            }
            Op::Prune { grace0 } => {
                if *grace0 {
                    self.repo.ok(&["prune", "--keep-condemned", "0"]);
                } else {
                    self.repo.ok(&["prune"]);
                }
            }
            Op::Check => {
                self.repo.ok(&["check"]);
            }
            Op::KilledBackup => {
                let mut child = self.spawn_backup();
                let packs = self.repo.count(kura_repo::backend::FileKind::Pack);
                step_until(&mut child, Duration::from_secs(30), || {
                    self.repo.count(kura_repo::backend::FileKind::Pack) > packs
                });
                child.kill().ok();
                child.wait().unwrap();
                // The kill may land after the snapshot was written (nothing new to upload,
                // or just before exit): then it is a real snapshot of the unchanged source.
                let content = read_tree(&src);
                for snap in self.repo.json(&["snapshots"]).as_array().unwrap() {
                    let id = snap["id"].as_str().unwrap().to_string();
                    if !self.snaps.contains_key(&id) {
                        self.snaps.insert(id.clone(), content.clone());
                        self.order.push(id);
                    }
                }
            }
            Op::BackupBesidePrune => {
                let content = read_tree(&src);
                let child = self.spawn_backup();
                let p = self.repo.run(&["prune", "--keep-condemned", "0"]);
                assert!(p.status.success(), "prune beside a backup: {}", stderr(&p));
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "backup beside a prune: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let id = v["snapshot_id"].as_str().unwrap().to_string();
                self.snaps.insert(id.clone(), content);
                self.order.push(id);
            }
        }
    }

    /// The repository agrees with the oracle.
    fn verify(&mut self, read_data: bool) {
        let listed: Vec<String> = self
            .repo
            .json(&["snapshots"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        let mut expected: Vec<String> = self.snaps.keys().cloned().collect();
        let mut got = listed.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "snapshot listing differs from the oracle");
        for (id, content) in &self.snaps {
            self.restores += 1;
            let t = self.repo.dir.path().join(format!("r{}", self.restores));
            self.repo
                .ok(&["restore", &id[..12], "--target", t.to_str().unwrap()]);
            let restored = read_tree(&t.join(self.src().strip_prefix("/").unwrap()));
            assert!(
                &restored == content,
                "snapshot {} does not restore what was backed up",
                &id[..8]
            );
            fs::remove_dir_all(&t).unwrap();
        }
        if read_data {
            self.repo.ok(&["check", "--read-data"]);
        } else {
            self.repo.ok(&["check"]);
        }
    }
}

fn knob(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_operation_sequences_keep_every_snapshot_restorable() {
    let cases = knob("KURA_MODEL_CASES", 3);
    let steps = knob("KURA_MODEL_STEPS", 8) as usize;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Each case runs real processes: shrinking would take long; the failing sequence is
        // printed whole instead.
        max_shrink_iters: 0,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..=steps), |ops| {
            let repo = TestRepo::new(&["--pack-size-mib", "1"]);
            fs::create_dir_all(repo.dir.path().join("src")).unwrap();
            let mut m = Model {
                repo,
                snaps: BTreeMap::new(),
                order: Vec::new(),
                restores: 0,
            };
            for (i, op) in ops.iter().enumerate() {
                m.apply(op);
                m.verify(i + 1 == ops.len());
            }
            Ok(())
        })
        .unwrap();
}
