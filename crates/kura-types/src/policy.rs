//! Host-free backup policies of the volume engine: the policy table (seed 004's
//! configuration table: source volume, destination, schedule, route) and what is reported
//! about each entry (its last run — the backup information table — and its next run).
//!
//! The table is written by an operator (`kura policy apply FILE`, TOML `[[policy]]`
//! entries, or the same shape as JSON through `PUT /api/v1/policies`) and read strictly:
//! unknown fields are refused, so a misspelt `schedule` is an error and not a policy that
//! never runs. Whether an entry makes sense (the volume exists, the schedule parses, the
//! target answers) is checked by the daemon, which knows volumes, schedules and targets;
//! this crate only holds the shapes.

use serde::{Deserialize, Serialize};

/// How a served volume is frozen for a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Freeze {
    /// Split the mirror pair when the volume is a duplex primary, else a session.
    #[default]
    Auto,
    /// A copy-before-write session with a working volume.
    Session,
    /// Split the volume's mirror pair.
    Split,
}

impl Freeze {
    /// The word used in policy tables and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Freeze::Auto => "auto",
            Freeze::Session => "session",
            Freeze::Split => "split",
        }
    }

    /// The mode a word names (as written by [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<Freeze> {
        match s {
            "auto" => Some(Freeze::Auto),
            "session" => Some(Freeze::Session),
            "split" => Some(Freeze::Split),
            _ => None,
        }
    }
}

/// One entry of the policy table: back `volume` up to `target` at every occurrence of
/// `schedule`, over `route`, frozen by `freeze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// The source volume (a volume of the daemon's volume engine).
    pub volume: String,
    /// The destination: a repository URL (`/srv/backup`, `s3://bucket/prefix?…`) or the
    /// name of a catalog target.
    pub target: String,
    /// When: a calendar event (`daily`, `mon..fri 02:00`, `*:0/15`) or a cron expression.
    pub schedule: String,
    /// The traffic route (a catalog path's name, as `[[traffic]]` rules' `path` name it):
    /// the backup's uploads are paced by the rules of that route too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// How the volume is frozen (default `auto`).
    #[serde(default)]
    pub freeze: Freeze,
}

/// A whole policy table (`[[policy]]` entries in TOML, `{"policy": [...]}` in JSON). Applied
/// whole or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyTable {
    #[serde(default)]
    pub policy: Vec<PolicyEntry>,
}

/// Why one entry of a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyProblem {
    /// The entry's position in the table, from 1.
    pub entry: usize,
    pub volume: String,
    /// The field at fault: `volume`, `target`, `schedule`, `route`, or `entry` (a duplicate).
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy {} (volume {:?}): {}: {}",
            self.entry, self.volume, self.field, self.reason
        )
    }
}

/// One run of a policy: a row of the backup information table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyRun {
    /// The occurrence it ran for (RFC 3339, UTC).
    pub due: String,
    /// The daemon that claimed it.
    pub daemon: String,
    /// `started` (running), `succeeded` (a normal end), `failed` (an abnormal end, with
    /// its reason), `missed`, `skipped` (the volume's previous backup still ran) or
    /// `expired` (its daemon stopped renewing the claim).
    pub state: String,
    pub reason: Option<String>,
    /// The snapshot a normal end made.
    pub snapshot: Option<String>,
    /// The daemon task that ran it (its log: `GET /api/v1/tasks/{id}/log`).
    pub task: Option<String>,
    /// When it ended (RFC 3339, UTC).
    pub finished: Option<String>,
}

/// An entry as reported: the entry, where its target resolves to, its last run and its
/// next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyView {
    #[serde(flatten)]
    pub entry: PolicyEntry,
    /// The repository URL the target names (a catalog target's URL, or the URL given).
    pub target_url: String,
    /// The next occurrence (RFC 3339, UTC); none when the schedule never runs again.
    pub next_run: Option<String>,
    /// The newest run, if any.
    pub last: Option<PolicyRun>,
}
