//! Pre and post hooks: the seeds' "prepare the backup" step (quiesce a database, take an LVM
//! snapshot) and its undo. A hook is a shell command (`sh -c`); it learns about the run from
//! its environment: `KURA_PHASE` (`pre`/`post`), `KURA_JOB`, `KURA_PROCESS`, `KURA_OBJECT`,
//! and for `post` `KURA_RESULT` (`succeeded`/`failed`) and `KURA_ERROR`.

use std::process::Command;
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
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Hook(format!("{name} hook {:?}: start: {e}", self.command)))?;
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
                    // The hook's own children may keep stderr open: do not wait for the reader.
                    let _ = child.kill();
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
}
