//! Snapshot browsing: the snapshots of a target's repository, and one directory of a
//! snapshot (`kura snapshots`, `kura ls` without the recursion). The repository is opened
//! through [`crate::ops::Operations::open`] (the daemon's password); reading it is
//! `kura_repo`'s, and never writes to the repository.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use kura_repo::browse;
use kura_repo::snapshot::{Content, SnapshotEntry};
use kura_repo::tree::{Node, NodeKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::blocking;
use super::extract::{path, query};
use crate::ops::repo_error;
use crate::{Daemon, Error};

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    pub id: String,
    pub short_id: String,
    /// RFC 3339.
    pub time: String,
    pub host: String,
    pub username: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub parent: Option<String>,
    /// `files` or `image`.
    pub kind: String,
    /// An image's size in bytes.
    pub image_size: Option<u64>,
}

impl SnapshotView {
    fn of(s: &SnapshotEntry) -> SnapshotView {
        let sn = &s.snapshot;
        SnapshotView {
            id: s.id.to_hex(),
            short_id: s.id.short(),
            time: sn.time.to_rfc3339(),
            host: sn.host.clone(),
            username: sn.username.clone(),
            paths: sn.paths_lossy(),
            tags: sn.tags.clone(),
            parent: sn.parent.map(|p| p.to_hex()),
            kind: if sn.is_image() { "image" } else { "files" }.into(),
            image_size: match &sn.content {
                Content::Image(i) => Some(i.size),
                Content::Tree { .. } => None,
            },
        }
    }
}

/// An entry of a snapshot's directory.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Its path in the snapshot.
    pub path: String,
    pub name: String,
    /// `file`, `dir`, `symlink`, `dev`, `chardev`, `fifo`, `socket`.
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// RFC 3339.
    pub mtime: String,
    /// A symlink's target.
    pub target: Option<String>,
}

impl NodeView {
    fn of(path: &std::path::Path, n: &Node) -> NodeView {
        NodeView {
            path: path.display().to_string(),
            name: n.name_lossy(),
            kind: n.kind.as_str().into(),
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            mtime: n.mtime.to_rfc3339(),
            target: n
                .target
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/targets/{target}/snapshots",
    params(("target" = String, Path, description = "Target name")),
    responses(
        (status = 200, description = "Its repository's readable snapshots, oldest first",
            body = [SnapshotView]),
        (status = 400, description = "Not a target", body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "No repository there", body = super::ErrorBody),
        (status = 503, description = "The target does not answer", body = super::ErrorBody),
    )
)]
pub async fn list(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<String>, PathRejection>,
) -> crate::Result<Json<Vec<SnapshotView>>> {
    let target = path(p)?;
    let out = blocking(move || {
        let url = d.target_url(&target)?;
        let repo = d.ops.open(&target, &url)?;
        let snaps = repo.readable_snapshots().map_err(repo_error)?;
        Ok(snaps.iter().map(SnapshotView::of).collect())
    })
    .await?;
    Ok(Json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TreeQuery {
    /// The directory to list (absolute in the snapshot; default `/`).
    pub path: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/targets/{target}/snapshots/{snapshot}/tree",
    params(
        ("target" = String, Path, description = "Target name"),
        ("snapshot" = String, Path, description = "`latest` or a snapshot id (a unique prefix)"),
        TreeQuery,
    ),
    responses(
        (status = 200, description = "The directory's entries in name order (a file: itself)",
            body = [NodeView]),
        (status = 400, description = "Not a target, a path with `..`, an image snapshot",
            body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, description = "No such target, snapshot or path", body = super::ErrorBody),
        (status = 409, description = "No repository there", body = super::ErrorBody),
        (status = 503, description = "The target does not answer", body = super::ErrorBody),
    )
)]
pub async fn tree(
    State(d): State<Arc<Daemon>>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<TreeQuery>, QueryRejection>,
) -> crate::Result<Json<Vec<NodeView>>> {
    let (target, spec) = path(p)?;
    let dir = PathBuf::from("/").join(query(q)?.path.unwrap_or_default());
    if dir.as_os_str().as_bytes().contains(&0)
        || dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Invalid(format!(
            "path: {:?} must not contain '..' or NUL",
            dir.display().to_string()
        )));
    }
    let out = blocking(move || {
        let url = d.target_url(&target)?;
        let repo = d.ops.open(&target, &url)?;
        let repo = repo.load_index().map_err(repo_error)?;
        let snap = repo.find_snapshot(&spec).map_err(repo_error)?;
        let node = browse::find_node(&repo, &snap, &dir).map_err(repo_error)?;
        match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(sub)) => {
                let t = repo.load_tree(&sub).map_err(repo_error)?;
                Ok(t.nodes
                    .iter()
                    .map(|n| {
                        let p = dir.join(std::ffi::OsStr::from_bytes(&n.name));
                        NodeView::of(&p, n)
                    })
                    .collect())
            }
            _ => Ok(vec![NodeView::of(&dir, &node)]),
        }
    })
    .await?;
    Ok(Json(out))
}
