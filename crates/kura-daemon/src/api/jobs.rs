//! `/api/v1/jobs` writes: define a job (POST), replace its definition (PUT), delete it.
//! Reading and running jobs are in `routes.rs`.
//!
//! A definition is checked whole before anything is written — its name, object, redundancy,
//! mode, schedule (parsed as the scheduler will parse it) and typed settings
//! ([`JobSettings::check`]) — and written in one statement: bad input is a 400 `invalid`
//! naming the field, and nothing of it is applied.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kura_catalog::Mode;
use kura_types::JobSettings;
use serde::Deserialize;
use utoipa::ToSchema;

use super::blocking;
use super::extract::{body, path};
use super::routes::JobView;
use crate::{Daemon, Error};

/// A job definition to store.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Its name (new jobs only; a job keeps its name): 1–128 letters, digits, `-_.:@`,
    /// not only digits.
    pub name: Option<String>,
    /// What it backs up: a path, a volume name, an image.
    pub object: String,
    /// When it runs: a calendar event (`daily`, `mon..fri 02:00`, `*-*-01 03:00 Europe/Berlin`)
    /// or a cron expression; none: it runs only when asked.
    pub schedule: Option<String>,
    /// How many targets a run secures (default 1).
    pub redundancy: Option<i64>,
    /// `mirror` (default) or `failover`.
    pub mode: Option<String>,
    /// How its runs use their targets; absent: the defaults.
    pub settings: Option<JobSettings>,
}

/// A checked definition, ready to store.
struct Checked {
    object: String,
    schedule: Option<String>,
    redundancy: i64,
    mode: Mode,
    settings: JobSettings,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{field}: {why}"))
}

fn check(d: &Daemon, name: &str, s: JobSpec) -> crate::Result<Checked> {
    let redundancy = s.redundancy.unwrap_or(1);
    if redundancy < 1 {
        return Err(invalid("redundancy", format!("{redundancy} is below 1")));
    }
    let mode = match s.mode.as_deref() {
        None => Mode::Mirror,
        Some(m) => Mode::parse(m).map_err(|e| invalid("mode", e))?,
    };
    if let Some(text) = &s.schedule {
        // A schedule nothing can run is refused now, not found out at night.
        kura_schedule::Schedule::parse(text, d.options.zone).map_err(|e| invalid("schedule", e))?;
    }
    let settings = s.settings.unwrap_or_default();
    let n = usize::try_from(redundancy).unwrap_or(usize::MAX);
    settings
        .check(&format!("job {name}: settings"), n)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Checked {
        object: s.object,
        schedule: s.schedule,
        redundancy,
        mode,
        settings,
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    request_body = JobSpec,
    responses(
        (status = 201, description = "Defined", body = JobView),
        (status = 400, description = "Bad input (the message names the field); nothing stored",
            body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 409, description = "A job of that name exists", body = super::ErrorBody),
    )
)]
pub async fn create(
    State(d): State<Arc<Daemon>>,
    b: Result<Json<JobSpec>, JsonRejection>,
) -> crate::Result<(StatusCode, Json<JobView>)> {
    let spec = body(b)?;
    let j = blocking(move || {
        let name = spec
            .name
            .clone()
            .ok_or_else(|| invalid("name", "a new job needs a name"))?;
        let c = check(&d, &name, spec)?;
        d.catalog
            .add_job(
                &name,
                &c.object,
                c.schedule.as_deref(),
                c.redundancy,
                c.mode,
                &c.settings,
            )
            .map_err(Error::catalog)?;
        d.job_list.invalidate();
        let j = d.catalog.job(&name).map_err(Error::catalog)?;
        Ok(JobView::of(&d, &j))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(j)))
}

#[utoipa::path(
    put,
    path = "/api/v1/jobs/{name}",
    params(("name" = String, Path, description = "Job name or number")),
    request_body(content = JobSpec, description = "The whole new definition: what it leaves \
        out takes its default"),
    responses(
        (status = 200, description = "Changed", body = JobView),
        (status = 400, description = "Bad input (the message names the field); nothing changed",
            body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn replace(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Json<JobSpec>, JsonRejection>,
) -> crate::Result<Json<JobView>> {
    let which = path(p)?;
    let spec = body(b)?;
    let j = blocking(move || {
        let old = d.catalog.job(&which).map_err(Error::catalog)?;
        if spec.name.as_ref().is_some_and(|n| *n != old.name) {
            return Err(invalid(
                "name",
                "a job cannot be renamed (define a new one)",
            ));
        }
        let c = check(&d, &old.name, spec)?;
        d.catalog
            .update_job(
                old.id,
                &c.object,
                c.schedule.as_deref(),
                c.redundancy,
                c.mode,
                &c.settings,
            )
            .map_err(Error::catalog)?;
        d.job_list.invalidate();
        let j = d.catalog.job(&old.name).map_err(Error::catalog)?;
        Ok(JobView::of(&d, &j))
    })
    .await?;
    Ok(Json(j))
}

#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{name}",
    params(("name" = String, Path, description = "Job name or number")),
    responses(
        (status = 204, description = "Deleted (its runs and backups stay)"),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "A run of it is going on", body = super::ErrorBody),
    )
)]
pub async fn delete(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<StatusCode> {
    let which = path(p)?;
    blocking(move || {
        let r = d.catalog.remove_job(&which).map_err(Error::catalog);
        d.job_list.invalidate();
        r
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
