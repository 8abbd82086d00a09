//! Memory stays bounded whatever the data size: a file far larger than the in-flight budget is
//! streamed, never buffered whole. Peak RSS is read from the kernel (wait4's rusage).

mod common;

use std::io::Write;

use common::*;

/// Run a command and return (exit code, peak RSS in bytes). The child is reaped by `wait4`
/// (which also reports its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: std::process::Command) -> (i32, u64) {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

fn backup_and_restore_of_a_large_file_use_bounded_memory(store: Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 512 MiB of incompressible data in one file: twice the bound asserted below.
    let size: u64 = 512 << 20;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(src.join("huge")).unwrap());
        for i in 0..(size >> 20) {
            f.write_all(&pseudo_random(1 << 20, i)).unwrap();
        }
    }
    let mut cmd = repo.cmd();
    cmd.args(["backup", "--memory-mib", "32"]).arg(&src);
    let (code, rss) = run_measured(cmd);
    assert_eq!(code, 0);
    assert!(
        rss < 256 << 20,
        "backup peak RSS {} MiB for a {} MiB file",
        rss >> 20,
        size >> 20
    );

    let target = repo.dir.path().join("t");
    let mut cmd = repo.cmd();
    cmd.args(["restore", "latest", "--target"]).arg(&target);
    let (code, rss) = run_measured(cmd);
    assert_eq!(code, 0);
    assert!(rss < 256 << 20, "restore peak RSS {} MiB", rss >> 20);
    let restored = target.join(src.strip_prefix("/").unwrap()).join("huge");
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), size);
}

on_both!(backup_and_restore_of_a_large_file_use_bounded_memory,);

/// Peak RSS of a backup of one directory holding `n` new empty-ish files.
fn rss_of_one_directory(n: usize) -> u64 {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..n {
        std::fs::write(src.join(format!("file-{i:07}")), i.to_string()).unwrap();
    }
    let mut cmd = repo.cmd();
    cmd.args(["backup", "-q"]).arg(&src);
    let (code, rss) = run_measured(cmd);
    assert_eq!(code, 0);
    rss
}

/// One huge directory costs a bounded amount per entry: names are kept, not `stat` results,
/// and each pending file result is one small slot, not a channel. Measured: about 0.8 KiB
/// per entry (it was 1.6 KiB). `KURA_MEM_ENTRIES` sets the size (default 30 000).
#[test]
fn a_huge_directory_costs_little_per_entry() {
    let n: usize = std::env::var("KURA_MEM_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let base = rss_of_one_directory(1_000);
    let big = rss_of_one_directory(n);
    let per_entry = big.saturating_sub(base) / n as u64;
    eprintln!(
        "peak RSS: {} KiB for 1 000 entries, {} KiB for {n}: {per_entry} bytes per entry",
        base >> 10,
        big >> 10
    );
    assert!(
        per_entry < 1200,
        "{per_entry} bytes per directory entry (bound 1200)"
    );
}
