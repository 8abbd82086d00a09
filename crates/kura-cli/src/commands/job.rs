//! `kura job …`: job definitions and their runs (the seed's backup processing information).

use anyhow::Result;
use kura_catalog::Mode;
use serde_json::{Value, json};

use crate::App;
use crate::cli::JobCommand;
use crate::exit::{self, UsageError};
use crate::output::catalog::{job_detail, job_json, job_table, run_json};
use crate::output::{local_ms, rfc3339_ms};

pub fn run(app: &App, cmd: JobCommand) -> Result<i32> {
    if let JobCommand::Run(a) = &cmd
        && let Some(c) = crate::commands::task::client(app)?
    {
        // A daemon is configured: the run is its task, followed from here.
        return crate::commands::task::run_job(app, &c, &a.job);
    }
    let cat = app.catalog()?;
    match cmd {
        JobCommand::Add(a) => {
            let mode = Mode::parse(&a.run.mode)?;
            if let Some(text) = &a.schedule {
                // A schedule nothing can run is refused now, not found out at night.
                kura_schedule::Schedule::parse(text, app.schedule_zone(None)?)
                    .map_err(|e| UsageError(format!("--schedule: {e}")))?;
            }
            let id = cat.add_job(
                &a.name,
                &a.object,
                a.schedule.as_deref(),
                a.redundancy,
                mode,
                &crate::commands::jobrun::settings(app, &a.run),
            )?;
            app.say(format!(
                "added job {} (number {id}): {} onto {} subsystem(s), {}",
                a.name,
                a.object,
                a.redundancy,
                mode.as_str()
            ));
        }
        JobCommand::List => {
            let mut jobs = Vec::new();
            for j in cat.jobs()? {
                let last = cat.runs(Some(j.id), 1)?.into_iter().next();
                jobs.push((j, last));
            }
            let zone = app.schedule_zone(None)?;
            let next = |j: &kura_catalog::JobDef| kura_daemon::scheduler::next_run(j, zone);
            if app.global.json {
                let v: Vec<Value> = jobs
                    .iter()
                    .map(|(j, last)| {
                        let mut v = job_json(j);
                        v["last_run"] = last
                            .as_ref()
                            .map_or(Value::Null, |r| run_json(r, &rfc3339_ms));
                        match next(j) {
                            Ok(t) => v["next_run"] = json!(t.map(|t| t.to_rfc3339())),
                            Err(e) => {
                                v["next_run"] = Value::Null;
                                v["schedule_error"] = json!(e);
                            }
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let cell = |j: &kura_catalog::JobDef| match next(j) {
                    Ok(Some(t)) => local_ms(t.timestamp_millis()),
                    Ok(None) => "-".into(),
                    Err(_) => "invalid schedule".into(),
                };
                print!("{}", job_table(&jobs, &local_ms, &cell));
            }
        }
        JobCommand::Show(a) => {
            let j = cat.job(&a.job)?;
            let runs = cat.runs(Some(j.id), a.runs.max(0))?;
            if app.global.json {
                let mut v = job_json(&j);
                v["runs"] = json!(
                    runs.iter()
                        .map(|r| run_json(r, &rfc3339_ms))
                        .collect::<Vec<_>>()
                );
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", job_detail(&j, &runs, &local_ms));
            }
        }
        JobCommand::Run(a) => {
            let j = cat.job(&a.job)?;
            return crate::commands::jobrun::run_job(app, &cat, &j);
        }
        JobCommand::Remove(a) => {
            let j = cat.job(&a.job)?;
            cat.remove_job(&a.job)?;
            app.say(format!("removed job {} (number {})", j.name, j.id));
        }
    }
    Ok(exit::OK)
}
