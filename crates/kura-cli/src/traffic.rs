//! Traffic control in the CLI: `--limit-upload` / `--limit-download` and the config file's
//! `[[traffic]]` rules, turned into shared limiters ([`kura_repo::backend::Limiter`]) once
//! per process, and the targets they apply to wrapped in
//! [`kura_repo::backend::Throttled`].
//!
//! - The global flags are one upload and one download limit for all targets of the process
//!   together.
//! - A rule applies to the streams whose target it names (a target URL or a prefix of one,
//!   or a catalog target name) and, with `path`, whose secured network path it names (job
//!   runs). Without `target` and `path` it applies to every target. A rule has one limiter
//!   per direction, shared by every stream it applies to.
//! - With `timeframe`, a rule limits only while one of its windows holds (in the zone the
//!   text names, else the system's); outside them it does not limit.
//! - Every limit that applies is charged: the tightest governs.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use kura_repo::backend::throttle::RateSchedule;
use kura_repo::backend::{Backend, Limiter, Target, Throttled, parse_rate};
use kura_repo::backup::CancelToken;
use kura_schedule::{Timeframe, Tz};
use serde::Deserialize;

use crate::exit::UsageError;

/// One `[[traffic]]` entry of the config file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficRule {
    /// A target URL (or a prefix of one: `s3://bucket`, `/srv/backup`) or a catalog target
    /// name.
    pub target: Option<String>,
    /// A catalog path resource (the network route a job's stream secured).
    pub path: Option<String>,
    /// Upload and download rates (see `parse_rate`).
    pub upload: Option<String>,
    pub download: Option<String>,
    /// When the rule limits: one time frame or a list of them.
    pub timeframe: Option<OneOrMany>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// What a rule's `target` names.
#[derive(Debug, Clone)]
enum Matches {
    /// A target URL or a prefix of one (component-wise).
    Url(Target),
    /// A catalog target name.
    Name(String),
}

#[derive(Debug)]
struct Rule {
    target: Option<Matches>,
    path: Option<String>,
    upload: Option<Arc<Limiter>>,
    download: Option<Arc<Limiter>>,
}

/// Every limit of the process (see the module docs).
#[derive(Debug, Default)]
pub struct Traffic {
    upload: Option<Arc<Limiter>>,
    download: Option<Arc<Limiter>>,
    rules: Vec<Rule>,
    /// Catalog target names → URLs, looked up once when a rule names a target.
    names: OnceLock<HashMap<String, String>>,
}

/// The one rate parser's answer, as a usage error naming `field`.
fn rate(field: &str, text: &str) -> Result<Option<u64>, UsageError> {
    parse_rate(text).map_err(|e| UsageError(format!("{field}: {e}")))
}

/// The zone time frames follow unless their text names one: `TZ`, else the system's
/// (`/etc/timezone`, the `/etc/localtime` link), else UTC.
pub fn system_zone() -> Tz {
    let named = |s: &str| s.trim().trim_start_matches(':').parse::<Tz>().ok();
    if let Some(tz) = std::env::var("TZ").ok().as_deref().and_then(named) {
        return tz;
    }
    if let Some(tz) = std::fs::read_to_string("/etc/timezone")
        .ok()
        .as_deref()
        .and_then(named)
    {
        return tz;
    }
    std::fs::read_link("/etc/localtime")
        .ok()
        .and_then(|p| {
            let p = p.to_string_lossy().into_owned();
            p.split_once("zoneinfo/").and_then(|(_, z)| named(z))
        })
        .unwrap_or(Tz::UTC)
}

impl Traffic {
    /// The limits the flags and the rules ask for; a malformed rate or time frame is a
    /// usage error naming its field.
    pub fn new(
        limit_upload: Option<&str>,
        limit_download: Option<&str>,
        rules: &[TrafficRule],
        zone: Tz,
    ) -> Result<Traffic, UsageError> {
        let global = |flag: &str, text: Option<&str>| -> Result<_, UsageError> {
            Ok(match text {
                Some(t) => rate(flag, t)?
                    .map(|r| Arc::new(Limiter::fixed(format!("{flag} limit"), Some(r)))),
                None => None,
            })
        };
        let mut t = Traffic {
            upload: global("--limit-upload", limit_upload)?,
            download: global("--limit-download", limit_download)?,
            ..Traffic::default()
        };
        for (i, r) in rules.iter().enumerate() {
            t.rules.push(Self::rule(i + 1, r, zone)?);
        }
        Ok(t)
    }

    fn rule(n: usize, r: &TrafficRule, zone: Tz) -> Result<Rule, UsageError> {
        let field = |f: &str| format!("[[traffic]] rule {n}: {f}");
        if r.upload.is_none() && r.download.is_none() {
            return Err(UsageError(format!(
                "[[traffic]] rule {n}: give upload, download or both (e.g. upload = \"10MiB/s\")"
            )));
        }
        let target = match r.target.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err(UsageError(format!("{}: empty", field("target")))),
            Some(t) if t.contains("://") || t.starts_with(['/', '.']) => {
                Some(Matches::Url(Target::parse(t).map_err(|e| {
                    UsageError(format!("{}: {e}", field("target")))
                })?))
            }
            Some(name) => Some(Matches::Name(name.to_string())),
        };
        if r.path.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err(UsageError(format!("{}: empty", field("path"))));
        }
        let during = match &r.timeframe {
            None => None,
            Some(v) => Some(
                Timeframe::parse_list(v.values(), zone)
                    .map_err(|e| UsageError(format!("{}: {e}", field("timeframe"))))?,
            ),
        };
        let what = match (&r.target, &r.path) {
            (Some(t), Some(p)) => format!(" ({t} over {p})"),
            (Some(t), None) => format!(" ({t})"),
            (None, Some(p)) => format!(" (over {p})"),
            (None, None) => String::new(),
        };
        let limiter = |dir: &str, text: &Option<String>| -> Result<_, UsageError> {
            let Some(text) = text else { return Ok(None) };
            let Some(r) = rate(&field(dir), text)? else {
                return Ok(None);
            };
            let schedule = match &during {
                Some(tf) => RateSchedule::during(Some(r), tf.clone()),
                None => RateSchedule::fixed(Some(r)),
            };
            let name = format!("{dir} limit of [[traffic]] rule {n}{what}");
            Ok(Some(Arc::new(Limiter::new(name, schedule))))
        };
        Ok(Rule {
            upload: limiter("upload", &r.upload)?,
            download: limiter("download", &r.download)?,
            target,
            path: r.path.as_ref().map(|p| p.trim().to_string()),
        })
    }

    /// Whether any limit may apply at all.
    pub fn is_empty(&self) -> bool {
        self.upload.is_none() && self.download.is_none() && self.rules.is_empty()
    }

    /// Whether a rule names a path (job runs then pass their streams' routes).
    pub fn has_path_rules(&self) -> bool {
        self.rules.iter().any(|r| r.path.is_some())
    }

    /// Whether a rule names a catalog target (then [`resolve`](Self::resolve) is needed).
    pub fn names_targets(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.path.is_none() && matches!(r.target, Some(Matches::Name(_))))
    }

    /// Tell the catalog's target names (once; later calls are ignored).
    pub fn resolve(&self, names: impl FnOnce() -> HashMap<String, String>) {
        self.names.get_or_init(names);
    }

    fn target_matches(&self, m: &Option<Matches>, url: &str, name: Option<&str>) -> bool {
        match m {
            None => true,
            Some(Matches::Url(prefix)) => url_within(prefix, url),
            Some(Matches::Name(n)) => match name {
                Some(name) => name == n,
                None => self
                    .names
                    .get()
                    .and_then(|names| names.get(n))
                    .is_some_and(|u| same_target(u, url)),
            },
        }
    }

    /// Whether a rule names `path` (a route a volume policy may use).
    pub fn names_path(&self, path: &str) -> bool {
        self.rules.iter().any(|r| r.path.as_deref() == Some(path))
    }

    /// `backend` (opened from `url`) charged to the global limits and to every rule
    /// without a path that applies to `url`; unwrapped when none does.
    ///
    /// With `cancel`, uploads still waiting for their turn when it is cancelled fail at once
    /// (`kura_backend::Throttled`).
    pub fn wrap(
        &self,
        url: &str,
        backend: Arc<dyn Backend>,
        cancel: Option<&CancelToken>,
    ) -> Arc<dyn Backend> {
        let rules = self
            .rules
            .iter()
            .filter(|r| r.path.is_none() && self.target_matches(&r.target, url, None));
        self.wrap_with(backend, true, rules, cancel)
    }

    /// The per-path rules as a job run's route (`None` when there are none), cancelled
    /// with `cancel` like [`wrap`](Self::wrap).
    pub fn route(self: &Arc<Self>, cancel: Option<CancelToken>) -> Option<kura_manager::Route> {
        if !self.has_path_rules() {
            return None;
        }
        let traffic = Arc::clone(self);
        Some(Arc::new(
            move |sub: &kura_catalog::Subsystem, url: &str, backend: Arc<dyn Backend>| {
                traffic.wrap_route(url, &sub.target, &sub.path, backend, cancel.as_ref())
            },
        ))
    }

    /// A job's stream: `backend` (already [`wrap`](Self::wrap)ped) also charged to the rules
    /// naming `path` that apply to its target (`name` in the catalog, at `url`).
    pub fn wrap_route(
        &self,
        url: &str,
        name: &str,
        path: &str,
        backend: Arc<dyn Backend>,
        cancel: Option<&CancelToken>,
    ) -> Arc<dyn Backend> {
        let rules = self.rules.iter().filter(|r| {
            r.path.as_deref() == Some(path) && self.target_matches(&r.target, url, Some(name))
        });
        self.wrap_with(backend, false, rules, cancel)
    }

    fn wrap_with<'a>(
        &self,
        backend: Arc<dyn Backend>,
        global: bool,
        rules: impl Iterator<Item = &'a Rule>,
        cancel: Option<&CancelToken>,
    ) -> Arc<dyn Backend> {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        if global {
            up.extend(self.upload.iter().cloned());
            down.extend(self.download.iter().cloned());
        }
        for r in rules {
            up.extend(r.upload.iter().cloned());
            down.extend(r.download.iter().cloned());
        }
        match cancel {
            Some(c) => {
                let c = c.clone();
                Throttled::wrap_abortable(backend, up, down, Arc::new(move || c.is_cancelled()))
            }
            None => Throttled::wrap(backend, up, down),
        }
    }
}

/// Whether `url` is the target `prefix` names or lies below it: the same kind, a local path
/// below the prefix's (component-wise), or the same bucket with a key prefix below the
/// prefix's and, where the prefix names them, the same endpoint and region.
fn url_within(prefix: &Target, url: &str) -> bool {
    let Ok(target) = Target::parse(url) else {
        return false;
    };
    match (prefix, &target) {
        (Target::Local(p), Target::Local(t)) => {
            let real = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
            t.starts_with(p) || real(t).starts_with(real(p))
        }
        (Target::S3(p), Target::S3(t)) => {
            p.bucket == t.bucket
                && std::path::Path::new(&t.prefix).starts_with(&p.prefix)
                && (p.endpoint.is_none() || p.endpoint == t.endpoint)
                && (p.region.is_none() || p.region == t.region)
        }
        _ => false,
    }
}

fn same_target(a: &str, b: &str) -> bool {
    match (Target::parse(a), Target::parse(b)) {
        (Ok(a), Ok(b)) => a.same_place(&b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<TrafficRule> {
        crate::config::ConfigFile::parse(text).unwrap().traffic
    }

    fn err(up: Option<&str>, rules_text: &str) -> String {
        Traffic::new(up, None, &rules(rules_text), Tz::UTC)
            .unwrap_err()
            .0
    }

    #[test]
    fn bad_rates_and_time_frames_name_their_field() {
        let e = err(Some("fast"), "");
        assert!(
            e.starts_with("--limit-upload: invalid rate \"fast\""),
            "{e}"
        );
        let e = err(
            None,
            "[[traffic]]\nupload = \"10MiB/s\"\n[[traffic]]\ndownload = \"x\"\n",
        );
        assert!(
            e.starts_with("[[traffic]] rule 2: download: invalid rate"),
            "{e}"
        );
        let e = err(
            None,
            "[[traffic]]\nupload = \"1M\"\ntimeframe = \"mon 25:00-26:00\"\n",
        );
        assert!(
            e.starts_with("[[traffic]] rule 1: timeframe: invalid"),
            "{e}"
        );
        let e = err(None, "[[traffic]]\ntarget = \"s3-east\"\n");
        assert!(e.contains("give upload, download or both"), "{e}");
        let e = err(None, "[[traffic]]\ntarget = \"s3://\"\nupload = \"1M\"\n");
        assert!(e.starts_with("[[traffic]] rule 1: target: "), "{e}");
    }

    fn limited(b: &Arc<dyn Backend>) -> bool {
        format!("{b:?}").starts_with("Throttled")
    }

    #[test]
    fn rules_apply_to_the_targets_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("r");
        // What a rule applies to depends on the URL alone; the backend behind is any.
        let inner = |_: &str| -> Arc<dyn Backend> {
            Arc::new(kura_repo::backend::LocalBackend::new(dir.path()))
        };
        let t = Traffic::new(
            None,
            None,
            &rules(&format!(
                r#"
                [[traffic]]
                target = "s3://bkt/a?endpoint=http://h:1"
                upload = "1MiB/s"
                [[traffic]]
                target = "{}"
                download = "2MiB/s"
                [[traffic]]
                target = "nas1"
                upload = "3MiB/s"
                [[traffic]]
                path = "san-a"
                upload = "4MiB/s"
                "#,
                dir.path().display()
            )),
            Tz::UTC,
        )
        .unwrap();
        let s3 = "s3://bkt/a/b?endpoint=http://h:1";
        assert!(limited(&t.wrap(s3, inner(s3), None)));
        let other = "s3://bkt/ab?endpoint=http://h:1";
        assert!(!limited(&t.wrap(other, inner(other), None)));
        let elsewhere = "s3://bkt/a?endpoint=http://h:2";
        assert!(!limited(&t.wrap(elsewhere, inner(elsewhere), None)));
        let l = local.display().to_string();
        assert!(limited(&t.wrap(&l, inner(&l), None)));
        assert!(!limited(&t.wrap("/elsewhere", inner("/elsewhere"), None)));
        // A name: only once the catalog told what it is.
        assert!(t.names_targets());
        let nas = "/mnt/nas1/kura";
        assert!(!limited(&t.wrap(nas, inner(nas), None)));
        t.resolve(|| HashMap::from([("nas1".to_string(), nas.to_string())]));
        assert!(limited(&t.wrap(nas, inner(nas), None)));
        // A path rule: only for a stream over that path.
        let plain = t.wrap("/elsewhere", inner("/elsewhere"), None);
        assert!(!limited(&t.wrap_route(
            "/elsewhere",
            "x",
            "san-b",
            Arc::clone(&plain),
            None
        )));
        assert!(limited(&t.wrap_route(
            "/elsewhere",
            "x",
            "san-a",
            plain,
            None
        )));
        // Global flags: every target.
        let g = Traffic::new(Some("100"), None, &[], Tz::UTC).unwrap();
        assert!(limited(&g.wrap("/elsewhere", inner("/elsewhere"), None)));
        // 0 is no limit.
        let g = Traffic::new(Some("0"), Some("0"), &[], Tz::UTC).unwrap();
        assert!(!limited(&g.wrap("/elsewhere", inner("/elsewhere"), None)));
    }
}
