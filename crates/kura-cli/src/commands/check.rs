use anyhow::{Context, Result};
use kura_repo::Repository;
use kura_repo::check::{CheckOptions, CheckReport, check_repository};
use kura_repo::lock::RepoLock;
use kura_repo::progress::Progress;

use crate::cli::CheckArgs;
use crate::{App, exit};

/// Check an open repository under a shared lock (none with `no_lock`): `kura check`, and
/// the daemon's check tasks.
pub fn check_open(
    app: &App,
    repo: Repository,
    read_data: bool,
    no_lock: bool,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let loc = repo.location();
    let lock = if no_lock {
        RepoLock::none(&repo)
    } else {
        RepoLock::shared_or_read_only(&repo).with_context(|| format!("lock {loc}"))?
    };
    crate::with_lock(lock, |lock| {
        let opts = CheckOptions {
            read_data,
            ..Default::default()
        };
        check_repository(repo, lock, &opts, progress, &app.cancel)
            .with_context(|| format!("check {loc}"))
    })
}

pub fn run(app: &App, a: CheckArgs) -> Result<i32> {
    let repo = app.open()?;
    let bar = app.bar();
    let report = check_open(app, repo, a.read_data, a.no_lock, &bar)?;
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        for x in &report.affected {
            println!(
                "affected: snapshot {} {}: {}",
                x.snapshot, x.path, x.problem
            );
        }
        app.say(format!(
            "checked {} snapshot(s), {} tree(s), {} pack(s), {} blob(s){}",
            report.snapshots,
            report.trees_checked,
            report.packs,
            report.blobs,
            if a.read_data {
                format!(", read {} pack(s)", report.packs_read)
            } else {
                String::new()
            }
        ));
        if report.is_ok() {
            app.say("no errors found");
        }
    }
    if report.is_ok() {
        Ok(exit::OK)
    } else {
        let snaps: std::collections::BTreeSet<_> =
            report.affected.iter().map(|a| a.snapshot.clone()).collect();
        eprintln!(
            "kura: the repository is damaged: {} error(s), {} file(s) in {} snapshot(s) affected",
            report.errors.len(),
            report.affected.len(),
            snaps.len()
        );
        Ok(exit::DAMAGED)
    }
}
