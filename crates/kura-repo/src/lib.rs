//! # kura-repo — the repository core
//!
//! Everything that turns file trees and block images into deduplicated, compressed, encrypted
//! snapshots and back. The CLI (`kura-cli`) is a thin layer over this crate; the manager, the
//! volume engine and the daemon (later crates) write through it too.
//!
//! ## Data model
//! - **Blob**: one chunk of file/image data, one directory tree, or one piece of an image's
//!   fixed index. Identified by the keyed BLAKE3 of its plaintext ([`Id`]); stored compressed
//!   (zstd, when that helps) and sealed (XChaCha20-Poly1305) — see [`format`].
//! - **Pack**: a file of many blobs with an encrypted header at its end ([`pack`]); written
//!   whole and atomically, never modified.
//! - **Index**: files mapping blob → (pack, offset, length) ([`index`]), written only after
//!   the packs they describe are durable.
//! - **Snapshot**: a manifest naming a root tree or an image's fixed index ([`snapshot`]),
//!   written last.
//!
//! ## Invariants
//! 1. Anything referenced by a snapshot is in a durable pack listed by a durable index file.
//!    Writers order their writes so (pack → index → snapshot); readers may rely on it.
//! 2. Stored objects are immutable and named by content (packs, index files, snapshots, keys
//!    by the BLAKE3 of their bytes), so concurrent writers never conflict: two backups may
//!    store the same blob twice, which is wasteful but correct.
//! 3. Every read is verified: AEAD authentication, then the keyed hash of the plaintext must
//!    equal the blob id.
//! 4. Nothing trusts stored data for safety: parsers refuse malformed input with
//!    [`Error::Corrupt`] rather than panicking, and trees with hostile names are refused.
//!
//! ## Locking
//! See [`lock`]: shared locks for backup/restore/check/forget, exclusive for prune (exclusive
//! locks exclude only each other); operations take a `&RepoLock<Shared>` so they cannot be
//! called unlocked. Prune deletes in two phases ([`prune`], [`condemned`]) so that it can run
//! beside backups.

pub mod backup;
pub mod browse;
pub mod catalog_record;
pub mod check;
pub mod chunker;
pub mod condemned;
pub mod crypto;
pub mod error;
pub mod forget;
pub mod format;
pub mod fsmeta;
#[cfg(test)]
mod fuzz;
pub mod group;
pub mod id;
pub mod image;
pub mod index;
pub mod lock;
pub mod needs;
pub mod pack;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod tree;
mod treecache;
pub mod util;

pub use error::{Error, Failure, Result};
pub use id::Id;
pub use kura_backend as backend;
pub use repo::{IndexedRepo, InitOptions, Repository};
