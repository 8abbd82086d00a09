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

mod snapshots;
pub(crate) use snapshots::damaged_snapshot_refusal;

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
    /// Why the key file could not be read, when it is damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
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
        // Key files that could not be tried: when no intact one opens, the password may be
        // the damaged one's, so "wrong password" would mislead; the damage is reported.
        let mut unusable: Vec<Error> = Vec::new();
        for k in &keys {
            let opened = match backend.get(FileKind::Key, &k.name) {
                Ok(bytes) => parse_key_file(&k.name, &bytes).and_then(|kf| kf.open(password)),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) if e.kind() == ErrorKind::Corrupt => Err(e.into()),
                Err(e) => return Err(e.into()),
            };
            let key = match opened {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("skipping key file {}: {e}", k.name);
                    unusable.push(match e {
                        Error::Unsupported(m) => Error::Unsupported(format!("{m} ({})", k.name)),
                        Error::Corrupt { detail, .. } => Error::corrupt(
                            format!("key file {}", k.name),
                            format!("damaged key file: {detail}"),
                        ),
                        e => Error::corrupt(
                            format!("key file {}", k.name),
                            format!("damaged key file: {e}"),
                        ),
                    });
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
        if let Some(e) = unusable.into_iter().next() {
            return Err(e);
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
            let kf = match self.backend.get(FileKind::Key, &k.name) {
                Ok(bytes) => parse_key_file(&k.name, &bytes),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) if e.kind() == ErrorKind::Corrupt => Err(e.into()),
                Err(e) => return Err(e.into()),
            };
            match kf {
                Ok(kf) => out.push(KeyInfo {
                    current: k.name == self.key_name,
                    id: k.name,
                    created: kf.created,
                    hostname: kf.hostname,
                    username: kf.username,
                    damaged: None,
                }),
                Err(e) => {
                    tracing::warn!("damaged key file {}: {e}", k.name);
                    out.push(KeyInfo {
                        current: false,
                        id: k.name,
                        created: String::new(),
                        hostname: String::new(),
                        username: String::new(),
                        damaged: Some(e.to_string()),
                    })
                }
            }
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

    // ----- index -----

    /// An index file sealed as the repository stores it, and its id (its name).
    pub fn seal_index_file(&self, file: &IndexFile) -> Result<(Id, Vec<u8>)> {
        let sealed = BlobEncoder::new(0)?.seal_file(&self.key, MAGIC_INDEX, &file.encode())?;
        Ok((Id::of_file(&sealed), sealed))
    }

    /// Write an index file describing durable packs; returns its id.
    pub fn save_index_file(&self, file: &IndexFile) -> Result<Id> {
        let (id, sealed) = self.seal_index_file(file)?;
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

    /// The condemned packs (listed first, see [`crate::condemned::load`]) and every readable
    /// index file; condemned packs' blobs are in the builder too, for readers.
    fn read_index_and_condemned(&self) -> Result<(IndexBuilder, Condemned, Vec<DamagedFile>)> {
        let condemned = crate::condemned::load(self)?;
        let (mut b, damaged) = self.read_all_index_files()?;
        add_condemned(&mut b, &condemned)?;
        Ok((b, condemned, damaged))
    }

    /// Every readable index file merged. A damaged index file is skipped and returned in
    /// the list (its packs' blobs then look absent: a backup adopts those packs again from
    /// their headers, a restore reports the files needing them); errors reaching the
    /// repository are returned.
    fn read_all_index_files(&self) -> Result<(IndexBuilder, Vec<DamagedFile>)> {
        let mut b = IndexBuilder::new();
        let mut damaged = Vec::new();
        for f in self.backend.list(FileKind::Index)? {
            let file = match self.load_index_file(&f.name) {
                Ok(file) => file,
                // Replaced by a concurrent prune or repair between list and read.
                Err(Error::Backend(e)) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) if e.is_data_damage() || matches!(e, Error::Unsupported(_)) => {
                    tracing::warn!(
                        "skipping damaged index file {}: {e} (`kura repair index` rebuilds \
                         the index from the packs)",
                        f.name
                    );
                    damaged.push(DamagedFile {
                        name: f.name,
                        error: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (pack, blobs) in &file.packs {
                b.add_pack(*pack, blobs)?;
            }
        }
        Ok((b, damaged))
    }

    /// Load the index, skipping index files that cannot be read and reporting them in
    /// `errors` (for `check`, which must describe damage rather than stop at it).
    pub fn load_index_reporting(self, errors: &mut Vec<String>) -> Result<IndexedRepo> {
        let (b, condemned, damaged) = self.read_index_and_condemned()?;
        errors.extend(condemned.damaged.iter().cloned());
        errors.extend(
            damaged
                .iter()
                .map(|d| format!("index file {}: {}", d.name, d.error)),
        );
        Ok(IndexedRepo {
            tree_cache: Default::default(),
            repo: self,
            index: b.finish(),
            condemned,
            damaged_index: damaged,
        })
    }

    /// Load the index (condemned packs included) and return the names of the index files it
    /// read: prune replaces exactly those, never one a concurrent backup wrote meanwhile. A
    /// damaged index file is an error naming it and the way out: without it, what is in use
    /// cannot be known.
    pub fn load_index_listing(self) -> Result<(IndexedRepo, Vec<String>)> {
        let condemned = crate::condemned::load(&self)?;
        let mut b = IndexBuilder::new();
        let mut names = Vec::new();
        for f in self.backend.list(FileKind::Index)? {
            let file = match self.load_index_file(&f.name) {
                Ok(file) => file,
                // Replaced meanwhile: only a prune does that, and prunes exclude each other.
                Err(Error::Backend(e)) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) if e.is_data_damage() || matches!(e, Error::Unsupported(_)) => {
                    return Err(damaged_index_refusal(&f.name, &e.to_string()));
                }
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
            damaged_index: Vec::new(),
        };
        Ok((repo, names))
    }

    /// Read every readable index file into memory (condemned packs included); damaged ones
    /// are skipped with a warning and listed by [`IndexedRepo::damaged_index_files`].
    pub fn load_index(self) -> Result<IndexedRepo> {
        let (b, condemned, damaged) = self.read_index_and_condemned()?;
        Ok(IndexedRepo {
            repo: self,
            index: b.finish(),
            tree_cache: Default::default(),
            condemned,
            damaged_index: damaged,
        })
    }

    /// Load the index, first adopting *orphan packs* (durable packs no index file lists: left
    /// by a backup that was killed between writing a pack and its index). Their headers are
    /// read and a new index file lists them, so the next backup reuses their blobs instead of
    /// uploading them again. Returns the number of packs adopted.
    pub fn load_index_adopting_orphans(self) -> Result<(IndexedRepo, usize)> {
        let (mut b, condemned, damaged) = self.read_index_and_condemned()?;
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
                damaged_index: damaged,
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
    damaged_index: Vec<DamagedFile>,
}

/// A repository file that could not be read (damaged, or written by a newer kura).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedFile {
    /// The file's name (its id).
    pub name: String,
    /// Why it could not be read.
    pub error: String,
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

    /// Index files skipped because they could not be read.
    pub fn damaged_index_files(&self) -> &[DamagedFile] {
        &self.damaged_index
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

/// Why an operation that deletes what the index does not list refuses a damaged index file.
fn damaged_index_refusal(name: &str, error: &str) -> Error {
    Error::InvalidInput(format!(
        "index file {name} is damaged ({error}); without it this operation cannot know which \
         packs are in use and refuses to go on: run `kura repair index` first"
    ))
}

/// A stored key file, checked against its name (the BLAKE3 of its bytes): a flipped bit in
/// the wrapped secret would otherwise look exactly like a wrong password.
/// A key file of another version is returned as parsed ([`KeyFile::open`] reports it as
/// unsupported: a newer kura may name its files differently).
fn parse_key_file(name: &str, bytes: &[u8]) -> Result<KeyFile> {
    let kf = KeyFile::from_bytes(bytes)?;
    if kf.version == 1 && Id::of_file(bytes).to_hex() != name {
        return Err(Error::corrupt(
            "key file",
            "its bytes do not match its name (BLAKE3 of the content)",
        ));
    }
    Ok(kf)
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

/// A fresh local repository with a cheap KDF, for unit tests.
#[cfg(test)]
pub(crate) fn test_repository(dir: &std::path::Path) -> Repository {
    let b = Arc::new(kura_backend::LocalBackend::new(dir.join("r")));
    let opts = InitOptions {
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..Default::default()
    };
    Repository::init(b, b"pw", &opts).expect("init a test repository")
}
