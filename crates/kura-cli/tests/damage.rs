//! The corruption matrix: every file kind of a repository × every damage (flip a byte,
//! truncate, delete) × every command, each cell asserting the outcome `docs/DAMAGE.md`
//! documents. The test reads its expectations from that document's table, so the two cannot
//! drift: a changed outcome fails here until the table says so.
//!
//! One small repository (two snapshots) is built once; each cell works on a `cp -a` copy.
//! `KURA_DAMAGE_MATRIX_PRINT=1` prints the observed table (to update the document).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{PASSWORD, TestRepo, pseudo_random, write};
use kura_repo::backend::FileKind;
use kura_repo::format::BlobType;

/// The commands of the matrix, by their column name in the table.
const COMMANDS: &[&str] = &[
    "snapshots",
    "ls",
    "dump",
    "restore",
    "backup",
    "check",
    "check --read-data",
    "forget",
    "prune",
    "repair index",
    "repair snapshots",
    "key list",
];

/// The file kinds of the matrix, by their row name.
const KINDS: &[&str] = &[
    "config",
    "key",
    "index",
    "snapshot",
    "data pack",
    "tree pack",
    "lock",
];

const DAMAGES: &[&str] = &["flip", "truncate", "delete"];

/// The repository every cell copies, and which of its files is which.
struct Base {
    _repo: TestRepo,
    repo_dir: PathBuf,
    src: PathBuf,
    /// Relative path (under the repository) of the file each kind damages.
    files: BTreeMap<&'static str, PathBuf>,
    /// An intact lock file held by a live process, put in place for the lock row only.
    lock: (PathBuf, Vec<u8>),
    /// A file only the newest snapshot holds, stored in packs no damaged file touches.
    survivor: PathBuf,
    survivor_bytes: Vec<u8>,
}

fn rel(kind: FileKind, name: &str) -> PathBuf {
    PathBuf::from(kind.relative_path(name))
}

fn build_base() -> Base {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    write(&src.join("old/a.bin"), &pseudo_random(300_000, 1));
    write(&src.join("old/b.bin"), &pseudo_random(200_000, 2));
    write(&src.join("same.txt"), b"unchanged\n");
    let s = src.display().to_string();
    repo.backup(&[&s]);
    let b = repo.backend();
    let names = |k| -> Vec<String> { b.list(k).unwrap().into_iter().map(|f| f.name).collect() };
    let (packs1, index1, snaps1) = (
        names(FileKind::Pack),
        names(FileKind::Index),
        names(FileKind::Snapshot),
    );
    let survivor = src.join("new.bin");
    let survivor_bytes = pseudo_random(150_000, 3);
    write(&survivor, &survivor_bytes);
    repo.backup(&[&s]);

    // Which of the first backup's packs holds trees, which data.
    let lib = common::open_lib(&repo);
    let tree_packs: std::collections::HashSet<String> = lib
        .index()
        .iter()
        .filter(|l| l.ty == BlobType::Tree)
        .map(|l| l.pack.to_hex())
        .collect();
    let data_pack = packs1.iter().find(|p| !tree_packs.contains(*p)).unwrap();
    let tree_pack = packs1.iter().find(|p| tree_packs.contains(*p)).unwrap();
    assert_eq!(index1.len(), 1, "{index1:?}");
    assert_eq!(snaps1.len(), 1);
    let keys = names(FileKind::Key);
    assert_eq!(keys.len(), 1);

    // A lock held by a live process (this test's), as an interrupted-but-alive command
    // would leave it: intact it is honoured, damaged it must not block anything.
    let open = kura_repo::Repository::open(repo.backend(), PASSWORD.as_bytes()).unwrap();
    kura_repo::lock::RepoLock::shared(&open).unwrap().abandon();
    let locks = names(FileKind::Lock);
    assert_eq!(locks.len(), 1);
    let lock_rel = rel(FileKind::Lock, &locks[0]);
    let lock_bytes = std::fs::read(repo.path().join(&lock_rel)).unwrap();
    std::fs::remove_file(repo.path().join(&lock_rel)).unwrap();

    let mut files = BTreeMap::new();
    files.insert("config", rel(FileKind::Config, "config"));
    files.insert("key", rel(FileKind::Key, &keys[0]));
    files.insert("index", rel(FileKind::Index, &index1[0]));
    files.insert("snapshot", rel(FileKind::Snapshot, &snaps1[0]));
    files.insert("data pack", rel(FileKind::Pack, data_pack));
    files.insert("tree pack", rel(FileKind::Pack, tree_pack));
    files.insert("lock", rel(FileKind::Lock, &locks[0]));
    let repo_dir = repo.path();
    Base {
        _repo: repo,
        repo_dir,
        src,
        files,
        lock: (lock_rel, lock_bytes),
        survivor,
        survivor_bytes,
    }
}

fn damage(path: &Path, how: &str) {
    match how {
        "flip" => {
            let mut b = std::fs::read(path).unwrap();
            let at = b.len() / 2;
            b[at] ^= 0x01;
            std::fs::write(path, b).unwrap();
        }
        "truncate" => {
            let len = std::fs::metadata(path).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(len / 2).unwrap();
        }
        "delete" => std::fs::remove_file(path).unwrap(),
        other => panic!("unknown damage {other}"),
    }
}

fn kura(repo: &Path, scratch: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_REPOSITORY", repo)
        .env("KURA_PASSWORD", PASSWORD)
        .env_remove("KURA_PASSWORD_FILE")
        .env_remove("KURA_CONFIG")
        .env("XDG_CONFIG_HOME", scratch.join("no-config"))
        .args(args)
        .output()
        .expect("run kura")
}

fn command_args(cmd: &str, base: &Base, scratch: &Path) -> Vec<String> {
    let s = |x: &str| x.to_string();
    match cmd {
        "snapshots" => vec![s("snapshots")],
        "ls" => vec![s("ls"), s("latest")],
        "dump" => vec![s("dump"), s("latest"), base.survivor.display().to_string()],
        "restore" => vec![
            s("restore"),
            s("latest"),
            s("--target"),
            scratch.join("restored").display().to_string(),
        ],
        "backup" => vec![s("backup"), base.src.display().to_string()],
        "check" => vec![s("check")],
        "check --read-data" => vec![s("check"), s("--read-data")],
        "forget" => vec![s("forget"), s("--keep-last"), s("1")],
        "prune" => vec![s("prune")],
        "repair index" => vec![s("repair"), s("index")],
        "repair snapshots" => vec![s("repair"), s("snapshots")],
        "key list" => vec![s("key"), s("list")],
        other => panic!("unknown command {other}"),
    }
}

/// One cell's observed outcome: the exit code, and whether the newest snapshot's intact file
/// still restores byte-identical afterwards (`+`).
fn run_cell(base: &Base, kind: &str, how: &str, cmd: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("repo");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&base.repo_dir)
        .arg(&repo)
        .status()
        .unwrap();
    assert!(st.success());
    if kind == "lock" {
        std::fs::write(repo.join(&base.lock.0), &base.lock.1).unwrap();
    }
    damage(&repo.join(&base.files[kind]), how);
    let args = command_args(cmd, base, scratch.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kura(&repo, scratch.path(), &args);
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("{kind} {how} {cmd}: killed by a signal"));
    assert_ne!(
        code,
        101,
        "{kind} {how} {cmd}: panicked\n{}",
        common::stderr(&out)
    );
    let survivor = base.survivor.display().to_string();
    let dumped = kura(&repo, scratch.path(), &["dump", "latest", &survivor]);
    let intact = dumped.status.success() && dumped.stdout == base.survivor_bytes;
    if std::env::var_os("KURA_DAMAGE_MATRIX_VERBOSE").is_some() {
        eprintln!(
            "--- {kind} {how} {cmd}: exit {code}\n{}",
            common::stderr(&out)
        );
    }
    format!("{code}{}", if intact { "+" } else { "" })
}

/// The expected table from docs/DAMAGE.md: (kind, damage) → one cell per command.
fn documented() -> BTreeMap<(String, String), Vec<String>> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/DAMAGE.md");
    let text = std::fs::read_to_string(&doc).expect("read docs/DAMAGE.md");
    let start = text
        .find("<!-- matrix:begin -->")
        .expect("matrix:begin marker");
    let end = text.find("<!-- matrix:end -->").expect("matrix:end marker");
    let mut lines = text[start..end].lines().filter(|l| l.starts_with('|'));
    let header: Vec<String> = cells(lines.next().expect("table header"));
    assert_eq!(
        &header[2..],
        COMMANDS,
        "the table's columns are the matrix's commands"
    );
    lines.next(); // the |---| row
    let mut out = BTreeMap::new();
    for l in lines {
        let c = cells(l);
        out.insert((c[0].clone(), c[1].clone()), c[2..].to_vec());
    }
    out
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect()
}

#[test]
fn corruption_matrix() {
    let base = build_base();
    let print = std::env::var_os("KURA_DAMAGE_MATRIX_PRINT").is_some();
    let expected = if print { BTreeMap::new() } else { documented() };
    if !print {
        let rows: Vec<(String, String)> = KINDS
            .iter()
            .flat_map(|k| DAMAGES.iter().map(move |d| (k.to_string(), d.to_string())))
            .collect();
        assert_eq!(
            expected.keys().cloned().collect::<Vec<_>>().len(),
            rows.len(),
            "docs/DAMAGE.md must have one row per file kind and damage"
        );
    }
    // Cells are independent (each works on its own copy): run them on a few threads.
    let cells: Vec<(&str, &str, &str)> = KINDS
        .iter()
        .flat_map(|k| DAMAGES.iter().map(move |d| (*k, *d)))
        .flat_map(|(k, d)| COMMANDS.iter().map(move |c| (k, d, *c)))
        .collect();
    let threads: usize = std::env::var("KURA_DAMAGE_MATRIX_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while let Some(&(k, d, c)) =
                    cells.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let got = run_cell(&base, k, d, c);
                    results.lock().unwrap().insert((k, d, c), got);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let mut failures = Vec::new();
    let mut table = String::new();
    for kind in KINDS {
        for how in DAMAGES {
            let mut row = Vec::new();
            for (i, cmd) in COMMANDS.iter().enumerate() {
                let got = results[&(*kind, *how, *cmd)].clone();
                if !print {
                    let want = &expected[&(kind.to_string(), how.to_string())][i];
                    if &got != want {
                        failures.push(format!(
                            "{kind} × {how} × {cmd}: documented {want}, got {got}"
                        ));
                    }
                }
                row.push(format!("`{got}`"));
            }
            table.push_str(&format!("| {kind} | {how} | {} |\n", row.join(" | ")));
        }
    }
    if print {
        println!(
            "| file | damage | {} |\n|{}\n{table}",
            COMMANDS.join(" | "),
            "---|".repeat(COMMANDS.len() + 2)
        );
    }
    assert!(
        failures.is_empty(),
        "{} cell(s) differ from docs/DAMAGE.md:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A truncated pack loses only the blobs past the cut: a restore reads the others one by one
/// when the ranged read of several fails (a short read is damage on S3 as on a directory).
fn truncated_pack_restores_its_intact_blobs(store: common::Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    for i in 0..30 {
        write(
            &src.join(format!("f{i:02}")),
            &pseudo_random(20_000, 100 + i),
        );
    }
    repo.backup(&[&src.display().to_string()]);
    let (pack, _) = common::pack_of(&repo, "latest", &src.join("f00"));
    let b = repo.backend();
    let mut bytes = b.get(FileKind::Pack, &pack).unwrap();
    let cut = bytes.len() as u64 / 2;
    bytes.truncate(cut as usize);
    b.put(FileKind::Pack, &pack, bytes.into()).unwrap();
    let target = repo.dir.path().join("restored");
    let o = repo.run(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", common::stderr(&o));
    let mut intact = 0;
    for i in 0..30 {
        let f = src.join(format!("f{i:02}"));
        let (p, offset) = common::pack_of(&repo, "latest", &f);
        assert_eq!(p, pack);
        if (offset as u64) + 21_000 < cut {
            let back = std::fs::read(target.join(f.strip_prefix("/").unwrap()));
            assert_eq!(
                back.ok(),
                Some(std::fs::read(&f).unwrap()),
                "{}",
                f.display()
            );
            intact += 1;
        }
    }
    assert!(intact >= 10, "only {intact} blobs before the cut");
}

/// `repair index` rebuilds a damaged or lost index from the pack headers: afterwards `check`
/// is clean and every snapshot restores; old index files are gone.
#[test]
fn repair_index_rebuilds_from_pack_headers() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    write(&src.join("a"), &pseudo_random(50_000, 1));
    repo.backup(&[&src.display().to_string()]);
    write(&src.join("b"), &pseudo_random(50_000, 2));
    repo.backup(&[&src.display().to_string()]);
    let b = repo.backend();
    let idx: Vec<String> = b
        .list(FileKind::Index)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(idx.len(), 2);
    damage(&repo.path().join(rel(FileKind::Index, &idx[0])), "flip");
    damage(&repo.path().join(rel(FileKind::Index, &idx[1])), "delete");
    assert_eq!(repo.run(&["check"]).status.code(), Some(4));
    // Prune refuses while an index file is damaged, naming the way out.
    common::assert_fails(&repo.run(&["prune"]), 1, "kura repair index");
    let dry = repo.json(&["repair", "index", "--dry-run"]);
    assert_eq!(dry["index_files_written"], 0);
    let r = repo.json(&["repair", "index"]);
    assert_eq!(r["packs_indexed"], r["packs"], "{r}");
    assert_eq!(r["index_files_damaged"].as_array().unwrap().len(), 1, "{r}");
    let now: Vec<String> = b
        .list(FileKind::Index)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(!now.contains(&idx[0]), "the damaged index file is deleted");
    repo.ok(&["check", "--read-data"]);
    let target = repo.dir.path().join("restored");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    common::assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    // Idempotent: a second run reads no header (an intact index describes every pack).
    let again = repo.json(&["repair", "index"]);
    assert_eq!(again["headers_read"], 0, "{again}");
    repo.ok(&["check"]);
}

/// `repair snapshots` replaces a snapshot whose data is gone by one without the damaged files
/// (tag `repaired`, original recorded); with `--forget` the original goes, and after that the
/// repository checks clean and the rest restores byte-identical.
#[test]
fn repair_snapshots_removes_only_damaged_files() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    write(&src.join("keep/a"), &pseudo_random(40_000, 1));
    write(&src.join("lost/b"), &pseudo_random(40_000, 2));
    repo.backup(&[&src.display().to_string()]);
    // The second backup adds a file in its own pack; the first pack then holds a and b.
    write(&src.join("keep/c"), &pseudo_random(40_000, 3));
    repo.backup(&[&src.display().to_string()]);
    let (pack_b, _) = common::pack_of(&repo, "latest", &src.join("lost/b"));
    let (pack_c, _) = common::pack_of(&repo, "latest", &src.join("keep/c"));
    assert_ne!(pack_b, pack_c);
    // Move a into the new pack's company: rewrite the first pack away except for b's blob is
    // not possible from outside, so a shares b's fate; c survives.
    common::delete_pack(&repo, &pack_b);
    assert_eq!(repo.run(&["check"]).status.code(), Some(4));
    let dry = repo.json(&["repair", "snapshots", "--dry-run"]);
    assert_eq!(dry["damaged"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(repo.snapshot_count(), 2, "a dry run writes nothing");
    let r = repo.json(&["repair", "snapshots", "--forget"]);
    let damaged = r["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 2, "{r}");
    for d in damaged {
        assert!(d["repaired"].is_string() && d["forgotten"] == true, "{d}");
        let removed: Vec<&str> = d["files_removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            removed.iter().any(|f| f.ends_with("/lost/b")),
            "{removed:?}"
        );
    }
    let snaps = repo.json(&["snapshots"]);
    for s in snaps.as_array().unwrap() {
        assert!(
            s["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "repaired"),
            "{s}"
        );
    }
    // The missing pack is still listed by the index: rebuilding it from the packs makes the
    // repository whole.
    repo.ok(&["repair", "index"]);
    repo.ok(&["check", "--read-data"]);
    let target = repo.dir.path().join("restored");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    let got = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(got.join("keep/c")).unwrap(),
        std::fs::read(src.join("keep/c")).unwrap()
    );
    assert!(!got.join("lost/b").exists());
}

/// Key files: damage is reported as damage, a future version as unsupported, absurd KDF
/// parameters are refused at once, and only a real wrong password exits 12.
#[test]
fn key_file_damage_is_not_a_wrong_password() {
    let repo = TestRepo::new(&[]);
    let b = repo.backend();
    let name = b.list(FileKind::Key).unwrap()[0].name.clone();
    let original = b.get(FileKind::Key, &name).unwrap();
    let put = |v: &serde_json::Value| {
        let bytes = serde_json::to_vec(v).unwrap();
        let n = kura_repo::Id::of_file(&bytes).to_hex();
        for f in b.list(FileKind::Key).unwrap() {
            b.delete(FileKind::Key, &f.name).unwrap();
        }
        b.put(FileKind::Key, &n, bytes.into()).unwrap();
    };
    let json: serde_json::Value = serde_json::from_slice(&original).unwrap();

    let wrong = repo
        .cmd()
        .env("KURA_PASSWORD", "nope")
        .args(["snapshots"])
        .output()
        .unwrap();
    common::assert_fails(&wrong, 12, "wrong password");

    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    b.put(FileKind::Key, &name, flipped.into()).unwrap();
    common::assert_fails(&repo.run(&["snapshots"]), 1, "damaged key file");

    let mut future = json.clone();
    future["version"] = 2.into();
    put(&future);
    common::assert_fails(&repo.run(&["snapshots"]), 1, "unsupported");

    for (field, value) in [
        ("memory_kib", u32::MAX as u64),
        ("iterations", u32::MAX as u64),
        ("parallelism", 1_000_000),
    ] {
        let mut absurd = json.clone();
        absurd["params"][field] = value.into();
        put(&absurd);
        let t = std::time::Instant::now();
        common::assert_fails(&repo.run(&["snapshots"]), 1, "argon2id parameters");
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{field}");
    }
    put(&json);
    repo.ok(&["snapshots"]);
}

/// With two key files, a damaged one costs only its own passphrase: the other still opens
/// the repository and `key list` shows the damaged one marked instead of failing.
#[test]
fn a_damaged_second_key_file_is_listed_and_the_other_opens() {
    let repo = TestRepo::new(&[]);
    let b = repo.backend();
    let first = b.list(FileKind::Key).unwrap()[0].name.clone();
    let added = repo
        .cmd()
        .env("KURA_NEW_PASSWORD", "second passphrase")
        .args(["key", "add", "--kdf-memory-kib", "64"])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", common::stderr(&added));
    let second = b
        .list(FileKind::Key)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .find(|n| *n != first)
        .unwrap();
    damage(&repo.path().join(rel(FileKind::Key, &second)), "flip");
    let keys = repo.json(&["key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let bad = keys.iter().find(|k| k["id"] == second.as_str()).unwrap();
    assert!(bad["damaged"].is_string(), "{bad}");
    // The second passphrase's key file is damaged: say so, not "wrong password".
    let o = repo
        .cmd()
        .env("KURA_PASSWORD", "second passphrase")
        .args(["snapshots"])
        .output()
        .unwrap();
    common::assert_fails(&o, 1, "damaged key file");
}

/// The same tolerance on S3 as on a local directory (it lives above the backend): a damaged
/// index file and a damaged snapshot file leave listings, backup and restore working, and
/// `repair index` makes `check` clean again once the damaged snapshot is forgotten.
fn damaged_index_and_snapshot_on_any_store(store: common::Store) {
    let repo = TestRepo::on(store, &[]);
    let src = repo.dir.path().join("src");
    write(&src.join("a"), &pseudo_random(60_000, 1));
    let s = src.display().to_string();
    repo.backup(&[&s]);
    let b = repo.backend();
    let old_snap = b.list(FileKind::Snapshot).unwrap()[0].name.clone();
    let old_index = b.list(FileKind::Index).unwrap()[0].name.clone();
    write(&src.join("b"), &pseudo_random(60_000, 2));
    repo.backup(&[&s]);
    for (kind, name) in [
        (FileKind::Snapshot, &old_snap),
        (FileKind::Index, &old_index),
    ] {
        let mut bytes = b.get(kind, name).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        b.put(kind, name, bytes.into()).unwrap();
    }
    let snaps = repo.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    // The backup adopts the packs the damaged index listed: nothing is lost.
    repo.backup(&[&s]);
    let target = repo.dir.path().join("restored");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    common::assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    common::assert_fails(&repo.run(&["prune"]), 1, "kura repair index");
    repo.ok(&["repair", "index"]);
    common::assert_fails(&repo.run(&["prune"]), 1, &format!("kura forget {old_snap}"));
    repo.ok(&["forget", &old_snap]);
    repo.ok(&["prune"]);
    repo.ok(&["check", "--read-data"]);
}

on_both!(
    damaged_index_and_snapshot_on_any_store,
    truncated_pack_restores_its_intact_blobs
);

/// A backup running beside a prune: its pack is uploaded, but neither its index file nor its
/// snapshot is written yet, so the prune condemns the pack as an orphan (blob list unknown).
/// The backup then finishes. `repair index` must keep the blobs its index file describes:
/// the condemned record alone does not locate them.
#[test]
fn repair_index_keeps_a_condemned_orphan_that_a_snapshot_needs() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    write(&src.join("a"), &pseudo_random(200_000, 7));
    repo.backup(&[&src.display().to_string()]);
    // As the prune sees it: no index file, no snapshot yet.
    let aside = repo.dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for d in ["index", "snapshots"] {
        std::fs::rename(repo.path().join(d), aside.join(d)).unwrap();
        std::fs::create_dir(repo.path().join(d)).unwrap();
    }
    let p = repo.json(&["prune"]);
    assert!(p["packs_condemned"].as_u64().unwrap() >= 1, "{p}");
    for d in ["index", "snapshots"] {
        std::fs::remove_dir(repo.path().join(d)).unwrap();
        std::fs::rename(aside.join(d), repo.path().join(d)).unwrap();
    }
    repo.ok(&["check"]);
    repo.ok(&["repair", "index"]);
    repo.ok(&["check", "--read-data"]);
    let target = repo.dir.path().join("restored");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    common::assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    // And the next prune recovers the pack rather than refusing.
    let p = repo.json(&["prune", "--keep-condemned", "0"]);
    assert_eq!(p["packs_deleted"], 0, "{p}");
    repo.ok(&["check", "--read-data"]);
}

/// `repair snapshots` stands an empty tree in for directories whose tree is lost. When the
/// lost pack itself held an empty tree (an empty directory of the snapshot), the index still
/// names that blob — in the pack that is gone: the repaired snapshot must get a readable copy,
/// or it is as damaged as the original it replaces.
#[test]
fn repair_snapshots_never_points_a_repaired_snapshot_at_the_lost_pack() {
    let repo = TestRepo::new(&[]);
    let src = repo.dir.path().join("src");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    write(&src.join("d/f"), &pseudo_random(10_000, 3));
    let snap = repo.backup(&[&src.display().to_string()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let lib = common::open_lib(&repo);
    let root = match lib.find_snapshot(&snap).unwrap().snapshot.content {
        kura_repo::snapshot::Content::Tree { root } => root,
        _ => unreachable!(),
    };
    let tree_pack = lib.index().get(&root).unwrap().pack.to_hex();
    drop(lib);
    common::delete_pack(&repo, &tree_pack);
    let r = repo.json(&["repair", "snapshots", "--forget"]);
    assert_eq!(r["damaged"][0]["forgotten"], true, "{r}");
    // The repaired snapshot is whole (empty, its trees being gone).
    let target = repo.dir.path().join("restored");
    repo.ok(&[
        "restore",
        "latest",
        "--target",
        &target.display().to_string(),
    ]);
    repo.ok(&["repair", "index"]);
    repo.ok(&["check"]);
}
