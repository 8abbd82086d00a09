//! `kura volume create|list|info|resize|delete|serve|backup|restore|jobs|records|label`: the
//! volume engine's volumes (`kura_volume`) and its NBD server (`kura_nbd`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use kura_volume::control::{Client, Request};
use kura_volume::{Freeze, JobState, JobStatus, VolumeInfo, VolumeStore, parse_area};
use serde_json::json;

use crate::cli_volume::{FreezeArg, VolumeCommand, VolumeDirArgs};
use crate::exit::UsageError;
use crate::output::{bytes, table};
use crate::{App, config, exit};

/// The volume directory: `--data-dir` (KURA_VOLUMES), `[volumes] dir`, or the default.
pub(crate) fn volume_dir(app: &App, d: &VolumeDirArgs) -> Result<PathBuf> {
    Ok(
        match d
            .data_dir
            .clone()
            .or_else(|| app.config.volumes.dir.clone())
        {
            Some(d) => d,
            None => config::default_volumes().ok_or_else(|| {
                UsageError("no volume directory and no home directory: use --data-dir".into())
            })?,
        },
    )
}

pub(crate) fn store(app: &App, d: &VolumeDirArgs) -> Result<VolumeStore> {
    let dir = volume_dir(app, d)?;
    VolumeStore::open(&dir).with_context(|| format!("volume directory {}", dir.display()))
}

fn info_json(v: &VolumeInfo) -> serde_json::Value {
    json!({
        "name": v.meta.name,
        "size": v.meta.size,
        "allocated": v.allocated,
        "created": v.meta.created,
        "work": v.meta.work,
        "secondary_of": v.meta.secondary_of,
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
        let served = if d.served {
            " (as last flushed; being served)"
        } else {
            ""
        };
        match &d.reason {
            None => println!(
                "changed    {} since the last backup{served}",
                bytes(d.dirty_bytes)
            ),
            Some(why) if d.chains.iter().all(|c| !c.trusted) => {
                let tail = if why.contains("reads everything") {
                    ""
                } else {
                    "; the next backup reads everything"
                };
                println!("changed    unknown: {why}{tail}")
            }
            Some(_) => println!("changed    per repository, below"),
        }
        for c in &d.chains {
            let repo = c
                .repository
                .clone()
                .unwrap_or_else(|| c.repository_id[..16].to_string());
            let base = c.base.as_deref().map_or("-", |b| &b[..8.min(b.len())]);
            match &c.reason {
                None => println!(
                    "chain      {repo}: {} changed since snapshot {base}{served}",
                    bytes(c.dirty_bytes)
                ),
                Some(why) => println!(
                    "chain      {repo}: untrusted ({why}); the next backup there reads \
                     everything"
                ),
            }
        }
        if v.meta.work {
            println!("attribute  work (a backup session's working volume: no host I/O)");
        }
        if let Some(p) = &v.meta.secondary_of {
            println!("attribute  secondary of the mirror pair of {p} (no host I/O)");
        }
        println!("file       {}", v.path.display());
    }
}

pub fn run(app: &App, c: VolumeCommand) -> Result<i32> {
    match c {
        VolumeCommand::Create(a) => {
            let v = store(app, &a.dir)?.create_with(&a.name, a.size.bytes(), a.work)?;
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
                            match (&v.meta.secondary_of, v.meta.work) {
                                (Some(p), _) => format!("secondary of {p}"),
                                (None, true) => "work".into(),
                                (None, false) => String::new(),
                            },
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
            let v = store(app, &a.dir)?.resize(&a.name, a.size.bytes(), a.allow_shrink)?;
            show(app, &v);
        }
        VolumeCommand::Delete(a) => {
            let records = store(app, &a.dir)?.delete(&a.name, a.force)?;
            app.say(match records {
                0 => format!("deleted volume {}", a.name),
                n => format!(
                    "deleted volume {} and its {n} backup record(s) (the snapshots stay in \
                     their repositories)",
                    a.name
                ),
            });
        }
        VolumeCommand::Serve(a) => return serve(app, a),
        VolumeCommand::Backup(a) => return backup(app, a),
        VolumeCommand::Restore(a) => return restore(app, a),
        VolumeCommand::Jobs(a) => return jobs(app, a),
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
                            match (&r.area, r.incremental) {
                                (Some(a), _) => format!("area {}:{}", a.offset, a.length),
                                (None, true) => "incremental".into(),
                                (None, false) => "full".into(),
                            },
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

/// Opens repositories for a volume host's background backups (`kura volume serve` and the
/// daemon's) with the process's own target options, traffic limits and `[backup]`
/// settings; a request's route adds that route's limits.
pub(crate) struct Opener {
    pub backend: kura_repo::backend::BackendOptions,
    pub options: kura_repo::backup::BackupOptions,
    pub traffic: Arc<crate::traffic::Traffic>,
}

impl Opener {
    pub fn new(app: &App) -> Result<Opener> {
        app.resolve_traffic_names();
        Ok(Opener {
            backend: app.backend_options()?,
            options: crate::commands::backup::from_config(app),
            traffic: Arc::clone(&app.traffic),
        })
    }
}

impl kura_volume::RepoOpener for Opener {
    fn open(
        &self,
        access: &kura_volume::RepoAccess,
        cancel: &kura_repo::backup::CancelToken,
    ) -> kura_repo::Result<kura_volume::Opened> {
        let mut backend = self.backend;
        if let Some(d) = access.deadline {
            backend.policy.deadline = d;
        }
        let backend = kura_repo::backend::open(&access.url, &backend)?;
        let mut backend = self.traffic.wrap(&access.url, backend, Some(cancel));
        if let Some(route) = &access.route {
            let name = access.route_target.as_deref().unwrap_or(&access.url);
            backend = self
                .traffic
                .wrap_route(&access.url, name, route, backend, Some(cancel));
        }
        let repo = kura_repo::Repository::open(backend, &access.password)?;
        let lock = kura_repo::lock::RepoLock::shared(&repo)?;
        let repo = repo.load_index()?;
        Ok(kura_volume::Opened {
            repo,
            lock,
            options: self.options.clone(),
        })
    }
}

fn serve(app: &App, a: crate::cli_volume::VolumeServeArgs) -> Result<i32> {
    let st = store(app, &a.dir)?;
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("listen on {}", a.listen))?;
    let only = (!a.volumes.is_empty()).then(|| a.volumes.clone());
    let opener = Opener::new(app)?;
    // Holds what it serves from now until it stops (SIGINT cancels the app's token), client
    // or not; however this ends, what it holds is closed cleanly.
    let host = kura_volume::Host::start(
        st,
        listener,
        only,
        Some(Arc::new(opener)),
        app.cancel.clone(),
    )?;
    let addr = host.addr();
    // The address first, alone on stdout: scripts and tests read it (port 0 picks one).
    println!("nbd://{addr}");
    if !app.global.quiet {
        eprintln!(
            "serving {} volume(s) on nbd://{addr}/NAME: {}",
            host.served().len(),
            host.served().join(", ")
        );
    }
    host.wait().with_context(|| format!("serve on {addr}"))?;
    Ok(exit::OK)
}

fn backup(app: &App, a: crate::cli_volume::VolumeBackupArgs) -> Result<i32> {
    let st = store(app, &a.dir)?;
    let area = a.area.as_deref().map(parse_area).transpose()?;
    if area.is_some() && matches!(a.freeze, FreezeArg::Session) {
        return Err(UsageError(
            "--area backs up a split area of the volume's mirror pair (kura pair split \
             --area); --freeze session backs up the whole volume"
                .into(),
        )
        .into());
    }
    if let Some(c) = Client::connect(st.dir()) {
        return background(app, &a, area, c);
    }
    let url = repository_url(app)?;
    let repo = app.open()?;
    let loc = repo.location();
    let lock = kura_repo::lock::RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
    let done = crate::with_lock(lock, |lock| {
        let repo = repo
            .load_index()
            .with_context(|| format!("load index of {loc}"))?;
        let opts = crate::commands::backup::from_config(app);
        let bar = app.bar();
        match area {
            Some(area) => kura_volume::backup_area(
                &st,
                &a.name,
                area,
                &url,
                &repo,
                lock,
                &opts,
                &bar,
                &app.cancel,
            )
            .with_context(|| format!("back up area {area} of volume {} to {loc}", a.name)),
            None => kura_volume::backup_volume(
                &st,
                &a.name,
                &url,
                &repo,
                lock,
                &opts,
                &bar,
                &app.cancel,
            )
            .with_context(|| format!("back up volume {} to {loc}", a.name)),
        }
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
        let what = match &done.record.area {
            Some(r) => format!(
                "volume {} area {}:{} (split at {})",
                a.name, r.offset, r.length, r.split
            ),
            None => format!("volume {}", a.name),
        };
        app.say(format!(
            "{what}: snapshot {} ({}, read {} of {}, {} new)",
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

/// The repository's URL for the server and the records: as given, endpoint and options
/// included, a local path made absolute (the server's working directory is not ours, and a
/// record must find the repository again from anywhere).
fn repository_url(app: &App) -> Result<String> {
    let repository = app.repo_location()?;
    if repository.contains("://") {
        return Ok(repository);
    }
    Ok(std::path::absolute(&repository)
        .with_context(|| format!("repository path {repository}"))?
        .display()
        .to_string())
}

/// This invocation's storage deadline for the volume server to use instead of its own.
fn timeout_ms(app: &App) -> Result<Option<u64>> {
    Ok(app
        .timeout()?
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// A served volume: its server freezes it (or takes a split area as frozen) and copies in
/// the background.
fn background(
    app: &App,
    a: &crate::cli_volume::VolumeBackupArgs,
    area: Option<kura_types::Extent>,
    mut c: Client,
) -> Result<i32> {
    let repository = repository_url(app)?;
    let password = crate::password::get(app.password_file().as_deref())?;
    let freeze = match a.freeze {
        FreezeArg::Auto => Freeze::Auto,
        FreezeArg::Session => Freeze::Session,
        FreezeArg::Split => Freeze::Split,
    };
    let req = Request::Backup {
        volume: a.name.clone(),
        freeze,
        area,
        repository: repository.clone(),
        password,
        timeout_ms: timeout_ms(app)?,
    };
    let v = c
        .call(&req)
        .with_context(|| format!("back up served volume {} to {repository}", a.name))?;
    let mut job: JobStatus = serde_json::from_value(v).context("decode the job")?;
    if app.global.json {
        println!("{}", json!({"message_type": "accepted", "job": job}));
    } else {
        if let Some(why) = &job.full_reason {
            eprintln!("reading the whole volume: {why}");
        }
        let how = match (&job.freeze, &job.work_volume, &job.area) {
            (_, _, Some(r)) => format!(
                "the split of area {}:{} of its mirror pair at {}",
                r.offset, r.length, r.split
            ),
            (Freeze::Session, Some(w), _) => format!("a backup session (working volume {w})"),
            _ => "splitting its mirror pair".to_string(),
        };
        app.say(format!(
            "accepted: volume {} frozen by {how}; backing up in the background as job {}",
            a.name, job.id
        ));
    }
    if !a.wait {
        return Ok(exit::OK);
    }
    let bar = app.bar();
    kura_repo::progress::Progress::start(&bar, "backup", Some(job.bytes_total));
    let mut shown = 0;
    while job.state == JobState::Running {
        std::thread::sleep(std::time::Duration::from_millis(200));
        job = serde_json::from_value(c.call(&Request::Job { id: job.id })?)
            .context("decode the job")?;
        kura_repo::progress::Progress::advance(&bar, job.bytes_done.saturating_sub(shown), 0);
        shown = shown.max(job.bytes_done);
    }
    kura_repo::progress::Progress::finish(&bar);
    print_job(app, &job);
    Ok(match (job.state, job.failure) {
        (JobState::Succeeded, _) => exit::OK,
        (_, Some(f)) => exit::failure_code(f),
        (_, None) => exit::FATAL,
    })
}

/// `kura volume restore SNAP NAME`: through the server when one runs, else in this process.
fn restore(app: &App, a: crate::cli_volume::VolumeRestoreArgs) -> Result<i32> {
    let st = store(app, &a.dir)?;
    let started = std::time::Instant::now();
    let done: kura_volume::VolumeRestore = if let Some(mut c) = Client::connect(st.dir()) {
        if a.resize {
            return Err(UsageError(
                "--resize: a volume server runs on this data directory; a served volume is not \
                 resized (stop the server first)"
                    .into(),
            )
            .into());
        }
        let repository = repository_url(app)?;
        let req = Request::Restore {
            volume: a.name.clone(),
            repository: repository.clone(),
            password: crate::password::get(app.password_file().as_deref())?,
            timeout_ms: timeout_ms(app)?,
            snapshot: a.snapshot.clone(),
            force: a.force,
            threads: a.threads.or(app.config.restore.threads),
        };
        let v = c.call(&req).with_context(|| {
            format!(
                "restore snapshot {} of {repository} into served volume {}",
                a.snapshot, a.name
            )
        })?;
        serde_json::from_value(v).context("decode the restore's outcome")?
    } else {
        let repo = app.open()?;
        let loc = repo.location();
        let lock =
            kura_repo::lock::RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
        crate::with_lock(lock, |lock| {
            let repo = repo
                .load_index()
                .with_context(|| format!("load index of {loc}"))?;
            let snap = repo.find_snapshot(&a.snapshot)?;
            let threads = a
                .threads
                .or(app.config.restore.threads)
                .unwrap_or_else(|| kura_repo::restore::RestoreOptions::default().threads);
            let bar = app.bar();
            kura_volume::restore_volume(
                &st,
                &a.name,
                a.resize,
                &repo,
                lock,
                &snap,
                threads.max(1),
                &bar,
                &app.cancel,
            )
            .with_context(|| {
                format!(
                    "restore snapshot {} of {loc} into volume {}",
                    snap.id.short(),
                    a.name
                )
            })
        })?
    };
    let secs = started.elapsed().as_secs_f64();
    if app.global.json {
        println!(
            "{}",
            json!({"message_type": "summary", "restore": done, "duration_seconds": secs})
        );
    } else {
        for d in &done.damaged {
            eprintln!("damaged: {d}");
        }
        app.say(format!(
            "volume {}{}: restored snapshot {} ({}){} in {secs:.1} s",
            a.name,
            if done.created { " (created)" } else { "" },
            &done.snapshot[..8.min(done.snapshot.len())],
            bytes(done.size),
            if done.served {
                " through its server"
            } else {
                ""
            },
        ));
    }
    if !done.damaged.is_empty() {
        eprintln!(
            "warning: {} damaged blob(s): the volume holds a mix of old and restored data, and              its change tracking is untrusted (exit code {})",
            done.damaged.len(),
            exit::INCOMPLETE
        );
        return Ok(exit::INCOMPLETE);
    }
    Ok(exit::OK)
}

fn print_job(app: &App, j: &JobStatus) {
    if app.global.json {
        println!("{}", json!({"message_type": "summary", "job": j}));
        return;
    }
    match j.state {
        JobState::Succeeded => app.say(format!(
            "job {}: volume {} backed up: snapshot {} ({})",
            j.id,
            j.volume,
            j.snapshot.as_deref().map_or("?", |s| &s[..8.min(s.len())]),
            if j.incremental { "incremental" } else { "full" }
        )),
        JobState::Failed => eprintln!(
            "job {}: volume {}: backup failed: {}",
            j.id,
            j.volume,
            j.error.clone().unwrap_or_default()
        ),
        JobState::Running => {}
    }
}

fn jobs(app: &App, a: crate::cli_volume::VolumeJobsArgs) -> Result<i32> {
    let st = store(app, &a.dir)?;
    let mut c = Client::connect(st.dir()).ok_or_else(|| {
        UsageError(format!(
            "no volume server runs on {} (background backups live in the server)",
            st.dir().display()
        ))
    })?;
    let all: Vec<JobStatus> = match a.id {
        Some(id) => vec![serde_json::from_value(c.call(&Request::Job { id })?)?],
        None => serde_json::from_value(c.call(&Request::Jobs)?)?,
    };
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.volume.clone(),
                format!("{:?}", j.freeze).to_lowercase(),
                format!("{:?}", j.state).to_lowercase(),
                format!("{} / {}", bytes(j.bytes_done), bytes(j.bytes_total)),
                j.session
                    .as_ref()
                    .map(|s| bytes(s.copied_bytes))
                    .unwrap_or_default(),
                j.snapshot
                    .as_deref()
                    .map(|s| s[..8.min(s.len())].to_string())
                    .or_else(|| j.error.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "Job",
                "Volume",
                "Freeze",
                "State",
                "Progress",
                "Copied before write",
                "Snapshot"
            ],
            &rows
        )
    );
    Ok(exit::OK)
}
