//! Changed-block tracking per backup chain, and a server that owns its volumes, driven as a
//! user would: real NBD clients (`qemu-io`) writing through `kura volume serve`, backups to
//! two local repositories, `forget --prune`, and `kura restore` into a volume's raw file.
//! Each history here once lost data from an incremental backup.

use serde_json::Value;

mod common;

use common::Kura;
use common::vols::{Vols, qemu_write};

const MIB: u64 = 1 << 20;

/// Serve, write through NBD, stop cleanly.
fn write_served(v: &Vols, name: &str, cmds: &[&str]) {
    let s = v.serve();
    qemu_write(&s.url(name), cmds);
    v.stop(s);
}

fn snap(b: &Value) -> String {
    b["snapshot_id"].as_str().unwrap().to_string()
}

fn read(b: &Value) -> u64 {
    b["summary"]["bytes_read"].as_u64().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn backups_to_two_repositories_in_turn_stay_incremental_and_miss_nothing() {
    let v = Vols::new();
    let (a, b) = (v.repo_named("repo-a"), v.repo_named("repo-b"));
    v.ok(&["volume", "create", "db", "--size", "64M"]);
    write_served(&v, "db", &["write -P 0x70 0 4M"]);
    let a1 = v.backup_to(&a, "db");
    assert_eq!(a1["incremental"], false, "{a1}");
    // The first backup to another repository reads everything: its chain is new.
    let b1 = v.backup_to(&b, "db");
    assert_eq!(b1["incremental"], false, "{b1}");
    assert!(
        b1["full_reason"]
            .as_str()
            .unwrap()
            .contains("no backup of this volume to this repository"),
        "{b1}"
    );
    // 0x71 at 16M, then a backup to B: B's chain is reset, A's keeps the bit.
    write_served(&v, "db", &["write -P 0x71 16M 4k"]);
    let b2 = v.backup_to(&b, "db");
    assert_eq!(
        (b2["incremental"].clone(), read(&b2)),
        (true.into(), 4 * MIB),
        "{b2}"
    );
    // 0x72 at 24M, then a backup to A: incremental from A's own snapshot, reading both.
    write_served(&v, "db", &["write -P 0x72 24M 4k"]);
    let a2 = v.backup_to(&a, "db");
    assert_eq!(
        (a2["incremental"].clone(), read(&a2)),
        (true.into(), 8 * MIB),
        "{a2}"
    );
    let restored = v.restored_from(&a, &snap(&a2));
    assert!(
        restored[16 << 20..(16 << 20) + 4096]
            .iter()
            .all(|x| *x == 0x71),
        "A's incremental lost the change made before the backup to B"
    );
    assert!(
        restored == v.raw("db"),
        "A's restore differs from the volume"
    );
    // Alternating goes on: each backup reads exactly its chain's dirty granules.
    for (round, (off, repo)) in [(32u64, &b), (40, &a), (48, &b), (8, &a)]
        .iter()
        .enumerate()
    {
        write_served(&v, "db", &[&format!("write -P {} {off}M 4k", 0x80 + round)]);
        let done = v.backup_to(repo, "db");
        assert_eq!(done["incremental"], true, "round {round}: {done}");
        // Two granules each time: the write of this round and the one of the round before
        // (made after this repository's last backup): 24M+32M, 32M+40M, 40M+48M, 48M+8M.
        assert_eq!(read(&done), 2 * 4 * MIB, "round {round}: {done}");
        assert!(
            v.restored_from(repo, &snap(&done)) == v.raw("db"),
            "round {round}"
        );
    }
    // Info shows both chains, trusted, with their repositories.
    let info = v.json(&["volume", "info", "db"]);
    let chains = info["dirty"]["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{info}");
    assert!(chains.iter().all(|c| c["trusted"] == true), "{info}");
    assert_eq!(info["dirty"]["trusted"], true, "{info}");
}

#[test]
fn served_backups_to_two_repositories_stay_incremental_to_both() {
    let v = Vols::new();
    let (a, b) = (v.repo_named("repo-a"), v.repo_named("repo-b"));
    v.ok(&["volume", "create", "db", "--size", "64M"]);
    v.ok(&["volume", "create", "pool0", "--size", "64M", "--work"]);
    let s = v.serve();
    let backup = |repo: &str| -> Value {
        let o = v.in_repo(repo, &["--json", "volume", "backup", "db", "--wait"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let last = text.lines().last().unwrap().to_string();
        let j: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(j["job"]["state"], "succeeded", "{j}");
        j["job"].clone()
    };
    qemu_write(&s.url("db"), &["write -P 0x70 0 4M"]);
    backup(&a);
    backup(&b);
    qemu_write(&s.url("db"), &["write -P 0x71 16M 4k"]);
    let jb = backup(&b);
    assert_eq!(jb["incremental"], true, "{jb}");
    qemu_write(&s.url("db"), &["write -P 0x72 24M 4k"]);
    let ja = backup(&a);
    assert_eq!(ja["incremental"], true, "{ja}");
    let snap_a = ja["snapshot"].as_str().unwrap().to_string();
    let snap_b = jb["snapshot"].as_str().unwrap().to_string();
    v.stop(s);
    let now = v.raw("db");
    assert!(
        v.restored_from(&a, &snap_a) == now,
        "A's served incremental lost data"
    );
    let from_b = v.restored_from(&b, &snap_b);
    assert!(
        from_b[16 << 20..(16 << 20) + 4096]
            .iter()
            .all(|x| *x == 0x71)
    );
}

#[test]
fn a_forgotten_parent_makes_the_next_backup_read_everything_and_say_why() {
    let v = Vols::new();
    let repo = v.repo();
    v.ok(&["volume", "create", "db", "--size", "64M"]);
    write_served(&v, "db", &["write -P 1 0 8M"]);
    let b1 = v.backup("db");
    write_served(&v, "db", &["write -P 2 20M 4k"]);
    let b2 = v.backup("db");
    assert_eq!(b2["incremental"], true, "{b2}");
    // The newest snapshot of the chain goes.
    let o = v.in_repo(&repo, &["forget", &snap(&b2), "--prune"]);
    assert!(o.status.success(), "{}", stderr(&o));
    write_served(&v, "db", &["write -P 3 40M 4k"]);
    let b3 = v.backup("db");
    assert_eq!(b3["incremental"], false, "{b3}");
    let why = b3["full_reason"].as_str().unwrap();
    assert!(
        why.contains(&snap(&b2)[..8]) && why.contains("no longer in the repository"),
        "{b3}"
    );
    // Everything: all the data (16 MiB here; holes are not read), not the one granule an
    // incremental would have read.
    assert_eq!(read(&b3), 16 * MIB, "{b3}");
    v.restores_equal(&snap(&b3), "db");
    // The older snapshot was never the chain's base: still restorable, as it was.
    assert!(v.restored(&snap(&b1))[20 << 20] == 0);
}

#[test]
fn a_restore_into_the_raw_file_behind_the_engines_back_untrusts_every_chain() {
    let v = Vols::new();
    let repo = v.repo();
    v.ok(&["volume", "create", "db", "--size", "64M"]);
    write_served(&v, "db", &["write -P 1 0 8M"]);
    let b1 = v.backup("db");
    write_served(&v, "db", &["write -P 2 20M 8M", "write -P 3 44M 4M"]);
    let b2 = v.backup("db");
    assert_eq!(b2["incremental"], true, "{b2}");
    assert_eq!(v.json(&["volume", "info", "db"])["dirty"]["trusted"], true);
    // While a server runs (no client), restoring into its raw file is refused.
    let raw = v.data().join("db.raw");
    let s = v.serve();
    let o = v.in_repo(
        &repo,
        &["restore", &snap(&b1), "--target", raw.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(14), "{}", stderr(&o));
    v.stop(s);
    // With no server, the restore goes through — and the engine notices.
    let o = v.in_repo(
        &repo,
        &["restore", &snap(&b1), "--target", raw.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let info = v.json(&["volume", "info", "db"]);
    assert_eq!(info["dirty"]["trusted"], false, "{info}");
    let why = info["dirty"]["reason"].as_str().unwrap().to_string();
    assert!(why.contains("no volume server held it"), "{info}");
    let text = v.ok(&["volume", "info", "db"]);
    assert!(text.contains("no volume server held it"), "{text}");
    let b3 = v.backup("db");
    assert_eq!(b3["incremental"], false, "{b3}");
    assert!(
        b3["full_reason"]
            .as_str()
            .unwrap()
            .contains("no volume server held it"),
        "{b3}"
    );
    v.restores_equal(&snap(&b3), "db");
    assert!(v.restored(&snap(&b3)) == v.restored(&snap(&b1)));
    // Tracked again from here.
    write_served(&v, "db", &["write -P 4 60M 4k"]);
    let b4 = v.backup("db");
    assert_eq!(
        (b4["incremental"].clone(), read(&b4)),
        (true.into(), 4 * MIB)
    );
    v.restores_equal(&snap(&b4), "db");
    // A write into the raw file while no server runs (dd) is seen the same way.
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&raw).unwrap(),
        b"dd",
        30 << 20,
    )
    .unwrap();
    let b5 = v.backup("db");
    assert_eq!(b5["incremental"], false, "{b5}");
    v.restores_equal(&snap(&b5), "db");
}

#[test]
fn a_running_server_owns_its_volumes_with_or_without_a_client() {
    let v = Vols::new();
    v.ok(&["volume", "create", "busy", "--size", "8M"]);
    let s = v.serve();
    // No client connected: still the server's.
    for args in [
        vec!["volume", "delete", "busy"],
        vec!["volume", "resize", "busy", "--size", "16M"],
    ] {
        let o = v.run(&args);
        assert_eq!(o.status.code(), Some(14), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    }
    // A second server is refused too.
    let o = v
        .cmd()
        .args([
            "volume",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--volume",
            "busy",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(14), "{}", stderr(&o));
    // Still served afterwards.
    qemu_write(&s.url("busy"), &["write -P 5 0 4k"]);
    // A volume created while the server runs is held within a moment.
    v.ok(&["volume", "create", "late", "--size", "4M"]);
    let mut held = false;
    for _ in 0..50 {
        if v.json(&["volume", "info", "late"])["dirty"]["served"] == true {
            held = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(held, "a volume created while serving was not held");
    assert_eq!(v.run(&["volume", "delete", "late"]).status.code(), Some(14));
    v.stop(s);
    // Stopped: the volume is intact and can be managed again.
    assert!(v.raw("busy")[..4096].iter().all(|x| *x == 5));
    v.ok(&["volume", "resize", "busy", "--size", "16M"]);
    // A volume with backup records: deleting it needs --force and says what goes.
    let b = v.backup("busy");
    assert_eq!(b["incremental"], false);
    let o = v.run(&["volume", "delete", "busy"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 backup record"), "{}", stderr(&o));
    assert!(v.data().join("busy.raw").exists());
    let out = v.ok(&["volume", "delete", "busy", "--force"]);
    assert!(out.contains("1 backup record"), "{out}");
    assert!(!v.data().join("busy.raw").exists() && !v.data().join("busy.chains").exists());
    v.ok(&["volume", "delete", "late"]);
}
