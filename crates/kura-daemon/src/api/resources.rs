//! `/api/v1/resources`: the catalog's resource inventory (workers, targets, media, paths,
//! copy engines) — list, get, add, remove, as `kura resource` does.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kura_catalog::{Kind, Resource};
use kura_types::{ResourceConfig, TargetConfig};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::blocking;
use super::extract::{body, path, rfc3339};
use crate::{Daemon, Error};

/// A resource as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResourceView {
    pub id: i64,
    /// `worker`, `target`, `medium`, `path` or `copy-engine`.
    pub kind: String,
    pub name: String,
    /// A target's URL.
    pub url: Option<String>,
    /// A target whose media are added one by one.
    pub sequential: bool,
    /// A medium's target (its number).
    pub parent: Option<i64>,
    pub slots: i64,
    /// Slots in use by running streams.
    pub in_use: i64,
    pub enabled: bool,
    pub healthy: bool,
    /// `usable`, `in use` or `not usable`.
    pub state: String,
    /// Consecutive errors.
    pub errors: i64,
    pub last_error: Option<String>,
    /// When its state last changed (RFC 3339).
    pub since: String,
}

impl ResourceView {
    pub fn of(r: &Resource) -> ResourceView {
        let target = match &r.config {
            ResourceConfig::Target(t) => Some(t),
            _ => None,
        };
        ResourceView {
            id: r.id,
            kind: r.kind.as_str().into(),
            name: r.name.clone(),
            url: target.map(|t| t.url.clone()),
            sequential: target.is_some_and(|t| t.sequential),
            parent: r.parent,
            slots: r.slots,
            in_use: r.allocations.len() as i64,
            enabled: r.enabled,
            healthy: r.healthy,
            state: r.state().as_str().into(),
            errors: r.errors,
            last_error: r.last_error.clone(),
            since: rfc3339(r.since),
        }
    }
}

/// A resource to add.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewResource {
    /// `worker`, `target`, `medium`, `path` or `copy-engine`.
    pub kind: String,
    pub name: String,
    /// A target's URL (a directory, `file:///…`, `s3://bucket/prefix?…`); targets only.
    pub url: Option<String>,
    /// A target whose media are added one by one (no implicit medium); targets only.
    #[serde(default)]
    pub sequential: bool,
    /// The sequential target a medium belongs to; media only.
    pub target: Option<String>,
    /// Streams it serves at once (default 1).
    pub slots: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/resources",
    responses(
        (status = 200, description = "Every resource, by number", body = [ResourceView]),
        (status = 401, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn list(State(d): State<Arc<Daemon>>) -> crate::Result<Json<Vec<ResourceView>>> {
    let rs = blocking(move || d.catalog.resources().map_err(Error::catalog)).await?;
    Ok(Json(rs.iter().map(ResourceView::of).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/resources/{name}",
    params(("name" = String, Path, description = "Resource name")),
    responses(
        (status = 200, body = ResourceView),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn get(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<Json<ResourceView>> {
    let name = path(p)?;
    let r = blocking(move || d.catalog.resource(&name).map_err(Error::catalog)).await?;
    Ok(Json(ResourceView::of(&r)))
}

fn refuse(field: &str, why: impl Into<String>) -> Error {
    Error::Invalid(format!("{field}: {}", why.into()))
}

#[utoipa::path(
    post,
    path = "/api/v1/resources",
    request_body = NewResource,
    responses(
        (status = 201, description = "Added", body = ResourceView),
        (status = 400, description = "Bad input (the message names the field)",
            body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, description = "A medium's target does not exist", body = super::ErrorBody),
        (status = 409, description = "The name is taken", body = super::ErrorBody),
    )
)]
pub async fn add(
    State(d): State<Arc<Daemon>>,
    b: Result<Json<NewResource>, JsonRejection>,
) -> crate::Result<(StatusCode, Json<ResourceView>)> {
    let n = body(b)?;
    let kind = Kind::parse(&n.kind).map_err(|e| refuse("kind", e.to_string()))?;
    if kind != Kind::Target && n.url.is_some() {
        return Err(refuse(
            "url",
            format!("only a target takes a URL, not a {}", n.kind),
        ));
    }
    if kind != Kind::Target && n.sequential {
        return Err(refuse("sequential", "is for targets"));
    }
    if kind != Kind::Medium && n.target.is_some() {
        return Err(refuse("target", "is for media"));
    }
    if kind == Kind::Medium && n.slots.is_some() {
        return Err(refuse("slots", "a medium has one slot"));
    }
    let r = blocking(move || {
        let c = &d.catalog;
        let slots = n.slots.unwrap_or(1);
        match kind {
            Kind::Target => {
                let url = n
                    .url
                    .ok_or_else(|| refuse("url", format!("target {} needs a URL", n.name)))?;
                let config = ResourceConfig::Target(TargetConfig {
                    sequential: n.sequential,
                    ..TargetConfig::new(url)
                });
                c.add_resource(kind, &n.name, config, slots)
                    .map_err(Error::catalog)?;
                // As `kura resource add`: a single machine's catalog reaches its targets
                // from the machine itself.
                if c.is_embedded() {
                    c.add_route("local-worker", "local-path", &n.name)
                        .map_err(Error::catalog)?;
                }
            }
            Kind::Medium => {
                let target = n.target.ok_or_else(|| {
                    refuse("target", format!("medium {} needs its target", n.name))
                })?;
                c.add_medium(&target, &n.name).map_err(Error::catalog)?;
            }
            _ => {
                c.add_resource(kind, &n.name, ResourceConfig::None, slots)
                    .map_err(Error::catalog)?;
            }
        }
        c.resource(&n.name).map_err(Error::catalog)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(ResourceView::of(&r))))
}

#[utoipa::path(
    delete,
    path = "/api/v1/resources/{name}",
    params(("name" = String, Path, description = "Resource name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = super::ErrorBody),
        (status = 400, description = "It holds extents of recorded backups",
            body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "In use by a running process",
            body = super::ErrorBody),
    )
)]
pub async fn remove(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<StatusCode> {
    let name = path(p)?;
    blocking(move || d.catalog.remove_resource(&name).map_err(Error::catalog)).await?;
    Ok(StatusCode::NO_CONTENT)
}
