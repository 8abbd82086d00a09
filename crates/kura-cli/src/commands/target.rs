use anyhow::Result;
use kura_repo::backend::probe;
use serde_json::json;

use crate::cli::TargetCommand;
use crate::output::bytes;
use crate::{App, exit};

pub fn run(app: &App, t: TargetCommand) -> Result<i32> {
    let TargetCommand::Probe(a) = t;
    let url = match a.url {
        Some(u) => u,
        None => app.repo_location()?,
    };
    let backend = app.backend_for(&url)?;
    let r = probe(backend.as_ref(), a.size);
    if app.global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "location": r.location,
                "ok": r.ok(),
                "reachable": r.reachable,
                "latency_ms": r.latency_ms,
                "repository": r.repository,
                "write_ms": r.write_ms,
                "read_ms": r.read_ms,
                "delete_ms": r.delete_ms,
                "verified": r.verified,
                "probe_bytes": r.probe_bytes,
                "free_bytes": r.free_bytes,
                "error": r.error.as_ref().map(|(k, m)| json!({"class": k.as_str(), "message": m})),
            }))?
        );
    } else {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        app.say(format!("target     {}", r.location));
        app.say(format!(
            "reachable  {} (round trip {})",
            if r.reachable { "yes" } else { "no" },
            f(r.latency_ms)
        ));
        if let Some(repo) = r.repository {
            app.say(format!(
                "repository {}",
                if repo { "present" } else { "none" }
            ));
        }
        app.say(format!(
            "probe      {}: write {}, read {}, delete {}{}",
            bytes(r.probe_bytes as u64),
            f(r.write_ms),
            f(r.read_ms),
            f(r.delete_ms),
            if r.verified { ", verified" } else { "" }
        ));
        app.say(format!(
            "free space {}",
            r.free_bytes
                .map_or("unknown (object store)".to_string(), bytes)
        ));
        if let Some((class, msg)) = &r.error {
            eprintln!("kura: target unhealthy ({class}): {msg}");
        }
    }
    Ok(if r.ok() {
        exit::OK
    } else {
        exit::TARGET_UNHEALTHY
    })
}
