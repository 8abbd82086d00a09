//! What the API tests share: a catalog with a target, a source tree and a job; a real
//! `kura serve` on it; an HTTP/1.1 client small enough to see every byte (status, headers,
//! body) the daemon sends.

// Each test file uses a part.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::catalog_common::{Db, Fresh, fresh};
pub use crate::common::http::wait_for;
use crate::common::http::{Served, request};
use crate::common::{pseudo_random, write};

/// A catalog with one target (named so that no fuzzer guesses it), a source tree, and the
/// commands to drive them.
pub struct Setup {
    pub f: Fresh,
    pub src: PathBuf,
    pub repo: PathBuf,
    pub target: &'static str,
}

impl Setup {
    pub fn new() -> Setup {
        let f = fresh(Db::Sqlite);
        let base = f._dir.path().to_path_buf();
        let s = Setup {
            src: base.join("src"),
            repo: base.join("repo"),
            target: "t0-q7x",
            f,
        };
        s.ok(&[
            "-r",
            s.repo.to_str().unwrap(),
            "init",
            "--kdf-memory-kib",
            "64",
        ]);
        s.ok(&[
            "resource",
            "add",
            "target",
            s.target,
            s.repo.to_str().unwrap(),
        ]);
        for i in 0..3u64 {
            write(&s.src.join(format!("f{i}")), &pseudo_random(200_000, i));
        }
        write(&s.src.join("d/inner"), b"inner file");
        s.ok(&[
            "job",
            "add",
            "nightly",
            "--object",
            s.src.to_str().unwrap(),
            "--redundancy",
            "1",
        ]);
        s
    }

    pub fn dir(&self) -> &Path {
        self.f._dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kura"));
        c.env("KURA_CATALOG", &self.f.url)
            .env("KURA_PASSWORD", "pw")
            .env_remove("KURA_REPOSITORY")
            .env_remove("KURA_PASSWORD_FILE")
            .env_remove("KURA_CONFIG")
            .env("XDG_CONFIG_HOME", self.dir().join("no-config"))
            .env("KURA_VOLUMES", self.dir().join("volumes"));
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd().args(args).output().unwrap();
        assert!(
            o.status.success(),
            "kura {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn token(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["-q", "token", "create", name];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_string()
    }

    /// `kura serve` on a free loopback port, its stderr into `stderr.log`.
    pub fn serve(&self) -> Daemon {
        self.serve_with(&[])
    }

    pub fn serve_with(&self, extra: &[&str]) -> Daemon {
        let state = self.dir().join("state");
        let log = self.dir().join("stderr.log");
        let mut child = self
            .cmd()
            .args(["serve", "--listen", "127.0.0.1:0", "--name", "api-test"])
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
        Daemon {
            _child: Served(child),
            addr: url.trim_start_matches("http://").to_string(),
            state,
            log,
        }
    }
}

pub struct Daemon {
    _child: Served,
    addr: String,
    pub state: PathBuf,
    pub log: PathBuf,
}

/// An answer: status and body (JSON when it is JSON).
pub struct Answer {
    pub status: u16,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// An error answer with this status and stable code, whose message contains `says`.
    pub fn error(&self, status: u16, code: &str, says: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{says:?} not in {msg:?}");
    }
}

impl Daemon {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One HTTP/1.1 request with an optional JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = request(&self.addr, method, path, token, &body);
        Answer { status, text }
    }

    pub fn get(&self, path: &str, token: &str) -> Value {
        let a = self.call("GET", path, Some(token), None);
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.json()
    }

    /// Start a task (202) and wait for it to end; its final record and its log.
    pub fn task(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (Value, String) {
        let a = self.call(method, path, Some(token), body);
        assert_eq!(a.status, 202, "{method} {path}: {}", a.text);
        let id = a.json()["id"].as_str().unwrap().to_string();
        let t = wait_for(120, &format!("task {id} of {path}"), || {
            let t = self.get(&format!("/api/v1/tasks/{id}"), token);
            (t["state"] != "running").then_some(t)
        });
        let log = self.get(&format!("/api/v1/tasks/{id}/log"), token)["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        (t, log)
    }

    /// Start a task that must succeed; its log.
    pub fn succeeds(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> String {
        let (t, log) = self.task(method, path, token, body);
        assert_eq!(t["state"], "succeeded", "{t}\n{log}");
        log
    }
}

pub fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_string())
        .collect()
}

pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
