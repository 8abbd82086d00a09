//! Repository maintenance started as tasks: check and prune a target's repository, heal a
//! backup (every target gets a complete copy), rebuild the catalog from the records on
//! targets. Each is the binary's [`crate::ops::Operations`] — the code `kura check`,
//! `kura prune`, `kura heal` and `kura catalog rebuild` run — on a task of its own, with its
//! outcome and what the command would print in the task's log.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::blocking;
use super::extract::{body, path, query};
use crate::auth::Caller;
use crate::{Daemon, Error, TaskInfo};

#[derive(Debug, Deserialize, IntoParams)]
pub struct CheckQuery {
    /// Also read and verify every pack (slow).
    pub read_data: Option<bool>,
}

#[utoipa::path(
    post,
    path = "/api/v1/targets/{target}/check",
    params(("target" = String, Path, description = "Target name"), CheckQuery),
    responses(
        (status = 202, description = "Started: the task (kind `check`); it fails when the \
            repository is damaged, naming what", body = TaskInfo),
        (status = 400, description = "Not a target", body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn check(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<CheckQuery>, QueryRejection>,
) -> crate::Result<(StatusCode, Json<TaskInfo>)> {
    let target = path(p)?;
    let read_data = query(q)?.read_data.unwrap_or(false);
    let by = format!("api:{}", caller.token);
    let t = blocking(move || {
        let url = d.target_url(&target)?;
        let t2 = target.clone();
        d.start_task("check", &target, &by, move |d, task| {
            d.ops.check(&t2, &url, read_data, task)
        })
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

#[utoipa::path(
    post,
    path = "/api/v1/targets/{target}/prune",
    params(("target" = String, Path, description = "Target name")),
    responses(
        (status = 202, description = "Started: the task (kind `prune`)", body = TaskInfo),
        (status = 400, description = "Not a target", body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn prune(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<(StatusCode, Json<TaskInfo>)> {
    let target = path(p)?;
    let by = format!("api:{}", caller.token);
    let t = blocking(move || {
        let url = d.target_url(&target)?;
        let t2 = target.clone();
        d.start_task("prune", &target, &by, move |d, task| {
            d.ops.prune(&t2, &url, task)
        })
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

#[utoipa::path(
    post,
    path = "/api/v1/backups/{id}/heal",
    params(("id" = i64, Path, description = "Backup number")),
    responses(
        (status = 202, description = "Started: the task (kind `heal`)", body = TaskInfo),
        (status = 400, description = "Not a complete backup", body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn heal(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<i64>, PathRejection>,
) -> crate::Result<(StatusCode, Json<TaskInfo>)> {
    let backup = path(p)?;
    let by = format!("api:{}", caller.token);
    let t = blocking(move || {
        let b = d.catalog.backup(backup).map_err(Error::catalog)?;
        if b.state != kura_catalog::BackupState::Complete {
            return Err(Error::Invalid(format!(
                "backup {backup} is {}: only complete backups can be healed",
                b.state.as_str()
            )));
        }
        d.start_task("heal", &format!("backup {backup}"), &by, move |d, task| {
            d.ops.heal(backup, task)
        })
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

/// Which targets' records to read.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildRequest {
    /// Target names (at least one).
    pub targets: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/catalog/rebuild",
    request_body = RebuildRequest,
    responses(
        (status = 202, description = "Started: the task (kind `rebuild`)", body = TaskInfo),
        (status = 400, description = "No targets, or one is not a target",
            body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn rebuild(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    b: Result<Json<RebuildRequest>, JsonRejection>,
) -> crate::Result<(StatusCode, Json<TaskInfo>)> {
    let r = body(b)?;
    if r.targets.is_empty() {
        return Err(Error::Invalid("targets: give at least one".into()));
    }
    let by = format!("api:{}", caller.token);
    let t = blocking(move || {
        for name in &r.targets {
            d.target_url(name)?;
        }
        let subject = r.targets.join(",");
        d.start_task("rebuild", &subject, &by, move |d, task| {
            d.ops.rebuild(&r.targets, task)
        })
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}
