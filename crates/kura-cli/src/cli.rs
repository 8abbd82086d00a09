//! Command-line definitions (clap). Kept free of logic: `main.rs` dispatches to `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kura_types::{ByteSize, CalendarSpan, Duration};

/// kura — deduplicated, compressed, encrypted backups of file trees and block images.
#[derive(Debug, Parser)]
#[command(name = "kura", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Repository location: a directory, file:///path, or s3://bucket/prefix?endpoint=…
    #[arg(short = 'r', long, env = "KURA_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Also write to this target (repeatable): the repository and these form a group that
    /// gets every file (mirror); each one is a complete repository of its own
    #[arg(long = "mirror", global = true, value_name = "URL")]
    pub mirrors: Vec<String>,
    /// With --mirror or a job: how many targets must finish for a backup to succeed
    #[arg(long, global = true, default_value_t = 1)]
    pub quorum: usize,
    /// With --mirror or a job: drop a target whose writes make no progress this long (e.g. 2m)
    #[arg(long, global = true, default_value = "2m", value_parser = Duration::parse_positive)]
    pub stall_timeout: Duration,
    /// Deadline of each storage operation, retries included (e.g. 30s, 2m)
    #[arg(long, env = "KURA_TIMEOUT", global = true, value_parser = Duration::parse_positive)]
    pub timeout: Option<Duration>,
    /// Limit uploads to all targets together to this rate: 10MiB/s, 512KiB/s, or a bare
    /// number of KiB/s (restic's unit); 0: no limit
    #[arg(long, env = "KURA_LIMIT_UPLOAD", global = true, value_name = "RATE")]
    pub limit_upload: Option<String>,
    /// Limit downloads from all targets together to this rate (as --limit-upload)
    #[arg(long, env = "KURA_LIMIT_DOWNLOAD", global = true, value_name = "RATE")]
    pub limit_download: Option<String>,
    /// Read the repository password from this file (first line)
    #[arg(long, env = "KURA_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Catalog: a SQLite file path or postgres://user@host/db (default:
    /// $XDG_DATA_HOME/kura/catalog.db)
    #[arg(long, env = "KURA_CATALOG", global = true)]
    pub catalog: Option<String>,
    /// Configuration file (TOML); default: $XDG_CONFIG_HOME/kura/config.toml if it exists
    #[arg(long, env = "KURA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Machine-readable output (JSON) for listings and summaries
    #[arg(long, global = true)]
    pub json: bool,
    /// Print less (no progress bars)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output (-v info, -vv debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up files, directories, images or block devices
    Backup(Box<BackupArgs>),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List the contents of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot
    Restore(RestoreArgs),
    /// Write one file (or an image) from a snapshot to standard output
    Dump(DumpArgs),
    /// Verify the repository
    Check(CheckArgs),
    /// Remove snapshots by id or by a retention policy
    Forget(ForgetArgs),
    /// Delete data no snapshot references
    Prune(PruneArgs),
    /// Manage passphrases (key files)
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove stale locks
    Unlock(UnlockArgs),
    /// Repair a damaged repository: rebuild the index, replace damaged snapshots
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Storage targets: health probes
    #[command(subcommand)]
    Target(TargetCommand),
    /// Backups recorded in the catalog, with their copies and sections
    Backups(BackupsArgs),
    /// Copy the sections of a backup each of its targets lacks from one that has them, so
    /// that every target ends with a complete copy
    Heal(HealArgs),
    /// The catalog database itself
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// The resource inventory: workers, targets, media, paths, copy engines
    #[command(subcommand)]
    Resource(ResourceCommand),
    /// Job definitions and their runs
    #[command(subcommand)]
    Job(JobCommand),
    /// Volumes of the volume engine, and serving them over NBD
    #[command(subcommand)]
    Volume(crate::cli_volume::VolumeCommand),
    /// Mirror pairs of volumes: duplex writes, split (freeze the secondary), resync
    #[command(subcommand)]
    Pair(crate::cli_volume::PairCommand),
    /// Run the daemon: scheduled jobs, tasks, the REST API (/api/v1) and /metrics
    Serve(crate::cli_daemon::ServeArgs),
    /// API tokens of the daemon
    #[command(subcommand)]
    Token(crate::cli_daemon::TokenCommand),
    /// The tasks of a running daemon (KURA_DAEMON and KURA_TOKEN, or [daemon] url and
    /// token_file): list, show, follow a log, cancel
    #[command(subcommand)]
    Task(crate::cli_daemon::TaskCommand),
    /// The volume engine's backup policies: volumes backed up on a schedule by the daemon,
    /// with no client involved
    #[command(subcommand)]
    Policy(crate::cli_daemon::PolicyCommand),
    /// Tape libraries: a virtual one for tests, status, loading and unloading
    #[command(subcommand)]
    Library(crate::cli_tape::LibraryCommand),
    /// Tapes: labels, pools, media sets, states, mount requests
    #[command(subcommand)]
    Media(crate::cli_tape::MediaCommand),
    /// Backups on tape: copy from a repository, list, restore
    #[command(subcommand)]
    Tape(crate::cli_tape::TapeCommand),
}

#[derive(Debug, Subcommand)]
pub enum ResourceCommand {
    /// Register a resource (a target also gets its implicit medium NAME.medium)
    Add(ResourceAddArgs),
    /// Declare that WORKER reaches TARGET over PATH
    Route(RouteArgs),
    /// List resources: number, kind, name, state, process, stream
    List(ResourceListArgs),
    /// One resource: configuration, state, allocations, routes and events
    Show(ResourceNameArgs),
    /// Put a resource back in service
    Enable(ResourceNameArgs),
    /// Take a resource out of service (maintenance); running jobs keep what they hold
    Disable(ResourceDisableArgs),
    /// Delete a resource (its medium and routes go with it)
    Remove(ResourceNameArgs),
    /// Probe targets (all, or the named ones) and record the result as their health
    Probe(ResourceProbeArgs),
}

#[derive(Debug, Args)]
pub struct ResourceAddArgs {
    /// worker, target, medium, path or copy-engine
    pub kind: String,
    /// Name (letters, digits, '-', '_', '.', ':', '@')
    pub name: String,
    /// For a target: its URL (a directory, file:///path or s3://bucket/prefix?…)
    pub url: Option<String>,
    /// Streams it serves at once (default: 1; the local worker and path: 64)
    #[arg(long)]
    pub slots: Option<i64>,
    /// A target with labelled sequential media (tape): no implicit medium
    #[arg(long)]
    pub sequential: bool,
    /// For a medium: the (sequential) target it belongs to
    #[arg(long)]
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    pub worker: String,
    pub path: String,
    pub target: String,
}

#[derive(Debug, Args)]
pub struct ResourceListArgs {
    /// Only this kind (worker, target, medium, path, copy-engine)
    #[arg(long)]
    pub kind: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResourceNameArgs {
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ResourceDisableArgs {
    pub name: String,
    /// Why (recorded in the resource's events)
    #[arg(long, default_value = "maintenance")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ResourceProbeArgs {
    /// Targets or media to probe (default: every target)
    pub names: Vec<String>,
    /// Size of the probe object in bytes
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Define a job
    Add(Box<JobAddArgs>),
    /// List job definitions with their last run
    List,
    /// One job: definition and recent runs with their streams
    Show(JobShowArgs),
    /// Delete a job definition (its runs and backups stay recorded)
    Remove(JobNameArgs),
    /// Run a job now: secure its targets, back up, record the copies in the catalog
    Run(JobNameArgs),
    /// Change a job's schedule, policies and window (checked whole; nothing applied on
    /// an error)
    Edit(Box<crate::cli_daemon::JobEditArgs>),
}

#[derive(Debug, Args)]
pub struct JobAddArgs {
    /// Name (not only digits: numbers name jobs by number)
    pub name: String,
    /// What to back up: a path, an image, a volume
    #[arg(long)]
    pub object: String,
    /// When it runs (kept for the scheduler)
    #[arg(long)]
    pub schedule: Option<String>,
    /// How many disjoint subsystems (targets) each run writes to
    #[arg(long, default_value_t = 2)]
    pub redundancy: i64,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub window: crate::cli_daemon::WindowArgs,
    #[command(flatten)]
    pub tape: crate::cli_tape::TapeJobArgs,
}

/// How a job run uses its targets; shared by `job add` and `backup --redundancy` (with the
/// global `--quorum` and `--stall-timeout`).
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Use only these targets (repeatable; default: any usable target)
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// Command run before the data is read (e.g. quiesce a database); its failure fails the run
    #[arg(long)]
    pub pre: Option<String>,
    /// Command run after the backup, failure included (KURA_RESULT says which)
    #[arg(long)]
    pub post: Option<String>,
    /// How long each hook may take
    #[arg(long, default_value = "10m", value_parser = Duration::parse_positive)]
    pub hook_timeout: Duration,
    /// mirror (every target gets all data, at once) or failover (one target at a time; the
    /// next takes over from the first unacknowledged extent)
    #[arg(long, default_value = "mirror")]
    pub mode: String,
    /// Fail-over: the extent size, acknowledged as a unit (e.g. 64MiB, 1GiB; at least 1MiB)
    #[arg(long, default_value = "64MiB")]
    pub extent_size: ByteSize,
    /// Fail-over: move to the next target when nothing on the active one finishes this long
    #[arg(long, default_value = "2m", value_parser = Duration::parse_positive)]
    pub extent_timeout: Duration,
    /// Fail-over: move to the next target once the active one has refused connections (or had
    /// no route) this long, instead of retrying until --timeout
    #[arg(long, default_value = "1s", value_parser = Duration::parse_positive)]
    pub unreachable_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct JobShowArgs {
    /// Job name or number
    pub job: String,
    /// How many recent runs to show
    #[arg(long, default_value_t = 10)]
    pub runs: i64,
}

#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Check a target: reachability, round-trip latency, write/read/delete, free space
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Target URL (a directory, file:///path, s3://bucket/prefix?…); default: the repository
    pub url: Option<String>,
    /// Size of the probe object in bytes
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// zstd level for backups (0 = off, 1..=22)
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// FastCDC minimum chunk size in bytes
    #[arg(long, default_value_t = 256 * 1024)]
    pub chunk_min: u32,
    /// FastCDC average chunk size in bytes (a power of two)
    #[arg(long, default_value_t = 1024 * 1024)]
    pub chunk_avg: u32,
    /// FastCDC maximum chunk size in bytes
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub chunk_max: u32,
    /// Pack size target in MiB
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: u32,
    /// argon2id memory in KiB for the key file (testing only: lowers the cost of guessing)
    #[arg(long, hide = true)]
    pub kdf_memory_kib: Option<u32>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files, directories, images (with --image) or block devices
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Treat a regular file as a disk image (fixed 4 MiB chunks)
    #[arg(long)]
    pub image: bool,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's)
    #[arg(long)]
    pub host: Option<String>,
    /// Compare against this snapshot instead of the latest one of the same host and paths
    #[arg(long, conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Leave out paths matching this glob (repeatable), e.g. '*.tmp', '/home/*/.cache'
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Stay on the file system of each source directory
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// zstd level for this backup (default: the repository's)
    #[arg(long)]
    pub compression: Option<i32>,
    /// Threads reading files
    #[arg(long)]
    pub read_concurrency: Option<usize>,
    /// Memory for chunk data in flight, in MiB
    #[arg(long)]
    pub memory_mib: Option<usize>,
    /// Back up onto this many targets of the catalog (see --mode), instead of --repo
    #[arg(long)]
    pub redundancy: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot id (or unique prefix, or `latest`)
    pub snapshot: String,
    /// Path inside the snapshot (default: everything)
    pub path: Option<PathBuf>,
    /// Long listing (mode, owner, size, mtime)
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Take no lock (write nothing to the repository); a read-only repository is read
    /// without a lock anyway, with a warning
    #[arg(long)]
    pub no_lock: bool,
    /// Snapshot id (or unique prefix, or `latest`)
    #[arg(required_unless_present = "backup")]
    pub snapshot: Option<String>,
    /// Restore backup N of the catalog from whichever target holding a copy answers
    /// (healthy ones first), instead of a snapshot of --repo
    #[arg(long, conflicts_with = "snapshot")]
    pub backup: Option<i64>,
    /// Directory to restore into (for an image: a file, a block device, a directory, or an
    /// NBD export: nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)
    #[arg(short, long)]
    pub target: PathBuf,
    /// Restore only paths matching this glob (repeatable); a matching directory is restored whole
    #[arg(short, long = "include")]
    pub includes: Vec<String>,
    /// Parallel pack readers
    #[arg(long)]
    pub threads: Option<usize>,
    /// Existing entries in the target: always (replace what differs; files compared by
    /// content), if-changed (files with the snapshot's size and mtime are kept unread),
    /// if-newer (replace only what is older than the snapshot), never
    #[arg(long, default_value = "always", value_parser = ["always", "if-changed", "if-newer", "never"])]
    pub overwrite: String,
    /// Remove entries the snapshot does not have from the directories it restores whole
    #[arg(long)]
    pub delete: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Snapshot id (or unique prefix, or `latest`)
    pub snapshot: String,
    /// Path of a file inside the snapshot (an image snapshot is dumped whole; a path inside
    /// it is refused)
    pub path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Read and verify every blob (reads the whole repository)
    #[arg(long)]
    pub read_data: bool,
    /// Take no lock (write nothing to the repository); a read-only repository is checked
    /// without a lock anyway, with a warning
    #[arg(long)]
    pub no_lock: bool,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshots to remove (ids or unique prefixes); or give a policy instead
    pub snapshots: Vec<String>,
    /// Keep the n newest snapshots
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the n most recent hours that have one
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// … days
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// … weeks
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// … months
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// … years
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep snapshots taken within this span before the newest one (e.g. 30d, 1y6m, 2w;
    /// m = months)
    #[arg(long, value_name = "SPAN")]
    pub keep_within: Option<CalendarSpan>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Only consider snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Show what would be removed, remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Prune right after forgetting
    #[arg(long)]
    pub prune: bool,
    /// With --prune: as `kura prune --keep-condemned`
    #[arg(long, value_name = "DURATION", requires = "prune")]
    pub keep_condemned: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be done, change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Repack a partly used pack when at least this percentage of it is unused
    #[arg(long, default_value_t = 20.0)]
    pub repack_threshold: f64,
    /// Delete a condemned pack only this long after it was condemned (0, 30s, 90m, 1h, 2d;
    /// default 1h); running backups are protected by their locks in any case
    #[arg(long, value_name = "DURATION")]
    pub keep_condemned: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers (new index files first, then the old ones
    /// are deleted)
    Index(RepairIndexArgs),
    /// Replace snapshots whose trees or data are missing by repaired ones (tag `repaired`):
    /// files missing data are removed, unreadable directories become empty
    Snapshots(RepairSnapshotsArgs),
}

#[derive(Debug, Args)]
pub struct RepairIndexArgs {
    /// Read every pack's header, not only those no intact index file describes
    #[arg(long)]
    pub read_all_packs: bool,
    /// Show what would be done, change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RepairSnapshotsArgs {
    /// Remove each damaged snapshot once its repaired one is written
    #[arg(long)]
    pub forget: bool,
    /// Show what would be done, change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Snapshots to repair (ids or unique prefixes; default: all)
    pub snapshots: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List key files
    List,
    /// Add a passphrase
    Add(KeyAddArgs),
    /// Remove a key file (not the one in use)
    Remove(KeyRemoveArgs),
}

#[derive(Debug, Args)]
pub struct KeyAddArgs {
    /// Read the new passphrase from this file (default: prompt, or KURA_NEW_PASSWORD)
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub kdf_memory_kib: Option<u32>,
}

#[derive(Debug, Args)]
pub struct KeyRemoveArgs {
    /// Key id (or unique prefix)
    pub id: String,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock, not only stale ones (make sure no kura process uses the repository)
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Debug, Args)]
pub struct JobNameArgs {
    /// Job name or number
    pub job: String,
}

#[derive(Debug, Args)]
pub struct HealArgs {
    /// The catalog's backup number
    pub backup: i64,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupsArgs {
    #[command(subcommand)]
    pub command: Option<BackupsCommand>,
    /// Only backups of this object
    #[arg(long)]
    pub object: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Delete a backup from the catalog and from every target holding part of it (the
    /// records first, then the snapshot, then the catalog rows; finish an interrupted one
    /// with kura catalog verify --fix). Free the space with kura prune on the targets
    Forget(BackupForgetArgs),
}

#[derive(Debug, Args)]
pub struct BackupForgetArgs {
    /// The backup's number (kura backups)
    pub backup: i64,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Re-enter the backups recorded on these targets (after losing the catalog database):
    /// add the targets first (kura resource add target …), then rebuild from any of them
    Rebuild(RebuildArgs),
    /// Compare the catalog with the targets: copies claimed but missing, records missing,
    /// unknown or disagreeing, interrupted forgets; exit 4 when any is found
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Repair what was found: drop missing copies from the catalog, re-enter or delete
    /// unknown records, rewrite disagreeing ones, finish interrupted forgets
    #[arg(long)]
    pub fix: bool,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Targets (names in the catalog) to read the records from
    #[arg(
        long = "from",
        value_name = "TARGET",
        required_unless_present_any = ["volumes", "from_media"]
    )]
    pub from: Vec<String>,
    /// Read the tapes in this library (a sequential target's name) and enter the backups,
    /// media sets and tapes they hold (no password needed)
    #[arg(long, value_name = "LIBRARY", conflicts_with_all = ["from", "volumes"])]
    pub from_media: Option<String>,
    /// Also re-enter the backups listed in the volume backup records of the volume data
    /// directory (each as object `volume:NAME`, on the registered target whose URL is the
    /// record's repository)
    #[arg(long)]
    pub volumes: bool,
    #[command(flatten)]
    pub dir: crate::cli_volume::VolumeDirArgs,
}
