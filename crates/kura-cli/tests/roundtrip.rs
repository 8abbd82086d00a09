//! Backup → restore round trips through the real binary, compared byte for byte and metadata
//! for metadata; plus dump, ls, images and incremental behaviour.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use kura_repo::backend::{Backend, Bytes, FileInfo, FileKind, Result as BResult};

use common::*;

fn rich_tree_round_trips_exactly(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    // Larger than the 4 MiB maximum chunk.
    make_rich_tree(&src, 9 * 1024 * 1024 + 17);
    let out = repo.backup(&[src.to_str().unwrap()]);
    assert_eq!(out["summary"]["warnings"], 0, "{out}");
    let target = repo.dir.path().join("restore");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &restored);
    // Holes survived: a 20 MiB file with 200 kB of data.
    let alloc = allocated(&restored.join("sparse.img"));
    assert!(alloc < 2 << 20, "sparse file allocated {alloc} bytes");
    repo.ok(&["check", "--read-data"]);
}

fn restore_include_selects_subtrees_and_dump_streams_one_file(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    make_rich_tree(&src, 5 << 20);
    repo.backup(&[src.to_str().unwrap()]);
    let target = repo.dir.path().join("partial");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        "**/dir/nested",
        "--include",
        "*.txt",
    ]);
    let base = target.join(src.strip_prefix("/").unwrap());
    assert!(base.join("dir/nested/deeper").is_dir());
    assert_eq!(fs::read(base.join("hello.txt")).unwrap(), b"hello, world\n");
    assert!(base.join("dir/hardlink.txt").exists());
    assert!(!base.join("dir/big.bin").exists(), "not included");
    assert!(!base.join("many").exists(), "not included, not created");

    let o = repo
        .cmd()
        .args(["dump", "latest"])
        .arg(src.join("dir/big.bin"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, fs::read(src.join("dir/big.bin")).unwrap());
}

fn ls_lists_every_entry_and_json_is_ndjson(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    make_rich_tree(&src, 1000);
    repo.backup(&[src.to_str().unwrap()]);
    let o = repo.run(&["--json", "ls", "latest", src.to_str().unwrap()]);
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every entry below src, plus src itself.
    assert_eq!(lines.len(), walkdir(&src).len() + 1);
    let link = lines
        .iter()
        .find(|v| v["name"] == "link-rel")
        .expect("symlink listed");
    assert_eq!(link["type"], "symlink");
    assert_eq!(link["target"], "hello.txt");
    let plain = repo.ok(&["ls", "latest", "--long"]);
    assert!(plain.contains("-rwsr-x--x"), "setuid shown: {plain}");
}

fn second_backup_of_unchanged_data_adds_under_one_percent_and_reads_nothing(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    make_rich_tree(&src, 8 << 20);
    let first = repo.backup(&[src.to_str().unwrap()]);
    let size1 = repo.size();
    let second = repo.backup(&[src.to_str().unwrap()]);
    let size2 = repo.size();
    assert_eq!(second["parent"], first["snapshot_id"]);
    let s = &second["summary"];
    assert_eq!(s["files_new"], 0, "{s}");
    assert_eq!(s["files_changed"], 0, "{s}");
    assert!(s["files_unmodified"].as_u64().unwrap() > 300);
    assert_eq!(s["bytes_read"], 0, "unchanged files must not be read: {s}");
    let growth = (size2 - size1) as f64 / size1 as f64;
    assert!(growth < 0.01, "repository grew by {:.2}%", growth * 100.0);
}

fn incremental_reads_only_changed_files(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    make_rich_tree(&src, 6 << 20);
    repo.backup(&[src.to_str().unwrap()]);
    // Change one file (same size, new contents) and add one.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&src.join("many/f0007"), b"SMALL FILE 7\n");
    write(&src.join("new.txt"), b"brand new");
    let s = repo.backup(&[src.to_str().unwrap()])["summary"].clone();
    assert_eq!(s["files_changed"], 1, "{s}");
    assert_eq!(s["files_new"], 1, "{s}");
    assert_eq!(s["bytes_read"], 13 + 9, "{s}");
    let target = repo.dir.path().join("r");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    // --force reads everything again but stores nothing new.
    let f = repo.backup(&["--force", src.to_str().unwrap()])["summary"].clone();
    assert!(f["bytes_read"].as_u64().unwrap() > 6 << 20);
    assert_eq!(f["data_blobs_new"], 0, "{f}");
}

fn make_image(p: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(p).unwrap();
    f.set_len(size).unwrap();
    // Data at the start, in the middle across a 4 MiB boundary, and in the odd-sized tail.
    f.write_all_at(&pseudo_random(1 << 20, 10), 0).unwrap();
    f.write_all_at(&pseudo_random(3 << 20, 11), (6 << 20) + 12345)
        .unwrap();
    f.write_all_at(&pseudo_random(5000, 12), size - 5000)
        .unwrap();
}

fn image_round_trip_keeps_holes_and_dedups_unchanged_chunks(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let img = repo.dir.path().join("disk.img");
    let size = (40 << 20) + 4096 + 512;
    make_image(&img, size);
    let a = repo.backup(&["--image", img.to_str().unwrap()]);
    assert_eq!(a["summary"]["total_bytes"], size);
    // Chunk 0, chunks 1-2 (data across the 8 MiB boundary), chunks 9-10 (the tail straddles
    // the last boundary); the six zero chunks are not stored.
    assert_eq!(a["summary"]["data_blobs_new"], 5, "{a}");
    let out = repo.dir.path().join("restored.img");
    repo.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
    assert!(allocated(&out) < 12 << 20, "zero chunks restored as holes");
    // A directory target gets the image under its source name.
    let dir = repo.dir.path().join("into");
    fs::create_dir(&dir).unwrap();
    repo.ok(&["restore", "latest", "--target", dir.to_str().unwrap()]);
    assert_eq!(
        fs::read(dir.join("disk.img")).unwrap(),
        fs::read(&img).unwrap()
    );
    // dump streams the whole image, also when given the image's own path.
    let o = repo.cmd().args(["dump", "latest"]).output().unwrap();
    assert_eq!(o.stdout, fs::read(&img).unwrap());
    let o = repo
        .cmd()
        .args(["dump", "latest", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.stdout, fs::read(&img).unwrap());
    // A path inside the image names nothing: ls and dump refuse it (exit 2), writing nothing,
    // and say how to reach its files.
    for cmd in ["ls", "dump"] {
        let o = repo.run(&[cmd, "latest", "/etc/motd"]);
        assert_fails(&o, 2, "is an image of");
        assert!(stderr(&o).contains("kura restore"), "{}", stderr(&o));
        assert!(o.stdout.is_empty(), "{cmd} wrote {} bytes", o.stdout.len());
    }
    let listed = repo.ok(&["ls", "latest", "/"]);
    assert!(listed.contains("disk.img (image"), "{listed}");

    // Change 1 block (inside a hole, so chunk 5 now holds data): the image is read again,
    // one chunk stored.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(b"changed!", 20 << 20).unwrap();
    }
    let b = repo.backup(&["--image", img.to_str().unwrap()]);
    assert_eq!(b["parent"], a["snapshot_id"]);
    // Every chunk holding data is read again (holes of the sparse image may be skipped).
    let read = b["summary"]["bytes_read"].as_u64().unwrap();
    assert!(
        read >= (5 << 22) + 4608 && read <= size,
        "read {read} of {size}"
    );
    assert_eq!(b["summary"]["data_blobs_new"], 1, "{b}");
    repo.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
    repo.ok(&["check", "--read-data"]);
}

/// A real block device: a loop device over a file, backed up without `--image` and restored
/// onto a second loop device.
fn block_device_round_trip_via_loop_devices(store: Store) {
    if !is_root() {
        panic!("this test needs root to create loop devices (run the suite as root, as CI does)");
    }
    let repo = TestRepo::on(store, &[]);
    let a = repo.dir.path().join("a.img");
    let b = repo.dir.path().join("b.img");
    make_image(&a, 24 << 20);
    // The target starts with garbage everywhere: zero chunks must be written as zeros.
    fs::write(&b, pseudo_random(24 << 20, 99)).unwrap();
    let loop_a = LoopDev::attach(&a);
    let loop_b = LoopDev::attach(&b);
    let out = repo.backup(&[loop_a.0.as_str()]);
    assert_eq!(out["summary"]["total_bytes"], 24 << 20);
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps[0]["kind"], "image");
    assert_eq!(snaps[0]["image"]["device"], true);
    repo.ok(&["restore", "latest", "--target", loop_b.0.as_str()]);
    drop(loop_b);
    assert_eq!(fs::read(&b).unwrap(), fs::read(&a).unwrap());
}

struct LoopDev(String);

impl LoopDev {
    fn attach(file: &Path) -> LoopDev {
        let o = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("run losetup");
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        LoopDev(String::from_utf8(o.stdout).unwrap().trim().to_string())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

fn several_paths_and_excludes(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let a = repo.dir.path().join("one/a");
    let b = repo.dir.path().join("two/b");
    write(&a.join("keep.txt"), b"a");
    write(&a.join("skip.tmp"), b"tmp");
    write(&b.join("cache/x"), b"cache");
    write(&b.join("y"), b"y");
    repo.backup(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        "**/cache",
    ]);
    let t = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let base = t.join(repo.dir.path().strip_prefix("/").unwrap());
    assert!(base.join("one/a/keep.txt").exists());
    assert!(!base.join("one/a/skip.tmp").exists());
    assert!(!base.join("two/b/cache").exists());
    assert_eq!(fs::read(base.join("two/b/y")).unwrap(), b"y");
}

/// Counts pack reads on the way to the real backend (instrumentation, not a fake: every call
/// reaches the local directory or S3).
#[derive(Debug)]
struct CountingBackend {
    inner: Arc<dyn Backend>,
    pack_reads: AtomicUsize,
}

impl Backend for CountingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> BResult<()> {
        self.inner.create()
    }
    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> BResult<()> {
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: FileKind, name: &str) -> BResult<Vec<u8>> {
        if kind == FileKind::Pack {
            self.pack_reads.fetch_add(1, Relaxed);
        }
        self.inner.get(kind, name)
    }
    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> BResult<()> {
        if kind == FileKind::Pack {
            self.pack_reads.fetch_add(1, Relaxed);
        }
        self.inner.get_range_into(kind, name, offset, len, buf)
    }
    fn list(&self, kind: FileKind) -> BResult<Vec<FileInfo>> {
        self.inner.list(kind)
    }
    fn stat(&self, kind: FileKind, name: &str) -> BResult<FileInfo> {
        self.inner.stat(kind, name)
    }
    fn delete(&self, kind: FileKind, name: &str) -> BResult<()> {
        self.inner.delete(kind, name)
    }
}

/// Walking a snapshot costs one request per pack of trees, not one per directory (on S3 each
/// request is a round trip).
fn walking_a_tree_reads_each_tree_pack_once(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    for i in 0..300 {
        write(
            &src.join(format!("d{}/e{i}/f", i % 17)),
            format!("{i}").as_bytes(),
        );
    }
    repo.backup(&[src.to_str().unwrap()]);
    let counting = Arc::new(CountingBackend {
        inner: repo.backend(),
        pack_reads: Default::default(),
    });
    let lib = kura_repo::Repository::open(counting.clone(), PASSWORD.as_bytes())
        .unwrap()
        .load_index()
        .unwrap();
    let tree_packs: std::collections::BTreeSet<_> = lib
        .index()
        .iter()
        .filter(|l| l.ty == kura_repo::format::BlobType::Tree)
        .map(|l| l.pack)
        .collect();
    let snap = lib.find_snapshot("latest").unwrap();
    let mut dirs = 0;
    kura_repo::browse::list(&lib, &snap, Path::new(""), &mut |_, n| {
        dirs += usize::from(n.kind == kura_repo::tree::NodeKind::Dir);
        Ok(())
    })
    .unwrap();
    assert!(dirs > 300, "{dirs} directories walked");
    let reads = counting.pack_reads.load(Relaxed);
    assert!(
        reads <= tree_packs.len(),
        "{reads} pack reads for {dirs} directories in {} tree pack(s)",
        tree_packs.len()
    );
}

on_both!(
    rich_tree_round_trips_exactly,
    restore_include_selects_subtrees_and_dump_streams_one_file,
    ls_lists_every_entry_and_json_is_ndjson,
    second_backup_of_unchanged_data_adds_under_one_percent_and_reads_nothing,
    incremental_reads_only_changed_files,
    image_round_trip_keeps_holes_and_dedups_unchanged_chunks,
    block_device_round_trip_via_loop_devices,
    several_paths_and_excludes,
    walking_a_tree_reads_each_tree_pack_once,
);
