//! The control socket of a serving process: how `kura pair …` and `kura volume backup`
//! reach volumes that a running `kura volume serve` owns (it holds their locks and their
//! write path, so only it can split, resync or freeze them).
//!
//! Shaped like qemu's QMP: a Unix socket in the data directory (`.kura-control.sock`, mode
//! 0600; a peer of another user is refused by its credentials), one JSON request per line,
//! one JSON answer per line: `{"ok": true, "result": …}` or
//! `{"ok": false, "kind": "in_use"|"not_found"|"invalid"|"repository"|"error", "error": "…"}`;
//! a `repository` error adds `"failure"`, a [`kura_repo::Failure`] (`"unreachable"`,
//! `"wrong_password"`, …), so the client exits as it would had it opened the repository
//! itself. A backup or restore may carry the client's storage deadline (`timeout_ms`, from
//! its `--timeout`), which then replaces the server's own for that job.
//! Requests are [`Request`]; a connection may send several. The password of a backup's
//! repository travels in the request, so the socket's permissions matter.
//!
//! When no server runs, the CLI does the same operations in its own process through the
//! same library calls.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kura_types::Extent;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{Engine, Freeze, RepoAccess};
use crate::error::{Error, Result};

pub const SOCKET: &str = ".kura-control.sock";
/// The longest request line accepted (a request is small; this bounds a hostile one).
const MAX_LINE: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    PairCreate {
        primary: String,
        secondary: String,
    },
    PairSplit {
        primary: String,
        #[serde(default)]
        areas: Vec<Extent>,
    },
    PairResync {
        primary: String,
        /// Only these split areas (empty: all, back to duplex).
        #[serde(default)]
        areas: Vec<Extent>,
    },
    PairDelete {
        primary: String,
    },
    PairList,
    Backup {
        volume: String,
        #[serde(default)]
        freeze: Freeze,
        /// Back up this part of a split area of the volume's pair, not the volume.
        #[serde(default)]
        area: Option<Extent>,
        repository: String,
        /// The repository password, as bytes (JSON array).
        password: Vec<u8>,
        /// The client's deadline of each storage operation, in milliseconds (its
        /// `--timeout`); `None`: the server's own.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Restore an image snapshot into a volume through the server's write path.
    Restore {
        volume: String,
        repository: String,
        password: Vec<u8>,
        /// As for a backup.
        #[serde(default)]
        timeout_ms: Option<u64>,
        snapshot: String,
        #[serde(default)]
        force: bool,
        /// Parallel pack readers (default: the server's choice).
        #[serde(default)]
        threads: Option<usize>,
    },
    Jobs,
    Job {
        id: u64,
    },
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Carry out one request.
pub fn handle(engine: &Arc<Engine>, req: Request) -> Result<Value> {
    let st = engine.store();
    let v = |r: std::result::Result<Value, serde_json::Error>| {
        r.map_err(|e| Error::Invalid(format!("encode the answer: {e}")))
    };
    match req {
        Request::PairCreate { primary, secondary } => {
            v(serde_json::to_value(st.pair_create(&primary, &secondary)?))
        }
        Request::PairSplit { primary, areas } => {
            v(serde_json::to_value(st.pair_split(&primary, areas)?))
        }
        Request::PairResync { primary, areas } => {
            let (info, out) = st.pair_resync(&primary, &areas)?;
            Ok(json!({ "pair": info, "copied": out }))
        }
        Request::PairDelete { primary } => {
            st.pair_delete(&primary)?;
            Ok(json!({ "deleted": primary }))
        }
        Request::PairList => v(serde_json::to_value(st.pair_list()?)),
        Request::Backup {
            volume,
            freeze,
            area,
            repository,
            password,
            timeout_ms,
        } => {
            let access = RepoAccess::new(repository, password, timeout_ms);
            v(serde_json::to_value(
                engine.backup(&volume, freeze, area, &access)?,
            ))
        }
        Request::Restore {
            volume,
            repository,
            password,
            timeout_ms,
            snapshot,
            force,
            threads,
        } => {
            let access = RepoAccess::new(repository, password, timeout_ms);
            v(serde_json::to_value(
                engine.restore(&volume, &access, &snapshot, force, threads)?,
            ))
        }
        Request::Jobs => v(serde_json::to_value(engine.jobs())),
        Request::Job { id } => v(serde_json::to_value(engine.job(id)?)),
    }
}

/// An error as the control socket answers it (module docs).
fn refusal(e: &Error) -> Value {
    let kind = match e {
        Error::InUse(_) => "in_use",
        Error::NotFound(_) => "not_found",
        Error::Invalid(_) | Error::Corrupt { .. } => "invalid",
        Error::Repo(_) | Error::Remote { .. } => "repository",
        _ => "error",
    };
    let mut v = json!({"ok": false, "kind": kind, "error": e.to_string()});
    if kind == "repository" {
        v["failure"] = json!(e.failure());
    }
    v
}

fn answer(engine: &Arc<Engine>, line: &str) -> Value {
    match serde_json::from_str::<Request>(line) {
        Err(e) => json!({"ok": false, "kind": "invalid", "error": format!("bad request: {e}")}),
        Ok(req) => match handle(engine, req) {
            Ok(result) => json!({"ok": true, "result": result}),
            Err(e) => refusal(&e),
        },
    }
}

fn same_user(s: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are locals that outlive the call, and `len` is the size of
    // `cred`, so the kernel writes within it.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid takes nothing and cannot fail.
    r == 0 && cred.uid == unsafe { libc::geteuid() }
}

fn connection(engine: &Arc<Engine>, s: UnixStream) {
    if !same_user(&s) {
        tracing::warn!("control socket: refused a peer of another user");
        return;
    }
    let Ok(w) = s.try_clone() else { return };
    let mut w = w;
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        match Read::by_ref(&mut r).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE {
            let _ = writeln!(
                w,
                "{}",
                json!({"ok": false, "kind": "invalid", "error": "request too long"})
            );
            return;
        }
        let a = answer(engine, line.trim());
        if writeln!(w, "{a}").is_err() {
            return;
        }
    }
}

/// Listen on the data directory's control socket until `stop` (each connection in a
/// thread). A socket left by a dead server is replaced; a live one is an error.
pub fn listen(engine: Arc<Engine>, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    let path = socket_path(engine.store().dir());
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(Error::InUse(format!(
                "{} is in use: another server owns this data directory",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
    }
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| Error::Io { what, source }
    };
    let listener = UnixListener::bind(&path).map_err(io("listen on"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restrict"))?;
    listener.set_nonblocking(true).map_err(io("listen on"))?;
    let started = io("start the listener of");
    let sock = path.clone();
    std::thread::Builder::new()
        .name("kura-control".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let e = Arc::clone(&engine);
                        let _ = std::thread::Builder::new()
                            .name("kura-control-conn".into())
                            .spawn(move || connection(&e, s));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!("control socket: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
            let _ = std::fs::remove_file(&sock);
        })
        .map_err(started)
}

/// A connection to a running server's control socket.
pub struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    /// Connect if a server owns `dir`; `None` if none does.
    pub fn connect(dir: &Path) -> Option<Client> {
        let s = UnixStream::connect(socket_path(dir)).ok()?;
        let w = s.try_clone().ok()?;
        Some(Client {
            r: BufReader::new(s),
            w,
        })
    }

    /// Send a request; the server's error comes back as the matching [`Error`].
    pub fn call(&mut self, req: &Request) -> Result<Value> {
        let io = |source| Error::Io {
            what: "talk to the volume server".into(),
            source,
        };
        let line = serde_json::to_string(req).map_err(|e| Error::Invalid(e.to_string()))?;
        writeln!(self.w, "{line}").map_err(io)?;
        let mut back = String::new();
        self.r.read_line(&mut back).map_err(io)?;
        let v: Value = serde_json::from_str(&back)
            .map_err(|e| Error::Invalid(format!("the volume server answered {back:?}: {e}")))?;
        if v["ok"] == json!(true) {
            return Ok(v["result"].clone());
        }
        let msg = v["error"].as_str().unwrap_or("no reason given").to_string();
        Err(match v["kind"].as_str() {
            Some("in_use") => Error::InUse(msg),
            Some("not_found") => Error::NotFound(msg),
            Some("invalid") => Error::Invalid(msg),
            Some("repository") => Error::Remote {
                failure: serde_json::from_value(v["failure"].clone())
                    .unwrap_or(kura_repo::Failure::Other),
                message: msg,
            },
            _ => Error::Remote {
                failure: kura_repo::Failure::Other,
                message: format!("volume server: {msg}"),
            },
        })
    }
}
