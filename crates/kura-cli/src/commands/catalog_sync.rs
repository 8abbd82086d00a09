//! The catalog side of commands that change repositories, and the commands that keep the
//! catalog one with the targets (the engine is `kura_manager::sync` and `::verify`):
//! - after `forget` / `prune` on a repository that is a catalog target: [`after_change`];
//! - `kura catalog verify [--fix]`: [`verify`];
//! - `kura backups forget N`: [`forget_backup`].

use anyhow::{Context, Result};
use kura_catalog::Catalog;
use kura_repo::Repository;
use serde_json::json;

use crate::{App, exit};

/// The catalog, only if the user has one: given (`--catalog`, KURA_CATALOG, the config
/// file) or the embedded default file exists. A plain repository user gets none created.
pub fn existing_catalog(app: &App) -> Result<Option<Catalog>> {
    let given = app.global.catalog.is_some() || app.config.catalog.url.is_some();
    let default_exists = crate::config::default_catalog().is_some_and(|p| p.exists());
    if given || default_exists {
        Ok(Some(app.catalog()?))
    } else {
        Ok(None)
    }
}

/// What a prune of this repository (and its `--mirror` members) must know of the sectioned
/// backups the catalog says they hold part of; nothing without a catalog. A catalog that
/// exists but cannot be read stops the prune: it could otherwise take sections for garbage.
pub fn sections_here(app: &App) -> Result<kura_repo::prune::Sections> {
    let Some(cat) = existing_catalog(app)? else {
        return Ok(Default::default());
    };
    let mut locations = vec![app.repo_location()?];
    locations.extend(app.global.mirrors.iter().cloned());
    let mut names = Vec::new();
    for loc in &locations {
        names.extend(kura_manager::sync::targets_at(&cat, loc, &same)?);
    }
    kura_manager::sync::sections_on(&cat, &names)
        .context("read the catalog for the sections of fail-over backups held here")
}

/// Do two target URLs name the same place?
pub use kura_repo::backend::same_url as same;

/// After snapshots were removed from `repo` (and its `--mirror` members): the catalog drops
/// the copies they held and the records on the targets are brought in line. The repository
/// operation has succeeded by now, so a failure here is a warning naming the way out.
pub fn after_change(app: &App, repo: &Repository) {
    if let Err(e) = sync_locations(app, repo) {
        eprintln!(
            "warning: the catalog was not brought in line with this repository: {e:#} \
             (run kura catalog verify --fix)"
        );
    }
}

fn sync_locations(app: &App, repo: &Repository) -> Result<()> {
    let Some(cat) = existing_catalog(app)? else {
        return Ok(());
    };
    let mut locations = vec![app.repo_location()?];
    locations.extend(app.global.mirrors.iter().cloned());
    let open = |url: &str| app.manager_backend(url, None);
    for loc in &locations {
        for name in kura_manager::sync::targets_at(&cat, loc, &same)? {
            let member = repo
                .member(app.backend_for(loc)?)
                .with_context(|| format!("open target {name}"))?;
            let r = kura_manager::sync::reconcile_target(&cat, &name, &member, &open, b"")
                .with_context(|| format!("update the catalog for target {name}"))?;
            for (b, s) in &r.dropped {
                app.say(format!(
                    "catalog: backup {b} has no copy of snapshot {} on {name} any more",
                    s.short()
                ));
            }
            for b in &r.forgotten {
                app.say(format!("catalog: backup {b} has no copy left (forgotten)"));
            }
            for (t, e) in &r.records_failed {
                eprintln!(
                    "warning: the catalog records on target {t} could not be updated: {e} \
                     (run kura catalog verify --fix)"
                );
            }
        }
    }
    Ok(())
}

/// `kura catalog verify [--fix]`.
pub fn verify(app: &App, fix: bool) -> Result<i32> {
    let cat = app.catalog()?;
    let password = crate::password::get(app.password_file().as_deref())?;
    let open = |url: &str| app.manager_backend(url, None);
    let r = kura_manager::verify::verify(&cat, &open, &password, fix)
        .context("verify the catalog against the targets")?;
    // After a fix, what is left (a second look finds what could not be repaired).
    let left = if fix {
        kura_manager::verify::verify(&cat, &open, &password, false)
            .context("verify the catalog again after fixing")?
            .differences
    } else {
        r.differences.clone()
    };
    if app.global.json {
        let diff = |d: &kura_manager::verify::Difference| {
            json!({
                "kind": d.kind.as_str(),
                "target": d.target,
                "backup": d.backup,
                "snapshot": d.snapshot.map(|s| s.to_hex()),
                "detail": d.detail,
                "fixed": d.fixed,
            })
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "targets_checked": r.targets_checked,
                "unchecked": r.unchecked.iter().map(|(t, e)| json!({"target": t, "error": e})).collect::<Vec<_>>(),
                "differences": r.differences.iter().map(diff).collect::<Vec<_>>(),
                "remaining": left.iter().map(diff).collect::<Vec<_>>(),
            }))?
        );
    } else {
        for d in &r.differences {
            app.say(format!(
                "{}{}{}: {}{}",
                d.kind.as_str(),
                d.target
                    .as_ref()
                    .map_or(String::new(), |t| format!(" on {t}")),
                d.backup.map_or(String::new(), |b| format!(" (backup {b})")),
                d.detail,
                if d.fixed { " — fixed" } else { "" }
            ));
        }
        app.say(format!(
            "{} target(s) checked, {} difference(s){}",
            r.targets_checked.len(),
            r.differences.len(),
            if fix {
                format!(", {} left", left.len())
            } else {
                String::new()
            }
        ));
    }
    for (t, e) in &r.unchecked {
        eprintln!("warning: target {t} could not be checked: {e}");
    }
    Ok(if !left.is_empty() {
        exit::DAMAGED
    } else if !r.unchecked.is_empty() {
        exit::DEGRADED
    } else {
        exit::OK
    })
}

/// Test knob: `KURA_TEST_DIE_AFTER=forget:N` kills this process with SIGKILL after step N
/// of `backups forget` (1: marked, 2: records gone, 3: snapshots gone).
fn die_after(step: u8) {
    if std::env::var("KURA_TEST_DIE_AFTER").ok().as_deref() == Some(&format!("forget:{step}")) {
        // SAFETY: raise only sends a signal to this process.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// `kura backups forget N`.
pub fn forget_backup(app: &App, backup: i64) -> Result<i32> {
    let cat = app.catalog()?;
    let password = crate::password::get(app.password_file().as_deref())?;
    let open = |url: &str| app.manager_backend(url, None);
    let r = kura_manager::sync::forget_backup(&cat, backup, &open, &password, &die_after)
        .with_context(|| format!("forget backup {backup}"))?;
    if app.global.json {
        println!(
            "{}",
            json!({
                "backup": r.backup,
                "snapshot": r.snapshot.map(|s| s.to_hex()),
                "removed_from": r.removed_from,
                "failed": r.failed.iter().map(|(t, e)| json!({"target": t, "error": e})).collect::<Vec<_>>(),
                "complete": r.failed.is_empty(),
            })
        );
    } else if r.failed.is_empty() {
        app.say(format!(
            "backup {backup} forgotten: snapshot removed from {}",
            if r.removed_from.is_empty() {
                "no target".to_string()
            } else {
                r.removed_from.join(", ")
            }
        ));
    }
    for (t, e) in &r.failed {
        eprintln!(
            "warning: target {t}: {e}; backup {backup} stays `forgetting` (run kura catalog \
             verify --fix when the target is back)"
        );
    }
    Ok(if r.failed.is_empty() {
        exit::OK
    } else {
        exit::DEGRADED
    })
}
