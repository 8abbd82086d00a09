//! `/api/v1/backups`: the catalog's backups with their copies and sections, as
//! `kura backups` shows them.
//!
//! A mirrored backup has a whole *copy* on each of its targets; a fail-over backup is cut into
//! *sections* (extents in source order, `seq`), each on the target that took it, with the
//! manifest on every one of them. Each extent's `position` says which: a snapshot id (a
//! copy), or `SNAPSHOT:INDEX` (a section; an empty index: the manifest alone).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use kura_catalog::Backup;
use kura_manager::Position;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::blocking;
use super::extract::{path, query, rfc3339};
use crate::{Daemon, Error};

/// What one target holds of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CopyView {
    pub target: String,
    /// A whole copy (a mirrored backup).
    pub whole: bool,
    /// The sections (extent numbers) it holds of a fail-over backup; empty with `whole`, or
    /// when it holds only the manifest.
    pub sections: Vec<i64>,
}

/// One extent of a backup, as the catalog records it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExtentView {
    pub stream: i64,
    pub seq: i64,
    pub source_offset: i64,
    pub source_length: i64,
    pub target: String,
    pub medium: String,
    /// A snapshot id, or `SNAPSHOT:INDEX` for a section.
    pub position: String,
    pub size: i64,
}

/// A backup with its copies and sections.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupView {
    pub id: i64,
    pub object: String,
    /// The run (process) that wrote it.
    pub process: Option<i64>,
    /// RFC 3339.
    pub started: String,
    pub ended: Option<String>,
    /// When its data was taken.
    pub data_time: String,
    /// `running`, `complete`, `failed`, …: only `complete` backups are restorable.
    pub state: String,
    pub copies: Vec<CopyView>,
    pub extents: Vec<ExtentView>,
}

fn view(b: &Backup, extents: Vec<kura_catalog::Extent>) -> BackupView {
    let mut by_target: BTreeMap<String, CopyView> = BTreeMap::new();
    for e in &extents {
        let c = by_target
            .entry(e.target.clone())
            .or_insert_with(|| CopyView {
                target: e.target.clone(),
                whole: false,
                sections: Vec::new(),
            });
        match e.position.parse::<Position>() {
            Ok(Position::Section { index, .. }) if !index.is_empty() => c.sections.push(e.seq),
            Ok(Position::Section { .. }) => {}
            _ => c.whole = true,
        }
    }
    BackupView {
        id: b.id,
        object: b.object.clone(),
        process: b.run,
        started: rfc3339(b.started),
        ended: b.ended.map(rfc3339),
        data_time: rfc3339(b.data_time),
        state: b.state.as_str().into(),
        copies: by_target.into_values().collect(),
        extents: extents
            .into_iter()
            .map(|e| ExtentView {
                stream: e.stream,
                seq: e.seq,
                source_offset: e.source_offset,
                source_length: e.source_length,
                target: e.target,
                medium: e.medium,
                position: e.position,
                size: e.size,
            })
            .collect(),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct BackupQuery {
    /// Only the backups of this object.
    pub object: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/backups",
    params(BackupQuery),
    responses(
        (status = 200, description = "Backups, newest first", body = [BackupView]),
        (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn list(
    State(d): State<Arc<Daemon>>,
    q: Result<Query<BackupQuery>, QueryRejection>,
) -> crate::Result<Json<Vec<BackupView>>> {
    let q = query(q)?;
    let out = blocking(move || {
        let c = &d.catalog;
        c.backups(q.object.as_deref())
            .map_err(Error::catalog)?
            .iter()
            .map(|b| Ok(view(b, c.extents(b.id).map_err(Error::catalog)?)))
            .collect()
    })
    .await?;
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/api/v1/backups/{id}",
    params(("id" = i64, Path, description = "Backup number")),
    responses(
        (status = 200, body = BackupView),
        (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
    )
)]
pub async fn get(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<i64>, PathRejection>,
) -> crate::Result<Json<BackupView>> {
    let id = path(p)?;
    let out = blocking(move || {
        let b = d.catalog.backup(id).map_err(Error::catalog)?;
        Ok(view(&b, d.catalog.extents(id).map_err(Error::catalog)?))
    })
    .await?;
    Ok(Json(out))
}
