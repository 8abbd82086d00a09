//! Hostile input: bad target URLs are usage errors (exit 2) everywhere and never panic; what
//! kura creates is private (0600 files, 0700 directories); `init` over a repository exits 14;
//! a missing repository directory is reported (exit 10) and never created by a read; files
//! that change while read are counted; deep trees back up whole.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn kura() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kura"));
    c.env("KURA_PASSWORD", PASSWORD)
        .env_remove("KURA_REPOSITORY")
        .env_remove("KURA_PASSWORD_FILE")
        .env_remove("KURA_CONFIG");
    c
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

const BAD_URLS: &[(&str, &str)] = &[
    ("s3://b?endpoint=notaurl", "not a URL"),
    ("s3://b?endpoint=http://h:99999", "port"),
    ("s3://b?endpoint=ftp://h", "scheme"),
    ("s3://b?nope=1", "unknown option"),
    ("s3://b?timeout=soon", "bad timeout"),
    ("s3://b/a/../c", "bad prefix"),
    ("ftp://x/y", "unsupported scheme"),
];

#[test]
fn bad_target_urls_are_usage_errors_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.db");
    let catalog = catalog.to_str().unwrap();
    for (url, why) in BAD_URLS {
        for args in [
            vec!["--repo", url, "init", "--kdf-memory-kib", "64"],
            vec!["--repo", url, "snapshots"],
            vec!["target", "probe", url],
            vec!["--catalog", catalog, "resource", "add", "target", "t1", url],
        ] {
            let o = kura()
                .args(&args)
                .env("XDG_CONFIG_HOME", dir.path().join("none"))
                .output()
                .unwrap();
            assert_fails(&o, 2, why);
            assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
        }
    }
}

fn init_over_an_existing_repository_exits_14(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let o = repo.run(&["init", "--kdf-memory-kib", "64"]);
    assert_fails(&o, 14, "already exists");
    // The repository is untouched: still one key, still opens.
    assert_eq!(repo.count(kura_repo::backend::FileKind::Key), 1);
    repo.ok(&["snapshots"]);
}

on_both!(init_over_an_existing_repository_exits_14);

/// Every file kura writes into a fresh local repository, the catalog and the volume store
/// is 0600 and every directory it makes 0700, whatever the umask.
#[test]
fn everything_kura_creates_is_private() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    make_rich_tree(&src, 100_000);
    repo.backup(&[src.to_str().unwrap()]);
    let root = repo.path();
    assert_eq!(mode(&root), 0o700);
    let mut files = 0;
    for p in walkdir(&root) {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let m = md.permissions().mode() & 0o7777;
        if md.is_dir() {
            assert_eq!(m, 0o700, "{}", p.display());
        } else {
            assert_eq!(m, 0o600, "{}", p.display());
            files += 1;
        }
    }
    assert!(files >= 5, "keys, config, index, snapshot, packs: {files}");

    let catalog = repo.dir.path().join("cat/sub/catalog.db");
    // The default catalog location is made by kura; an explicit one's directory is the
    // user's, so make it here and let kura create the file.
    std::fs::create_dir_all(catalog.parent().unwrap()).unwrap();
    let o = kura()
        .args(["--catalog", catalog.to_str().unwrap(), "resource", "list"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&catalog), 0o600);
    for side in ["-wal", "-shm"] {
        let p = Path::new(&format!("{}{side}", catalog.display())).to_path_buf();
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    let home = repo.dir.path().join("home");
    let o = kura()
        .args(["resource", "list"])
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let made: Vec<_> = walkdir(&home)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "catalog.db"))
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(mode(&made[0]), 0o600);
    assert_eq!(mode(made[0].parent().unwrap()), 0o700);

    let vols = repo.dir.path().join("vols");
    let o = kura()
        .args(["volume", "create", "v1", "--size", "1M"])
        .env("KURA_VOLUMES", &vols)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&vols), 0o700);
    for p in walkdir(&vols) {
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    assert!(vols.join("v1.raw").exists());
}

/// A repository directory that is gone (an unmounted NAS) is "no repository" (exit 10) for
/// every command, and nothing is created there.
#[test]
fn a_missing_repository_directory_is_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nas/kura");
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let target = dir.path().join("t");
    for repo in [&gone, &mount] {
        for args in [
            vec!["snapshots"],
            vec!["restore", "latest", "--target", target.to_str().unwrap()],
            vec!["backup", dir.path().to_str().unwrap()],
            vec!["check"],
            vec!["unlock"],
        ] {
            let o = kura()
                .arg("--repo")
                .arg(repo)
                .args(&args)
                .env("XDG_CONFIG_HOME", dir.path().join("none"))
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(10), "{args:?}: {}", stderr(&o));
        }
    }
    assert!(!dir.path().join("nas").exists());
    assert_eq!(std::fs::read_dir(&mount).unwrap().count(), 0);
}

/// A file whose mtime moves while the backup reads it is saved, counted in the summary and
/// reported; the backup still succeeds.
#[test]
fn a_file_changing_while_read_is_counted_and_reported() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let busy = src.join("busy");
    write(&busy, &pseudo_random(32 << 20, 7));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::options().write(true).open(&busy).unwrap();
            let base = std::time::SystemTime::now();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                f.set_modified(base + std::time::Duration::from_millis(i))
                    .unwrap();
                std::thread::yield_now();
            }
        })
    };
    let o = repo.run(&["--json", "backup", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    toucher.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["files_changed_while_read"], 1, "{v}");
    assert!(stderr(&o).contains("changed while"), "{}", stderr(&o));
    // A quiet file is not counted.
    let v = repo.backup(&["--force", src.to_str().unwrap()]);
    assert_eq!(v["summary"]["files_changed_while_read"], 0, "{v}");
}

/// Make `depth` nested directories `d/d/d/…` under `root` through directory descriptors (the
/// full path is far beyond PATH_MAX), with a file at the bottom.
fn make_deep(root: &Path, depth: usize) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let open = |dir: libc::c_int, name: &std::ffi::CStr| {
        // SAFETY: `name` is NUL-terminated and `dir` a directory descriptor we own.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), libc::O_DIRECTORY | libc::O_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: fd was just opened and is owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let root_c = std::ffi::CString::new(root.to_str().unwrap()).unwrap();
    let mut dir = open(libc::AT_FDCWD, &root_c);
    for _ in 0..depth {
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::mkdirat(dir.as_raw_fd(), c"d".as_ptr(), 0o755) },
            0
        );
        dir = open(dir.as_raw_fd(), c"d");
    }
    // SAFETY: as above.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"bottom".as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    assert!(fd >= 0);
    // SAFETY: as above.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    std::io::Write::write_all(&mut f, b"deep down").unwrap();
}

/// A tree far deeper than PATH_MAX backs up whole: every level, the file at the bottom, no
/// warning, exit 0. `KURA_DEEP` sets the depth (default 10 000).
#[test]
fn a_very_deep_tree_backs_up_completely() {
    let depth: usize = std::env::var("KURA_DEEP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    make_deep(&src, depth);
    let o = repo.run(&["--json", "backup", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["files_new"], 1, "{v}");
    assert!(
        v["summary"]["dirs"].as_u64().unwrap() >= depth as u64,
        "{v}"
    );
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0, "{v}");
    repo.ok(&["check"]);
    // Unchanged, the second run reads nothing and still sees every level.
    let v = repo.backup(&[src.to_str().unwrap()]);
    assert_eq!(v["summary"]["files_unmodified"], 1, "{v}");
}

/// A listing into a pipe whose reader is gone (`kura snapshots --json | head -0`) ends quietly
/// with 141, the shell's SIGPIPE code, not with a panic (101).
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    write(&src.join("f"), b"x");
    repo.ok(&["backup", src.to_str().unwrap()]);
    let mut child = repo
        .cmd()
        .args(["--json", "snapshots"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before kura writes
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A source named through a symlinked directory (`/home -> /data/home`, `/proc/self/…`): the
/// snapshot holds the path as named, the symlink recorded as the directory it leads to — not
/// a symlink node with contents, which no reader accepts (the backup used to report success
/// and the file was lost).
#[test]
fn a_source_below_a_symlinked_directory_is_backed_up_readable() {
    let repo = TestRepo::new(&[]);
    let root = repo.dir.path().join("src");
    write(&root.join("real/file"), b"behind a link");
    std::os::unix::fs::symlink("real", root.join("link")).unwrap();
    let named = root.join("link/file");
    repo.backup(&[named.to_str().unwrap()]);
    repo.ok(&["check", "--read-data"]);
    let target = repo.dir.path().join("t");
    repo.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(named.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(&restored).unwrap(), b"behind a link");
    assert!(
        std::fs::symlink_metadata(restored.parent().unwrap())
            .unwrap()
            .is_dir()
    );
}
