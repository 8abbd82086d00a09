//! `/api/v1/volumes` and `/api/v1/pairs`: the volume engine's volumes and mirror pairs,
//! read-only — what `kura volume list` and `kura pair list` read (the daemon hosts no volume
//! engine of its own; the binary reads the volume directory, or asks the server that owns it).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};

use super::blocking;
use super::extract::path;
use crate::ops::{PairView, VolumeView};
use crate::{Daemon, Error};

#[utoipa::path(
    get,
    path = "/api/v1/volumes",
    responses(
        (status = 200, description = "The volumes, by name", body = [VolumeView]),
        (status = 401, body = super::ErrorBody),
        (status = 503, description = "The volume directory cannot be read",
            body = super::ErrorBody),
    )
)]
pub async fn list(State(d): State<Arc<Daemon>>) -> crate::Result<Json<Vec<VolumeView>>> {
    Ok(Json(blocking(move || d.ops.volumes()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/volumes/{name}",
    params(("name" = String, Path, description = "Volume name")),
    responses(
        (status = 200, body = VolumeView),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn get(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<Json<VolumeView>> {
    let name = path(p)?;
    let v = blocking(move || {
        d.ops
            .volumes()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::NotFound(format!("no volume {name:?}")))
    })
    .await?;
    Ok(Json(v))
}

#[utoipa::path(
    get,
    path = "/api/v1/pairs",
    responses(
        (status = 200, description = "The mirror pairs", body = [PairView]),
        (status = 401, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn pairs(State(d): State<Arc<Daemon>>) -> crate::Result<Json<Vec<PairView>>> {
    Ok(Json(blocking(move || d.ops.pairs()).await?))
}
