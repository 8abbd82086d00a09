//! `kura pair create|split|resync|list|delete`: mirror pairs of the volume engine
//! (`kura_volume::pair`). With a server running on the data directory the request goes to
//! it (it owns the volumes' write path); otherwise this process does the same work.

use anyhow::{Context, Result};
use kura_volume::control::{self, Client, Request};
use kura_volume::{Engine, PairInfo, parse_area};
use serde_json::Value;

use crate::cli_volume::{PairCommand, VolumeDirArgs};
use crate::commands::volume::store;
use crate::output::{bytes, table};
use crate::{App, exit};

/// Send `req` to the server of `dir`, or carry it out here when none runs.
pub fn call(app: &App, dir: &VolumeDirArgs, req: Request) -> Result<Value> {
    let st = store(app, dir)?;
    let what = describe(&req);
    match Client::connect(st.dir()) {
        Some(mut c) => c.call(&req).with_context(|| {
            format!(
                "{what} (through the volume server of {})",
                st.dir().display()
            )
        }),
        None => {
            let engine = Engine::new(st, None, app.cancel.clone());
            control::handle(&engine, req).with_context(|| what)
        }
    }
}

/// What a request does, in the words of the command that sent it (for error context).
fn describe(req: &Request) -> String {
    match req {
        Request::PairCreate { primary, secondary } => {
            format!("pair {primary} with {secondary}")
        }
        Request::PairSplit { primary, .. } => format!("split the pair of {primary}"),
        Request::PairResync { primary, .. } => format!("resync the pair of {primary}"),
        Request::PairDelete { primary } => format!("delete the pair of {primary}"),
        Request::PairList => "list the pairs".into(),
        Request::Backup { volume, .. } => format!("back up {volume}"),
        Request::Restore { volume, .. } => format!("restore into {volume}"),
        Request::Jobs | Request::Job { .. } => "list the background backups".into(),
    }
}

/// An offset or length as `pair split --area` takes it: `16M`, `2G`, or bytes.
fn unit(b: u64) -> String {
    match b {
        0 => "0".into(),
        b if b.is_multiple_of(1 << 30) => format!("{}G", b >> 30),
        b if b.is_multiple_of(1 << 20) => format!("{}M", b >> 20),
        b => b.to_string(),
    }
}

fn show(app: &App, pairs: &[PairInfo]) {
    if app.global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(pairs).unwrap_or_default()
        );
        return;
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    for p in pairs {
        let c = &p.config;
        let state = match (c.state, c.areas.len()) {
            (kura_volume::PairState::Duplex, _) => "duplex".to_string(),
            (_, 0) => "split".to_string(),
            (_, 1) => "split (1 area)".to_string(),
            (_, n) => format!("split ({n} areas)"),
        };
        rows.push(vec![
            c.primary.clone(),
            c.secondary.clone(),
            state,
            bytes(p.dirty_bytes),
            c.since.clone(),
            c.note.clone().unwrap_or_default(),
        ]);
        // One line per split area: its own split time, and what differs in it.
        for (i, a) in c.areas.iter().enumerate() {
            rows.push(vec![
                String::new(),
                String::new(),
                format!("  area {}:{}", unit(a.offset), unit(a.length)),
                p.area_dirty_bytes
                    .get(i)
                    .map(|b| bytes(*b))
                    .unwrap_or_default(),
                a.split.clone(),
                String::new(),
            ]);
        }
    }
    print!(
        "{}",
        table(
            &["Primary", "Secondary", "State", "Differs", "Since", "Note"],
            &rows
        )
    );
}

fn one(app: &App, v: Value) -> Result<()> {
    let p: PairInfo = serde_json::from_value(v).context("decode the pair")?;
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    show(app, &[p]);
    Ok(())
}

pub fn run(app: &App, c: PairCommand) -> Result<i32> {
    match c {
        PairCommand::Create(a) => {
            let v = call(
                app,
                &a.dir,
                Request::PairCreate {
                    primary: a.primary,
                    secondary: a.secondary,
                },
            )?;
            one(app, v)?;
        }
        PairCommand::Split(a) => {
            let areas = a
                .areas
                .iter()
                .map(|s| parse_area(s))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let v = call(
                app,
                &a.dir,
                Request::PairSplit {
                    primary: a.primary,
                    areas,
                },
            )?;
            one(app, v)?;
        }
        PairCommand::Resync(a) => {
            let areas = a
                .areas
                .iter()
                .map(|s| parse_area(s))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let v = call(
                app,
                &a.dir,
                Request::PairResync {
                    primary: a.primary,
                    areas,
                },
            )?;
            if app.global.json {
                println!("{v}");
            } else {
                let copied = v["copied"]["bytes"].as_u64().unwrap_or(0);
                one(app, v["pair"].clone())?;
                app.say(format!("resync copied {}", bytes(copied)));
            }
        }
        PairCommand::List(d) => {
            let v = call(app, &d, Request::PairList)?;
            let pairs: Vec<PairInfo> = serde_json::from_value(v).context("decode the pairs")?;
            show(app, &pairs);
            if !app.global.json {
                println!("{} pair(s)", pairs.len());
            }
        }
        PairCommand::Delete(a) => {
            call(
                app,
                &a.dir,
                Request::PairDelete {
                    primary: a.primary.clone(),
                },
            )?;
            app.say(format!("dissolved the pair of {}", a.primary));
        }
    }
    Ok(exit::OK)
}
