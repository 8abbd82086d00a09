//! `kura library`, `kura media`, `kura tape` and `kura catalog rebuild --from-media`: thin
//! layers over `kura_tape` (devices) and `kura_manager::tape` (what goes on tape, and the
//! catalog's side).

use std::process::Command;

use anyhow::{Context, Result};
use kura_catalog::{AppendPolicy, TapeState};
use kura_manager::tape::copy::{TapeBackupOptions, tape_backup};
use kura_manager::tape::media::{LabelOptions, label_tapes, verified_for_move};
use kura_manager::tape::restore::{TapeRestoreOptions, find_tape_backup, tape_restore};
use kura_manager::tape::scan::rebuild_from_media;
use kura_manager::tape::{TapeEvents, open_library};
use kura_repo::lock::RepoLock;
use kura_repo::restore::RestoreOptions;
use kura_tape::session::{SessionOptions, unload_to_slot};
use kura_tape::vlib::{VirtualLibrary, VlibConfig, parse_barcodes};
use serde_json::json;

use crate::cli_tape::{
    LibraryCommand, MediaCommand, PoolCommand, TapeBackupArgs, TapeCommand, TapeRestoreArgs,
};
use crate::exit::UsageError;
use crate::output::{bytes, local_ms, table};
use crate::{App, exit};

/// Mount requests and notes: to standard error (an operator must see a mount request even
/// with `--quiet`), and to the `--notify` command.
struct CliEvents<'a> {
    app: &'a App,
    notify: Option<String>,
}

impl CliEvents<'_> {
    fn run_notify(&self, event: &str, library: &str, message: &str) {
        if let Some(cmd) = &self.notify {
            let r = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .env("KURA_EVENT", event)
                .env("KURA_LIBRARY", library)
                .env("KURA_MESSAGE", message)
                .status();
            if let Err(e) = r {
                eprintln!("warning: --notify command: {e}");
            }
        }
    }
}

impl TapeEvents for CliEvents<'_> {
    fn mount_request(&self, library: &str, message: &str) {
        eprintln!("kura: {library}: {message} (kura media pending lists it)");
        self.run_notify("mount-request", library, message);
    }
    fn mount_satisfied(&self, library: &str) {
        eprintln!("kura: {library}: tape came, going on");
        self.run_notify("mount-satisfied", library, "");
    }
    fn note(&self, message: &str) {
        if !self.app.global.quiet && !self.app.global.json {
            eprintln!("{message}");
        }
        tracing::info!("{message}");
    }
}

fn events(app: &App) -> CliEvents<'_> {
    CliEvents {
        app,
        notify: std::env::var("KURA_TAPE_NOTIFY")
            .ok()
            .filter(|s| !s.is_empty()),
    }
}

pub fn library(app: &App, c: LibraryCommand) -> Result<i32> {
    match c {
        LibraryCommand::Create(a) => {
            let dir = std::path::absolute(&a.dir)
                .with_context(|| format!("library directory {}", a.dir.display()))?;
            let tapes = parse_barcodes(&a.tapes).map_err(|e| UsageError(e.to_string()))?;
            // What is written after the warning (the rest of a block, the last block, a
            // filemark) must fit: at least two blocks of the default size.
            let min_ew = 2 * kura_tape::format::DEFAULT_BLOCK as u64;
            if a.early_warning.0 < min_ew {
                return Err(UsageError(format!(
                    "--early-warning must be at least {} (two tape blocks)",
                    bytes(min_ew)
                ))
                .into());
            }
            let config = VlibConfig {
                v: 1,
                drives: a.drives,
                slots: a.slots,
                import_export: a.import_export,
                capacity: a.capacity.0,
                early_warning: a.early_warning.0,
                load_delay_ms: a.load_delay.std().as_millis() as u64,
            };
            VirtualLibrary::create(&dir, config, &tapes)
                .with_context(|| format!("create virtual library {}", dir.display()))?;
            app.say(format!(
                "created virtual library {} ({} drives, {} slots, {} tapes of {}); register it: \
                 kura resource add target NAME vlib://{} --sequential",
                dir.display(),
                a.drives,
                a.slots,
                tapes.len(),
                bytes(a.capacity.0),
                dir.display()
            ));
            Ok(exit::OK)
        }
        LibraryCommand::Status(a) => {
            let cat = app.catalog()?;
            let lib = open_library(&cat, &a.library)?;
            let status = lib.changer()?.status()?;
            let shelf = match lib.virtual_library() {
                Some(v) => v.shelf()?,
                None => Vec::new(),
            };
            if app.global.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "drives": status.drives, "slots": status.slots, "shelf": shelf,
                    }))?
                );
            } else {
                let mut rows: Vec<Vec<String>> = status
                    .drives
                    .iter()
                    .map(|d| {
                        vec![
                            format!("drive {}", d.drive),
                            d.barcode.clone().unwrap_or_default(),
                            d.source_slot
                                .map_or(String::new(), |s| format!("from slot {s}")),
                        ]
                    })
                    .collect();
                rows.extend(status.slots.iter().map(|s| {
                    vec![
                        format!("slot {}", s.slot),
                        s.barcode.clone().unwrap_or_default(),
                        if s.import_export { "import/export" } else { "" }.to_string(),
                    ]
                }));
                rows.extend(
                    shelf
                        .iter()
                        .map(|b| vec!["shelf".into(), b.clone(), String::new()]),
                );
                app.say(table(&["Element", "Tape", ""], &rows));
            }
            Ok(exit::OK)
        }
        LibraryCommand::Load(a) => {
            let cat = app.catalog()?;
            let lib = open_library(&cat, &a.library)?;
            let mut ch = lib.changer()?;
            let st = ch.status()?;
            let slot = st.slot_of(&a.barcode).ok_or_else(|| {
                UsageError(format!("{} is not in a slot of {}", a.barcode, a.library))
            })?;
            ch.load(slot, a.drive)?;
            app.say(format!(
                "loaded {} from slot {slot} into drive {}",
                a.barcode, a.drive
            ));
            Ok(exit::OK)
        }
        LibraryCommand::Unload(a) => {
            let cat = app.catalog()?;
            let lib = open_library(&cat, &a.library)?;
            let mut drive = lib.drive(a.drive)?;
            drive.unload()?;
            let mut ch = lib.changer()?;
            let st = ch.status()?;
            unload_to_slot(ch.as_mut(), &st, a.drive)?;
            app.say(format!("unloaded drive {}", a.drive));
            Ok(exit::OK)
        }
        LibraryCommand::Import(a) => {
            let v = virtual_of(app, &a.library)?;
            let slot = v.import(&a.barcode)?;
            app.say(format!("{} is in slot {slot}", a.barcode));
            Ok(exit::OK)
        }
        LibraryCommand::Export(a) => {
            let v = virtual_of(app, &a.library)?;
            v.export(&a.barcode)?;
            app.say(format!("{} is on the shelf", a.barcode));
            Ok(exit::OK)
        }
    }
}

fn virtual_of(app: &App, name: &str) -> Result<VirtualLibrary> {
    let cat = app.catalog()?;
    let lib = open_library(&cat, name)?;
    lib.virtual_library()
        .cloned()
        .ok_or_else(|| UsageError(format!("{name} is not a virtual library")).into())
}

pub fn media(app: &App, c: MediaCommand) -> Result<i32> {
    let cat = app.catalog()?;
    match c {
        MediaCommand::Pool(PoolCommand::Add(a)) => {
            cat.add_pool(
                &a.name,
                a.retention.as_deref(),
                AppendPolicy::parse(&a.append)?,
            )?;
            app.say(format!("pool {} added", a.name));
            Ok(exit::OK)
        }
        MediaCommand::Pool(PoolCommand::List) => {
            let pools = cat.pools()?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&pools)?);
            } else {
                let rows: Vec<Vec<String>> = pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.retention.clone().unwrap_or_else(|| "forever".into()),
                            p.append.as_str().to_string(),
                        ]
                    })
                    .collect();
                app.say(table(&["Pool", "Retention", "Sessions"], &rows));
            }
            Ok(exit::OK)
        }
        MediaCommand::Label(a) => {
            let barcodes = match &a.tapes {
                Some(t) => parse_barcodes(t).map_err(|e| UsageError(e.to_string()))?,
                None => {
                    let lib = open_library(&cat, &a.library)?;
                    let st = lib.changer()?.status()?;
                    st.slots
                        .iter()
                        .filter_map(|s| s.barcode.clone())
                        .filter(|b| !b.is_empty() && cat.tape(b).is_err())
                        .collect()
                }
            };
            if barcodes.is_empty() {
                return Err(UsageError("no tape to label".into()).into());
            }
            let ev = events(app);
            let opts = LabelOptions {
                pool: a.pool.clone(),
                force: a.force,
                block_size: kura_tape::format::DEFAULT_BLOCK,
            };
            let out = label_tapes(&cat, &a.library, &opts, &barcodes, &ev, &app.cancel)?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for l in out.iter().filter(|l| !l.ok) {
                    eprintln!("kura: {}", l.reason.clone().unwrap_or_default());
                }
            }
            Ok(if out.iter().all(|l| l.ok) {
                exit::OK
            } else {
                exit::MEDIUM_REFUSED
            })
        }
        MediaCommand::List(a) => {
            let tapes = cat.tapes(a.library.as_deref())?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&tapes)?);
            } else {
                let rows: Vec<Vec<String>> = tapes
                    .iter()
                    .map(|t| {
                        vec![
                            t.label.clone(),
                            t.library.clone(),
                            t.pool.clone(),
                            t.state.as_str().to_string(),
                            t.media_set.as_ref().map_or(String::new(), |s| {
                                format!("{} #{}", &s[..8], t.set_seq.unwrap_or(0))
                            }),
                            bytes(t.bytes as u64),
                            t.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                app.say(table(
                    &[
                        "Label", "Library", "Pool", "State", "Set", "Written", "Reason",
                    ],
                    &rows,
                ));
            }
            Ok(exit::OK)
        }
        MediaCommand::Pending => {
            let open = cat.mount_requests(true)?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&open)?);
            } else if open.is_empty() {
                app.say("no mount request is open");
            } else {
                let rows: Vec<Vec<String>> = open
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            local_ms(m.since),
                            m.library.clone(),
                            m.message.clone(),
                        ]
                    })
                    .collect();
                app.say(table(&["Id", "Since", "Library", "Request"], &rows));
            }
            Ok(exit::OK)
        }
        MediaCommand::Retire(a) => {
            cat.set_tape_state(&a.label, TapeState::Retired, Some(&a.reason))?;
            app.say(format!("tape {} retired", a.label));
            Ok(exit::OK)
        }
        MediaCommand::Sets => {
            let sets = cat.media_sets()?;
            let mut out = Vec::new();
            for s in &sets {
                let tapes: Vec<String> =
                    cat.set_tapes(&s.id)?.into_iter().map(|t| t.label).collect();
                out.push(json!({
                    "id": s.id, "pool": s.pool, "library": s.library, "created": s.created,
                    "last_written": s.last_written, "tapes": tapes,
                }));
            }
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .map(|o| {
                        vec![
                            o["id"].as_str().unwrap_or_default()[..8].to_string(),
                            o["pool"].as_str().unwrap_or_default().to_string(),
                            o["library"].as_str().unwrap_or_default().to_string(),
                            o["tapes"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|x| x.as_str())
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                })
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                app.say(table(&["Set", "Pool", "Library", "Tapes"], &rows));
            }
            Ok(exit::OK)
        }
    }
}

pub fn tape(app: &App, c: TapeCommand) -> Result<i32> {
    match c {
        TapeCommand::Backup(a) => backup(app, a),
        TapeCommand::Restore(a) => restore(app, a),
        TapeCommand::List => {
            let cat = app.catalog()?;
            let all = cat.tape_backups()?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|b| {
                        vec![
                            b.snapshot[..8].to_string(),
                            local_ms(b.taken),
                            b.media_set[..8].to_string(),
                            format!("{} file {}", b.label, b.file),
                            bytes(b.bytes as u64),
                            b.state.clone(),
                        ]
                    })
                    .collect();
                app.say(table(
                    &["Snapshot", "Time", "Set", "Information at", "Size", "State"],
                    &rows,
                ));
            }
            Ok(exit::OK)
        }
    }
}

fn backup(app: &App, a: TapeBackupArgs) -> Result<i32> {
    let cat = app.catalog()?;
    let repo = app.open()?;
    let loc = repo.location();
    let lock = RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
    let ev = events(app);
    crate::with_lock(lock, |lock| {
        let repo = repo
            .load_index()
            .with_context(|| format!("load index of {loc}"))?;
        let snaps = if a.snapshots.is_empty() {
            repo.readable_snapshots()?
        } else {
            a.snapshots
                .iter()
                .map(|s| repo.find_snapshot(s))
                .collect::<std::result::Result<Vec<_>, _>>()?
        };
        if snaps.is_empty() {
            return Err(UsageError("the repository has no snapshot to copy".into()).into());
        }
        let opts = TapeBackupOptions {
            pool: a.pool.clone(),
            libraries: a.libraries.clone(),
            session: SessionOptions {
                block_size: a.block_size.0 as usize,
                archive_size: a.archive_size.0,
                mount_timeout: a.mount_timeout.std(),
                poll: std::time::Duration::from_millis(500),
            },
            prefetch: a.prefetch.0,
            readers: 4,
            volume_records: if a.volumes {
                volume_records(app, &a.dir, &repo.config().id.to_hex())?
            } else {
                Default::default()
            },
        };
        let report = tape_backup(&cat, &repo, &snaps, &opts, &ev, &app.cancel)?;
        let everywhere = report.complete_everywhere();
        let mut moved = Vec::new();
        if a.move_ && !everywhere.is_empty() {
            // Read each copy back before the source goes.
            for snap in verified_for_move(&cat, &report, &ev, &app.cancel)? {
                moved.push(snap.parse()?);
            }
            if !moved.is_empty() {
                kura_repo::forget::remove_snapshots(&repo, lock, &moved)?;
                super::catalog_sync::after_change(app, &repo);
            }
        }
        let failed: Vec<_> = report
            .libraries
            .iter()
            .filter(|l| l.error.is_some())
            .collect();
        if app.global.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "libraries": report.libraries,
                    "complete": everywhere,
                    "moved": moved.iter().map(|i: &kura_repo::id::Id| i.to_hex()).collect::<Vec<_>>(),
                }))?
            );
        } else {
            for l in &report.libraries {
                match &l.error {
                    None => app.say(format!(
                        "{}: {} backup(s) copied, {} already on the set; {} packs written ({} \
                         skipped), {} on {} tape(s) [{}], {} tape change(s)",
                        l.library,
                        l.copied.len(),
                        l.already.len(),
                        l.packs_written,
                        l.packs_skipped,
                        bytes(l.stats.bytes),
                        l.stats.tapes.len(),
                        l.stats.tapes.join(" "),
                        l.stats.changes
                    )),
                    Some(e) => eprintln!("kura: {}: tape backup failed: {e}", l.library),
                }
            }
            if !moved.is_empty() {
                app.say(format!(
                    "moved {} snapshot(s) to tape (kura prune frees their data)",
                    moved.len()
                ));
            }
        }
        if failed.len() == report.libraries.len() {
            let first = report
                .into_failures()
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("tape backup failed"))?;
            return Err(anyhow::Error::new(first).context("tape backup"));
        }
        Ok(if failed.is_empty() {
            exit::OK
        } else {
            exit::DEGRADED
        })
    })
}

/// The volume backup records of the volume data directory for repository `repo_id`, by
/// snapshot: what `tape backup --volumes` carries.
fn volume_records(
    app: &App,
    dir: &crate::cli_volume::VolumeDirArgs,
    repo_id: &str,
) -> Result<kura_manager::tape::copy::VolumeRecords> {
    let st = super::volume::store(app, dir)?;
    let mut out = kura_manager::tape::copy::VolumeRecords::default();
    for v in st.list()? {
        for r in st.records(&v.meta.name)? {
            if r.repository_id == repo_id {
                out.entry(r.backup.clone())
                    .or_default()
                    .push((v.meta.name.clone(), serde_json::to_vec(&r)?));
            }
        }
    }
    Ok(out)
}

fn restore(app: &App, a: TapeRestoreArgs) -> Result<i32> {
    let started = std::time::Instant::now();
    let cat = app.catalog()?;
    let b = find_tape_backup(&cat, &a.snapshot, a.library.as_deref())?;
    let password = crate::password::get(app.password_file().as_deref())?;
    let bar = app.bar();
    let ev = events(app);
    let opts = TapeRestoreOptions {
        restore: RestoreOptions {
            includes: a.includes.clone(),
            overwrite: a
                .overwrite
                .parse()
                .map_err(|e| UsageError(format!("{e}")))?,
            ..Default::default()
        },
        staging: a.staging.clone(),
        mount_timeout: a.mount_timeout.std(),
    };
    let report = tape_restore(
        &cat,
        &b,
        &password,
        &a.target,
        &opts,
        &ev,
        &bar,
        &app.cancel,
    )
    .with_context(|| format!("restore {} from tape", &b.snapshot[..8]))?;
    if !app.global.json {
        app.say(format!(
            "read {} from {} archive(s) on tape(s) {}{}",
            bytes(report.bytes_read),
            report.archives_read,
            report.tapes.join(" "),
            if report.damaged_packs.is_empty() {
                String::new()
            } else {
                format!("; {} pack(s) damaged on tape", report.damaged_packs.len())
            }
        ));
    }
    let Some(out) = &report.outcome else {
        return Ok(exit::FATAL);
    };
    Ok(super::restore::print_outcome(
        app,
        &b.snapshot,
        &a.target,
        out,
        started.elapsed().as_secs_f64(),
        &a.overwrite,
    ))
}

/// `kura catalog rebuild --from-media LIB`.
pub fn rebuild_media(app: &App, library: &str) -> Result<i32> {
    let cat = app.catalog()?;
    let ev = events(app);
    let r = rebuild_from_media(&cat, library, &ev, &app.cancel)
        .with_context(|| format!("rebuild the catalog from the tapes in {library}"))?;
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for t in &r.tapes {
            if let Some(e) = &t.error {
                eprintln!("kura: tape {}: {e}", t.label);
            }
        }
        app.say(format!(
            "{} tape(s) read: {} backup(s) entered, {} already known, {} incomplete; {} pieces",
            r.tapes.len(),
            r.added.len(),
            r.known.len(),
            r.incomplete.len(),
            r.pieces
        ));
    }
    Ok(
        if r.tapes.iter().any(|t| t.error.is_some()) || !r.incomplete.is_empty() {
            exit::INCOMPLETE
        } else {
            exit::OK
        },
    )
}

/// A tape job's run (`kura job run`, or the daemon's scheduler): the snapshots of the
/// repository on the job's object (a target) — the newest, or all — copied as `kura tape
/// backup` copies them; with `move`, removed from the repository once read back, and the
/// catalog told. Returns the report and what was moved.
#[allow(clippy::too_many_arguments)]
pub fn run_tape_job(
    cat: &kura_catalog::Catalog,
    def: &kura_catalog::JobDef,
    tape: &kura_types::TapeJob,
    open: &dyn Fn(&str) -> kura_manager::Result<std::sync::Arc<dyn kura_repo::backend::Backend>>,
    password: &[u8],
    events: &dyn TapeEvents,
    cancel: &kura_repo::backup::CancelToken,
) -> Result<(kura_manager::tape::copy::TapeBackupReport, Vec<String>)> {
    let url = cat.resource(&def.object)?.target_url()?.to_string();
    let repo = kura_repo::Repository::open(open(&url)?, password)
        .with_context(|| format!("open the repository on target {}", def.object))?;
    let loc = repo.location();
    let lock = RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
    crate::with_lock(lock, |lock| {
        let indexed = repo
            .load_index()
            .with_context(|| format!("load index of {loc}"))?;
        let mut snaps = indexed.readable_snapshots()?;
        snaps.sort_by_key(|s| s.snapshot.time);
        if !tape.all {
            snaps = snaps.pop().into_iter().collect();
        }
        if snaps.is_empty() {
            anyhow::bail!("the repository on {} has no snapshot to copy", def.object);
        }
        let opts = TapeBackupOptions {
            pool: tape.pool.clone(),
            libraries: tape.libraries.clone(),
            session: SessionOptions {
                mount_timeout: tape.mount_timeout.std(),
                ..SessionOptions::default()
            },
            prefetch: 256 << 20,
            readers: 4,
            volume_records: Default::default(),
        };
        let report = tape_backup(cat, &indexed, &snaps, &opts, events, cancel)?;
        let mut moved = Vec::new();
        if tape.move_snapshots {
            let ids: Vec<kura_repo::id::Id> = verified_for_move(cat, &report, events, cancel)?
                .iter()
                .map(|s| s.parse())
                .collect::<std::result::Result<_, _>>()?;
            if !ids.is_empty() {
                kura_repo::forget::remove_snapshots(&indexed, lock, &ids)?;
                kura_manager::sync::reconcile_target(cat, &def.object, &indexed, open, password)
                    .with_context(|| format!("update the catalog for target {}", def.object))?;
                moved = ids.iter().map(|i| i.to_hex()).collect();
            }
        }
        Ok((report, moved))
    })
}

/// `kura job run NAME` of a tape job, in this process.
pub fn run_job_here(
    app: &App,
    cat: &kura_catalog::Catalog,
    def: &kura_catalog::JobDef,
    tape: &kura_types::TapeJob,
) -> Result<i32> {
    let password = crate::password::get(app.password_file().as_deref())?;
    let ev = events(app);
    let open = |url: &str| app.manager_backend(url, None);
    let (report, moved) = run_tape_job(cat, def, tape, &open, &password, &ev, &app.cancel)?;
    if app.global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"libraries": report.libraries, "moved": moved}))?
        );
    } else {
        for l in &report.libraries {
            match &l.error {
                None => app.say(format!(
                    "{}: {} copied, {} already on the set; tapes {}",
                    l.library,
                    l.copied.len(),
                    l.already.len(),
                    l.stats.tapes.join(" ")
                )),
                Some(e) => eprintln!("kura: {}: tape backup failed: {e}", l.library),
            }
        }
    }
    let failed = report
        .libraries
        .iter()
        .filter(|l| l.error.is_some())
        .count();
    if failed == report.libraries.len() {
        let first = report
            .into_failures()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("tape job failed"))?;
        return Err(anyhow::Error::new(first).context(format!("job {}", def.name)));
    }
    Ok(if failed == 0 {
        exit::OK
    } else {
        exit::DEGRADED
    })
}
