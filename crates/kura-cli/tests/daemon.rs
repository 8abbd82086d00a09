//! The daemon as an operator runs it: `kura serve` with a real catalog (SQLite, and
//! PostgreSQL for several daemons), real local targets and real backups. Scheduled runs
//! happen by themselves, each occurrence once however many daemons share the catalog; the
//! API answers in JSON, refuses bad tokens without a word more, and a daemon killed mid-run
//! leaves a claim the others record as expired.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use catalog_common::{Db, Fresh, fresh};
use common::http::{Served, request, wait_for};
use common::{pseudo_random, write};

struct Setup {
    f: Fresh,
    src: PathBuf,
    target: PathBuf,
}

impl Setup {
    fn new(db: Db) -> Setup {
        let f = fresh(db);
        let base = f._dir.path().to_path_buf();
        let s = Setup {
            src: base.join("src"),
            target: base.join("t0"),
            f,
        };
        s.ok(&[
            "-r",
            s.target.to_str().unwrap(),
            "init",
            "--kdf-memory-kib",
            "64",
        ]);
        if matches!(db, Db::Postgres) {
            s.ok(&["resource", "add", "worker", "w", "--slots", "8"]);
            s.ok(&["resource", "add", "path", "p", "--slots", "8"]);
        }
        s.ok(&[
            "resource",
            "add",
            "target",
            "t0",
            s.target.to_str().unwrap(),
        ]);
        if matches!(db, Db::Postgres) {
            s.ok(&["resource", "route", "w", "p", "t0"]);
        }
        for i in 0..3u64 {
            write(&s.src.join(format!("f{i}")), &pseudo_random(256 << 10, i));
        }
        s
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.f.url)
            .env("KURA_PASSWORD", "pw")
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_PASSWORD_FILE")
            .env_remove("KURA_CONFIG")
            .env("XDG_CONFIG_HOME", self.f._dir.path().join("no-config"))
            .env("KURA_CLAIM_LEASE", "3s")
            .env("KURA_CLAIM_RENEW", "1s")
            .env("KURA_LEASE", "5s")
            .env("KURA_LEASE_RENEW", "1s");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd().args(args).output().unwrap();
        assert!(
            o.status.success(),
            "kura {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `kura job add NAME` of the source tree onto one target, with `extra` arguments.
    fn add_job(&self, name: &str, extra: &[&str]) {
        let src = self.src.to_str().unwrap();
        let mut args = vec!["job", "add", name, "--object", src, "--redundancy", "1"];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    fn token(&self, name: &str) -> String {
        self.ok(&["-q", "token", "create", name]).trim().to_string()
    }

    fn serve(&self, name: &str) -> Daemon {
        self.serve_with(name, &[])
    }

    fn serve_with(&self, name: &str, extra: &[&str]) -> Daemon {
        self.spawn(self.cmd(), name, extra)
    }

    /// `kura serve` with a config file holding `toml`.
    fn serve_config(&self, name: &str, toml: &str) -> Daemon {
        let config = self.f._dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let mut cmd = self.cmd();
        cmd.env("KURA_CONFIG", &config);
        self.spawn(cmd, name, &[])
    }

    fn spawn(&self, mut cmd: Command, name: &str, extra: &[&str]) -> Daemon {
        let state = self.f._dir.path().join(format!("state-{name}"));
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--name", name])
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
        Daemon {
            child: Served(child),
            addr: url.trim_start_matches("http://").to_string(),
        }
    }
}

struct Daemon {
    child: Served,
    addr: String,
}

impl Daemon {
    /// One HTTP/1.1 request; the status and the body.
    fn http(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        request(&self.addr, method, path, token, "")
    }

    fn json(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.http("GET", path, Some(token));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }
}

fn count(v: &Value, key: &str, value: &str) -> usize {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|x| x[key] == value)
        .count()
}

#[test]
fn scheduled_runs_happen_by_themselves_and_the_api_answers_in_json() {
    let s = Setup::new(Db::Sqlite);
    let src = s.src.to_str().unwrap().to_string();
    s.add_job("often", &["--schedule", "*:*:0/3"]);
    s.add_job("manual", &[]);
    // A schedule nothing can run is refused when the job is added (exit 2, naming it).
    let o = s
        .cmd()
        .args([
            "job",
            "add",
            "bad",
            "--object",
            &src,
            "--schedule",
            "mon 25:00",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--schedule") && err.contains("\"25\""),
        "{err}"
    );
    // `job list` shows each job's next run.
    let list: Value = serde_json::from_str(&s.ok(&["--json", "job", "list"])).unwrap();
    let next = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap()["next_run"]
            .clone()
    };
    assert!(next("often").is_string(), "{list}");
    assert_eq!(next("manual"), Value::Null, "{list}");
    assert!(!s.ok(&["job", "list"]).contains("invalid schedule"));
    let token = s.token("ops");
    // Bad daemon settings are usage errors (exit 2) that say what to do.
    for (args, says) in [
        (&["--listen", "0.0.0.0:0"][..], "loopback"),
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--timezone", "Mars/Olympus"][..], "time zone"),
    ] {
        let state = s.f._dir.path().join("state-bad");
        let o = s
            .cmd()
            .arg("serve")
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!state.exists(), "{args:?}: the state directory was made");
    }
    let d = s.serve("d1");

    // Two scheduled runs happen with nobody asking, each recorded once.
    let runs = wait_for(40, "two scheduled runs", || {
        let t = d.json("/api/v1/tasks?kind=job-run&subject=often", &token);
        (count(&t, "state", "succeeded") >= 2).then_some(t)
    });
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|t| t["started_by"].as_str().unwrap().starts_with("schedule (")),
        "{runs}"
    );
    let occ = d.json("/api/v1/jobs/often/occurrences", &token);
    let dues: Vec<&str> = occ
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["due"].as_str().unwrap())
        .collect();
    let mut uniq = dues.clone();
    uniq.dedup();
    assert_eq!(dues, uniq, "an occurrence recorded twice: {occ}");
    let backups = serde_json::from_str::<Value>(&s.ok(&["--json", "backups"])).unwrap();
    assert!(backups.as_array().unwrap().len() >= 2, "{backups}");

    // Jobs show their next run; a job without a schedule has none.
    let jobs = d.json("/api/v1/jobs", &token);
    let often = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "often")
        .unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(often["next_run"].as_str().unwrap()).unwrap();
    assert!(
        next > chrono::Utc::now() - chrono::Duration::seconds(1),
        "{often}"
    );
    let manual = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "manual")
        .unwrap();
    assert_eq!(manual["next_run"], Value::Null);

    // An on-demand run through the API: 202 with its task, followed to the end.
    let (status, body) = d.http("POST", "/api/v1/jobs/manual/run", Some(&token));
    assert_eq!(status, 202, "{body}");
    let task: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(task["started_by"], "api:ops");
    let id = task["id"].as_str().unwrap().to_string();
    let (status, events) = d.http("GET", &format!("/api/v1/tasks/{id}/follow"), Some(&token));
    assert_eq!(status, 200);
    assert!(events.contains("event: line"), "{events}");
    let end = events
        .split("event: end\ndata: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no end event: {events}"));
    let end: Value = serde_json::from_str(end.lines().next().unwrap()).unwrap();
    assert_eq!(end["state"], "succeeded", "{end}");
    let log = d.json(&format!("/api/v1/tasks/{id}/log"), &token);
    assert!(log["lines"].as_array().unwrap().len() >= 2, "{log}");

    // Refusals: JSON with a stable code; a bad token is not echoed.
    let (status, body) = d.http("GET", "/api/v1/jobs", None);
    assert_eq!(status, 401, "{body}");
    let bad = "kura_0000000000000000000000000000000000000000000000000000000000000000";
    let (status, body) = d.http("GET", "/api/v1/jobs", Some(bad));
    assert_eq!(status, 401);
    assert!(!body.contains(bad), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let (status, body) = d.http("GET", "/api/v1/tasks/nope", Some(&token));
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "not_found"
    );
    let (status, body) = d.http("POST", "/api/v1/jobs/nope/run", Some(&token));
    assert_eq!((status, body.contains("not_found")), (404, true), "{body}");
    let (status, _) = d.http("GET", "/api/v1/tasks?state=sleeping", Some(&token));
    assert_eq!(status, 400);
    // A revoked token stops working (within the daemon's short cache).
    s.ok(&["token", "revoke", "ops"]);
    wait_for(10, "the revoked token to be refused", || {
        (d.http("GET", "/api/v1/jobs", Some(&token)).0 == 401).then_some(())
    });
    let token = s.token("ops2");

    // The OpenAPI document and the health check need no token; metrics do.
    let (status, body) = d.http("GET", "/api/v1/openapi.json", None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc["paths"]["/api/v1/jobs/{name}/run"]["post"].is_object(),
        "{doc}"
    );
    let (status, body) = d.http("GET", "/api/v1/health", None);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["catalog"],
        "ok"
    );
    let (status, metrics) = d.http("GET", "/metrics", Some(&token));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("kura_job_runs_total{job=\"often\",result=\"succeeded\"}"),
        "{metrics}"
    );

    // SIGTERM: the daemon stops cleanly.
    let mut d = d;
    d.signal(libc::SIGTERM);
    let t = Instant::now();
    let st = d.child.0.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());

    // Occurrences that fell due while no daemon ran: the newest runs, the older are
    // recorded missed with the reason (catch-up `one`).
    std::thread::sleep(Duration::from_secs(7));
    let d = s.serve("d1");
    let occ = wait_for(20, "a missed occurrence recorded", || {
        let o = d.json("/api/v1/jobs/often/occurrences", &token);
        (count(&o, "state", "missed") >= 1).then_some(o)
    });
    let missed = occ
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["state"] == "missed")
        .unwrap();
    assert!(
        missed["reason"].as_str().unwrap().contains("no daemon ran"),
        "{missed}"
    );
}

#[test]
fn three_daemons_on_one_catalog_fire_each_occurrence_once_and_outlive_a_kill() {
    let s = Setup::new(Db::Postgres);
    // Each run takes about 2 s (its pre hook), so a kill lands mid-run.
    s.add_job("often", &["--schedule", "*:*:0/4", "--pre", "sleep 2"]);
    let token = s.token("ops");
    let ds: Vec<Daemon> = ["a", "b", "c"].iter().map(|n| s.serve(n)).collect();
    let started = Instant::now();
    // Wait until some daemon runs an occurrence, then kill -9 that daemon.
    let victim = wait_for(30, "a run in progress", || {
        ds.iter().position(|d| {
            let t = d.json("/api/v1/tasks?kind=job-run&state=running", &token);
            !t.as_array().unwrap().is_empty()
        })
    });
    ds[victim].signal(libc::SIGKILL);
    let survivor = (victim + 1) % 3;
    // Its claim is recorded expired once its lease (3 s here) lapses, and later occurrences
    // still run on the others.
    wait_for(40, "an expired claim and a later success", || {
        let o = ds[survivor].json("/api/v1/jobs/often/occurrences?limit=1000", &token);
        let v = o.as_array().unwrap();
        let expired = v.iter().position(|x| x["state"] == "expired")?;
        // Newest first: a success newer than the expired one.
        v[..expired]
            .iter()
            .any(|x| x["state"] == "succeeded")
            .then_some(())
    });
    assert!(started.elapsed() < Duration::from_secs(90));
    // Stop the survivors (their runs in progress are cancelled, and so recorded failed),
    // then look from a daemon that schedules nothing.
    for (i, d) in ds.iter().enumerate() {
        if i != victim {
            d.signal(libc::SIGTERM);
        }
    }
    let mut ds = ds;
    for d in &mut ds {
        let _ = d.child.0.wait();
    }
    let q = s.serve_with("q", &["--no-scheduler"]);
    let occ = q.json("/api/v1/jobs/often/occurrences?limit=1000", &token);
    let v = occ.as_array().unwrap();
    let mut dues: Vec<&str> = v.iter().map(|o| o["due"].as_str().unwrap()).collect();
    let n = dues.len();
    dues.sort();
    dues.dedup();
    assert_eq!(dues.len(), n, "an occurrence claimed twice: {occ}");
    let expired: Vec<&Value> = v.iter().filter(|x| x["state"] == "expired").collect();
    assert_eq!(expired.len(), 1, "{occ}");
    assert_eq!(
        expired[0]["daemon"],
        ["a", "b", "c"][victim],
        "the expired claim is the killed daemon's: {occ}"
    );
    assert!(v.iter().all(|x| x["state"] != "started"), "{occ}");
    // One run in the catalog per occurrence that succeeded: nothing ran twice.
    let show: Value =
        serde_json::from_str(&s.ok(&["--json", "job", "show", "often", "--runs", "1000"])).unwrap();
    let runs_ok = count(&show["runs"], "state", "succeeded");
    assert_eq!(
        runs_ok,
        count(&occ, "state", "succeeded"),
        "{show} against {occ}"
    );
    assert!(runs_ok >= 1);
    // Nobody leads: whichever daemon claimed first ran it.
    let ran_on: std::collections::BTreeSet<&str> = v
        .iter()
        .filter(|x| x["state"] == "succeeded")
        .map(|x| x["daemon"].as_str().unwrap())
        .collect();
    assert!(!ran_on.contains("q"), "{occ}");
}

/// With a daemon configured, `kura job run` is a client: the run is the daemon's task (its
/// log printed as it goes, the exit code its result), `kura task` lists and shows it, and
/// the token never appears in what either side prints. Without one, it runs in process.
#[test]
fn with_a_daemon_configured_the_cli_runs_jobs_as_its_tasks() {
    let s = Setup::new(Db::Sqlite);
    s.add_job("nightly", &[]);
    let token = s.token("ops");
    let d = s.serve_with("cli", &["--no-scheduler"]);
    let url = format!("http://{}", d.addr);
    let client = |args: &[&str], token: &str| {
        let o = s
            .cmd()
            .env("KURA_DAEMON", &url)
            .env("KURA_TOKEN", token)
            .args(args)
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(
            !out.contains(token) && !err.contains(token),
            "the token was printed: {out}{err}"
        );
        (o.status.code(), out, err)
    };

    let (code, out, err) = client(&["job", "run", "nightly"], &token);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("on the daemon at"), "{out}");
    assert!(
        out.contains("backing up"),
        "the task's log is printed: {out}"
    );
    // Line by line, each once (not the API's JSON page, not again at each poll).
    assert_eq!(out.matches("backing up").count(), 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.ends_with("backing up")
                || l.contains("backing up ") && !l.contains("\"lines\"")),
        "{out}"
    );
    assert!(!out.contains("\"lines\""), "{out}");
    let tasks = d.json("/api/v1/tasks?kind=job-run", &token);
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
    let task = &tasks[0];
    assert_eq!(task["subject"], "nightly");
    assert_eq!(task["state"], "succeeded");
    assert_eq!(task["started_by"], "api:ops");
    let id = task["id"].as_str().unwrap().to_string();

    // kura task: list, show, log.
    let (code, out, _) = client(&["--json", "task", "list", "--subject", "nightly"], &token);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    let (_, out, _) = client(&["--json", "task", "show", &id], &token);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "succeeded"
    );
    let (_, log, _) = client(&["task", "log", &id], &token);
    assert!(log.contains("snapshot"), "{log}");
    assert!(!log.contains("\"lines\""), "{log}");

    // Errors have their exit codes: an unknown job, a refused token, no daemon there.
    let (code, _, err) = client(&["job", "run", "nope"], &token);
    assert_eq!(code, Some(13), "{err}");
    let (code, _, err) = client(&["job", "run", "nightly"], "kura_0000");
    assert_eq!(code, Some(18), "{err}");
    let o = s
        .cmd()
        .env("KURA_DAEMON", "http://127.0.0.1:9")
        .env("KURA_TOKEN", &token)
        .args(["job", "run", "nightly"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(17),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The daemon's log and task logs never hold the token either.
    let state = s.f._dir.path().join("state-cli");
    for e in walk(&state) {
        let text = std::fs::read(&e).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains(&token),
            "{} holds the token",
            e.display()
        );
    }

    // An empty KURA_DAEMON: in process, no new task in the daemon, a second backup.
    let o = s
        .cmd()
        .env("KURA_DAEMON", "")
        .args(["job", "run", "nightly"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tasks = d.json("/api/v1/tasks?kind=job-run", &token);
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
    let backups: Value = serde_json::from_str(&s.ok(&["--json", "backups"])).unwrap();
    assert_eq!(backups.as_array().unwrap().len(), 2, "{backups}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A TCP relay in front of the catalog's PostgreSQL, which the test can cut (every
/// connection, and every new one, reset at once) and mend: the catalog going away and coming
/// back, as a network partition would make it, without stopping a server others share.
struct Relay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(upstream: String) -> Relay {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        {
            let (cut, live) = (cut.clone(), live.clone());
            std::thread::spawn(move || {
                // Cut: shut every open connection down.
                let mut was = false;
                loop {
                    let now = cut.load(Ordering::SeqCst);
                    if now && !was {
                        for s in live.lock().unwrap().drain(..) {
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    was = now;
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        let cut2 = cut.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                if cut2.load(Ordering::SeqCst) {
                    drop(c); // refused, in effect: closed at once
                    continue;
                }
                let Ok(u) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut l2 = live.lock().unwrap();
                l2.push(c.try_clone().unwrap());
                l2.push(u.try_clone().unwrap());
                drop(l2);
                for (mut from, mut to) in [(c.try_clone().unwrap(), u.try_clone().unwrap()), (u, c)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, cut }
    }

    fn set_cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The catalog going away under a running daemon: it keeps serving what it can (health,
/// its tasks, callers whose token it checked before), says so in `/api/v1/health` and
/// `/metrics`, runs nothing it cannot claim, and resumes by itself when the catalog is back.
#[test]
fn a_daemon_whose_catalog_goes_away_says_so_keeps_serving_and_resumes() {
    let mut s = Setup::new(Db::Postgres);
    // The daemon reaches the catalog through the relay; the test's own commands directly.
    let direct = s.f.url.clone();
    let hostport = direct
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();
    let relay = Relay::start(hostport.clone());
    s.add_job("often", &["--schedule", "*:*:0/2"]);
    let token = s.token("ops");
    let relayed = direct.replace(&hostport, &format!("127.0.0.1:{}", relay.port));
    s.f.url = relayed;
    let d = s.serve("r");
    s.f.url = direct;
    let succeeded = |d: &Daemon| {
        let occ = d.json("/api/v1/jobs/often/occurrences", &token);
        count(&occ, "state", "succeeded")
    };
    wait_for(60, "a scheduled run", || (succeeded(&d) >= 1).then_some(()));
    let health = |d: &Daemon| {
        let (status, body) = d.http("GET", "/api/v1/health", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert_eq!(health(&d)["catalog"], "ok");
    // The inventory's health and use are in the metrics.
    let (_, m) = d.http("GET", "/metrics", Some(&token));
    assert!(
        m.contains("kura_resource_usable{kind=\"target\",resource=\"t0\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kura_resource_in_use{kind=\"target\",resource=\"t0\"}"),
        "{m}"
    );

    relay.set_cut(true);
    let h = wait_for(60, "health to say the catalog is unreachable", || {
        let h = health(&d);
        (h["catalog"] == "unreachable").then_some(h)
    });
    assert_eq!(h["status"], "degraded", "{h}");
    // A caller whose token was checked before is still served: the metrics say it, and the
    // tasks (kept on the daemon's disk) are listed.
    let (status, m) = d.http("GET", "/metrics", Some(&token));
    assert_eq!(status, 200, "{m}");
    assert!(m.contains("kura_catalog_up 0"), "{m}");
    let tasks = d.json("/api/v1/tasks", &token);
    assert!(!tasks.as_array().unwrap().is_empty(), "{tasks}");
    // What needs the catalog is refused as unavailable (503), not as a bad token.
    let (status, body) = d.http("GET", "/api/v1/jobs/often/occurrences", Some(&token));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"unavailable\""), "{body}");
    // Nothing starts while the catalog is away: no run it could not claim.
    wait_for(60, "a run in flight at the cut to end", || {
        let r = d.json("/api/v1/tasks?state=running", &token);
        r.as_array().unwrap().is_empty().then_some(())
    });
    let n = d.json("/api/v1/tasks", &token).as_array().unwrap().len();
    std::thread::sleep(Duration::from_secs(5));
    let tasks = d.json("/api/v1/tasks", &token);
    assert_eq!(
        tasks.as_array().unwrap().len(),
        n,
        "a run started unclaimed: {tasks}"
    );

    relay.set_cut(false);
    wait_for(60, "health to see the catalog again", || {
        (health(&d)["catalog"] == "ok").then_some(())
    });
    let before = succeeded(&d);
    wait_for(60, "a scheduled run after the catalog came back", || {
        (succeeded(&d) > before).then_some(())
    });
    let (_, m) = d.http("GET", "/metrics", Some(&token));
    assert!(m.contains("kura_catalog_up 1"), "{m}");
}

/// The daemon probes every target on a timer: one that dies is marked not usable before a
/// run meets it, and one that comes back is usable again without anyone probing by hand.
#[test]
fn the_daemon_sweeps_target_health_on_a_timer() {
    let s = Setup::new(Db::Sqlite);
    // Below a directory that is not there (an unmounted share): not usable, and nothing
    // is created there by the probes.
    let gone = s.f._dir.path().join("mnt/nas/repo");
    s.ok(&["resource", "add", "target", "gone", gone.to_str().unwrap()]);
    let state = |name: &str| -> Value {
        let list: Value = serde_json::from_str(&s.ok(&["--json", "resource", "list"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    let _d = s.serve_config("d", "[daemon]\nhealth_every = \"1s\"\n");
    let down = wait_for(30, "the missing target marked not usable", || {
        let r = state("gone");
        (r["state"] != "usable").then_some(r)
    });
    assert!(down["errors"].as_i64().unwrap() >= 3, "{down}");
    assert!(down["last_error"].as_str().is_some(), "{down}");
    assert!(!s.f._dir.path().join("mnt").exists());
    let t0 = state("t0");
    assert_eq!(
        (&t0["state"], &t0["errors"]),
        (&json!("usable"), &json!(0)),
        "{t0}"
    );
    // It comes back (a repository there now): the next sweeps put it back.
    s.ok(&[
        "-r",
        gone.to_str().unwrap(),
        "init",
        "--kdf-memory-kib",
        "64",
    ]);
    let up = wait_for(30, "the target usable again", || {
        let r = state("gone");
        (r["state"] == "usable").then_some(r)
    });
    assert_eq!(up["errors"], 0, "{up}");
}
