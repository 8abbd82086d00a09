//! Shared helpers of the end-to-end tests: run the real `kura` binary against a real
//! repository, generate trees, and compare trees byte for byte and metadata for metadata.

#![allow(dead_code)]

pub mod http;
pub mod tapes;
pub mod vols;
pub mod weed;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";

/// Where a test repository lives. Repository tests run on both (see [`on_both!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A directory in a temp dir.
    Local,
    /// A fresh prefix in the SeaweedFS bucket that `scripts/test.sh` starts
    /// (`KURA_TEST_S3=s3://bucket?endpoint=…`, credentials in the AWS_* variables).
    S3,
}

/// Generate one `#[test]` per store for each named test function `fn name(store: Store)`:
/// `name::local` and `name::s3`. The test body is written once.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn local() {
                    super::$name($crate::common::Store::Local)
                }
                #[test]
                fn s3() {
                    super::$name($crate::common::Store::S3)
                }
            }
        )*
    };
}

/// The S3 location of a fresh, unique prefix.
pub fn s3_location() -> String {
    let base = std::env::var("KURA_TEST_S3").unwrap_or_else(|_| {
        panic!(
            "KURA_TEST_S3 is not set: the S3 variants of the repository tests need the \
             SeaweedFS server that scripts/test.sh starts (run the suite with scripts/test.sh)"
        )
    });
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).unwrap();
    let prefix = format!("t-{}", hex::encode(rnd));
    match base.split_once('?') {
        Some((b, q)) => format!("{}/{prefix}?{q}", b.trim_end_matches('/')),
        None => format!("{}/{prefix}", base.trim_end_matches('/')),
    }
}

/// A repository (in a temp directory or an S3 prefix), driven through the `kura` binary.
/// `dir` is a scratch directory for sources and restore targets either way.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub location: String,
    pub store: Store,
}

impl TestRepo {
    /// A new local repository with a cheap KDF (tests open it hundreds of times). Extra
    /// `init` arguments (e.g. small chunk sizes) may be given.
    pub fn new(init_args: &[&str]) -> TestRepo {
        Self::on(Store::Local, init_args)
    }

    /// A new repository at an explicit location (e.g. on a private S3 server).
    pub fn at(location: String, init_args: &[&str]) -> TestRepo {
        let store = if location.starts_with("s3://") {
            Store::S3
        } else {
            Store::Local
        };
        let r = TestRepo {
            dir: tempfile::tempdir().expect("tempdir"),
            location,
            store,
        };
        let mut args = vec!["init", "--kdf-memory-kib", "64"];
        args.extend_from_slice(init_args);
        r.ok(&args);
        r
    }

    /// A new repository on `store`.
    pub fn on(store: Store, init_args: &[&str]) -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = match store {
            Store::Local => dir.path().join("repo").display().to_string(),
            Store::S3 => s3_location(),
        };
        let r = TestRepo {
            dir,
            location,
            store,
        };
        let mut args = vec!["init", "--kdf-memory-kib", "64"];
        args.extend_from_slice(init_args);
        r.ok(&args);
        r
    }

    /// A location on the same store where no repository exists.
    pub fn empty_location(&self) -> String {
        match self.store {
            Store::Local => self.dir.path().join("nothing-here").display().to_string(),
            Store::S3 => s3_location(),
        }
    }

    /// The repository directory (local repositories only).
    pub fn path(&self) -> PathBuf {
        assert_eq!(self.store, Store::Local, "path() of an S3 repository");
        PathBuf::from(&self.location)
    }

    /// The repository's storage, for tests that inspect or damage it.
    pub fn backend(&self) -> std::sync::Arc<dyn kura_repo::backend::Backend> {
        kura_repo::backend::open(&self.location, &Default::default()).expect("open backend")
    }

    /// Every stored file: (kind, name, size).
    pub fn listing(&self) -> std::collections::BTreeSet<(String, String, u64)> {
        use kura_repo::backend::FileKind;
        let b = self.backend();
        let mut out = std::collections::BTreeSet::new();
        for kind in FileKind::ALL {
            for f in b.list(kind).unwrap() {
                out.insert((kind.to_string(), f.name, f.size));
            }
        }
        out
    }

    /// Number of stored files of one kind.
    pub fn count(&self, kind: kura_repo::backend::FileKind) -> usize {
        self.backend().list(kind).unwrap().len()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_REPOSITORY", &self.location)
            .env("KURA_PASSWORD", PASSWORD)
            .env_remove("KURA_PASSWORD_FILE")
            .env_remove("KURA_CONFIG")
            .env("XDG_CONFIG_HOME", self.dir.path().join("no-config"))
            // The embedded catalog's default home: this test's own, never the machine's.
            .env("XDG_DATA_HOME", self.dir.path().join("data"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run kura")
    }

    /// Run and require exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kura {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run with `--json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {out}"))
    }

    /// Back up and return the JSON summary.
    pub fn backup(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["backup"];
        a.extend_from_slice(args);
        self.json(&a)
    }

    pub fn snapshot_count(&self) -> usize {
        self.count(kura_repo::backend::FileKind::Snapshot)
    }

    /// Bytes of all files in the repository.
    pub fn size(&self) -> u64 {
        self.listing().iter().map(|(_, _, s)| s).sum()
    }
}

/// Every path below `root` (not following symlinks), sorted.
pub fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn write(p: &Path, data: &[u8]) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// A tree with every kind of entry the issue lists: empty files, sparse files, empty
/// directories, symlinks, hardlinks, non-UTF-8 names, files larger than the max chunk, many
/// small files, odd modes, xattrs, a FIFO, and (as root) foreign ownership.
pub fn make_rich_tree(root: &Path, big_len: usize) {
    fs::create_dir_all(root).unwrap();
    write(&root.join("empty"), b"");
    write(&root.join("hello.txt"), b"hello, world\n");
    write(&root.join("dir/big.bin"), &pseudo_random(big_len, 1));
    // Sparse: data, 8 MiB hole, data, trailing hole.
    {
        let f = fs::File::create(root.join("sparse.img")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&pseudo_random(100_000, 2), 0).unwrap();
        f.write_all_at(&pseudo_random(100_000, 3), 9 << 20).unwrap();
        f.set_len(20 << 20).unwrap();
    }
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("dir/nested/deeper")).unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("dir/hardlink.txt")).unwrap();
    let weird = root.join(OsStr::from_bytes(b"caf\xe9-\xff\xfe.bin"));
    write(&weird, b"non-utf8 name");
    write(&root.join("spaces and \"quotes\" \n newline"), b"x");
    for i in 0..300 {
        write(
            &root.join(format!("many/f{i:04}")),
            format!("small file {i}\n").as_bytes(),
        );
    }
    let exe = root.join("dir/script.sh");
    write(&exe, b"#!/bin/sh\necho hi\n");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o1770)).unwrap();
    let _ = xattr::set(root.join("hello.txt"), "user.kura.test", b"value\x00\xff");
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) };
    if is_root() {
        std::os::unix::fs::lchown(root.join("hello.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("link-rel"), Some(4321), Some(8765)).unwrap();
    }
    // Old, distinct mtimes (nanoseconds included).
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("dir/big.bin"), t).unwrap();
    filetime::set_symlink_file_times(root.join("link-rel"), t, t).unwrap();
    filetime::set_file_mtime(root.join("empty-dir"), t).unwrap();
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// What we compare per entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Index of the first entry sharing this inode (hardlink groups), within the tree.
    pub link_group: Option<usize>,
}

/// Describe a tree, relative to `root`. Directory mtimes included.
pub fn describe(root: &Path) -> Vec<(Vec<u8>, Entry)> {
    let paths = walkdir(root);
    let mut inodes: HashMap<u64, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let md = fs::symlink_metadata(p).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let link_group = if kind == "file" && md.nlink() > 1 {
            Some(*inodes.entry(md.ino()).or_insert(i))
        } else {
            None
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(p)
            .map(|names| {
                names
                    .filter_map(|n| {
                        xattr::get(p, &n)
                            .ok()
                            .flatten()
                            .map(|v| (n.as_bytes().to_vec(), v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        out.push((
            p.strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec(),
            Entry {
                kind,
                mode: if kind == "symlink" {
                    0
                } else {
                    md.mode() & 0o7777
                },
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if kind == "dir" { 0 } else { md.size() },
                content: (kind == "file").then(|| fs::read(p).unwrap()),
                target: (kind == "symlink")
                    .then(|| fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()),
                xattrs,
                link_group,
            },
        ));
    }
    out
}

/// Assert two trees are identical in contents and metadata.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let da = describe(a);
    let db = describe(b);
    let names_a: Vec<_> = da
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    let names_b: Vec<_> = db
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert_eq!(names_a, names_b, "different entries");
    for ((name, ea), (_, eb)) in da.iter().zip(&db) {
        assert_eq!(ea, eb, "entry {:?} differs", String::from_utf8_lossy(name));
    }
}

/// Allocated bytes of a file (to check holes survived).
pub fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

/// The repository opened through the library (for tests that inspect or damage it).
pub fn open_lib(repo: &TestRepo) -> kura_repo::IndexedRepo {
    kura_repo::Repository::open(repo.backend(), PASSWORD.as_bytes())
        .unwrap()
        .load_index()
        .unwrap()
}

/// The pack (name) holding the first chunk of `file` in snapshot `snap`, and the chunk's
/// offset in it.
pub fn pack_of(repo: &TestRepo, snap: &str, file: &Path) -> (String, u32) {
    let lib = open_lib(repo);
    let entry = lib.find_snapshot(snap).unwrap();
    let node = kura_repo::browse::find_node(&lib, &entry, file).unwrap();
    let Some(kura_repo::tree::ChunkRef::Blob(id)) = node.content.unwrap().first().copied() else {
        panic!("{} has no stored chunk", file.display());
    };
    let loc = lib.index().get(&id).unwrap();
    (loc.pack.to_hex(), loc.offset)
}

/// Remove a pack from the repository's storage.
pub fn delete_pack(repo: &TestRepo, name: &str) {
    repo.backend()
        .delete(kura_repo::backend::FileKind::Pack, name)
        .unwrap();
}

/// Flip one bit of a stored pack at `offset` (rewriting the object).
pub fn flip_pack_byte(repo: &TestRepo, name: &str, offset: usize) {
    use kura_repo::backend::FileKind;
    let b = repo.backend();
    let mut bytes = b.get(FileKind::Pack, name).unwrap();
    bytes[offset] ^= 0x40;
    b.put(FileKind::Pack, name, bytes.into()).unwrap();
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a command failed with `code` and said `needle` on stderr.
pub fn assert_fails(o: &Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    assert!(
        stderr(o).contains(needle),
        "expected {needle:?} in: {}",
        stderr(o)
    );
}

/// Let `child` run in short slices, stopped (SIGSTOP) between them while `reached()` is
/// checked, until `reached()` holds, the child exits, or `limit` passes. Returns whether the
/// child is still running (stopped) — then the caller's kill lands at the point `reached`
/// describes, however slow checking is (an S3 listing) next to the child's own progress.
/// The child is left stopped; SIGKILL ends it as it is.
pub fn step_until(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    mut reached: impl FnMut() -> bool,
) -> bool {
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + limit;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    while child.try_wait().unwrap().is_none() && !reached() {
        if std::time::Instant::now() > deadline {
            break;
        }
        unsafe { libc::kill(pid, libc::SIGCONT) };
        std::thread::sleep(std::time::Duration::from_millis(2));
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    child.try_wait().unwrap().is_none()
}

/// A test environment that prepares `kura` commands (environment variables, scratch
/// directories); running them and checking their outcome comes with it.
pub trait Kura {
    fn cmd(&self) -> Command;

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run kura")
    }

    /// Run and require exit code 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kura {args:?}: {:?}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run with `--json` (exit code 0 required) and parse stdout.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {out}"))
    }
}

/// Blobs and trees written straight into a repository through the library, for tests that
/// need contents no backup makes (hostile names, extreme depth).
pub struct Forge<'a> {
    lib: &'a kura_repo::IndexedRepo,
    enc: kura_repo::format::BlobEncoder,
    pack: kura_repo::pack::PackWriter,
}

impl<'a> Forge<'a> {
    pub fn new(lib: &'a kura_repo::IndexedRepo) -> Forge<'a> {
        Forge {
            lib,
            enc: kura_repo::format::BlobEncoder::new(0).unwrap(),
            pack: kura_repo::pack::PackWriter::new(8 << 20),
        }
    }

    /// Add a blob to the pack being built; its id.
    pub fn add(&mut self, ty: kura_repo::format::BlobType, data: Vec<u8>) -> kura_repo::Id {
        let key = self.lib.key();
        let id = key.chunk_id(&data);
        let e = self.enc.encode(key, ty, &id, &data).unwrap();
        self.pack.add(ty, id, &e, data.len() as u32).unwrap();
        id
    }

    /// Store the pack and an index file listing it.
    pub fn store(self) {
        let (pack_id, bytes, blobs) = self.pack.finish(self.lib.key()).unwrap();
        self.lib
            .backend()
            .put(
                kura_repo::backend::FileKind::Pack,
                &pack_id.to_hex(),
                bytes.into(),
            )
            .unwrap();
        self.lib
            .save_index_file(&kura_repo::index::IndexFile {
                packs: vec![(pack_id, blobs)],
            })
            .unwrap();
    }
}

/// A snapshot of the tree `root` (stored already), by `username`@`host`.
pub fn forged_snapshot(
    lib: &kura_repo::IndexedRepo,
    root: kura_repo::Id,
    host: &str,
    username: &str,
) -> kura_repo::Id {
    use kura_repo::snapshot::{Content, Snapshot, Summary};
    lib.save_snapshot(&Snapshot {
        v: 1,
        time: kura_repo::util::Timestamp::now(),
        host: host.into(),
        username: username.into(),
        paths: vec![],
        tags: vec![],
        parent: None,
        content: Content::Tree { root },
        summary: Summary::default(),
        original: None,
    })
    .unwrap()
}

/// Back up `src` holding `victim.bin` and `fine.bin` (3 MiB each, seeds 1 and 2), then flip
/// one byte inside the victim's first stored blob. Returns the snapshot id.
pub fn backup_with_a_damaged_victim(repo: &TestRepo, src: &Path) -> String {
    write(&src.join("victim.bin"), &pseudo_random(3 << 20, 1));
    write(&src.join("fine.bin"), &pseudo_random(3 << 20, 2));
    let snap = repo.backup(&[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (pack, offset) = pack_of(repo, &snap, &src.join("victim.bin"));
    flip_pack_byte(repo, &pack, offset as usize + 1000);
    snap
}
