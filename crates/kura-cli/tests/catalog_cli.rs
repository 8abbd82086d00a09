//! `kura resource …` and `kura job …` against a real catalog: the embedded SQLite default and
//! a shared PostgreSQL (`KURA_TEST_PG`, started by scripts/test.sh). Exit codes and messages
//! for bad input, the seed's list view (number, name, state, process, stream) while a job
//! holds resources, probes feeding health, and an unreachable catalog.

use std::process::{Command, Output};
use std::time::Duration;

use kura_catalog::{Catalog, Constraints};
use serde_json::Value;

#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use catalog_common::{Db, Fresh, fresh};
use common::Kura as _;

/// Assert a command failed with `code` and said `needle` on stderr.
fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

const USAGE: i32 = 2;
const TARGET_UNHEALTHY: i32 = 5;
const NOT_FOUND: i32 = 13;
const CONFLICT: i32 = 14;
const CATALOG_UNREACHABLE: i32 = 16;

struct Kura {
    f: Fresh,
}

impl Kura {
    fn new(db: Db) -> Kura {
        Kura { f: fresh(db) }
    }

    /// `resource list --json` as name → resource.
    fn by_name(&self) -> std::collections::BTreeMap<String, Value> {
        self.json(&["resource", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
            .collect()
    }

    fn dir(&self) -> &std::path::Path {
        self.f._dir.path()
    }
}

fn target_url(k: &Kura, name: &str) -> String {
    k.dir().join(name).display().to_string()
}

/// On PostgreSQL nothing is implicit: declare a worker and a path and route them.
fn add_targets(k: &Kura, db: Db, names: &[&str]) {
    if matches!(db, Db::Postgres) {
        k.ok(&["resource", "add", "worker", "w1", "--slots", "8"]);
        k.ok(&["resource", "add", "path", "p1", "--slots", "8"]);
    }
    for n in names {
        let out = k.ok(&["resource", "add", "target", n, &target_url(k, n)]);
        assert!(out.contains(&format!("medium {n}.medium")), "{out}");
        if matches!(db, Db::Postgres) {
            assert!(out.contains("kura resource route"), "{out}");
            k.ok(&["resource", "route", "w1", "p1", n]);
        } else {
            assert!(out.contains("reached from local-worker"), "{out}");
        }
    }
}

fn bad_input_gets_clear_errors_and_documented_exit_codes(db: Db) {
    let k = Kura::new(db);
    add_targets(&k, db, &["t0", "t1"]);
    let dup = k.run(&["resource", "add", "target", "t0", &target_url(&k, "x")]);
    assert_fails(&dup, CONFLICT, "\"t0\" already exists");
    assert_fails(
        &k.run(&["resource", "add", "target", "s3bad", "s3://"]),
        USAGE,
        "no bucket",
    );
    assert_fails(
        &k.run(&["resource", "add", "target", "rel", "relative/dir"]),
        USAGE,
        "relative path",
    );
    assert_fails(
        &k.run(&["resource", "add", "target", "ftp", "ftp://host/x"]),
        USAGE,
        "unsupported scheme",
    );
    assert_fails(
        &k.run(&["resource", "add", "target", "nourl"]),
        USAGE,
        "needs a URL",
    );
    assert_fails(
        &k.run(&["resource", "add", "tape-robot", "r1"]),
        USAGE,
        "unknown resource kind",
    );
    assert_fails(
        &k.run(&["resource", "add", "target", "bad/name", "/x"]),
        USAGE,
        "resource name",
    );
    assert_fails(
        &k.run(&["resource", "add", "medium", "LTO-001"]),
        USAGE,
        "needs --target",
    );
    assert_fails(
        &k.run(&["resource", "add", "worker", "w9", "--slots", "0"]),
        USAGE,
        "slots must be at least 1",
    );
    for cmd in ["show", "enable", "disable", "remove"] {
        assert_fails(
            &k.run(&["resource", cmd, "nope"]),
            NOT_FOUND,
            "no resource named",
        );
    }
    assert_fails(
        &k.run(&["resource", "route", "t0", "t1", "t0"]),
        USAGE,
        "not a worker",
    );
    assert_fails(&k.run(&["resource", "probe", "nope"]), NOT_FOUND, "nope");
    assert_fails(
        &k.run(&["resource", "list", "--kind", "robot"]),
        USAGE,
        "kind",
    );
    // Jobs.
    k.ok(&[
        "job",
        "add",
        "nightly",
        "--object",
        "/srv",
        "--redundancy",
        "2",
    ]);
    assert_fails(
        &k.run(&["job", "add", "nightly", "--object", "/srv"]),
        CONFLICT,
        "already exists",
    );
    assert_fails(
        &k.run(&["job", "add", "j0", "--object", "/srv", "--redundancy", "0"]),
        USAGE,
        "redundancy must be at least 1",
    );
    assert_fails(
        &k.run(&["job", "add", "42", "--object", "/srv"]),
        USAGE,
        "not only digits",
    );
    assert_fails(
        &k.run(&["job", "add", "j1", "--object", "/srv", "--mode", "raid"]),
        USAGE,
        "unknown mode",
    );
    assert_fails(&k.run(&["job", "show", "nope"]), NOT_FOUND, "no job");
    assert_fails(&k.run(&["job", "remove", "99"]), NOT_FOUND, "no job");
    // Nothing of the rejected input was stored.
    let names: Vec<String> = k.by_name().into_keys().collect();
    for n in ["s3bad", "rel", "ftp", "nourl", "r1", "LTO-001", "w9"] {
        assert!(!names.contains(&n.to_string()), "{n} stored: {names:?}");
    }
    let jobs = k.json(&["job", "list"]);
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs[0]["name"], "nightly");
    assert_eq!(jobs[0]["number"], 1);
    assert_eq!(jobs[0]["last_run"], Value::Null);
}

fn list_shows_number_name_state_process_stream(db: Db) {
    let k = Kura::new(db);
    add_targets(&k, db, &["t0", "t1", "t2"]);
    k.ok(&["job", "add", "nightly", "--object", "/srv"]);
    let before = k.by_name();
    assert_eq!(before["t0"]["state"], "usable");
    assert_eq!(before["t0.medium"]["kind"], "medium");
    assert_eq!(before["t0.medium"]["parent"], before["t0"]["number"]);
    if matches!(db, Db::Sqlite) {
        // The embedded default registered this machine.
        assert_eq!(before["local-worker"]["kind"], "worker");
        assert_eq!(before["local-path"]["kind"], "path");
    } else {
        assert!(!before.contains_key("local-worker"));
    }
    // A manager secures two subsystems for job 1; the CLI shows who holds what.
    let cat = Catalog::open(&k.f.url).unwrap();
    let job = cat.job("nightly").unwrap();
    let g = cat.secure(job.id, 2, &Constraints::default()).unwrap();
    let process = g.secured.process;
    let held: Vec<String> = g
        .secured
        .subsystems
        .iter()
        .map(|s| s.target.clone())
        .collect();
    let now = k.by_name();
    for (stream, t) in held.iter().enumerate() {
        let r = &now[t];
        assert_eq!(r["state"], "in use", "{r}");
        assert_eq!(r["allocations"][0]["process"], process);
        assert_eq!(r["allocations"][0]["stream"], stream as i64);
        assert_eq!(now[&format!("{t}.medium")]["state"], "in use");
    }
    let free: Vec<&String> = now
        .keys()
        .filter(|n| n.starts_with('t') && !n.contains('.') && !held.contains(n))
        .collect();
    assert_eq!(free.len(), 1);
    assert_eq!(now[free[0]]["state"], "usable");
    let table = k.ok(&["resource", "list", "--kind", "target"]);
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(held[1].as_str()))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[1..],
        [
            "target",
            held[1].as_str(),
            "in",
            "use",
            &process.to_string(),
            "1"
        ],
        "{table}"
    );
    assert!(
        table.starts_with("Number  Kind    Name  State   Process  Stream"),
        "{table}"
    );
    // Removing a held resource is refused; the job's run is visible with its streams.
    assert_fails(
        &k.run(&["resource", "remove", &held[0]]),
        CONFLICT,
        "in use by process",
    );
    let show = k.json(&["job", "show", "nightly"]);
    assert_eq!(show["runs"][0]["process"], process);
    assert_eq!(show["runs"][0]["state"], "running");
    assert_eq!(show["runs"][0]["streams"][1]["target"], held[1].as_str());
    g.finish(Err("source vanished".into())).unwrap();
    let show = k.json(&["job", "show", "1"]);
    assert_eq!(show["runs"][0]["state"], "failed");
    assert_eq!(show["runs"][0]["error"], "source vanished");
    assert!(
        k.by_name()
            .values()
            .all(|r| r["allocations"] == Value::Array(vec![]))
    );
    // Operator switches, visible in list and as events.
    k.ok(&["resource", "disable", "t1", "--reason", "disk swap"]);
    assert_eq!(k.by_name()["t1"]["state"], "not usable");
    k.ok(&["resource", "enable", "t1"]);
    let t1 = k.json(&["resource", "show", "t1"]);
    assert_eq!(t1["state"], "usable");
    let events: Vec<&str> = t1["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.ends_with(&["disabled", "enabled"]), "{events:?}");
    assert!(
        events.contains(&"in use") && events.contains(&"released"),
        "{events:?}"
    );
    assert!(
        t1["routes"][0]["target"] == "t1",
        "routes of t1: {}",
        t1["routes"]
    );
    k.ok(&["resource", "remove", "t2"]);
    let after = k.by_name();
    assert!(!after.contains_key("t2") && !after.contains_key("t2.medium"));
}

fn probes_feed_health(db: Db) {
    let k = Kura::new(db);
    add_targets(&k, db, &["good"]);
    // A "directory" target whose path is a file: every write fails.
    let broken = target_url(&k, "broken");
    std::fs::write(&broken, b"not a directory").unwrap();
    k.ok(&["resource", "add", "target", "broken", &broken]);
    for i in 1..=3 {
        let o = k.run(&["--json", "resource", "probe"]);
        assert_eq!(o.status.code(), Some(TARGET_UNHEALTHY), "probe {i}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let by: std::collections::BTreeMap<&str, &Value> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap(), r))
            .collect();
        assert_eq!(by["good"]["ok"], true);
        assert_eq!(by["good"]["state"], "usable");
        assert_eq!(by["broken"]["ok"], false);
        let want = if i < 3 { "usable" } else { "not usable" };
        assert_eq!(by["broken"]["state"], want, "after {i} failed probe(s)");
    }
    let show = k.ok(&["resource", "show", "broken"]);
    assert!(
        show.contains("not usable since") && show.contains("Not a directory"),
        "{show}"
    );
    // Fixed: one good probe (of the medium, which probes its target) puts it back. (The
    // directory must exist: a probe never creates a missing target directory.)
    std::fs::remove_file(&broken).unwrap();
    std::fs::create_dir(&broken).unwrap();
    k.ok(&["resource", "probe", "broken.medium"]);
    let b = &k.by_name()["broken"];
    assert_eq!(b["state"], "usable");
    assert_eq!(b["errors"], 0);
    // An S3 target nobody answers for: unreachable within the deadline, exit 5.
    k.ok(&[
        "resource",
        "add",
        "target",
        "dead",
        "s3://b/p?endpoint=http://127.0.0.1:9&connect-timeout=1s",
    ]);
    let o = k.run(&["--timeout", "3s", "resource", "probe", "dead"]);
    assert_fails(&o, TARGET_UNHEALTHY, "target dead unhealthy");
    assert_eq!(k.by_name()["dead"]["errors"], 1);
    assert_fails(
        &k.run(&[
            "resource",
            "probe",
            if matches!(db, Db::Postgres) {
                "w1"
            } else {
                "local-worker"
            },
        ]),
        USAGE,
        "only targets and media are probed",
    );
}

fn jobs_list_show_remove(db: Db) {
    let k = Kura::new(db);
    add_targets(&k, db, &["t0"]);
    k.ok(&[
        "job",
        "add",
        "db",
        "--object",
        "/srv/db",
        "--schedule",
        "*-*-* 02:00",
        "--redundancy",
        "1",
        "--mode",
        "failover",
    ]);
    k.ok(&["job", "add", "home", "--object", "/home"]);
    let list = k.ok(&["job", "list"]);
    let line = list.lines().find(|l| l.contains("/srv/db")).unwrap();
    assert!(
        line.contains("db    /srv/db  1  failover  *-*-* 02:00  ") && line.ends_with("never"),
        "{list}"
    );
    // The next run: a time between the schedule and the last run (none yet).
    assert!(!line.contains("  -  "), "{list}");
    assert!(list.contains("2 job(s)"), "{list}");
    let cat = Catalog::open(&k.f.url).unwrap();
    let g = cat.secure(1, 1, &Constraints::default()).unwrap();
    assert_fails(&k.run(&["job", "remove", "db"]), CONFLICT, "is running");
    g.finish(Ok(())).unwrap();
    let show = k.ok(&["job", "show", "db"]);
    assert!(show.contains("succeeded"), "{show}");
    assert!(show.contains("t0.medium"), "{show}");
    k.ok(&["job", "remove", "db"]);
    let left: Vec<String> = k
        .json(&["job", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["home"]);
}

on_both_dbs!(
    bad_input_gets_clear_errors_and_documented_exit_codes,
    list_shows_number_name_state_process_stream,
    probes_feed_health,
    jobs_list_show_remove,
);

#[test]
fn an_unreachable_catalog_is_exit_16() {
    let t = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_CATALOG", "postgres://kura@127.0.0.1:9/kura")
        .args(["resource", "list"])
        .output()
        .unwrap();
    assert_fails(
        &o,
        CATALOG_UNREACHABLE,
        "catalog postgres://kura@127.0.0.1:9/kura",
    );
    assert_fails(&o, CATALOG_UNREACHABLE, "refused");
    // The real cause at once, not a pool's timeout after 30 s.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn the_config_file_names_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-config.db");
    let cfg = dir.path().join("kura.toml");
    std::fs::write(&cfg, format!("[catalog]\nurl = \"{}\"\n", db.display())).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kura"))
        .env_remove("KURA_CATALOG")
        .env("KURA_CONFIG", &cfg)
        .args(["resource", "add", "worker", "w1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = Catalog::open(db.to_str().unwrap())
        .unwrap()
        .resources()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(names.contains(&"w1".to_string()), "{names:?}");
    // And the default location is under XDG_DATA_HOME.
    let o = Command::new(env!("CARGO_BIN_EXE_kura"))
        .env_remove("KURA_CATALOG")
        .env_remove("KURA_CONFIG")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .args(["resource", "list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("data/kura/catalog.db").exists());
}

impl common::Kura for Kura {
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.f.url)
            .env_remove("KURA_CONFIG")
            .env("XDG_CONFIG_HOME", self.f._dir.path().join("no-config"));
        c
    }
}
