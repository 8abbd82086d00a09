//! Command-line definitions of tape libraries, media and tape backups (`kura library`,
//! `kura media`, `kura tape`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kura_types::{ByteSize, Duration};

#[derive(Debug, Subcommand)]
pub enum LibraryCommand {
    /// Create a file-backed virtual library in DIR (for tests, the quick start, or where no
    /// tape library is at hand); register it with `kura resource add target NAME
    /// vlib:///DIR --sequential`
    Create(LibraryCreateArgs),
    /// What is where: drives, slots, barcodes (and a virtual library's shelf)
    Status(LibraryNameArgs),
    /// Load the tape with this barcode into a drive
    Load(LibraryLoadArgs),
    /// Unload a drive's tape into its slot (or the first empty one)
    Unload(LibraryUnloadArgs),
    /// Virtual library: put a tape into an empty slot (from the shelf, or a new blank one)
    Import(LibraryBarcodeArgs),
    /// Virtual library: take a tape out onto the shelf
    Export(LibraryBarcodeArgs),
}

#[derive(Debug, Args)]
pub struct LibraryCreateArgs {
    pub dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub drives: u32,
    #[arg(long, default_value_t = 8)]
    pub slots: u32,
    /// Import/export (mail) slots, after the storage slots
    #[arg(long, default_value_t = 0)]
    pub import_export: u32,
    /// What one tape holds
    #[arg(long, default_value = "1GiB")]
    pub capacity: ByteSize,
    /// The early-warning zone before the end of each tape
    #[arg(long, default_value = "16MiB")]
    pub early_warning: ByteSize,
    /// How long the changer takes to load a tape
    #[arg(long, default_value = "0s", value_parser = Duration::parse)]
    pub load_delay: Duration,
    /// Barcodes of the blank tapes in the first slots: a list (`A01,A02`) or a sequence
    /// (`SSC001..SSC008`)
    #[arg(long, default_value = "")]
    pub tapes: String,
}

#[derive(Debug, Args)]
pub struct LibraryNameArgs {
    /// The library (a sequential target's name)
    pub library: String,
}

#[derive(Debug, Args)]
pub struct LibraryLoadArgs {
    pub library: String,
    pub barcode: String,
    #[arg(long, default_value_t = 0)]
    pub drive: u32,
}

#[derive(Debug, Args)]
pub struct LibraryUnloadArgs {
    pub library: String,
    #[arg(long, default_value_t = 0)]
    pub drive: u32,
}

#[derive(Debug, Args)]
pub struct LibraryBarcodeArgs {
    pub library: String,
    pub barcode: String,
}

#[derive(Debug, Subcommand)]
pub enum MediaCommand {
    /// Label tapes for a pool: write the label file (erasing the tape) and record them
    Label(MediaLabelArgs),
    /// List tapes: label, library, pool, state, media set and place in it, bytes
    List(MediaListArgs),
    /// Open mount requests: what an operator is asked to put into a library
    Pending,
    /// Take a tape out of use (it is never chosen for writing again)
    Retire(MediaRetireArgs),
    /// Media pools
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Media sets with their tapes
    Sets,
}

#[derive(Debug, Args)]
pub struct MediaLabelArgs {
    /// The library (a sequential target's name)
    pub library: String,
    /// The pool the tapes join
    #[arg(long)]
    pub pool: String,
    /// Barcodes to label: a list (`A01,A02`) or a sequence (`SSC001..SSC004`); default
    /// every tape in the library the catalog does not know
    #[arg(long)]
    pub tapes: Option<String>,
    /// Label a tape that already carries a kura label the catalog does not know (its
    /// contents are lost)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MediaListArgs {
    #[arg(long)]
    pub library: Option<String>,
}

#[derive(Debug, Args)]
pub struct MediaRetireArgs {
    pub label: String,
    /// Why (recorded with the tape)
    #[arg(long, default_value = "retired by the operator")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool
    Add(PoolAddArgs),
    /// List pools
    List,
}

#[derive(Debug, Args)]
pub struct PoolAddArgs {
    pub name: String,
    /// How long a media set is kept after it was last written (`30d`); then its tapes may be
    /// written again. Default: forever
    #[arg(long)]
    pub retention: Option<String>,
    /// `append`: each session goes on with the pool's newest media set; `new-set`: each
    /// session starts a new one
    #[arg(long, default_value = "append", value_parser = ["append", "new-set"])]
    pub append: String,
}

#[derive(Debug, Subcommand)]
pub enum TapeCommand {
    /// Copy snapshots of the repository (-r) to tape: management information first, then
    /// the data the media set does not hold yet
    Backup(TapeBackupArgs),
    /// Backups on tape
    List,
    /// Restore a backup from tape (asking for each tape by label)
    Restore(TapeRestoreArgs),
}

#[derive(Debug, Args)]
pub struct TapeBackupArgs {
    /// Snapshots to copy (ids or prefixes, or `latest`); default every snapshot
    pub snapshots: Vec<String>,
    /// The library (a sequential target's name); twice or more: a mirror, each library its
    /// own media set
    #[arg(long = "library", required = true)]
    pub libraries: Vec<String>,
    #[arg(long)]
    pub pool: String,
    /// Remove the snapshots from the repository once their tape copies are complete on
    /// every library and read back whole (a later `kura prune` frees their data)
    #[arg(long = "move")]
    pub move_: bool,
    /// How long to wait for a writable tape before giving up (exit 19)
    #[arg(long, default_value = "1h", value_parser = Duration::parse_positive)]
    pub mount_timeout: Duration,
    /// Tape block size
    #[arg(long, default_value = "256KiB")]
    pub block_size: ByteSize,
    /// Close an archive (a tape file: acknowledged, and a place to seek to) every this many
    /// bytes
    #[arg(long, default_value = "512MiB")]
    pub archive_size: ByteSize,
    /// How much to read ahead of the drives
    #[arg(long, default_value = "256MiB")]
    pub prefetch: ByteSize,
    /// Carry the volume engine's backup records of the snapshots copied (from the volume
    /// data directory) in their management information
    #[arg(long)]
    pub volumes: bool,
    #[command(flatten)]
    pub dir: crate::cli_volume::VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct TapeRestoreArgs {
    /// The snapshot (id or prefix, or `latest`)
    pub snapshot: String,
    #[arg(long)]
    pub target: PathBuf,
    /// Read from this library's copy (when the backup was mirrored to several)
    #[arg(long)]
    pub library: Option<String>,
    /// Only these paths (glob patterns, as `kura restore --include`); only the tape files
    /// holding them are read
    #[arg(long = "include")]
    pub includes: Vec<String>,
    #[arg(long, default_value = "always", value_parser = ["always", "if-changed", "if-newer", "never"])]
    pub overwrite: String,
    /// Where to stage the packs read from tape (default: the temporary directory)
    #[arg(long)]
    pub staging: Option<PathBuf>,
    #[arg(long, default_value = "1h", value_parser = Duration::parse_positive)]
    pub mount_timeout: Duration,
}

/// `job add` flags of a tape job: each run copies snapshots of the repository on `--object`
/// (a target's name) onto tape, as `kura tape backup` does.
#[derive(Debug, Args, Clone)]
pub struct TapeJobArgs {
    /// Make it a tape job writing to this library (repeatable: a mirror)
    #[arg(long = "tape-library", value_name = "LIBRARY")]
    pub libraries: Vec<String>,
    /// The tape job's media pool
    #[arg(long = "tape-pool", requires = "libraries")]
    pub pool: Option<String>,
    /// Copy every snapshot (the media set skips those it holds), not only the newest
    #[arg(long = "tape-all", requires = "libraries")]
    pub all: bool,
    /// Remove the copied snapshots from the repository once read back from every library
    #[arg(long = "tape-move", requires = "libraries")]
    pub move_: bool,
    /// How long a run waits for a writable tape
    #[arg(long = "tape-mount-timeout", default_value = "1h", value_parser = Duration::parse_positive)]
    pub mount_timeout: Duration,
}

impl TapeJobArgs {
    /// The job setting, when these flags make a tape job.
    pub fn setting(&self) -> Option<kura_types::TapeJob> {
        if self.libraries.is_empty() {
            return None;
        }
        Some(kura_types::TapeJob {
            libraries: self.libraries.clone(),
            pool: self.pool.clone().unwrap_or_default(),
            all: self.all,
            move_snapshots: self.move_,
            mount_timeout: self.mount_timeout,
        })
    }
}
