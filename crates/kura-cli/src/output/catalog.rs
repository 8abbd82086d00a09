//! Renderings of the catalog: resources (the seed's view: number, name, state, process,
//! stream), jobs and runs. Pure functions of their input (times through a closure), pinned by
//! snapshot tests.

use kura_catalog::{JobDef, Resource, Run};
use serde_json::{Value, json};

use super::table;

fn joined(r: &Resource, f: impl Fn(&(i64, i64, i64)) -> i64) -> String {
    if r.allocations.is_empty() {
        "-".into()
    } else {
        r.allocations
            .iter()
            .map(|a| f(a).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `NUMBER KIND NAME STATE PROCESS STREAM` — several processes/streams on one multi-slot
/// resource (a worker) are listed comma-separated, in the same order.
pub fn resource_table(rs: &[Resource]) -> String {
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.kind.as_str().to_string(),
                r.name.clone(),
                r.state().as_str().to_string(),
                joined(r, |a| a.0),
                joined(r, |a| a.1),
            ]
        })
        .collect();
    let mut out = table(
        &["Number", "Kind", "Name", "State", "Process", "Stream"],
        &rows,
    );
    out.push_str(&format!("{} resource(s)\n", rs.len()));
    out
}

pub fn resource_json(r: &Resource, time: &impl Fn(i64) -> String) -> Value {
    json!({
        "number": r.id,
        "kind": r.kind.as_str(),
        "name": r.name,
        "state": r.state().as_str(),
        "enabled": r.enabled,
        "healthy": r.healthy,
        "errors": r.errors,
        "last_error": r.last_error,
        "since": time(r.since),
        "slots": r.slots,
        "config": r.config,
        "parent": r.parent,
        "allocations": r.allocations.iter().map(|(p, s, until)| json!({
            "process": p, "stream": s, "lease_until": time(*until),
        })).collect::<Vec<_>>(),
    })
}

/// `kura resource show`: the resource, what it holds, its routes and its events.
pub fn resource_detail(
    r: &Resource,
    routes: &[(String, String, String)],
    events: &[(i64, String, String)],
    time: &impl Fn(i64) -> String,
) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<11}{v}\n"));
    kv("number", r.id.to_string());
    kv("kind", r.kind.as_str().into());
    kv("name", r.name.clone());
    kv("state", r.state().as_str().into());
    if r.state() == kura_catalog::State::NotUsable {
        kv("why", r.why_not());
    }
    kv("since", time(r.since));
    kv("slots", r.slots.to_string());
    if r.errors > 0 {
        kv(
            "errors",
            format!(
                "{} in a row, last: {}",
                r.errors,
                r.last_error.as_deref().unwrap_or("-")
            ),
        );
    }
    let config = r.config.to_json();
    if config != "null" && config != "{}" {
        kv("config", config);
    }
    for (p, s, until) in &r.allocations {
        kv(
            "held by",
            format!("process {p} stream {s} (lease until {})", time(*until)),
        );
    }
    for (w, p, t) in routes {
        kv("route", format!("{w} → {p} → {t}"));
    }
    if !events.is_empty() {
        out.push_str("events:\n");
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|(at, what, why)| vec![time(*at), what.clone(), why.clone()])
            .collect();
        out.push_str(&table(&["Time", "Event", "Reason"], &rows));
    }
    out
}

fn last_run_cell(run: Option<&Run>, time: &impl Fn(i64) -> String) -> String {
    match run {
        None => "never".into(),
        Some(r) => format!("{} {} (process {})", time(r.started), r.state, r.id),
    }
}

/// `kura job list`: number, name, object, redundancy, mode, schedule, last run.
pub fn job_table(
    jobs: &[(JobDef, Option<Run>)],
    time: &impl Fn(i64) -> String,
    next_run: &impl Fn(&JobDef) -> String,
) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|(j, last)| {
            vec![
                j.id.to_string(),
                j.name.clone(),
                j.object.clone(),
                j.redundancy.to_string(),
                j.mode.as_str().into(),
                j.schedule.clone().unwrap_or_else(|| "-".into()),
                next_run(j),
                last_run_cell(last.as_ref(), time),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "Number", "Name", "Object", "N", "Mode", "Schedule", "Next run", "Last run",
        ],
        &rows,
    );
    out.push_str(&format!("{} job(s)\n", jobs.len()));
    out
}

pub fn job_json(j: &JobDef) -> Value {
    json!({
        "number": j.id,
        "name": j.name,
        "object": j.object,
        "schedule": j.schedule,
        "redundancy": j.redundancy,
        "mode": j.mode.as_str(),
        "config": j.settings,
    })
}

pub fn run_json(r: &Run, time: &impl Fn(i64) -> String) -> Value {
    json!({
        "process": r.id,
        "job": r.job,
        "started": time(r.started),
        "ended": r.ended.map(time),
        "state": r.state,
        "error": r.error,
        "streams": r.streams.iter().map(|s| json!({
            "stream": s.stream, "worker": s.worker, "path": s.path,
            "target": s.target, "medium": s.medium, "state": s.state,
        })).collect::<Vec<_>>(),
    })
}

/// `kura job show`: the definition, then each run with its streams.
pub fn job_detail(j: &JobDef, runs: &[Run], time: &impl Fn(i64) -> String) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<11}{v}\n"));
    kv("number", j.id.to_string());
    kv("name", j.name.clone());
    kv("object", j.object.clone());
    kv("redundancy", j.redundancy.to_string());
    kv("mode", j.mode.as_str().into());
    kv("schedule", j.schedule.clone().unwrap_or_else(|| "-".into()));
    let st = &j.settings;
    let or_none = |d: Option<kura_types::Duration>| d.map_or("-".into(), |d| d.to_string());
    kv(
        "policies",
        format!("catch-up {}, overlap {}", st.catch_up, st.overlap),
    );
    kv(
        "window",
        format!(
            "start-within {}, finish-within {}, max-run {}, at its end {}",
            or_none(st.start_within),
            or_none(st.finish_within),
            or_none(st.max_run),
            st.at_window_end
        ),
    );
    if runs.is_empty() {
        out.push_str("no runs\n");
        return out;
    }
    out.push_str("runs:\n");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                time(r.started),
                r.ended.map(time).unwrap_or_else(|| "-".into()),
                r.state.clone(),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["Process", "Started", "Ended", "State", "Error"],
        &rows,
    ));
    let rows: Vec<Vec<String>> = runs
        .iter()
        .flat_map(|r| {
            r.streams.iter().map(|s| {
                vec![
                    r.id.to_string(),
                    s.stream.to_string(),
                    s.worker.clone(),
                    s.path.clone(),
                    s.target.clone(),
                    s.medium.clone(),
                    s.state.clone(),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        out.push_str("streams:\n");
        out.push_str(&table(
            &[
                "Process", "Stream", "Worker", "Path", "Target", "Medium", "State",
            ],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalog::{Kind, Mode, StreamRow};
    use kura_types::{JobSettings, MediumConfig, ResourceConfig, TargetConfig};

    fn res(id: i64, kind: Kind, name: &str, allocs: Vec<(i64, i64, i64)>) -> Resource {
        let config = match kind {
            Kind::Target => ResourceConfig::Target(TargetConfig::new(format!("/srv/{name}"))),
            Kind::Medium => ResourceConfig::Medium(MediumConfig { implicit: true }),
            _ => ResourceConfig::None,
        };
        Resource {
            id,
            kind,
            name: name.into(),
            config,
            parent: None,
            slots: if kind == Kind::Worker { 64 } else { 1 },
            enabled: true,
            healthy: true,
            errors: 0,
            last_error: None,
            since: 1_700_000_000_000,
            allocations: allocs,
        }
    }

    fn sample() -> Vec<Resource> {
        let mut down = res(4, Kind::Target, "t-east", vec![]);
        down.healthy = false;
        down.errors = 3;
        down.last_error = Some("probe: unreachable: connection refused".into());
        down.config =
            ResourceConfig::Target(TargetConfig::new("s3://b/p?endpoint=http://10.0.0.9:8333"));
        vec![
            res(1, Kind::Worker, "local-worker", vec![(7, 0, 0), (7, 1, 0)]),
            res(2, Kind::Target, "t0", vec![(7, 0, 0)]),
            res(3, Kind::Medium, "t0.medium", vec![(7, 0, 0)]),
            down,
        ]
    }

    fn t(ms: i64) -> String {
        format!("@{ms}")
    }

    #[test]
    fn resource_list_format() {
        insta::assert_snapshot!(resource_table(&sample()));
    }

    #[test]
    fn resource_json_format() {
        let v: Vec<Value> = sample().iter().map(|r| resource_json(r, &t)).collect();
        insta::assert_json_snapshot!(v);
    }

    #[test]
    fn resource_show_format() {
        let s = sample();
        let routes = vec![("local-worker".into(), "local-path".into(), "t-east".into())];
        let events = vec![
            (1, "added".into(), "target".into()),
            (
                2,
                "not usable".into(),
                "probe: unreachable: connection refused ×3".into(),
            ),
        ];
        insta::assert_snapshot!(resource_detail(&s[3], &routes, &events, &t));
    }

    fn job() -> JobDef {
        JobDef {
            id: 1,
            name: "db-nightly".into(),
            object: "/srv/db".into(),
            schedule: Some("daily 02:00".into()),
            redundancy: 2,
            mode: Mode::Mirror,
            settings: JobSettings {
                quorum: 2,
                pre: Some("pg_dump -f /srv/db/dump.sql".into()),
                ..JobSettings::default()
            },
        }
    }

    fn run() -> Run {
        let s = |n: i64, t: &str, st: &str| StreamRow {
            stream: n,
            worker: "local-worker".into(),
            path: "local-path".into(),
            target: t.into(),
            medium: format!("{t}.medium"),
            state: st.into(),
        };
        Run {
            id: 7,
            job: Some(1),
            started: 10,
            ended: Some(20),
            state: "expired".into(),
            error: Some("lease expired (manager died or hung)".into()),
            streams: vec![s(0, "t0", "lost"), s(1, "t1", "lost")],
        }
    }

    #[test]
    fn job_list_and_show_format() {
        let list = job_table(&[(job(), Some(run()))], &t, &|_| "@30".to_string());
        let show = job_detail(&job(), &[run()], &t);
        insta::assert_snapshot!(format!("{list}\n{show}"));
        insta::assert_json_snapshot!(json!({"job": job_json(&job()), "run": run_json(&run(), &t)}));
    }
}
