//! The volume store: create, list, inspect, resize, delete, and export volumes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use kura_types::{ByteSize, Extent};
use serde::{Deserialize, Serialize};

use crate::chains::{self, Identity, Tracking};
use crate::error::io;
pub use crate::error::{Error, Result};
use crate::export::VolumeExport;
use crate::records::VolumeRecord;
use crate::session::WorkVolume;

mod pairs;
mod serve;

pub const MAGIC: &str = "KURAVOL1";
/// Volume sizes are whole 512-byte sectors (what block clients address).
pub const SECTOR: u64 = 512;
/// The largest volume: 2^60 bytes (far beyond any file system's file size limit anyway).
pub const MAX_SIZE: u64 = 1 << 60;

/// A volume's metadata (`NAME.vol`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub magic: String,
    pub v: u32,
    pub name: String,
    /// Bytes; a multiple of 512.
    pub size: u64,
    /// RFC 3339, UTC.
    pub created: String,
    /// A working volume of a backup session: refuses host I/O.
    #[serde(default)]
    pub work: bool,
    /// A label, copied into every backup record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where the host mounts the volume's file system, copied into every backup record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<String>,
    /// The primary whose mirror pair this volume is the secondary of: no host I/O, no
    /// resize or delete while paired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_of: Option<String>,
}

/// A volume as listed: metadata plus what its raw file occupies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    #[serde(flatten)]
    pub meta: VolumeMeta,
    /// Bytes allocated on disk (the rest reads as zeroes).
    pub allocated: u64,
    pub path: PathBuf,
    /// Changed-block tracking, one chain per repository: what the next backup may skip.
    pub dirty: Tracking,
}

/// Parse `OFFSET:LEN`, each a size (`0:64M`, `32MiB:8MiB`; see [`ByteSize`]).
pub fn parse_area(s: &str) -> Result<Extent> {
    let (o, l) = s
        .split_once(':')
        .ok_or_else(|| Error::Invalid(format!("area {s:?}: use OFFSET:LENGTH, e.g. 0:64M")))?;
    let num = |v: &str| -> Result<u64> {
        ByteSize::parse(v)
            .map(ByteSize::bytes)
            .map_err(|e| Error::Invalid(format!("area {s:?}: {e}")))
    };
    let (o, l) = (num(o)?, num(l)?);
    if l == 0 {
        return Err(Error::Invalid(format!("area {s:?} is empty")));
    }
    Ok(Extent::new(o, l))
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(SECTOR) || size > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "volume size {size} must be a positive multiple of {SECTOR} bytes"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "volume name {name:?}: use 1–64 letters, digits, '.', '_' or '-', not starting \
             with '.' or '-'"
        )))
    }
}

/// The volumes in one data directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    dir: PathBuf,
    /// Volumes this process has open (see `serve.rs`).
    registry: Arc<Mutex<Registry>>,
}

/// The volumes this process has open: all connections to one volume share its export, and
/// a server holds every volume it serves whether or not a client is connected.
#[derive(Debug, Default)]
struct Registry {
    open: HashMap<String, Weak<VolumeExport>>,
    held: HashMap<String, Arc<VolumeExport>>,
}

/// An exclusive hold on a volume (no server has it open); released on drop.
pub(crate) struct Exclusive(pub(crate) File);

impl VolumeStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<VolumeStore> {
        let dir = dir.into();
        // Volume data is private: a new store directory is 0700 (an existing one is left
        // as the administrator made it), every file in it 0600.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("create {}", dir.display())))?;
        Ok(VolumeStore {
            dir,
            registry: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn raw(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.raw"))
    }

    pub(crate) fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.vol"))
    }

    /// Changed-block tracking of a volume: its backup chains (`KURACBT1`).
    pub(crate) fn chains_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.chains"))
    }

    /// The single bitmap of earlier versions (`KURADBM1`, one for all repositories): never
    /// trusted, removed when the volume's chains are first opened.
    pub(crate) fn legacy_dirty_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.dirty"))
    }

    /// Open a volume's chains (held by this process from here on), given its raw file now.
    pub(crate) fn open_chains(
        &self,
        name: &str,
        size: u64,
        raw: &Identity,
    ) -> Result<chains::ChainSet> {
        let set = chains::ChainSet::open(&self.chains_path(name), size, raw)?;
        let legacy = self.legacy_dirty_path(name);
        if legacy.exists() {
            tracing::info!(
                "volume {name}: the single dirty bitmap of an earlier version is replaced by \
                 per-repository chains (the next backup to each repository reads everything)"
            );
            std::fs::remove_file(&legacy).map_err(io(format!("remove {}", legacy.display())))?;
        }
        if let Some(why) = set.untrusted_at_open() {
            tracing::info!("volume {name}: changed-block tracking restarts: {why}");
        }
        Ok(set)
    }

    pub(crate) fn write_meta(&self, m: &VolumeMeta) -> Result<()> {
        let body = serde_json::to_vec_pretty(m).map_err(|e| Error::Invalid(e.to_string()))?;
        self.write_atomic(&format!("{}.vol", m.name), &body)
    }

    /// Replace `file` in the data directory atomically and durably (temp file, fsync,
    /// rename, fsync of the directory).
    pub(crate) fn write_atomic(&self, file: &str, body: &[u8]) -> Result<()> {
        let path = self.dir.join(file);
        let tmp = self.dir.join(format!(".{file}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("create {}", tmp.display())))?;
        f.write_all(body)
            .and_then(|()| f.sync_all())
            .map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("sync {}", self.dir.display())))
    }

    /// A volume's metadata.
    pub fn meta(&self, name: &str) -> Result<VolumeMeta> {
        check_name(name)?;
        let path = self.meta_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::no_volume(name));
            }
            Err(e) => return Err(io(format!("read {}", path.display()))(e)),
        };
        let corrupt = |why: String| Error::Corrupt {
            path: path.clone(),
            why,
        };
        let m: VolumeMeta = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if m.magic != MAGIC || m.v != 1 || m.name != name {
            return Err(corrupt(format!(
                "magic {:?} version {} name {:?} (expected {MAGIC} 1 {name:?})",
                m.magic, m.v, m.name
            )));
        }
        check_size(m.size).map_err(|e| corrupt(e.to_string()))?;
        Ok(m)
    }

    /// Create a volume; `work`: a working volume for the session pool (no host I/O).
    pub fn create(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        self.create_with(name, size, false)
    }

    pub fn create_with(&self, name: &str, size: u64, work: bool) -> Result<VolumeInfo> {
        check_name(name)?;
        check_size(size)?;
        let raw = self.raw(name);
        if self.meta_path(name).exists() {
            return Err(Error::Exists(name.to_string()));
        }
        // The raw file first (create_new: never clobber), sized sparse; then the metadata
        // that makes the volume exist. A crash between leaves a stray raw file that the next
        // create of that name replaces.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&raw)
            .map_err(io(format!("create {}", raw.display())))?;
        f.set_len(size)
            .and_then(|()| f.sync_all())
            .map_err(io(format!("size {}", raw.display())))?;
        let m = VolumeMeta {
            magic: MAGIC.into(),
            v: 1,
            name: name.into(),
            size,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            work,
            label: None,
            mount_point: None,
            secondary_of: None,
        };
        self.write_meta(&m)?;
        self.info(name)
    }

    pub fn info(&self, name: &str) -> Result<VolumeInfo> {
        let meta = self.meta(name)?;
        let path = self.raw(name);
        let md = std::fs::metadata(&path).map_err(io(format!("stat {}", path.display())))?;
        if md.len() != meta.size {
            return Err(Error::Corrupt {
                path,
                why: format!(
                    "raw file is {} bytes, metadata says {}",
                    md.len(),
                    meta.size
                ),
            });
        }
        let mut dirty = chains::peek(&self.chains_path(name), meta.size, &Identity::of(&md))?;
        if !dirty.chains.is_empty() {
            // Where each chain's repository was last reached (the newest record naming it).
            let records = self.records(name).unwrap_or_default();
            for c in &mut dirty.chains {
                c.repository = records
                    .iter()
                    .rev()
                    .find(|r| r.repository_id == c.repository_id)
                    .map(|r| r.repository.clone());
            }
        }
        Ok(VolumeInfo {
            meta,
            allocated: md.blocks() * 512,
            path,
            dirty,
        })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>> {
        let mut out = Vec::new();
        let rd =
            std::fs::read_dir(&self.dir).map_err(io(format!("list {}", self.dir.display())))?;
        for entry in rd {
            let entry = entry.map_err(io(format!("list {}", self.dir.display())))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".vol")) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            out.push(self.info(name)?);
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    pub(crate) fn exclusive(&self, name: &str) -> Result<Exclusive> {
        let raw = self.raw(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&raw)
            .map_err(io(format!("open {}", raw.display())))?;
        if !crate::hold::try_lock(&f, true) {
            return Err(Error::served(name));
        }
        Ok(Exclusive(f))
    }

    /// Set (or, with an empty string, clear) a volume's label and mount point.
    pub fn set_labels(
        &self,
        name: &str,
        label: Option<&str>,
        mount_point: Option<&str>,
    ) -> Result<VolumeInfo> {
        let mut m = self.meta(name)?;
        let set = |s: &str| (!s.is_empty()).then(|| s.to_string());
        for v in [label, mount_point].into_iter().flatten() {
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(Error::Invalid(format!(
                    "{v:?}: at most 256 characters, no control characters"
                )));
            }
        }
        if let Some(l) = label {
            m.label = set(l);
        }
        if let Some(p) = mount_point {
            m.mount_point = set(p);
        }
        self.write_meta(&m)?;
        self.info(name)
    }

    /// Change a volume's size. Shrinking discards the end: it needs `allow_shrink`.
    pub fn resize(&self, name: &str, size: u64, allow_shrink: bool) -> Result<VolumeInfo> {
        let mut m = self.meta(name)?;
        check_size(size)?;
        refuse_paired(&m)?;
        if self.path(name, "pair").exists() {
            return Err(Error::Invalid(format!(
                "{name} is the primary of a mirror pair: delete the pair before resizing"
            )));
        }
        if size < m.size && !allow_shrink {
            return Err(Error::Invalid(format!(
                "shrinking {name} from {} to {size} bytes discards its end; confirm with \
                 --allow-shrink",
                m.size
            )));
        }
        let ex = self.exclusive(name)?;
        ex.0.set_len(size)
            .and_then(|()| ex.0.sync_all())
            .map_err(io(format!("resize {}", self.raw(name).display())))?;
        m.size = size;
        self.write_meta(&m)?;
        drop(ex);
        self.info(name)
    }

    /// Delete a volume (refused while it is served). A volume with backup records needs
    /// `force` (the records are how its backups are found again); returns how many records
    /// were deleted with it.
    pub fn delete(&self, name: &str, force: bool) -> Result<usize> {
        refuse_paired(&self.meta(name)?)?;
        if self.path(name, "pair").exists() {
            return Err(Error::Invalid(format!(
                "{name} is the primary of a mirror pair: delete the pair first"
            )));
        }
        let ex = self.exclusive(name)?;
        let records = match self.records(name) {
            Ok(r) => r.len(),
            // Damaged records: what is lost cannot be counted; deleting needs `force`.
            Err(_) if force => 0,
            Err(e) => return Err(e),
        };
        if records > 0 && !force {
            return Err(Error::Invalid(format!(
                "{name} has {records} backup record(s): deleting it deletes them too (the \
                 snapshots stay in their repositories, but `kura volume records` and `kura \
                 catalog rebuild --volumes` will not find them through this volume any more); \
                 confirm with --force"
            )));
        }
        // Metadata first: once it is gone the volume no longer exists, whatever happens to
        // the raw file next.
        let meta = self.meta_path(name);
        std::fs::remove_file(&meta).map_err(io(format!("remove {}", meta.display())))?;
        let raw = self.raw(name);
        std::fs::remove_file(&raw).map_err(io(format!("remove {}", raw.display())))?;
        for extra in [
            self.chains_path(name),
            self.legacy_dirty_path(name),
            self.dir.join(format!("{name}.records")),
        ] {
            match std::fs::remove_file(&extra) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("remove {}", extra.display()))(e));
                }
                _ => {}
            }
        }
        drop(ex);
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("sync {}", self.dir.display())))?;
        Ok(records)
    }

    fn records_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(format!("{name}.records"))
    }

    /// Every backup record of a volume, oldest first.
    pub fn records(&self, name: &str) -> Result<Vec<VolumeRecord>> {
        self.meta(name)?;
        let path = self.records_path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("read {}", path.display()),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            // A torn last line (crash while appending) is not a record; anything else that
            // does not parse is damage worth reporting.
            match serde_json::from_str::<VolumeRecord>(line) {
                Ok(r) if r.v == 1 => out.push(r),
                _ if i + 1 == text.lines().count() && !text.ends_with('\n') => {}
                Ok(r) => {
                    return Err(Error::Corrupt {
                        path,
                        why: format!("line {}: record version {}", i + 1, r.v),
                    });
                }
                Err(e) => {
                    return Err(Error::Corrupt {
                        path,
                        why: format!("line {}: {e}", i + 1),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Append a record (durably).
    pub fn add_record(&self, name: &str, r: &VolumeRecord) -> Result<()> {
        let path = self.records_path(name);
        let io = |source| Error::Io {
            what: format!("append to {}", path.display()),
            source,
        };
        let mut line = serde_json::to_vec(r).map_err(|e| Error::Invalid(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(&line).and_then(|()| f.sync_all()).map_err(io)
    }

    /// Take a free working volume of at least `size` bytes from the pool (volumes with the
    /// `work` attribute). Its exclusive `flock` is the claim, so sessions in other processes
    /// skip it too.
    pub fn claim_work(&self, size: u64) -> Result<WorkVolume> {
        let mut pool: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|v| v.meta.work && v.meta.size >= size)
            .collect();
        // The smallest that fits first: large ones stay free for large volumes.
        pool.sort_by_key(|v| v.meta.size);
        let fitting = pool.len();
        for v in pool {
            match self.exclusive(&v.meta.name) {
                Ok(ex) => {
                    return Ok(WorkVolume::new(v.meta.name, ex.0));
                }
                Err(Error::InUse(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        let hint = format!(
            "create one with `kura volume create NAME --size {}MiB --work`",
            size.div_ceil(1 << 20)
        );
        if fitting > 0 {
            // There are some, all claimed by other sessions: a conflict, not a mistake.
            return Err(Error::InUse(format!(
                "every working volume of at least {size} bytes is in use by another backup \
                 session ({fitting} in the pool); wait for one to end, or {hint}"
            )));
        }
        Err(Error::Invalid(format!(
            "no working volume of at least {size} bytes in the pool: {hint}"
        )))
    }
}

pub(crate) fn refuse_paired(m: &VolumeMeta) -> Result<()> {
    match &m.secondary_of {
        Some(p) => Err(Error::Invalid(format!(
            "{} is the secondary of the mirror pair of {p}: no host I/O, resize or delete \
             while paired (kura pair delete {p})",
            m.name
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_nbd::Export;

    /// An empty pool is a mistake to correct (Invalid, with a command that works); a pool
    /// whose working volumes are all claimed is a conflict (InUse).
    #[test]
    fn claiming_a_working_volume_tells_empty_from_busy() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(d.path()).unwrap();
        match s.claim_work(8 << 20) {
            Err(Error::Invalid(m)) => assert!(m.contains("--size 8MiB --work"), "{m}"),
            other => panic!("{other:?}"),
        }
        s.create_with("w0", 8 << 20, true).unwrap();
        let first = s.claim_work(8 << 20).unwrap();
        assert!(matches!(s.claim_work(8 << 20), Err(Error::InUse(_))));
        drop(first);
        s.claim_work(8 << 20).unwrap();
    }

    #[test]
    fn create_list_resize_delete() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(d.path()).unwrap();
        let v = s.create("db", 1 << 30).unwrap();
        assert_eq!(v.meta.size, 1 << 30);
        assert!(v.allocated < 1 << 20, "created sparse: {}", v.allocated);
        assert!(matches!(s.create("db", 4096), Err(Error::Exists(_))));
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(s.create(bad, 4096), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(s.create("odd", 1000), Err(Error::Invalid(_))));
        s.create("web", 4096).unwrap();
        let names: Vec<String> = s.list().unwrap().into_iter().map(|v| v.meta.name).collect();
        assert_eq!(names, ["db", "web"]);
        assert!(matches!(
            s.resize("db", 1 << 20, false),
            Err(Error::Invalid(_))
        ));
        assert_eq!(s.resize("db", 2 << 30, false).unwrap().meta.size, 2 << 30);
        // Served: resize and delete are refused until the export is closed.
        let e = s.open_export("db").unwrap();
        assert_eq!(e.size(), 2 << 30);
        assert!(matches!(s.delete("db", false), Err(Error::InUse(_))));
        assert!(matches!(s.resize("db", 4096, true), Err(Error::InUse(_))));
        drop(e);
        // Held by a server with no client: still refused.
        assert!(s.hold_all(None).unwrap().is_empty());
        assert!(matches!(s.delete("db", false), Err(Error::InUse(_))));
        assert!(matches!(s.resize("db", 4096, true), Err(Error::InUse(_))));
        s.shutdown().unwrap();
        s.delete("db", false).unwrap();
        assert!(matches!(s.info("db"), Err(Error::NotFound(_))));
        assert!(!d.path().join("db.raw").exists());
    }

    #[test]
    fn an_old_single_dirty_bitmap_is_never_trusted_and_goes() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(d.path()).unwrap();
        s.create("v", 8 << 20).unwrap();
        // A clean, "trusted" bitmap of an earlier version, with one bit set.
        let mut old = b"KURADBM1".to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(&0u32.to_le_bytes());
        old.extend_from_slice(&(4u64 << 20).to_le_bytes());
        old.extend_from_slice(&(8u64 << 20).to_le_bytes());
        old.push(1);
        std::fs::write(d.path().join("v.dirty"), &old).unwrap();
        let e = s.open_export("v").unwrap();
        assert!(!d.path().join("v.dirty").exists());
        let f = e.chains().freeze(kura_repo::Id([7; 32]));
        assert!(crate::chains::incremental_reads(&f, Ok(())).is_err());
        drop(e);
        assert!(!s.info("v").unwrap().dirty.trusted);
    }

    #[test]
    fn damaged_metadata_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(d.path()).unwrap();
        s.create("v", 4096).unwrap();
        std::fs::write(d.path().join("v.vol"), b"{\"magic\": 3}").unwrap();
        match s.info("v") {
            Err(Error::Corrupt { path, .. }) => assert!(path.ends_with("v.vol")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn areas_parse_sizes() {
        assert_eq!(parse_area("0:64M").unwrap(), Extent::new(0, 64 << 20));
        assert_eq!(
            parse_area("32MiB:8MiB").unwrap(),
            Extent::new(32 << 20, 8 << 20)
        );
        for (bad, why) in [
            ("64M", "use OFFSET:LENGTH"),
            ("0:0", "empty"),
            ("x:4M", "invalid size \"x\""),
            ("0:12parsecs", "unknown unit"),
        ] {
            let e = parse_area(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("KURA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)
        ))]
        /// Damaged metadata and record files (any bytes, or a valid file with one byte changed
        /// or cut short) are errors naming the file, never panics; sizes and areas likewise.
        #[test]
        fn damaged_volume_files_never_panic(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            pos in 0usize..400,
            val in proptest::prelude::any::<u8>(),
            cut in 0usize..400,
            text in "[ -~]{0,16}",
        ) {
            let d = tempfile::tempdir().unwrap();
            let s = VolumeStore::open(d.path()).unwrap();
            s.create("v", 8192).unwrap();
            let meta = d.path().join("v.vol");
            let mut valid = std::fs::read(&meta).unwrap();
            if pos < valid.len() {
                valid[pos] = val;
            }
            valid.truncate(cut);
            for body in [&junk, &valid] {
                std::fs::write(&meta, body).unwrap();
                let _ = s.info("v");
                let _ = s.records("v");
            }
            std::fs::write(d.path().join("v.records"), &junk).unwrap();
            let _ = s.records("v");
            let _ = parse_area(&text);
        }
    }
}
