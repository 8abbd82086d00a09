//! Tape end to end, with the virtual library: labelling, backups spanning three and more
//! tapes, restore (whole, and one file by positioning to its tape files), the catalog lost and
//! rebuilt from the tapes alone, mount waits that time out and that a load satisfies, tapes
//! refused (wrong label, unlabelled, another pool, another media set), a drive that fails
//! mid-job (a real fault: its tape on a full file system) and the fail-over to the other
//! drive, a mirror to two libraries, damaged and truncated tape files, and a changer that
//! hangs or fails.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{PASSWORD, TestRepo, assert_fails, pseudo_random, stderr, write};
use serde_json::Value;

const INCOMPLETE: i32 = 3;
const UNREACHABLE: i32 = 6;
const DEGRADED: i32 = 9;
const NO_MEDIUM: i32 = 19;
const MEDIUM_REFUSED: i32 = 20;

struct Rig {
    repo: TestRepo,
    src: PathBuf,
}

impl Rig {
    /// A repository with one backup of `files` incompressible files of `mib` MiB each (and a
    /// few small ones), and virtual library `lib` with tapes of `capacity`.
    fn new(files: usize, mib: usize) -> Rig {
        let repo = TestRepo::new(&[]);
        let src = repo.dir.path().join("src");
        for i in 0..files {
            write(
                &src.join(format!("big/f{i}")),
                &pseudo_random(mib << 20, i as u64 + 1),
            );
        }
        for i in 0..20 {
            write(
                &src.join(format!("small/s{i}.txt")),
                format!("small file {i}\n").as_bytes(),
            );
        }
        repo.ok(&["backup", "-q", src.to_str().unwrap()]);
        Rig { repo, src }
    }

    fn lib_dir(&self, name: &str) -> PathBuf {
        self.repo.dir.path().join(name)
    }

    /// Create, register and label a virtual library.
    fn library(&self, name: &str, tapes: &str, capacity: &str, pool: &str) {
        let dir = self.lib_dir(name);
        self.ok(&[
            "library",
            "create",
            dir.to_str().unwrap(),
            "--capacity",
            capacity,
            "--early-warning",
            "3MiB",
            "--tapes",
            tapes,
        ]);
        self.ok(&[
            "resource",
            "add",
            "target",
            name,
            &format!("vlib://{}", dir.display()),
            "--sequential",
        ]);
        if self
            .run(&["media", "pool", "list", "--json"])
            .status
            .success()
            && !self
                .json(&["media", "pool", "list"])
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == pool)
        {
            self.ok(&["media", "pool", "add", pool]);
        }
        self.ok(&["media", "label", name, "--pool", pool]);
    }

    fn ok(&self, args: &[&str]) -> String {
        self.repo.ok(args)
    }
    fn run(&self, args: &[&str]) -> Output {
        self.repo.run(args)
    }
    fn json(&self, args: &[&str]) -> Value {
        self.repo.json(args)
    }

    fn tapes(&self) -> Vec<Value> {
        self.json(&["media", "list"]).as_array().unwrap().clone()
    }

    fn tape(&self, label: &str) -> Value {
        self.tapes()
            .into_iter()
            .find(|t| t["label"] == label)
            .unwrap()
    }

    /// Restore the newest tape backup into a fresh directory; returns it and the output.
    fn restore(&self, extra: &[&str]) -> (PathBuf, Output) {
        let mut n = 0;
        let target = loop {
            let t = self.repo.dir.path().join(format!("restore{n}"));
            if !t.exists() {
                break t;
            }
            n += 1;
        };
        let mut args = vec![
            "tape",
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        (target, o)
    }

    fn restored(&self, target: &Path) -> PathBuf {
        target.join(self.src.strip_prefix("/").unwrap())
    }
}

fn same_tree(a: &Path, b: &Path) {
    let files = |root: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<(PathBuf, Vec<u8>)> = common::walkdir(root)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                (
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (x, y) = (files(a), files(b));
    assert_eq!(
        x.len(),
        y.len(),
        "file count of {} and {}",
        a.display(),
        b.display()
    );
    for ((pa, da), (pb, db)) in x.iter().zip(&y) {
        assert_eq!(pa, pb);
        assert!(da == db, "{} differs", pa.display());
    }
}

fn archives(v: &Value) -> u64 {
    v["archives_read"].as_u64().unwrap()
}

#[test]
fn spans_tapes_restores_and_rebuilds_the_catalog_from_them() {
    // 5 × 12 MiB onto 24 MiB tapes: the backup spans three and more tapes.
    let rig = Rig::new(5, 12);
    rig.library("lib", "SSC001..SSC006", "24MiB", "weekly");
    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "weekly",
        "--archive-size",
        "4MiB",
    ]);
    let lib = &out["libraries"][0];
    let tapes: Vec<&str> = lib["stats"]["tapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tapes.len() >= 3, "spans 3+ tapes: {tapes:?}");
    assert_eq!(
        &tapes[..3],
        &["SSC001", "SSC002", "SSC003"],
        "in label order"
    );
    assert_eq!(lib["copied"].as_array().unwrap().len(), 1);
    // Every tape but the last of the set is full; the last may take more.
    for t in &tapes[..tapes.len() - 1] {
        assert_eq!(rig.tape(t)["state"], "full", "{t}");
    }
    assert_eq!(rig.tape(tapes[tapes.len() - 1])["state"], "writable");
    assert_eq!(rig.tape("SSC006")["state"], "blank");

    // Whole restore, byte for byte.
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // One file from the middle of the set: only the tape files holding it are read.
    let whole = rig.json(&[
        "tape",
        "restore",
        "latest",
        "--target",
        rig.repo.dir.path().join("w").to_str().unwrap(),
    ]);
    let _ = whole;
    let (t, o) = rig.restore(&["--include", &format!("{}/big/f2", rig.src.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = fs::read(rig.restored(&t).join("big/f2")).unwrap();
    assert!(got == fs::read(rig.src.join("big/f2")).unwrap());
    assert!(
        !rig.restored(&t).join("big/f0").exists(),
        "only what was asked for"
    );
    let said = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    let read: f64 = said
        .split("read ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(
        read < 40.0,
        "one 12 MiB file read {read} MiB of a 60 MiB backup: {said}"
    );

    // A second session appends to the set and writes only what the set does not hold.
    write(&rig.src.join("big/f5"), &pseudo_random(3 << 20, 99));
    rig.ok(&["backup", "-q", rig.src.to_str().unwrap()]);
    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "weekly",
        "--archive-size",
        "4MiB",
    ]);
    let lib = &out["libraries"][0];
    assert_eq!(lib["already"].as_array().unwrap().len(), 1, "{lib}");
    assert_eq!(lib["copied"].as_array().unwrap().len(), 1, "{lib}");
    assert!(
        lib["packs_skipped"].as_u64().unwrap() >= 5,
        "deduplicated within the set: {lib}"
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // The catalog is lost: the tapes alone give it back, and a second scan enters nothing.
    let db = rig.repo.dir.path().join("data/kura/catalog.db");
    fs::remove_file(&db).unwrap();
    rig.ok(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", rig.lib_dir("lib").display()),
        "--sequential",
    ]);
    let r = rig.json(&["catalog", "rebuild", "--from-media", "lib"]);
    assert_eq!(r["added"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["incomplete"].as_array().unwrap().len(), 0, "{r}");
    let again = rig.json(&["catalog", "rebuild", "--from-media", "lib"]);
    assert_eq!(
        again["added"].as_array().unwrap().len(),
        0,
        "never twice: {again}"
    );
    assert_eq!(again["known"].as_array().unwrap().len(), 2);
    let listed = rig.json(&["tape", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] == "complete")
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
    // The rebuilt catalog knows the pools and the tapes' places.
    assert_eq!(rig.tape("SSC001")["state"], "full");
    assert!(rig.tape("SSC001")["media_set"].is_string());
}
