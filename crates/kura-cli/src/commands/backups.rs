//! `kura backups`: the catalog's backups with their copies (targets) and sections.

use anyhow::Result;
use serde_json::{Value, json};

use crate::cli::BackupsArgs;
use crate::output::{local_ms, rfc3339_ms, table};
use crate::{App, exit};

pub fn run(app: &App, a: BackupsArgs) -> Result<i32> {
    let cat = app.catalog()?;
    let backups = cat.backups(a.object.as_deref())?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for b in &backups {
        let extents = cat.extents(b.id)?;
        let mut targets: Vec<&str> = extents.iter().map(|e| e.target.as_str()).collect();
        targets.dedup();
        rows.push(vec![
            b.id.to_string(),
            b.object.clone(),
            local_ms(b.data_time),
            b.state.as_str().to_string(),
            b.run.map_or("-".into(), |r| r.to_string()),
            targets.join(","),
        ]);
        out.push(json!({
            "backup": b.id,
            "object": b.object,
            "process": b.run,
            "started": rfc3339_ms(b.started),
            "ended": b.ended.map(rfc3339_ms),
            "data_time": rfc3339_ms(b.data_time),
            "state": b.state.as_str(),
            "extents": extents.iter().map(|e| json!({
                "stream": e.stream, "seq": e.seq,
                "source_offset": e.source_offset, "source_length": e.source_length,
                "target": e.target, "medium": e.medium,
                "position": e.position, "size": e.size,
            })).collect::<Vec<Value>>(),
        }));
    }
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            table(
                &[
                    "Backup",
                    "Object",
                    "Data time",
                    "State",
                    "Process",
                    "Copies"
                ],
                &rows
            )
        );
        println!("{} backup(s)", backups.len());
    }
    Ok(exit::OK)
}
