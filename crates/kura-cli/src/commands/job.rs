//! `kura job …`: job definitions and their runs (the seed's backup processing information).

use anyhow::Result;
use kura_catalog::Mode;
use serde_json::{Value, json};

use crate::App;
use crate::cli::JobCommand;
use crate::cli_daemon::WindowArgs;
use crate::exit::{self, UsageError};
use crate::output::catalog::{job_detail, job_json, job_table, run_json};
use crate::output::{local_ms, rfc3339_ms};
use kura_types::JobSettings;

/// Apply the policy and window flags given to `settings`; a bad value is a usage error
/// naming its flag. `none` removes a duration.
pub fn apply_window(s: &mut JobSettings, w: &WindowArgs) -> Result<(), UsageError> {
    fn word<T: std::str::FromStr<Err = String>>(
        flag: &str,
        v: &Option<String>,
        to: &mut T,
    ) -> Result<(), UsageError> {
        if let Some(v) = v {
            *to = v
                .parse()
                .map_err(|e| UsageError(format!("--{flag}: {e}")))?;
        }
        Ok(())
    }
    fn span(
        flag: &str,
        v: &Option<String>,
        to: &mut Option<kura_types::Duration>,
    ) -> Result<(), UsageError> {
        match v.as_deref() {
            None => {}
            Some("none") => *to = None,
            Some(t) => {
                *to = Some(
                    kura_types::Duration::parse_positive(t)
                        .map_err(|e| UsageError(format!("--{flag}: {e}")))?,
                )
            }
        }
        Ok(())
    }
    word("catch-up", &w.catch_up, &mut s.catch_up)?;
    word("overlap", &w.overlap, &mut s.overlap)?;
    word("at-window-end", &w.at_window_end, &mut s.at_window_end)?;
    span("start-within", &w.start_within, &mut s.start_within)?;
    span("finish-within", &w.finish_within, &mut s.finish_within)?;
    span("max-run", &w.max_run, &mut s.max_run)?;
    Ok(())
}

/// The next run's predicted duration (seconds, from the job's recorded runs) and window end
/// (RFC 3339), as the daemon works them out.
fn outlook(
    cat: &kura_catalog::Catalog,
    j: &kura_catalog::JobDef,
    next: Option<chrono::DateTime<chrono::Utc>>,
) -> (Option<f64>, Option<String>) {
    use kura_daemon::predict::{HISTORY, Sample, predict};
    let history: Vec<Sample> = cat
        .run_stats(j.id, HISTORY as i64)
        .unwrap_or_default()
        .into_iter()
        .map(|r| Sample {
            bytes_scanned: r.stats.bytes_scanned,
            duration: std::time::Duration::from_millis(r.stats.duration_ms),
        })
        .collect();
    let took = predict(&history, None).map(|d| d.as_secs_f64());
    let window_end = next
        .and_then(|n| kura_daemon::window::deadline(j, Some(n), n))
        .map(|d| d.at.to_rfc3339());
    (took, window_end)
}

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
            let mut settings = crate::commands::jobrun::settings(app, &a.run);
            apply_window(&mut settings, &a.window)?;
            settings.tape = a.tape.setting();
            if settings.tape.is_some() {
                // A tape job's object is the repository it copies from: a target.
                let t = cat.resource(&a.object).map_err(|_| {
                    UsageError(format!(
                        "--object: a tape job copies from a repository target; {} is not one",
                        a.object
                    ))
                })?;
                if t.target().is_err() {
                    return Err(
                        UsageError(format!("--object: {} is not a target", a.object)).into(),
                    );
                }
            }
            settings
                .check(
                    &format!("job {}", a.name),
                    usize::try_from(a.redundancy.max(1)).unwrap_or(usize::MAX),
                )
                .map_err(crate::commands::jobrun::flag_error)?;
            let id = cat.add_job(
                &a.name,
                &a.object,
                a.schedule.as_deref(),
                a.redundancy,
                mode,
                &settings,
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
                        let o = outlook(&cat, j, next(j).ok().flatten());
                        v["predicted_duration_seconds"] = json!(o.0);
                        v["window_end"] = json!(o.1);
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
            let zone = app.schedule_zone(None)?;
            let next = kura_daemon::scheduler::next_run(&j, zone).ok().flatten();
            let (took, window_end) = outlook(&cat, &j, next);
            if app.global.json {
                let mut v = job_json(&j);
                v["next_run"] = json!(next.map(|t| t.to_rfc3339()));
                v["predicted_duration_seconds"] = json!(took);
                v["window_end"] = json!(window_end);
                v["run_stats"] = json!(
                    cat.run_stats(j.id, a.runs.max(0))?
                        .iter()
                        .map(|r| json!({"process": r.run, "ended": rfc3339_ms(r.ended), "stats": r.stats}))
                        .collect::<Vec<_>>()
                );
                v["runs"] = json!(
                    runs.iter()
                        .map(|r| run_json(r, &rfc3339_ms))
                        .collect::<Vec<_>>()
                );
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", job_detail(&j, &runs, &local_ms));
                if let Some(t) = next {
                    println!(
                        "next run   {}{}{}",
                        local_ms(t.timestamp_millis()),
                        took.map_or(String::new(), |s| format!(
                            ", predicted to take {}",
                            kura_types::Duration::from_secs(s.round() as u64)
                        )),
                        window_end
                            .as_deref()
                            .map_or(String::new(), |w| format!(", its window ends {w}"))
                    );
                }
            }
        }
        JobCommand::Run(a) => {
            let j = cat.job(&a.job)?;
            return crate::commands::jobrun::run_job(app, &cat, &j);
        }
        JobCommand::Edit(a) => {
            let j = cat.job(&a.job)?;
            if let Some(text) = &a.schedule {
                kura_schedule::Schedule::parse(text, app.schedule_zone(None)?)
                    .map_err(|e| UsageError(format!("--schedule: {e}")))?;
            }
            let mut settings = j.settings.clone();
            apply_window(&mut settings, &a.window)?;
            settings
                .check(
                    &format!("job {}", j.name),
                    usize::try_from(j.redundancy.max(1)).unwrap_or(usize::MAX),
                )
                .map_err(crate::commands::jobrun::flag_error)?;
            let schedule = match (&a.schedule, a.no_schedule) {
                (Some(s), _) => Some(Some(s.as_str())),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let j = cat.edit_job(&a.job, schedule, &settings)?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&job_json(&j))?);
            } else {
                app.say(format!("job {} (number {}) changed", j.name, j.id));
            }
        }
        JobCommand::Remove(a) => {
            let j = cat.job(&a.job)?;
            cat.remove_job(&a.job)?;
            app.say(format!("removed job {} (number {})", j.name, j.id));
        }
    }
    Ok(exit::OK)
}
