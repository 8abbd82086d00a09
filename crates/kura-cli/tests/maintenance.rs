//! forget and prune: retention, freeing space, repacking, refusing damaged repositories,
//! and staying consistent when killed at any point.

mod common;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Two snapshots sharing data; forgetting the first frees exactly its unique data.
fn two_generations(repo: &TestRepo) -> (std::path::PathBuf, String, String) {
    let src = repo.dir.path().join("src");
    write(&src.join("shared.bin"), &pseudo_random(2 << 20, 1));
    write(&src.join("old.bin"), &pseudo_random(6 << 20, 2));
    let a = repo.backup(&[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_file(src.join("old.bin")).unwrap();
    write(&src.join("new.bin"), &pseudo_random(3 << 20, 3));
    let b = repo.backup(&[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    (src, a, b)
}

fn forget_with_prune_frees_unique_data_and_keeps_the_rest_restorable(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let (src, a, b) = two_generations(&repo);
    let before = repo.size();
    // Dry runs change nothing.
    let listing = repo.listing();
    repo.ok(&["forget", "--keep-last", "1", "--dry-run"]);
    repo.ok(&["prune", "--dry-run"]);
    assert_eq!(repo.listing(), listing);

    let groups = repo.json(&["forget", "--keep-last", "1"]);
    let d = &groups[0]["decisions"];
    assert_eq!(d[0]["id"], b.as_str());
    assert_eq!(d[0]["keep"], true);
    assert_eq!(d[1]["id"], a.as_str());
    assert_eq!(d[1]["keep"], false);
    assert_eq!(repo.snapshot_count(), 1);

    let report = repo.json(&["prune", "--keep-condemned", "0"]);
    // old.bin lived in the same pack as shared.bin and new.bin's predecessor data: the pack is
    // partly used, so it is repacked rather than kept or deleted.
    assert!(report["packs_repacked"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["blobs_unused"].as_u64().unwrap() >= 6, "{report}");
    // The first prune only condemns: nothing is deleted yet, everything still checks clean.
    assert_eq!(report["packs_deleted"], 0, "{report}");
    assert!(report["packs_condemned"].as_u64().unwrap() >= 1, "{report}");
    assert!(repo.size() >= before, "a first prune deletes nothing");
    repo.ok(&["check", "--read-data"]);
    // A prune with the default grace period leaves the condemned packs alone.
    let waiting = repo.json(&["prune"]);
    assert_eq!(waiting["packs_deleted"], 0, "{waiting}");
    assert_eq!(
        waiting["packs_waiting"], report["packs_condemned"],
        "{waiting}"
    );
    // The next prune with no grace period deletes them.
    let second = repo.json(&["prune", "--keep-condemned", "0"]);
    assert_eq!(
        second["packs_deleted"], report["packs_condemned"],
        "{second}"
    );
    let after = repo.size();
    let freed = before - after;
    assert!(
        freed > 5 << 20 && freed < 7 << 20,
        "freed {freed} bytes, expected ~6 MiB"
    );

    repo.ok(&["check", "--read-data"]);
    let t = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_same_tree(&src, &t.join(src.strip_prefix("/").unwrap()));
    // A second prune has nothing to do.
    let again = repo.json(&["prune", "--keep-condemned", "0"]);
    assert_eq!(again["packs_deleted"], 0, "{again}");
    assert_eq!(again["packs_repacked"], 0, "{again}");
    assert_eq!(again["packs_condemned"], 0, "{again}");
}

fn forget_by_id_and_usage_errors(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let (_, a, b) = two_generations(&repo);
    let o = repo.run(&["forget"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = repo.run(&["forget", &a[..8], "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    repo.ok(&["forget", &a[..8]]);
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["id"], b.as_str());
    // A span that does not parse is a usage error, refused before the repository is opened.
    let o = repo.run(&["forget", "--keep-within", "3x"]);
    assert_fails(&o, 2, "invalid duration \"3x\": unknown unit \"x\"");
}

/// `forget --prune` takes prune's grace period: with `--keep-condemned 0` what an earlier
/// prune condemned is deleted; a bad value is refused before anything is forgotten.
fn forget_prune_takes_the_grace_period(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let (_, a, b) = two_generations(&repo);
    let o = repo.run(&["forget", &a[..8], "--prune", "--keep-condemned", "3x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = repo.run(&["forget", &a[..8], "--keep-condemned", "0"]);
    assert_eq!(o.status.code(), Some(2), "needs --prune: {}", stderr(&o));
    assert_eq!(
        repo.snapshot_count(),
        2,
        "nothing forgotten by a refused command"
    );
    // The first forget --prune only condemns old.bin's data (~6 MiB).
    repo.ok(&["forget", &a[..8], "--prune"]);
    let condemned = repo.size();
    // A second one with no grace period deletes it.
    repo.ok(&["forget", &b[..8], "--prune", "--keep-condemned", "0"]);
    let after = repo.size();
    assert!(
        after + (5 << 20) < condemned,
        "{condemned} → {after} bytes: the condemned data was not deleted"
    );
}

fn prune_refuses_a_damaged_repository_and_deletes_nothing(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let (src, a, _) = two_generations(&repo);
    repo.ok(&["forget", &a[..8]]);
    // Lose one pack that the remaining snapshot needs.
    delete_pack(&repo, &pack_of(&repo, "latest", &src.join("new.bin")).0);
    let listing = repo.listing();
    let o = repo.run(&["prune"]);
    assert_fails(&o, 1, "refusing to prune");
    assert_eq!(repo.listing(), listing, "nothing deleted");
}

fn prune_killed_at_many_points_never_loses_referenced_data(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = repo.dir.path().join("src");
    // Interleave kept and forgotten data so most packs end up partly used (repacking).
    for i in 0..24u64 {
        write(&src.join(format!("keep{i:02}")), &pseudo_random(700_000, i));
        write(
            &src.join(format!("drop{i:02}")),
            &pseudo_random(700_000, 100 + i),
        );
    }
    let first = repo.backup(&[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..24u64 {
        fs::remove_file(src.join(format!("drop{i:02}"))).unwrap();
    }
    repo.backup(&[src.to_str().unwrap()]);
    repo.ok(&["forget", &first[..8]]);
    // Cut points: kill once the prune has made `cut` changes (packs or index files created or
    // deleted) — from "nothing yet" to deep into the deletions.
    let files = |repo: &TestRepo| -> std::collections::BTreeSet<String> {
        repo.listing()
            .into_iter()
            .filter(|(kind, _, _)| kind == "pack" || kind == "index" || kind == "condemned record")
            .map(|(_, name, _)| name)
            .collect()
    };
    let mut kills = 0;
    for cut in [0usize, 1, 2, 4, 8, 14, 22, 32] {
        let start = files(&repo);
        let mut child = repo
            .cmd()
            // No grace period: every run also deletes what the killed runs before condemned.
            .args(["prune", "--keep-condemned", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Stepped in SIGSTOP slices, so the kill lands at the cut even on S3, whose listings
        // are slow next to the prune's progress.
        if step_until(&mut child, Duration::from_secs(60), || {
            files(&repo).symmetric_difference(&start).count() >= cut
        }) {
            kills += 1;
        }
        child.kill().ok();
        child.wait().unwrap();
        let o = repo.run(&["check", "--read-data"]);
        assert!(
            o.status.success(),
            "check after killing prune at cut {cut}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
        let t = repo.dir.path().join(format!("t{cut}"));
        repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
        assert_same_tree(&src, &t.join(src.strip_prefix("/").unwrap()));
        fs::remove_dir_all(&t).unwrap();
    }
    assert!(kills >= 4, "too few kills landed mid-prune: {kills}");
    // A final, uninterrupted prune leaves a tight repository.
    repo.ok(&["prune", "--repack-threshold", "0", "--keep-condemned", "0"]);
    repo.ok(&["prune", "--repack-threshold", "0", "--keep-condemned", "0"]);
    repo.ok(&["check", "--read-data"]);
    let size = repo.size();
    assert!(
        size < 20 << 20,
        "repository still holds {size} bytes for ~16 MiB of kept data"
    );
}

on_both!(
    forget_with_prune_frees_unique_data_and_keeps_the_rest_restorable,
    forget_by_id_and_usage_errors,
    forget_prune_takes_the_grace_period,
    prune_refuses_a_damaged_repository_and_deletes_nothing,
    prune_killed_at_many_points_never_loses_referenced_data,
);
