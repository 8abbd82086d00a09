use anyhow::{Context, Result};
use kura_repo::Id;
use kura_repo::Repository;
use kura_repo::forget::{KeepPolicy, apply_policy, remove_snapshots};
use kura_repo::lock::RepoLock;
use kura_repo::prune::PruneOptions;

use crate::cli::ForgetArgs;
use crate::exit::UsageError;
use crate::output::table;
use crate::{App, exit};

pub fn run(app: &App, a: ForgetArgs) -> Result<i32> {
    let policy = KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within,
        tags: a.keep_tag.clone(),
    };
    if policy.is_empty() == a.snapshots.is_empty() {
        return Err(UsageError(
            "give either snapshot ids or a policy (--keep-last, --keep-daily, …), not both and not neither"
                .into(),
        )
        .into());
    }
    let prune_opts = PruneOptions {
        keep_condemned: super::prune::keep_condemned(a.keep_condemned),
        ..Default::default()
    };
    let repo = app.open()?;
    let loc = repo.location();
    // Forget only deletes snapshot files: a shared lock, so it runs beside backups and prunes.
    // With --prune it needs the exclusive one (one prune at a time).
    if a.prune {
        let lock = RepoLock::exclusive(&repo).with_context(|| format!("lock {loc} exclusively"))?;
        crate::with_lock(lock, |lock| {
            if forget_locked(app, &a, &policy, &repo, lock)? {
                super::prune::prune_locked(app, repo, lock, &prune_opts, &app.bar())?;
            }
            Ok(exit::OK)
        })
    } else {
        let lock = RepoLock::shared(&repo).with_context(|| format!("lock {loc}"))?;
        crate::with_lock(lock, |lock| {
            forget_locked(app, &a, &policy, &repo, lock)?;
            Ok(exit::OK)
        })
    }
}

/// Remove the snapshots; false on a dry run.
fn forget_locked<K>(
    app: &App,
    a: &ForgetArgs,
    policy: &KeepPolicy,
    repo: &Repository,
    lock: &RepoLock<K>,
) -> Result<bool> {
    let mut remove: Vec<Id> = Vec::new();
    if policy.is_empty() {
        for s in &a.snapshots {
            remove.push(repo.resolve_snapshot_id(s)?);
        }
        if !app.global.json {
            for id in &remove {
                app.say(format!("remove snapshot {}", id.short()));
            }
        }
    } else {
        let snaps: Vec<_> = repo
            .readable_snapshots()?
            .into_iter()
            .filter(|s| a.host.as_ref().is_none_or(|h| &s.snapshot.host == h))
            .collect();
        let groups = apply_policy(&snaps, policy, &chrono::Local);
        for g in &groups {
            for d in g.decisions.iter().filter(|d| !d.keep) {
                remove.push(d.id.parse()?);
            }
        }
        if app.global.json {
            println!("{}", serde_json::to_string_pretty(&groups)?);
        } else {
            for g in &groups {
                app.say(format!("host {} paths {}", g.host, g.paths.join(" ")));
                let rows: Vec<Vec<String>> = g
                    .decisions
                    .iter()
                    .map(|d| {
                        vec![
                            d.id[..8].to_string(),
                            d.time.clone(),
                            if d.keep { "keep" } else { "remove" }.to_string(),
                            d.reasons.join(","),
                        ]
                    })
                    .collect();
                app.say(table(&["ID", "Time", "Action", "Reasons"], &rows));
            }
        }
    }
    if a.dry_run {
        app.say(format!(
            "dry run: would remove {} snapshot(s)",
            remove.len()
        ));
        return Ok(false);
    }
    let n = remove_snapshots(repo, lock, &remove)?;
    super::catalog_sync::after_change(app, repo);
    if !app.global.json {
        app.say(format!("removed {n} snapshot(s)"));
    } else if policy.is_empty() {
        let ids: Vec<String> = remove.iter().map(|id| id.to_hex()).collect();
        println!("{}", serde_json::json!({ "removed": ids }));
    }
    Ok(true)
}
