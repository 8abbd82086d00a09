//! Command-line definitions of the volume engine: `kura volume` and `kura pair`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kura_types::ByteSize;

#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// Pair two volumes of equal size: copy the primary onto the secondary, then duplex
    /// (every write reaches both). The secondary then refuses host I/O
    Create(PairCreateArgs),
    /// Freeze the secondary (or only --area ranges of it; called again, more areas, each
    /// frozen at its own time); later writes to the frozen part set bits in the pair's
    /// difference bitmap, durably before they are acknowledged
    Split(PairSplitArgs),
    /// Copy only the granules that differ, then duplex again (with --area: only those split
    /// areas, which rejoin while the others stay split)
    Resync(PairResyncArgs),
    /// Pairs with their state and how much differs
    List(VolumeDirArgs),
    /// Dissolve a pair (the secondary keeps what it holds)
    Delete(PairNameArgs),
}

#[derive(Debug, Args)]
pub struct PairCreateArgs {
    pub primary: String,
    pub secondary: String,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct PairSplitArgs {
    pub primary: String,
    /// Split only this area, OFFSET:LENGTH (e.g. 0:64M; on 4 MiB boundaries; repeatable;
    /// default: everything)
    #[arg(long = "area", value_name = "OFFSET:LEN")]
    pub areas: Vec<String>,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct PairResyncArgs {
    pub primary: String,
    /// Resync only this split area, exactly as it was split (repeatable; default: all)
    #[arg(long = "area", value_name = "OFFSET:LEN")]
    pub areas: Vec<String>,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct PairNameArgs {
    pub primary: String,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: a sparse file, its metadata kept outside its address space
    Create(VolumeCreateArgs),
    /// List volumes with their size and allocation
    List(VolumeDirArgs),
    /// One volume's metadata and allocation
    Info(VolumeNameArgs),
    /// Grow a volume (shrinking needs --allow-shrink); refused while it is served
    Resize(VolumeResizeArgs),
    /// Delete a volume; refused while a server runs on it. A volume with backup records
    /// needs --force (they are deleted with it)
    Delete(VolumeDeleteArgs),
    /// Serve volumes over NBD (qemu, nbdkit clients, the kernel's nbd-client) until SIGINT
    Serve(VolumeServeArgs),
    /// Back up a volume into the repository (-r): incremental (only changed 4 MiB chunks
    /// read) when the volume's change tracking for this repository is trusted and relative
    /// to a snapshot still there; otherwise everything is read, and the output says why. A served volume is frozen by its server (a
    /// pair split or a copy-before-write session), which answers "accepted" and copies in
    /// the background (see `volume jobs`, or --wait)
    Backup(VolumeBackupArgs),
    /// Restore an image snapshot of the repository (-r) into volume NAME: a new volume of
    /// the snapshot's size, or an existing one of that size (holes stay holes). A served
    /// volume is restored by its server, refused while a client is connected unless
    /// --force. Afterwards the volume's change tracking for this repository is relative to
    /// the snapshot (the next backup here is incremental); other repositories' next backups
    /// read everything. To restore into any NBD export: kura restore SNAP --target nbd://…
    Restore(VolumeRestoreArgs),
    /// Background backups of the running server, with progress
    Jobs(VolumeJobsArgs),
    /// The volume's backup records (format, label, host, mount point, time, backup)
    Records(VolumeNameArgs),
    /// Set the label and mount point copied into the volume's backup records ("" clears)
    Label(VolumeLabelArgs),
}

#[derive(Debug, Args)]
pub struct VolumeLabelArgs {
    pub name: String,
    #[arg(long)]
    pub label: Option<String>,
    #[arg(long)]
    pub mount_point: Option<String>,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct VolumeDirArgs {
    /// Where volumes live (default: [volumes] dir in the config, else
    /// $XDG_DATA_HOME/kura/volumes)
    #[arg(long, env = "KURA_VOLUMES", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    pub name: String,
    /// Size, e.g. 10G, 512M (K/M/G = KiB/MiB/GiB; a multiple of 512 bytes)
    #[arg(long)]
    pub size: ByteSize,
    /// A working volume for backup sessions' pool (refuses host I/O)
    #[arg(long)]
    pub work: bool,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct VolumeBackupArgs {
    pub name: String,
    /// How a served volume is frozen: split its pair (a duplex primary), a copy-before-write
    /// session with a working volume from the pool, or auto (split if paired, else session)
    #[arg(long, value_enum, default_value = "auto")]
    pub freeze: FreezeArg,
    /// Back up only this part of a split area of the volume's mirror pair, OFFSET:LEN: the
    /// secondary's bytes as they were when the area was split (kura pair split --area). Not
    /// a backup of the volume: its change tracking is left alone
    #[arg(long, value_name = "OFFSET:LEN")]
    pub area: Option<String>,
    /// Wait for a background backup to finish (exit status as if it ran in the foreground)
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct VolumeRestoreArgs {
    /// Snapshot id (or unique prefix, or `latest`) of an image snapshot
    pub snapshot: String,
    /// The volume to restore into (created when missing)
    pub name: String,
    /// Restore a served volume even while clients are connected (they see it change)
    #[arg(long)]
    pub force: bool,
    /// Resize an existing volume of another size to the snapshot's (not while served)
    #[arg(long)]
    pub resize: bool,
    /// Parallel pack readers
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FreezeArg {
    Auto,
    Session,
    Split,
}

#[derive(Debug, Args)]
pub struct VolumeJobsArgs {
    /// Only this job
    pub id: Option<u64>,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct VolumeNameArgs {
    pub name: String,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct VolumeDeleteArgs {
    pub name: String,
    /// Delete a volume that has backup records, and the records with it
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct VolumeResizeArgs {
    pub name: String,
    /// The new size (e.g. 20G)
    #[arg(long)]
    pub size: ByteSize,
    /// Allow a smaller size (the volume's end is discarded)
    #[arg(long)]
    pub allow_shrink: bool,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}

#[derive(Debug, Args)]
pub struct VolumeServeArgs {
    /// Address to listen on (loopback by default; there is no TLS: tunnel remote access)
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: String,
    /// Serve only these volumes (repeatable; default: all)
    #[arg(long = "volume", value_name = "NAME")]
    pub volumes: Vec<String>,
    #[command(flatten)]
    pub dir: VolumeDirArgs,
}
