//! Traffic control (`--limit-upload`, `--limit-download`, `[[traffic]]` rules) on real
//! targets: a local directory and the SeaweedFS S3 server of `scripts/test.sh`. Each limited
//! run must take at least the time its bytes need at the limit, less one second of burst
//! (a lower bound that holds however loaded the machine is), and not absurdly long; the
//! sources are incompressible, so what is uploaded is about what is read.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Store, TestRepo, assert_fails, assert_same_tree, pseudo_random, write};

const MIB: usize = 1 << 20;

/// `mib` MiB of incompressible files (distinct for each `seed`: nothing deduplicates).
fn source(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let src = dir.join(name);
    for i in 0..mib {
        write(
            &src.join(format!("f{i}.bin")),
            &pseudo_random(MIB, seed * 1000 + i as u64),
        );
    }
    src
}

fn timed(f: impl FnOnce() -> Output) -> (Output, Duration) {
    let t = Instant::now();
    let o = f();
    (o, t.elapsed())
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// At least `bytes` at `rate` less one second's burst; at most `slack` times that (a loose
/// bound: a limit that waits far too long is broken too).
fn assert_paced(took: Duration, mib: f64, rate_mib: f64) {
    let floor = (mib - rate_mib) / rate_mib;
    eprintln!("{mib} MiB at {rate_mib} MiB/s: {took:.2?} (at least {floor:.2} s)");
    assert!(
        took.as_secs_f64() >= floor * 0.95,
        "{mib} MiB at {rate_mib} MiB/s took {took:?}, under the {floor:.2} s the limit allows"
    );
    assert!(
        took.as_secs_f64() < floor * 4.0 + 10.0,
        "{mib} MiB at {rate_mib} MiB/s took {took:?}"
    );
}

fn config(repo: &TestRepo, toml: &str) -> String {
    let p = repo.dir.path().join(format!("kura-{}.toml", toml.len()));
    std::fs::write(&p, toml).unwrap();
    p.display().to_string()
}

/// `HH:MM` of now (UTC) shifted by `hours`.
fn utc_clock(hours: i64) -> String {
    let t = chrono::Utc::now() + chrono::TimeDelta::hours(hours);
    t.format("%H:%M").to_string()
}

fn a_limited_backup_takes_its_time(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = source(repo.dir.path(), "src", 12, 1);
    let (o, took) = timed(|| {
        repo.run(&[
            "--limit-upload",
            "4MiB/s",
            "backup",
            "-q",
            src.to_str().unwrap(),
        ])
    });
    ok(&o);
    assert_paced(took, 12.0, 4.0);
    // restic's unit: a bare number is KiB/s (4096 KiB/s = 4 MiB/s).
    let src2 = source(repo.dir.path(), "src2", 12, 2);
    let (o, took) = timed(|| {
        repo.run(&[
            "--limit-upload",
            "4096",
            "backup",
            "-q",
            src2.to_str().unwrap(),
        ])
    });
    ok(&o);
    assert_paced(took, 12.0, 4.0);
}

fn a_limited_restore_takes_its_time(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let src = source(repo.dir.path(), "src", 12, 3);
    repo.ok(&["backup", "-q", src.to_str().unwrap()]);
    let dest = repo.dir.path().join("restored");
    let (o, took) = timed(|| {
        repo.run(&[
            "--limit-download",
            "4MiB/s",
            "restore",
            "latest",
            "--target",
            dest.to_str().unwrap(),
        ])
    });
    ok(&o);
    assert_paced(took, 12.0, 4.0);
    assert_same_tree(&src, &dest.join(src.strip_prefix("/").unwrap()));
}

/// A rule whose time frame holds now limits; one whose time frame does not, does not.
fn a_rule_limits_only_inside_its_time_frame(store: Store) {
    let repo = TestRepo::on(store, &["--pack-size-mib", "1"]);
    let rule = |window: &str| {
        config(
            &repo,
            &format!(
                "[[traffic]]\ntarget = \"{}\"\nupload = \"3MiB/s\"\ntimeframe = [\"{window}\"]\n",
                repo.location
            ),
        )
    };
    let now = rule(&format!("{}-{} UTC", utc_clock(-1), utc_clock(1)));
    let src = source(repo.dir.path(), "src", 12, 4);
    let (o, took) = timed(|| repo.run(&["--config", &now, "backup", "-q", src.to_str().unwrap()]));
    ok(&o);
    assert_paced(took, 12.0, 3.0);
    let later = rule(&format!("{}-{} UTC", utc_clock(2), utc_clock(3)));
    let src2 = source(repo.dir.path(), "src2", 12, 5);
    let (o, took) =
        timed(|| repo.run(&["--config", &later, "backup", "-q", src2.to_str().unwrap()]));
    ok(&o);
    // At 3 MiB/s it would take at least 3 s.
    eprintln!("12 MiB outside the rule's time frame: {took:.2?}");
    assert!(
        took < Duration::from_millis(2500),
        "not limited, yet {took:?}"
    );
}

on_both!(
    a_limited_backup_takes_its_time,
    a_limited_restore_takes_its_time,
    a_rule_limits_only_inside_its_time_frame,
);

/// A mirrored backup writes every byte to both targets through one shared global limit: 2 ×
/// 8 MiB at 4 MiB/s. With a bucket per target it would take a third of that.
#[test]
fn the_streams_of_a_mirror_share_the_global_limit() {
    let s3 = common::s3_location();
    let repo = TestRepo::new(&["--mirror", &s3, "--pack-size-mib", "1"]);
    let src = source(repo.dir.path(), "src", 8, 6);
    let (o, took) = timed(|| {
        repo.run(&[
            "--mirror",
            &s3,
            "--limit-upload",
            "4MiB/s",
            "backup",
            "-q",
            src.to_str().unwrap(),
        ])
    });
    ok(&o);
    assert_paced(took, 16.0, 4.0);
}

/// Job runs over the catalog: a rule naming a catalog target limits that target's stream,
/// and a rule naming the path both streams secured (the embedded catalog's `local-path`)
/// is one bucket shared by both: 2 × 12 MiB at 8 MiB/s.
#[test]
fn job_streams_share_the_limits_of_their_target_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.db");
    let (t0, t1) = (dir.path().join("t0"), dir.path().join("t1"));
    let kura = |config: Option<&str>, args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &catalog)
            .env("KURA_PASSWORD", common::PASSWORD)
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_CONFIG")
            .env("XDG_CONFIG_HOME", dir.path().join("no-config"));
        if let Some(cfg) = config {
            c.args(["--config", cfg]);
        }
        c.args(args).output().unwrap()
    };
    let (t0s, t1s) = (t0.to_str().unwrap(), t1.to_str().unwrap());
    ok(&kura(
        None,
        &[
            "-r",
            t0s,
            "--mirror",
            t1s,
            "init",
            "--kdf-memory-kib",
            "64",
            "--pack-size-mib",
            "1",
        ],
    ));
    ok(&kura(None, &["resource", "add", "target", "t0", t0s]));
    ok(&kura(None, &["resource", "add", "target", "t1", t1s]));
    let run = |cfg: &str, src: &Path| {
        let cfg_path = dir.path().join(format!("c{}.toml", cfg.len()));
        std::fs::write(&cfg_path, cfg).unwrap();
        timed(|| {
            kura(
                Some(cfg_path.to_str().unwrap()),
                &["backup", "-q", src.to_str().unwrap(), "--redundancy", "2"],
            )
        })
    };
    let src = source(dir.path(), "src", 12, 7);
    let (o, took) = run("[[traffic]]\ntarget = \"t1\"\nupload = \"4MiB/s\"\n", &src);
    ok(&o);
    assert_paced(took, 12.0, 4.0);
    let src2 = source(dir.path(), "src2", 12, 8);
    let (o, took) = run(
        "[[traffic]]\npath = \"local-path\"\nupload = \"8MiB/s\"\n",
        &src2,
    );
    ok(&o);
    assert_paced(took, 24.0, 8.0);
}

#[test]
fn malformed_rates_and_time_frames_are_usage_errors_naming_the_field() {
    let repo = TestRepo::new(&[]);
    assert_fails(
        &repo.run(&["--limit-upload", "fast", "snapshots"]),
        2,
        "--limit-upload: invalid rate \"fast\"",
    );
    assert_fails(
        &repo.run(&["--limit-download", "10MiB/h", "snapshots"]),
        2,
        "--limit-download: invalid rate",
    );
    let bad_rate = config(
        &repo,
        "[[traffic]]\nupload = \"1M\"\n[[traffic]]\ndownload = \"lots\"\n",
    );
    assert_fails(
        &repo.run(&["--config", &bad_rate, "snapshots"]),
        2,
        "[[traffic]] rule 2: download: invalid rate \"lots\"",
    );
    let bad_frame = config(
        &repo,
        "[[traffic]]\nupload = \"1MiB/s\"\ntimeframe = \"mon..fri 08:00-25:00\"\n",
    );
    assert_fails(
        &repo.run(&["--config", &bad_frame, "snapshots"]),
        2,
        "[[traffic]] rule 1: timeframe: invalid",
    );
}
