//! A served volume's background backups against a target that stops answering: the
//! client's `--timeout` and exit codes reach the server's jobs, and stopping the server
//! (Ctrl-C) while a job is stuck on the target ends at once and leaves the volume's change
//! tracking trusted — the next backup is incremental and reads exactly what the lost one
//! would have. The S3 target is a private SeaweedFS, frozen with SIGSTOP.

use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::Kura;
use common::vols::{Vols, qemu_write};
use common::weed::Weed;

const MIB: u64 = 1 << 20;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An S3 repository on `weed` (cheap KDF).
fn s3_repo(v: &Vols, weed: &Weed, prefix: &str) -> String {
    let repo = weed.location(prefix);
    let o = v.in_repo(&repo, &["init", "--kdf-memory-kib", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    repo
}

/// The last JSON line a command printed.
fn last_json(o: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let last = text.lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {text:?} {}", stderr(o)))
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_served_backup_takes_the_clients_timeout_and_exits_as_a_local_one_would() {
    let scratch = tempfile::tempdir().unwrap();
    let weed = Weed::single(scratch.path());
    let v = Vols::new();
    let repo = s3_repo(&v, &weed, "vols");
    v.ok(&["volume", "create", "db", "--size", "64M"]);
    v.ok(&["volume", "create", "pool0", "--size", "64M", "--work"]);
    let s = v.serve();
    qemu_write(&s.url("db"), &["write -P 0x41 0 8M"]);

    // A frozen target: the client's 3 s hold, not the server's own 60 s; exit 6 (retry
    // later), as for a backup that opens the repository itself.
    weed.stop_s3();
    let t = Instant::now();
    let o = v.in_repo(&repo, &["--timeout", "3s", "volume", "backup", "db"]);
    let took = t.elapsed();
    weed.continue_s3();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} (timeout 3 s)"
    );
    assert!(
        stderr(&o).contains("back up served volume db"),
        "{}",
        stderr(&o)
    );

    // Nothing answers at all: exit 6 too.
    let dead = format!("s3://kura-test/x?endpoint=http://127.0.0.1:{}", dead_port());
    let o = v.in_repo(&dead, &["--timeout", "3s", "volume", "backup", "db"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));

    // A wrong password and a missing repository keep their own codes (12, 10).
    let o = v
        .cmd()
        .env("KURA_PASSWORD", "not-it")
        .args(["-r", &repo, "volume", "backup", "db"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
    let missing = v.dir.path().join("no-such-repo").display().to_string();
    let o = v.in_repo(&missing, &["volume", "backup", "db"]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));

    // None of that froze anything: no job ran, and the first real backup works.
    let jobs = v.json(&["volume", "jobs"]);
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
    let o = v.in_repo(&repo, &["--json", "volume", "backup", "db", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert_eq!(j["job"]["state"], "succeeded", "{j}");

    // A job whose target stops answering mid-way fails with the client's deadline, and
    // `--wait` exits 6.
    qemu_write(&s.url("db"), &["write -P 0x42 8M 32M"]);
    weed.stop_s3();
    let o = v.in_repo(
        &repo,
        &[
            "--timeout",
            "3s",
            "--json",
            "volume",
            "backup",
            "db",
            "--wait",
        ],
    );
    weed.continue_s3();
    // The repository opens before the freeze, so a frozen target fails the request itself
    // (exit 6 as above) — or, had it opened, the job: either way 6.
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));

    // SIGTERM (what a service manager sends) stops the server as cleanly as Ctrl-C: the
    // volume's tracking stays trusted.
    let mut s = s;
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let status = s.child.wait().unwrap();
    assert!(status.success(), "the server exited {status:?}");
    let info = v.json(&["volume", "info", "db"]);
    assert_eq!(info["dirty"]["trusted"], true, "{info}");
}

#[test]
fn ctrl_c_with_a_backup_stuck_on_a_frozen_target_ends_at_once_and_keeps_tracking() {
    let scratch = tempfile::tempdir().unwrap();
    let weed = Weed::single(scratch.path());
    let v = Vols::new();
    let repo = s3_repo(&v, &weed, "vols");
    v.ok(&["volume", "create", "db", "--size", "256M"]);
    v.ok(&["volume", "create", "pool0", "--size", "256M", "--work"]);
    let s = v.serve();
    let url = s.url("db");
    let writes = |from: u64, mib: u64, seed: u64| {
        let cmds: Vec<String> = (0..mib)
            .map(|i| format!("write -P {} {}M 1M", 1 + (seed + i * 7) % 255, from + i))
            .collect();
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        for part in refs.chunks(64) {
            qemu_write(&url, part);
        }
    };
    writes(0, 64, 1);
    let o = v.in_repo(&repo, &["--json", "volume", "backup", "db", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = last_json(&o)["job"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    // 128 MiB changed, a background backup of them accepted, and the target frozen at once.
    writes(64, 128, 2);
    let o = v.in_repo(&repo, &["--json", "volume", "backup", "db"]);
    weed.stop_s3();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["message_type"], "accepted");
    std::thread::sleep(Duration::from_millis(1500));
    let jobs = v.json(&["volume", "jobs"]);
    let last = jobs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["state"], "running",
        "the job ended before the target froze, so this test proves nothing: {last}"
    );

    // Ctrl-C: the server gives the stuck job a moment, puts its bits back and closes.
    let mut s = s;
    let t = Instant::now();
    unsafe { libc::kill(s.child.id() as i32, libc::SIGINT) };
    let status = s.child.wait().unwrap();
    let took = t.elapsed();
    weed.continue_s3();
    assert!(status.success(), "the server exited {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "the server took {took:?} to stop (the stuck job should be given up on in 0.5 s)"
    );

    // Tracking is trusted, and the repository's chain still holds the lost job's changes.
    let info = v.json(&["volume", "info", "db"]);
    assert_eq!(info["dirty"]["trusted"], true, "{info}");
    let chains = info["dirty"]["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{info}");
    assert_eq!(chains[0]["trusted"], true, "{info}");
    assert_eq!(chains[0]["dirty_bytes"], 128 * MIB, "{info}");

    // The next backup is incremental from the first snapshot (the stuck one committed
    // nothing), reads exactly those 128 MiB, and restores equal to the volume.
    let b = v.backup_to(&repo, "db");
    assert_eq!(b["incremental"], true, "{b}");
    assert_eq!(b["summary"]["bytes_read"], 128 * MIB, "{b}");
    let snap = b["snapshot_id"].as_str().unwrap().to_string();
    assert!(
        v.restored_from(&repo, &snap) == v.raw("db"),
        "the restore differs from the volume"
    );
    let snaps = v.in_repo(&repo, &["--json", "snapshots"]);
    let snaps: Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps.as_array().map(Vec::len), Some(2), "{snaps}");
    let newest = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == snap.as_str())
        .unwrap_or_else(|| panic!("{snap} not listed: {snaps}"));
    assert_eq!(newest["parent"].as_str(), Some(first.as_str()), "{newest}");
}
