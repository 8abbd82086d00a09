//! A restore writes only inside its target and never through an existing inode; existing
//! entries follow `--overwrite`; `--delete` removes what the snapshot lacks; a file that
//! could not be restored whole never sits under its own name; a killed restore resumes
//! without rewriting what is already right; failures cost only their subtree; any depth
//! restores. The target is a local directory: how a target is written does not depend on
//! where the repository is (the S3 variants of restore are in `roundtrip.rs`).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// A file outside every target, with its contents and metadata, to prove it untouched.
struct Victim {
    path: PathBuf,
    data: Vec<u8>,
    meta: (u32, u32, i64, i64, u64),
}

impl Victim {
    fn new(dir: &Path, name: &str, data: Vec<u8>) -> Victim {
        let path = dir.join(name);
        write(&path, &data);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let meta = Self::meta_of(&path);
        Victim { path, data, meta }
    }

    fn meta_of(p: &Path) -> (u32, u32, i64, i64, u64) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.mode(), m.uid(), m.mtime(), m.mtime_nsec(), m.ino())
    }

    fn assert_untouched(&self) {
        assert_eq!(
            fs::read(&self.path).unwrap(),
            self.data,
            "{} was written",
            self.path.display()
        );
        assert_eq!(
            Self::meta_of(&self.path),
            self.meta,
            "{} metadata changed",
            self.path.display()
        );
    }
}

/// Paths below `root` ending in `.kura-partial`.
fn partials(root: &Path) -> Vec<PathBuf> {
    walkdir(root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".kura-partial"))
        .collect()
}

fn sparse_file(p: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(p).unwrap();
    f.write_all_at(&pseudo_random(70_000, 7), 0).unwrap();
    f.write_all_at(&pseudo_random(70_000, 8), 3 << 20).unwrap();
    f.set_len(5 << 20).unwrap();
}

#[test]
fn existing_links_symlinks_and_files_are_replaced_never_written_through() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    sparse_file(&src.join("sparse.img").tap_mkdir());
    write(&src.join("small"), b"small file");
    write(&src.join("d/inner"), b"inner");
    repo.backup(&[src.to_str().unwrap()]);

    let outside = repo.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // Old bytes everywhere the snapshot has a hole: they must not survive.
    let victim = Victim::new(&outside, "victim", vec![0xAA; 6 << 20]);
    let victim2 = Victim::new(&outside, "victim2", b"second".to_vec());
    let target = repo.dir.path().join("t");
    let base = target.join(src.strip_prefix("/").unwrap());
    fs::create_dir_all(&base).unwrap();
    fs::hard_link(&victim.path, base.join("sparse.img")).unwrap();
    std::os::unix::fs::symlink(&victim2.path, base.join("small")).unwrap();
    std::os::unix::fs::symlink(&outside, base.join("d")).unwrap();

    let o = repo.run(&[
        "--json",
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    victim.assert_untouched();
    victim2.assert_untouched();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        2,
        "nothing new outside"
    );
    assert_same_tree(&src, &base);
    assert!(partials(&target).is_empty());

    // A second restore over the result keeps every file (same inodes: nothing rewritten).
    let before = fs::metadata(base.join("sparse.img")).unwrap().ino();
    let out = repo.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(fs::metadata(base.join("sparse.img")).unwrap().ino(), before);
    assert_eq!(out["unchanged"], 3, "sparse.img, small, d/inner: {out}");
    assert_same_tree(&src, &base);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    /// Create the parent directory and return the path.
    fn tap_mkdir(self) -> Self {
        fs::create_dir_all(self.parent().unwrap()).unwrap();
        self
    }
}

fn set_mtime(p: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

#[test]
fn overwrite_modes_decide_what_existing_entries_become_and_delete_removes_extras() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    write(&src.join("older"), b"snapshot version of older");
    write(&src.join("newer"), b"snapshot version of newer");
    write(&src.join("same"), b"identical");
    set_mtime(&src.join("older"), 1_700_000_000);
    set_mtime(&src.join("newer"), 1_700_000_000);
    set_mtime(&src.join("same"), 1_700_000_000);
    repo.backup(&[src.to_str().unwrap()]);
    let snap_file = |name: &str| fs::read(src.join(name)).unwrap();

    for mode in ["always", "if-changed", "if-newer", "never"] {
        let target = repo.dir.path().join(format!("t-{mode}"));
        let base = target.join(src.strip_prefix("/").unwrap());
        write(&base.join("older"), b"stale");
        set_mtime(&base.join("older"), 1_600_000_000);
        write(&base.join("newer"), b"edited after the backup");
        set_mtime(&base.join("newer"), 1_800_000_000);
        write(&base.join("same"), b"identical");
        set_mtime(&base.join("same"), 1_700_000_000);
        write(&base.join("extra"), b"not in the snapshot");
        let same_ino = fs::metadata(base.join("same")).unwrap().ino();

        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend(["--overwrite", mode]);
        let out = repo.json(&args);
        let read = |n: &str| fs::read(base.join(n)).unwrap();
        let (older, newer) = match mode {
            "always" | "if-changed" => (snap_file("older"), snap_file("newer")),
            "if-newer" => (snap_file("older"), b"edited after the backup".to_vec()),
            _ => (b"stale".to_vec(), b"edited after the backup".to_vec()),
        };
        assert_eq!(read("older"), older, "{mode}: {out}");
        assert_eq!(read("newer"), newer, "{mode}: {out}");
        assert_eq!(read("same"), b"identical", "{mode}");
        assert_eq!(read("extra"), b"not in the snapshot", "{mode}: no --delete");
        assert_eq!(
            fs::metadata(base.join("same")).unwrap().ino(),
            same_ino,
            "{mode}: a matching file is kept, not rewritten"
        );
        let kept = match mode {
            "never" => 3,
            "if-newer" => 2, // newer, and same (not older than the snapshot)
            _ => 0,
        };
        let unchanged = if kept == 0 { 1 } else { 0 }; // same, found matching
        assert_eq!(out["unchanged"], unchanged, "{mode}: {out}");
        assert_eq!(out["kept"], kept, "{mode}: {out}");
    }

    // --delete: what the snapshot lacks goes, what it has stays.
    let target = repo.dir.path().join("t-always");
    let base = target.join(src.strip_prefix("/").unwrap());
    write(&base.join("sub/deep/junk"), b"junk");
    std::os::unix::fs::symlink("/etc", base.join("junk-link")).unwrap();
    let out = repo.json(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--delete",
    ]);
    assert_eq!(out["deleted"], 3, "extra, sub, junk-link: {out}");
    assert_same_tree(&src, &base);
    assert!(
        Path::new("/etc/passwd").exists(),
        "a symlink is removed, not followed"
    );
}

#[test]
fn a_damaged_file_is_left_as_partial_never_under_its_own_name() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    backup_with_a_damaged_victim(&repo, &src);

    let target = repo.dir.path().join("t");
    let base = target.join(src.strip_prefix("/").unwrap());
    // An older copy of the victim in the target is replaced by nothing that looks whole.
    write(&base.join("victim.bin"), b"yesterday's version");
    let o = repo.run(&[
        "--json",
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let partial = base.join("victim.bin.kura-partial");
    assert_eq!(out["partial"][0], partial.display().to_string(), "{out}");
    assert!(partial.exists());
    assert_eq!(
        fs::read(base.join("victim.bin")).unwrap(),
        b"yesterday's version",
        "the damaged restore did not take the file's name"
    );
    assert_eq!(
        fs::read(base.join("fine.bin")).unwrap(),
        pseudo_random(3 << 20, 2)
    );
    assert_eq!(
        out["files"], 1,
        "only the whole file counts as restored: {out}"
    );
}

/// `--delete` never removes the partial file of a damaged file it just listed, even when the
/// damaged file's batch was written (the many directories after it fill a batch) before the
/// restore left its directory.
#[test]
fn delete_keeps_the_partial_of_a_damaged_file_of_an_earlier_batch() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    for i in 0..300 {
        write(
            &src.join(format!("z{i:03}/f")),
            format!("file {i}").as_bytes(),
        );
    }
    backup_with_a_damaged_victim(&repo, &src);
    let target = repo.dir.path().join("t");
    let base = target.join(src.strip_prefix("/").unwrap());
    write(&base.join("extra"), b"not in the snapshot");
    let o = repo.run(&[
        "--json",
        "restore",
        "latest",
        "--delete",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let partial = base.join("victim.bin.kura-partial");
    assert_eq!(out["partial"][0], partial.display().to_string(), "{out}");
    assert!(partial.exists(), "the listed partial file is there: {out}");
    assert!(!base.join("extra").exists());
    assert_eq!(out["deleted"], 1, "only extra: {out}");
    assert_eq!(fs::read(base.join("z299/f")).unwrap(), b"file 299");
}

#[test]
fn a_killed_restore_resumes_and_rewrites_only_what_is_not_yet_right() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    for i in 0..48 {
        write(&src.join(format!("f{i:02}")), &pseudo_random(768 << 10, i));
    }
    repo.backup(&[src.to_str().unwrap()]);
    let target = repo.dir.path().join("t");
    let base = target.join(src.strip_prefix("/").unwrap());
    let finals = || -> Vec<PathBuf> {
        fs::read_dir(&base)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.to_string_lossy().ends_with(".kura-partial"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut child = repo
        .cmd()
        .args(["restore", "latest", "--threads", "1", "--target"])
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stopped = step_until(&mut child, std::time::Duration::from_secs(60), || {
        finals().len() >= 8
    });
    assert!(stopped, "the restore finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();

    // Everything under its own name is whole; the rest is under a temporary name.
    let done = finals();
    assert!(
        done.len() >= 8 && done.len() < 48,
        "{} files done",
        done.len()
    );
    let mut inodes = Vec::new();
    for p in &done {
        assert_eq!(
            fs::read(p).unwrap(),
            fs::read(src.join(p.file_name().unwrap())).unwrap()
        );
        inodes.push((p.clone(), fs::metadata(p).unwrap().ino()));
    }

    let out = repo.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &base);
    assert!(partials(&target).is_empty(), "{:?}", partials(&target));
    assert_eq!(out["unchanged"], done.len(), "{out}");
    for (p, ino) in inodes {
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "{} was rewritten",
            p.display()
        );
    }
}

#[test]
fn a_directory_that_cannot_be_created_costs_only_its_subtree() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    write(&src.join("a/one"), b"1");
    write(&src.join("a/sub/two"), b"2");
    write(&src.join("b/three"), b"3");
    write(&src.join("c"), b"4");
    repo.backup(&[src.to_str().unwrap()]);
    let target = repo.dir.path().join("t");
    let base = target.join(src.strip_prefix("/").unwrap());
    fs::create_dir_all(&base).unwrap();
    // A FIFO where directory `a` goes, kept by --overwrite never: `a` cannot be created.
    let fifo = std::ffi::CString::new(base.join("a").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let o = repo.run(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "never",
    ]);
    assert_fails(&o, 3, "directory not restored, nor anything in it");
    assert_eq!(fs::read(base.join("b/three")).unwrap(), b"3");
    assert_eq!(fs::read(base.join("c")).unwrap(), b"4");
    // And with the default, the FIFO gives way and everything is restored.
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &base);
}

/// Run `find` (which walks by descriptors) below `dir`.
fn find(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("find").arg(dir).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "find: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_ten_thousand_deep_tree_restores_completely() {
    use kura_repo::format::BlobType;
    use kura_repo::tree::{ChunkRef, Node, NodeKind, Tree};

    const DEPTH: usize = 10_000;
    let repo = TestRepo::new(&[]);
    let lib = open_lib(&repo);
    let mut forge = Forge::new(&lib);
    let mut add = |ty: BlobType, data: Vec<u8>| forge.add(ty, data);
    let payload = add(BlobType::Data, b"at the bottom".to_vec());
    let mut leaf = Node::new(b"leaf".to_vec(), NodeKind::File);
    leaf.size = 13;
    leaf.mode = 0o644;
    leaf.content = Some(vec![ChunkRef::Blob(payload)]);
    let mut tree = add(BlobType::Tree, Tree::new(vec![leaf]).encode().unwrap());
    for _ in 0..DEPTH {
        let mut d = Node::new(b"d".to_vec(), NodeKind::Dir);
        d.mode = 0o755;
        d.subtree = Some(tree);
        tree = add(BlobType::Tree, Tree::new(vec![d]).encode().unwrap());
    }
    forge.store();
    let snap = forged_snapshot(&lib, tree, "deep", "u");
    let target = repo.dir.path().join("t");
    repo.ok(&[
        "restore",
        &snap.to_hex(),
        "--target",
        target.to_str().unwrap(),
    ]);
    let dirs = find(&target, &["-type", "d"]).lines().count();
    assert_eq!(dirs, DEPTH + 1, "every level (and the target)");
    let leaf = find(
        &target,
        &["-name", "leaf", "-type", "f", "-execdir", "cat", "{}", ";"],
    );
    assert_eq!(leaf, "at the bottom");
    // A rerun over it finds everything in place.
    let out = repo.json(&[
        "restore",
        &snap.to_hex(),
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out["unchanged"], 1, "{out}");
}

#[test]
fn an_image_restore_never_follows_or_writes_through_what_is_in_the_target() {
    let repo = TestRepo::new(&[]);
    let img = repo.dir.path().join("disk.img");
    sparse_file(&img);
    repo.backup(&["--image", img.to_str().unwrap()]);
    let outside = repo.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let victim = Victim::new(&outside, "victim", vec![0xAA; 6 << 20]);

    // Into a directory that holds a symlink named like the image.
    let t = repo.dir.path().join("t");
    fs::create_dir(&t).unwrap();
    std::os::unix::fs::symlink(&victim.path, t.join("disk.img")).unwrap();
    repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    victim.assert_untouched();
    assert!(fs::symlink_metadata(t.join("disk.img")).unwrap().is_file());
    assert_eq!(
        fs::read(t.join("disk.img")).unwrap(),
        fs::read(&img).unwrap()
    );

    // Onto a file that is a hard link to one elsewhere.
    let f = repo.dir.path().join("onto.img");
    fs::hard_link(&victim.path, &f).unwrap();
    repo.ok(&["restore", "latest", "--target", f.to_str().unwrap()]);
    victim.assert_untouched();
    assert_eq!(fs::read(&f).unwrap(), fs::read(&img).unwrap());

    // A symlink given as the target that does not lead to a block device is refused.
    let l = repo.dir.path().join("link.img");
    std::os::unix::fs::symlink(&victim.path, &l).unwrap();
    let o = repo.run(&["restore", "latest", "--target", l.to_str().unwrap()]);
    assert_fails(&o, 1, "symlink");
    victim.assert_untouched();
}
