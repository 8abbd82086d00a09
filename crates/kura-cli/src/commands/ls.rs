use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use kura_repo::browse;
use kura_repo::snapshot::{Content, SnapshotEntry};
use std::os::unix::ffi::OsStrExt;

use crate::cli::LsArgs;
use crate::exit::UsageError;
use crate::output::{local_time, node_json, node_line};
use crate::{App, exit};

/// A path inside an image snapshot names nothing kura can read yet (file-level restore from
/// images is not built): refused, pointing at restoring the image. `/` and the image's own
/// source path name the image itself.
pub fn refuse_path_in_image(snap: &SnapshotEntry, path: Option<&Path>) -> Result<()> {
    let Content::Image(info) = &snap.snapshot.content else {
        return Ok(());
    };
    let Some(path) = path else { return Ok(()) };
    let source = Path::new(std::ffi::OsStr::from_bytes(&info.source));
    if path == Path::new("/") || path == source {
        return Ok(());
    }
    Err(UsageError(format!(
        "snapshot {} is an image of {} ({} bytes): it has no paths inside, so {} names \
         nothing; restore the image (kura restore {} --target FILE) and mount it to reach \
         its files",
        snap.id.short(),
        source.display(),
        info.size,
        path.display(),
        snap.id.short()
    ))
    .into())
}

pub fn run(app: &App, a: LsArgs) -> Result<i32> {
    let repo = app.open_indexed()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Content::Image(info) = &snap.snapshot.content {
        refuse_path_in_image(&snap, a.path.as_deref())?;
        let src = String::from_utf8_lossy(&info.source);
        if app.global.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"path": src, "type": "image", "size": info.size, "device": info.device})
            )?;
        } else {
            writeln!(out, "{src} (image, {} bytes)", info.size)?;
        }
        return Ok(exit::OK);
    }
    let path = a.path.clone().unwrap_or_else(|| "/".into());
    let abs = Path::new("/").join(&path);
    // One JSON object per line (NDJSON), so huge trees stream.
    let mut damaged = Vec::new();
    browse::list_reporting(
        &repo,
        &snap,
        &abs,
        &mut |p, n| {
            let ps = p.display().to_string();
            let line = if app.global.json {
                node_json(&ps, n).to_string()
            } else {
                node_line(&ps, n, a.long, local_time)
            };
            writeln!(out, "{line}").map_err(|e| kura_repo::Error::io("write output", e))
        },
        &mut damaged,
    )
    .with_context(|| format!("list snapshot {}", snap.id.short()))?;
    out.flush()?;
    for (p, why) in &damaged {
        tracing::warn!("{}: contents not listed (tree damaged): {why}", p.display());
    }
    Ok(if damaged.is_empty() {
        exit::OK
    } else {
        exit::INCOMPLETE
    })
}
