//! Bad input and real faults: wrong passwords, corrupt and missing packs, unreadable sources,
//! hostile snapshots, locks, concurrent backups.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use kura_repo::Repository;
use kura_repo::backend::FileKind;

fn wrong_password_and_missing_repository_have_their_own_exit_codes(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let o = repo
        .cmd()
        .env("KURA_PASSWORD", "not it")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(&o, 12, "wrong password");

    let o = repo
        .cmd()
        .env("KURA_REPOSITORY", repo.empty_location())
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(&o, 10, "kura init");

    // No password source at all, stdin not a terminal: a clear error, not a hang.
    let o = repo
        .cmd()
        .env_remove("KURA_PASSWORD")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(&o, 1, "no password given");

    // init refuses to overwrite: "it already exists" (exit 14, as README says).
    let o = repo.run(&["init", "--kdf-memory-kib", "64"]);
    assert_fails(&o, 14, "already exists");
}

fn password_file_and_config_file_are_honoured(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let pw = repo.dir.path().join("pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let cfg = repo.dir.path().join("kura.toml");
    fs::write(
        &cfg,
        format!(
            "[repository]\nrepo = {:?}\npassword_file = {:?}\n",
            repo.location, pw
        ),
    )
    .unwrap();
    let o = repo
        .cmd()
        .env_remove("KURA_PASSWORD")
        .env_remove("KURA_REPOSITORY")
        .args(["--config", cfg.to_str().unwrap(), "snapshots"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    fs::write(&cfg, "[repository]\nrepo = 3\n").unwrap();
    let o = repo.run(&["--config", cfg.to_str().unwrap(), "snapshots"]);
    assert_fails(&o, 1, "kura.toml");
}

fn keys_can_be_added_listed_and_removed(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let o = repo
        .cmd()
        .env("KURA_NEW_PASSWORD", "second secret")
        .args(["key", "add", "--kdf-memory-kib", "64"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let keys = repo.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let current = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap();
    let other = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap();
    // Opening with the new passphrase works.
    let o = repo
        .cmd()
        .env("KURA_PASSWORD", "second secret")
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The key in use cannot be removed.
    let o = repo.run(&["key", "remove", &current["id"].as_str().unwrap()[..8]]);
    assert_fails(&o, 1, "opened the repository with");
    // Removing the other one locks that passphrase out.
    repo.ok(&["key", "remove", &other["id"].as_str().unwrap()[..10]]);
    let o = repo
        .cmd()
        .env("KURA_PASSWORD", "second secret")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(12));
}

/// Two files in one pack; one blob is corrupted on disk.
fn corrupt_pack_is_found_named_and_restore_saves_the_rest(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    let snap = backup_with_a_damaged_victim(&repo, &src);

    let o = repo.run(&["check", "--read-data"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}{}", stderr(&o));
    assert!(out.contains(&snap[..8]), "names the snapshot: {out}");
    assert!(out.contains("victim.bin"), "names the file: {out}");
    assert!(!out.contains("fine.bin"), "only the damaged file: {out}");

    let t = repo.dir.path().join("t");
    let o = repo.run(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_fails(&o, 3, "victim.bin");
    let base = t.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(base.join("fine.bin")).unwrap(),
        pseudo_random(3 << 20, 2)
    );

    // dump refuses to emit unverified data.
    let o = repo
        .cmd()
        .args(["dump", "latest"])
        .arg(src.join("victim.bin"))
        .output()
        .unwrap();
    assert_fails(&o, 1, "corrupt");
}

fn missing_pack_is_reported_per_snapshot_and_file_without_read_data(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    write(&src.join("a.bin"), &pseudo_random(1 << 20, 5));
    write(&src.join("b.txt"), b"bbb");
    let s1 = repo.backup(&[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    write(&src.join("c.txt"), b"ccc");
    let s2 = repo.backup(&[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    repo.ok(&["check"]);
    // Delete the data pack holding a.bin.
    delete_pack(&repo, &pack_of(&repo, &s1, &src.join("a.bin")).0);

    let report = {
        let o = repo.run(&["--json", "check"]);
        assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let affected = report["affected"].as_array().unwrap();
    for s in [&s1, &s2] {
        assert!(
            affected.iter().any(|a| a["snapshot"] == s[..8] && a["path"].as_str().unwrap().ends_with("/a.bin")),
            "{s} a.bin affected: {report}"
        );
    }
    assert!(report["errors"].to_string().contains("missing"), "{report}");
}

fn unreadable_source_files_warn_and_exit_3_but_the_snapshot_is_saved(store: Store) {
    assert!(
        is_root(),
        "needs root to drop privileges with setpriv (CI runs as root)"
    );
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    write(&src.join("readable.txt"), b"ok");
    write(&src.join("secret.txt"), b"no");
    fs::create_dir_all(src.join("closed")).unwrap();
    write(&src.join("closed/inner"), b"x");
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    // The repository (and the path to it) must be usable by the unprivileged user.
    fs::set_permissions(repo.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if store == Store::Local {
        std::process::Command::new("chown")
            .args(["-R", "65534:65534", &repo.location])
            .status()
            .unwrap();
    }
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_kura"))
        .args(["--json", "backup", src.to_str().unwrap()])
        .env("KURA_REPOSITORY", &repo.location)
        .env("KURA_PASSWORD", PASSWORD)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["warnings"], 2, "{v}");
    assert!(stderr(&o).contains("secret.txt"), "{}", stderr(&o));
    let listing = repo.ok(&["ls", "latest"]);
    assert!(listing.contains("readable.txt"));
    assert!(!listing.contains("secret.txt"), "left out: {listing}");
    assert!(
        listing.contains("/closed"),
        "the directory itself is kept: {listing}"
    );
    repo.ok(&["check", "--read-data"]);
}

/// A snapshot written by an attacker (or damaged storage) with names that would escape the
/// restore target.
fn hostile_names_are_refused_and_nothing_is_written_outside_the_target(store: Store) {
    use kura_repo::format::BlobType;
    use kura_repo::tree::{ChunkRef, Node, NodeKind, Tree};

    let repo = TestRepo::on(store, &[]);
    let lib = open_lib(&repo);
    let mut forge = Forge::new(&lib);
    let mut add = |ty: BlobType, data: Vec<u8>| forge.add(ty, data);
    let payload = add(BlobType::Data, b"pwned".to_vec());
    let file = |name: &[u8]| {
        let mut n = Node::new(name.to_vec(), NodeKind::File);
        n.size = 5;
        n.mode = 0o644;
        n.content = Some(vec![ChunkRef::Blob(payload)]);
        n
    };
    let outside = repo.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // Each of these trees is hostile in its own way.
    let mut link = Node::new(b"x".to_vec(), NodeKind::Symlink);
    link.target = Some(outside.as_os_str().as_encoded_bytes().to_vec());
    let evil_sub = add(
        BlobType::Tree,
        Tree {
            v: 1,
            nodes: vec![file(b"escaped")],
        }
        .encode()
        .unwrap(),
    );
    let mut dir_x = Node::new(b"x".to_vec(), NodeKind::Dir);
    dir_x.subtree = Some(evil_sub);
    dir_x.mode = 0o755;
    let bad_trees = [
        Tree {
            v: 1,
            nodes: vec![file(b"../escaped")],
        },
        Tree {
            v: 1,
            nodes: vec![file(b"a/../../escaped")],
        },
        Tree {
            v: 1,
            nodes: vec![file(b"..")],
        },
        Tree {
            v: 1,
            nodes: vec![link, dir_x],
        },
    ];
    let mut roots = Vec::new();
    for t in &bad_trees {
        let id = add(BlobType::Tree, t.encode().unwrap());
        // Put the hostile tree one level down, next to an innocent file.
        let mut sub = Node::new(b"d".to_vec(), NodeKind::Dir);
        sub.subtree = Some(id);
        sub.mode = 0o755;
        let root = Tree::new(vec![sub, file(b"innocent")]);
        roots.push(add(BlobType::Tree, root.encode().unwrap()));
    }
    forge.store();
    for root in roots {
        let id = forged_snapshot(&lib, root, "evil", "mallory");
        let target = repo.dir.path().join(format!("target-{}", id.short()));
        let o = repo.run(&[
            "restore",
            &id.to_hex(),
            "--target",
            target.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("refusing") || stderr(&o).contains("duplicate"),
            "{}",
            stderr(&o)
        );
        // The innocent file is restored; nothing escaped.
        assert_eq!(fs::read(target.join("innocent")).unwrap(), b"pwned");
        assert!(!repo.dir.path().join("escaped").exists());
        assert!(!outside.join("escaped").exists());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
    // check reports the hostile trees as damage.
    let o = repo.run(&["check"]);
    assert_eq!(o.status.code(), Some(4));
}

fn a_live_exclusive_lock_blocks_with_exit_11_and_stale_locks_are_ignored_and_removable(
    store: Store,
) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    write(&src.join("f"), b"data");
    {
        let lib = Repository::open(repo.backend(), PASSWORD.as_bytes()).unwrap();
        let _held = kura_repo::lock::RepoLock::exclusive(&lib).unwrap();
        // An exclusive lock (a prune) excludes another prune ...
        let o = repo.run(&["prune"]);
        assert_fails(&o, 11, "exclusive lock held by");
        assert!(kura_repo::lock::RepoLock::exclusive(&lib).is_err());
        // ... and nothing else: backups and shared locks run beside it.
        let o = repo.run(&["backup", src.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(kura_repo::lock::RepoLock::shared(&lib).is_ok());
    }
    assert_eq!(repo.count(FileKind::Lock), 0, "lock released on drop");
    // A process killed while holding a lock leaves a stale lock: ignored, then removable.
    let stale = stale_lock(&repo, &src);
    let o = repo.run(&["backup", src.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = repo.ok(&["unlock"]);
    assert!(
        out.contains(&stale[..8]) && out.contains("is gone"),
        "{out}"
    );
    assert_eq!(repo.count(FileKind::Lock), 0);
}

/// Start a backup of a large source, SIGKILL it once its lock exists; return the lock's name.
fn stale_lock(repo: &TestRepo, small_src: &Path) -> String {
    let big = repo.dir.path().join("bigsrc");
    write(&big.join("big"), &pseudo_random(64 << 20, 77));
    let mut child = repo
        .cmd()
        .args(["backup"])
        .arg(&big)
        .arg(small_src)
        .spawn()
        .unwrap();
    let name = loop {
        if let Some(f) = repo
            .backend()
            .list(FileKind::Lock)
            .unwrap()
            .into_iter()
            .next()
        {
            break f.name;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    name
}

fn two_concurrent_backups_into_one_repository_both_land(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let a = repo.dir.path().join("a");
    let b = repo.dir.path().join("b");
    for i in 0..4 {
        write(&a.join(format!("f{i}")), &pseudo_random(2 << 20, i));
        // Half of b's data is shared with a: both may store it; both must stay correct.
        write(
            &b.join(format!("f{i}")),
            &pseudo_random(2 << 20, if i % 2 == 0 { i } else { 100 + i }),
        );
    }
    let spawn = |src: &Path| {
        repo.cmd()
            .args(["--json", "backup"])
            .arg(src)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a), spawn(&b));
    let ra = pa.wait_with_output().unwrap();
    let rb = pb.wait_with_output().unwrap();
    assert!(ra.status.success(), "{}", stderr(&ra));
    assert!(rb.status.success(), "{}", stderr(&rb));
    assert_eq!(repo.snapshot_count(), 2);
    repo.ok(&["check", "--read-data"]);
    for (src, snap_out) in [(&a, &ra), (&b, &rb)] {
        let v: serde_json::Value = serde_json::from_slice(&snap_out.stdout).unwrap();
        let id = v["snapshot_id"].as_str().unwrap();
        let t = repo.dir.path().join(format!("r-{}", &id[..8]));
        repo.ok(&["restore", id, "--target", t.to_str().unwrap()]);
        assert_same_tree(src, &t.join(src.strip_prefix("/").unwrap()));
    }
}

on_both!(
    wrong_password_and_missing_repository_have_their_own_exit_codes,
    password_file_and_config_file_are_honoured,
    keys_can_be_added_listed_and_removed,
    corrupt_pack_is_found_named_and_restore_saves_the_rest,
    missing_pack_is_reported_per_snapshot_and_file_without_read_data,
    unreadable_source_files_warn_and_exit_3_but_the_snapshot_is_saved,
    hostile_names_are_refused_and_nothing_is_written_outside_the_target,
    a_live_exclusive_lock_blocks_with_exit_11_and_stale_locks_are_ignored_and_removable,
    two_concurrent_backups_into_one_repository_both_land,
);
