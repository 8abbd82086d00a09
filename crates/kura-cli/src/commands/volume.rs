//! `kura volume create|list|info|resize|delete|serve`: the volume engine's volumes
//! (`kura_volume`) and its NBD server (`kura_nbd`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use kura_volume::{VolumeInfo, VolumeStore, parse_size};
use serde_json::json;

use crate::cli::{VolumeCommand, VolumeDirArgs};
use crate::exit::UsageError;
use crate::output::{bytes, table};
use crate::{App, config, exit};

fn store(app: &App, d: &VolumeDirArgs) -> Result<VolumeStore> {
    let dir: PathBuf = match d
        .data_dir
        .clone()
        .or_else(|| app.config.volumes.dir.clone())
    {
        Some(d) => d,
        None => config::default_volumes().ok_or_else(|| {
            UsageError("no volume directory and no home directory: use --data-dir".into())
        })?,
    };
    VolumeStore::open(&dir).with_context(|| format!("volume directory {}", dir.display()))
}

fn info_json(v: &VolumeInfo) -> serde_json::Value {
    json!({
        "name": v.meta.name,
        "size": v.meta.size,
        "allocated": v.allocated,
        "created": v.meta.created,
        "work": v.meta.work,
        "label": v.meta.label,
        "mount_point": v.meta.mount_point,
        "path": v.path,
        "dirty": v.dirty,
    })
}

fn show(app: &App, v: &VolumeInfo) {
    if app.global.json {
        println!("{}", info_json(v));
    } else {
        println!("name       {}", v.meta.name);
        println!("size       {} ({} bytes)", bytes(v.meta.size), v.meta.size);
        println!("allocated  {}", bytes(v.allocated));
        println!("created    {}", v.meta.created);
        let d = &v.dirty;
        match &d.reason {
            None => println!(
                "changed    {} since the last backup{}",
                bytes(d.dirty_bytes),
                if d.served {
                    " (as last flushed; being served)"
                } else {
                    ""
                }
            ),
            Some(why) => println!("changed    unknown: {why}; the next backup reads everything"),
        }
        if v.meta.work {
            println!("attribute  work (a backup session's working volume: no host I/O)");
        }
        println!("file       {}", v.path.display());
    }
}

pub fn run(app: &App, c: VolumeCommand) -> Result<i32> {
    match c {
        VolumeCommand::Create(a) => {
            let size = parse_size(&a.size)?;
            let v = store(app, &a.dir)?.create(&a.name, size)?;
            show(app, &v);
        }
        VolumeCommand::List(d) => {
            let vols = store(app, &d)?.list()?;
            if app.global.json {
                let all: Vec<_> = vols.iter().map(info_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let rows: Vec<Vec<String>> = vols
                    .iter()
                    .map(|v| {
                        vec![
                            v.meta.name.clone(),
                            bytes(v.meta.size),
                            bytes(v.allocated),
                            v.meta.created.clone(),
                            if v.meta.work { "work" } else { "" }.into(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["Name", "Size", "Allocated", "Created", "Attributes"],
                        &rows
                    )
                );
                println!("{} volume(s)", vols.len());
            }
        }
        VolumeCommand::Info(a) => show(app, &store(app, &a.dir)?.info(&a.name)?),
        VolumeCommand::Resize(a) => {
            let size = parse_size(&a.size)?;
            let v = store(app, &a.dir)?.resize(&a.name, size, a.allow_shrink)?;
            show(app, &v);
        }
        VolumeCommand::Delete(a) => {
            store(app, &a.dir)?.delete(&a.name)?;
            app.say(format!("deleted volume {}", a.name));
        }
        VolumeCommand::Serve(a) => return serve(app, a),
        VolumeCommand::Backup(a) => return backup(app, a),
        VolumeCommand::Records(a) => {
            let rs = store(app, &a.dir)?.records(&a.name)?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&rs)?);
            } else {
                let rows: Vec<Vec<String>> = rs
                    .iter()
                    .map(|r| {
                        vec![
                            r.time.clone(),
                            r.backup[..8.min(r.backup.len())].to_string(),
                            if r.incremental { "incremental" } else { "full" }.into(),
                            r.label.clone().unwrap_or_default(),
                            r.mount_point.clone().unwrap_or_default(),
                            r.host.clone(),
                            r.repository.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "Time",
                            "Backup",
                            "Kind",
                            "Label",
                            "Mount point",
                            "Host",
                            "Repository"
                        ],
                        &rows
                    )
                );
                println!("{} record(s)", rs.len());
            }
        }
        VolumeCommand::Label(a) => {
            let v = store(app, &a.dir)?.set_labels(
                &a.name,
                a.label.as_deref(),
                a.mount_point.as_deref(),
            )?;
            show(app, &v);
        }
    }
    Ok(exit::OK)
}

fn serve(app: &App, a: crate::cli::VolumeServeArgs) -> Result<i32> {
    let st = store(app, &a.dir)?;
    for v in &a.volumes {
        st.info(v)?; // name them wrong and hear it now, not from a client
    }
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let exports = st.exports((!a.volumes.is_empty()).then(|| a.volumes.clone()));
    // The address first, alone on stdout: scripts and tests read it (port 0 picks one).
    println!("nbd://{addr}");
    if !app.global.quiet {
        let names: Vec<String> = exports.list().into_iter().map(|(n, _)| n).collect();
        eprintln!(
            "serving {} volume(s) on nbd://{addr}/NAME: {}",
            names.len(),
            names.join(", ")
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        // SIGINT: stop accepting (a connection to ourselves wakes the accept loop).
        let (stop, cancel) = (Arc::clone(&stop), app.cancel.clone());
        std::thread::spawn(move || {
            while !cancel.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            stop.store(true, Ordering::SeqCst);
            let _ = std::net::TcpStream::connect(addr);
        });
    }
    let served = kura_nbd::serve(listener, exports, kura_nbd::ServerOptions::default(), stop)
        .with_context(|| format!("serve on {addr}"));
    // Clients may still be connected: refuse their further changes and close every volume
    // cleanly, so its dirty bitmap stays trusted.
    st.shutdown().context("close the served volumes")?;
    served?;
    Ok(exit::OK)
}

fn backup(app: &App, a: crate::cli::VolumeNameArgs) -> Result<i32> {
    let st = store(app, &a.dir)?;
    let repo = app.open()?;
    let loc = repo.location();
    let lock = kura_repo::lock::RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
    let done = crate::with_lock(lock, |lock| {
        let repo = repo
            .load_index()
            .with_context(|| format!("load index of {loc}"))?;
        let opts = crate::commands::backup::from_config(app);
        let bar = app.bar();
        kura_volume::backup_volume(&st, &a.name, &repo, lock, &opts, &bar, &app.cancel)
            .with_context(|| format!("back up volume {} to {loc}", a.name))
    })?;
    let s = &done.outcome.snapshot.summary;
    if app.global.json {
        println!(
            "{}",
            json!({
                "message_type": "summary",
                "volume": a.name,
                "snapshot_id": done.outcome.id.to_hex(),
                "incremental": done.incremental,
                "full_reason": done.full_reason,
                "summary": crate::output::summary_json(s),
                "record": done.record,
            })
        );
    } else {
        if let Some(why) = &done.full_reason {
            eprintln!("reading the whole volume: {why}");
        }
        app.say(format!(
            "volume {}: snapshot {} ({}, read {} of {}, {} new)",
            a.name,
            done.outcome.id.short(),
            if done.incremental {
                "incremental"
            } else {
                "full"
            },
            bytes(s.bytes_read),
            bytes(s.total_bytes),
            bytes(s.bytes_added)
        ));
    }
    Ok(exit::OK)
}
