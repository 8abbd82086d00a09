//! Backup windows as an operator meets them: `kura serve` with an upload limit
//! (`--limit-upload`, so runs are slow deterministically), real local targets, a real
//! catalog. The overlap policies `queue` and `cancel-older` do what they say; a run that
//! cannot start within `start-within` is recorded missed with the reason; a window's end
//! cancels a run cleanly (no snapshot, the repository checks clean) and a first backup too
//! large for one window completes over several, reusing what each uploaded; `finish` runs
//! on and reports the overrun, warned of before half the window had passed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use serde_json::Value;

#[path = "../../kura-catalog/tests/common/mod.rs"]
mod catalog_common;
mod common;

use catalog_common::{Db, Fresh, fresh};
use common::http::{Served, request, wait_for};
use common::{assert_same_tree, pseudo_random, write};

const MIB: usize = 1 << 20;

struct Setup {
    f: Fresh,
    src: PathBuf,
    target: PathBuf,
    config: PathBuf,
    events: PathBuf,
}

impl Setup {
    /// A catalog, one target (1 MiB packs, so uploads are acknowledged often), a source of
    /// `files` pseudo-random files of `size` bytes, and a config file: small read-ahead
    /// buffers, and a notification hook appending each event to `events`.
    fn new(files: u64, size: usize) -> Setup {
        Setup::build(files, size, 1, "")
    }

    /// [`new`](Self::new) with `targets` targets (t0, t1, …) forming a mirror group, and
    /// `extra` appended to the config file.
    fn build(files: u64, size: usize, targets: usize, extra: &str) -> Setup {
        let f = fresh(Db::Sqlite);
        let base = f._dir.path().to_path_buf();
        let events = base.join("events");
        let config = base.join("kura.toml");
        std::fs::write(
            &config,
            format!(
                "[backup]\nmemory_mib = 8\n\n[daemon]\nnotify = \"echo \\\"$KURA_EVENT|$KURA_JOB|$KURA_REASON\\\" >> {}\"\n{extra}",
                events.display()
            ),
        )
        .unwrap();
        let s = Setup {
            src: base.join("src"),
            target: base.join("t0"),
            config,
            events,
            f,
        };
        let all: Vec<String> = (0..targets)
            .map(|i| base.join(format!("t{i}")).display().to_string())
            .collect();
        let mut init = vec!["-r", all[0].as_str()];
        for t in &all[1..] {
            init.extend(["--mirror", t.as_str()]);
        }
        init.extend(["init", "--kdf-memory-kib", "64", "--pack-size-mib", "1"]);
        s.ok(&init);
        for (i, t) in all.iter().enumerate() {
            s.ok(&["resource", "add", "target", &format!("t{i}"), t]);
        }
        for i in 0..files {
            write(&s.src.join(format!("f{i}")), &pseudo_random(size, 100 + i));
        }
        s
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.f.url)
            .env("KURA_PASSWORD", "pw")
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_PASSWORD_FILE")
            .env("KURA_CONFIG", &self.config)
            .env("KURA_CLAIM_LEASE", "5s")
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

    fn add_job(&self, name: &str, extra: &[&str]) {
        let src = self.src.to_str().unwrap();
        let mut args = vec!["job", "add", name, "--object", src, "--redundancy", "1"];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    fn repo(&self, args: &[&str]) -> String {
        let mut a = vec!["-r", self.target.to_str().unwrap()];
        a.extend_from_slice(args);
        self.ok(&a)
    }

    /// `kura --limit-upload RATE serve`.
    fn serve(&self, name: &str, rate: &str) -> Daemon {
        let state = self.f._dir.path().join(format!("state-{name}"));
        let mut child = self
            .cmd()
            .args(["--limit-upload", rate, "serve", "--listen", "127.0.0.1:0"])
            .args(["--name", name, "--state-dir"])
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
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = self
            .ok(&["-q", "token", "create", &format!("{name}-{n}")])
            .trim()
            .to_string();
        Daemon {
            child: Served(child),
            addr: url.trim_start_matches("http://").to_string(),
            token,
        }
    }

    fn events(&self) -> String {
        std::fs::read_to_string(&self.events).unwrap_or_default()
    }
}

struct Daemon {
    child: Served,
    addr: String,
    token: String,
}

impl Daemon {
    fn get(&self, path: &str) -> Value {
        let (status, body) = request(&self.addr, "GET", path, Some(&self.token), "");
        assert_eq!(status, 200, "GET {path}: {body}");
        if path == "/metrics" {
            return Value::String(body);
        }
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn tasks(&self, job: &str) -> Vec<Value> {
        let t = self.get(&format!(
            "/api/v1/tasks?kind=job-run&subject={job}&limit=1000"
        ));
        let mut v = t.as_array().unwrap().clone();
        v.reverse(); // oldest first
        v
    }

    fn occurrences(&self, job: &str) -> Vec<Value> {
        let o = self.get(&format!("/api/v1/jobs/{job}/occurrences?limit=1000"));
        let mut v = o.as_array().unwrap().clone();
        v.reverse();
        v
    }

    fn log(&self, task: &str) -> Vec<String> {
        self.get(&format!("/api/v1/tasks/{task}/log"))["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    }

    fn stop(self) {
        self.child.stop();
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// The scheduled time a task's `started_by` names (`schedule (RFC3339)`).
fn due_of(task: &Value) -> DateTime<Utc> {
    let by = task["started_by"].as_str().unwrap();
    let t = by
        .strip_prefix("schedule (")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not scheduled: {by}"));
    DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
}

/// The first log line containing `needle`, with its time.
fn logged(lines: &[String], needle: &str) -> Option<(DateTime<Utc>, String)> {
    lines.iter().find(|l| l.contains(needle)).map(|l| {
        let (t, _) = l.split_once(' ').unwrap();
        (
            DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc),
            l.clone(),
        )
    })
}

fn du(dir: &Path) -> u64 {
    common::walkdir(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn overlap_queue_runs_a_waiting_occurrence_after_the_previous_run() {
    let s = Setup::new(2, 64 << 10);
    // Each run takes over 4 s (its pre hook); one falls due every 3 s.
    s.add_job(
        "q",
        &[
            "--schedule",
            "*:*:0/3",
            "--pre",
            "sleep 4",
            "--overlap",
            "queue",
        ],
    );
    let d = s.serve("d", "0");
    let tasks = wait_for(90, "three runs that succeeded", || {
        let t = d.tasks("q");
        (t.iter().filter(|t| t["state"] == "succeeded").count() >= 3).then_some(t)
    });
    // Never two at once, and a queued occurrence ran once the run before it ended: it
    // started well after it fell due, and after its predecessor finished.
    let mut waited = 0;
    for w in tasks.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a["finished"].is_null() {
            continue;
        }
        let (end_a, start_b) = (time(&a["finished"]), time(&b["started"]));
        assert!(end_a <= start_b, "overlapping runs: {a} and {b}");
        if (start_b - due_of(b)).num_milliseconds() > 1000 {
            waited += 1;
        }
    }
    assert!(waited >= 1, "no run waited for its predecessor: {tasks:#?}");
    // Every occurrence ran (or was replaced by a newer one while it waited), none skipped
    // for the run in its way.
    for o in d.occurrences("q") {
        let reason = o["reason"].as_str().unwrap_or("");
        assert!(
            o["state"] != "skipped" || reason.contains("newer occurrence"),
            "{o}"
        );
    }
}

#[test]
fn overlap_cancel_older_cancels_the_running_run_for_the_new_one() {
    // 8 MiB at 256 KiB/s: 32 s a run; one falls due every 6 s.
    let s = Setup::new(8, MIB);
    s.add_job("c", &["--schedule", "*:*:0/6", "--overlap", "cancel-older"]);
    let d = s.serve("d", "256KiB");
    let tasks = wait_for(90, "two runs cancelled by newer ones", || {
        let t = d.tasks("c");
        (t.iter().filter(|t| t["state"] == "cancelled").count() >= 2).then_some(t)
    });
    for t in tasks.iter().filter(|t| t["state"] == "cancelled") {
        let e = t["error"].as_str().unwrap();
        assert!(
            e.contains("replaced by its occurrence due at") && e.contains("cancel-older"),
            "{t}"
        );
    }
    // Its replacement started once it had ended.
    for w in tasks.windows(2) {
        if w[0]["state"] == "cancelled" {
            assert!(time(&w[0]["finished"]) <= time(&w[1]["started"]), "{w:?}");
        }
    }
    let occ = d.occurrences("c");
    let cancelled: Vec<&Value> = occ.iter().filter(|o| o["state"] == "cancelled").collect();
    assert!(cancelled.len() >= 2, "{occ:#?}");
    assert!(
        cancelled
            .iter()
            .all(|o| o["reason"].as_str().unwrap().contains("replaced")),
        "{occ:#?}"
    );
    // Cancelled runs made no snapshot.
    d.stop();
    let snaps: Value = serde_json::from_str(&s.repo(&["--json", "snapshots"])).unwrap();
    assert!(snaps.as_array().unwrap().is_empty(), "{snaps}");
}

#[test]
fn a_run_that_cannot_start_within_its_start_window_is_recorded_missed() {
    let s = Setup::new(1, 4096);
    // Runs take 6 s; the next occurrence waits behind it, but may start only 1 s late.
    s.add_job(
        "m",
        &[
            "--schedule",
            "*:*:0/3",
            "--pre",
            "sleep 6",
            "--overlap",
            "queue",
            "--start-within",
            "1s",
        ],
    );
    let d = s.serve("d", "0");
    let missed = wait_for(60, "a missed occurrence", || {
        d.occurrences("m")
            .into_iter()
            .find(|o| o["state"] == "missed")
    });
    let reason = missed["reason"].as_str().unwrap();
    assert!(
        reason.contains("start-within 1s") && reason.contains("waiting behind its previous run"),
        "{missed}"
    );
    // The hook heard of it.
    wait_for(10, "the missed event", || {
        s.events()
            .contains("missed|m|not started within")
            .then_some(())
    });
    // A run due while nothing was in its way still ran.
    assert!(
        d.occurrences("m")
            .iter()
            .any(|o| o["state"] == "succeeded" || o["state"] == "started"),
        "{:#?}",
        d.occurrences("m")
    );
}

#[test]
fn a_run_whose_targets_stay_busy_waits_within_its_start_window_then_is_missed() {
    let s = Setup::new(1, 4096);
    // Another manager (an in-process `kura job run`) holds the one target for 12 s.
    let held = s.f._dir.path().join("held");
    s.add_job(
        "hog",
        &["--pre", &format!("touch {}; sleep 12", held.display())],
    );
    // Both fall due while it holds it: `m` may wait 2 s, `w` 40 s.
    s.add_job("m", &["--schedule", "*:*:0/5", "--start-within", "2s"]);
    s.add_job("w", &["--schedule", "*:*:0/5", "--start-within", "40s"]);
    let mut hog = s.cmd().args(["job", "run", "hog"]).spawn().unwrap();
    wait_for(30, "the other run to hold the target", || {
        held.exists().then_some(())
    });
    let d = s.serve("d", "0");
    let missed = wait_for(30, "a missed occurrence of m", || {
        d.occurrences("m")
            .into_iter()
            .find(|o| o["state"] == "missed")
    });
    let reason = missed["reason"].as_str().unwrap();
    assert!(
        reason.contains("start-within 2s") && reason.contains("busy"),
        "{missed}"
    );
    assert!(
        reason.contains("t0"),
        "the reason names the target: {missed}"
    );
    wait_for(10, "the missed event", || {
        s.events()
            .contains("missed|m|not started within")
            .then_some(())
    });
    // `w` waited for the target instead, and ran once it was free.
    let ran = wait_for(60, "w to run after waiting", || {
        d.occurrences("w")
            .into_iter()
            .find(|o| o["state"] == "succeeded")
    });
    assert!(hog.wait().unwrap().success());
    let task = d
        .tasks("w")
        .into_iter()
        .find(|t| t["state"] == "succeeded")
        .unwrap();
    let lines = d.log(task["id"].as_str().unwrap());
    assert!(
        logged(&lines, "for its targets").is_some(),
        "{ran}: {lines:#?}"
    );
    // Nothing of `w` was recorded missed while the target was busy.
    assert!(
        d.occurrences("w")
            .iter()
            .all(|o| o["state"] != "missed" && o["state"] != "failed"),
        "{:#?}",
        d.occurrences("w")
    );
}

#[test]
fn a_window_cancels_cleanly_and_a_large_first_backup_completes_over_several_windows() {
    // 10 MiB at 512 KiB/s: 20 s of uploading, in windows of 6 s every 10 s.
    let s = Setup::new(10, MIB);
    let data = 10 * MIB as u64;
    s.add_job(
        "big",
        &[
            "--schedule",
            "*:*:0/10",
            "--finish-within",
            "6s",
            "--at-window-end",
            "cancel",
        ],
    );
    let show: Value = serde_json::from_str(&s.ok(&["--json", "job", "show", "big"])).unwrap();
    assert_eq!(show["config"]["finish_within"], "6s", "{show}");
    assert_eq!(show["config"]["at_window_end"], "cancel", "{show}");

    // The first window: the run is cancelled at its end.
    let d = s.serve("d", "512KiB");
    let first = wait_for(60, "a run cancelled at its window's end", || {
        d.tasks("big")
            .into_iter()
            .find(|t| t["state"] == "cancelled")
    });
    let why = first["error"].as_str().unwrap();
    assert!(why.contains("window ended at"), "{first}");
    let end = time(&first["window_end"]);
    assert!(
        time(&first["finished"]) >= end,
        "cancelled before its window ended: {first}"
    );
    // ... and promptly: uploads waiting for the traffic limit are given up, not sent.
    assert!(
        time(&first["finished"]) - end < chrono::Duration::seconds(3),
        "the cancel took long: {first}"
    );
    assert!(first["bytes_uploaded"].as_u64().unwrap() > 0, "{first}");
    let occ = wait_for(10, "its claim recorded cancelled", || {
        let o = d.occurrences("big");
        o.iter().any(|o| o["state"] == "cancelled").then_some(o)
    });
    let c = occ.iter().find(|o| o["state"] == "cancelled").unwrap();
    assert!(
        c["reason"].as_str().unwrap().contains("window ended at"),
        "{c}"
    );
    assert!(
        s.events().contains("window-cancelled|big|"),
        "{}",
        s.events()
    );
    // Between windows: no snapshot, and the repository checks clean.
    d.stop();
    let snaps: Value = serde_json::from_str(&s.repo(&["--json", "snapshots"])).unwrap();
    assert!(snaps.as_array().unwrap().is_empty(), "{snaps}");
    s.repo(&["check"]);

    // The next windows go on from there, until the backup completes.
    let d = s.serve("d", "512KiB");
    wait_for(180, "the backup to complete in a later window", || {
        d.occurrences("big")
            .iter()
            .any(|o| o["state"] == "succeeded")
            .then_some(())
    });
    let tasks = d.tasks("big");
    let cancelled = tasks.iter().filter(|t| t["state"] == "cancelled").count();
    assert!(cancelled >= 2, "not several windows: {tasks:#?}");
    let uploaded: u64 = tasks
        .iter()
        .map(|t| t["bytes_uploaded"].as_u64().unwrap())
        .sum();
    // Each window reused what the ones before uploaded: about the data once in all (one
    // pack in flight per cancelled run may be sent again), not once per window.
    let runs: Vec<String> = tasks
        .iter()
        .map(|t| format!("{} {} {}", t["id"], t["state"], t["bytes_uploaded"]))
        .collect();
    assert!(
        uploaded >= data,
        "{uploaded} < {data}: {runs:#?}, {} on the target",
        du(&s.target)
    );
    assert!(
        uploaded < data + data / 2,
        "{uploaded} bytes uploaded for {data} bytes of data over {} runs",
        tasks.len()
    );
    assert!(du(&s.target) < data + data / 2, "{}", du(&s.target));
    d.stop();
    s.repo(&["check", "--read-data"]);
    let back = s.f._dir.path().join("back");
    s.repo(&["restore", "latest", "--target", back.to_str().unwrap()]);
    let restored = back.join(s.src.strip_prefix("/").unwrap());
    assert_same_tree(&s.src, &restored);
    // The completed run's stats are recorded, for the next predictions.
    let show: Value = serde_json::from_str(&s.ok(&["--json", "job", "show", "big"])).unwrap();
    let stats = &show["run_stats"][0]["stats"];
    assert_eq!(stats["bytes_scanned"].as_u64(), Some(data), "{show}");
    assert!(stats["duration_ms"].as_u64().unwrap() > 0, "{show}");
}

#[test]
fn finish_runs_on_past_the_window_reports_the_overrun_and_warned_before_half_of_it() {
    // 32 MiB at 512 KiB/s: about 64 s, in a window of 40 s.
    let s = Setup::new(32, MIB);
    s.add_job(
        "slow",
        &[
            "--schedule",
            "*:*:0/5",
            "--finish-within",
            "40s",
            "--at-window-end",
            "finish",
        ],
    );
    let d = s.serve("d", "512KiB");
    // While it runs: the API and the metrics show its predicted finish and window end.
    let running = wait_for(30, "a run with a prediction", || {
        let j = d.get("/api/v1/jobs/slow");
        (j["running"] == true && j["predicted_finish"].is_string()).then_some(j)
    });
    assert!(running["window_end"].is_string(), "{running}");
    let metrics = d.get("/metrics");
    let m = metrics.as_str().unwrap();
    assert!(
        m.contains("kura_job_predicted_finish_seconds{job=\"slow\"}"),
        "{m}"
    );
    assert!(
        m.contains("kura_job_window_end_seconds{job=\"slow\"}"),
        "{m}"
    );
    let task = wait_for(120, "the run to end", || {
        d.tasks("slow")
            .into_iter()
            .next()
            .filter(|t| t["state"] != "running")
    });
    assert_eq!(task["state"], "succeeded", "{task}");
    let id = task["id"].as_str().unwrap();
    let due = due_of(&task);
    let window_end = time(&task["window_end"]);
    assert_eq!((window_end - due).num_seconds(), 40, "{task}");
    assert!(
        time(&task["finished"]) > window_end,
        "it did not overrun: {task}"
    );
    // Warned before half the window had passed.
    let log = d.log(id);
    let (warned, line) = logged(&log, "warning: predicted to finish at")
        .unwrap_or_else(|| panic!("no warning: {log:#?}"));
    assert!(
        (warned - due).num_milliseconds() < 20_000,
        "warned {} ms after it fell due: {line}",
        (warned - due).num_milliseconds()
    );
    assert!(line.contains("after its window ends at"), "{line}");
    // Then it ran on past the window, and its record says by how much.
    assert!(logged(&log, "running on past it").is_some(), "{log:#?}");
    let overrun = task["overrun"].as_str().unwrap();
    assert!(
        overrun.starts_with("finished ") && overrun.contains("after its deadline"),
        "{task}"
    );
    let occ = d.occurrences("slow");
    let o = occ
        .iter()
        .find(|o| time(&o["due"]) == due)
        .unwrap_or_else(|| panic!("{occ:#?}"));
    assert_eq!(o["state"], "succeeded");
    assert!(
        o["reason"].as_str().unwrap().contains("after its deadline"),
        "{o}"
    );
    let m = d.get("/metrics");
    let m = m.as_str().unwrap();
    assert!(
        m.contains("kura_job_overrun_warnings_total{job=\"slow\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kura_job_window_overruns_total{job=\"slow\"} 1"),
        "{m}"
    );
    let ev = s.events();
    assert!(
        ev.contains("overrun-predicted|slow|predicted to finish"),
        "{ev}"
    );
    assert!(ev.contains("window-overrun|slow|"), "{ev}");
    // With history, the next run is predicted before it starts.
    let j = d.get("/api/v1/jobs/slow");
    assert!(
        j["predicted_duration_seconds"].as_f64().unwrap() > 0.0,
        "{j}"
    );
}

#[test]
fn cancel_early_ends_a_run_that_cannot_finish_before_its_window_does() {
    // 24 MiB at 256 KiB/s: about 96 s, in a window of 60 s.
    let s = Setup::new(24, MIB);
    s.add_job(
        "early",
        &[
            "--schedule",
            "*:*:0/5",
            "--finish-within",
            "60s",
            "--at-window-end",
            "cancel-early",
        ],
    );
    let d = s.serve("d", "256KiB");
    let task = wait_for(120, "the run to end", || {
        d.tasks("early")
            .into_iter()
            .next()
            .filter(|t| t["state"] != "running")
    });
    assert_eq!(task["state"], "cancelled", "{task}");
    let e = task["error"].as_str().unwrap();
    assert!(
        e.contains("cancelled early: predicted to finish at"),
        "{task}"
    );
    assert!(
        time(&task["finished"]) < time(&task["window_end"]),
        "{task}"
    );
    assert!(
        s.events()
            .contains("window-cancelled|early|cancelled early")
    );
}

#[test]
fn window_flags_are_checked_whole_and_shown() {
    let s = Setup::new(1, 4096);
    let src = s.src.to_str().unwrap().to_string();
    let fails = |args: &[&str], says: &[&str]| {
        let o = s.cmd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for w in says {
            assert!(err.contains(w), "{args:?}: {err}");
        }
    };
    fails(
        &[
            "job",
            "add",
            "w",
            "--object",
            &src,
            "--start-within",
            "2h",
            "--finish-within",
            "1h",
        ],
        &["--start-within", "leaves no time"],
    );
    fails(
        &["job", "add", "w", "--object", &src, "--max-run", "soon"],
        &["--max-run"],
    );
    s.add_job(
        "w",
        &[
            "--schedule",
            "daily",
            "--finish-within",
            "4h",
            "--overlap",
            "queue",
        ],
    );
    fails(
        &["job", "edit", "w", "--overlap", "sometimes"],
        &["--overlap", "skip, queue, cancel-older"],
    );
    fails(
        &["job", "edit", "w", "--at-window-end", "later"],
        &["--at-window-end", "cancel, finish, cancel-early"],
    );
    fails(
        &["job", "edit", "w", "--start-within", "5h"],
        &["--start-within"],
    );
    // Nothing of a refused edit was applied.
    let show: Value = serde_json::from_str(&s.ok(&["--json", "job", "show", "w"])).unwrap();
    let c = &show["config"];
    assert_eq!(
        (&c["finish_within"], &c["overlap"], &c["start_within"]),
        (&Value::from("4h"), &Value::from("queue"), &Value::Null),
        "{show}"
    );
    assert!(show["window_end"].is_string(), "{show}");
    s.ok(&[
        "job",
        "edit",
        "w",
        "--finish-within",
        "none",
        "--max-run",
        "90m",
        "--catch-up",
        "none",
        "--at-window-end",
        "finish",
    ]);
    let list: Value = serde_json::from_str(&s.ok(&["--json", "job", "list"])).unwrap();
    let c = &list[0]["config"];
    assert_eq!(c["finish_within"], Value::Null, "{list}");
    assert_eq!(c["max_run"], "1h30m", "{list}");
    assert_eq!(c["catch_up"], "none", "{list}");
    assert_eq!(c["at_window_end"], "finish", "{list}");
    let text = s.ok(&["job", "show", "w"]);
    assert!(text.contains("max-run 1h30m, at its end finish"), "{text}");
}

#[test]
fn a_mirror_target_that_alone_would_overrun_the_window_is_dropped_while_the_quorum_holds() {
    // Two targets; t1 uploads at 512 KiB/s (a rule for it alone), t0 at full speed. 12 MiB:
    // about 24 s on t1, a moment on t0; the run may take 16 s.
    let extra = "\n[[traffic]]\ntarget = \"t1\"\nupload = \"512KiB\"\n";
    let s = Setup::build(12, MIB, 2, extra);
    let src = s.src.to_str().unwrap();
    s.ok(&[
        "job",
        "add",
        "mm",
        "--object",
        src,
        "--redundancy",
        "2",
        "--quorum",
        "1",
        "--max-run",
        "16s",
        "--at-window-end",
        "cancel",
    ]);
    let d = s.serve("d", "0");
    let out = s
        .cmd()
        .env("KURA_DAEMON", format!("http://{}", d.addr))
        .env("KURA_TOKEN", &d.token)
        .args(["job", "run", "mm"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("target t1 dropped: its pace"), "{text}");
    let task = d.tasks("mm").pop().unwrap();
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(
        time(&task["finished"]) < time(&task["window_end"]),
        "{task}"
    );
    assert!(
        s.events().contains("target-dropped|mm|target t1 dropped"),
        "{}",
        s.events()
    );
    let metrics = d.get("/metrics");
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("kura_job_targets_dropped_total{job=\"mm\"} 1"),
        "{metrics}"
    );
    // The backup has its copy on t0 only, the run's log says why t1 has none, and t1 is
    // not held to be failing for it.
    let backups: Value = serde_json::from_str(&s.ok(&["--json", "backups"])).unwrap();
    let b = &backups.as_array().unwrap()[0];
    let on: Vec<&Value> = b["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["target"])
        .collect();
    assert_eq!(on, ["t0"], "{b:#}");
    let lines = d.log(task["id"].as_str().unwrap());
    assert!(
        logged(&lines, "on t1 was dropped: its pace").is_some(),
        "{lines:#?}"
    );
    let res: Value = serde_json::from_str(&s.ok(&["--json", "resource", "list"])).unwrap();
    let r1 = res
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "t1")
        .unwrap();
    assert_eq!(r1["errors"], 0, "{r1}");
    // Nothing of the run is left locked on t1, and the job's next run (no limit now)
    // brings t1 up to date: it restores the same tree.
    d.stop();
    let t1_dir = s.f._dir.path().join("t1");
    let locks: Vec<_> = std::fs::read_dir(t1_dir.join("locks"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(locks.is_empty(), "{locks:?}");
    let plain = s.f._dir.path().join("plain.toml");
    std::fs::write(&plain, "[backup]\nmemory_mib = 8\n").unwrap();
    let o = s
        .cmd()
        .env("KURA_CONFIG", &plain)
        .args(["job", "run", "mm"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out_dir = s.f._dir.path().join("restored");
    s.ok(&[
        "-r",
        t1_dir.to_str().unwrap(),
        "restore",
        "latest",
        "--target",
        out_dir.to_str().unwrap(),
    ]);
    assert_same_tree(&s.src, &out_dir.join(s.src.strip_prefix("/").unwrap()));
}
