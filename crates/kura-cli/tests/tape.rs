//! Tape end to end, with the virtual library: labelling, backups spanning three and more
//! tapes, restore (whole, and one file by positioning to its tape files), the catalog lost and
//! rebuilt from the tapes alone, mount waits that time out and that a load satisfies, tapes
//! refused (wrong label, unlabelled, another pool, another media set), a drive that fails
//! mid-job (a real fault: its tape on a full file system) and the fail-over to the other
//! drive, a mirror to two libraries, damaged and truncated tape files, and a changer that
//! hangs or fails.

mod common;

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::tapes::{Rig, Tmpfs, same_tree, wait_until};
use common::{assert_fails, pseudo_random, stderr, write};

const INCOMPLETE: i32 = 3;
const UNREACHABLE: i32 = 6;
const DEGRADED: i32 = 9;
const NO_MEDIUM: i32 = 19;
const MEDIUM_REFUSED: i32 = 20;

#[test]
fn spans_tapes_restores_and_rebuilds_the_catalog_from_them() {
    // 5 × 12 MiB onto 24 MiB tapes: the backup spans three and more tapes. Packs of 4 MiB,
    // so what one file needs is a few packs, whatever the order the packer filled them.
    let rig = Rig::with_init(5, 12, &["--pack-size-mib", "4"]);
    rig.library("lib", "SSC001..SSC006", "24MiB", "weekly");
    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "weekly",
        "--archive-size",
        "4MiB",
    ]);
    let lib = &out["libraries"][0];
    let tapes: Vec<&str> = lib["stats"]["tapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tapes.len() >= 3, "spans 3+ tapes: {tapes:?}");
    assert_eq!(
        &tapes[..3],
        &["SSC001", "SSC002", "SSC003"],
        "in label order"
    );
    assert_eq!(lib["copied"].as_array().unwrap().len(), 1);
    // Every tape but the last of the set is full; the last may take more.
    for t in &tapes[..tapes.len() - 1] {
        assert_eq!(rig.tape(t)["state"], "full", "{t}");
    }
    assert_eq!(rig.tape(tapes[tapes.len() - 1])["state"], "writable");
    assert_eq!(rig.tape("SSC006")["state"], "blank");

    // Whole restore, byte for byte.
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // One file from the middle of the set: only the tape files holding it are read.
    let whole = rig.json(&[
        "tape",
        "restore",
        "latest",
        "--target",
        rig.repo.dir.path().join("w").to_str().unwrap(),
    ]);
    let _ = whole;
    let (t, o) = rig.restore(&["--include", &format!("{}/big/f2", rig.src.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = fs::read(rig.restored(&t).join("big/f2")).unwrap();
    assert!(got == fs::read(rig.src.join("big/f2")).unwrap());
    assert!(
        !rig.restored(&t).join("big/f0").exists(),
        "only what was asked for"
    );
    let said = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    let read: f64 = said
        .split("read ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(
        read < 30.0,
        "one 12 MiB file read {read} MiB of a 60 MiB backup: {said}"
    );

    // A second session appends to the set and writes only what the set does not hold.
    write(&rig.src.join("big/f5"), &pseudo_random(3 << 20, 99));
    rig.ok(&["backup", "-q", rig.src.to_str().unwrap()]);
    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "weekly",
        "--archive-size",
        "4MiB",
    ]);
    let lib = &out["libraries"][0];
    assert_eq!(lib["already"].as_array().unwrap().len(), 1, "{lib}");
    assert_eq!(lib["copied"].as_array().unwrap().len(), 1, "{lib}");
    assert!(
        lib["packs_skipped"].as_u64().unwrap() >= 5,
        "deduplicated within the set: {lib}"
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // The catalog is lost: the tapes alone give it back, and a second scan enters nothing.
    let db = rig.repo.dir.path().join("data/kura/catalog.db");
    fs::remove_file(&db).unwrap();
    rig.ok(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", rig.lib_dir("lib").display()),
        "--sequential",
    ]);
    let r = rig.json(&["catalog", "rebuild", "--from-media", "lib"]);
    assert_eq!(r["added"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["incomplete"].as_array().unwrap().len(), 0, "{r}");
    let again = rig.json(&["catalog", "rebuild", "--from-media", "lib"]);
    assert_eq!(
        again["added"].as_array().unwrap().len(),
        0,
        "never twice: {again}"
    );
    assert_eq!(again["known"].as_array().unwrap().len(), 2);
    let listed = rig.json(&["tape", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] == "complete")
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
    // The rebuilt catalog knows the pools and the tapes' places.
    assert_eq!(rig.tape("SSC001")["state"], "full");
    assert!(rig.tape("SSC001")["media_set"].is_string());
    // With everything already on the set, a run asks for no tape at all.
    for t in ["SSC001", "SSC002", "SSC003", "SSC004", "SSC005", "SSC006"] {
        rig.ok(&["library", "export", "lib", t]);
    }
    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "weekly",
        "--mount-timeout",
        "1s",
    ]);
    assert_eq!(
        out["libraries"][0]["already"].as_array().unwrap().len(),
        2,
        "{out}"
    );
    assert!(out["libraries"][0]["error"].is_null(), "{out}");
}

#[test]
fn a_mount_wait_times_out_and_a_load_during_the_wait_satisfies_it() {
    // 3 × 10 MiB onto 16 MiB tapes (13 MiB before the early warning): three tapes.
    let rig = Rig::new(3, 10);
    rig.library("lib", "SSC001..SSC004", "16MiB", "p");
    // Only two tapes in the library: the backup needs three.
    rig.ok(&["library", "export", "lib", "SSC003"]);
    rig.ok(&["library", "export", "lib", "SSC004"]);
    let started = Instant::now();
    let o = rig.run(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--archive-size",
        "2MiB",
        "--mount-timeout",
        "2s",
    ]);
    assert_fails(&o, NO_MEDIUM, "no writable tape of pool p came within 2 s");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        stderr(&o).contains("please insert a writable tape of pool p"),
        "{}",
        stderr(&o)
    );
    // Nothing claims the backup: it is not complete, so not restorable from tape.
    let listed = rig.json(&["tape", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] != "complete"),
        "{listed}"
    );
    let o = rig.run(&["tape", "restore", "latest", "--target", "/tmp/never-used"]);
    assert!(!o.status.success());
    // The request is closed (abandoned) once the run ended.
    assert_eq!(rig.json(&["media", "pending"]).as_array().unwrap().len(), 0);

    // Again, with time to answer: the request shows in `media pending` and reaches the
    // notify command; an operator puts a tape in, the backup goes on.
    let log = rig.repo.dir.path().join("notify.log");
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
            "--mount-timeout",
            "60s",
        ],
        &[(
            "KURA_TAPE_NOTIFY",
            format!("echo \"$KURA_EVENT $KURA_LIBRARY\" >> {}", log.display()),
        )],
    );
    wait_until("a mount request", Duration::from_secs(30), || {
        !rig.json(&["media", "pending"])
            .as_array()
            .unwrap()
            .is_empty()
    });
    let pending = rig.json(&["media", "pending"]);
    assert_eq!(pending[0]["library"], "lib");
    rig.ok(&["library", "import", "lib", "SSC003"]);
    let st = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(st.success(), "{err}");
    assert!(err.contains("tape came, going on"), "{err}");
    let notes = fs::read_to_string(&log).unwrap();
    assert!(
        notes.contains("mount-request lib") && notes.contains("mount-satisfied lib"),
        "{notes}"
    );
    assert_eq!(rig.json(&["media", "pending"]).as_array().unwrap().len(), 0);
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // A restore asks for a tape that is on the shelf by its label, bounded the same way.
    rig.ok(&["library", "export", "lib", "SSC001"]);
    let (_, o) = rig.restore(&["--mount-timeout", "1s"]);
    assert_fails(
        &o,
        NO_MEDIUM,
        "tape SSC001 was not put into the library within 1 s",
    );
}

#[test]
fn wrong_unlabelled_and_foreign_tapes_are_refused_and_never_written() {
    let rig = Rig::new(2, 6);
    rig.library("lib", "SSC001..SSC005", "32MiB", "p");
    rig.ok(&["media", "pool", "add", "q"]);
    let tapes = rig.lib_dir("lib").join("tapes");
    // SSC001 carries SSC005's label (a tape put in the wrong case).
    fs::copy(tapes.join("SSC005.tape"), tapes.join("SSC001.tape")).unwrap();
    // SSC002 lost its label (a blank tape with a barcode the catalog knows).
    fs::write(tapes.join("SSC002.tape"), b"").unwrap();
    // SSC003 was labelled for pool q; then its catalog entry said p (labelled again), and the
    // old tape came back.
    rig.ok(&["media", "label", "lib", "--pool", "q", "--tapes", "SSC003"]);
    let q_tape = fs::read(tapes.join("SSC003.tape")).unwrap();
    rig.ok(&["media", "label", "lib", "--pool", "p", "--tapes", "SSC003"]);
    fs::write(tapes.join("SSC003.tape"), &q_tape).unwrap();
    let before: Vec<(String, Vec<u8>)> = ["SSC001", "SSC002", "SSC003"]
        .iter()
        .map(|t| {
            (
                t.to_string(),
                fs::read(tapes.join(format!("{t}.tape"))).unwrap(),
            )
        })
        .collect();

    let out = rig.json(&["tape", "backup", "--library", "lib", "--pool", "p"]);
    assert_eq!(
        out["libraries"][0]["stats"]["tapes"],
        serde_json::json!(["SSC004"]),
        "{out}"
    );
    for (t, bytes) in &before {
        assert!(
            &fs::read(tapes.join(format!("{t}.tape"))).unwrap() == bytes,
            "{t} was written"
        );
    }
    let reason = |t: &str| {
        rig.tape(t)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(rig.tape("SSC001")["state"], "error");
    assert!(
        reason("SSC001").contains("is labelled SSC005"),
        "{}",
        reason("SSC001")
    );
    assert!(
        reason("SSC002").contains("not labelled"),
        "{}",
        reason("SSC002")
    );
    assert!(
        reason("SSC003").contains("belongs to pool q"),
        "{}",
        reason("SSC003")
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // A tape of another media set (same label, same pool) is refused on reading, with why.
    let set_tape = fs::read(tapes.join("SSC004.tape")).unwrap();
    rig.ok(&["media", "label", "lib", "--pool", "p", "--tapes", "SSC005"]);
    // Forge: SSC004's file replaced by a tape labelled SSC004 that is in no set.
    let lib2 = rig.repo.dir.path().join("lib2");
    rig.ok(&[
        "library",
        "create",
        lib2.to_str().unwrap(),
        "--capacity",
        "32MiB",
        "--early-warning",
        "3MiB",
        "--tapes",
        "SSC004",
    ]);
    rig.ok(&[
        "resource",
        "add",
        "target",
        "lib2",
        &format!("vlib://{}", lib2.display()),
        "--sequential",
    ]);
    rig.ok(&["media", "pool", "add", "p2"]);
    let o = rig.run(&[
        "media", "label", "lib2", "--pool", "p2", "--tapes", "SSC004",
    ]);
    assert!(
        o.status.success() || o.status.code() == Some(MEDIUM_REFUSED),
        "{}",
        stderr(&o)
    );
    fs::copy(lib2.join("tapes/SSC004.tape"), tapes.join("SSC004.tape")).unwrap();
    let (_, o) = rig.restore(&[]);
    assert!(
        !o.status.success(),
        "a foreign tape must not be read as the set's"
    );
    assert!(stderr(&o).contains("SSC004"), "{}", stderr(&o));
    fs::write(tapes.join("SSC004.tape"), &set_tape).unwrap();
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // Labelling refuses a tape in a media set, and one with a label the catalog does not know.
    let o = rig.run(&["media", "label", "lib", "--pool", "p", "--tapes", "SSC004"]);
    assert_eq!(o.status.code(), Some(MEDIUM_REFUSED), "{}", stderr(&o));
    assert!(stderr(&o).contains("media set"), "{}", stderr(&o));
}

#[test]
fn a_drive_error_mid_job_fails_over_to_the_other_drive() {
    if !common::is_root() {
        eprintln!("skipped: needs root to mount a small file system");
        return;
    }
    let rig = Rig::new(3, 8);
    rig.library("lib", "SSC001..SSC004", "64MiB", "p");
    // SSC001 lives on a file system with room for 6 MiB: writing it fails mid-job with a real
    // ENOSPC from the host, a device error (not the tape's own end).
    let fsdir = rig.repo.dir.path().join("small-fs");
    let _fs = Tmpfs::new(&fsdir, "6m");
    let tapes = rig.lib_dir("lib").join("tapes");
    fs::copy(tapes.join("SSC001.tape"), fsdir.join("SSC001.tape")).unwrap();
    fs::remove_file(tapes.join("SSC001.tape")).unwrap();
    std::os::unix::fs::symlink(fsdir.join("SSC001.tape"), tapes.join("SSC001.tape")).unwrap();

    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--archive-size",
        "2MiB",
    ]);
    let lib = &out["libraries"][0];
    assert!(lib["error"].is_null(), "{lib}");
    let failed = lib["stats"]["failed_drives"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{lib}");
    assert!(failed[0].as_str().unwrap().ends_with("drive 0"), "{lib}");
    assert_eq!(rig.tape("SSC001")["state"], "error");
    assert!(
        rig.tape("SSC001")["reason"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{}",
        rig.tape("SSC001")
    );
    // What SSC001 acknowledged stays there (it is read back); the rest went on in drive 1.
    let status = rig.json(&["library", "status", "lib"]);
    assert_eq!(
        status["drives"][0]["barcode"], "SSC001",
        "the failed drive keeps its tape"
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        said.contains("SSC001") && said.contains("SSC002"),
        "pieces on both tapes: {said}"
    );
}

#[test]
fn a_mirror_writes_two_libraries_and_one_failing_leaves_the_other_whole() {
    let rig = Rig::new(3, 6);
    rig.library("left", "L001..L003", "64MiB", "p");
    rig.library("right", "R001..R003", "64MiB", "p");
    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "left",
        "--library",
        "right",
        "--pool",
        "p",
    ]);
    assert_eq!(out["complete"].as_array().unwrap().len(), 1, "{out}");
    let sets: Vec<&str> = out["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["media_set"].as_str().unwrap())
        .collect();
    assert_ne!(sets[0], sets[1], "each library its own media set");
    for lib in ["left", "right"] {
        let (t, o) = rig.restore(&["--library", lib]);
        assert!(o.status.success(), "{lib}: {}", stderr(&o));
        same_tree(&rig.src, &rig.restored(&t));
    }
    // One library loses its tapes: the other still restores everything.
    for e in fs::read_dir(rig.lib_dir("left").join("tapes")).unwrap() {
        fs::write(e.unwrap().path(), b"").unwrap();
    }
    let (t, o) = rig.restore(&["--library", "right"]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));

    // A new backup to both while one has no writable tape: the other completes (exit 9).
    write(&rig.src.join("big/new"), &pseudo_random(1 << 20, 7));
    rig.ok(&["backup", "-q", rig.src.to_str().unwrap()]);
    let o = rig.run(&[
        "tape",
        "backup",
        "--library",
        "left",
        "--library",
        "right",
        "--pool",
        "p",
        "--mount-timeout",
        "1s",
    ]);
    assert_eq!(o.status.code(), Some(DEGRADED), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("left: tape backup failed"),
        "{}",
        stderr(&o)
    );
    let (t, o) = rig.restore(&["--library", "right"]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
}

#[test]
fn damaged_and_short_tapes_cost_only_the_files_they_hold() {
    let rig = Rig::new(4, 5);
    rig.library("lib", "SSC001..SSC004", "16MiB", "p");
    rig.ok(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--archive-size",
        "2MiB",
    ]);
    let tapes = rig.lib_dir("lib").join("tapes");
    // Flip bytes inside a data block in the middle of SSC001 (well past the labels).
    let path = tapes.join("SSC001.tape");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    fs::write(&path, &bytes).unwrap();
    let (t, o) = rig.restore(&[]);
    assert_eq!(o.status.code(), Some(INCOMPLETE), "{}", stderr(&o));
    let damaged: Vec<String> = stderr(&o)
        .lines()
        .filter_map(|l| l.strip_prefix("damaged: "))
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect();
    assert!(
        !damaged.is_empty() && damaged.len() <= 2,
        "one block costs one or two files: {damaged:?}"
    );
    // Every other file is restored byte for byte; the damaged ones are not under their names.
    let restored = rig.restored(&t);
    for f in common::walkdir(&rig.src)
        .into_iter()
        .filter(|p| p.is_file())
    {
        let rel = f.strip_prefix(&rig.src).unwrap();
        let spath = format!("{}", restored.join(rel).display());
        if damaged.iter().any(|d| d == &spath) {
            assert!(
                !restored.join(rel).exists(),
                "{spath} restored although damaged"
            );
        } else {
            let got = fs::read(restored.join(rel))
                .unwrap_or_else(|e| panic!("{spath}: {e}; damaged {damaged:?}; {}", stderr(&o)));
            assert!(got == fs::read(&f).unwrap(), "{spath}");
        }
    }
    fs::write(&path, fs::read(&path).unwrap()).unwrap();

    // A tape file that ends early reads as a short tape: what is on it is restored.
    let last = tapes.join("SSC002.tape");
    let len = fs::metadata(&last).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(len / 2).unwrap();
    let (_, o) = rig.restore(&[]);
    assert!(
        matches!(o.status.code(), Some(INCOMPLETE)),
        "{:?} {}",
        o.status.code(),
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn a_changer_that_hangs_or_fails_is_bounded_and_reported() {
    let rig = Rig::new(1, 1);
    let dir = rig.repo.dir.path();
    let hang = dir.join("mtx-hang");
    fs::write(&hang, "#!/bin/sh\nsleep 60\n").unwrap();
    let fail = dir.join("mtx-fail");
    fs::write(
        &fail,
        "#!/bin/sh\necho 'mtx: Request Sense: Sense Key=Not Ready' >&2\nexit 1\n",
    )
    .unwrap();
    for f in [&hang, &fail] {
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut fs::metadata(f).unwrap().permissions(),
            0o755,
        );
        fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    rig.ok(&[
        "resource",
        "add",
        "target",
        "hung",
        &format!(
            "tape:///dev/sg9?drive=/dev/nst9&mtx={}&timeout=1",
            hang.display()
        ),
        "--sequential",
    ]);
    rig.ok(&[
        "resource",
        "add",
        "target",
        "broken",
        &format!(
            "tape:///dev/sg9?drive=/dev/nst9&mtx={}&timeout=5",
            fail.display()
        ),
        "--sequential",
    ]);
    let started = Instant::now();
    let o = rig.run(&["library", "status", "hung"]);
    assert_fails(&o, UNREACHABLE, "no answer within 1.0 s");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        started.elapsed()
    );
    let o = rig.run(&["library", "status", "broken"]);
    assert_fails(&o, UNREACHABLE, "Sense Key=Not Ready");
    // A URL that is not a library's is refused where it is registered.
    let o = rig.run(&[
        "resource",
        "add",
        "target",
        "bad",
        "tape:///dev/sg9",
        "--sequential",
    ]);
    assert_fails(&o, 2, "no drive");
}

#[test]
fn a_tape_job_runs_on_its_schedule_in_the_daemon_and_by_hand() {
    let rig = Rig::new(2, 3);
    rig.library("lib", "SSC001..SSC003", "64MiB", "p");
    let repo_url = rig.repo.location.clone();
    rig.ok(&["resource", "add", "target", "src", &repo_url]);
    // Its object must be a repository target.
    let o = rig.run(&[
        "job",
        "add",
        "bad",
        "--object",
        "/nowhere",
        "--redundancy",
        "1",
        "--tape-library",
        "lib",
        "--tape-pool",
        "p",
    ]);
    assert_fails(&o, 2, "tape job copies from a repository target");
    rig.ok(&[
        "job",
        "add",
        "totape",
        "--object",
        "src",
        "--redundancy",
        "1",
        "--tape-library",
        "lib",
        "--tape-pool",
        "p",
        "--schedule",
        "*:*:0/2",
    ]);
    // A job whose pool has no tape: its mount request reaches the notification hook.
    rig.ok(&["media", "pool", "add", "empty"]);
    rig.ok(&[
        "job",
        "add",
        "starved",
        "--object",
        "src",
        "--redundancy",
        "1",
        "--tape-library",
        "lib",
        "--tape-pool",
        "empty",
        "--tape-mount-timeout",
        "1s",
        "--schedule",
        "*:*:0/2",
    ]);
    let log = rig.repo.dir.path().join("notify.log");
    let config = rig.repo.dir.path().join("daemon.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nnotify = \"echo $KURA_EVENT >> {}\"\n",
            log.display()
        ),
    )
    .unwrap();
    let mut cmd = rig.repo.cmd();
    let state = rig.repo.dir.path().join("state");
    let child = cmd
        .env("KURA_CONFIG", &config)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "d1",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _served = common::http::Served(child);
    wait_until("a scheduled tape run", Duration::from_secs(60), || {
        rig.json(&["tape", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["state"] == "complete")
    });
    wait_until(
        "a mount request to the hook",
        Duration::from_secs(60),
        || fs::read_to_string(&log).is_ok_and(|l| l.contains("mount-request")),
    );
    drop(_served);
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
    // By hand, in this process: the newest snapshot is already on the set.
    let out = rig.json(&["job", "run", "totape"]);
    assert_eq!(
        out["libraries"][0]["already"].as_array().unwrap().len(),
        1,
        "{out}"
    );
}

#[test]
fn move_removes_the_source_after_read_back_and_retention_frees_a_set() {
    let rig = Rig::new(2, 3);
    rig.ok(&["media", "pool", "add", "short", "--retention", "2s"]);
    rig.library("lib", "SSC001..SSC003", "64MiB", "short");
    let first = rig.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = rig.json(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "short",
        "--move",
    ]);
    assert_eq!(out["moved"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(
        rig.repo.snapshot_count(),
        0,
        "moved: gone from the repository"
    );
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
    let set1 = rig.tape("SSC001")["media_set"]
        .as_str()
        .unwrap()
        .to_string();

    // Within the retention the set's tapes are never written over; after it, the set expires
    // whole and its tapes take the next backup.
    write(&rig.src.join("big/later"), &pseudo_random(1 << 20, 5));
    rig.ok(&["backup", "-q", rig.src.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(2500));
    let out = rig.json(&["tape", "backup", "--library", "lib", "--pool", "short"]);
    assert!(out["libraries"][0]["error"].is_null(), "{out}");
    let listed = rig.json(&["tape", "list"]);
    let snaps: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["snapshot"].as_str().unwrap())
        .collect();
    assert!(
        !snaps.contains(&first.as_str()),
        "the expired set's backup left the catalog: {listed}"
    );
    assert_eq!(snaps.len(), 1);
    let set2 = rig.tape("SSC001")["media_set"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(set1, set2, "SSC001 was written again, in a new set");
    let (t, o) = rig.restore(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_tree(&rig.src, &rig.restored(&t));
}

#[test]
fn the_probe_tells_a_tape_library_from_a_disk_and_checks_loaded_labels() {
    let rig = Rig::new(1, 1);
    rig.library("lib", "SSC001..SSC003", "32MiB", "p");
    rig.ok(&[
        "resource",
        "add",
        "target",
        "disk",
        rig.repo.location.as_str(),
    ]);
    let tapes = rig.lib_dir("lib").join("tapes");
    // SSC002 carries SSC001's label; both sit in drives.
    fs::copy(tapes.join("SSC001.tape"), tapes.join("SSC002.tape")).unwrap();
    rig.ok(&["library", "load", "lib", "SSC001", "--drive", "0"]);
    rig.ok(&["library", "load", "lib", "SSC002", "--drive", "1"]);
    let o = rig.run(&["--json", "resource", "probe", "lib", "disk"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let by = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("disk")["kind"], "disk");
    let lib = by("lib");
    assert_eq!(lib["kind"], "tape", "{lib}");
    assert_eq!(lib["library"]["library"], "virtual");
    assert_eq!(lib["library"]["tapes"], 3);
    let loaded = lib["library"]["loaded"].as_array().unwrap();
    assert_eq!(loaded[0]["verified"], true, "{lib}");
    assert_eq!(loaded[1]["verified"], false, "{lib}");
    assert!(
        stderr(&o)
            .contains("tape SSC002 in drive 1: the tape with barcode SSC002 is labelled SSC001"),
        "{}",
        stderr(&o)
    );
    // A library whose directory is gone is unhealthy.
    fs::rename(rig.lib_dir("lib"), rig.lib_dir("moved")).unwrap();
    let o = rig.run(&["resource", "probe", "lib"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
}

/// Seed 002: a volume's backup goes to tape with its volume backup record in the management
/// information, and a rebuild from the tapes alone finds it there.
#[test]
fn a_volume_backup_carries_its_volume_backup_record_to_tape() {
    use common::Kura as _;
    let v = common::vols::Vols::new();
    v.ok(&["volume", "create", "db", "--size", "16M"]);
    let repo = v.repo();
    let b = v.backup("db");
    let snap = b["snapshot_id"]
        .as_str()
        .or(b["snapshot"].as_str())
        .unwrap_or_default()
        .to_string();
    let lib = v.dir.path().join("lib");
    let k = |args: &[&str]| {
        let o = v.in_repo(&repo, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    k(&[
        "library",
        "create",
        lib.to_str().unwrap(),
        "--capacity",
        "64MiB",
        "--early-warning",
        "3MiB",
        "--tapes",
        "V1..V2",
    ]);
    k(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", lib.display()),
        "--sequential",
    ]);
    k(&["media", "pool", "add", "p"]);
    k(&["media", "label", "lib", "--pool", "p"]);
    k(&[
        "tape",
        "backup",
        "--library",
        "lib",
        "--pool",
        "p",
        "--volumes",
    ]);
    fs::remove_file(v.dir.path().join("data/kura/catalog.db")).unwrap();
    k(&[
        "resource",
        "add",
        "target",
        "lib",
        &format!("vlib://{}", lib.display()),
        "--sequential",
    ]);
    let out: serde_json::Value =
        serde_json::from_str(&k(&["--json", "catalog", "rebuild", "--from-media", "lib"])).unwrap();
    let found = out["volume_records"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{out}");
    assert!(found[0].as_str().unwrap().ends_with("volume db"), "{out}");
    assert!(
        snap.is_empty() || found[0].as_str().unwrap().starts_with(&snap[..8]),
        "{out} {snap}"
    );
}
