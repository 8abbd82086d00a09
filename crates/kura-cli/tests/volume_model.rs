//! A model-based test of volume backups: random sequences of host writes over NBD (`qemu-io`
//! against `kura volume serve`), backups to one of two repositories (a local directory and
//! an S3 prefix on the SeaweedFS that `scripts/test.sh` starts) — through the server with a
//! copy-before-write session when one runs, offline when none does —, forget + prune of
//! random snapshots, server stop / `kill -9` / restart, and writes to the raw file while no
//! server runs, against an oracle that knows the volume's bytes at every freeze and, per
//! repository, which granules changed since that repository's last backup.
//!
//! Asserted after every step: every backup restores equal to the volume at its freeze (and
//! every snapshot still listed restores so at the end of each case); a backup whose chain the
//! oracle can vouch for (last backup to the same repository still there, no kill, no write
//! behind the engine's back since) is incremental and reads no more than the granules that
//! chain saw change; any other is a full read that says why.
//!
//! Bounded by default (`KURA_VOLUME_MODEL_CASES`, default 60 cases of up to 10 steps);
//! `scripts/soak.sh` runs thousands.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

mod common;

use common::Kura;
use common::vols::{Server, Vols, qemu_write};

const MIB: u64 = 1 << 20;
const GRANULE: u64 = 4 * MIB;
const SIZE: u64 = 32 * MIB;
const REPOS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    /// A host write of `len` bytes of `pattern` at `offset` (a server is started if none runs).
    Write {
        offset: u64,
        len: u64,
        pattern: u8,
    },
    /// The same, straight into the raw file with no server running (one is stopped first).
    RawWrite {
        offset: u64,
        len: u64,
        pattern: u8,
    },
    Backup {
        repo: usize,
    },
    /// `forget --prune` of the k-th snapshot of the volume in `repo`.
    Forget {
        repo: usize,
        k: usize,
    },
    Stop,
    Kill,
    /// A background backup to `repo`, and the server stopped (SIGINT) as soon as it is
    /// accepted: the job is cancelled, given up on, or done by then.
    StopDuringBackup {
        repo: usize,
    },
    /// Restore the k-th snapshot still held and compare.
    Restore {
        k: usize,
    },
    /// `kura volume restore` of the k-th snapshot still held into the volume (through the
    /// server when one runs).
    VolumeRestore {
        k: usize,
    },
    // The mirror pair `pa`/`pb`, split by areas at different times (see `PairModel`).
    /// A host write to `pa`.
    PairWrite {
        offset: u64,
        len: u64,
        pattern: u8,
    },
    /// `pair split pa --area` of area `slot` (refused when already split).
    SplitArea {
        slot: usize,
    },
    /// `volume backup pa --area` of area `slot` to `repo` (refused unless split); a `slot`
    /// past the areas picks one of those split, if any.
    BackupArea {
        slot: usize,
        repo: usize,
    },
    /// `pair resync pa --area` of area `slot` (refused unless split); `None`: all.
    ResyncArea {
        slot: Option<usize>,
    },
}

fn write_args() -> impl Strategy<Value = (u64, u64, u8)> {
    (0..SIZE / 4096, 1..=512u64, 1..=255u8).prop_map(|(block, blocks, pattern)| {
        let offset = block * 4096;
        let len = (blocks * 4096).min(SIZE - offset);
        (offset, len, pattern)
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => write_args().prop_map(|(offset, len, pattern)| Op::Write { offset, len, pattern }),
        1 => write_args().prop_map(|(offset, len, pattern)| Op::RawWrite { offset, len, pattern }),
        4 => (0..REPOS).prop_map(|repo| Op::Backup { repo }),
        1 => (0..REPOS, 0..4usize).prop_map(|(repo, k)| Op::Forget { repo, k }),
        1 => Just(Op::Stop),
        1 => Just(Op::Kill),
        1 => (0..REPOS).prop_map(|repo| Op::StopDuringBackup { repo }),
        1 => (0..8usize).prop_map(|k| Op::Restore { k }),
        1 => (0..8usize).prop_map(|k| Op::VolumeRestore { k }),
        2 => write_args().prop_map(|(offset, len, pattern)| Op::PairWrite { offset, len, pattern }),
        2 => (0..AREAS.len()).prop_map(|slot| Op::SplitArea { slot }),
        3 => (0..2 * AREAS.len(), 0..REPOS).prop_map(|(slot, repo)| Op::BackupArea { slot, repo }),
        1 => prop::option::of(0..AREAS.len()).prop_map(|slot| Op::ResyncArea { slot }),
    ]
}

/// What the oracle knows of one repository's chain.
#[derive(Debug, Default)]
struct Chain {
    /// The snapshot the next incremental must be relative to (the last backup to this
    /// repository), if it is still there.
    parent: Option<String>,
    /// Whether every change since `parent` is known to the engine.
    trusted: bool,
    /// Granules changed since `parent`.
    dirty: BTreeSet<u64>,
    /// A backup was cut short by a stop at an unknown point: the engine may have made it
    /// the chain's base, or put its bits back, or (a new chain) not trust it yet. Either
    /// way `dirty` still bounds what the next incremental may need to read, and every
    /// snapshot must restore equal to its freeze.
    unknown: bool,
}

struct Snap {
    id: String,
    repo: usize,
    image: Vec<u8>,
}

struct World {
    v: Vols,
    repos: [String; REPOS],
    server: Option<Server>,
    image: Vec<u8>,
    chains: [Chain; REPOS],
    snaps: Vec<Snap>,
    backups: usize,
    incrementals: usize,
    pair: PairModel,
}

impl World {
    fn new() -> World {
        let v = Vols::new();
        v.ok(&["volume", "create", "vol", "--size", "32M"]);
        v.ok(&["volume", "create", "pool0", "--size", "32M", "--work"]);
        let pair = PairModel::new(&v);
        let local = v.repo();
        let s3 = common::s3_location();
        let o = v
            .cmd()
            .env("KURA_PASSWORD", "pw")
            .args(["-r", &s3, "init", "--kdf-memory-kib", "64"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        World {
            v,
            repos: [local, s3],
            server: None,
            image: vec![0; SIZE as usize],
            chains: Default::default(),
            snaps: Vec::new(),
            backups: 0,
            incrementals: 0,
            pair,
        }
    }

    fn in_repo(&self, repo: usize, args: &[&str]) -> std::process::Output {
        let mut a = vec!["-r", self.repos[repo].as_str()];
        a.extend_from_slice(args);
        self.v
            .cmd()
            .env("KURA_PASSWORD", "pw")
            .args(&a)
            .output()
            .unwrap()
    }

    fn mark(&mut self, offset: u64, len: u64, pattern: u8) {
        self.image[offset as usize..(offset + len) as usize].fill(pattern);
        for c in &mut self.chains {
            c.dirty
                .extend(offset / GRANULE..(offset + len).div_ceil(GRANULE));
        }
    }

    fn untrust_all(&mut self) {
        for c in &mut self.chains {
            c.trusted = false;
            c.unknown = false;
        }
    }

    fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            self.v.stop(s);
        }
    }

    fn apply(&mut self, op: &Op, step: usize) {
        match *op {
            Op::Write {
                offset,
                len,
                pattern,
            } => {
                if self.server.is_none() {
                    self.server = Some(self.v.serve());
                }
                let url = self.server.as_ref().unwrap().url("vol");
                qemu_write(&url, &[&format!("write -P {pattern} {offset} {len}")]);
                self.mark(offset, len, pattern);
            }
            Op::RawWrite {
                offset,
                len,
                pattern,
            } => {
                self.stop();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.v.data().join("vol.raw"))
                    .unwrap();
                f.write_all_at(&vec![pattern; len as usize], offset)
                    .unwrap();
                self.mark(offset, len, pattern);
                // Behind the engine's back: no chain can know what changed.
                self.untrust_all();
            }
            Op::Backup { repo } => self.backup(repo, step),
            Op::Forget { repo, k } => {
                let mine: Vec<usize> = (0..self.snaps.len())
                    .filter(|&i| self.snaps[i].repo == repo)
                    .collect();
                if mine.is_empty() {
                    return;
                }
                let i = mine[k % mine.len()];
                let id = self.snaps[i].id.clone();
                let o = self.in_repo(repo, &["forget", &id, "--prune", "--keep-condemned", "0"]);
                assert!(
                    o.status.success(),
                    "step {step}: forget: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                self.snaps.remove(i);
                let c = &mut self.chains[repo];
                if c.parent.as_deref() == Some(id.as_str()) {
                    // The chain's parent is gone: the next backup there reads everything.
                    c.parent = None;
                    c.trusted = false;
                }
            }
            Op::Stop => self.stop(),
            Op::StopDuringBackup { repo } => self.stop_during_backup(repo, step),
            Op::Kill => {
                if let Some(mut s) = self.server.take() {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
                    let _ = s.child.wait();
                    self.untrust_all();
                    self.pair.killed();
                }
            }
            Op::Restore { k } => {
                if self.snaps.is_empty() {
                    return;
                }
                let s = &self.snaps[k % self.snaps.len()];
                self.restores(s, step);
            }
            Op::PairWrite { .. }
            | Op::SplitArea { .. }
            | Op::BackupArea { .. }
            | Op::ResyncArea { .. } => self.pair_op(op, step),
            Op::VolumeRestore { k } => self.volume_restore(k, step),
        }
    }

    /// The volume becomes the snapshot's image; the chain of its repository is relative to
    /// it with nothing dirty, the other chain is untrusted.
    fn volume_restore(&mut self, k: usize, step: usize) {
        let Some(s) = self.snaps.get(k % self.snaps.len().max(1)) else {
            return;
        };
        let (id, repo, image) = (s.id.clone(), s.repo, s.image.clone());
        let o = self.in_repo(repo, &["--json", "volume", "restore", &id, "vol"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "step {step}: volume restore: {err}");
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["restore"]["served"], self.server.is_some(), "step {step}");
        self.image = image;
        assert!(
            self.v.raw("vol") == self.image,
            "step {step}: volume restore differs"
        );
        for (i, c) in self.chains.iter_mut().enumerate() {
            c.trusted = i == repo;
            c.unknown = false;
            if i == repo {
                c.parent = Some(id.clone());
                c.dirty.clear();
            }
        }
    }

    fn restores(&self, s: &Snap, step: usize) {
        let out = self.v.dir.path().join("restored.img");
        let _ = std::fs::remove_file(&out);
        let o = self.in_repo(
            s.repo,
            &["restore", &s.id, "--target", out.to_str().unwrap()],
        );
        assert!(
            o.status.success(),
            "step {step}: restore {}: {}",
            &s.id[..8],
            String::from_utf8_lossy(&o.stderr)
        );
        let got = std::fs::read(&out).unwrap();
        if got != s.image {
            let bad: Vec<u64> = (0..SIZE / GRANULE)
                .filter(|g| {
                    let r = (g * GRANULE) as usize..((g + 1) * GRANULE) as usize;
                    got[r.clone()] != s.image[r]
                })
                .collect();
            panic!(
                "step {step}: snapshot {} (repository {}) differs from the volume at its \
                 freeze in granules {bad:?}",
                &s.id[..8],
                s.repo
            );
        }
    }

    fn backup(&mut self, repo: usize, step: usize) {
        let (snapshot, incremental, read, why) = if self.server.is_some() {
            let o = self.in_repo(
                repo,
                &["--json", "volume", "backup", "vol", "--freeze", "session"],
            );
            assert!(
                o.status.success(),
                "step {step}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let a: Value = serde_json::from_slice(&o.stdout).unwrap();
            let id = a["job"]["id"].as_u64().unwrap();
            let done = wait_job(&self.v, id);
            assert_eq!(done["state"], "succeeded", "step {step}: {done}");
            let snapshot = done["snapshot"].as_str().unwrap().to_string();
            // What was read is in the snapshot's summary.
            let o = self.in_repo(repo, &["--json", "snapshots"]);
            let all: Value = serde_json::from_slice(&o.stdout).unwrap();
            let read = all
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["id"] == snapshot.as_str())
                .unwrap_or_else(|| panic!("step {step}: {snapshot} not listed: {all}"))["summary"]
                ["bytes_read"]
                .as_u64()
                .unwrap();
            (
                snapshot,
                done["incremental"].as_bool().unwrap(),
                read,
                done["full_reason"].as_str().unwrap_or("").to_string(),
            )
        } else {
            let o = self.in_repo(repo, &["--json", "volume", "backup", "vol"]);
            assert!(
                o.status.success(),
                "step {step}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let b: Value = serde_json::from_slice(&o.stdout).unwrap();
            (
                b["snapshot_id"].as_str().unwrap().to_string(),
                b["incremental"].as_bool().unwrap(),
                b["summary"]["bytes_read"].as_u64().unwrap(),
                b["full_reason"].as_str().unwrap_or("").to_string(),
            )
        };
        self.backups += 1;
        let c = &self.chains[repo];
        if c.unknown {
            let bound = c.dirty.len() as u64 * GRANULE;
            assert!(
                !incremental || read <= bound,
                "step {step}: read {read} bytes after a cut-short backup, the chain saw {} \
                 granule(s) change",
                c.dirty.len()
            );
            assert!(
                incremental || !why.is_empty(),
                "step {step}: a full read says why"
            );
        } else if c.trusted && c.parent.is_some() {
            assert!(
                incremental,
                "step {step}: repository {repo}'s chain is intact but the backup read \
                 everything ({why})"
            );
            let bound = c.dirty.len() as u64 * GRANULE;
            assert!(
                read <= bound,
                "step {step}: read {read} bytes, the chain saw {} granule(s) change",
                c.dirty.len()
            );
            self.incrementals += 1;
        } else {
            assert!(
                !incremental,
                "step {step}: repository {repo}'s chain cannot be vouched for (parent {:?}, \
                 trusted {}), yet the backup was incremental",
                c.parent.as_deref().map(|p| &p[..8]),
                c.trusted
            );
            assert!(!why.is_empty(), "step {step}: a full read says why");
        }
        let s = Snap {
            id: snapshot.clone(),
            repo,
            image: self.image.clone(),
        };
        self.restores(&s, step);
        self.snaps.push(s);
        self.chains[repo] = Chain {
            parent: Some(snapshot),
            trusted: true,
            dirty: BTreeSet::new(),
            unknown: false,
        };
    }

    /// Start a background backup and stop the server at once (see [`Op::StopDuringBackup`]).
    fn stop_during_backup(&mut self, repo: usize, step: usize) {
        let Some(s) = self.server.take() else {
            return;
        };
        let o = self.in_repo(
            repo,
            &["--json", "volume", "backup", "vol", "--freeze", "session"],
        );
        assert!(
            o.status.success(),
            "step {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.v.stop(s);
        // A snapshot the job committed before the stop holds the image at the freeze.
        let o = self.in_repo(repo, &["--json", "snapshots"]);
        let all: Value = serde_json::from_slice(&o.stdout).unwrap();
        let of_vol = all.as_array().unwrap().iter().filter(|x| {
            x["paths"][0]
                .as_str()
                .is_some_and(|p| p.ends_with("/vol.raw"))
        });
        for id in of_vol.filter_map(|x| x["id"].as_str()) {
            if self.snaps.iter().any(|s| s.id == id) {
                continue;
            }
            let s = Snap {
                id: id.to_string(),
                repo,
                image: self.image.clone(),
            };
            self.restores(&s, step);
            self.snaps.push(s);
            self.chains[repo].parent = Some(id.to_string());
        }
        self.chains[repo].unknown = true;
    }
}

/// Poll the server until job `id` ends.
fn wait_job(v: &Vols, id: u64) -> Value {
    let t = std::time::Instant::now();
    loop {
        let j = v.json(&["volume", "jobs", &id.to_string()])[0].clone();
        if j["state"] != "running" {
            return j;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "job {id} hangs: {j}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn every_volume_backup_restores_the_freeze_and_incrementals_read_only_their_chain() {
    let cases = std::env::var("KURA_VOLUME_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    });
    let totals = std::sync::Mutex::new((0usize, 0usize));
    runner
        .run(&prop::collection::vec(op(), 3..=10), |ops| {
            let mut w = World::new();
            for (i, op) in ops.iter().enumerate() {
                w.apply(op, i);
            }
            w.stop();
            for s in &w.snaps {
                w.restores(s, ops.len());
            }
            w.pair_restores(ops.len(), false);
            let mut t = totals.lock().unwrap();
            t.0 += w.backups;
            t.1 += w.incrementals;
            Ok(())
        })
        .unwrap();
    let (backups, incrementals) = *totals.lock().unwrap();
    eprintln!("{cases} case(s): {backups} backup(s), {incrementals} of them incremental");
    let a = AREA_BACKUPS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{a} split-area backup(s) restored to their areas at their splits");
    assert!(
        incrementals > 0 || cases < 10,
        "no incremental backup was ever checked"
    );
}

// ---- The mirror pair `pa`/`pb`, split by areas at different times ----

/// Areas of `pa` (offset, length): on 4 MiB granules, with duplex parts between them.
const AREAS: [(u64, u64); 3] = [(0, 8 * MIB), (12 * MIB, 4 * MIB), (20 * MIB, 12 * MIB)];

static AREA_BACKUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What the oracle knows of the pair: the primary's bytes, and each split area's bytes at
/// its split (what the secondary must hold there, and what its backups restore to).
struct PairModel {
    image: Vec<u8>,
    /// Per slot: the area's bytes at its split, while it is split.
    frozen: [Option<Vec<u8>>; AREAS.len()],
    /// Area backups: (snapshot, repository, the bytes it must restore to).
    snaps: Vec<(String, usize, Vec<u8>)>,
    /// Killed while duplex: wholly split, everything to copy, until a full resync.
    whole: bool,
}

fn area_arg(slot: usize) -> String {
    format!("{}:{}", AREAS[slot].0, AREAS[slot].1)
}

fn area_of(b: &[u8], slot: usize) -> &[u8] {
    let (o, l) = AREAS[slot];
    &b[o as usize..(o + l) as usize]
}

impl PairModel {
    fn new(v: &Vols) -> PairModel {
        v.ok(&["volume", "create", "pa", "--size", "32M"]);
        v.ok(&["volume", "create", "pb", "--size", "32M"]);
        v.ok(&["pair", "create", "pa", "pb"]);
        PairModel {
            image: vec![0; SIZE as usize],
            frozen: Default::default(),
            snaps: Vec::new(),
            whole: false,
        }
    }

    /// The server was killed: a duplex pair comes back wholly split (a write may have
    /// reached one side only); split areas keep their bytes.
    fn killed(&mut self) {
        if self.frozen.iter().all(Option::is_none) {
            self.whole = true;
        }
    }
}

impl World {
    fn pair_op(&mut self, op: &Op, step: usize) {
        match *op {
            Op::PairWrite {
                offset,
                len,
                pattern,
            } => {
                if self.server.is_none() {
                    self.server = Some(self.v.serve());
                }
                let url = self.server.as_ref().unwrap().url("pa");
                qemu_write(&url, &[&format!("write -P {pattern} {offset} {len}")]);
                self.pair.image[offset as usize..(offset + len) as usize].fill(pattern);
            }
            Op::SplitArea { slot } => {
                let o = self
                    .v
                    .run(&["pair", "split", "pa", "--area", &area_arg(slot)]);
                let split = self.pair.frozen[slot].is_some() || self.pair.whole;
                assert_eq!(
                    o.status.code(),
                    Some(if split { 2 } else { 0 }),
                    "step {step}: split {slot}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                if !split {
                    self.pair.frozen[slot] = Some(area_of(&self.pair.image, slot).to_vec());
                }
            }
            Op::BackupArea { slot, repo } => self.backup_area(slot, repo, step),
            Op::ResyncArea { slot } => {
                let mut args = vec!["pair".to_string(), "resync".into(), "pa".into()];
                if let Some(s) = slot {
                    args.extend(["--area".to_string(), area_arg(s)]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let o = self.v.run(&args);
                let ok = slot.is_none_or(|s| self.pair.frozen[s].is_some());
                assert_eq!(
                    o.status.code(),
                    Some(if ok { 0 } else { 2 }),
                    "step {step}: resync {slot:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                let pb = self.v.raw("pb");
                match slot {
                    None => {
                        self.pair.frozen = Default::default();
                        self.pair.whole = false;
                        assert!(
                            pb == self.pair.image,
                            "step {step}: a full resync left pb different"
                        );
                    }
                    Some(s) if ok => {
                        self.pair.frozen[s] = None;
                        assert!(
                            area_of(&pb, s) == area_of(&self.pair.image, s),
                            "step {step}: area {s} not resynced"
                        );
                        if self.pair.frozen.iter().all(Option::is_none) {
                            assert!(
                                pb == self.pair.image,
                                "step {step}: the last area's resync left pb different"
                            );
                        }
                    }
                    Some(_) => {}
                }
            }
            _ => unreachable!("not a pair op"),
        }
        // Every split area of the secondary holds its bytes at its split.
        let pb = self.v.raw("pb");
        for (s, f) in self.pair.frozen.iter().enumerate() {
            if let Some(f) = f {
                assert!(
                    area_of(&pb, s) == f.as_slice(),
                    "step {step}: split area {s} of pb changed"
                );
            }
        }
    }

    fn backup_area(&mut self, slot: usize, repo: usize, step: usize) {
        let split: Vec<usize> = (0..AREAS.len())
            .filter(|&s| self.pair.frozen[s].is_some())
            .collect();
        let slot = match slot.checked_sub(AREAS.len()) {
            Some(k) if !split.is_empty() => split[k % split.len()],
            _ => slot % AREAS.len(),
        };
        let area = area_arg(slot);
        let o = self.in_repo(repo, &["--json", "volume", "backup", "pa", "--area", &area]);
        let Some(frozen) = self.pair.frozen[slot].clone() else {
            assert_eq!(
                o.status.code(),
                Some(2),
                "step {step}: backup of unsplit area {slot}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        };
        assert!(
            o.status.success(),
            "step {step}: area backup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let b: Value = serde_json::from_slice(&o.stdout).unwrap();
        let id = match b["message_type"].as_str() {
            Some("accepted") => {
                let done = wait_job(&self.v, b["job"]["id"].as_u64().unwrap());
                assert_eq!(done["state"], "succeeded", "step {step}: {done}");
                done["snapshot"].as_str().unwrap().to_string()
            }
            _ => b["snapshot_id"].as_str().unwrap().to_string(),
        };
        self.pair.snaps.push((id, repo, frozen));
        self.pair_restores(step, true);
        AREA_BACKUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every area backup (or the newest) restores to its area's bytes at its split.
    fn pair_restores(&self, step: usize, newest: bool) {
        let out = self.v.dir.path().join("restored-area.img");
        let skip = if newest {
            self.pair.snaps.len().saturating_sub(1)
        } else {
            0
        };
        for (id, repo, want) in &self.pair.snaps[skip..] {
            let _ = std::fs::remove_file(&out);
            let o = self.in_repo(*repo, &["restore", id, "--target", out.to_str().unwrap()]);
            assert!(
                o.status.success(),
                "step {step}: restore {id}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                std::fs::read(&out).unwrap() == *want,
                "step {step}: area backup {} differs from its area at its split",
                &id[..8]
            );
        }
    }
}
