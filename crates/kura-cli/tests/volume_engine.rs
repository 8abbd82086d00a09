//! The volume engine's array functions, driven by real NBD clients (`qemu-io`) against
//! `kura volume serve`: mirror pairs (duplex, split areas, a durable difference bitmap,
//! resync), background backups frozen by a copy-before-write session or a pair split while
//! a client keeps writing, and servers killed (SIGKILL) in the middle.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::Kura;
use common::vols::{Server, Vols, pair, qemu_write, tool};

const MIB: u64 = 1 << 20;

/// A reproducible stream of pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One qemu-io write: `len` bytes of `pattern` at `offset`.
#[derive(Debug, Clone, Copy)]
struct W {
    offset: u64,
    len: u64,
    pattern: u8,
}

impl W {
    fn cmd(&self) -> String {
        format!("write -P {} {} {}", self.pattern, self.offset, self.len)
    }
    fn apply(&self, img: &mut [u8]) {
        img[self.offset as usize..(self.offset + self.len) as usize].fill(self.pattern);
    }
}

/// `n` writes of 4 KiB to 1 MiB at 4 KiB-aligned offsets in a volume of `size` bytes.
fn random_writes(seed: u64, size: u64, n: usize) -> Vec<W> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..n)
        .map(|_| {
            let len = (1 + r.below(256)) * 4096;
            let offset = r.below((size - len) / 4096 + 1) * 4096;
            W {
                offset,
                len,
                pattern: 1 + r.below(255) as u8,
            }
        })
        .collect()
}

fn write_all(url: &str, ws: &[W]) {
    let cmds: Vec<String> = ws.iter().map(W::cmd).collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    for part in refs.chunks(100) {
        qemu_write(url, part);
    }
}

fn kill(s: Server) {
    let mut s = s;
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    let _ = s.child.wait();
}

/// A host holding the volume open (an idle qemu-io waiting for commands), so a kill finds
/// the volume in use — as it would be under a running VM. Killed on drop.
struct Holder(
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
);

fn hold(url: &str) -> Holder {
    let mut c = std::process::Command::new("qemu-io")
        .args(["-f", "raw", url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut h = Holder(c, out);
    // It has connected once it answers a command.
    h.write(W {
        offset: 0,
        len: 0,
        pattern: 0,
    });
    h
}

impl Holder {
    /// Write through this connection and wait for the acknowledgement — no flush follows,
    /// unlike a qemu-io that exits.
    fn write(&mut self, w: W) {
        use std::io::{BufRead, Write};
        let stdin = self.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", w.cmd()).unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.1.read_line(&mut line).unwrap() > 0, "qemu-io ended");
            if line.contains("wrote") {
                return;
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn range(b: &[u8], off: u64, len: u64) -> &[u8] {
    &b[off as usize..(off + len) as usize]
}

#[test]
fn a_pair_mirrors_splits_by_area_keeps_its_difference_bitmap_across_a_kill_and_resyncs() {
    let v = Vols::new();
    let size = 64 * MIB;
    v.ok(&["volume", "create", "a", "--size", "64M"]);
    v.ok(&["volume", "create", "b", "--size", "64M"]);
    // Content before pairing (written to the file, no server), then the initial copy.
    let a_raw = v.data().join("a.raw");
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            a_raw.to_str().unwrap(),
            "-c",
            "write -P 7 3M 9M",
        ],
    );
    let created = v.json(&["pair", "create", "a", "b"]);
    assert_eq!(created["state"], "duplex", "{created}");
    assert!(v.raw("a") == v.raw("b"), "the initial copy differs");
    // The secondary is not a host volume any more.
    let o = v.run(&["volume", "delete", "b"]);
    assert_eq!(code(&o), Some(2), "{}", String::from_utf8_lossy(&o.stderr));

    let s = v.serve();
    write_all(&s.url("a"), &random_writes(1, size, 40));
    assert!(v.raw("a") == v.raw("b"), "duplex writes did not reach both");
    // Nor backed up as one (its pair's primary is what gets backed up, by a split).
    let o = v.with_repo(&["volume", "backup", "b"]);
    assert_eq!(code(&o), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("secondary of the mirror pair"));

    // Split two areas: [0, 16M) and [32M, 40M).
    let split = v.json(&["pair", "split", "a", "--area", "0:16M", "--area", "32M:8M"]);
    assert_eq!(split["state"], "split", "{split}");
    let frozen_b = v.raw("b");
    let writes = [
        W {
            offset: MIB,
            len: 4096,
            pattern: 0xa1,
        }, // area 1, granule 0
        W {
            offset: 20 * MIB,
            len: MIB,
            pattern: 0xa2,
        }, // outside
        W {
            offset: 33 * MIB,
            len: 8192,
            pattern: 0xa3,
        }, // area 2, granule 8
        W {
            offset: 15 * MIB,
            len: 2 * MIB,
            pattern: 0xa4,
        }, // crosses out of area 1
    ];
    write_all(&s.url("a"), &writes);
    let (a_now, b_now) = (v.raw("a"), v.raw("b"));
    for (off, len) in [(0, 16 * MIB), (32 * MIB, 8 * MIB)] {
        assert!(
            range(&b_now, off, len) == range(&frozen_b, off, len),
            "split area {off}+{len} of the secondary changed"
        );
    }
    for (off, len) in [(16 * MIB, 16 * MIB), (40 * MIB, 24 * MIB)] {
        assert!(
            range(&b_now, off, len) == range(&a_now, off, len),
            "outside the split areas the pair must stay duplex ({off}+{len})"
        );
    }
    // Granules 0, 3 and 8 differ: 12 MiB.
    assert_eq!(pair(&v, "a")["dirty_bytes"], 12 * MIB);

    // Killed with bits set while a host holds the volume: they were durable before the
    // writes were acknowledged (no clean close wrote them).
    let mut h = hold(&s.url("a"));
    h.write(W {
        offset: 5 * MIB,
        len: 4096,
        pattern: 0xa5,
    }); // area 1, granule 1: new bit
    kill(s);
    drop(h);
    let s = v.serve();
    let p = pair(&v, "a");
    assert_eq!(p["state"], "split", "{p}");
    // The areas' bits survived (granules 0, 1, 3 and 8); outside the areas the pair was
    // duplex, so a write there may have reached one side only: those ten granules are
    // marked too.
    assert_eq!(
        p["area_dirty_bytes"],
        serde_json::json!([12 * MIB, 4 * MIB]),
        "{p}"
    );
    assert_eq!(p["dirty_bytes"], 56 * MIB, "{p}");
    let r = v.json(&["pair", "resync", "a"]);
    assert_eq!(r["copied"]["bytes"], 56 * MIB, "{r}");
    assert_eq!(r["pair"]["state"], "duplex", "{r}");
    assert!(v.raw("a") == v.raw("b"), "resync left the pair different");

    // Killed while duplex: a write may have reached one side only, so the pair comes back
    // split with everything to copy, and a resync makes it whole.
    let h = hold(&s.url("a"));
    write_all(&s.url("a"), &random_writes(2, size, 20));
    kill(s);
    drop(h);
    let s = v.serve();
    let p = pair(&v, "a");
    assert_eq!(p["state"], "split", "{p}");
    assert_eq!(p["dirty_bytes"], size, "{p}");
    assert!(p["note"].as_str().unwrap().contains("uncleanly"), "{p}");
    v.json(&["pair", "resync", "a"]);
    assert!(v.raw("a") == v.raw("b"));

    // Dissolved: the secondary is an ordinary volume again.
    v.ok(&["pair", "delete", "a"]);
    assert_eq!(v.json(&["pair", "list"]), serde_json::json!([]));
    v.stop(s);
    v.ok(&["volume", "delete", "b"]);
}

/// Start a background backup; returns the accepted job.
fn start_backup(v: &Vols, name: &str, freeze: &str) -> Value {
    let o = v.with_repo(&["--json", "volume", "backup", name, "--freeze", freeze]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(a["message_type"], "accepted", "{a}");
    a["job"].clone()
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
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn background_backups_capture_the_image_at_the_freeze_while_a_client_writes() {
    let v = Vols::new();
    let size = 64 * MIB;
    v.ok(&["volume", "create", "db", "--size", "64M"]);
    v.ok(&["volume", "create", "pool0", "--size", "64M", "--work"]);
    v.ok(&["volume", "create", "pa", "--size", "64M"]);
    v.ok(&["volume", "create", "pb", "--size", "64M"]);
    v.ok(&["pair", "create", "pa", "pb"]);
    let s = v.serve();
    // Sessions: no host I/O on the working volume.
    let o = std::process::Command::new("qemu-io")
        .args(["-f", "raw", &s.url("pool0"), "-c", "read 0 4096"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a working volume served host I/O");

    let mut copied_total = 0;
    for seed in 0..8u64 {
        write_all(&s.url("db"), &random_writes(seed * 2, size, 30));
        let at_freeze = v.raw("db");
        let job = start_backup(&v, "db", "session");
        assert_eq!(job["freeze"], "session");
        assert_eq!(job["work_volume"], "pool0");
        // The client goes on writing while the backup copies.
        write_all(&s.url("db"), &random_writes(seed * 2 + 1, size, 60));
        let done = wait_job(&v, job["id"].as_u64().unwrap());
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["incremental"], seed > 0, "{done}");
        copied_total += done["session"]["copied_bytes"].as_u64().unwrap();
        let snap = done["snapshot"].as_str().unwrap();
        assert!(
            v.restored(snap) == at_freeze,
            "seed {seed}: the backup is not the image at the freeze"
        );
    }
    // The writes raced the backups: blocks were saved before being overwritten.
    assert!(
        copied_total > 0,
        "no write ever hit a block the backup still needed"
    );
    // The pool has its working volume back, empty.
    let pool = v.json(&["volume", "info", "pool0"]);
    assert!(pool["allocated"].as_u64().unwrap() < MIB, "{pool}");

    // A paired volume is frozen by splitting its pair; after the backup it is duplex again.
    for seed in 0..3u64 {
        write_all(&s.url("pa"), &random_writes(100 + seed, size, 30));
        let at_freeze = v.raw("pa");
        let job = start_backup(&v, "pa", "auto");
        assert_eq!(job["freeze"], "split", "{job}");
        write_all(&s.url("pa"), &random_writes(200 + seed, size, 60));
        let done = wait_job(&v, job["id"].as_u64().unwrap());
        assert_eq!(done["state"], "succeeded", "{done}");
        assert!(v.restored(done["snapshot"].as_str().unwrap()) == at_freeze);
        assert_eq!(pair(&v, "pa")["state"], "duplex");
        assert!(v.raw("pa") == v.raw("pb"), "the resync after the backup");
    }
    // Every backup left a record; listing them is enough to find the snapshots.
    let recs = v.json(&["volume", "records", "db"]);
    assert_eq!(recs.as_array().unwrap().len(), 8);
    v.stop(s);
}

#[test]
fn a_server_killed_mid_session_loses_no_write_and_the_next_backup_reads_everything() {
    let v = Vols::new();
    let size = 256 * MIB;
    v.ok(&["volume", "create", "db", "--size", "256M"]);
    v.ok(&["volume", "create", "pool0", "--size", "256M", "--work"]);
    // Incompressible content, so that a full backup takes a while.
    let mut model = vec![0u8; size as usize];
    let mut r = Rng(42);
    for c in model.chunks_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    std::fs::write(v.data().join("db.raw"), &model).unwrap();
    // Served backups are throttled, so that the one killed below is still running: it is a
    // full backup to a second repository (a chain of its own), 256 MiB at 8 MiB/s.
    // The first backup runs with no server, at full speed.
    assert_eq!(v.backup("db")["incremental"], false);
    let s = v.serve_with(&["--limit-upload", "8MiB/s"]);
    let url = s.url("db");
    let holder = hold(&url);
    let before = random_writes(7, size, 20);
    before.iter().for_each(|w| w.apply(&mut model));
    write_all(&url, &before);
    // Freeze, keep writing into the session, and kill the server in the middle.
    let other = v.repo_named("other");
    let o = v.in_repo(
        &other,
        &["--json", "volume", "backup", "db", "--freeze", "session"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let job = serde_json::from_slice::<Value>(&o.stdout).unwrap()["job"].clone();
    assert_eq!(job["incremental"], false, "{job}");
    // One job per volume at a time: a second request is refused while this one runs.
    let o = v.with_repo(&["volume", "backup", "db"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), Some(14), "{err}");
    assert!(
        err.contains("a backup job of it is already running"),
        "{err}"
    );
    let during = random_writes(8, size, 20);
    during.iter().for_each(|w| w.apply(&mut model));
    write_all(&url, &during);
    let j = v.json(&["volume", "jobs", &job["id"].to_string()])[0].clone();
    assert_eq!(
        j["state"], "running",
        "the backup ended before the kill: {j}"
    );
    kill(s);
    drop(holder);
    // No acknowledged write is lost, and the session never wrote into the volume.
    assert!(v.raw("db") == model, "the volume lost or garbled writes");
    let info = v.json(&["volume", "info", "db"]);
    assert!(
        info["dirty"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not closed cleanly"),
        "{info}"
    );
    // Restarted: the working volume is back in the pool (the next session gets it), and the
    // next backup reads everything, says why, and restores to the volume's bytes.
    let s = v.serve();
    let next = start_backup(&v, "db", "session");
    assert_eq!(next["work_volume"], "pool0", "{next}");
    assert!(
        next["full_reason"]
            .as_str()
            .unwrap()
            .contains("not closed cleanly"),
        "{next}"
    );
    let done = wait_job(&v, next["id"].as_u64().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(v.restored(done["snapshot"].as_str().unwrap()) == model);
    // The killed job committed no record.
    let recs = v.json(&["volume", "records", "db"]);
    assert_eq!(recs.as_array().unwrap().len(), 2, "{recs}");
    v.stop(s);
}
