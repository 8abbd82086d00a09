//! The CLI as a client of a running daemon: `kura task …`, and `kura job run` when a daemon
//! is configured (`KURA_DAEMON` + `KURA_TOKEN`, or `[daemon] url` + `token_file`). The work
//! then runs in the daemon as a task it tracks, logs and can cancel; this command follows
//! it and exits by its result. With no daemon configured, `kura job run` runs in process.

use anyhow::{Context, Result};
use kura_daemon::client::{Client, ClientError};
use kura_daemon::{TaskInfo, TaskState};

use crate::App;
use crate::cli_daemon::TaskCommand;
use crate::exit::{self, UsageError};
use crate::output::table;

/// How often a followed task is polled.
const POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The daemon this command talks to, if one is configured: `KURA_DAEMON` (URL) with
/// `KURA_TOKEN` (the token itself), else `[daemon] url` with `token_file` (a file holding
/// it). An empty `KURA_DAEMON` means none, whatever the config says.
pub fn client(app: &App) -> Result<Option<Client>> {
    let url = match std::env::var("KURA_DAEMON") {
        Ok(u) if u.is_empty() => return Ok(None),
        Ok(u) => u,
        Err(_) => match &app.config.daemon.url {
            Some(u) => u.clone(),
            None => return Ok(None),
        },
    };
    let token = match std::env::var("KURA_TOKEN") {
        Ok(t) => t,
        Err(_) => match &app.config.daemon.token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("read the API token from {}", f.display()))?,
            None => {
                return Err(UsageError(format!(
                    "a daemon is configured ({url}) but no token: set KURA_TOKEN or [daemon] \
                     token_file (kura token create NAME makes one)"
                ))
                .into());
            }
        },
    };
    Client::new(&url, &token)
        .map(Some)
        .map_err(|e| UsageError(e.to_string()).into())
}

fn need(app: &App) -> Result<Client> {
    client(app)?.ok_or_else(|| {
        UsageError(
            "no daemon configured: set KURA_DAEMON and KURA_TOKEN, or [daemon] url and \
             token_file"
                .into(),
        )
        .into()
    })
}

/// The exit code of a task that ended.
pub fn task_code(t: &TaskInfo) -> i32 {
    match t.state {
        TaskState::Succeeded => exit::OK,
        TaskState::Cancelled => exit::INTERRUPTED,
        TaskState::Failed | TaskState::Running => exit::FATAL,
    }
}

/// `kura job run NAME` through the daemon: start it, follow its log, exit by its result.
/// Ctrl-C cancels the task in the daemon.
pub fn run_job(app: &App, c: &Client, name: &str) -> Result<i32> {
    let t = c.run_job(name)?;
    if !app.global.json {
        app.say(format!(
            "job {name}: task {} on the daemon at {}",
            t.id,
            c.base()
        ));
    }
    follow(app, c, &t.id)
}

fn follow(app: &App, c: &Client, id: &str) -> Result<i32> {
    let quiet = app.global.quiet || app.global.json;
    let end = c.wait(
        id,
        POLL,
        |l| {
            if !quiet {
                println!("{l}");
            }
        },
        || app.cancel.is_cancelled(),
    )?;
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&end)?);
    } else if let Some(e) = &end.error {
        eprintln!("kura: task {} {}: {e}", end.id, end.state.as_str());
    }
    Ok(task_code(&end))
}

pub fn run(app: &App, cmd: TaskCommand) -> Result<i32> {
    let c = need(app)?;
    match cmd {
        TaskCommand::List(a) => {
            let mut filter = Vec::new();
            for (k, v) in [
                ("state", &a.state),
                ("kind", &a.kind),
                ("subject", &a.subject),
            ] {
                if let Some(v) = v {
                    filter.push((k, v.as_str()));
                }
            }
            let tasks = c.tasks(&filter)?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else {
                let rows: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.kind.clone(),
                            t.subject.clone(),
                            t.state.as_str().into(),
                            t.started.clone(),
                            t.started_by.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["Task", "Kind", "Subject", "State", "Started", "By"],
                        &rows
                    )
                );
            }
        }
        TaskCommand::Show(a) => {
            let t = c.task(&a.id)?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!(
                    "task {}: {} {} — {}",
                    t.id,
                    t.kind,
                    t.subject,
                    t.state.as_str()
                );
                println!("started {} by {}", t.started, t.started_by);
                if let Some(f) = &t.finished {
                    println!("finished {f}");
                }
                println!(
                    "progress: {} byte(s){}, {} item(s)",
                    t.bytes_done,
                    t.bytes_total.map_or(String::new(), |n| format!(" of {n}")),
                    t.items_done
                );
                if let Some(e) = &t.error {
                    println!("error: {e}");
                }
            }
        }
        TaskCommand::Log(a) => {
            if a.follow {
                return follow(app, &c, &a.id);
            }
            let lines = c.log(&a.id, 0)?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                for l in lines {
                    println!("{l}");
                }
            }
        }
        TaskCommand::Cancel(a) => {
            let t = c.cancel(&a.id)?;
            app.say(format!(
                "task {}: cancel requested ({})",
                t.id,
                t.state.as_str()
            ));
        }
    }
    Ok(exit::OK)
}

/// The exit code of a client error (see `exit::code_for`).
pub fn client_code(e: &ClientError) -> i32 {
    match e {
        ClientError::Unreachable { .. } => exit::DAEMON_UNREACHABLE,
        ClientError::Api { code, .. } => match code.as_str() {
            "not_found" => exit::NOT_FOUND,
            "conflict" => exit::CONFLICT,
            "invalid" => exit::USAGE,
            "unauthorized" => exit::DAEMON_REFUSED,
            "unavailable" => exit::CATALOG_UNREACHABLE,
            _ => exit::FATAL,
        },
        ClientError::Invalid(_) => exit::USAGE,
        ClientError::Decode { .. } => exit::FATAL,
    }
}
