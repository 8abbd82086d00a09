//! Volume restore, driven as a user would: `kura volume restore SNAP NAME` into new and
//! existing volumes, offline and through a running `kura volume serve` (refused while a host
//! is connected unless --force), killed half-way; what the volume's backup chains say
//! afterwards (the next backup to the snapshot's repository is incremental against it, to any
//! other repository a full read that says why); and `kura restore SNAP --target nbd://…` into
//! qemu-nbd and into kura's own server.

use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

use common::vols::{Vols, hold, qemu_write};
use common::{Kura, allocated, pseudo_random};

const MIB: u64 = 1 << 20;

fn snap(b: &Value) -> String {
    b["snapshot_id"].as_str().unwrap().to_string()
}

fn read(b: &Value) -> u64 {
    b["summary"]["bytes_read"].as_u64().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A 64 MiB volume `name` with data at 0 (4 MiB) and 20M (4 KiB), the rest holes, written
/// through the server; backed up to `repo`.
fn source(v: &Vols, name: &str, repo: &str) -> String {
    v.ok(&["volume", "create", name, "--size", "64M"]);
    let s = v.serve();
    qemu_write(
        &s.url(name),
        &["write -P 0x41 0 4M", "write -P 0x42 20M 4k"],
    );
    v.stop(s);
    snap(&v.backup_to(repo, name))
}

fn restore(
    v: &Vols,
    repo: &str,
    snapshot: &str,
    name: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut a = vec!["--json", "volume", "restore", snapshot, name];
    a.extend_from_slice(extra);
    v.in_repo(repo, &a)
}

fn restored_ok(v: &Vols, repo: &str, snapshot: &str, name: &str, extra: &[&str]) -> Value {
    let o = restore(v, repo, snapshot, name, extra);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["restore"].clone()
}

fn raw_path(v: &Vols, name: &str) -> std::path::PathBuf {
    v.data().join(format!("{name}.raw"))
}

/// The volume's chain for the repository at `repo` (by the location its records name), and
/// the others.
fn chains(v: &Vols, name: &str) -> Vec<Value> {
    v.json(&["volume", "info", name])["dirty"]["chains"]
        .as_array()
        .unwrap()
        .clone()
}

fn chain_based_on<'a>(cs: &'a [Value], snapshot: &str) -> Option<&'a Value> {
    cs.iter().find(|c| c["base"] == snapshot)
}

#[test]
fn restores_into_new_and_existing_volumes_keep_holes_and_reset_the_chain() {
    let v = Vols::new();
    let (a, b) = (v.repo_named("repo-a"), v.repo_named("repo-b"));
    let s1 = source(&v, "src", &a);
    // Known to repository B too, so that the restored volume has two chains.
    v.backup_to(&b, "src");
    // Into a new volume: created with the snapshot's size, holes stay holes.
    let r = restored_ok(&v, &a, &s1, "dst", &[]);
    assert_eq!(
        (r["created"].clone(), r["served"].clone()),
        (true.into(), false.into())
    );
    assert!(v.raw("dst") == v.raw("src"), "restored volume differs");
    let alloc = allocated(&raw_path(&v, "dst"));
    assert!(
        alloc <= 5 * MIB,
        "holes were filled: {alloc} bytes allocated"
    );
    // Its chain for A is the snapshot, trusted.
    let cs = chains(&v, "dst");
    let c = chain_based_on(&cs, &s1).unwrap_or_else(|| panic!("no chain on {s1}: {cs:?}"));
    assert_eq!(c["trusted"], true, "{c}");
    // Next backup to A: incremental against the snapshot, reads nothing.
    let a2 = v.backup_to(&a, "dst");
    assert_eq!(
        (a2["incremental"].clone(), read(&a2)),
        (true.into(), 0),
        "{a2}"
    );
    assert!(v.restored_from(&a, &snap(&a2)) == v.raw("dst"));
    // To B: a full read that says why.
    let b2 = v.backup_to(&b, "dst");
    assert_eq!(b2["incremental"], false, "{b2}");
    assert!(
        b2["full_reason"]
            .as_str()
            .unwrap_or("")
            .contains("no backup")
            || b2["full_reason"]
                .as_str()
                .unwrap_or("")
                .contains("restored"),
        "{b2}"
    );

    // Into an existing volume with other data: equal again, its old data deallocated.
    let s = v.serve();
    qemu_write(
        &s.url("src"),
        &["write -P 0x55 8M 16M", "write -P 0x56 40M 4M"],
    );
    v.stop(s);
    let b3 = v.backup_to(&b, "src");
    assert_eq!(b3["incremental"], true, "{b3}");
    let r = restored_ok(&v, &a, &s1, "src", &[]);
    assert_eq!(r["created"], false);
    assert!(
        v.raw("src") == v.raw("dst"),
        "restored over old data: differs"
    );
    let alloc = allocated(&raw_path(&v, "src"));
    assert!(alloc <= 5 * MIB, "old data left allocated: {alloc} bytes");
    // A: incremental from the restored snapshot, nothing to read; B: full, and why.
    let a3 = v.backup_to(&a, "src");
    assert_eq!(
        (a3["incremental"].clone(), read(&a3)),
        (true.into(), 0),
        "{a3}"
    );
    let b4 = v.backup_to(&b, "src");
    assert_eq!(b4["incremental"], false, "{b4}");
    let why = b4["full_reason"].as_str().unwrap_or("");
    assert!(
        why.contains(&format!("restored from snapshot {}", &s1[..8])),
        "{why}"
    );
    assert!(v.restored_from(&b, &snap(&b4)) == v.raw("src"));
    // A restore appends no backup record.
    let records = v.json(&["volume", "records", "src"]);
    assert_eq!(records.as_array().unwrap().len(), 5, "{records}");

    // A volume of another size is refused, and says how to go on.
    v.ok(&["volume", "create", "small", "--size", "32M"]);
    let o = restore(&v, &a, &s1, "small", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("volume resize small"), "{}", stderr(&o));
    // Unless asked to resize it.
    let r = restored_ok(&v, &a, &s1, "small", &["--resize"]);
    assert_eq!(
        (r["size"].clone(), r["created"].clone()),
        ((64 * MIB).into(), false.into())
    );
    assert!(v.raw("small") == v.raw("dst"), "the resized volume differs");
    // A file-tree snapshot is no image.
    let tree = v.dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    let o = v.in_repo(&a, &["--json", "backup", tree.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t: Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = restore(&v, &a, t["snapshot_id"].as_str().unwrap(), "treevol", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not an image"), "{}", stderr(&o));
}

#[test]
fn a_served_volume_is_restored_by_its_server_and_not_under_a_connected_host_unless_forced() {
    let v = Vols::new();
    let (a, b) = (v.repo_named("repo-a"), v.repo_named("repo-b"));
    let s1 = source(&v, "vol", &a);
    v.backup_to(&b, "vol");
    let expect = v.raw("vol");
    let s = v.serve();
    qemu_write(&s.url("vol"), &["write -P 0x66 4M 12M"]);
    // No client: the server restores it, through its write path.
    let r = restored_ok(&v, &a, &s1, "vol", &[]);
    assert_eq!(
        (r["served"].clone(), r["created"].clone()),
        (true.into(), false.into())
    );
    // The server restores into a new volume too (and then serves it).
    let r = restored_ok(&v, &a, &s1, "fresh", &[]);
    assert_eq!(
        (r["served"].clone(), r["created"].clone()),
        (true.into(), true.into())
    );
    // A host connected: refused (in use), nothing written; --force restores anyway.
    qemu_write(&s.url("vol"), &["write -P 0x67 30M 4k"]);
    let c = hold(&s.addr(), "vol");
    let o = restore(&v, &a, &s1, "vol", &[]);
    assert_eq!(o.status.code(), Some(14), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let r = restored_ok(&v, &a, &s1, "vol", &["--force"]);
    assert_eq!(r["clients"], 1, "{r}");
    drop(c);
    v.stop(s);
    assert!(
        v.raw("vol") == expect,
        "the served restore differs from the snapshot"
    );
    assert!(
        v.raw("fresh") == expect,
        "the new volume differs from the snapshot"
    );
    // The server's close recorded the chains: A incremental reading nothing, B full.
    let a2 = v.backup_to(&a, "vol");
    assert_eq!(
        (a2["incremental"].clone(), read(&a2)),
        (true.into(), 0),
        "{a2}"
    );
    let b2 = v.backup_to(&b, "vol");
    assert_eq!(b2["incremental"], false, "{b2}");
    assert!(
        b2["full_reason"]
            .as_str()
            .unwrap()
            .contains("restored from snapshot"),
        "{b2}"
    );
    let f2 = v.backup_to(&a, "fresh");
    assert_eq!(
        (f2["incremental"].clone(), read(&f2)),
        (true.into(), 0),
        "{f2}"
    );
}

#[test]
fn a_restore_killed_half_way_leaves_every_chain_untrusted() {
    let v = Vols::new();
    let (a, b) = (v.repo_named("repo-a"), v.repo_named("repo-b"));
    v.ok(&["volume", "create", "vol", "--size", "256M"]);
    // Data everywhere (no server yet: the chains start with the first backups).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(raw_path(&v, "vol"))
        .unwrap();
    for i in 0..64u64 {
        f.write_all_at(&pseudo_random(4 << 20, i), i * (4 << 20))
            .unwrap();
    }
    drop(f);
    let s1 = snap(&v.backup_to(&a, "vol"));
    v.backup_to(&b, "vol");
    // Something else in the volume now, so the restore has everything to write.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(raw_path(&v, "vol"))
        .unwrap();
    f.write_all_at(&vec![9u8; 8 << 20], 0).unwrap();
    drop(f);
    v.backup_to(&a, "vol");
    v.backup_to(&b, "vol");
    let mut child = v
        .cmd()
        .env("KURA_PASSWORD", "pw")
        .args(["-r", &a, "volume", "restore", &s1, "vol", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the restore has begun writing (its chains say so).
    let chains = v.data().join("vol.chains");
    let t = std::time::Instant::now();
    loop {
        let body = std::fs::read(&chains).unwrap_or_default();
        if body.windows(14).any(|w| w == b"did not finish") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended before it was killed"
        );
        assert!(t.elapsed().as_secs() < 60, "the restore never began");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let info = v.json(&["volume", "info", "vol"]);
    assert_eq!(info["dirty"]["trusted"], false, "{info}");
    for c in info["dirty"]["chains"].as_array().unwrap() {
        assert_eq!(c["trusted"], false, "{c}");
    }
    // Both repositories' next backups read everything, and restore equal to the volume.
    for repo in [&a, &b] {
        let n = v.backup_to(repo, "vol");
        assert_eq!(n["incremental"], false, "{n}");
        assert_eq!(read(&n), 256 * MIB, "{n}");
        assert!(v.restored_from(repo, &snap(&n)) == v.raw("vol"));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// qemu-nbd serving `file` as export `exp` on a free port, killed on drop.
struct QemuNbd(std::process::Child, u16);

impl QemuNbd {
    fn start(file: &std::path::Path) -> QemuNbd {
        let port = free_port();
        let child = Command::new("qemu-nbd")
            .args(["-f", "raw", "-b", "127.0.0.1", "-p", &port.to_string()])
            .args(["-x", "exp", "-t", "-e", "8", "--discard=unmap"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd: run the tests through scripts/test.sh");
        let t = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed().as_secs() < 20, "qemu-nbd did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        QemuNbd(child, port)
    }

    fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/exp", self.1)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_image_restores_into_any_nbd_export() {
    let v = Vols::new();
    let a = v.repo_named("repo-a");
    let s1 = source(&v, "vol", &a);
    let expect = v.raw("vol");
    // qemu-nbd over a larger file full of 0xFF: the image's bytes, the rest untouched.
    let img = v.dir.path().join("target.img");
    std::fs::write(&img, vec![0xFFu8; 80 << 20]).unwrap();
    {
        let q = QemuNbd::start(&img);
        let o = v.in_repo(&a, &["restore", &s1, "--target", &q.url()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let got = std::fs::read(&img).unwrap();
    assert!(
        got[..64 << 20] == expect[..],
        "the NBD export differs from the snapshot"
    );
    assert!(
        got[64 << 20..].iter().all(|b| *b == 0xFF),
        "bytes past the image changed"
    );
    // Too small an export is refused before anything is written.
    let small = v.dir.path().join("small.img");
    std::fs::write(&small, vec![0xFFu8; 32 << 20]).unwrap();
    {
        let q = QemuNbd::start(&small);
        let o = v.in_repo(&a, &["restore", &s1, "--target", &q.url()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("the image needs"), "{}", stderr(&o));
    }
    assert!(std::fs::read(&small).unwrap().iter().all(|b| *b == 0xFF));
    // kura's own server: zeros arrive as WRITE_ZEROES (punched holes), not as data.
    v.ok(&["volume", "create", "nbdtgt", "--size", "64M"]);
    let s = v.serve();
    qemu_write(&s.url("nbdtgt"), &["write -P 0x77 0 64M"]);
    let o = v.in_repo(&a, &["restore", &s1, "--target", &s.url("nbdtgt")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(raw_path(&v, "vol"))
        .arg(s.url("nbdtgt"))
        .output()
        .unwrap();
    assert!(o.status.success(), "qemu-img compare: {}", stderr(&o));
    v.stop(s);
    assert!(v.raw("nbdtgt") == expect);
    let alloc = allocated(&raw_path(&v, "nbdtgt"));
    assert!(
        alloc <= 5 * MIB,
        "zeros were written as data: {alloc} bytes allocated"
    );
    // qemu-storage-daemon on a Unix socket (nbd+unix://), read back with nbdcopy.
    let qsd = v.dir.path().join("qsd.img");
    let sock = v.dir.path().join("qsd.sock");
    std::fs::write(&qsd, vec![0xFFu8; 64 << 20]).unwrap();
    let mut d = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,filename={},node-name=f",
            qsd.display()
        ))
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", sock.display()))
        .args(["--export", "type=nbd,id=e,node-name=f,name=exp,writable=on"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon: run the tests through scripts/test.sh");
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed().as_secs() < 20,
            "qemu-storage-daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let url = format!("nbd+unix:///exp?socket={}", sock.display());
    let o = v.in_repo(&a, &["restore", &s1, "--target", &url]);
    let copy = v.dir.path().join("qsd-copy.img");
    let c = Command::new("nbdcopy")
        .arg(&url)
        .arg(&copy)
        .output()
        .unwrap();
    let _ = d.kill();
    let _ = d.wait();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(c.status.success(), "nbdcopy: {}", stderr(&c));
    assert!(
        std::fs::read(&copy).unwrap() == expect,
        "nbdcopy read back a difference"
    );
    // Bad addresses are usage errors.
    let o = v.in_repo(&a, &["restore", &s1, "--target", "nbd://"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
