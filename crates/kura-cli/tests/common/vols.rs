//! A data directory of volumes, a `kura volume serve` on it, a local repository, and the
//! real NBD clients that drive them (volumes.rs, volume_engine.rs).

use std::io::BufRead;
use std::io::BufReader;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use super::Kura;

pub struct Vols {
    pub dir: tempfile::TempDir,
}

impl Vols {
    pub fn new() -> Vols {
        Vols {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }

    /// `kura volume serve` on a free loopback port; stopped on drop.
    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    /// `kura GLOBAL… volume serve`, e.g. with `--limit-upload` so that a backup is slow.
    pub fn serve_with(&self, global: &[&str]) -> Server {
        let mut child = self
            .cmd()
            .args(global)
            .args(["volume", "serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("nbd://127.0.0.1:"), "{url:?}");
        Server { child, url }
    }

    pub fn raw(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.data().join(format!("{name}.raw"))).unwrap()
    }
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// The NBD URL of one volume.
    pub fn url(&self, volume: &str) -> String {
        format!("{}/{volume}", self.url)
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("nbd://").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tool(name: &str, args: &[&str]) -> Output {
    let o = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} ({e}): run the tests through scripts/test.sh"));
    assert!(
        o.status.success(),
        "{name} {args:?}: {:?}\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Vols {
    /// A local repository for volume backups (cheap KDF).
    pub fn repo(&self) -> String {
        self.repo_named("repo")
    }

    /// Another local repository, `name` in the test directory (created at first use).
    pub fn repo_named(&self, name: &str) -> String {
        let r = self.dir.path().join(name).display().to_string();
        if !std::path::Path::new(&r).exists() {
            let o = self
                .cmd()
                .env("KURA_PASSWORD", "pw")
                .args(["-r", &r, "init", "--kdf-memory-kib", "64"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        r
    }

    pub fn with_repo(&self, args: &[&str]) -> Output {
        let r = self.repo();
        let mut a = vec!["-r", r.as_str()];
        a.extend_from_slice(args);
        self.cmd()
            .env("KURA_PASSWORD", "pw")
            .args(&a)
            .output()
            .unwrap()
    }

    pub fn backup(&self, name: &str) -> Value {
        let o = self.with_repo(&["--json", "volume", "backup", name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// `kura -r REPO ARGS…` with the test password.
    pub fn in_repo(&self, repo: &str, args: &[&str]) -> Output {
        let mut a = vec!["-r", repo];
        a.extend_from_slice(args);
        self.cmd()
            .env("KURA_PASSWORD", "pw")
            .args(&a)
            .output()
            .unwrap()
    }

    /// Back up volume `name` to `repo` (no server running); the JSON summary.
    pub fn backup_to(&self, repo: &str, name: &str) -> Value {
        let o = self.in_repo(repo, &["--json", "volume", "backup", name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The bytes of an image snapshot of `repo`, restored to a file.
    pub fn restored_from(&self, repo: &str, snapshot: &str) -> Vec<u8> {
        let out = self.dir.path().join(format!("restored-{snapshot}"));
        let _ = std::fs::remove_file(&out);
        let o = self.in_repo(
            repo,
            &["restore", snapshot, "--target", out.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let b = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        b
    }

    /// The bytes of an image snapshot, restored to a file.
    pub fn restored(&self, snapshot: &str) -> Vec<u8> {
        let out = self.dir.path().join(format!("restored-{snapshot}"));
        let _ = std::fs::remove_file(&out);
        let o = self.with_repo(&["restore", snapshot, "--target", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let b = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        b
    }

    /// Restore `snapshot` to a file and require it to equal the volume's bytes now.
    pub fn restores_equal(&self, snapshot: &str, name: &str) {
        let out = self.dir.path().join(format!("restored-{snapshot}"));
        let o = self.with_repo(&["restore", snapshot, "--target", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::read(&out).unwrap() == self.raw(name),
            "restored image differs"
        );
    }

    pub fn stop(&self, mut s: Server) {
        unsafe { libc::kill(s.child.id() as i32, libc::SIGINT) };
        let _ = s.child.wait();
    }
}

pub fn qemu_write(url: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "raw", url];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    tool("qemu-io", &args);
}

impl Kura for Vols {
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_VOLUMES", self.data())
            .env("XDG_CONFIG_HOME", self.dir.path().join("no-config"))
            // The embedded catalog's default home: this test's own, never the machine's.
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env_remove("KURA_CONFIG");
        c
    }
}

/// An NBD option request of a client (newstyle negotiation).
pub fn opt(o: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = b"IHAVEOPT".to_vec();
    v.extend_from_slice(&o.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A client that negotiated GO to `name` and stays connected: it holds the volume open.
pub fn hold(addr: &str, name: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    let mut greet = [0u8; 18];
    c.read_exact(&mut greet).unwrap();
    c.write_all(&3u32.to_be_bytes()).unwrap();
    let mut go = (name.len() as u32).to_be_bytes().to_vec();
    go.extend_from_slice(name.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    c.write_all(&opt(7, &go)).unwrap();
    let mut reply = [0u8; 20];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(
        &reply[12..16],
        &3u32.to_be_bytes(),
        "GO answered with INFO: the export is open"
    );
    c
}

/// Volume `primary`'s pair as `pair list --json` shows it.
pub fn pair(v: &Vols, primary: &str) -> Value {
    let all = v.json(&["pair", "list"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|p| p["primary"] == primary)
        .cloned()
        .unwrap_or_else(|| panic!("no pair of {primary}: {all}"))
}
