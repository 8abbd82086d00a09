//! The tape tests' rig: a repository with one backup of incompressible files, virtual
//! libraries registered and labelled through the CLI, restores from tape into fresh
//! directories, tree comparison, and a small file system to make a drive fail for real.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TestRepo, pseudo_random, stderr, write};

pub struct Rig {
    pub repo: TestRepo,
    pub src: PathBuf,
}

impl Rig {
    /// A repository with one backup of `files` incompressible files of `mib` MiB each (and a
    /// few small ones).
    pub fn new(files: usize, mib: usize) -> Rig {
        Rig::with_init(files, mib, &[])
    }

    /// The same, with extra `init` arguments (a pack size).
    pub fn with_init(files: usize, mib: usize, init: &[&str]) -> Rig {
        let repo = TestRepo::new(init);
        let src = repo.dir.path().join("src");
        for i in 0..files {
            write(
                &src.join(format!("big/f{i}")),
                &pseudo_random(mib << 20, i as u64 + 1),
            );
        }
        for i in 0..20 {
            write(
                &src.join(format!("small/s{i}.txt")),
                format!("small file {i}\n").as_bytes(),
            );
        }
        // One file at a time: a file's chunks then sit in packs of their own, so what one
        // file's restore reads does not depend on how the packer interleaved them.
        repo.ok(&[
            "backup",
            "-q",
            "--read-concurrency",
            "1",
            src.to_str().unwrap(),
        ]);
        Rig { repo, src }
    }

    pub fn lib_dir(&self, name: &str) -> PathBuf {
        self.repo.dir.path().join(name)
    }

    pub fn tape_file(&self, lib: &str, label: &str) -> PathBuf {
        self.lib_dir(lib)
            .join("tapes")
            .join(format!("{label}.tape"))
    }

    /// Create, register and label a virtual library with a 3 MiB early warning.
    pub fn library(&self, name: &str, tapes: &str, capacity: &str, pool: &str) {
        self.library_with(name, tapes, capacity, "3MiB", pool)
    }

    pub fn library_with(&self, name: &str, tapes: &str, capacity: &str, ew: &str, pool: &str) {
        let dir = self.lib_dir(name);
        self.ok(&[
            "library",
            "create",
            dir.to_str().unwrap(),
            "--capacity",
            capacity,
            "--early-warning",
            ew,
            "--tapes",
            tapes,
        ]);
        self.ok(&[
            "resource",
            "add",
            "target",
            name,
            &format!("vlib://{}", dir.display()),
            "--sequential",
        ]);
        let pools = self.json(&["media", "pool", "list"]);
        if !pools.as_array().unwrap().iter().any(|p| p["name"] == pool) {
            self.ok(&["media", "pool", "add", pool]);
        }
        self.ok(&["media", "label", name, "--pool", pool]);
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.repo.ok(args)
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.repo.run(args)
    }
    pub fn json(&self, args: &[&str]) -> Value {
        self.repo.json(args)
    }

    pub fn tapes(&self) -> Vec<Value> {
        self.json(&["media", "list"]).as_array().unwrap().clone()
    }

    pub fn tape(&self, label: &str) -> Value {
        self.tapes()
            .into_iter()
            .find(|t| t["label"] == label)
            .unwrap()
    }

    /// Restore the newest tape backup into a fresh directory; returns it and the output.
    pub fn restore(&self, extra: &[&str]) -> (PathBuf, Output) {
        let mut n = 0;
        let target = loop {
            let t = self.repo.dir.path().join(format!("restore{n}"));
            if !t.exists() {
                break t;
            }
            n += 1;
        };
        let mut args = vec![
            "tape",
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        (target, o)
    }

    /// Where the source tree is inside a restore target.
    pub fn restored(&self, target: &Path) -> PathBuf {
        target.join(self.src.strip_prefix("/").unwrap())
    }

    /// Run `kura` in the background with the rig's environment (and `env`).
    pub fn spawn(&self, args: &[&str], env: &[(&str, String)]) -> std::process::Child {
        let mut c = self.repo.cmd();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }

    /// The embedded catalog's directory.
    pub fn db(&self) -> PathBuf {
        self.repo.dir.path().join("data/kura")
    }
}

/// Every regular file under `a` and `b` has the same bytes, and there are as many.
pub fn same_tree(a: &Path, b: &Path) {
    let files = |root: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<(PathBuf, Vec<u8>)> = super::walkdir(root)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                (
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (x, y) = (files(a), files(b));
    assert_eq!(
        x.len(),
        y.len(),
        "file count of {} and {}",
        a.display(),
        b.display()
    );
    for ((pa, da), (pb, db)) in x.iter().zip(&y) {
        assert_eq!(pa, pb);
        assert!(da == db, "{} differs", pa.display());
    }
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn no_panic(o: &Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{e}");
}

/// A tmpfs of `size` mounted at `dir` (root only); unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn new(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
