//! Host-free engine policies (the disk array of seed 004 that backs volumes up on its own
//! timer): `kura serve --nbd-listen` hosts the volume engine, `kura policy apply` (and
//! `PUT /api/v1/policies`) sets its policy table, validated whole, and the daemon backs the
//! volumes up at each occurrence with no `kura volume backup` issued — while a real NBD
//! client (qemu-io) writes — recording each run's normal or abnormal end. The catalog is
//! SQLite or PostgreSQL (`KURA_TEST_PG`, started by scripts/test.sh).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;

use catalog_common::{Db, Fresh, fresh};
use common::http::{Served, request, wait_for};

mod common;

const MIB: u64 = 1 << 20;
/// The test volume: 8 MiB of 64 KiB blocks.
const VOLUME: u64 = 8 * MIB;
const BLOCK: u64 = 64 << 10;
const BLOCKS: u64 = VOLUME / BLOCK;

struct Setup {
    f: Fresh,
}

impl Setup {
    fn new(db: Db) -> Setup {
        let s = Setup { f: fresh(db) };
        std::fs::create_dir_all(s.data()).unwrap();
        s
    }

    fn base(&self) -> &Path {
        self.f._dir.path()
    }

    fn data(&self) -> PathBuf {
        self.base().join("volumes")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.f.url)
            .env("KURA_PASSWORD", "pw")
            .env("KURA_VOLUMES", self.data())
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_PASSWORD_FILE")
            .env_remove("KURA_CONFIG")
            .env("XDG_CONFIG_HOME", self.base().join("no-config"))
            .env("KURA_CLAIM_LEASE", "5s")
            .env("KURA_CLAIM_RENEW", "1s");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kura {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A repository `name` in the test directory, registered as catalog target `name`.
    fn target(&self, name: &str) -> String {
        let p = self.base().join(name).display().to_string();
        self.ok(&["-r", &p, "init", "--kdf-memory-kib", "64"]);
        self.ok(&["resource", "add", "target", name, &p]);
        p
    }

    /// A volume of [`VOLUME`] bytes and a working volume for its backup sessions.
    fn volume(&self, name: &str) {
        let size = VOLUME.to_string();
        self.ok(&["volume", "create", name, "--size", &size]);
        let work = format!("{name}-work");
        self.ok(&["volume", "create", &work, "--size", &size, "--work"]);
    }

    fn write_table(&self, name: &str, text: &str) -> String {
        let p = self.base().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn policies(&self) -> Value {
        serde_json::from_str(&self.ok(&["--json", "policy", "list"])).unwrap()
    }

    /// Fill volume `name` with incompressible bytes (from `seed`) while no server holds it;
    /// returns them.
    fn fill_incompressible(&self, name: &str, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let bytes: Vec<u8> = (0..VOLUME)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(self.data().join(format!("{name}.raw")), &bytes).unwrap();
        bytes
    }

    /// `kura serve` hosting the volumes, on free loopback ports.
    fn serve(&self, name: &str) -> Daemon {
        self.serve_with(name, &[])
    }

    /// `kura GLOBAL… serve` hosting the volumes.
    fn serve_with(&self, name: &str, global: &[&str]) -> Daemon {
        let state = self.base().join(format!("state-{name}"));
        let mut child = self
            .cmd()
            .args(global)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--nbd-listen",
                "127.0.0.1:0",
            ])
            .args(["--name", name, "--state-dir"])
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut api, mut nbd) = (String::new(), String::new());
        out.read_line(&mut api).unwrap();
        out.read_line(&mut nbd).unwrap();
        assert!(api.starts_with("http://127.0.0.1:"), "{api:?}");
        assert!(nbd.starts_with("nbd://127.0.0.1:"), "{nbd:?}");
        let token = self.ok(&["-q", "token", "create", &format!("t-{name}")]);
        Daemon {
            _child: Served(child),
            addr: api.trim().trim_start_matches("http://").to_string(),
            nbd: nbd.trim().to_string(),
            token: token.trim().to_string(),
        }
    }

    /// The snapshots of repository `repo`, oldest first.
    fn snapshots(&self, repo: &str) -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&self.ok(&["-r", repo, "--json", "snapshots"])).unwrap();
        let mut all = v.as_array().unwrap().clone();
        all.sort_by_key(|s| s["time"].as_str().unwrap_or_default().to_string());
        all
    }

    /// An image snapshot of `repo`, restored to a file.
    fn restored(&self, repo: &str, snapshot: &str) -> Vec<u8> {
        let out = self.base().join(format!("restored-{snapshot}"));
        let _ = std::fs::remove_file(&out);
        self.ok(&[
            "-r",
            repo,
            "restore",
            snapshot,
            "--target",
            out.to_str().unwrap(),
        ]);
        let b = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        b
    }
}

struct Daemon {
    _child: Served,
    addr: String,
    nbd: String,
    token: String,
}

impl Daemon {
    /// One HTTP/1.1 request with an optional JSON body; the status and the body.
    fn http(&self, method: &str, path: &str, auth: bool, body: &str) -> (u16, String) {
        let token = auth.then_some(self.token.as_str());
        request(&self.addr, method, path, token, body)
    }

    fn get(&self, path: &str) -> String {
        let (status, body) = self.http("GET", path, true, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn json(&self, path: &str) -> Value {
        let body = self.get(path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn url(&self, volume: &str) -> String {
        format!("{}/{volume}", self.nbd)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The policy of `volume` in a `policy list --json`.
fn entry<'a>(all: &'a Value, volume: &str) -> &'a Value {
    all.as_array()
        .unwrap()
        .iter()
        .find(|p| p["volume"] == volume)
        .unwrap_or_else(|| panic!("no policy of {volume}: {all}"))
}

on_both_dbs!(a_table_with_bad_entries_is_refused_whole_and_nothing_is_applied);

fn a_table_with_bad_entries_is_refused_whole_and_nothing_is_applied(db: Db) {
    let s = Setup::new(db);
    s.volume("db");
    s.volume("web");
    let t0 = s.target("t0");
    s.target("t1");
    let good = s.write_table(
        "good.toml",
        "[[policy]]\nvolume = \"db\"\ntarget = \"t0\"\nschedule = \"hourly\"\n",
    );
    s.ok(&["policy", "apply", &good]);
    let missing = s.base().join("no-such-repo").display().to_string();
    let bad_text = format!(
        r#"
[[policy]]              # 1: good
volume = "web"
target = "t0"
schedule = "daily"

[[policy]]              # 2: no such volume
volume = "nosuch"
target = "t0"
schedule = "daily"

[[policy]]              # 3: a schedule that does not parse
volume = "db"
target = "t0"
schedule = "mon 25:00"

[[policy]]              # 4: neither a URL nor a catalog target
volume = "db"
target = "nowhere"
schedule = "daily"

[[policy]]              # 5: a URL with no repository behind it
volume = "db"
target = "{missing}"
schedule = "daily"

[[policy]]              # 6: entry 1 again (t0 by its URL)
volume = "web"
target = "{t0}"
schedule = "hourly"

[[policy]]              # 7: a route nothing knows
volume = "db"
target = "t1"
schedule = "daily"
route = "nope"
"#
    );
    let bad = s.write_table("bad.toml", &bad_text);
    let o = s.run(&["policy", "apply", &bad]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for (n, why) in [
        (2, "volume: unknown volume \"nosuch\""),
        (3, "schedule:"),
        (4, "target: unknown target \"nowhere\""),
        (5, "cannot be backed up to now"),
        (6, "entry: duplicate of policy 1"),
        (7, "route: unknown route \"nope\""),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("policy {n} ")))
            .unwrap_or_else(|| panic!("entry {n} not named:\n{err}"));
        assert!(line.contains(why), "entry {n}: {line:?} lacks {why:?}");
    }
    assert!(
        !err.contains("policy 1 "),
        "the good entry was blamed:\n{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
    // Nothing of it applied: the table is still the good one.
    let all = s.policies();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(entry(&all, "db")["schedule"], "hourly");
    // A misspelt field is refused, named.
    let typo = s.write_table(
        "typo.toml",
        "[[policy]]\nvolume = \"db\"\ntarget = \"t0\"\nschedul = \"daily\"\n",
    );
    let o = s.run(&["policy", "apply", &typo]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("schedul"), "{}", stderr(&o));

    // The same through the API of a running daemon: 400 `invalid`, every bad entry listed,
    // nothing applied; a good table applied whole.
    let d = s.serve("a");
    let table: toml::Value = toml::from_str(&bad_text).unwrap();
    let body = serde_json::to_string(&table).unwrap();
    let (status, _) = d.http("PUT", "/api/v1/policies", false, &body);
    assert_eq!(status, 401);
    let (status, text) = d.http("PUT", "/api/v1/policies", true, &body);
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "invalid", "{v}");
    let named: Vec<u64> = v["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["entry"].as_u64().unwrap())
        .collect();
    assert_eq!(named, vec![2, 3, 4, 5, 6, 7], "{v}");
    let listed = d.json("/api/v1/policies");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let (status, text) = d.http("PUT", "/api/v1/policies", true, "{\"policy\": [1]}");
    assert_eq!(status, 400, "{text}");
    let good = json!({"policy": [
        {"volume": "web", "target": "t1", "schedule": "daily", "freeze": "session"},
        {"volume": "db", "target": "t0", "schedule": "hourly"},
    ]});
    let (status, text) = d.http("PUT", "/api/v1/policies", true, &good.to_string());
    assert_eq!(status, 200, "{text}");
    let all = s.policies();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!(entry(&all, "web")["freeze"], "session");
    assert!(entry(&all, "web")["next_run"].is_string(), "{all}");
}

/// The writes of the test's NBD client: write `i` fills block `(i * 37) % BLOCKS` with
/// pattern `i % 255 + 1`, so the image after any prefix of them is known.
fn block_of(i: u64) -> u64 {
    (i * 37) % BLOCKS
}

fn pattern_of(i: u64) -> u8 {
    (i % 255 + 1) as u8
}

/// What each block of an image holds: its pattern byte, or `None` if it is not uniform.
fn blocks(img: &[u8]) -> Vec<Option<u8>> {
    img.chunks(BLOCK as usize)
        .map(|b| b.iter().all(|x| *x == b[0]).then_some(b[0]))
        .collect()
}

/// The `k` for which `img` is the volume after exactly the first `k` writes (of `n`), if any.
fn prefix_of(img: &[Option<u8>], n: u64) -> Option<u64> {
    let mut state = vec![Some(0u8); BLOCKS as usize];
    if state == img {
        return Some(0);
    }
    for i in 0..n {
        state[block_of(i) as usize] = Some(pattern_of(i));
        if state == img {
            return Some(i + 1);
        }
    }
    None
}

#[test]
fn timer_backups_run_with_no_client_and_each_restores_to_the_volume_at_its_freeze() {
    let s = Setup::new(Db::Sqlite);
    s.volume("db");
    let t0 = s.target("t0");
    let d = s.serve("a");
    // Applied while the daemon runs: it picks the table up with no restart.
    let table = s.write_table(
        "table.toml",
        "[[policy]]\nvolume = \"db\"\ntarget = \"t0\"\nschedule = \"*:*:0/2\"\n",
    );
    s.ok(&["policy", "apply", &table]);
    // A real NBD client writes all along, in batches of sequential writes (each
    // acknowledged before the next), counting the writes done.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url) = (Arc::clone(&stop), d.url("db"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let cmds: Vec<String> = (n..n + 16)
                    .map(|i| {
                        format!(
                            "write -P {} {} {}",
                            pattern_of(i),
                            block_of(i) * BLOCK,
                            BLOCK
                        )
                    })
                    .collect();
                let mut c = Command::new("qemu-io");
                c.args(["-f", "raw", &url]);
                for cmd in &cmds {
                    c.args(["-c", cmd]);
                }
                let o = c.output().expect("qemu-io: run through scripts/test.sh");
                assert!(
                    o.status.success(),
                    "qemu-io: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                n += 16;
            }
            n
        })
    };
    // Three normal ends, with no `kura volume backup` issued.
    let done = wait_for(300, "three policy backups", || {
        let tasks = d.json("/api/v1/tasks?kind=volume-backup&state=succeeded");
        (tasks.as_array().unwrap().len() >= 3).then_some(tasks)
    });
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    for t in done.as_array().unwrap() {
        assert_eq!(t["subject"], "db", "{t}");
        assert!(
            t["started_by"].as_str().unwrap().starts_with("policy ("),
            "{t}"
        );
        let log = d.json(&format!("/api/v1/tasks/{}/log", t["id"].as_str().unwrap()));
        let text = log["lines"].to_string();
        assert!(text.contains("frozen by a backup session"), "{text}");
        assert!(text.contains("snapshot "), "{text}");
    }
    // Every snapshot is the volume as it was at one instant between two acknowledged
    // writes (its freeze), and they follow each other in time.
    let snaps = s.snapshots(&t0);
    assert!(snaps.len() >= 3, "{snaps:?}");
    let mut last = 0;
    let mut during = 0;
    for snap in &snaps {
        let id = snap["id"].as_str().unwrap();
        let img = s.restored(&t0, id);
        assert_eq!(img.len() as u64, VOLUME);
        let k = prefix_of(&blocks(&img), writes).unwrap_or_else(|| {
            panic!("snapshot {id} is not the volume after any prefix of the {writes} writes")
        });
        eprintln!("snapshot {id}: the volume after {k} of the {writes} writes");
        assert!(k >= last, "snapshot {id} is older than the one before it");
        last = k;
        if k > 0 && k < writes {
            during += 1;
        }
    }
    assert!(
        during >= 2,
        "fewer than two backups froze the volume mid-writing"
    );
    // The table reports the normal end and the next run; so do the metrics.
    let all = s.policies();
    let p = entry(&all, "db");
    assert_eq!(p["last"]["state"], "succeeded", "{p}");
    assert!(p["last"]["snapshot"].is_string(), "{p}");
    assert!(p["next_run"].is_string(), "{p}");
    let metrics = d.get("/metrics");
    assert!(
        metrics.contains("kura_policy_last_result{volume=\"db\",target=\"t0\"} 1"),
        "{metrics}"
    );
    let human = s.ok(&["policy", "list"]);
    assert!(human.contains("succeeded snapshot"), "{human}");
}

/// On PostgreSQL: the catalog several daemons share.
#[test]
fn a_policy_whose_target_is_down_records_an_abnormal_end_and_runs_again_when_it_returns() {
    let s = Setup::new(Db::Postgres);
    s.volume("web");
    let t1 = s.target("t1");
    let d = s.serve("a");
    let table = s.write_table(
        "table.toml",
        "[[policy]]\nvolume = \"web\"\ntarget = \"t1\"\nschedule = \"*:*:0/2\"\n",
    );
    s.ok(&["policy", "apply", &table]);
    let last = |state: &str| {
        let all = s.policies();
        let l = entry(&all, "web")["last"].clone();
        (l["state"] == state).then_some(l)
    };
    wait_for(120, "a first normal end", || last("succeeded"));
    // The target goes away: the next run ends abnormally, with the reason.
    let away = format!("{t1}.away");
    std::fs::rename(&t1, &away).unwrap();
    let failed = wait_for(120, "an abnormal end", || last("failed"));
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("t1"),
        "the reason names no target: {reason}"
    );
    let task = failed["task"].as_str().unwrap();
    let log = d.json(&format!("/api/v1/tasks/{task}/log"))["lines"].to_string();
    assert!(log.contains("task failed"), "{log}");
    let info = d.json(&format!("/api/v1/tasks/{task}"));
    assert_eq!(info["state"], "failed", "{info}");
    let metrics = d.get("/metrics");
    assert!(
        metrics.contains("kura_policy_last_result{volume=\"web\",target=\"t1\"} 0"),
        "{metrics}"
    );
    let human = s.ok(&["policy", "list"]);
    assert!(human.contains("failed:"), "{human}");
    // It returns: the next run succeeds.
    std::fs::rename(&away, &t1).unwrap();
    let ok = wait_for(120, "a normal end after the target returned", || {
        last("succeeded").filter(|l| l["due"].as_str() > failed["due"].as_str())
    });
    let snap = ok["snapshot"].as_str().unwrap();
    assert!(
        s.snapshots(&t1).iter().any(|x| x["id"] == snap),
        "snapshot {snap} is not in {t1}"
    );
    // The target's events tell it too.
    let events = s.ok(&["resource", "show", "t1"]);
    assert!(events.contains("policy backup failed"), "{events}");
}

/// A policy's route paces its uploads: a `[[traffic]]` rule naming the route as its path
/// limits the policy's backups (and nothing else limits them here).
#[test]
fn a_policy_route_paces_its_backups_by_the_routes_traffic_rules() {
    let s = Setup::new(Db::Sqlite);
    s.volume("db");
    s.target("t0");
    s.fill_incompressible("db", 0x9E37_79B9_7F4A_7C15);
    let config = s.write_table(
        "config.toml",
        "[[traffic]]\npath = \"slow\"\nupload = \"2MiB/s\"\n",
    );
    let d = s.serve_with("a", &["--config", &config]);
    let table = s.write_table(
        "table.toml",
        "[[policy]]\nvolume = \"db\"\ntarget = \"t0\"\nschedule = \"*:*:0/2\"\n\
         route = \"slow\"\n",
    );
    // The route is known from the rules of the process that applies the table.
    let o = s.run(&["policy", "apply", &table]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a route no rule names was accepted"
    );
    assert!(
        stderr(&o).contains("unknown route \"slow\""),
        "{}",
        stderr(&o)
    );
    s.ok(&["--config", &config, "policy", "apply", &table]);
    let task = wait_for(180, "a paced policy backup", || {
        let t = d.json("/api/v1/tasks?kind=volume-backup&state=succeeded");
        t.as_array().unwrap().first().cloned()
    });
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(task[k].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let took = Duration::from_millis((at("finished") - at("started")) as u64);
    // 8 MiB at 2 MiB/s, one second's worth of burst: at least 3 s.
    assert!(
        took >= Duration::from_millis(2900),
        "an 8 MiB backup over a 2 MiB/s route took {took:?}"
    );
}

/// Cancelling a running policy backup (the API's task cancel) stops its copy at once — its
/// uploads held back by a slow route included — with no snapshot, and loses nothing: the
/// next backup holds the whole volume.
#[test]
fn a_cancelled_policy_backup_stops_at_once_and_the_next_one_has_everything() {
    let s = Setup::new(Db::Sqlite);
    s.volume("db");
    let t0 = s.target("t0");
    let bytes = s.fill_incompressible("db", 0x2545_F491_4F6C_DD1D);
    // 8 MiB at 512 KiB/s: some 16 s of uploading.
    let config = s.write_table(
        "config.toml",
        "[[traffic]]\npath = \"slow\"\nupload = \"512KiB/s\"\n",
    );
    let d = s.serve_with("a", &["--config", &config]);
    let table = s.write_table(
        "table.toml",
        "[[policy]]\nvolume = \"db\"\ntarget = \"t0\"\nschedule = \"*:*:0/2\"\n\
         route = \"slow\"\n",
    );
    s.ok(&["--config", &config, "policy", "apply", &table]);
    let running = wait_for(60, "a policy backup copying", || {
        let t = d.json("/api/v1/tasks?kind=volume-backup&state=running");
        t.as_array()
            .unwrap()
            .iter()
            .find(|t| t["bytes_done"].as_u64().unwrap_or(0) > 0)
            .cloned()
    });
    std::thread::sleep(Duration::from_secs(2));
    let id = running["id"].as_str().unwrap().to_string();
    let asked = std::time::Instant::now();
    let (code, body) = d.http("POST", &format!("/api/v1/tasks/{id}/cancel"), true, "");
    assert_eq!(code, 202, "{body}");
    let ended = wait_for(30, "the cancelled backup to end", || {
        let t = d.json(&format!("/api/v1/tasks/{id}"));
        (t["state"] != "running").then_some(t)
    });
    let took = asked.elapsed();
    let log = d.json(&format!("/api/v1/tasks/{id}/log"))["lines"].to_string();
    assert!(
        took < Duration::from_secs(5),
        "the cancel took {took:?}: {ended} {log}"
    );
    assert_ne!(ended["state"], "succeeded", "{ended}");
    assert!(log.contains("the copy stops at its next block"), "{log}");
    // The next backup (any later one) holds the whole volume as written.
    let done = wait_for(120, "a later policy backup", || {
        let t = d.json("/api/v1/tasks?kind=volume-backup&state=succeeded");
        t.as_array().unwrap().first().cloned()
    });
    let snaps = s.snapshots(&t0);
    assert_eq!(
        snaps.len(),
        1,
        "the cancelled backup made a snapshot: {snaps:?} ({done})"
    );
    let img = s.restored(&t0, snaps[0]["id"].as_str().unwrap());
    assert!(
        img == bytes,
        "the restored volume differs from what was written"
    );
}
