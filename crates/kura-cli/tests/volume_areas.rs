//! Split areas of a mirror pair (seed 003, embodiment 3), driven by real NBD clients
//! (`qemu-io`) against `kura volume serve`: areas split at different times, each frozen at
//! its own split time and shown with it; each area backed up while a client keeps writing,
//! restoring to the area's bytes at its split; areas resynced one at a time; the volume's
//! backup chains untouched by area backups; a server killed with areas split.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::Kura;
use common::vols::{Server, Vols, pair, qemu_write};

const MIB: u64 = 1 << 20;

fn range(b: &[u8], off: u64, len: u64) -> &[u8] {
    &b[off as usize..(off + len) as usize]
}

fn write(url: &str, off: u64, len: u64, pattern: u8) {
    qemu_write(url, &[&format!("write -P {pattern} {off} {len}")]);
}

/// Poll the server until job `id` ends.
fn wait_job(v: &Vols, id: u64) -> Value {
    let t = Instant::now();
    loop {
        let j = v.json(&["volume", "jobs", &id.to_string()])[0].clone();
        if j["state"] != "running" {
            return j;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "job {id} hangs: {j}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Back up through the server (`--area`, or the whole volume with `--freeze`); the ended job.
fn served_backup(v: &Vols, args: &[&str]) -> Value {
    let mut a = vec!["--json", "volume", "backup"];
    a.extend_from_slice(args);
    let o = v.with_repo(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let acc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let done = wait_job(v, acc["job"]["id"].as_u64().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    done
}

fn refused(v: &Vols, args: &[&str], code: i32, says: &str) {
    let o = v.with_repo(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(says),
        "{args:?}: {err:?} does not say {says:?}"
    );
}

/// A client writing random 64 KiB..1 MiB runs all over the volume until dropped.
struct Writer(Arc<AtomicBool>, Option<std::thread::JoinHandle<usize>>);

fn writer(url: String, size: u64) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let h = std::thread::spawn(move || {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut n = 0;
        while !s.load(Ordering::SeqCst) {
            let cmds: Vec<String> = (0..8)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = (1 + x % 16) * 64 * 1024;
                    let off = (x >> 20) % ((size - len) / 4096) * 4096;
                    format!("write -P {} {off} {len}", 1 + (x >> 8) % 250)
                })
                .collect();
            let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
            qemu_write(&url, &refs);
            n += cmds.len();
        }
        n
    });
    Writer(stop, Some(h))
}

impl Writer {
    fn stop(mut self) -> usize {
        self.0.store(true, Ordering::SeqCst);
        self.1.take().unwrap().join().unwrap()
    }
}

fn kill(s: Server) {
    let mut s = s;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    let _ = s.child.wait();
}

#[test]
fn areas_split_at_different_times_back_up_and_resync_on_their_own() {
    let v = Vols::new();
    let size = 64 * MIB;
    v.ok(&["volume", "create", "a", "--size", "64M"]);
    v.ok(&["volume", "create", "b", "--size", "64M"]);
    v.ok(&["volume", "create", "pool0", "--size", "64M", "--work"]);
    v.ok(&["pair", "create", "a", "b"]);
    let s = v.serve();
    let url = s.url("a");
    write(&url, 0, size, 0x11);

    // Area A, [0, 16M), split first.
    let split = v.json(&["pair", "split", "a", "--area", "0:16M"]);
    assert_eq!(split["state"], "split", "{split}");
    let at_a = range(&v.raw("a"), 0, 16 * MIB).to_vec();
    write(&url, MIB, 2 * MIB, 0x22); // in A
    write(&url, 34 * MIB, MIB, 0x23); // in B-to-be: still duplex
    // Area B, [32M, 40M), split later, while A stays split.
    let split = v.json(&["pair", "split", "a", "--area", "32M:8M"]);
    assert_eq!(split["areas"].as_array().unwrap().len(), 2, "{split}");
    let at_b = range(&v.raw("a"), 32 * MIB, 8 * MIB).to_vec();
    assert!(
        at_b[2 * MIB as usize] == 0x23,
        "B holds the write made before its split"
    );
    write(&url, 36 * MIB, MIB, 0x33); // in B
    write(&url, 8 * MIB, MIB, 0x34); // in A
    write(&url, 20 * MIB, MIB, 0x35); // outside: duplex

    // Each area with its own split time, and what differs in it.
    let p = pair(&v, "a");
    let areas = p["areas"].as_array().unwrap().clone();
    assert_eq!(areas.len(), 2, "{p}");
    assert_eq!(
        (areas[0]["offset"].as_u64(), areas[0]["length"].as_u64()),
        (Some(0), Some(16 * MIB))
    );
    assert_eq!(
        (areas[1]["offset"].as_u64(), areas[1]["length"].as_u64()),
        (Some(32 * MIB), Some(8 * MIB))
    );
    let (t_a, t_b) = (
        areas[0]["split"].as_str().unwrap().to_string(),
        areas[1]["split"].as_str().unwrap().to_string(),
    );
    assert!(t_a < t_b, "area A split at {t_a}, B at {t_b}: {p}");
    // A: granules 0 and 2; B: granule 9.
    assert_eq!(
        p["area_dirty_bytes"],
        serde_json::json!([8 * MIB, 4 * MIB]),
        "{p}"
    );
    let listed = v.ok(&["pair", "list"]);
    assert!(listed.contains(&t_a) && listed.contains(&t_b), "{listed}");
    assert!(
        listed.contains("area 0:16M") && listed.contains("area 32M:8M"),
        "{listed}"
    );
    let b_now = v.raw("b");
    assert!(
        range(&b_now, 0, 16 * MIB) == at_a,
        "area A of the secondary changed"
    );
    assert!(
        range(&b_now, 32 * MIB, 8 * MIB) == at_b,
        "area B of the secondary changed"
    );
    assert!(range(&b_now, 16 * MIB, 16 * MIB) == range(&v.raw("a"), 16 * MIB, 16 * MIB));

    // Overlapping, misaligned and whole splits are refused, and so is a whole-volume split
    // backup (it would mix the areas' times).
    refused(
        &v,
        &["pair", "split", "a", "--area", "12M:8M"],
        2,
        "overlaps area 0:16777216",
    );
    refused(
        &v,
        &["pair", "split", "a", "--area", "21M:4M"],
        2,
        "4M granules",
    );
    refused(
        &v,
        &["pair", "split", "a", "--area", "44M:4M", "--area", "46M:4M"],
        2,
        "4M granules",
    );
    refused(
        &v,
        &["pair", "split", "a"],
        2,
        "areas of the pair of a are split",
    );
    refused(
        &v,
        &["volume", "backup", "a", "--freeze", "split"],
        2,
        "would mix them",
    );
    refused(
        &v,
        &["volume", "backup", "a", "--area", "12M:8M"],
        2,
        "not inside a split area",
    );
    refused(
        &v,
        &["pair", "resync", "a", "--area", "0:8M"],
        2,
        "not a split area",
    );

    // A whole-volume backup by session, then each area's backup, while a client writes.
    let full = served_backup(&v, &["a", "--freeze", "session"]);
    let w = writer(url.clone(), size);
    std::thread::sleep(Duration::from_millis(300));
    let ja = served_backup(&v, &["a", "--area", "0:16M"]);
    let jb = served_backup(&v, &["a", "--area", "32M:8M"]);
    let jb2 = served_backup(&v, &["a", "--area", "36M:4M"]); // a part of B
    let writes = w.stop();
    assert!(
        writes > 0,
        "the client wrote nothing during the area backups"
    );
    for (j, want, t) in [
        (&ja, at_a.as_slice(), &t_a),
        (&jb, at_b.as_slice(), &t_b),
        (&jb2, &at_b[4 * MIB as usize..], &t_b),
    ] {
        assert_eq!(j["area"]["split"].as_str(), Some(t.as_str()), "{j}");
        let got = v.restored(j["snapshot"].as_str().unwrap());
        assert!(
            got == want,
            "area backup {j} does not restore the area at its split"
        );
    }
    let b_now = v.raw("b");
    assert!(range(&b_now, 0, 16 * MIB) == at_a && range(&b_now, 32 * MIB, 8 * MIB) == at_b);
    // Records say which area each holds, and when it was split.
    let recs = v.json(&["volume", "records", "a"]);
    let area_recs: Vec<&Value> = recs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["area"].is_null())
        .collect();
    assert_eq!(area_recs.len(), 3, "{recs}");
    assert_eq!(area_recs[0]["area"]["offset"], 0);
    assert_eq!(area_recs[0]["area"]["length"], 16 * MIB);
    assert_eq!(area_recs[0]["time"].as_str(), Some(t_a.as_str()));
    assert_eq!(area_recs[0]["size"], 16 * MIB);
    let snaps = v.with_repo(&["--json", "snapshots"]);
    let snaps: Value = serde_json::from_slice(&snaps.stdout).unwrap();
    let tagged = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == ja["snapshot"])
        .unwrap();
    assert!(
        tagged["tags"]
            .as_array()
            .unwrap()
            .contains(&Value::from("area:0:16777216")),
        "{tagged}"
    );

    // The area backups left the volume's chain alone: the next whole backup is incremental
    // from the session backup and restores the volume.
    write(&url, 50 * MIB, MIB, 0x44);
    let inc = served_backup(&v, &["a", "--freeze", "session"]);
    assert_eq!(
        inc["incremental"], true,
        "after area backups: {inc} (before: {full})"
    );
    v.restores_equal(inc["snapshot"].as_str().unwrap(), "a");

    // Resync A alone: B stays split and frozen at its time.
    let before = pair(&v, "a");
    let r = v.json(&["pair", "resync", "a", "--area", "0:16M"]);
    assert_eq!(r["copied"]["bytes"], before["area_dirty_bytes"][0], "{r}");
    let p = &r["pair"];
    assert_eq!(p["state"], "split", "{r}");
    assert_eq!(p["areas"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(p["areas"][0]["split"].as_str(), Some(t_b.as_str()), "{r}");
    let (a_now, b_now) = (v.raw("a"), v.raw("b"));
    assert!(
        range(&b_now, 0, 16 * MIB) == range(&a_now, 0, 16 * MIB),
        "A not resynced"
    );
    assert!(
        range(&b_now, 32 * MIB, 8 * MIB) == at_b,
        "resyncing A changed B"
    );
    write(&url, 2 * MIB, MIB, 0x55); // A: duplex again
    write(&url, 33 * MIB, MIB, 0x56); // B: still frozen
    let b_now = v.raw("b");
    assert!(range(&b_now, 2 * MIB, MIB) == range(&v.raw("a"), 2 * MIB, MIB));
    assert!(range(&b_now, 32 * MIB, 8 * MIB) == at_b);

    // A third area, split later again; then killed (a host holding the volume) with B and C
    // split: their bits were durable, and what was duplex may differ after the kill.
    v.ok(&["pair", "split", "a", "--area", "48M:16M"]);
    write(&url, 49 * MIB, MIB, 0x66);
    write(&url, 4 * MIB, MIB, 0x67);
    let dirty = pair(&v, "a")["area_dirty_bytes"].clone();
    let h = std::process::Command::new("qemu-io")
        .args(["-f", "raw", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    kill(s);
    let mut h = h;
    let _ = h.kill();
    let _ = h.wait();
    let s = v.serve();
    let p = pair(&v, "a");
    assert_eq!(p["areas"].as_array().unwrap().len(), 2, "{p}");
    assert!(
        p["note"].as_str().unwrap_or("").contains("uncleanly"),
        "{p}"
    );
    for i in 0..2 {
        assert!(
            p["area_dirty_bytes"][i].as_u64() >= dirty[i].as_u64(),
            "area {i} lost bits in the kill: {p} (before {dirty})"
        );
    }
    // Outside the areas every granule is marked: 48M - 8M.
    let outside = p["dirty_bytes"].as_u64().unwrap()
        - p["area_dirty_bytes"][0].as_u64().unwrap()
        - p["area_dirty_bytes"][1].as_u64().unwrap();
    assert_eq!(outside, 40 * MIB, "{p}");
    assert!(
        range(&v.raw("b"), 32 * MIB, 8 * MIB) == at_b,
        "the kill changed area B"
    );
    // Resyncing one area leaves the rest; the last area's resync copies everything.
    v.json(&["pair", "resync", "a", "--area", "32M:8M"]);
    assert_eq!(pair(&v, "a")["areas"].as_array().unwrap().len(), 1);
    let r = v.json(&["pair", "resync", "a", "--area", "48M:16M"]);
    assert_eq!(r["pair"]["state"], "duplex", "{r}");
    assert!(
        v.raw("a") == v.raw("b"),
        "resync after the kill left the pair different"
    );

    // With no server: split, back up and resync an area in this process.
    v.stop(s);
    v.ok(&["pair", "split", "a", "--area", "16M:4M"]);
    let at_c = range(&v.raw("a"), 16 * MIB, 4 * MIB).to_vec();
    let o = v.with_repo(&["--json", "volume", "backup", "a", "--area", "16M:4M"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["record"]["area"]["offset"], 16 * MIB, "{b}");
    assert!(v.restored(b["snapshot_id"].as_str().unwrap()) == at_c);
    v.json(&["pair", "resync", "a"]);
    assert_eq!(pair(&v, "a")["state"], "duplex");
}
