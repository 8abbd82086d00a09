//! The volume engine's host-free backup policies (seed 004): a table of source volume,
//! destination target, schedule, route and freeze mode, held in the catalog, and the runner
//! that backs volumes up at each occurrence with no client involved ([`runner`]).
//!
//! # Where the table lives, and why
//! In the catalog (`volume_policies`, `policy_runs`; see `kura_catalog`'s `policies.rs`),
//! not in a file of the daemon's state directory: every daemon sharing a catalog reads the
//! same table at each look, so a table applied through any of them — or by `kura policy
//! apply` with no daemon running — takes effect everywhere without a restart; it is
//! replaced in one transaction, so nothing ever sees half of it; and each run row is the
//! claim of its occurrence, the scheduler's exactly-once mechanism
//! ([`kura_catalog::ClaimOn::Policy`]), so a volume hosted by several daemons is backed up
//! once per occurrence.
//!
//! # Validation
//! [`validate`] checks the *whole* table before anything is stored and reports every bad
//! entry with its field and reason: an unknown volume (or one no host may use), a schedule
//! that does not parse or never runs, a target that is neither a URL nor a catalog target,
//! one that cannot be opened now (unreachable, not a repository, the daemon's password
//! does not open it), an unknown route, and duplicates (the same volume and target twice).
//! [`apply`] stores a table only when there is nothing to report.
//!
//! # Who knows what
//! The daemon knows the catalog, schedules and the volume engine; it does not know target
//! credentials, options or traffic limits. Those come from the binary as a [`PolicyEnv`],
//! as jobs' come as a [`crate::JobRunner`].

pub mod runner;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use kura_catalog::{Catalog, Kind, PolicyRow, PolicyRunRow};
use kura_schedule::{Schedule, Tz};
use kura_types::{PolicyEntry, PolicyProblem, PolicyRun, PolicyTable, PolicyView};
use kura_volume::{Engine, RepoAccess, VolumeStore};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// What the binary tells the daemon about targets and routes.
pub trait PolicyEnv: Send + Sync {
    /// Whether a backup to `url` could start now: the target answers, holds a repository,
    /// and the daemon's password opens it. `Err`: why not.
    fn check_target(&self, url: &str) -> std::result::Result<(), String>;
    /// Whether a traffic rule of this process names `route` as its path.
    fn known_route(&self, route: &str) -> bool;
    /// How a policy backup opens `url` (the daemon's password and deadline), paced by the
    /// limits of `route` besides the target's own; `target_name` is the catalog name the
    /// policy used, if it used one.
    fn access(
        &self,
        url: &str,
        target_name: Option<&str>,
        route: Option<&str>,
    ) -> std::result::Result<RepoAccess, String>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    volume: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyResultLabel {
    volume: String,
    target: String,
    result: String,
}

/// The policies' metrics.
struct PolicyMetrics {
    last_result: Family<PolicyLabel, Gauge>,
    last_end: Family<PolicyLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    runs: Family<PolicyResultLabel, Counter>,
}

impl PolicyMetrics {
    fn new(m: &crate::metrics::Metrics) -> PolicyMetrics {
        let p = PolicyMetrics {
            last_result: Family::default(),
            last_end: Family::default(),
            runs: Family::default(),
        };
        m.register(
            "policy_last_result",
            "How the policy's last run ended: 1 normally (a snapshot), 0 abnormally",
            p.last_result.clone(),
        );
        m.register(
            "policy_last_end_timestamp_seconds",
            "When the policy's last run ended (Unix time)",
            p.last_end.clone(),
        );
        m.register("policy_runs", "Policy runs by result", p.runs.clone());
        p
    }

    fn ended(&self, e: &PolicyEntry, ok: bool) {
        let l = PolicyLabel {
            volume: e.volume.clone(),
            target: e.target.clone(),
        };
        self.last_result.get_or_create(&l).set(i64::from(ok));
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        self.last_end.get_or_create(&l).set(now);
        self.runs
            .get_or_create(&PolicyResultLabel {
                volume: e.volume.clone(),
                target: e.target.clone(),
                result: if ok { "succeeded" } else { "failed" }.into(),
            })
            .inc();
    }
}

/// The volumes a daemon hosts (`kura serve --nbd-listen`): their engine, and how policy
/// backups reach their targets.
pub struct Volumes {
    pub engine: Arc<Engine>,
    pub env: Arc<dyn PolicyEnv>,
    metrics: PolicyMetrics,
}

impl Volumes {
    pub fn new(engine: Arc<Engine>, env: Arc<dyn PolicyEnv>, d: &crate::Daemon) -> Volumes {
        Volumes {
            engine,
            env,
            metrics: PolicyMetrics::new(&d.metrics),
        }
    }

    pub fn store(&self) -> &VolumeStore {
        self.engine.store()
    }
}

/// Whether a policy's target is a URL (or an absolute path) rather than a catalog name.
pub(crate) fn is_url(target: &str) -> bool {
    target.contains("://") || target.starts_with('/')
}

/// Where a target resolves to: a URL as given, or a catalog target's URL. `Err`: why it
/// names nothing usable.
fn resolve_target(catalog: &Catalog, target: &str) -> std::result::Result<String, String> {
    if target.is_empty() {
        return Err("empty: give a repository URL or a catalog target name".into());
    }
    if is_url(target) {
        return Ok(target.to_string());
    }
    if target.starts_with('.') || target.starts_with('~') {
        return Err(format!(
            "{target:?} is a relative path: give an absolute path (the daemon's working \
             directory is not yours) or a catalog target name"
        ));
    }
    match catalog.resource(target) {
        Ok(r) if r.kind == Kind::Target => r
            .target_url()
            .map(str::to_string)
            .map_err(|e| format!("catalog target {target:?} has no usable URL: {e}")),
        Ok(r) => Err(format!(
            "{target:?} is a catalog {}, not a target",
            r.kind.as_str()
        )),
        Err(kura_catalog::Error::UnknownResource(_)) => Err(format!(
            "unknown target {target:?}: neither a repository URL (/path, s3://…) nor a \
             catalog target (kura resource list)"
        )),
        Err(e) => Err(format!("looking {target:?} up in the catalog: {e}")),
    }
}

/// Check a whole table (module docs): every entry with its resolved target URL, or every
/// problem found. `store` is the volume engine's store the entries' volumes must be in.
pub fn validate(
    table: &PolicyTable,
    catalog: &Catalog,
    store: &VolumeStore,
    env: &dyn PolicyEnv,
    zone: Tz,
) -> std::result::Result<Vec<(PolicyEntry, String)>, Vec<PolicyProblem>> {
    let mut problems = Vec::new();
    let mut resolved = Vec::new();
    // Each URL is checked once however many entries name it.
    let mut checked: HashMap<String, std::result::Result<(), String>> = HashMap::new();
    let paths: Vec<String> = catalog
        .resources()
        .map(|rs| {
            rs.into_iter()
                .filter(|r| r.kind == Kind::Path)
                .map(|r| r.name)
                .collect()
        })
        .unwrap_or_default();
    for (i, e) in table.policy.iter().enumerate() {
        let mut bad = |field: &str, reason: String| {
            problems.push(PolicyProblem {
                entry: i + 1,
                volume: e.volume.clone(),
                field: field.into(),
                reason,
            })
        };
        match store.info(&e.volume) {
            Ok(v) if v.meta.work => bad(
                "volume",
                format!(
                    "{} is a backup session's working volume, not a source",
                    e.volume
                ),
            ),
            Ok(v) if v.meta.secondary_of.is_some() => bad(
                "volume",
                format!(
                    "{} is the secondary of a mirror pair, not a source (name its primary)",
                    e.volume
                ),
            ),
            Ok(_) => {}
            Err(kura_volume::Error::NotFound(_)) => bad(
                "volume",
                format!(
                    "unknown volume {:?} in {} (kura volume list)",
                    e.volume,
                    store.dir().display()
                ),
            ),
            Err(err) => bad("volume", format!("volume {:?}: {err}", e.volume)),
        }
        match Schedule::parse(&e.schedule, zone) {
            Ok(s) if s.next_after(Utc::now()).is_none() => {
                bad("schedule", format!("{:?} never runs again", e.schedule))
            }
            Ok(_) => {}
            Err(err) => bad("schedule", err.to_string()),
        }
        if let Some(route) = &e.route
            && !paths.contains(route)
            && !env.known_route(route)
        {
            bad(
                "route",
                format!(
                    "unknown route {route:?}: no catalog path and no [[traffic]] rule's path \
                     of that name"
                ),
            );
        }
        let url = match resolve_target(catalog, &e.target) {
            Ok(url) => url,
            Err(why) => {
                bad("target", why);
                continue;
            }
        };
        let check = checked
            .entry(url.clone())
            .or_insert_with(|| env.check_target(&url));
        if let Err(why) = check {
            bad(
                "target",
                format!("{} cannot be backed up to now: {why}", e.target),
            );
        }
        if let Some(first) = resolved
            .iter()
            .position(|(p, u): &(PolicyEntry, String)| p.volume == e.volume && *u == url)
        {
            bad(
                "entry",
                format!(
                    "duplicate of policy {}: the same volume and target (one entry per \
                     volume and destination)",
                    first + 1
                ),
            );
        }
        resolved.push((e.clone(), url));
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

/// Why a table was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Bad entries, every one of them; nothing was applied.
    #[error("{} bad policy entr{}; nothing was applied", .0.len(), if .0.len() == 1 { "y" } else { "ies" })]
    Invalid(Vec<PolicyProblem>),
    #[error(transparent)]
    Catalog(#[from] kura_catalog::Error),
}

/// Validate `table` whole and, if nothing is wrong with it, make it the policy table.
pub fn apply(
    table: &PolicyTable,
    catalog: &Catalog,
    store: &VolumeStore,
    env: &dyn PolicyEnv,
    zone: Tz,
) -> std::result::Result<usize, ApplyError> {
    let entries = validate(table, catalog, store, env, zone).map_err(ApplyError::Invalid)?;
    catalog.replace_policies(&entries)?;
    Ok(entries.len())
}

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A run row as reported.
pub fn run_view(r: &PolicyRunRow) -> PolicyRun {
    PolicyRun {
        due: rfc3339(r.due),
        daemon: r.daemon.clone(),
        state: r.state.as_str().into(),
        reason: r.reason.clone(),
        snapshot: r.snapshot.clone(),
        task: r.task.clone(),
        finished: r.finished.map(rfc3339),
    }
}

/// An entry's next occurrence after now (`None`: a schedule that never runs again, or no
/// longer parses). The one place a policy's next run is worked out.
pub fn next_run(p: &PolicyRow, zone: Tz) -> Option<chrono::DateTime<Utc>> {
    Schedule::parse(&p.entry.schedule, zone)
        .ok()?
        .next_after(Utc::now())
}

/// The policy table as reported: each entry with its last run and its next.
pub fn views(catalog: &Catalog, zone: Tz) -> kura_catalog::Result<Vec<PolicyView>> {
    let mut out = Vec::new();
    for p in catalog.policies()? {
        let last = catalog.policy_runs(p.id, 1)?.first().map(run_view);
        out.push(PolicyView {
            next_run: next_run(&p, zone)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            target_url: p.target_url,
            entry: p.entry,
            last,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_to_urls_or_say_why_not() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path().join("c.db").to_str().unwrap()).unwrap();
        c.add_local_target("t0", "/srv/t0").unwrap();
        assert_eq!(resolve_target(&c, "t0").unwrap(), "/srv/t0");
        assert_eq!(resolve_target(&c, "/srv/x").unwrap(), "/srv/x");
        assert_eq!(
            resolve_target(&c, "s3://b/p?endpoint=http://h:1").unwrap(),
            "s3://b/p?endpoint=http://h:1"
        );
        let why = resolve_target(&c, "nowhere").unwrap_err();
        assert!(why.contains("unknown target \"nowhere\""), "{why}");
        let why = resolve_target(&c, "./rel").unwrap_err();
        assert!(why.contains("relative path"), "{why}");
        let why = resolve_target(&c, "t0.medium").unwrap_err();
        assert!(why.contains("not a target"), "{why}");
        assert!(resolve_target(&c, "").is_err());
    }
}
