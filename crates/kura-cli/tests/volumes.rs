//! Volumes and the NBD server, driven by real clients: `qemu-io` and `qemu-img` (qemu-utils),
//! `nbdinfo` and `nbdcopy` (libnbd-bin) — `scripts/test.sh` installs them — against
//! `kura volume serve`. Plus hostile clients speaking raw bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

mod common;

use common::Kura;
use common::vols::{Vols, hold, opt, qemu_write, stdout, tool};

#[test]
fn volumes_are_created_listed_resized_and_deleted() {
    let v = Vols::new();
    let created = v.json(&["volume", "create", "db", "--size", "64M"]);
    assert_eq!(created["size"], 64 << 20);
    assert!(
        created["allocated"].as_u64().unwrap() < 1 << 20,
        "sparse: {created}"
    );
    v.ok(&["volume", "create", "web", "--size", "1G"]);
    let list = v.json(&["volume", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"]);
    assert!(v.ok(&["volume", "list"]).contains("2 volume(s)"));
    assert_eq!(
        v.json(&["volume", "resize", "db", "--size", "128M"])["size"],
        128 << 20
    );
    // Bad input, each with its documented code.
    for (args, code) in [
        (vec!["volume", "create", "db", "--size", "1M"], 14),
        (vec!["volume", "create", "x", "--size", "1000"], 2),
        (vec!["volume", "create", "../x", "--size", "1M"], 2),
        (vec!["volume", "create", "x", "--size", "12parsecs"], 2),
        (vec!["volume", "info", "nope"], 13),
        (vec!["volume", "resize", "db", "--size", "1M"], 2),
        (vec!["volume", "delete", "nope"], 13),
    ] {
        let o = v.run(&args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    v.ok(&["volume", "resize", "db", "--size", "1M", "--allow-shrink"]);
    v.ok(&["volume", "delete", "web"]);
    assert_eq!(v.json(&["volume", "list"]).as_array().unwrap().len(), 1);
    assert!(!v.data().join("web.raw").exists() && !v.data().join("web.vol").exists());
}

#[test]
fn qemu_reads_writes_zeroes_discards_and_maps_over_nbd() {
    let v = Vols::new();
    v.ok(&["volume", "create", "vol", "--size", "64M"]);
    let s = v.serve();
    let url = format!("{}/vol", s.url);
    let o = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &url,
            "-c",
            "write -P 0xab 1M 2M",
            "-c",
            "write -P 0xcd 63M 1M",
            "-c",
            "read -P 0xab 1M 2M",
            "-c",
            "write -z 2M 512k",
            "-c",
            "read -P 0 2M 512k",
            "-c",
            "discard 63M 1M",
            "-c",
            "flush",
        ],
    );
    let out = stdout(&o);
    assert!(
        out.contains("wrote 2097152/2097152 bytes at offset 1048576"),
        "{out}"
    );
    assert!(
        out.contains("read 2097152/2097152 bytes at offset 1048576"),
        "{out}"
    );
    assert!(!out.contains("verification failed"), "{out}");
    // The bytes landed in the volume's raw file.
    let raw = v.raw("vol");
    assert_eq!(raw.len(), 64 << 20);
    assert!(raw[1 << 20..2 << 20].iter().all(|b| *b == 0xab));
    assert!(
        raw[2 << 20..(2 << 20) + (512 << 10)]
            .iter()
            .all(|b| *b == 0)
    );
    assert!(
        raw[(2 << 20) + (512 << 10)..3 << 20]
            .iter()
            .all(|b| *b == 0xab)
    );
    assert!(
        raw[63 << 20..].iter().all(|b| *b == 0),
        "discarded range reads as zeroes"
    );
    // Size through the protocol, allocation through base:allocation.
    let info = stdout(&tool(
        "qemu-img",
        &["info", "--output=json", "-f", "raw", &url],
    ));
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], 64 << 20);
    let map = stdout(&tool(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &url],
    ));
    let map: Value = serde_json::from_str(&map).unwrap();
    let data: Vec<(u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    let covered: u64 = data.iter().map(|d| d.1).sum();
    assert!(
        data.iter()
            .any(|(st, len)| *st <= 1 << 20 && st + len >= 2 << 20),
        "{map}"
    );
    assert!(covered < 8 << 20, "holes reported as holes: {map}");
    // A whole-image copy over NBD equals the file.
    let copy = v.dir.path().join("copy.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            copy.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&copy).unwrap() == raw,
        "qemu-img convert copy differs"
    );
}

#[test]
fn libnbd_clients_list_map_and_copy() {
    let v = Vols::new();
    v.ok(&["volume", "create", "a", "--size", "16M"]);
    v.ok(&["volume", "create", "b", "--size", "32M"]);
    let s = v.serve();
    let list = stdout(&tool("nbdinfo", &["--list", &s.url]));
    assert!(
        list.contains("export=\"a\"") && list.contains("export=\"b\""),
        "{list}"
    );
    let src = v.dir.path().join("src.bin");
    let pattern: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &pattern).unwrap();
    tool("nbdcopy", &[src.to_str().unwrap(), &format!("{}/a", s.url)]);
    assert!(v.raw("a") == pattern);
    let back = v.dir.path().join("back.bin");
    tool(
        "nbdcopy",
        &[&format!("{}/a", s.url), back.to_str().unwrap()],
    );
    assert!(std::fs::read(&back).unwrap() == pattern);
    let map = stdout(&tool("nbdinfo", &["--map", &format!("{}/b", s.url)]));
    assert!(
        map.contains("hole") && map.contains("zero"),
        "an empty volume maps as a hole: {map}"
    );
}

#[test]
fn several_clients_write_at_once() {
    let v = Vols::new();
    v.ok(&["volume", "create", "m", "--size", "64M"]);
    let s = v.serve();
    let url = format!("{}/m", s.url);
    let clients: Vec<Child> = (0..4)
        .map(|i| {
            Command::new("qemu-io")
                .args(["-f", "raw", &url, "-c"])
                .arg(format!("write -P {} {}M 8M", 0x10 + i, i * 16))
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    let raw = v.raw("m");
    for i in 0..4usize {
        let r = &raw[i * (16 << 20)..i * (16 << 20) + (8 << 20)];
        assert!(r.iter().all(|b| *b == 0x10 + i as u8), "client {i}'s range");
    }
}

/// Speak raw NBD: greeting, client flags, then `bytes`; returns what the server sent after
/// the greeting until it closed (or 2 s passed).
fn raw_session(addr: &str, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    assert_eq!(&greet[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[test]
fn hostile_clients_are_answered_or_cut_off_and_the_server_goes_on() {
    let v = Vols::new();
    v.ok(&["volume", "create", "h", "--size", "4M"]);
    let s = v.serve();
    let addr = s.addr();
    // Bad option magic: the connection is closed.
    let (_, closed) = raw_session(&addr, b"NOTMAGIC\0\0\0\x07\0\0\0\0");
    assert!(closed);
    // An option claiming 4 GiB of payload: closed before anything is allocated.
    let (_, closed) = raw_session(&addr, &{
        let mut b = b"IHAVEOPT".to_vec();
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        b
    });
    assert!(closed);
    // A malformed GO (name length beyond the payload): an error reply, and the session
    // goes on (ABORT is acknowledged).
    let mut b = opt(7, &[0, 0, 1, 0, b'h']);
    b.extend(opt(2, &[]));
    let (out, closed) = raw_session(&addr, &b);
    assert!(closed);
    let err_invalid = (1u32 << 31) + 3;
    assert_eq!(&out[12..16], &err_invalid.to_be_bytes(), "{out:?}");
    // GO to an unknown export: NBD_REP_ERR_UNKNOWN with a reason.
    let mut go = 4u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"nope");
    go.extend_from_slice(&0u16.to_be_bytes());
    let mut b = opt(7, &go);
    b.extend(opt(2, &[]));
    let (out, _) = raw_session(&addr, &b);
    assert_eq!(&out[12..16], &((1u32 << 31) + 6).to_be_bytes(), "{out:?}");
    // After all that, a real client is served.
    let o = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &format!("{}/h", s.url),
            "-c",
            "write -P 7 0 4M",
            "-c",
            "read -P 7 0 4M",
        ],
    );
    assert!(!stdout(&o).contains("failed"));
}

#[test]
fn a_served_volume_is_neither_resized_nor_deleted() {
    let v = Vols::new();
    v.ok(&["volume", "create", "busy", "--size", "4M"]);
    let s = v.serve();
    let c = hold(&s.addr(), "busy");
    for args in [
        vec!["volume", "delete", "busy"],
        vec!["volume", "resize", "busy", "--size", "8M"],
    ] {
        let o = v.run(&args);
        assert_eq!(
            o.status.code(),
            Some(14),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("in use"));
    }
    drop(c);
    // The client is gone, the server is not: still refused (volume_chains.rs has more).
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(v.run(&["volume", "delete", "busy"]).status.code(), Some(14));
    v.stop(s);
    v.ok(&["volume", "delete", "busy"]);
}

#[test]
fn writes_are_tracked_in_a_dirty_bitmap_that_survives_restarts_but_not_crashes() {
    let v = Vols::new();
    v.ok(&["volume", "create", "cbt", "--size", "64M"]);
    let info = v.json(&["volume", "info", "cbt"]);
    assert_eq!(info["dirty"]["trusted"], false, "no baseline yet: {info}");
    // Changes are tracked relative to a backup: one, to start the repository's chain.
    v.backup("cbt");
    let mut s = v.serve();
    let url = format!("{}/cbt", s.url);
    // Writes in granules 1 (4–8 MiB) and 5–6 (a write straddling 24 MiB), zeroes in 15.
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &url,
            "-c",
            "write -P 1 5M 4k",
            "-c",
            "write -P 2 23M 2M",
            "-c",
            "write -z 60M 1M",
            "-c",
            "flush",
        ],
    );
    let map = stdout(&tool("nbdinfo", &["--map=qemu:dirty-bitmap:kura", &url]));
    let dirty: Vec<(u64, u64)> = map
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "1").then(|| (f[0].parse().unwrap(), f[1].parse().unwrap()))
        })
        .collect();
    assert_eq!(
        dirty,
        [(4 << 20, 4 << 20), (20 << 20, 8 << 20), (60 << 20, 4 << 20)],
        "{map}"
    );
    // A clean stop (SIGINT), even with a client still connected, keeps the bits and closes
    // the bitmap cleanly.
    let held = hold(&s.addr(), "cbt");
    unsafe { libc::kill(s.child.id() as i32, libc::SIGINT) };
    let _ = s.child.wait();
    drop(held);
    let info = v.json(&["volume", "info", "cbt"]);
    assert_eq!(info["dirty"]["dirty_bytes"], 16 << 20, "{info}");
    assert_eq!(info["dirty"]["served"], false);
    let why = info["dirty"]["reason"].as_str().unwrap_or_default();
    assert!(!why.contains("not closed cleanly"), "{info}");
    // A server killed while a client holds the volume: the bitmap cannot be trusted any
    // more, and says why.
    let mut s = v.serve();
    let held = hold(&s.addr(), "cbt");
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &format!("{}/cbt", s.url),
            "-c",
            "write -P 3 40M 4k",
        ],
    );
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    let _ = s.child.wait();
    drop(held);
    let info = v.json(&["volume", "info", "cbt"]);
    assert_eq!(info["dirty"]["trusted"], false, "{info}");
    let why = info["dirty"]["reason"].as_str().unwrap();
    assert!(why.contains("not closed cleanly"), "{info}");
    let text = v.ok(&["volume", "info", "cbt"]);
    assert!(text.contains("the next backup reads everything"), "{text}");
}

#[test]
fn volume_backups_read_only_what_changed_and_keep_records() {
    let v = Vols::new();
    v.ok(&["volume", "create", "db", "--size", "64M"]);
    v.ok(&[
        "volume",
        "label",
        "db",
        "--label",
        "pgdata",
        "--mount-point",
        "/var/lib/pg",
    ]);
    let s = v.serve();
    let url = format!("{}/db", s.url);
    qemu_write(
        &url,
        &["write -P 1 0 8M", "write -P 2 30M 3M", "write -P 3 63M 1M"],
    );
    // Served: only its server can freeze it, and with no working volume in the pool (and no
    // pair) it has nothing to freeze with. Refused before anything changes.
    let held = hold(&s.addr(), "db");
    let o = v.with_repo(&["volume", "backup", "db"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("no working volume"), "{err}");
    // The hint is a command that works.
    assert!(
        err.contains("kura volume create NAME --size 64MiB --work"),
        "{err}"
    );
    drop(held);
    v.stop(s);
    // First backup: no baseline, everything is read.
    let b1 = v.backup("db");
    assert_eq!(b1["incremental"], false, "{b1}");
    assert!(
        b1["full_reason"]
            .as_str()
            .unwrap()
            .contains("no backup of this volume to this repository"),
        "{b1}"
    );
    v.restores_equal(b1["snapshot_id"].as_str().unwrap(), "db");
    // Two granules change; the next backup reads just those (8 MiB of 64).
    let s = v.serve();
    qemu_write(
        &format!("{}/db", s.url),
        &["write -P 9 10M 4k", "write -P 8 50M 1M"],
    );
    v.stop(s);
    let b2 = v.backup("db");
    assert_eq!(b2["incremental"], true, "{b2}");
    assert_eq!(b2["summary"]["bytes_read"], 8 << 20, "{b2}");
    v.restores_equal(b2["snapshot_id"].as_str().unwrap(), "db");
    // Nothing changed: nothing read, same content — with the repository reached by another
    // path (a symlink): records match repositories by id, not by how they are named.
    let link = v.dir.path().join("repo-link");
    std::os::unix::fs::symlink(v.repo(), &link).unwrap();
    let o = v
        .cmd()
        .env("KURA_PASSWORD", "pw")
        .args([
            "-r",
            link.to_str().unwrap(),
            "--json",
            "volume",
            "backup",
            "db",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b3: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            b3["incremental"].clone(),
            b3["summary"]["bytes_read"].clone()
        ),
        (Value::Bool(true), Value::from(0)),
        "{b3}"
    );
    v.restores_equal(b3["snapshot_id"].as_str().unwrap(), "db");
    // A server killed while holding the volume: the next backup reads everything, and says why.
    let s = v.serve();
    let held = hold(&s.addr(), "db");
    qemu_write(&format!("{}/db", s.url), &["write -P 7 20M 4k"]);
    let mut s = s;
    unsafe { libc::kill(s.child.id() as i32, libc::SIGKILL) };
    let _ = s.child.wait();
    drop(held);
    let b4 = v.backup("db");
    assert_eq!(b4["incremental"], false, "{b4}");
    assert!(
        b4["full_reason"]
            .as_str()
            .unwrap()
            .contains("not closed cleanly"),
        "{b4}"
    );
    assert!(
        b4["summary"]["bytes_read"].as_u64().unwrap() > 8 << 20,
        "{b4}"
    );
    v.restores_equal(b4["snapshot_id"].as_str().unwrap(), "db");
    // The records: one per backup, with the volume's label and mount point.
    let recs = v.json(&["volume", "records", "db"]);
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 4);
    let kinds: Vec<bool> = recs
        .iter()
        .map(|r| r["incremental"].as_bool().unwrap())
        .collect();
    assert_eq!(kinds, [false, true, true, false]);
    for (r, b) in recs.iter().zip([&b1, &b2, &b3, &b4]) {
        assert_eq!(r["backup"], b["snapshot_id"]);
        assert_eq!(r["label"], "pgdata");
        assert_eq!(r["mount_point"], "/var/lib/pg");
        assert_eq!(r["format"], "kura-raw-image");
    }
    // The records alone rebuild the catalog's entries for these backups: into an empty
    // catalog that knows the repository as a target.
    let catalog = v.dir.path().join("catalog.db").display().to_string();
    let cat = |args: &[&str]| {
        let mut a = vec!["--catalog", catalog.as_str()];
        a.extend_from_slice(args);
        v.json(&a)
    };
    let repo = v.repo();
    v.ok(&[
        "--catalog",
        &catalog,
        "resource",
        "add",
        "target",
        "vault",
        &repo,
    ]);
    let r = cat(&["catalog", "rebuild", "--volumes"]);
    assert_eq!(
        (r["records"].clone(), r["imported"].clone()),
        (4.into(), 4.into()),
        "{r}"
    );
    let backups = cat(&["backups", "--object", "volume:db"]);
    let backups = backups.as_array().unwrap();
    assert_eq!(backups.len(), 4, "{backups:?}");
    let again = cat(&["catalog", "rebuild", "--volumes"]);
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["already_known"], 4, "{again}");
}

/// A volume backed up to an S3 repository keeps the repository's whole URL in its record
/// (endpoint included, so nothing is sent to another S3 service) and `catalog rebuild
/// --volumes` matches it to the target registered with that URL, options in any order.
#[test]
fn volume_records_keep_the_whole_url_and_find_their_s3_target() {
    let url = common::s3_location();
    let v = Vols::new();
    v.ok(&["volume", "create", "db", "--size", "8M"]);
    let kura = |args: &[&str]| {
        let o = v
            .cmd()
            .env("KURA_PASSWORD", "pw")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    kura(&["-r", &url, "init", "--kdf-memory-kib", "64"]);
    kura(&["-r", &url, "volume", "backup", "db"]);
    let recs = v.json(&["volume", "records", "db"]);
    assert_eq!(recs[0]["repository"], url.as_str(), "{recs}");
    assert!(url.contains("endpoint="), "{url}");
    // The target registered with the same URL spelled another way (a trailing `/`): still
    // the same place.
    let catalog = v.dir.path().join("catalog.db").display().to_string();
    let (b, q) = url.split_once('?').unwrap();
    let spelled = format!("{b}/?{q}");
    v.ok(&[
        "--catalog",
        &catalog,
        "resource",
        "add",
        "target",
        "s3t",
        &spelled,
    ]);
    let r = v.json(&["--catalog", &catalog, "catalog", "rebuild", "--volumes"]);
    assert_eq!(r["imported"], 1, "{r}");
    assert_eq!(r["unknown_targets"], serde_json::json!([]), "{r}");
    let b = v.json(&["--catalog", &catalog, "backups", "--object", "volume:db"]);
    assert_eq!(b[0]["extents"][0]["target"], "s3t", "{b}");
}

/// Messages say once, in the command's words, what holds a volume, with exit 14: no message
/// nested in itself, no internal operation names.
#[test]
fn in_use_messages_say_it_once_and_exit_14() {
    let v = Vols::new();
    v.ok(&["volume", "create", "db", "--size", "8M"]);
    v.ok(&["volume", "create", "db2", "--size", "8M"]);
    let s = v.serve();
    let held = hold(&s.addr(), "db2");
    let o = v.run(&["pair", "create", "db", "db2"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(14), "{err}");
    assert!(err.contains("pair db with db2"), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "{err}");
    assert!(
        !err.contains("\\\"") && !err.contains("PairCreate"),
        "{err}"
    );
    drop(held);
    let o = v.run(&["volume", "info", "nope"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(13), "{err}");
    assert_eq!(err.matches("no volume").count(), 1, "{err}");
    let o = v.run(&["pair", "split", "nope"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("split the pair of nope"), "{err}");
    assert!(!err.contains("PairSplit"), "{err}");
    v.stop(s);
}
