//! `kura heal BACKUP`: make every target of a backup hold a complete copy (the engine is
//! `kura_manager::heal`).

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::HealArgs;
use crate::output::bytes;
use crate::{App, exit};

pub fn run(app: &App, a: HealArgs) -> Result<i32> {
    let cat = app.catalog()?;
    let password = crate::password::get(app.password_file().as_deref())?;
    let r = kura_manager::heal(
        &cat,
        a.backup,
        &|url| app.manager_backend(url, None),
        &password,
    )
    .with_context(|| format!("heal backup {}", a.backup))?;
    if app.global.json {
        println!(
            "{}",
            json!({
                "backup": a.backup,
                "healed": r.healed.iter().map(|(t, n)| json!({"target": t, "sections": n})).collect::<Vec<_>>(),
                "packs_copied": r.packs_copied,
                "bytes_copied": r.bytes_copied,
                "failed": r.failed.iter().map(|(t, e)| json!({"target": t, "error": e})).collect::<Vec<_>>(),
            })
        );
    } else {
        if r.healed.is_empty() && r.failed.is_empty() {
            app.say(format!(
                "backup {}: every target already holds a complete copy",
                a.backup
            ));
        }
        for (t, n) in &r.healed {
            app.say(format!("backup {}: {t} got {n} section(s)", a.backup));
        }
        if !r.healed.is_empty() {
            app.say(format!(
                "copied {} pack(s), {}",
                r.packs_copied,
                bytes(r.bytes_copied)
            ));
        }
    }
    for (t, e) in &r.failed {
        eprintln!("warning: {t} could not be healed: {e}");
    }
    Ok(if r.failed.is_empty() {
        exit::OK
    } else {
        exit::DEGRADED
    })
}
