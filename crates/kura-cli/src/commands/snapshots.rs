use anyhow::Result;
use serde_json::Value;

use crate::cli::SnapshotsArgs;
use crate::output::{local_time, snapshot_json, snapshot_table};
use crate::{App, exit};

pub fn run(app: &App, a: SnapshotsArgs) -> Result<i32> {
    let repo = app.open()?;
    let snaps: Vec<_> = repo
        .readable_snapshots()?
        .into_iter()
        .filter(|s| a.host.as_ref().is_none_or(|h| &s.snapshot.host == h))
        .filter(|s| a.tag.as_ref().is_none_or(|t| s.snapshot.tags.contains(t)))
        .collect();
    if app.global.json {
        let v: Vec<Value> = snaps.iter().map(snapshot_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", snapshot_table(&snaps, local_time));
    }
    Ok(exit::OK)
}
