//! Backup jobs run over the catalog (`kura job run`, `kura backup --redundancy`): mirror mode
//! onto n secured targets of one repository group, with hooks, a broken target (a directory
//! replaced by a file: every operation fails with ENOTDIR), and a quorum that cannot be met.
//! Run on the embedded SQLite catalog and on PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use catalog_common::{Db, Fresh, fresh};
use common::{Kura, assert_same_tree, pseudo_random, write};

struct Setup {
    f: Fresh,
    /// The catalog in use (starts as `f`'s; a test may switch to an empty one).
    url: String,
    targets: Vec<PathBuf>,
    src: PathBuf,
}

impl Setup {
    /// `n` local targets forming one repository group, registered in the catalog (on
    /// PostgreSQL with an explicit worker, path and routes).
    fn new(db: Db, n: usize) -> Setup {
        let f = fresh(db);
        let base = f._dir.path().to_path_buf();
        let targets: Vec<PathBuf> = (0..n).map(|i| base.join(format!("t{i}"))).collect();
        let s = Setup {
            src: base.join("src"),
            targets,
            url: f.url.clone(),
            f,
        };
        let mut init = vec!["-r".to_string(), s.targets[0].display().to_string()];
        for t in &s.targets[1..] {
            init.push("--mirror".into());
            init.push(t.display().to_string());
        }
        init.extend(["init", "--kdf-memory-kib", "64"].map(String::from));
        s.ok(&init.iter().map(String::as_str).collect::<Vec<_>>());
        if matches!(db, Db::Postgres) {
            s.ok(&["resource", "add", "worker", "w", "--slots", "8"]);
            s.ok(&["resource", "add", "path", "p", "--slots", "8"]);
        }
        for i in 0..n {
            s.register(db, i);
        }
        for i in 0..5u64 {
            write(
                &s.src.join(format!("d/f{i}")),
                &pseudo_random(3 << 20, i + 11),
            );
        }
        write(&s.src.join("note"), b"mirrored");
        s
    }

    /// Add target `i` to the catalog in use (routed on PostgreSQL).
    fn register(&self, db: Db, i: usize) {
        let name = format!("t{i}");
        let t = self.targets[i].to_str().unwrap();
        self.ok(&["resource", "add", "target", &name, t]);
        if matches!(db, Db::Postgres) {
            self.ok(&["resource", "route", "w", "p", &name]);
        }
    }

    /// Restore `snapshot` from one target alone and compare with the source.
    fn restores_from(&self, target: &Path, snapshot: &str) {
        let dest = self.f._dir.path().join(format!(
            "restore-{}-{snapshot}",
            target.file_name().unwrap().to_string_lossy()
        ));
        self.ok(&[
            "-r",
            target.to_str().unwrap(),
            "restore",
            snapshot,
            "--target",
            dest.to_str().unwrap(),
        ]);
        assert_same_tree(&self.src, &dest.join(self.src.strip_prefix("/").unwrap()));
        self.ok(&["-r", target.to_str().unwrap(), "check", "--read-data"]);
    }

    fn nothing_held(&self) {
        let rs = self.json(&["resource", "list"]);
        for r in rs.as_array().unwrap() {
            assert_eq!(r["allocations"], Value::Array(vec![]), "{r}");
        }
    }
}

/// A real fault: the target's directory is swapped for a plain file.
fn break_dir(p: &Path) {
    std::fs::rename(p, p.with_extension("gone")).unwrap();
    std::fs::write(p, b"not a directory").unwrap();
}

fn a_job_mirrors_onto_n_targets_and_records_each_copy(db: Db) {
    let s = Setup::new(db, 3);
    let log = s.f._dir.path().join("hooks.log");
    let hook = |phase: &str| {
        format!(
            "echo {phase} $KURA_PHASE $KURA_PROCESS $KURA_RESULT >> {}",
            log.display()
        )
    };
    s.ok(&[
        "job",
        "add",
        "nightly",
        "--object",
        s.src.to_str().unwrap(),
        "--redundancy",
        "2",
        "--pre",
        &hook("A"),
        "--post",
        &hook("B"),
    ]);
    let v = s.json(&["job", "run", "nightly"]);
    let process = v["process"].as_i64().unwrap();
    let copies = v["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|c| c["complete"] == true), "{v}");
    let snap = v["snapshot_id"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("A pre {process}\nB post {process} succeeded\n")
    );
    // The catalog: one complete backup, one copy per target, positioned at the snapshot.
    let b = s.json(&["backups"]);
    assert_eq!(b.as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b[0]["state"], "complete");
    assert_eq!(b[0]["object"], s.src.to_str().unwrap());
    let ext = b[0]["extents"].as_array().unwrap();
    assert_eq!(ext.len(), 2);
    for e in ext {
        assert_eq!(e["position"], snap);
        assert!(e["size"].as_i64().unwrap() > 15 << 20, "{e}");
        let t: usize = e["target"].as_str().unwrap()[1..].parse().unwrap();
        s.restores_from(&s.targets[t], &snap[..8]);
    }
    let run = &s.json(&["job", "show", "nightly"])["runs"][0];
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["process"], process);
    s.nothing_held();
    // Restore by catalog number. Every pack of the copy read first is damaged (a flipped
    // byte): each blob is read again, intact, from the other copy.
    let first = ext[0]["target"].as_str().unwrap().to_string();
    let t: usize = first[1..].parse().unwrap();
    let mut flipped = 0;
    for fan in std::fs::read_dir(s.targets[t].join("data")).unwrap() {
        for pack in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let p = pack.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x40;
            std::fs::write(&p, bytes).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 0);
    let dest = s.f._dir.path().join("from-damaged");
    let o = s.run(&[
        "restore",
        "--backup",
        "1",
        "--target",
        dest.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_same_tree(&s.src, &dest.join(s.src.strip_prefix("/").unwrap()));
    // Serving damaged data counts against the target, as a failed read does.
    assert!(
        err.contains(&format!("target {first} failed during the restore"))
            && err.contains("fails verification"),
        "{err}"
    );
    assert_eq!(s.json(&["resource", "show", &first])["errors"], 1);
    // A broken target is skipped (and counted against it); the other one restores.
    break_dir(&s.targets[t]);
    let dest = s.f._dir.path().join("by-backup");
    let o = s.run(&[
        "restore",
        "--backup",
        "1",
        "--target",
        dest.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("target {first} failed during the restore")),
        "{err}"
    );
    assert_same_tree(&s.src, &dest.join(s.src.strip_prefix("/").unwrap()));
    assert_eq!(s.json(&["resource", "show", &first])["errors"], 2);
    let o = s.run(&[
        "restore",
        "--backup",
        "7",
        "--target",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(13),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn a_broken_target_is_passed_over_before_securing_and_counts_against_its_health(db: Db) {
    let s = Setup::new(db, 3);
    break_dir(&s.targets[2]);
    let src = s.src.to_str().unwrap().to_string();
    let marker = s.f._dir.path().join("pre-ran");
    let pre = format!("touch {}", marker.display());
    // The check before securing finds t2 unreadable: with three targets needed the run fails
    // at once (exit 15, before the pre hook), and each check counts one error against t2;
    // the third makes it not usable.
    for round in 1..=4 {
        let o = s.run(&[
            "--json",
            "backup",
            &src,
            "--redundancy",
            "3",
            "--quorum",
            "2",
            "--pre",
            &pre,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(15), "{err}");
        if round == 4 {
            assert!(err.contains("t2 not usable since"), "{err}");
        } else {
            assert!(
                err.contains("t2: unreachable") && err.contains("Not a directory"),
                "{err}"
            );
        }
        assert!(
            !marker.exists(),
            "the pre hook ran for a run that could not start"
        );
        s.nothing_held();
    }
    let t2 = s.json(&["resource", "show", "t2"]);
    assert_eq!(t2["state"], "not usable", "{t2}");
    assert!(s.json(&["backups"]).as_array().unwrap().is_empty());
    // Two usable targets remain: a two-way mirror still runs.
    let o = s.run(&["backup", &src, "--redundancy", "2"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    s.nothing_held();
}

fn a_failing_pre_hook_or_a_lost_quorum_records_nothing(db: Db) {
    let s = Setup::new(db, 2);
    let log = s.f._dir.path().join("post.log");
    let src = s.src.to_str().unwrap().to_string();
    let post = format!("echo $KURA_RESULT > {}", log.display());
    let o = s.run(&[
        "backup",
        &src,
        "--redundancy",
        "2",
        "--pre",
        "echo cannot quiesce >&2; exit 4",
        "--post",
        &post,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pre hook") && err.contains("cannot quiesce"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "failed\n");
    // One of two targets broken: the check before securing passes it over, the run cannot
    // have two and fails at once; the survivor gets no snapshot. (A quorum lost during a
    // run is mirror.rs's.)
    break_dir(&s.targets[1]);
    let o = s.run(&["backup", &src, "--redundancy", "2", "--quorum", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(15), "{err}");
    assert!(err.contains("t1: unreachable"), "{err}");
    let snaps = s.json(&["-r", s.targets[0].to_str().unwrap(), "snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");
    assert_eq!(s.json(&["backups"]).as_array().unwrap().len(), 0);
    let runs = s.json(&["job", "list"]);
    assert!(runs.as_array().unwrap().is_empty());
    s.nothing_held();
    // Input the engine refuses.
    let o = s.run(&["backup", &src, "--redundancy", "2", "--quorum", "3"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = s.run(&["backup", &src, "--redundancy", "5"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn the_catalog_is_rebuilt_from_the_targets(db: Db) {
    let mut s = Setup::new(db, 2);
    s.ok(&[
        "job",
        "add",
        "j",
        "--object",
        s.src.to_str().unwrap(),
        "--redundancy",
        "2",
    ]);
    s.ok(&["job", "run", "j"]);
    write(&s.src.join("note"), b"changed after the first backup");
    s.ok(&["job", "run", "j"]);
    let before = s.json(&["backups"]);
    // The catalog database is lost: start from an empty one that knows only t0.
    let empty = fresh(db);
    s.url = empty.url.clone();
    if matches!(db, Db::Postgres) {
        s.ok(&["resource", "add", "worker", "w", "--slots", "8"]);
        s.ok(&["resource", "add", "path", "p", "--slots", "8"]);
    }
    s.register(db, 0);
    assert!(s.json(&["backups"]).as_array().unwrap().is_empty());
    let o = s.run(&["--json", "catalog", "rebuild", "--from", "t0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["records"].as_u64(), v["imported"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(v["unknown_targets"], serde_json::json!(["t1"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("left out: t1"));
    // With t1 registered, a second rebuild adds its copies and nothing twice.
    s.register(db, 1);
    let v = s.json(&["catalog", "rebuild", "--from", "t1", "--from", "t0"]);
    assert_eq!(
        (v["imported"].as_u64(), v["already_known"].as_u64()),
        (Some(0), Some(4)),
        "{v}"
    );
    let after = s.json(&["backups"]);
    let shape = |b: &Value| {
        let mut v: Vec<(String, String, i64, String, String)> = b
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| {
                let (o, t) = (
                    b["object"].as_str().unwrap(),
                    b["data_time"].as_str().unwrap(),
                );
                b["extents"].as_array().unwrap().iter().map(move |e| {
                    (
                        o.to_string(),
                        t.to_string(),
                        e["size"].as_i64().unwrap(),
                        e["target"].as_str().unwrap().to_string(),
                        e["position"].as_str().unwrap().to_string(),
                    )
                })
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        shape(&after),
        shape(&before),
        "the rebuilt catalog holds what was lost"
    );
    // And it restores: the newest backup, from its copies.
    let newest = after[0]["backup"].as_i64().unwrap().to_string();
    let dest = s.f._dir.path().join("after-rebuild");
    s.ok(&[
        "restore",
        "--backup",
        &newest,
        "--target",
        dest.to_str().unwrap(),
    ]);
    assert_same_tree(&s.src, &dest.join(s.src.strip_prefix("/").unwrap()));
    drop(empty);
}

on_both_dbs!(
    a_job_mirrors_onto_n_targets_and_records_each_copy,
    a_broken_target_is_passed_over_before_securing_and_counts_against_its_health,
    a_failing_pre_hook_or_a_lost_quorum_records_nothing,
    the_catalog_is_rebuilt_from_the_targets,
);

impl Kura for Setup {
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.url)
            .env("KURA_PASSWORD", "test-password")
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_CONFIG")
            .env("XDG_CONFIG_HOME", self.f._dir.path().join("no-config"));
        c
    }
}
