//! A hostile user races the restore: while restores run into a target (fresh, or holding an
//! earlier restore), another thread keeps swapping directories for symlinks to a directory
//! outside, files for hard links and symlinks to a file outside or for FIFOs, and the
//! restore's temporary files for symlinks. Whatever the interleaving, nothing outside the
//! target is created, written or has its metadata changed, and no restore hangs.
//!
//! `KURA_RACE_ITERS` sets the number of restores (default 150).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kura_repo::backup::CancelToken;
use kura_repo::lock::RepoLock;
use kura_repo::progress::NoProgress;
use kura_repo::restore::{RestoreOptions, restore};

use common::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

/// Everything below `outside`: path, a digest of the contents (FNV-1a), and metadata.
fn snapshot_of(outside: &Path) -> Vec<(PathBuf, u64, u32, u32, i64, i64)> {
    let digest = |b: &[u8]| {
        b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let mut v: Vec<_> = walkdir(outside)
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                digest(&fs::read(&p).unwrap())
            } else {
                0
            };
            (p, data, m.mode(), m.uid(), m.mtime(), m.mtime_nsec())
        })
        .collect();
    v.sort();
    v
}

fn mkfifo(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path.
    unsafe { libc::mkfifo(c.as_ptr(), 0o600) == 0 }
}

#[test]
fn swapping_entries_for_symlinks_links_and_fifos_during_restores_writes_nothing_outside() {
    let iters: usize = std::env::var("KURA_RACE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for a in 0..6 {
        for b in 0..3 {
            let d = PathBuf::from(format!("d{a}/e{b}"));
            for f in 0..8 {
                let rel = d.join(format!("f{f}"));
                write(
                    &src.join(&rel),
                    &pseudo_random(2000 + 3000 * f, (a * 100 + b * 10 + f) as u64),
                );
                files.push(rel);
            }
            dirs.push(d);
        }
        dirs.push(PathBuf::from(format!("d{a}")));
    }
    fs::hard_link(src.join("d0/e0/f0"), src.join("d1/e1/linked")).unwrap();
    std::os::unix::fs::symlink("f1", src.join("d2/e2/sym")).unwrap();
    repo.backup(&[src.to_str().unwrap()]);

    let outside = repo.dir.path().join("outside");
    write(&outside.join("victim"), &vec![0xAA; 40_000]);
    fs::create_dir(outside.join("victim-dir")).unwrap();
    let before = snapshot_of(&outside);

    let lib = open_lib(&repo);
    let lock = RepoLock::shared(&lib).unwrap();
    let snap = lib.find_snapshot("latest").unwrap();
    let opts = RestoreOptions {
        threads: 2,
        ..Default::default()
    };
    let attacks = AtomicUsize::new(0);
    let rel_src = src.strip_prefix("/").unwrap().to_path_buf();
    for i in 0..iters {
        let target = repo.dir.path().join(format!("t{}", i % 3));
        if i % 2 == 0 {
            let _ = fs::remove_dir_all(&target);
        }
        let base = target.join(&rel_src);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = Rng(0x9E37_79B9 ^ ((i as u64 + 1) * 0x1000_0001));
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let hit = match rng.next() % 5 {
                        0 => {
                            let d = base.join(rng.pick(&dirs));
                            fs::rename(&d, d.with_extension(format!("moved{k}"))).is_ok()
                                && std::os::unix::fs::symlink(outside.join("victim-dir"), &d)
                                    .is_ok()
                        }
                        1 => {
                            let f = base.join(rng.pick(&files));
                            fs::remove_file(&f).is_ok()
                                && fs::hard_link(outside.join("victim"), &f).is_ok()
                        }
                        2 => {
                            let f = base.join(rng.pick(&files));
                            fs::remove_file(&f).is_ok()
                                && std::os::unix::fs::symlink(outside.join("victim"), &f).is_ok()
                        }
                        3 => {
                            let mut p = base.join(rng.pick(&files)).into_os_string();
                            p.push(".kura-partial");
                            let p = PathBuf::from(p);
                            fs::remove_file(&p).is_ok()
                                && std::os::unix::fs::symlink(outside.join("victim"), &p).is_ok()
                        }
                        _ => {
                            let f = base.join(rng.pick(&files));
                            fs::remove_file(&f).is_ok() && mkfifo(&f)
                        }
                    };
                    if hit {
                        attacks.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::yield_now();
                }
            });
            // The attacker stops however the restore ends (a panic included).
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&stop);
            // Errors (entries refused, replaced) are expected; escaping, hanging or
            // panicking is not.
            let _ = restore(
                &lib,
                &lock,
                &snap,
                &target,
                &opts,
                &NoProgress,
                &CancelToken::new(),
            );
        });
        assert_eq!(
            snapshot_of(&outside),
            before,
            "iteration {i}: something outside changed"
        );
    }
    let n = attacks.load(Ordering::Relaxed);
    assert!(
        n >= iters,
        "only {n} attacks landed in {iters} restores: the race is not raced"
    );

    // Undisturbed, the same restore over the wreckage gives the snapshot exactly.
    for i in 0..3 {
        let target = repo.dir.path().join(format!("t{i}"));
        let out = restore(
            &lib,
            &lock,
            &snap,
            &target,
            &opts,
            &NoProgress,
            &CancelToken::new(),
        )
        .unwrap();
        assert!(out.errors.is_empty() && out.damaged.is_empty(), "{out:?}");
        let base = target.join(&rel_src);
        // Moved-away directories are extra entries (no --delete); compare what the snapshot has.
        for f in &files {
            assert_eq!(
                fs::read(base.join(f)).unwrap(),
                fs::read(src.join(f)).unwrap()
            );
        }
    }
    assert_eq!(snapshot_of(&outside), before);
}
