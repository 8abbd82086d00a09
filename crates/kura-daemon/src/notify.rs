//! The notification hook: a command (`[daemon] notify`) the daemon runs when something
//! happens to a run's window that an operator should hear of at once — not at the next
//! scrape of `/metrics`, and not in a task log nobody reads at night.
//!
//! The command runs with `sh -c`, detached from the run it reports on (on a thread of its
//! own, with [`TIMEOUT`]): a slow or failing hook never delays or fails a backup; its
//! failure is logged. What happened is in its environment:
//!
//! | variable | value |
//! |---|---|
//! | `KURA_EVENT` | `overrun-predicted`, `window-cancelled`, `window-overrun`, `missed`, `target-dropped`, `mount-request` (a tape job waits for a tape) |
//! | `KURA_JOB` | the job's name |
//! | `KURA_TASK` | the run's task id (empty for a missed run) |
//! | `KURA_DUE` | the occurrence's scheduled time (RFC 3339; empty for an on-demand run) |
//! | `KURA_WINDOW_END` | when its window (or `max-run`) ends (RFC 3339) |
//! | `KURA_PREDICTED_FINISH` | when it is predicted to finish (RFC 3339; may be empty) |
//! | `KURA_REASON` | a sentence saying what happened |

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a hook may run before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// One event, as the hook sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub event: &'static str,
    pub job: String,
    pub task: String,
    pub due: String,
    pub window_end: String,
    pub predicted_finish: String,
    pub reason: String,
}

impl Event {
    fn env(&self) -> [(&'static str, &str); 7] {
        [
            ("KURA_EVENT", self.event),
            ("KURA_JOB", &self.job),
            ("KURA_TASK", &self.task),
            ("KURA_DUE", &self.due),
            ("KURA_WINDOW_END", &self.window_end),
            ("KURA_PREDICTED_FINISH", &self.predicted_finish),
            ("KURA_REASON", &self.reason),
        ]
    }
}

/// Run `command` for `event` in the background (nothing when there is no command).
pub fn send(command: Option<&str>, event: Event) {
    let Some(command) = command.map(str::to_string) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("kura-notify".into())
        .spawn(move || run(&command, &event));
    if let Err(e) = spawned {
        tracing::warn!("notification hook: could not start its thread: {e}");
    }
}

fn run(command: &str, event: &Event) {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in event.env() {
        c.env(k, v);
    }
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("notification hook {command:?}: {e}");
            return;
        }
    };
    let until = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return,
            Ok(Some(st)) => {
                tracing::warn!("notification hook {command:?} ({}): {st}", event.event);
                return;
            }
            Ok(None) if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(
                    "notification hook {command:?} ({}): killed after {TIMEOUT:?}",
                    event.event
                );
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                tracing::warn!("notification hook {command:?}: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_sees_the_event_in_its_environment() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let cmd = format!(
            "printf '%s|%s|%s' \"$KURA_EVENT\" \"$KURA_JOB\" \"$KURA_REASON\" > {}",
            out.display()
        );
        run(
            &cmd,
            &Event {
                event: "overrun-predicted",
                job: "nightly".into(),
                reason: "it is slow".into(),
                ..Event::default()
            },
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "overrun-predicted|nightly|it is slow"
        );
    }
}
