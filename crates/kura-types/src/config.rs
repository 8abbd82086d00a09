//! Typed configuration the catalog stores as JSON: a job's run settings ([`JobSettings`])
//! and a resource's configuration ([`ResourceConfig`]: a target's [`TargetConfig`], a
//! medium's [`MediumConfig`]).
//!
//! Reading is strict: a field that is not known, or does not fit its type, is a
//! [`ConfigError`] naming the job or resource and the field — never a silent default. A
//! field left out (or `null`) takes its default, so what older catalogs hold (`{}`, or every
//! field written out) reads as it did. Adding a field is therefore a catalog schema change:
//! an older kura would refuse the new field, and the catalog's migration version already
//! makes an older kura refuse a newer catalog as a whole.

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::Duration;
use crate::error::ConfigError;
use crate::size::ByteSize;
use crate::window::{CatchUp, Overlap, WindowEnd};

/// A JSON object read field by field, so that each error names its field.
struct Fields<'a> {
    owner: &'a str,
    map: Map<String, Value>,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    fn new(owner: &'a str, v: Value, known: &'static [&'static str]) -> Result<Self, ConfigError> {
        match v {
            Value::Object(map) => Ok(Fields { owner, map, known }),
            other => Err(ConfigError::new(
                owner,
                None,
                format!(
                    "the configuration is not a JSON object but {}",
                    kind(&other)
                ),
            )),
        }
    }

    /// The field `name`, or `None` when absent or `null`.
    fn take<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, ConfigError> {
        debug_assert!(self.known.contains(&name));
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| ConfigError::new(self.owner, Some(name), e.to_string())),
        }
    }

    /// Refuse whatever field is left.
    fn finish(self) -> Result<(), ConfigError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(ConfigError::new(
                self.owner,
                Some(k),
                format!("unknown field (known: {})", self.known.join(", ")),
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parse stored JSON text, naming `owner` on error.
fn parse_text(owner: &str, text: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text)
        .map_err(|e| ConfigError::new(owner, None, format!("not valid JSON: {e}")))
}

/// How a job's runs use their targets: what `kura job add` and `kura backup --redundancy`
/// take as flags, and what the catalog keeps with a job definition. (The job's mode and
/// redundancy are columns of their own.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobSettings {
    /// How many targets must finish for a mirrored run to succeed.
    pub quorum: usize,
    /// Fail-over: the extent size, acknowledged as a unit.
    pub extent_size: ByteSize,
    /// Fail-over: move to the next target when nothing on the active one finishes this long.
    pub extent_timeout: Duration,
    /// Fail-over: give up on a target that refused connections this long.
    pub unreachable_timeout: Duration,
    /// Use only these targets (empty: any usable target).
    pub targets: Vec<String>,
    /// Command run before the data is read.
    pub pre: Option<String>,
    /// Command run after the backup, failure included.
    pub post: Option<String>,
    /// How long each hook may take.
    pub hook_timeout: Duration,
    /// Mirror: drop a target whose writes make no progress this long.
    pub stall_timeout: Duration,
    /// Scheduled runs: occurrences missed while no daemon ran.
    pub catch_up: CatchUp,
    /// Scheduled runs: an occurrence due while the previous run still goes on.
    pub overlap: Overlap,
    /// Scheduled runs: a run not started this long after its scheduled time is recorded
    /// missed (none: it may start any time before the next occurrence).
    pub start_within: Option<Duration>,
    /// Scheduled runs: the window, from the scheduled time; at its end `at_window_end`
    /// applies.
    pub finish_within: Option<Duration>,
    /// Any run: the longest it may run, from its actual start; at its end `at_window_end`
    /// applies.
    pub max_run: Option<Duration>,
    /// What happens to a run still going at its window's end or after `max_run`.
    pub at_window_end: WindowEnd,
    /// A tape job: each run copies snapshots of the repository on the job's object (a target
    /// name) onto tape, instead of backing the object up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tape: Option<TapeJob>,
}

/// What a tape job copies and where (`kura tape backup` as a job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TapeJob {
    /// Library targets; two or more write a mirror.
    pub libraries: Vec<String>,
    pub pool: String,
    /// Copy every snapshot of the repository (the media set skips those it holds); else the
    /// newest.
    #[serde(default)]
    pub all: bool,
    /// Remove the copied snapshots from the repository once read back from every library.
    #[serde(default, rename = "move")]
    pub move_snapshots: bool,
    /// How long to wait for a writable tape.
    #[serde(default = "TapeJob::default_mount_timeout")]
    pub mount_timeout: Duration,
}

impl TapeJob {
    fn default_mount_timeout() -> Duration {
        Duration::from_mins(60)
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            quorum: 1,
            extent_size: ByteSize::mib(64),
            extent_timeout: Duration::from_mins(2),
            unreachable_timeout: Duration::from_secs(1),
            targets: Vec::new(),
            pre: None,
            post: None,
            hook_timeout: Duration::from_mins(10),
            stall_timeout: Duration::from_mins(2),
            catch_up: CatchUp::default(),
            overlap: Overlap::default(),
            start_within: None,
            finish_within: None,
            max_run: None,
            at_window_end: WindowEnd::default(),
            tape: None,
        }
    }
}

impl JobSettings {
    const FIELDS: &'static [&'static str] = &[
        "quorum",
        "extent_size",
        "extent_timeout",
        "unreachable_timeout",
        "targets",
        "pre",
        "post",
        "hook_timeout",
        "stall_timeout",
        "catch_up",
        "overlap",
        "start_within",
        "finish_within",
        "max_run",
        "at_window_end",
        "tape",
    ];

    /// The smallest extent a fail-over run may use.
    pub const MIN_EXTENT: ByteSize = ByteSize::mib(1);

    /// Read settings as stored (JSON text); `owner` names them in errors (`job nightly`).
    pub fn from_json(owner: &str, text: &str) -> Result<Self, ConfigError> {
        Self::from_value(owner, parse_text(owner, text)?)
    }

    /// Read settings from a JSON value; absent or `null` fields take their defaults.
    pub fn from_value(owner: &str, v: Value) -> Result<Self, ConfigError> {
        let mut f = Fields::new(owner, v, Self::FIELDS)?;
        let d = JobSettings::default();
        let s = JobSettings {
            quorum: f.take("quorum")?.unwrap_or(d.quorum),
            extent_size: f.take("extent_size")?.unwrap_or(d.extent_size),
            extent_timeout: f.take("extent_timeout")?.unwrap_or(d.extent_timeout),
            unreachable_timeout: f
                .take("unreachable_timeout")?
                .unwrap_or(d.unreachable_timeout),
            targets: f.take("targets")?.unwrap_or(d.targets),
            pre: f.take("pre")?,
            post: f.take("post")?,
            hook_timeout: f.take("hook_timeout")?.unwrap_or(d.hook_timeout),
            stall_timeout: f.take("stall_timeout")?.unwrap_or(d.stall_timeout),
            catch_up: f.take("catch_up")?.unwrap_or(d.catch_up),
            overlap: f.take("overlap")?.unwrap_or(d.overlap),
            start_within: f.take("start_within")?,
            finish_within: f.take("finish_within")?,
            max_run: f.take("max_run")?,
            at_window_end: f.take("at_window_end")?.unwrap_or(d.at_window_end),
            tape: f.take("tape")?,
        };
        f.finish()?;
        Ok(s)
    }

    /// The settings as stored.
    pub fn to_json(&self) -> String {
        // Infallible: plain fields, no maps with non-text keys.
        serde_json::to_string(self).expect("configuration serializes")
    }

    /// Check the settings for a job securing `redundancy` targets: the quorum within it, an
    /// extent of at least [`Self::MIN_EXTENT`], every timeout longer than zero.
    pub fn check(&self, owner: &str, redundancy: usize) -> Result<(), ConfigError> {
        let bad = |field: &str, why: String| Err(ConfigError::new(owner, Some(field), why));
        if self.quorum == 0 || self.quorum > redundancy.max(1) {
            return bad(
                "quorum",
                format!(
                    "{} must be between 1 and the redundancy ({redundancy})",
                    self.quorum
                ),
            );
        }
        if self.extent_size < Self::MIN_EXTENT {
            return bad(
                "extent_size",
                format!(
                    "{} is below the smallest, {}",
                    self.extent_size,
                    Self::MIN_EXTENT
                ),
            );
        }
        for (field, d) in [
            ("extent_timeout", self.extent_timeout),
            ("unreachable_timeout", self.unreachable_timeout),
            ("hook_timeout", self.hook_timeout),
            ("stall_timeout", self.stall_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "must be longer than zero".into());
            }
        }
        for (field, d) in [
            ("start_within", self.start_within),
            ("finish_within", self.finish_within),
            ("max_run", self.max_run),
        ] {
            if d.is_some_and(Duration::is_zero) {
                return bad(
                    field,
                    "must be longer than zero (leave it out for none)".into(),
                );
            }
        }
        if let (Some(s), Some(f)) = (self.start_within, self.finish_within)
            && s >= f
        {
            return bad(
                "start_within",
                format!("{s} leaves no time to run in the window (finish_within {f})"),
            );
        }
        if let Some(t) = &self.tape {
            if t.libraries.is_empty() || t.libraries.iter().any(|l| l.trim().is_empty()) {
                return bad("tape", "names no library (or an empty one)".into());
            }
            if t.pool.trim().is_empty() {
                return bad("tape", "names no pool".into());
            }
            if t.mount_timeout.is_zero() {
                return bad("tape", "mount_timeout must be longer than zero".into());
            }
        }
        if let Some(t) = self.targets.iter().find(|t| t.trim().is_empty()) {
            return bad("targets", format!("{t:?} is not a target name"));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for JobSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        JobSettings::from_value("job settings", Value::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A target's configuration: where it is and what is known of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetConfig {
    /// Its URL (a directory, `file:///…`, `s3://bucket/prefix?…`).
    pub url: String,
    /// Labelled media, added one by one (no implicit medium).
    #[serde(skip_serializing_if = "is_false")]
    pub sequential: bool,
    /// The id of the repository it held when a job or `init` last used it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

impl TargetConfig {
    const FIELDS: &'static [&'static str] = &["url", "sequential", "repository"];

    pub fn new(url: impl Into<String>) -> Self {
        TargetConfig {
            url: url.into(),
            sequential: false,
            repository: None,
        }
    }

    pub fn from_value(owner: &str, v: Value) -> Result<Self, ConfigError> {
        let mut f = Fields::new(owner, v, Self::FIELDS)?;
        let url = f
            .take("url")?
            .ok_or_else(|| ConfigError::new(owner, Some("url"), "missing: a target needs a URL"))?;
        let t = TargetConfig {
            url,
            sequential: f.take("sequential")?.unwrap_or(false),
            repository: f.take("repository")?,
        };
        f.finish()?;
        Ok(t)
    }
}

/// A medium's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MediumConfig {
    /// The medium a target that is not sequential gets when it is added (`NAME.medium`).
    #[serde(skip_serializing_if = "is_false")]
    pub implicit: bool,
}

impl MediumConfig {
    const FIELDS: &'static [&'static str] = &["implicit"];

    pub fn from_value(owner: &str, v: Value) -> Result<Self, ConfigError> {
        let mut f = Fields::new(owner, v, Self::FIELDS)?;
        let m = MediumConfig {
            implicit: f.take("implicit")?.unwrap_or(false),
        };
        f.finish()?;
        Ok(m)
    }
}

/// A resource's configuration, by what the resource is. Workers, paths and copy engines take
/// none yet (`None`, stored as `null`; `{}` reads as it too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ResourceConfig {
    Target(TargetConfig),
    Medium(MediumConfig),
    None,
}

/// Which configuration a resource of some kind has (the catalog maps its kinds onto these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Target,
    Medium,
    None,
}

impl ResourceConfig {
    /// Read a resource's configuration as stored (JSON text); `owner` names it in errors
    /// (`target t1`).
    pub fn from_json(kind: ConfigKind, owner: &str, text: &str) -> Result<Self, ConfigError> {
        Self::from_value(kind, owner, parse_text(owner, text)?)
    }

    pub fn from_value(kind: ConfigKind, owner: &str, v: Value) -> Result<Self, ConfigError> {
        Ok(match kind {
            ConfigKind::Target => ResourceConfig::Target(TargetConfig::from_value(owner, v)?),
            ConfigKind::Medium => ResourceConfig::Medium(MediumConfig::from_value(owner, v)?),
            ConfigKind::None => {
                Fields::new(
                    owner,
                    if v.is_null() {
                        Value::Object(Map::new())
                    } else {
                        v
                    },
                    &[],
                )?
                .finish()?;
                ResourceConfig::None
            }
        })
    }

    pub fn kind(&self) -> ConfigKind {
        match self {
            ResourceConfig::Target(_) => ConfigKind::Target,
            ResourceConfig::Medium(_) => ConfigKind::Medium,
            ResourceConfig::None => ConfigKind::None,
        }
    }

    /// The configuration as stored.
    pub fn to_json(&self) -> String {
        // Infallible: plain fields, no maps with non-text keys.
        serde_json::to_string(self).expect("configuration serializes")
    }

    pub fn target(&self) -> Option<&TargetConfig> {
        match self {
            ResourceConfig::Target(t) => Some(t),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
