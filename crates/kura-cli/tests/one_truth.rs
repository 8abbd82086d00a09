//! The catalog and the targets tell one truth: forget and prune on a target reach the catalog
//! and the records on the targets (`catalog rebuild` does not resurrect), `catalog verify`
//! finds each kind of difference and `--fix` repairs it, `backups forget N` killed at each
//! step converges under `verify --fix`; securing checks targets before it commits (an
//! unreachable one, one holding no or another repository), `init --mirror` adds a member,
//! and a manager killed in its pre hook takes the hook along and frees its targets soon.
//! Run on the embedded SQLite catalog and on PostgreSQL.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use catalog_common::{Db, Fresh, fresh};
use common::{Kura, assert_same_tree, pseudo_random, write};

const DAMAGED: i32 = 4;
const USAGE: i32 = 2;
const UNAVAILABLE: i32 = 15;

struct Setup {
    f: Fresh,
    db: Db,
    targets: Vec<PathBuf>,
    src: PathBuf,
    /// Extra environment for every command.
    env: Vec<(String, String)>,
}

impl Kura for Setup {
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.f.url)
            .env("KURA_PASSWORD", "test-password")
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_CONFIG")
            .env_remove("KURA_TEST_DIE_AFTER")
            .env("XDG_CONFIG_HOME", self.f._dir.path().join("no-config"))
            .env("KURA_CHECK_WITHIN", "2s");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

impl Setup {
    /// `n` local targets forming one group, registered (routed on PostgreSQL), and a small
    /// source tree.
    fn new(db: Db, n: usize) -> Setup {
        let f = fresh(db);
        let base = f._dir.path().to_path_buf();
        let s = Setup {
            src: base.join("src"),
            targets: (0..n).map(|i| base.join(format!("t{i}"))).collect(),
            f,
            db,
            env: Vec::new(),
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
            s.register(&format!("t{i}"), s.targets[i].to_str().unwrap());
        }
        for i in 0..3u64 {
            write(
                &s.src.join(format!("d/f{i}")),
                &pseudo_random(200_000, i + 7),
            );
        }
        s
    }

    fn register(&self, name: &str, url: &str) {
        self.ok(&["resource", "add", "target", name, url]);
        if matches!(self.db, Db::Postgres) {
            self.ok(&["resource", "route", "w", "p", name]);
        }
    }

    /// A mirrored backup onto `n` targets; returns (backup number, snapshot id).
    fn backup(&self, n: usize, extra: &[&str]) -> (i64, String) {
        write(
            &self.src.join("changes"),
            format!("{:?}", Instant::now()).as_bytes(),
        );
        let src = self.src.to_str().unwrap().to_string();
        let n = n.to_string();
        let mut args = vec!["--json", "backup", &src, "--redundancy", &n];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        (
            v["backup"].as_i64().unwrap(),
            v["snapshot_id"].as_str().unwrap().to_string(),
        )
    }

    fn backups(&self) -> Vec<Value> {
        self.json(&["backups"]).as_array().unwrap().clone()
    }

    fn backup_row(&self, id: i64) -> Option<Value> {
        self.backups().into_iter().find(|b| b["backup"] == id)
    }

    /// The targets the catalog says hold backup `id`.
    fn holders(&self, id: i64) -> Vec<String> {
        let mut t: Vec<String> = self
            .backup_row(id)
            .map(|b| {
                b["extents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["target"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        t.sort();
        t
    }

    fn verify(&self, fix: bool) -> (Option<i32>, Value) {
        let mut a = vec!["--json", "catalog", "verify"];
        if fix {
            a.push("--fix");
        }
        let o = self.run(&a);
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "verify: {e}: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.code(), v)
    }

    fn kinds(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| format!("{}@{}", d["kind"].as_str().unwrap(), d["target"]))
            .collect();
        k.sort();
        k
    }

    /// `verify` finds nothing.
    fn consistent(&self) {
        let (code, v) = self.verify(false);
        assert_eq!(code, Some(0), "{v:#}");
    }

    /// Rebuild into an empty catalog from every target; returns its backups.
    fn rebuilt(&self) -> Vec<Value> {
        let empty = fresh(self.db);
        let other = Setup {
            f: empty,
            db: self.db,
            targets: self.targets.clone(),
            src: self.src.clone(),
            env: Vec::new(),
        };
        if matches!(self.db, Db::Postgres) {
            other.ok(&["resource", "add", "worker", "w", "--slots", "8"]);
            other.ok(&["resource", "add", "path", "p", "--slots", "8"]);
        }
        let mut args = vec!["catalog", "rebuild"];
        let names: Vec<String> = (0..self.targets.len()).map(|i| format!("t{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            other.register(n, self.targets[i].to_str().unwrap());
            args.extend(["--from", n.as_str()]);
        }
        other.ok(&args);
        other.backups()
    }

    fn restore_backup(&self, id: i64) -> Output {
        let dest = self
            .f
            ._dir
            .path()
            .join(format!("restore-{id}-{:?}", Instant::now()));
        self.run(&[
            "restore",
            "--backup",
            &id.to_string(),
            "--target",
            dest.to_str().unwrap(),
        ])
    }

    fn records(&self, t: usize) -> Vec<PathBuf> {
        std::fs::read_dir(self.targets[t].join("catalog"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `forget --prune` on one target reaches the catalog and the records; the last copy gone,
/// the backup is `forgotten`, `restore --backup` says so clearly and no rebuild brings it
/// back. `backups.started` is the snapshot's start, and a rebuild carries it.
fn forget_on_a_target_reaches_the_catalog_and_the_records(db: Db) {
    let s = Setup::new(db, 2);
    let before = chrono::Utc::now().timestamp_millis();
    let (b, snap) = s.backup(2, &[]);
    let (b2, _) = s.backup(2, &[]);
    let row = s.backup_row(b).unwrap();
    let started = chrono::DateTime::parse_from_rfc3339(row["started"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let ended = chrono::DateTime::parse_from_rfc3339(row["ended"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert!(
        before - 1000 <= started && started < ended,
        "started {started} is the backup's start"
    );
    let again = s.rebuilt();
    let same = again
        .iter()
        .find(|r| r["data_time"] == row["data_time"])
        .unwrap();
    assert_eq!(
        same["started"], row["started"],
        "a rebuild carries the start"
    );

    let t0 = s.targets[0].to_str().unwrap();
    s.ok(&["-r", t0, "forget", &snap[..8], "--prune"]);
    assert_eq!(s.holders(b), ["t1"]);
    s.consistent();
    let o = s.restore_backup(b);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let t1 = s.targets[1].to_str().unwrap();
    s.ok(&["-r", t1, "forget", &snap[..8], "--prune"]);
    let row = s.backup_row(b).unwrap();
    assert_eq!(row["state"], "forgotten", "{row}");
    let o = s.restore_backup(b);
    assert_eq!(o.status.code(), Some(USAGE), "{}", stderr(&o));
    assert!(stderr(&o).contains("forgotten"), "{}", stderr(&o));
    s.consistent();
    // Neither a fresh rebuild nor one into this catalog brings it back.
    let again = s.rebuilt();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        again[0]["data_time"],
        s.backup_row(b2).unwrap()["data_time"]
    );
    s.ok(&["catalog", "rebuild", "--from", "t0", "--from", "t1"]);
    assert_eq!(s.backup_row(b).unwrap()["state"], "forgotten");
    assert_eq!(s.holders(b2), ["t0", "t1"]);
}

/// Each kind of difference is found (exit 4) and `--fix` makes catalog and targets one.
fn verify_finds_each_difference_and_fix_repairs_it(db: Db) {
    let s = Setup::new(db, 2);
    let (b1, snap1) = s.backup(2, &[]);
    let (b2, _) = s.backup(2, &[]);
    s.consistent();
    // Keep t1's records as they are now (b1's lists t0 and t1).
    let keep = s.f._dir.path().join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    for r in s.records(1) {
        std::fs::copy(&r, keep.join(r.file_name().unwrap())).unwrap();
    }
    // A snapshot deleted behind the catalog's back.
    std::fs::remove_file(s.targets[0].join("snapshots").join(&snap1)).unwrap();
    let (code, v) = s.verify(false);
    assert_eq!(code, Some(DAMAGED), "{v:#}");
    assert_eq!(Setup::kinds(&v), ["missing-snapshot@\"t0\""], "{v:#}");
    assert_eq!(v["differences"][0]["backup"], b1);
    let (code, v) = s.verify(true);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(s.holders(b1), ["t1"]);
    s.consistent();
    // A record that disagrees: t1's old record of b1 (still listing t0) comes back.
    for f in std::fs::read_dir(&keep).unwrap() {
        let f = f.unwrap().path();
        let to = s.targets[1].join("catalog").join(f.file_name().unwrap());
        if !to.exists() {
            std::fs::copy(&f, &to).unwrap();
        }
    }
    let (code, v) = s.verify(false);
    assert_eq!(code, Some(DAMAGED), "{v:#}");
    assert_eq!(Setup::kinds(&v), ["record-differs@\"t1\""], "{v:#}");
    let (code, v) = s.verify(true);
    assert_eq!(code, Some(0), "{v:#}");
    s.consistent();
    // A record deleted, and an unknown record: a backup by another catalog onto the group.
    let r0 = s.records(0);
    assert_eq!(r0.len(), 1, "t0 holds the record of b2 only: {r0:?}");
    std::fs::remove_file(&r0[0]).unwrap();
    let other = Setup {
        f: fresh(db),
        db,
        targets: s.targets.clone(),
        src: s.src.clone(),
        env: Vec::new(),
    };
    if matches!(db, Db::Postgres) {
        other.ok(&["resource", "add", "worker", "w", "--slots", "8"]);
        other.ok(&["resource", "add", "path", "p", "--slots", "8"]);
    }
    other.register("t0", s.targets[0].to_str().unwrap());
    other.register("t1", s.targets[1].to_str().unwrap());
    let (_, foreign) = other.backup(2, &[]);
    let (code, v) = s.verify(false);
    assert_eq!(code, Some(DAMAGED), "{v:#}");
    assert_eq!(
        Setup::kinds(&v),
        [
            "missing-record@\"t0\"",
            "unknown-record@\"t0\"",
            "unknown-record@\"t1\""
        ],
        "{v:#}"
    );
    let (code, v) = s.verify(true);
    assert_eq!(code, Some(0), "{v:#}");
    s.consistent();
    // The foreign backup was re-entered (its snapshot is on both targets).
    let entered = s
        .backups()
        .into_iter()
        .find(|b| {
            b["extents"][0]["position"]
                .as_str()
                .is_some_and(|p| p.starts_with(&foreign))
        })
        .expect("the unknown record was re-entered");
    let id = entered["backup"].as_i64().unwrap();
    assert_eq!(s.holders(id), ["t0", "t1"]);
    assert_eq!(s.holders(b2), ["t0", "t1"]);
    let o = s.restore_backup(b1);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// `backups forget N` killed after each of its steps: `verify` reports the unfinished forget
/// and `--fix` finishes it — the snapshot and records gone from every target, the rows gone,
/// nothing resurrected by a rebuild.
fn backups_forget_converges_after_a_kill_at_each_step(db: Db) {
    let mut s = Setup::new(db, 2);
    for step in 0..=3u8 {
        let (b, snap) = s.backup(2, &[]);
        if step > 0 {
            s.env = vec![("KURA_TEST_DIE_AFTER".into(), format!("forget:{step}"))];
            let o = s.run(&["backups", "forget", &b.to_string()]);
            assert_eq!(o.status.signal(), Some(9), "step {step}: {}", stderr(&o));
            s.env.clear();
            let (code, v) = s.verify(false);
            assert_eq!(code, Some(DAMAGED), "step {step}: {v:#}");
            assert!(
                Setup::kinds(&v).contains(&"unfinished-forget@null".to_string()),
                "{v:#}"
            );
            let (code, v) = s.verify(true);
            assert_eq!(code, Some(0), "step {step}: {v:#}");
        } else {
            s.ok(&["backups", "forget", &b.to_string()]);
        }
        assert!(s.backup_row(b).is_none(), "step {step}: the rows are gone");
        for t in &s.targets {
            assert!(!t.join("snapshots").join(&snap).exists(), "step {step}");
        }
        s.consistent();
        let again = s.rebuilt();
        assert!(
            again.iter().all(|r| !r["extents"][0]["position"]
                .as_str()
                .unwrap()
                .starts_with(&snap)),
            "step {step}: rebuilt {again:?}"
        );
    }
}

/// Securing checks before it commits: an unreachable target (a closed port) is passed over
/// within seconds, not the deadline; targets holding no repository or another group's are
/// passed over; with too few fit targets the run fails at once (exit 15) and the pre hook
/// never runs.
fn securing_passes_over_unfit_targets_before_the_pre_hook(db: Db) {
    let mut s = Setup::new(db, 2);
    s.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "x".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "y".into()),
    ];
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.register(
        "dead",
        &format!("s3://bucket/kura?endpoint=http://127.0.0.1:{port}&region=us-east-1"),
    );
    let empty = s.f._dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    s.register("empty", empty.to_str().unwrap());
    let foreign = s.f._dir.path().join("foreign");
    s.ok(&[
        "-r",
        foreign.to_str().unwrap(),
        "init",
        "--kdf-memory-kib",
        "64",
    ]);
    s.register("foreign", foreign.to_str().unwrap());
    let marker = s.f._dir.path().join("pre-ran");
    let pre = format!("touch {}", marker.display());
    // Two fit targets among five: the run takes them, reporting the others.
    let t = Instant::now();
    let src = s.src.to_str().unwrap().to_string();
    let o = s.run(&["--json", "backup", &src, "--redundancy", "2", "--pre", &pre]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let skipped: Vec<String> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{}: {}", x["target"].as_str().unwrap(), x["reason"]))
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    let find = |n: &str| skipped.iter().find(|x| x.starts_with(n)).unwrap().clone();
    assert!(find("dead:").contains("unreachable"), "{skipped:?}");
    assert!(
        find("empty:").contains("holds no repository"),
        "{skipped:?}"
    );
    assert!(find("foreign:").contains("another group"), "{skipped:?}");
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();
    // Only unfit targets: exit 15 at once, the pre hook never ran, nothing held.
    let t = Instant::now();
    let o = s.run(&[
        "backup",
        &src,
        "--redundancy",
        "2",
        "--pre",
        &pre,
        "--target",
        "dead",
        "--target",
        "empty",
        "--target",
        "t0",
    ]);
    assert_eq!(o.status.code(), Some(UNAVAILABLE), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(stderr(&o).contains("holds no repository"), "{}", stderr(&o));
    assert!(!marker.exists(), "the pre hook ran");
    // The skip is on record.
    let ev = s.json(&["resource", "show", "empty"]);
    assert!(ev.to_string().contains("skipped"), "{ev:#}");
    // A target re-created under the catalog's feet holds another repository than recorded.
    // (created without this catalog, which would record the new repository)
    std::fs::remove_dir_all(&s.targets[1]).unwrap();
    let elsewhere = format!("sqlite://{}", s.f._dir.path().join("other.db").display());
    let o = s
        .cmd()
        .env("KURA_CATALOG", &elsewhere)
        .args([
            "-r",
            s.targets[1].to_str().unwrap(),
            "init",
            "--kdf-memory-kib",
            "64",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.run(&[
        "backup",
        &src,
        "--redundancy",
        "2",
        "--target",
        "t0",
        "--target",
        "t1",
    ]);
    assert_eq!(o.status.code(), Some(UNAVAILABLE), "{}", stderr(&o));
    assert!(stderr(&o).contains("recorded for it"), "{}", stderr(&o));
}

/// `init --mirror` onto an existing group adds the new location as a member (config and key
/// copied, the others untouched), refuses a location holding another repository, and a job
/// then mirrors onto all.
fn init_mirror_adds_a_member_to_a_group(db: Db) {
    let s = Setup::new(db, 2);
    let (b, _) = s.backup(2, &[]);
    let new = s.f._dir.path().join("t2");
    let before: Vec<_> = common::walkdir(&s.targets[0]);
    let t0 = s.targets[0].to_str().unwrap();
    let t1 = s.targets[1].to_str().unwrap();
    let v = s.json(&[
        "-r",
        t0,
        "--mirror",
        t1,
        "--mirror",
        new.to_str().unwrap(),
        "init",
    ]);
    assert_eq!(
        v["joined"],
        serde_json::json!([new.to_str().unwrap()]),
        "{v}"
    );
    assert_eq!(
        common::walkdir(&s.targets[0]),
        before,
        "existing members untouched"
    );
    let foreign = s.f._dir.path().join("foreign");
    s.ok(&[
        "-r",
        foreign.to_str().unwrap(),
        "init",
        "--kdf-memory-kib",
        "64",
    ]);
    let o = s.run(&["-r", t0, "--mirror", foreign.to_str().unwrap(), "init"]);
    assert_eq!(o.status.code(), Some(USAGE), "{}", stderr(&o));
    assert!(stderr(&o).contains("another repository"), "{}", stderr(&o));
    s.register("t2", new.to_str().unwrap());
    let (b3, snap) = s.backup(3, &[]);
    assert_eq!(s.holders(b3), ["t0", "t1", "t2"]);
    assert_eq!(s.holders(b), ["t0", "t1"]);
    let dest = s.f._dir.path().join("from-t2");
    s.ok(&[
        "-r",
        new.to_str().unwrap(),
        "restore",
        &snap[..8],
        "--target",
        dest.to_str().unwrap(),
    ]);
    assert_same_tree(&s.src, &dest.join(s.src.strip_prefix("/").unwrap()));
    s.consistent();
}

fn gone(pid: &str) -> bool {
    let p = Path::new("/proc").join(pid);
    !p.exists() || std::fs::read_to_string(p.join("stat")).is_ok_and(|s| s.contains(") Z"))
}

/// A manager SIGKILLed during a long pre hook: the hook (and its child) dies, and the
/// targets are securable again once the (short, for the test) lease has run out.
fn a_killed_manager_takes_its_hook_along_and_frees_its_targets(db: Db) {
    let mut s = Setup::new(db, 2);
    s.env = vec![
        ("KURA_LEASE".into(), "4s".into()),
        ("KURA_LEASE_RENEW".into(), "1s".into()),
    ];
    let pidfile = s.f._dir.path().join("hook.pid");
    let pre = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let src = s.src.to_str().unwrap().to_string();
    let mut child = s
        .cmd()
        .args(["backup", &src, "--redundancy", "2", "--pre", &pre])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(&pidfile).map_or(true, |p| p.trim().is_empty()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the pre hook never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "kura ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let hook_child = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    while !gone(&hook_child) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the hook's child {hook_child} outlived its manager"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The dead manager's targets: held until the lease runs out, then securable again.
    let t = Instant::now();
    loop {
        let o = s.run(&["backup", &src, "--redundancy", "2"]);
        if o.status.code() == Some(0) {
            break;
        }
        assert_eq!(o.status.code(), Some(UNAVAILABLE), "{}", stderr(&o));
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the targets did not come back: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

on_both_dbs!(
    forget_on_a_target_reaches_the_catalog_and_the_records,
    verify_finds_each_difference_and_fix_repairs_it,
    backups_forget_converges_after_a_kill_at_each_step,
    securing_passes_over_unfit_targets_before_the_pre_hook,
    init_mirror_adds_a_member_to_a_group,
    a_killed_manager_takes_its_hook_along_and_frees_its_targets,
);
