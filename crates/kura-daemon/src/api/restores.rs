//! `POST /api/v1/restores`: a restore, started as a task.
//!
//! The request is checked before the task starts (a 400 names the field): one source (a
//! target and a snapshot, or a catalog backup), an absolute destination without `..` (inside
//! the daemon's `--restore-root` when it has one), a known overwrite policy. The restore itself is the binary's [`crate::ops::Operations::restore`],
//! which runs `kura restore`'s code: it writes only inside the destination and never
//! through an entry already there (symlinks and hard links planted in it are replaced, not
//! followed), files appear under their names only when whole, an image is not written over a
//! file a volume server holds.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use kura_repo::restore::{Overwrite, RestoreOptions};
use serde::Deserialize;
use utoipa::ToSchema;

use super::blocking;
use super::extract::body;
use crate::auth::Caller;
use crate::ops::{Restore, RestoreSource};
use crate::{Daemon, Error, TaskInfo};

/// A restore to start.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Restore a snapshot of this target's repository…
    pub target: Option<String>,
    /// …this one (`latest`, the default, or an id prefix);
    pub snapshot: Option<String>,
    /// or this complete catalog backup, read from every target holding part of it.
    pub backup: Option<i64>,
    /// Where to restore to: an absolute path without `..` (a directory; for an image, a
    /// file, a device or a directory).
    pub destination: String,
    /// Glob patterns over snapshot paths (`/home/a/**`); none: everything.
    #[serde(default)]
    pub include: Vec<String>,
    /// `always` (default), `if-changed`, `if-newer` or `never`.
    pub overwrite: Option<String>,
    /// Remove entries the snapshot does not have from the directories restored whole.
    #[serde(default)]
    pub delete: bool,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{field}: {why}"))
}

/// Is `dest` (absolute, without `..`) inside `root`? Judged on what the paths resolve to:
/// the root and the longest part of `dest` that exists are resolved (symlinks followed), so a
/// symlink inside the root that leads out of it does not count as inside.
fn inside(dest: &Path, root: &Path) -> bool {
    let Ok(root) = root.canonicalize() else {
        return false;
    };
    let mut existing = dest.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n.to_os_string());
                existing = p.to_path_buf();
            }
            _ => return false,
        }
    }
    let Ok(mut resolved) = existing.canonicalize() else {
        return false;
    };
    resolved.extend(rest.iter().rev());
    resolved.starts_with(&root)
}

/// The checks that need no catalog.
fn options(r: &RestoreRequest, root: Option<&Path>) -> crate::Result<(PathBuf, RestoreOptions)> {
    let dest = PathBuf::from(&r.destination);
    if !dest.is_absolute() {
        return Err(invalid(
            "destination",
            format!("{:?} is not an absolute path", r.destination),
        ));
    }
    if dest
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || r.destination.contains('\0')
    {
        return Err(invalid(
            "destination",
            format!("{:?} must not contain '..' or NUL", r.destination),
        ));
    }
    if let Some(root) = root
        && !inside(&dest, root)
    {
        return Err(invalid(
            "destination",
            format!(
                "{} is outside {}, where this daemon's restores may write (--restore-root)",
                dest.display(),
                root.display()
            ),
        ));
    }
    if let Some(p) = r.include.iter().find(|p| p.is_empty() || p.contains('\0')) {
        return Err(invalid("include", format!("{p:?} is not a pattern")));
    }
    let overwrite: Overwrite = match &r.overwrite {
        None => Overwrite::Always,
        Some(o) => o.parse().map_err(|_| {
            invalid(
                "overwrite",
                format!("{o:?}: use always, if-changed, if-newer or never"),
            )
        })?,
    };
    Ok((
        dest,
        RestoreOptions {
            includes: r.include.clone(),
            overwrite,
            delete: r.delete,
            ..RestoreOptions::default()
        },
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/restores",
    request_body = RestoreRequest,
    responses(
        (status = 202, description = "Started: the restore's task (kind `restore`)",
            body = TaskInfo),
        (status = 400, description = "Bad input (the message names the field)",
            body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
        (status = 404, description = "No such target or backup", body = super::ErrorBody),
    )
)]
pub async fn start(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    b: Result<Json<RestoreRequest>, JsonRejection>,
) -> crate::Result<(StatusCode, Json<TaskInfo>)> {
    let r = body(b)?;
    let (destination, opts) = options(&r, d.options.restore_root.as_deref())?;
    let by = format!("api:{}", caller.token);
    let t = blocking(move || {
        let source = match (&r.target, r.backup) {
            (Some(_), Some(_)) => {
                return Err(invalid("backup", "give a target and snapshot, or a backup"));
            }
            (None, None) => {
                return Err(invalid("target", "give a target and snapshot, or a backup"));
            }
            (None, Some(b)) => {
                if r.snapshot.is_some() {
                    return Err(invalid("snapshot", "is for a target, not a backup"));
                }
                let bk = d.catalog.backup(b).map_err(Error::catalog)?;
                if bk.state != kura_catalog::BackupState::Complete {
                    return Err(invalid(
                        "backup",
                        format!(
                            "backup {b} is {}: only complete backups are restorable",
                            bk.state.as_str()
                        ),
                    ));
                }
                RestoreSource::Backup(b)
            }
            (Some(t), None) => {
                let url = d.target_url(t)?;
                let snapshot = r.snapshot.clone().unwrap_or_else(|| "latest".into());
                if snapshot.is_empty() || snapshot.contains(['/', '\0']) {
                    return Err(invalid(
                        "snapshot",
                        format!("{snapshot:?} is not a snapshot"),
                    ));
                }
                RestoreSource::Snapshot {
                    target: t.clone(),
                    url,
                    snapshot,
                }
            }
        };
        let subject = match &source {
            RestoreSource::Backup(b) => format!("backup {b} to {}", destination.display()),
            RestoreSource::Snapshot {
                target, snapshot, ..
            } => format!("{target}:{snapshot} to {}", destination.display()),
        };
        let restore = Restore {
            source,
            destination,
            options: opts,
        };
        d.start_task("restore", &subject, &by, move |d, task| {
            d.ops.restore(&restore, task)
        })
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dest: &str) -> RestoreRequest {
        RestoreRequest {
            target: Some("t".into()),
            snapshot: None,
            backup: None,
            destination: dest.into(),
            include: Vec::new(),
            overwrite: None,
            delete: false,
        }
    }

    #[test]
    fn a_destination_is_absolute_without_dots_and_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("out")).unwrap();
        let ok = |p: &Path| options(&req(p.to_str().unwrap()), Some(&root)).is_ok();
        assert!(ok(&root.join("a/b/c")), "inside, not yet made");
        assert!(ok(&root));
        assert!(!ok(&d.path().join("elsewhere")));
        assert!(!ok(&root.join("out/x")), "a symlink out of the root");
        assert!(!ok(Path::new("/")));
        for bad in ["rel", "/a/../b", "./a"] {
            assert!(options(&req(bad), None).is_err(), "{bad}");
        }
        assert!(options(&req("/anywhere"), None).is_ok());
        let mut r = req("/x");
        r.overwrite = Some("sometimes".into());
        let e = options(&r, None).unwrap_err().to_string();
        assert!(e.starts_with("overwrite:"), "{e}");
    }
}
