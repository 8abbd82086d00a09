//! The API's handlers, each annotated for the OpenAPI document.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::blocking;
use crate::auth::Caller;
use crate::{Daemon, Error, TaskFilter, TaskInfo};

fn query<T>(q: Result<Query<T>, QueryRejection>) -> crate::Result<T> {
    q.map(|Query(t)| t)
        .map_err(|e| Error::Invalid(format!("query: {}", e.body_text())))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> crate::Result<T> {
    p.map(|Path(t)| t)
        .map_err(|e| Error::Invalid(format!("path: {}", e.body_text())))
}

/// The daemon's health: it answers, and whether the catalog does.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the catalog does not answer (the daemon goes on serving what
    /// it can, and resumes when the catalog returns).
    pub status: String,
    /// `ok` or `unreachable`.
    pub catalog: String,
    pub version: String,
    /// This daemon's name (in claims and logs).
    pub daemon: String,
    pub tasks_running: usize,
}

#[utoipa::path(
    get,
    path = "/api/v1/health",
    security(()),
    responses((status = 200, description = "The daemon answers", body = Health))
)]
pub async fn health(State(d): State<Arc<Daemon>>) -> Json<Health> {
    let d2 = Arc::clone(&d);
    let catalog_ok = blocking(move || d2.catalog.ping().map_err(Error::catalog))
        .await
        .is_ok();
    Json(Health {
        status: if catalog_ok { "ok" } else { "degraded" }.into(),
        catalog: if catalog_ok { "ok" } else { "unreachable" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        daemon: d.options.name.clone(),
        tasks_running: d.tasks.running().len(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    params(TaskFilter),
    responses(
        (status = 200, description = "Tasks, newest first", body = [TaskInfo]),
        (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
    )
)]
pub async fn list_tasks(
    State(d): State<Arc<Daemon>>,
    q: Result<Query<TaskFilter>, QueryRejection>,
) -> crate::Result<Json<Vec<TaskInfo>>> {
    let f = query(q)?;
    let out = blocking(move || Ok(d.tasks.list(&f))).await?;
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, body = TaskInfo),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn get_task(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<Json<TaskInfo>> {
    let id = path(p)?;
    Ok(Json(blocking(move || d.tasks.get(&id)).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LogQuery {
    /// The first line to return (0-based).
    pub from: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogLines {
    /// The number of the first line returned.
    pub from: usize,
    pub lines: Vec<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/log",
    params(("id" = String, Path, description = "Task id"), LogQuery),
    responses(
        (status = 200, body = LogLines),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn task_log(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> crate::Result<Json<LogLines>> {
    let id = path(p)?;
    let from = query(q)?.from.unwrap_or(0);
    let lines = blocking(move || d.tasks.log(&id, from)).await?;
    Ok(Json(LogLines { from, lines }))
}

/// One server-sent event of a followed task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowEvent {
    /// `line` (a log line), or `end` (the task's final record, as JSON).
    pub event: String,
    pub data: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/follow",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Server-sent events: one `line` event per log line (the \
            lines so far, then new ones), and an `end` event with the task's final record",
            content_type = "text/event-stream", body = FollowEvent),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn follow_task(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = path(p)?;
    let d2 = Arc::clone(&d);
    let id2 = id.clone();
    let (so_far, rx) = blocking(move || d2.tasks.follow(&id2)).await?;
    let line = |l: String| Ok(Event::default().event("line").data(l));
    let past = stream::iter(so_far.into_iter().map(line));
    let live = stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        let data = match rx.recv().await {
            Ok(l) => l,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                format!("({n} lines skipped: the follower fell behind)")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(Event::default().event("line").data(data)), Some(rx)))
    });
    let end = stream::once(async move {
        let info = blocking(move || d.tasks.get(&id)).await;
        let data = match info {
            Ok(i) => serde_json::to_string(&i).unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        Ok(Event::default().event("end").data(data))
    });
    Ok(Sse::new(past.chain(live).chain(end)).keep_alive(KeepAlive::default()))
}

#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/cancel",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 202, description = "Asked to stop; it ends `cancelled`", body = TaskInfo),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Not running", body = super::ErrorBody),
    )
)]
pub async fn cancel_task(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<(StatusCode, Json<TaskInfo>)> {
    let id = path(p)?;
    let t = blocking(move || d.tasks.cancel(&id)).await?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

/// A job definition as the API shows it, with its outlook.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: i64,
    pub name: String,
    /// What it backs up.
    pub object: String,
    /// Its schedule as written, if it has one.
    pub schedule: Option<String>,
    /// Its next scheduled run (RFC 3339, UTC).
    pub next_run: Option<String>,
    /// Why its schedule is not understood, if it is not (the job is then not scheduled).
    pub schedule_error: Option<String>,
    pub redundancy: i64,
    /// `mirror` or `failover`.
    pub mode: String,
    /// How its runs use their targets.
    pub settings: kura_types::JobSettings,
    /// Whether a run of it is going on on this daemon.
    pub running: bool,
    /// When its running run (else its next scheduled run) is predicted to finish (RFC 3339,
    /// UTC), from its history and the run's progress.
    pub predicted_finish: Option<String>,
    /// How long that run is predicted to take in all, in seconds.
    pub predicted_duration_seconds: Option<f64>,
    /// When that run's window (or `max-run`) ends (RFC 3339, UTC).
    pub window_end: Option<String>,
}

impl JobView {
    /// The view of `j`; its outlook from the daemon's watched runs and the job's history.
    pub fn of(d: &crate::Daemon, j: &kura_catalog::JobDef) -> JobView {
        let (next_run, schedule_error) = match crate::scheduler::next_run(j, d.options.zone) {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e)),
        };
        let o = d.windows.outlook(&d.catalog, j, next_run);
        JobView {
            id: j.id,
            name: j.name.clone(),
            object: j.object.clone(),
            schedule: j.schedule.clone(),
            next_run: next_run.map(|t| t.to_rfc3339()),
            schedule_error,
            redundancy: j.redundancy,
            mode: j.mode.as_str().into(),
            settings: j.settings.clone(),
            running: o.running,
            predicted_finish: o.predicted_finish.map(|t| t.to_rfc3339()),
            predicted_duration_seconds: o.predicted_duration.map(|d| d.as_secs_f64()),
            window_end: o.window_end.map(|t| t.to_rfc3339()),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    responses(
        (status = 200, description = "Job definitions, by number", body = [JobView]),
        (status = 401, body = super::ErrorBody),
        (status = 503, description = "The catalog does not answer", body = super::ErrorBody),
    )
)]
pub async fn list_jobs(State(d): State<Arc<Daemon>>) -> crate::Result<Response> {
    // Kept serialized for up to a second (`AnswerCache`): dashboards poll this.
    let body = blocking(move || {
        d.job_list.get(|| {
            let jobs = d.catalog.jobs().map_err(Error::catalog)?;
            let views: Vec<JobView> = jobs.iter().map(|j| JobView::of(&d, j)).collect();
            let body = serde_json::to_vec(&views)
                .map_err(|e| Error::Internal(format!("serialize the job list: {e}")))?;
            Ok((axum::body::Bytes::from(body), None))
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}",
    params(("name" = String, Path, description = "Job name or number")),
    responses(
        (status = 200, body = JobView),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn get_job(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<Json<JobView>> {
    let name = path(p)?;
    let view = blocking(move || {
        let j = d.catalog.job(&name).map_err(Error::catalog)?;
        Ok(JobView::of(&d, &j))
    })
    .await?;
    Ok(Json(view))
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/run",
    params(("name" = String, Path, description = "Job name or number")),
    responses(
        (status = 202, description = "Started: the run's task", body = TaskInfo),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "A run of the job is going on", body = super::ErrorBody),
    )
)]
pub async fn run_job(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<(StatusCode, Json<TaskInfo>)> {
    let name = path(p)?;
    let by = format!("api:{}", caller.token);
    let t = blocking(move || d.run_job(&name, &by)).await?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text exposition",
            content_type = "text/plain", body = String),
        (status = 401, body = super::ErrorBody),
    )
)]
pub async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    let text = blocking(move || {
        let up = d.catalog.ping().is_ok();
        if let Ok(rs) = d.catalog.resources() {
            d.metrics.resources(&rs);
        }
        if let Ok(jobs) = d.catalog.jobs() {
            // The outlook of jobs not running now (the window watcher keeps the running
            // ones' up to date).
            for j in &jobs {
                let next = crate::scheduler::next_run(j, d.options.zone).ok().flatten();
                let o = d.windows.outlook(&d.catalog, j, next);
                if !o.running {
                    d.metrics.outlook(&j.name, o.predicted_finish, o.window_end);
                }
            }
        }
        Ok(d.metrics.render(&d.tasks.counts(), up))
    })
    .await;
    match text {
        Ok(t) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// One scheduled occurrence of a job, as the daemons recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Occurrence {
    /// When it fell due (RFC 3339, UTC).
    pub due: String,
    /// The daemon that claimed it.
    pub daemon: String,
    /// When it was claimed (RFC 3339, UTC, milliseconds): a run started then; for an
    /// occurrence recorded missed or skipped, when that was recorded.
    pub claimed: String,
    /// `started`, `succeeded`, `failed`, `missed`, `skipped`, `expired` or `cancelled`.
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct OccurrenceQuery {
    /// At most this many, newest first (default 100).
    pub limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/occurrences",
    params(("name" = String, Path, description = "Job name or number"), OccurrenceQuery),
    responses(
        (status = 200, description = "Its scheduled occurrences, newest first: run, missed \
            or skipped, each once", body = [Occurrence]),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn job_occurrences(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<OccurrenceQuery>, QueryRejection>,
) -> crate::Result<Json<Vec<Occurrence>>> {
    let name = path(p)?;
    let limit = query(q)?.limit.unwrap_or(100).clamp(1, 10_000);
    let claims = blocking(move || {
        let j = d.catalog.job(&name).map_err(Error::catalog)?;
        d.catalog.claims(Some(j.id), limit).map_err(Error::catalog)
    })
    .await?;
    Ok(Json(
        claims
            .into_iter()
            .map(|c| Occurrence {
                due: chrono::DateTime::from_timestamp_millis(c.due)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
                daemon: c.daemon,
                claimed: chrono::DateTime::from_timestamp_millis(c.claimed)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default(),
                state: c.state.as_str().into(),
                reason: c.reason,
            })
            .collect(),
    ))
}
