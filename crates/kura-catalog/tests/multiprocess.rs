//! Several OS processes securing against one catalog at once: what separate managers sharing a
//! PostgreSQL catalog do (and, on SQLite, several `kura` commands on one machine). Unlike the
//! threads of tests/catalog.rs, these share nothing but the database, and one can die at any
//! instruction without unwinding.
//!
//! The test re-executes its own binary: a child runs the ignored test [`child`], told what to
//! do by environment variables. First a *victim* secures 3 of the 4 targets with a 2 s lease
//! and is killed (SIGKILL: no release, no unwinding) — a manager that died. Then 4 *workers*
//! each secure 2 subsystems 15 times (waiting when nothing is free), check in the database
//! while holding that their targets and media are allocated to them alone, renew, hold a few
//! ms, and finish, printing `held <process> <target> <start ms> <end ms>`. The parent asserts:
//! - no two processes held one target over overlapping intervals, while some two did hold
//!   (different) targets at the same time (else nothing concurrent was tested);
//! - nothing was secured before the victim's lease ended (it held 3 of 4 targets and a worker
//!   needs 2), yet every worker finished all its rounds (the lease was reclaimed), and the
//!   victim's targets were used again;
//! - at the end nothing is allocated, the victim's run is `expired`, every other `succeeded`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kura_catalog::{Catalog, Constraints};

mod common;

use common::{Db, fresh};

const ROLE: &str = "KURA_MP_ROLE";
const URL: &str = "KURA_MP_URL";
const WORKERS: usize = 4;
const ROUNDS: usize = 15;
const VICTIM_LEASE: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The body of a child process (does nothing unless `KURA_MP_ROLE` says what to do).
#[test]
#[ignore = "run by the multiprocess tests in child processes"]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let c = Catalog::open(&std::env::var(URL).unwrap()).unwrap();
    let wait = Duration::from_secs(20);
    if role == "victim" {
        let lease = VICTIM_LEASE;
        let g = c
            .secure(
                0,
                3,
                &Constraints {
                    wait,
                    lease,
                    targets: None,
                },
            )
            .unwrap();
        let targets: Vec<&str> = g
            .secured
            .subsystems
            .iter()
            .map(|s| s.target.as_str())
            .collect();
        println!("secured {} {}", g.secured.process, targets.join(" "));
        // Killed here by the parent; never releases.
        std::thread::sleep(Duration::from_secs(60));
        panic!("the victim was not killed");
    }
    let lease = Duration::from_secs(5);
    for round in 0..ROUNDS {
        let g = c
            .secure(
                0,
                2,
                &Constraints {
                    wait,
                    lease,
                    targets: None,
                },
            )
            .unwrap();
        let start = now_ms();
        let me = g.secured.process;
        let all = c.resources().unwrap();
        for s in &g.secured.subsystems {
            for name in [&s.target, &s.medium] {
                let r = all.iter().find(|r| r.name == *name).unwrap();
                let holders: Vec<i64> = r.allocations.iter().map(|a| a.0).collect();
                assert_eq!(holders, [me], "{name} while process {me} holds it");
            }
        }
        g.renew(lease).unwrap();
        std::thread::sleep(Duration::from_millis(3 + 4 * (round % 3) as u64));
        let end = now_ms();
        for s in &g.secured.subsystems {
            println!("held {me} {} {start} {end}", s.target);
        }
        g.finish(Ok(())).unwrap();
    }
}

fn spawn(role: &str, url: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(URL, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn processes_never_share_a_target_and_a_killed_one_is_reclaimed(db: Db) {
    let f = fresh(db);
    let c = Catalog::open(&f.url).unwrap();
    for i in 0..4 {
        c.add_local_target(&format!("t{i}"), &format!("/srv/t{i}"))
            .unwrap();
    }

    // The victim: secures 3 targets, says which, and is killed while holding them.
    let mut victim = spawn("victim", &f.url);
    let stdout = BufReader::new(victim.stdout.take().unwrap());
    let Some(line) = stdout
        .lines()
        .map(Result::unwrap)
        // (libtest prints "test child ... " before the test's output, on the same line)
        .find_map(|l| Some(l.split_once("secured ")?.1.to_string()))
    else {
        panic!("the victim did not secure: {:?}", victim.wait_with_output());
    };
    let mut words = line.split_whitespace();
    let dead: i64 = words.next().unwrap().parse().unwrap();
    let dead_targets: Vec<String> = words.map(String::from).collect();
    assert_eq!(dead_targets.len(), 3, "{line}");
    victim.kill().unwrap();
    assert!(!victim.wait().unwrap().success());
    // Killing releases nothing: the victim's lease is what frees its targets.
    let lease_until = {
        let all = c.resources().unwrap();
        let t = all.iter().find(|r| r.name == dead_targets[0]).unwrap();
        assert_eq!(t.allocations.len(), 1, "{t:?}");
        assert_eq!(t.allocations[0].0, dead, "{t:?}");
        t.allocations[0].2
    };

    let workers: Vec<_> = (0..WORKERS).map(|_| spawn("worker", &f.url)).collect();
    let mut held: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    let mut processes = std::collections::BTreeSet::new();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "worker failed:\n{stdout}\n{stderr}");
        let mut lines = 0;
        for l in stdout
            .lines()
            .filter_map(|l| Some(l.split_once("held ")?.1))
        {
            let w: Vec<&str> = l.split_whitespace().collect();
            let [p, start, end] = [w[0], w[2], w[3]].map(|x| x.parse::<i64>().unwrap());
            held.entry(w[1].to_string())
                .or_default()
                .push((start, end, p));
            processes.insert(p);
            lines += 1;
        }
        assert_eq!(lines, 2 * ROUNDS, "every round held 2 targets:\n{stdout}");
    }
    assert_eq!(
        processes.len(),
        WORKERS * ROUNDS,
        "a process number per round"
    );
    assert!(!processes.contains(&dead));

    for (target, intervals) in &mut held {
        intervals.sort();
        // Nobody got a target before the victim's lease ran out: it held 3 of the 4.
        assert!(
            intervals[0].0 > lease_until,
            "{target} held at {} before the victim's lease ended at {lease_until}",
            intervals[0].0
        );
        for pair in intervals.windows(2) {
            let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
            assert!(
                end <= start,
                "{target} held by process {a} until {end} and by {b} from {start}"
            );
        }
    }
    // The workers did run at once (else this tested nothing concurrent): two of them held
    // (different) targets at the same time.
    let mut all: Vec<(i64, i64, i64)> = held.values().flatten().copied().collect();
    all.sort();
    let at_once =
        |(i, a): (usize, &(i64, i64, i64))| all[i + 1..].iter().any(|b| b.0 < a.1 && b.2 != a.2);
    assert!(
        all.iter().enumerate().any(at_once),
        "never at once: {all:?}"
    );
    for t in &dead_targets {
        assert!(
            held.contains_key(t),
            "{t} was never reclaimed and used again"
        );
    }

    let all = c.resources().unwrap();
    assert!(
        all.iter().all(|r| r.allocations.is_empty()),
        "left allocated: {all:?}"
    );
    let runs = c.runs(None, 10_000).unwrap();
    assert_eq!(runs.len(), 1 + WORKERS * ROUNDS);
    for run in &runs {
        let want = if run.id == dead {
            "expired"
        } else {
            "succeeded"
        };
        assert_eq!(run.state, want, "run {}", run.id);
        assert!(run.ended.is_some(), "run {} never ended", run.id);
    }
}

on_both_dbs!(processes_never_share_a_target_and_a_killed_one_is_reclaimed);
