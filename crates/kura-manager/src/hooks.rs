//! Pre and post hooks: the seeds' "prepare the backup" step (quiesce a database, take an LVM
//! snapshot) and its undo. A hook is a shell command (`sh -c`); it learns about the run from
//! its environment: `KURA_PHASE` (`pre`/`post`), `KURA_JOB`, `KURA_PROCESS`, `KURA_OBJECT`,
//! and for `post` `KURA_RESULT` (`succeeded`/`failed`) and `KURA_ERROR`.
//!
//! # A hook dies with its manager
//! A hook left running by a dead manager keeps a database frozen or a snapshot held, with
//! nobody to undo it. So a hook runs in its own process group, its shell is killed by the
//! kernel when the manager dies (`PR_SET_PDEATHSIG`), and a guard process — a shell reading a
//! pipe only the manager holds — kills the whole group when that pipe closes, which happens
//! however the manager ends (SIGKILL included): the hook's own children die too, which the
//! death signal alone would not reach. On a timeout the manager kills the group itself. A
//! hook that ends by itself is left alone, children and all (the guard is dismissed).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    Pre,
    Post,
}

/// One hook command with the time it may take.
#[derive(Debug, Clone)]
pub struct Hook {
    pub command: String,
    pub timeout: Duration,
}

impl Hook {
    /// Run it; a non-zero exit, a signal or a timeout is an error quoting its stderr.
    pub fn run(&self, phase: HookPhase, env: &[(&str, String)]) -> Result<()> {
        let name = match phase {
            HookPhase::Pre => "pre",
            HookPhase::Post => "post",
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&self.command).env("KURA_PHASE", name);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .process_group(0);
        let manager = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only prctl and
        // getppid, which are async-signal-safe system calls; it allocates nothing (the
        // error is built from errno).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The manager may have died between fork and prctl: then nobody would
                // signal us.
                if libc::getppid() as u32 != manager {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Hook(format!("{name} hook {:?}: start: {e}", self.command)))?;
        let group = child.id() as i32;
        let guard = match guard(group) {
            Ok(g) => g,
            Err(e) => {
                kill_group(group);
                let _ = child.wait();
                return Err(Error::Hook(format!(
                    "{name} hook {:?}: start its guard: {e}",
                    self.command
                )));
            }
        };
        let result = self.wait(name, &mut child, group);
        dismiss(guard);
        result
    }

    fn wait(&self, name: &str, child: &mut Child, group: i32) -> Result<()> {
        // Read stderr as it comes: a hook that writes more than a pipe holds must not block.
        let reader = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let text = String::from_utf8_lossy(&buf).into_owned();
                // Keep the end, where the reason usually is.
                match text.char_indices().rev().nth(4000) {
                    Some((i, _)) => format!("…{}", &text[i..]),
                    None => text,
                }
            })
        });
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let err = reader.and_then(|r| r.join().ok()).unwrap_or_default();
                    if status.success() {
                        return Ok(());
                    }
                    return Err(Error::Hook(format!(
                        "{name} hook {:?} failed ({status}){}",
                        self.command,
                        if err.trim().is_empty() {
                            String::new()
                        } else {
                            format!(": {}", err.trim())
                        }
                    )));
                }
                Ok(None) if std::time::Instant::now() >= deadline => {
                    // The hook's own children may keep stderr open: do not wait for the
                    // reader. The whole group goes, not only the shell.
                    kill_group(group);
                    let _ = child.wait();
                    return Err(Error::Hook(format!(
                        "{name} hook {:?} did not finish within {} s and was killed",
                        self.command,
                        self.timeout.as_secs()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    return Err(Error::Hook(format!(
                        "{name} hook {:?}: wait: {e}",
                        self.command
                    )));
                }
            }
        }
    }
}

/// The guard of a hook's process group: a shell in that group that kills the group when its
/// stdin (a pipe whose only writer is this process) reaches end of file.
fn guard(group: i32) -> io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg("read _; kill -KILL -\"$1\" 2>/dev/null")
        .arg("kura-hook-guard")
        .arg(group.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(group)
        .spawn()
}

/// The hook ended: stop its guard without closing the pipe first (which would kill the
/// group).
fn dismiss(mut guard: Child) {
    let _ = guard.kill();
    let _ = guard.wait();
}

fn kill_group(group: i32) {
    // SAFETY: killpg only sends a signal; `group` is the id of a process group this process
    // created (the hook's), not 0 or 1.
    unsafe {
        libc::killpg(group, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(c: &str, secs: u64) -> Hook {
        Hook {
            command: c.into(),
            timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn hooks_see_their_environment_and_failures_quote_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let h = hook(
            &format!("echo $KURA_PHASE $KURA_JOB > {}", out.display()),
            10,
        );
        h.run(HookPhase::Pre, &[("KURA_JOB", "db".into())]).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "pre db\n");
        let e = hook("echo quiesce failed >&2; exit 3", 10)
            .run(HookPhase::Pre, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("quiesce failed") && e.contains("exit status: 3"),
            "{e}"
        );
        // More stderr than a pipe holds does not block the hook.
        let e = hook("head -c 300000 /dev/zero | tr '\\0' x >&2; exit 1", 10)
            .run(HookPhase::Pre, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("xxxx") && e.len() < 5000, "{}", e.len());
        let t = std::time::Instant::now();
        let e = hook("sleep 30", 1)
            .run(HookPhase::Post, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish within 1 s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    /// A timed-out hook's children die with it (the whole process group is killed).
    #[test]
    fn a_timed_out_hook_takes_its_children_along() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        let e = hook(&format!("sleep 300 & echo $! > {}; wait", pid.display()), 1)
            .run(HookPhase::Pre, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish"), "{e}");
        let pid = std::fs::read_to_string(&pid).unwrap().trim().to_string();
        let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
        let t = std::time::Instant::now();
        // A killed child stays a zombie until init reaps it; gone or zombie is dead.
        while proc.exists()
            && !std::fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the hook's child lives on"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A hook that ends by itself leaves what it started running (the guard is dismissed,
    /// not fired).
    #[test]
    fn a_finished_hook_keeps_its_background_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        hook(
            &format!("sleep 30 >/dev/null 2>&1 & echo $! > {}", pid.display()),
            10,
        )
        .run(HookPhase::Pre, &[])
        .unwrap();
        let pid: i32 = std::fs::read_to_string(&pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        // SAFETY: kill only sends a signal, to the sleep this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
