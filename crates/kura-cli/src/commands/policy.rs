//! `kura policy apply FILE|list`: the volume engine's host-free backup policies
//! (`kura_daemon::policies`), and this binary's [`Env`] — how policy backups reach their
//! targets — which `kura serve` gives the daemon too.
//!
//! `apply` works on the catalog in this process: the table is validated whole against the
//! volume directory (`--data-dir`), the catalog and the targets, and stored only if nothing
//! is wrong with it (exit 2 listing every bad entry otherwise). A running daemon reads the
//! table from the catalog at its next look, so no restart and no API call is needed.

use std::sync::Arc;

use anyhow::{Context, Result};
use kura_daemon::policies::{self, ApplyError, PolicyEnv};
use kura_repo::backend::BackendOptions;
use kura_types::PolicyTable;
use kura_volume::RepoAccess;
use serde_json::json;

use crate::cli_daemon::{PolicyApplyArgs, PolicyCommand};
use crate::exit::{self, UsageError};
use crate::output::table;
use crate::{App, traffic::Traffic};

/// The longest a target check of `policy apply` waits for each storage operation.
const CHECK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Targets and routes as this binary knows them: its target options, password and
/// traffic rules.
pub(crate) struct Env {
    backend: BackendOptions,
    password: Vec<u8>,
    traffic: Arc<Traffic>,
}

impl Env {
    pub fn new(app: &App, password: Vec<u8>) -> Result<Env> {
        app.resolve_traffic_names();
        Ok(Env {
            backend: app.backend_options()?,
            password,
            traffic: Arc::clone(&app.traffic),
        })
    }
}

impl PolicyEnv for Env {
    fn check_target(&self, url: &str) -> std::result::Result<(), String> {
        let mut o = self.backend;
        o.policy.deadline = o.policy.deadline.min(CHECK_DEADLINE);
        let b = kura_repo::backend::open(url, &o).map_err(|e| e.to_string())?;
        kura_repo::Repository::open(b, &self.password)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn known_route(&self, route: &str) -> bool {
        self.traffic.names_path(route)
    }

    fn access(
        &self,
        url: &str,
        target_name: Option<&str>,
        route: Option<&str>,
    ) -> std::result::Result<RepoAccess, String> {
        let mut a = RepoAccess::new(url.to_string(), self.password.clone(), None);
        a.route = route.map(str::to_string);
        a.route_target = target_name.map(str::to_string);
        Ok(a)
    }
}

pub fn run(app: &App, c: PolicyCommand) -> Result<i32> {
    match c {
        PolicyCommand::Apply(a) => apply(app, a),
        PolicyCommand::List => list(app),
    }
}

fn apply(app: &App, a: PolicyApplyArgs) -> Result<i32> {
    let file = a.file.display().to_string();
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| UsageError(format!("policy table {file}: {e}")))?;
    let table: PolicyTable = toml::from_str(&text).map_err(|e| {
        UsageError(format!(
            "policy table {file}: {e}(expected [[policy]] entries with volume, target, \
             schedule, and optionally route and freeze = auto|session|split)"
        ))
    })?;
    let store = crate::commands::volume::store(app, &a.dir)?;
    let catalog = app.catalog()?;
    let env = Env::new(app, crate::password::get(app.password_file().as_deref())?)?;
    let zone = app.schedule_zone(None)?;
    match policies::apply(&table, &catalog, &store, &env, zone) {
        Ok(n) => {
            if app.global.json {
                let views = policies::views(&catalog, zone)?;
                println!("{}", json!({"applied": n, "policies": views}));
            } else {
                app.say(format!(
                    "applied a policy table of {n} entr{} (running daemons pick it up within \
                     a second)",
                    if n == 1 { "y" } else { "ies" }
                ));
            }
            Ok(exit::OK)
        }
        Err(ApplyError::Invalid(problems)) => {
            if app.global.json {
                println!("{}", json!({"applied": 0, "problems": problems}));
            }
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!("error: {file}: {}", ApplyError::Invalid(problems.clone()));
            Ok(exit::USAGE)
        }
        Err(ApplyError::Catalog(e)) => Err(e).context("store the policy table"),
    }
}

fn list(app: &App) -> Result<i32> {
    let catalog = app.catalog()?;
    let zone = app.schedule_zone(None)?;
    let views = policies::views(&catalog, zone)?;
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let last = match &v.last {
                None => "-".to_string(),
                Some(r) => {
                    let what = match (&r.snapshot, &r.reason) {
                        (Some(s), _) => format!(" snapshot {}", &s[..8.min(s.len())]),
                        (None, Some(why)) => format!(": {why}"),
                        (None, None) => String::new(),
                    };
                    format!("{} {}{what}", r.due, r.state)
                }
            };
            vec![
                v.entry.volume.clone(),
                v.entry.target.clone(),
                v.entry.schedule.clone(),
                v.entry.route.clone().unwrap_or_default(),
                v.entry.freeze.as_str().to_string(),
                v.next_run.clone().unwrap_or_else(|| "never".into()),
                last,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "Volume", "Target", "Schedule", "Route", "Freeze", "Next run", "Last run"
            ],
            &rows
        )
    );
    println!(
        "{} polic{}",
        views.len(),
        if views.len() == 1 { "y" } else { "ies" }
    );
    Ok(exit::OK)
}
