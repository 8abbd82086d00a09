//! Hostile end-to-end tests of tape backups with the virtual library: a backup killed in the
//! middle of an archive and run again, two backups racing on one library, a tape relabelled
//! by a catalog that forgot its set, a tape left in an idle drive, every drive failing,
//! absurd command-line values, and mount requests of a restore waiting for a shelved tape.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::tapes::{Rig, no_panic, same_tree};
use common::{pseudo_random, stderr, write};

const USAGE: i32 = 2;
const INCOMPLETE: i32 = 3;
const NO_MEDIUM: i32 = 19;
const MEDIUM_REFUSED: i32 = 20;

/// The tape file ends with a filemark (`0` length, and its check `KURA`).
fn ends_with_filemark(path: &Path) -> bool {
    let b = fs::read(path).unwrap_or_default();
    b.len() >= 8 && b[b.len() - 8..] == [0, 0, 0, 0, b'K', b'U', b'R', b'A']
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.code(), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------

/// A tape backup killed (SIGKILL) in the middle of an archive, then run again: the second run
/// appends to the same tape. Its archives must read back, and the catalog may call the backup
/// complete only if a restore gives every byte back.
#[test]
fn a_backup_killed_mid_archive_then_run_again_restores_byte_identical() {
    let rig = Rig::new(4, 4);
    rig.library_with("lib", "SSC001..SSC003", "256MiB", "8MiB", "p");
    let tape = rig.tape_file("lib", "SSC001");
    let labelled = fs::metadata(&tape).unwrap().len();
    let mut child = rig.spawn(
        &[
            "tape",
            "backup",
            "--library",
            "lib",
            "--pool",
            "p",
            "--archive-size",
            "2MiB",
            "--block-size",
            "64KiB",
        ],
        &[],
    );
    // Stop it where SSC001 holds some data and its last archive has no filemark yet.
    let mid = common::step_until(&mut child, Duration::from_secs(30), || {
        fs::metadata(&tape).map(|m| m.len()).unwrap_or(0) > labelled + (5 << 20)
            && !ends_with_filemark(&tape)
    });
    assert!(
        mid,
        "the backup ended before it could be killed mid-archive"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!ends_with_filemark(&tape), "killed inside an archive");
    let listed = rig.json(&["tape", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] != "complete"),
        "a killed backup is claimed complete: {listed}"
    );

    // Again: it goes on with the set, appending to SSC001.
    let o = rig.run(&[
        "--json",
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--archive-size",
        "2MiB",
        "--block-size",
        "64KiB",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (t, o) = rig.restore(&[]);
    assert!(
        o.status.success(),
        "the backup the catalog calls complete does not restore ({:?}): {}",
        o.status.code(),
        stderr(&o)
    );
    same_tree(&rig.src, &rig.restored(&t));

    // The tapes alone (a lost catalog) give the backup back whole too.
    fs::remove_dir_all(rig.db()).unwrap();
    rig.ok(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", rig.lib_dir("lib").display()),
        "--sequential",
    ]);
    let r = rig.json(&["catalog", "rebuild", "--from-media", "lib"]);
    assert_eq!(r["incomplete"].as_array().unwrap().len(), 0, "{r}");
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
}

/// `media label` must not erase a tape that holds a media set, even when the catalog
/// (restored from an older copy) remembers the tape only as labelled and blank.
#[test]
fn labelling_refuses_a_tape_whose_set_an_old_catalog_forgot() {
    let rig = Rig::new(1, 2);
    rig.library_with("lib", "SSC001..SSC002", "64MiB", "4MiB", "p");
    // The catalog as it was before the backup.
    let saved = rig.repo.dir.path().join("catalog-copy");
    copy_dir(&rig.db(), &saved);
    rig.ok(&["tape", "backup", "--library", "lib", "--pool", "p"]);
    let before = fs::read(rig.tape_file("lib", "SSC001")).unwrap();
    fs::remove_dir_all(rig.db()).unwrap();
    copy_dir(&saved, &rig.db());
    let o = rig.run(&["media", "label", "lib", "--pool", "p", "--tapes", "SSC001"]);
    no_panic(&o);
    assert!(
        fs::read(rig.tape_file("lib", "SSC001")).unwrap() == before,
        "a tape holding a media set was erased by `media label` (exit {:?}): {}",
        o.status.code(),
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(MEDIUM_REFUSED), "{}", stderr(&o));
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A tape in an idle drive (an operator loaded it; no process holds the drive) is in the
/// library: a restore must not wait for an operator to "insert" it.
#[test]
fn a_restore_reads_a_tape_left_in_an_idle_drive() {
    let rig = Rig::new(1, 2);
    rig.library_with("lib", "SSC001..SSC002", "64MiB", "4MiB", "p");
    rig.ok(&["tape", "backup", "--library", "lib", "--pool", "p"]);
    rig.ok(&["library", "load", "lib", "SSC001", "--drive", "1"]);
    let (t, o) = rig.restore(&["--mount-timeout", "3s"]);
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        stderr(&o)
    );
    same_tree(&rig.src, &rig.restored(&t));
    // The same for a rebuild from the tapes.
    fs::remove_dir_all(rig.db()).unwrap();
    rig.ok(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", rig.lib_dir("lib").display()),
        "--sequential",
    ]);
    rig.ok(&["library", "unload", "lib", "--drive", "1"]);
    rig.ok(&["library", "load", "lib", "SSC001", "--drive", "1"]);
    let r = rig.json(&["catalog", "rebuild", "--from-media", "lib"]);
    assert_eq!(r["added"].as_array().unwrap().len(), 1, "{r}");
}

/// README: exit 19 when "every drive of the library failed".
#[test]
fn every_drive_failing_exits_19() {
    if !common::is_root() {
        eprintln!("skipped: needs root to mount a small file system");
        return;
    }
    let rig = Rig::new(2, 4);
    rig.library_with("lib", "SSC001..SSC003", "64MiB", "4MiB", "p");
    let fsdir = rig.repo.dir.path().join("small-fs");
    fs::create_dir_all(&fsdir).unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "tmpfs",
            fsdir.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Umount(fsdir.clone());
    for t in ["SSC001", "SSC002"] {
        let p = rig.tape_file("lib", t);
        fs::copy(&p, fsdir.join(format!("{t}.tape"))).unwrap();
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(fsdir.join(format!("{t}.tape")), &p).unwrap();
    }
    let o = rig.run(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--archive-size",
        "1MiB",
        "--mount-timeout",
        "2s",
    ]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(NO_MEDIUM), "{}", stderr(&o));
}

/// Absurd values: clear usage errors (exit 2), no panic, nothing written.
#[test]
fn absurd_values_are_refused_with_usage_errors() {
    let rig = Rig::new(1, 1);
    let d = rig.repo.dir.path();
    let create = |dir: &str, extra: &[&str]| {
        let mut a = vec!["library", "create", dir];
        a.extend_from_slice(extra);
        rig.run(&a)
    };
    let mut bad = Vec::new();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "cap<ew".into(),
            vec!["--capacity", "1MiB", "--early-warning", "2MiB"],
        ),
        (
            "cap=ew".into(),
            vec!["--capacity", "1MiB", "--early-warning", "1MiB"],
        ),
        ("no drive".into(), vec!["--drives", "0"]),
        ("no slot".into(), vec!["--slots", "0"]),
        ("slash".into(), vec!["--tapes", "A/1"]),
        ("dotdot".into(), vec!["--tapes", "../../x"]),
        ("range dotdot".into(), vec!["--tapes", "..x"]),
        ("range huge".into(), vec!["--tapes", "A0000000..A9999999"]),
        ("range reversed".into(), vec!["--tapes", "A9..A1"]),
        (
            "too many".into(),
            vec!["--slots", "2", "--tapes", "A1,A2,A3"],
        ),
        ("twice".into(), vec!["--tapes", "A1,A1"]),
    ];
    for (i, (what, extra)) in cases.iter().enumerate() {
        let dir = d.join(format!("bad{i}"));
        let o = create(dir.to_str().unwrap(), extra);
        no_panic(&o);
        if o.status.code() != Some(USAGE) {
            bad.push(format!("{what}: exit {:?} {}", o.status.code(), stderr(&o)));
        }
        assert!(!d.join("x.tape").exists() && !d.join("../x.tape").exists());
    }
    // Into a plain file.
    let f = d.join("plain");
    fs::write(&f, b"x").unwrap();
    let o = create(f.to_str().unwrap(), &[]);
    no_panic(&o);
    assert!(!o.status.success());
    assert_eq!(fs::read(&f).unwrap(), b"x");

    rig.library_with("lib", "SSC001..SSC002", "64MiB", "4MiB", "p");
    let before: Vec<Vec<u8>> = ["SSC001", "SSC002"]
        .iter()
        .map(|t| fs::read(rig.tape_file("lib", t)).unwrap())
        .collect();
    for (what, flag, v) in [
        ("block 0", "--block-size", "0"),
        ("block 1", "--block-size", "1"),
        ("block 1GiB", "--block-size", "1GiB"),
        ("block 17MiB", "--block-size", "17MiB"),
    ] {
        let o = rig.run(&["tape", "backup", "--library", "lib", "--pool", "p", flag, v]);
        no_panic(&o);
        if o.status.code() != Some(USAGE) {
            bad.push(format!("{what}: exit {:?} {}", o.status.code(), stderr(&o)));
        }
    }
    let after: Vec<Vec<u8>> = ["SSC001", "SSC002"]
        .iter()
        .map(|t| fs::read(rig.tape_file("lib", t)).unwrap())
        .collect();
    assert!(before == after, "a refused backup wrote a tape");
    for t in ["SSC001", "SSC002"] {
        assert_eq!(rig.tape(t)["state"], "blank", "{t}: {}", rig.tape(t));
    }
    for bc in ["../evil", "a/b", ""] {
        let o = rig.run(&["library", "import", "lib", bc]);
        no_panic(&o);
        if o.status.code() != Some(USAGE) {
            bad.push(format!(
                "import {bc:?}: exit {:?} {}",
                o.status.code(),
                stderr(&o)
            ));
        }
    }
    assert!(!rig.lib_dir("evil.tape").exists());
    // A library URL naming a file, and one naming nothing.
    let o = rig.run(&[
        "resource",
        "add",
        "target",
        "f",
        &format!("vlib://{}", f.display()),
        "--sequential",
    ]);
    if o.status.success() {
        let o = rig.run(&["library", "status", "f"]);
        no_panic(&o);
        assert!(!o.status.success());
    }
    assert!(
        bad.is_empty(),
        "not refused as usage errors:\n{}",
        bad.join("\n")
    );
}

/// An early-warning zone smaller than a block: the drive's end comes before the warning. The
/// library is refused up front, or a backup still completes; it must not fill every tape.
#[test]
fn an_early_warning_smaller_than_a_block_does_not_burn_every_tape() {
    let rig = Rig::new(3, 4);
    let dir = rig.lib_dir("lib");
    let o = rig.run(&[
        "library",
        "create",
        dir.to_str().unwrap(),
        "--capacity",
        "8MiB",
        "--early-warning",
        "100KiB",
        "--tapes",
        "SSC001..SSC006",
    ]);
    no_panic(&o);
    if !o.status.success() {
        return; // refused up front
    }
    rig.ok(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", dir.display()),
        "--sequential",
    ]);
    rig.ok(&["media", "pool", "add", "p"]);
    rig.ok(&["media", "label", "lib", "--pool", "p"]);
    // 12 MiB onto six 8 MiB tapes, in 256 KiB blocks, one big archive.
    let o = rig.run(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--mount-timeout",
        "1s",
    ]);
    no_panic(&o);
    let full = rig
        .json(&["media", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "full")
        .count();
    assert!(
        o.status.success(),
        "exit {:?}, {full} of 6 tapes full: {}",
        o.status.code(),
        stderr(&o)
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
}

/// A restore waiting for a tape on the shelf: the request is in `media pending` while it
/// waits, the wait ends at `--mount-timeout` (exit 19), and the request is closed after; an
/// import during the wait lets it go on.
#[test]
fn a_restore_waiting_for_a_shelved_tape_is_pending_and_bounded() {
    let rig = Rig::new(1, 2);
    rig.library_with("lib", "SSC001..SSC002", "64MiB", "4MiB", "p");
    rig.ok(&["tape", "backup", "--library", "lib", "--pool", "p"]);
    rig.ok(&["library", "export", "lib", "SSC001"]);
    let target = rig.repo.dir.path().join("r1");
    let started = Instant::now();
    let mut child = rig.spawn(
        &[
            "tape",
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--mount-timeout",
            "4s",
        ],
        &[],
    );
    let mut seen = false;
    while child.try_wait().unwrap().is_none() {
        let p = rig.json(&["media", "pending"]);
        if let Some(r) = p.as_array().unwrap().first() {
            assert_eq!(r["library"], "lib", "{p}");
            assert!(
                r["message"].as_str().unwrap_or("").contains("SSC001"),
                "{p}"
            );
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, err) = wait_exit(&mut child, Duration::from_secs(30));
    assert!(
        seen,
        "no mount request in `media pending` while the restore waited: {err}"
    );
    assert_eq!(code, Some(NO_MEDIUM), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        rig.json(&["media", "pending"]).as_array().unwrap().len(),
        0,
        "request left open"
    );
    assert!(
        !target.exists() || common::walkdir(&target).iter().all(|p| !p.is_file()),
        "a restore that got no tape wrote files"
    );

    // With the tape put back during the wait, it goes on.
    let target = rig.repo.dir.path().join("r2");
    let mut child = rig.spawn(
        &[
            "tape",
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--mount-timeout",
            "60s",
        ],
        &[],
    );
    let start = Instant::now();
    while rig
        .json(&["media", "pending"])
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no mount request"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rig.ok(&["library", "import", "lib", "SSC001"]);
    let (code, err) = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    same_tree(&rig.src, &rig.restored(&target));
    assert_eq!(rig.json(&["media", "pending"]).as_array().unwrap().len(), 0);
}

/// Two tape backups race on one library: each ends (success or a documented refusal),
/// whatever the catalog calls complete restores byte for byte, and a third run afterwards
/// works.
#[test]
fn two_backups_racing_on_one_library() {
    let rig = Rig::new(3, 3);
    let dir = rig.lib_dir("lib");
    rig.ok(&[
        "library",
        "create",
        dir.to_str().unwrap(),
        "--capacity",
        "8MiB",
        "--early-warning",
        "1MiB",
        "--load-delay",
        "100ms",
        "--tapes",
        "SSC001..SSC008",
    ]);
    rig.ok(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", dir.display()),
        "--sequential",
    ]);
    rig.ok(&["media", "pool", "add", "p"]);
    rig.ok(&["media", "label", "lib", "--pool", "p"]);
    let args = [
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--archive-size",
        "1MiB",
        "--block-size",
        "64KiB",
        "--mount-timeout",
        "3s",
    ];
    let mut a = rig.spawn(&args, &[]);
    let mut b = rig.spawn(&args, &[]);
    let (ca, ea) = wait_exit(&mut a, Duration::from_secs(60));
    let (cb, eb) = wait_exit(&mut b, Duration::from_secs(60));
    for (c, e) in [(ca, &ea), (cb, &eb)] {
        assert!(!e.contains("panicked"), "{e}");
        assert!(
            matches!(c, Some(0) | Some(6) | Some(14) | Some(19) | Some(20)),
            "exit {c:?}: {e}"
        );
    }
    assert!(
        ca == Some(0) || cb == Some(0),
        "neither finished:\nA {ca:?} {ea}\nB {cb:?} {eb}"
    );
    // Every tape is in at most one set, and a set's tapes carry its label.
    let sets = rig.json(&["media", "list"]);
    let mut seen = std::collections::HashMap::new();
    for t in sets.as_array().unwrap() {
        if let (Some(s), Some(q)) = (t["media_set"].as_str(), t["set_seq"].as_i64()) {
            assert!(
                seen.insert((s.to_string(), q), t["label"].clone())
                    .is_none(),
                "two tapes are tape {q} of set {s}: {sets}"
            );
        }
    }
    let (t, o) = rig.restore(&[]);
    assert!(
        o.status.success(),
        "A {ca:?} B {cb:?}: {}\nA: {ea}\nB: {eb}",
        stderr(&o)
    );
    same_tree(&rig.src, &rig.restored(&t));
    // Whatever was left behind, another run works and the restore is whole.
    write(&rig.src.join("big/late"), &pseudo_random(1 << 20, 5));
    rig.ok(&["backup", "-q", rig.src.to_str().unwrap()]);
    let o = rig.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
    let _ = INCOMPLETE;
}
