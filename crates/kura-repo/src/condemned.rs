//! Condemned packs: the first half of prune's two-phase deletion.
//!
//! Prune never deletes a pack it has just found unneeded: a backup running beside it may have
//! loaded the index earlier and be about to reference blobs in that pack. It *condemns* the
//! pack instead — writes a condemned file (sealed, magic `KURACND1`, in `condemned/`) naming
//! the pack, the time, and the pack's blob list — and stops listing it in index files. A later
//! prune deletes it only when the grace period has passed, no lock taken before the
//! condemnation is still live, and no snapshot needs a blob that only it holds (otherwise the
//! pack is *recovered*: listed in the index again). See [`crate::prune`] for why that is safe.
//!
//! Readers see condemned packs ([`crate::IndexedRepo::index`] includes them, so a snapshot
//! that still needs such a blob restores and checks clean); writers do not dedup against them
//! ([`crate::IndexedRepo::has_live`]), so a backup that needs a condemned blob uploads it again.
//!
//! A pack named by several condemned files (a prune interrupted between writing its new file
//! and deleting the old ones) counts as condemned at the *latest* of the times: later means a
//! longer wait and more locks that hold the deletion back, the safe side.

use std::collections::HashMap;

use kura_backend::{ErrorKind, FileKind};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::format::{BlobEncoder, MAGIC_CONDEMNED, open_file};
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::PackBlob;
use crate::repo::{Repository, cbor, from_cbor};
use crate::util::Timestamp;

/// Body of a condemned file (CBOR).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CondemnedFile {
    v: u32,
    /// Condemnation time of each pack, in the order of `packs`' packs.
    since: Vec<Timestamp>,
    /// The packs and their blobs, encoded as an index file body (empty blob list when the pack
    /// was condemned as an orphan whose header was not read).
    packs: ByteBuf,
}

/// One condemned pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CondemnedPack {
    pub pack: Id,
    pub since: Timestamp,
    pub blobs: Vec<PackBlob>,
}

/// Every condemned pack the repository records, and the files recording them.
#[derive(Debug, Clone, Default)]
pub struct Condemned {
    pub packs: HashMap<Id, CondemnedPack>,
    /// Names of the condemned files read.
    pub files: Vec<String>,
    /// Condemned files that could not be read (reported; their packs count as not condemned,
    /// which makes a later prune condemn them afresh if nothing lists them).
    pub damaged: Vec<String>,
}

impl Condemned {
    pub fn contains(&self, pack: &Id) -> bool {
        self.packs.contains_key(pack)
    }

    fn merge(&mut self, p: CondemnedPack) {
        match self.packs.get_mut(&p.pack) {
            Some(cur) => {
                cur.since = cur.since.max(p.since);
                if cur.blobs.is_empty() {
                    cur.blobs = p.blobs;
                }
            }
            None => {
                self.packs.insert(p.pack, p);
            }
        }
    }
}

/// Read every condemned file. Call this *before* listing index files: a pack condemned after
/// this listing was taken is protected by this process's lock (taken earlier), see
/// [`crate::prune`].
pub fn load(repo: &Repository) -> Result<Condemned> {
    let mut out = Condemned::default();
    for f in repo.backend().list(FileKind::Condemned)? {
        let bytes = match repo.backend().get(FileKind::Condemned, &f.name) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // replaced by a prune
            Err(e) => return Err(e.into()),
        };
        match decode(repo, &f.name, &bytes) {
            Ok(packs) => {
                for p in packs {
                    out.merge(p);
                }
                out.files.push(f.name);
            }
            Err(e) if e.is_data_damage() || matches!(e, Error::Unsupported(_)) => {
                tracing::warn!("condemned file {}: {e}", f.name);
                out.damaged.push(format!("condemned file {}: {e}", f.name));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn decode(repo: &Repository, name: &str, bytes: &[u8]) -> Result<Vec<CondemnedPack>> {
    let what = format!("condemned file {name}");
    let body = open_file(repo.key(), MAGIC_CONDEMNED, bytes, &what)?;
    let file: CondemnedFile = from_cbor(&body, &what)?;
    if file.v != 1 {
        return Err(Error::Unsupported(format!("{what}: version {}", file.v)));
    }
    let index = IndexFile::decode(&file.packs, &what)?;
    if index.packs.len() != file.since.len() {
        return Err(Error::corrupt(&what, "pack and time counts differ"));
    }
    Ok(index
        .packs
        .into_iter()
        .zip(file.since)
        .map(|((pack, blobs), since)| CondemnedPack { pack, since, blobs })
        .collect())
}

/// Write one condemned file listing `packs`; returns its name (`None` when there is nothing
/// to record).
pub fn save(repo: &Repository, packs: &[&CondemnedPack]) -> Result<Option<String>> {
    if packs.is_empty() {
        return Ok(None);
    }
    let index = IndexFile {
        packs: packs.iter().map(|p| (p.pack, p.blobs.clone())).collect(),
    };
    let file = CondemnedFile {
        v: 1,
        since: packs.iter().map(|p| p.since).collect(),
        packs: ByteBuf::from(index.encode()),
    };
    let sealed = BlobEncoder::new(0)?.seal_file(repo.key(), MAGIC_CONDEMNED, &cbor(&file)?)?;
    let name = Id::of_file(&sealed).to_hex();
    repo.backend()
        .put(FileKind::Condemned, &name, sealed.into())?;
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlobType;

    fn repo(dir: &std::path::Path) -> Repository {
        crate::repo::test_repository(dir)
    }

    fn pack(n: u8, blobs: usize, since: i64) -> CondemnedPack {
        CondemnedPack {
            pack: Id([n; 32]),
            since: Timestamp(since, 0),
            blobs: (0..blobs)
                .map(|i| PackBlob {
                    ty: BlobType::Data,
                    id: Id([i as u8 + 100; 32]),
                    offset: i as u32 * 10,
                    length: 10,
                    raw_length: 20,
                })
                .collect(),
        }
    }

    #[test]
    fn records_round_trip_and_merge_to_the_latest_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        assert!(load(&r).unwrap().packs.is_empty(), "no directory: none");
        let (a, b, orphan) = (pack(1, 3, 100), pack(2, 0, 100), pack(1, 0, 200));
        save(&r, &[&a, &b]).unwrap().unwrap();
        save(&r, &[&orphan]).unwrap().unwrap();
        assert_eq!(save(&r, &[]).unwrap(), None);
        let c = load(&r).unwrap();
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.packs.len(), 2);
        // Named twice: the later time, and the blob list that is known.
        assert_eq!(c.packs[&a.pack].since, Timestamp(200, 0));
        assert_eq!(c.packs[&a.pack].blobs, a.blobs);
        assert!(c.packs[&b.pack].blobs.is_empty());
    }

    #[test]
    fn a_damaged_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let name = save(&r, &[&pack(1, 1, 5)]).unwrap().unwrap();
        let mut bytes = r
            .backend()
            .get(FileKind::Condemned, &name)
            .unwrap()
            .to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        r.backend()
            .put(FileKind::Condemned, &name, bytes.into())
            .unwrap();
        let c = load(&r).unwrap();
        assert!(c.packs.is_empty());
        assert_eq!(c.damaged.len(), 1, "{:?}", c.damaged);
    }

    #[test]
    fn readers_see_condemned_blobs_and_writers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let p = pack(7, 2, 1);
        save(&r, &[&p]).unwrap();
        let ir = r.load_index().unwrap();
        let blob = p.blobs[0].id;
        assert!(ir.index().contains(&blob), "readable");
        assert!(!ir.has_live(BlobType::Data, &blob), "never deduped against");
        assert!(ir.condemned().contains(&p.pack));
    }
}
