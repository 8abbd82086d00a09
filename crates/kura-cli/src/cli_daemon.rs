//! Command-line definitions of the daemon and its tokens (`kura serve`, `kura token`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the API (default 127.0.0.1:8787, or [daemon] listen). Without TLS only a
    /// loopback address is accepted
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where tasks and their logs live (default $XDG_STATE_HOME/kura, or [daemon] state_dir)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// This daemon's name in the catalog's claims and in logs (default HOST-PID)
    #[arg(long)]
    pub name: Option<String>,
    /// Time zone of schedules that name none (an IANA name; default UTC, or [daemon]
    /// timezone)
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
    /// Serve HTTPS with this certificate (PEM; with --tls-key)
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate kept in the state directory (made once;
    /// its SHA-256 fingerprint is printed)
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// Serve the API only; run no scheduled job and no volume policy
    #[arg(long)]
    pub no_scheduler: bool,
    /// Restores started through the API may write only inside this directory (default: any
    /// absolute path, or [daemon] restore_root)
    #[arg(long, value_name = "DIR")]
    pub restore_root: Option<PathBuf>,
    /// Host the volume engine too: serve the volumes of --data-dir over NBD on this address
    /// (as `kura volume serve` does; default: [daemon] nbd_listen, else no volumes) and run
    /// their backup policies (kura policy apply)
    #[arg(long, value_name = "ADDR")]
    pub nbd_listen: Option<String>,
    #[command(flatten)]
    pub dir: crate::cli_volume::VolumeDirArgs,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace the volume engine's backup policy table with the [[policy]] entries of a TOML
    /// file (volume, target, schedule, route, freeze). The whole table is checked first —
    /// unknown volumes, bad schedules, unknown or unreachable targets, unknown routes,
    /// duplicates — and applied only if every entry is good; running daemons pick it up
    Apply(PolicyApplyArgs),
    /// The policy table: each entry with its last run (how it ended) and its next run
    List,
}

#[derive(Debug, Args)]
pub struct PolicyApplyArgs {
    /// The policy table (TOML)
    pub file: PathBuf,
    #[command(flatten)]
    pub dir: crate::cli_volume::VolumeDirArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token (for `Authorization: Bearer …`); its secret is printed once and
    /// only its hash is kept, in the catalog
    Create(TokenCreateArgs),
    /// List tokens: name, created, expires, last used
    List,
    /// Revoke a token; every daemon refuses it within seconds
    Revoke(TokenNameArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The token's name (shown in task logs as who started what)
    pub name: String,
    /// Expire after this long (e.g. 30d, 12h); default: never
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenNameArgs {
    pub name: String,
}

/// `kura task …`: the tasks of the daemon this command is configured to talk to
/// (`KURA_DAEMON` and `KURA_TOKEN`, or `[daemon] url` and `token_file`).
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List the daemon's tasks, newest first
    List(TaskListArgs),
    /// One task: kind, subject, state, progress
    Show(TaskIdArgs),
    /// A task's log; with --follow, until it ends (exit code by its result)
    Log(TaskLogArgs),
    /// Cancel a running task (the work stops at its next check, repository consistent)
    Cancel(TaskIdArgs),
}

#[derive(Debug, Args)]
pub struct TaskListArgs {
    /// Only tasks in this state (running, succeeded, failed, cancelled)
    #[arg(long)]
    pub state: Option<String>,
    /// Only tasks of this kind (job-run, …)
    #[arg(long)]
    pub kind: Option<String>,
    /// Only tasks working on this (a job's name, …)
    #[arg(long)]
    pub subject: Option<String>,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    pub id: String,
}

#[derive(Debug, Args)]
pub struct TaskLogArgs {
    pub id: String,
    /// Keep printing new lines until the task ends
    #[arg(long, short)]
    pub follow: bool,
}

/// A scheduled job's policies and window (`job add`, `job edit`). Durations as everywhere
/// (`30m`, `4h`, `1h30m`); in `job edit`, `none` removes one.
#[derive(Debug, Args, Clone, Default)]
pub struct WindowArgs {
    /// Occurrences missed while no daemon ran: none (record them missed) or one (run the
    /// newest now; the default)
    #[arg(long, value_name = "POLICY")]
    pub catch_up: Option<String>,
    /// An occurrence due while the previous run still goes on: skip (the default), queue
    /// (run it after), or cancel-older
    #[arg(long, value_name = "POLICY")]
    pub overlap: Option<String>,
    /// A run not started this long after its scheduled time is recorded missed, with the
    /// reason
    #[arg(long, value_name = "DURATION")]
    pub start_within: Option<String>,
    /// The backup window, from the scheduled time: at its end --at-window-end applies
    #[arg(long, value_name = "DURATION")]
    pub finish_within: Option<String>,
    /// The longest any run may take, from its actual start: at its end --at-window-end
    /// applies
    #[arg(long, value_name = "DURATION")]
    pub max_run: Option<String>,
    /// What happens to a run still going at its window's end (or after --max-run): cancel
    /// (the default; the repository stays consistent, no snapshot, what was uploaded is
    /// reused by the next run; a run predicted to overrun is cancelled early) or finish
    /// (run on, report the overrun)
    #[arg(long, value_name = "ACTION")]
    pub at_window_end: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobEditArgs {
    /// Job name or number
    pub job: String,
    /// A new schedule
    #[arg(long, conflicts_with = "no_schedule")]
    pub schedule: Option<String>,
    /// Remove the schedule (the job runs only when asked)
    #[arg(long)]
    pub no_schedule: bool,
    #[command(flatten)]
    pub window: WindowArgs,
}
