use anyhow::Result;
use kura_repo::lock::remove_locks;

use crate::cli::UnlockArgs;
use crate::{App, exit};

pub fn run(app: &App, a: UnlockArgs) -> Result<i32> {
    let repo = app.open()?;
    let removed = remove_locks(&repo, a.remove_all)?;
    if app.global.json {
        let v: Vec<_> = removed
            .iter()
            .map(|l| serde_json::json!({"id": l.name, "lock": l.info.describe(), "stale": l.stale}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for l in &removed {
            app.say(format!(
                "removed lock {} ({}{})",
                &l.name[..8],
                l.info.describe(),
                l.stale
                    .as_ref()
                    .map(|s| format!("; stale: {s}"))
                    .unwrap_or_default()
            ));
        }
        app.say(format!("{} lock(s) removed", removed.len()));
    }
    Ok(exit::OK)
}
