use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use kura_repo::browse;
use kura_repo::snapshot::Content;

use crate::cli::LsArgs;
use crate::output::{local_time, node_json, node_line};
use crate::{App, exit};

pub fn run(app: &App, a: LsArgs) -> Result<i32> {
    let repo = app.open_indexed()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Content::Image(info) = &snap.snapshot.content {
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
