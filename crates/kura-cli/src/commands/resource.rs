//! `kura resource …`: the inventory of workers, targets, media, paths and copy engines.

use anyhow::{Context, Result};
use kura_catalog::{Catalog, Kind, Resource, State};
use kura_types::{ResourceConfig, TargetConfig};
use serde_json::{Value, json};

use crate::App;
use crate::cli::{ResourceAddArgs, ResourceCommand, ResourceProbeArgs};
use crate::exit::{self, UsageError};
use crate::output::catalog::{resource_detail, resource_json, resource_table};
use crate::output::{bytes, local_ms, rfc3339_ms, table};

pub fn run(app: &App, cmd: ResourceCommand) -> Result<i32> {
    let cat = app.catalog()?;
    match cmd {
        ResourceCommand::Add(a) => add(app, &cat, a),
        ResourceCommand::Route(a) => {
            cat.add_route(&a.worker, &a.path, &a.target)?;
            app.say(format!(
                "route {} → {} → {} declared",
                a.worker, a.path, a.target
            ));
            Ok(exit::OK)
        }
        ResourceCommand::List(a) => {
            let kind = a.kind.as_deref().map(Kind::parse).transpose()?;
            let mut rs: Vec<Resource> = cat
                .resources()?
                .into_iter()
                .filter(|r| kind.is_none_or(|k| r.kind == k))
                .collect();
            rs.sort_by_key(|r| r.id);
            if app.global.json {
                let v: Vec<Value> = rs.iter().map(|r| resource_json(r, &rfc3339_ms)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", resource_table(&rs));
            }
            Ok(exit::OK)
        }
        ResourceCommand::Show(a) => {
            let r = cat.resource(&a.name)?;
            let routes: Vec<_> = cat
                .routes()?
                .into_iter()
                .filter(|(w, p, t)| [w, p, t].contains(&&r.name))
                .collect();
            let events = cat.events(&a.name)?;
            if app.global.json {
                let mut v = resource_json(&r, &rfc3339_ms);
                v["routes"] = json!(
                    routes
                        .iter()
                        .map(|(w, p, t)| json!({"worker": w, "path": p, "target": t}))
                        .collect::<Vec<_>>()
                );
                v["events"] = json!(
                    events
                        .iter()
                        .map(|(at, what, why)| json!({
                            "at": rfc3339_ms(*at), "event": what, "reason": why,
                        }))
                        .collect::<Vec<_>>()
                );
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", resource_detail(&r, &routes, &events, &local_ms));
            }
            Ok(exit::OK)
        }
        ResourceCommand::Enable(a) => {
            cat.set_enabled(&a.name, true, "operator")?;
            app.say(format!(
                "{}: {}",
                a.name,
                cat.resource(&a.name)?.state().as_str()
            ));
            Ok(exit::OK)
        }
        ResourceCommand::Disable(a) => {
            cat.set_enabled(&a.name, false, &a.reason)?;
            let r = cat.resource(&a.name)?;
            app.say(format!("{}: not usable ({})", a.name, a.reason));
            if !r.allocations.is_empty() {
                app.say(format!(
                    "note: process {} still holds it until it ends",
                    r.allocations[0].0
                ));
            }
            Ok(exit::OK)
        }
        ResourceCommand::Remove(a) => {
            cat.remove_resource(&a.name)?;
            app.say(format!("removed {}", a.name));
            Ok(exit::OK)
        }
        ResourceCommand::Probe(a) => probe_targets(app, &cat, a),
    }
}

fn add(app: &App, cat: &Catalog, a: ResourceAddArgs) -> Result<i32> {
    let kind = Kind::parse(&a.kind)?;
    if kind != Kind::Target && a.url.is_some() {
        return Err(UsageError(format!("only a target takes a URL, not a {}", a.kind)).into());
    }
    if kind != Kind::Medium && a.target.is_some() {
        return Err(UsageError("--target is for media".into()).into());
    }
    if kind != Kind::Target && a.sequential {
        return Err(UsageError("--sequential is for targets".into()).into());
    }
    match kind {
        Kind::Target => {
            let url = a.url.ok_or_else(|| {
                UsageError(format!(
                    "target {} needs a URL: kura resource add target NAME URL",
                    a.name
                ))
            })?;
            let config = ResourceConfig::Target(TargetConfig {
                sequential: a.sequential,
                ..TargetConfig::new(url)
            });
            let id = cat.add_resource(kind, &a.name, config, a.slots.unwrap_or(1))?;
            let mut msg = format!("added target {} (number {id})", a.name);
            if !a.sequential {
                msg.push_str(&format!(" with medium {}.medium", a.name));
            }
            if cat.is_embedded() {
                cat.add_route("local-worker", "local-path", &a.name)
                    .context("route this machine to the new target")?;
                msg.push_str(", reached from local-worker over local-path");
            } else {
                msg.push_str(&format!(
                    "; declare who reaches it: kura resource route WORKER PATH {}",
                    a.name
                ));
            }
            app.say(msg);
        }
        Kind::Medium => {
            let target = a.target.ok_or_else(|| {
                UsageError(format!(
                    "medium {} needs --target (the sequential target it belongs to)",
                    a.name
                ))
            })?;
            let id = cat.add_medium(&target, &a.name)?;
            app.say(format!("added medium {} (number {id}) to {target}", a.name));
        }
        _ => {
            let slots = a.slots.unwrap_or(1);
            let id = cat.add_resource(kind, &a.name, ResourceConfig::None, slots)?;
            app.say(format!(
                "added {} {} (number {id}, {slots} slot(s))",
                kind.as_str(),
                a.name
            ));
        }
    }
    Ok(exit::OK)
}

/// Probe targets (`kura_manager::health::sweep`: in parallel, each result recorded as the
/// target's health) and show what was found.
fn probe_targets(app: &App, cat: &Catalog, a: ResourceProbeArgs) -> Result<i32> {
    let targets = kura_manager::health::targets_named(cat, &a.names)?;
    if targets.is_empty() {
        app.say("no targets to probe: add one with kura resource add target NAME URL");
        return Ok(exit::OK);
    }
    let open = |url: &str| app.backend_for(url).map_err(|e| format!("{e:#}"));
    let results = kura_manager::health::sweep(cat, &targets, &open, a.size)?;
    let mut rows = Vec::new();
    let mut json_out = Vec::new();
    let mut failed = 0;
    for h in &results {
        let (error, state) = (&h.error, h.state);
        if error.is_some() {
            failed += 1;
        }
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let rep = h.report.as_ref();
        let lib = h.library.as_ref();
        rows.push(vec![
            h.target.clone(),
            if lib.is_some() { "tape" } else { "disk" }.to_string(),
            if error.is_none() { "ok" } else { "FAILED" }.to_string(),
            ms(rep
                .and_then(|r| r.latency_ms)
                .or(lib.and_then(|l| l.changer_ms))),
            ms(rep.and_then(|r| r.write_ms)),
            ms(rep.and_then(|r| r.read_ms)),
            rep.and_then(|r| r.free_bytes).map_or("-".into(), bytes),
            state.as_str().to_string(),
        ]);
        if let Some(l) = lib {
            for t in l.loaded.iter().filter(|t| !t.verified) {
                eprintln!(
                    "kura: {}: tape {} in drive {}: {}",
                    h.target,
                    t.barcode,
                    t.drive,
                    t.note.as_deref().unwrap_or("label not verified")
                );
            }
        }
        json_out.push(json!({
            "name": h.target,
            "kind": if lib.is_some() { "tape" } else { "disk" },
            "library": lib,
            "ok": error.is_none(),
            "latency_ms": rep.and_then(|r| r.latency_ms),
            "write_ms": rep.and_then(|r| r.write_ms),
            "read_ms": rep.and_then(|r| r.read_ms),
            "free_bytes": rep.and_then(|r| r.free_bytes),
            "error": error,
            "state": state.as_str(),
        }));
        if let Some(e) = &error {
            eprintln!("kura: target {} unhealthy: {e}", h.target);
            if state == State::NotUsable {
                eprintln!(
                    "kura: {} is now not usable; a successful probe puts it back",
                    h.target
                );
            }
        }
    }
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&json_out)?);
    } else if !app.global.quiet {
        print!(
            "{}",
            table(
                &[
                    "Target",
                    "Kind",
                    "Probe",
                    "Round trip",
                    "Write",
                    "Read",
                    "Free",
                    "State"
                ],
                &rows
            )
        );
    }
    Ok(if failed > 0 {
        exit::TARGET_UNHEALTHY
    } else {
        exit::OK
    })
}
