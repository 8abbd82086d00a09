//! Opening a repository and reading what it holds.
//!
//! Typestate keeps misuse from compiling: [`Repository::open`] gives a [`Repository`] (key
//! and config, enough for keys and snapshot listings); [`Repository::load_index`] turns it into
//! an [`IndexedRepo`], the only type that can read blobs, back up, restore or check.

use std::sync::Arc;

use kura_backend::{Backend, ErrorKind, FileKind};
use serde::{Deserialize, Serialize};

use crate::chunker::{Cdc, ChunkerParams};
use crate::condemned::Condemned;
use crate::crypto::{KdfParams, KeyFile, MasterKey};
use crate::error::{Error, Result};
use crate::format::{
    BlobEncoder, BlobType, MAGIC_CONFIG, MAGIC_INDEX, MAGIC_SNAPSHOT, decode_blob, open_file,
};
use crate::id::Id;
use crate::index::{BlobLocation, Index, IndexBuilder, IndexFile};
use crate::snapshot::{Snapshot, SnapshotEntry};
use crate::tree::Tree;
use crate::util::Timestamp;

/// Default pack size target.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;
/// Default zstd level.
pub const DEFAULT_COMPRESSION: i32 = 3;

/// The repository config (sealed, magic `KURACFG1`). Fixed at `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub v: u32,
    pub id: Id,
    pub created: Timestamp,
    pub chunker: ChunkerParams,
    /// Default zstd level for backups (0 = store uncompressed).
    pub compression: i32,
    /// Pack size target in bytes.
    pub pack_size: u32,
}

/// Options of `kura init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub compression: i32,
    pub pack_size: u32,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            compression: DEFAULT_COMPRESSION,
            pack_size: DEFAULT_PACK_SIZE,
            kdf: KdfParams::default(),
        }
    }
}

/// Check a zstd level is one zstd accepts.
pub fn validate_compression(level: i32) -> Result<()> {
    if (0..=22).contains(&level) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "compression level {level} out of range 0..=22 (0 = off)"
        )))
    }
}

/// A listed key file.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub current: bool,
    pub created: String,
    pub hostname: String,
    pub username: String,
}

/// An open repository: backend, master key, config.
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: MasterKey,
    key_name: String,
    config: RepoConfig,
    cdc: Cdc,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.backend.location())
    }
}

impl Repository {
    /// Create a repository at an empty location.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        opts: &InitOptions,
    ) -> Result<Repository> {
        opts.chunker.validate()?;
        validate_compression(opts.compression)?;
        if opts.pack_size < 1024 * 1024 || opts.pack_size > 1024 * 1024 * 1024 {
            return Err(Error::InvalidInput(format!(
                "pack size {} out of range 1 MiB..=1 GiB",
                opts.pack_size
            )));
        }
        if password.is_empty() {
            return Err(Error::InvalidInput("empty password".into()));
        }
        backend.create()?;
        let key = MasterKey::generate()?;
        let mut rid = [0u8; 32];
        getrandom::fill(&mut rid)
            .map_err(|e| Error::io("read random bytes", std::io::Error::other(e.to_string())))?;
        let config = RepoConfig {
            v: 1,
            id: Id(rid),
            created: Timestamp::now(),
            chunker: opts.chunker,
            compression: opts.compression,
            pack_size: opts.pack_size,
        };
        let key_name = write_key(backend.as_ref(), &key, password, opts.kdf)?;
        let body = cbor(&config)?;
        let sealed = BlobEncoder::new(0)?.seal_file(&key, MAGIC_CONFIG, &body)?;
        backend.put(FileKind::Config, "config", sealed.into())?;
        let cdc = Cdc::new(config.chunker, key.chunker_seed())?;
        Ok(Repository {
            backend,
            key,
            key_name,
            config,
            cdc,
        })
    }

    /// Open with a password: find a key file it opens, then read the config.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let location = backend.location();
        let config_bytes = match backend.get(FileKind::Config, "config") {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotARepository(location));
            }
            Err(e) => return Err(e.into()),
        };
        let keys = backend.list(FileKind::Key)?;
        if keys.is_empty() {
            return Err(Error::corrupt(
                format!("repository {location}"),
                "has no key files",
            ));
        }
        for k in &keys {
            let opened = KeyFile::from_bytes(&backend.get(FileKind::Key, &k.name)?)
                .and_then(|kf| kf.open(password));
            let key = match opened {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("skipping key file {}: {e}", k.name);
                    continue;
                }
            };
            let body = open_file(&key, MAGIC_CONFIG, &config_bytes, "config")?;
            let config: RepoConfig = from_cbor(&body, "config")?;
            if config.v != 1 {
                return Err(Error::Unsupported(format!(
                    "repository config version {}",
                    config.v
                )));
            }
            let cdc = Cdc::new(config.chunker, key.chunker_seed())?;
            return Ok(Repository {
                backend,
                key,
                key_name: k.name.clone(),
                config,
                cdc,
            });
        }
        Err(Error::WrongPassword {
            location,
            keys: keys.len(),
        })
    }

    /// The same repository on another member of its group (a target created with it by
    /// `init --mirror`), without asking for the password again: the member's config must
    /// open under this master key and name the same repository.
    pub fn member(&self, backend: Arc<dyn Backend>) -> Result<Repository> {
        let location = backend.location();
        let bytes = match backend.get(FileKind::Config, "config") {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotARepository(location));
            }
            Err(e) => return Err(e.into()),
        };
        let not_member = || {
            Error::NotAGroup(format!(
                "{location} does not hold the same repository as {}",
                self.location()
            ))
        };
        let body =
            open_file(&self.key, MAGIC_CONFIG, &bytes, "config").map_err(|_| not_member())?;
        let config: RepoConfig = from_cbor(&body, "config")?;
        if config.id != self.config.id {
            return Err(not_member());
        }
        Ok(Repository {
            backend,
            key: self.key.clone(),
            key_name: self.key_name.clone(),
            config,
            cdc: self.cdc.clone(),
        })
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn cdc(&self) -> &Cdc {
        &self.cdc
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    // ----- keys -----

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for k in self.backend.list(FileKind::Key)? {
            let kf = KeyFile::from_bytes(&self.backend.get(FileKind::Key, &k.name)?)?;
            out.push(KeyInfo {
                current: k.name == self.key_name,
                id: k.name,
                created: kf.created,
                hostname: kf.hostname,
                username: kf.username,
            });
        }
        Ok(out)
    }

    /// Add a passphrase. Returns the new key file's id.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<String> {
        if password.is_empty() {
            return Err(Error::InvalidInput("empty password".into()));
        }
        write_key(self.backend.as_ref(), &self.key, password, kdf)
    }

    /// Remove a key file by id or unique prefix. The key this session opened with cannot be
    /// removed (that would lock the caller out if it is the last one they know).
    pub fn remove_key(&self, id_prefix: &str) -> Result<String> {
        let keys = self.backend.list(FileKind::Key)?;
        let name = unique_prefix(keys.iter().map(|k| k.name.as_str()), id_prefix, "key")?;
        if name == self.key_name {
            return Err(Error::InvalidInput(format!(
                "key {} is the one this command opened the repository with; \
                 open with another passphrase to remove it",
                &name[..8.min(name.len())]
            )));
        }
        self.backend.delete(FileKind::Key, &name)?;
        Ok(name)
    }

    // ----- snapshots -----

    /// Every snapshot, oldest first. Unreadable snapshot files are errors (a damaged manifest
    /// must not silently disappear from listings).
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let mut out = Vec::new();
        for f in self.backend.list(FileKind::Snapshot)? {
            out.push(self.load_snapshot_file(&f.name)?);
        }
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub(crate) fn load_snapshot_file(&self, name: &str) -> Result<SnapshotEntry> {
        let what = format!("snapshot {name}");
        let id: Id = name
            .parse()
            .map_err(|_| Error::corrupt(&what, "file name is not an id"))?;
        let bytes = self.backend.get(FileKind::Snapshot, name)?;
        let body = open_file(&self.key, MAGIC_SNAPSHOT, &bytes, &what)?;
        let snapshot: Snapshot = from_cbor(&body, &what)?;
        if snapshot.v != 1 {
            return Err(Error::Unsupported(format!(
                "{what}: version {}",
                snapshot.v
            )));
        }
        Ok(SnapshotEntry { id, snapshot })
    }

    /// Find a snapshot by `latest` or by a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<SnapshotEntry> {
        if spec == "latest" {
            return self
                .list_snapshots()?
                .pop()
                .ok_or_else(|| Error::SnapshotNotFound(spec.into()));
        }
        let names = self.backend.list(FileKind::Snapshot)?;
        let name = unique_prefix(names.iter().map(|f| f.name.as_str()), spec, "snapshot").map_err(
            |e| match e {
                Error::InvalidInput(m) if m.contains("no ") => Error::SnapshotNotFound(spec.into()),
                other => other,
            },
        )?;
        self.load_snapshot_file(&name)
    }

    /// Write a snapshot manifest; returns its id. Call only when every blob it references is
    /// durable and indexed.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let body = cbor(snapshot)?;
        let sealed = BlobEncoder::new(3)?.seal_file(&self.key, MAGIC_SNAPSHOT, &body)?;
        let id = Id::of_file(&sealed);
        self.backend
            .put(FileKind::Snapshot, &id.to_hex(), sealed.into())?;
        Ok(id)
    }

    // ----- index -----

    /// Write an index file describing durable packs; returns its id.
    pub fn save_index_file(&self, file: &IndexFile) -> Result<Id> {
        let sealed = BlobEncoder::new(0)?.seal_file(&self.key, MAGIC_INDEX, &file.encode())?;
        let id = Id::of_file(&sealed);
        let packs: Vec<String> = file.packs.iter().map(|(p, _)| p.to_hex()).collect();
        self.backend
            .put_index(&id.to_hex(), sealed.into(), &packs)?;
        Ok(id)
    }

    /// Read one index file.
    pub fn load_index_file(&self, name: &str) -> Result<IndexFile> {
        let what = format!("index {name}");
        let bytes = self.backend.get(FileKind::Index, name)?;
        let body = open_file(&self.key, MAGIC_INDEX, &bytes, &what)?;
        IndexFile::decode(&body, &what)
    }

    /// The condemned packs (listed first, see [`crate::condemned::load`]) and every index
    /// file; condemned packs' blobs are in the builder too, for readers.
    fn read_index_and_condemned(&self) -> Result<(IndexBuilder, Condemned)> {
        let condemned = crate::condemned::load(self)?;
        let mut b = self.read_all_index_files()?;
        add_condemned(&mut b, &condemned)?;
        Ok((b, condemned))
    }

    fn read_all_index_files(&self) -> Result<IndexBuilder> {
        let mut b = IndexBuilder::new();
        for f in self.backend.list(FileKind::Index)? {
            let file = self.load_index_file(&f.name)?;
            for (pack, blobs) in &file.packs {
                b.add_pack(*pack, blobs)?;
            }
        }
        Ok(b)
    }

    /// Load the index, skipping index files that cannot be read and reporting them in
    /// `errors` (for `check`, which must describe damage rather than stop at it).
    pub fn load_index_reporting(self, errors: &mut Vec<String>) -> Result<IndexedRepo> {
        let condemned = crate::condemned::load(&self)?;
        errors.extend(condemned.damaged.iter().cloned());
        let mut b = IndexBuilder::new();
        for f in self.backend.list(FileKind::Index)? {
            match self.load_index_file(&f.name) {
                Ok(file) => {
                    for (pack, blobs) in &file.packs {
                        b.add_pack(*pack, blobs)?;
                    }
                }
                Err(e) if e.is_data_damage() => errors.push(format!("index file {}: {e}", f.name)),
                Err(e) => return Err(e),
            }
        }
        add_condemned(&mut b, &condemned)?;
        Ok(IndexedRepo {
            tree_cache: Default::default(),
            repo: self,
            index: b.finish(),
            condemned,
        })
    }

    /// Load the index (condemned packs included) and return the names of the index files it
    /// read: prune replaces exactly those, never one a concurrent backup wrote meanwhile.
    pub fn load_index_listing(self) -> Result<(IndexedRepo, Vec<String>)> {
        let condemned = crate::condemned::load(&self)?;
        let mut b = IndexBuilder::new();
        let mut names = Vec::new();
        for f in self.backend.list(FileKind::Index)? {
            let file = match self.load_index_file(&f.name) {
                Ok(file) => file,
                // Replaced meanwhile: only a prune does that, and prunes exclude each other.
                Err(Error::Backend(e)) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for (pack, blobs) in &file.packs {
                b.add_pack(*pack, blobs)?;
            }
            names.push(f.name);
        }
        add_condemned(&mut b, &condemned)?;
        let repo = IndexedRepo {
            repo: self,
            index: b.finish(),
            tree_cache: Default::default(),
            condemned,
        };
        Ok((repo, names))
    }

    /// Read every index file into memory.
    pub fn load_index(self) -> Result<IndexedRepo> {
        let (b, condemned) = self.read_index_and_condemned()?;
        Ok(IndexedRepo {
            repo: self,
            index: b.finish(),
            tree_cache: Default::default(),
            condemned,
        })
    }

    /// Load the index, first adopting *orphan packs* (durable packs no index file lists: left
    /// by a backup that was killed between writing a pack and its index). Their headers are
    /// read and a new index file lists them, so the next backup reuses their blobs instead of
    /// uploading them again. Returns the number of packs adopted.
    pub fn load_index_adopting_orphans(self) -> Result<(IndexedRepo, usize)> {
        let (mut b, condemned) = self.read_index_and_condemned()?;
        let mut adopted = IndexFile::default();
        for f in self.backend.list(FileKind::Pack)? {
            let Ok(id) = f.name.parse::<Id>() else {
                continue;
            };
            if b.has_pack(&id) || condemned.contains(&id) {
                continue;
            }
            match crate::pack::read_header(self.backend.as_ref(), &self.key, &f.name, f.size) {
                Ok(blobs) => adopted.packs.push((id, blobs)),
                Err(e) => tracing::warn!("not adopting unindexed pack {}: {e}", f.name),
            }
        }
        let n = adopted.packs.len();
        if n > 0 {
            self.save_index_file(&adopted)?;
            for (pack, blobs) in &adopted.packs {
                b.add_pack(*pack, blobs)?;
            }
            tracing::info!("adopted {n} pack(s) left by an interrupted backup");
        }
        Ok((
            IndexedRepo {
                repo: self,
                index: b.finish(),
                tree_cache: Default::default(),
                condemned,
            },
            n,
        ))
    }
}

/// A repository with its index in memory: can read blobs.
pub struct IndexedRepo {
    repo: Repository,
    index: Index,
    tree_cache: crate::treecache::TreeCache,
    /// Packs a prune condemned: readable (their blobs are in `index`), never deduped against.
    condemned: Condemned,
}

impl std::ops::Deref for IndexedRepo {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

impl IndexedRepo {
    /// Every blob that can be read: the packs index files list and the condemned ones.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The condemned packs (see [`crate::condemned`]).
    pub fn condemned(&self) -> &Condemned {
        &self.condemned
    }

    /// Whether a writer may reference this blob without storing it: it is in a pack that is
    /// not condemned. A blob only condemned packs hold is stored again.
    pub fn has_live(&self, ty: BlobType, id: &Id) -> bool {
        self.index
            .get_all(id)
            .iter()
            .any(|l| l.ty == ty && !self.condemned.contains(&l.pack))
    }

    /// Read, decrypt, decompress and verify one blob at a known location. A blob found
    /// damaged is read again from the backend's other sources (the other targets of a
    /// backup read through a union), each verified the same way.
    pub fn read_blob_at(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        match self.read_blob_at_first(loc) {
            Err(e) if e.is_data_damage() => self.read_blob_from_sources(loc).ok_or(e),
            r => r,
        }
    }

    /// The blob at `loc`, from the first source that has it intact (see
    /// [`Backend::sources`]); `None` when there is only one source or none verifies.
    pub fn read_blob_from_sources(&self, loc: &BlobLocation) -> Option<Vec<u8>> {
        let backend = &self.repo.backend;
        if backend.sources() < 2 {
            return None;
        }
        let name = loc.pack.to_hex();
        (0..backend.sources()).find_map(|s| {
            let mut stored = Vec::new();
            backend
                .get_range_from(
                    s,
                    FileKind::Pack,
                    &name,
                    loc.offset as u64,
                    loc.length as u64,
                    &mut stored,
                )
                .ok()?;
            let d = match decode_blob(&self.repo.key, loc.ty, &loc.id, stored, loc.raw_length) {
                Ok(d) => d,
                Err(e) => {
                    let why = format!("blob {} fails verification: {e}", loc.id.short());
                    backend.damaged(s, FileKind::Pack, &name, &why);
                    return None;
                }
            };
            tracing::info!(
                "blob {} of pack {}: damaged where first read, read intact from source {s}",
                loc.id.short(),
                loc.pack.short()
            );
            Some(d)
        })
    }

    fn read_blob_at_first(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        if loc.ty == BlobType::Tree
            && let Some((start, end)) = self.tree_cache.span(&self.index, &loc.pack)
            && loc.offset >= start
            && loc.offset.checked_add(loc.length).is_some_and(|e| e <= end)
        {
            let span = match self.tree_cache.get(&loc.pack) {
                Some(s) => s,
                None => {
                    let s = std::sync::Arc::new(self.repo.backend.get_range(
                        FileKind::Pack,
                        &loc.pack.to_hex(),
                        start as u64,
                        (end - start) as u64,
                    )?);
                    self.tree_cache.insert(loc.pack, s.clone());
                    s
                }
            };
            let at = (loc.offset - start) as usize;
            let stored = span[at..at + loc.length as usize].to_vec();
            return decode_blob(&self.repo.key, loc.ty, &loc.id, stored, loc.raw_length);
        }
        let stored = self.repo.backend.get_range(
            FileKind::Pack,
            &loc.pack.to_hex(),
            loc.offset as u64,
            loc.length as u64,
        )?;
        decode_blob(&self.repo.key, loc.ty, &loc.id, stored, loc.raw_length)
    }

    /// Read a blob, trying each copy the index knows until one verifies.
    pub fn read_blob(&self, ty: BlobType, id: &Id) -> Result<Vec<u8>> {
        let locs: Vec<BlobLocation> = self
            .index
            .get_all(id)
            .into_iter()
            .filter(|l| l.ty == ty)
            .collect();
        // Live copies first: a condemned pack may be deleted at any moment.
        let mut locs = locs;
        locs.sort_by_key(|l| self.condemned.contains(&l.pack));
        if locs.is_empty() {
            return Err(Error::corrupt(
                format!("{} blob {}", ty.as_str(), id),
                "not in any index (missing pack?)",
            ));
        }
        let mut last = None;
        for loc in &locs {
            match self.read_blob_at(loc) {
                Ok(d) => return Ok(d),
                Err(e) => {
                    tracing::warn!("blob {} in pack {}: {e}", id.short(), loc.pack.short());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::corrupt(id.to_hex(), "unreadable")))
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_blob(BlobType::Tree, id)?;
        Tree::decode(&bytes, &format!("tree {id}"))
    }

    pub fn into_repository(self) -> Repository {
        self.repo
    }
}

fn add_condemned(b: &mut IndexBuilder, condemned: &Condemned) -> Result<()> {
    for p in condemned.packs.values() {
        if !p.blobs.is_empty() {
            b.add_pack(p.pack, &p.blobs)?;
        }
    }
    Ok(())
}

fn write_key(
    backend: &dyn Backend,
    key: &MasterKey,
    password: &[u8],
    kdf: KdfParams,
) -> Result<String> {
    let bytes = KeyFile::create(key, password, kdf)?.to_bytes()?;
    let name = Id::of_file(&bytes).to_hex();
    backend.put(FileKind::Key, &name, bytes.into())?;
    Ok(name)
}

/// The one name starting with `prefix`.
pub(crate) fn unique_prefix<'a>(
    names: impl Iterator<Item = &'a str>,
    prefix: &str,
    what: &str,
) -> Result<String> {
    if prefix.is_empty() {
        return Err(Error::InvalidInput(format!("empty {what} id")));
    }
    let matches: Vec<&str> = names.filter(|n| n.starts_with(prefix)).collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::InvalidInput(format!("no {what} matches {prefix:?}"))),
        many => Err(Error::InvalidInput(format!(
            "{what} id {prefix:?} is ambiguous: {} matches; give more digits",
            many.len()
        ))),
    }
}

pub(crate) fn cbor<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out)
        .map_err(|e| Error::InvalidInput(format!("CBOR encode: {e}")))?;
    Ok(out)
}

pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T> {
    ciborium::from_reader(b).map_err(|e| Error::corrupt(what, format!("CBOR: {e}")))
}
