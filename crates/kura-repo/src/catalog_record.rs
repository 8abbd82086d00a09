//! Catalog records on the targets (`catalog/<id>`, magic `KURACTL1`): after a job, what the
//! catalog database knows about its backup — object, times, data time and every copy or
//! section with its target, medium and position — is also written, sealed under the master
//! key, into each target that holds part of it. The database can then be rebuilt from the
//! targets alone (`kura catalog rebuild`); every record lists *all* copies, so any one
//! surviving target restores the whole picture. Specified in `docs/FORMAT.md`.

use kura_backend::FileKind;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{BlobEncoder, MAGIC_CATALOG, open_file};
use crate::id::Id;
use crate::repo::{Repository, cbor, from_cbor};

/// Where one piece of a backup is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordExtent {
    pub stream: i64,
    pub seq: i64,
    pub source_offset: i64,
    pub source_length: i64,
    /// Target and medium by name, as the catalog that wrote the record called them.
    pub target: String,
    pub medium: String,
    pub position: String,
    pub size: i64,
}

/// One backup as the catalog recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRecord {
    pub v: u32,
    pub object: String,
    /// Milliseconds since the epoch.
    pub started: i64,
    pub ended: i64,
    pub data_time: i64,
    /// The job's name, if the backup was a job's run.
    pub job: Option<String>,
    pub extents: Vec<RecordExtent>,
}

impl Repository {
    /// Write a catalog record; returns its id (the BLAKE3 of the sealed file).
    pub fn save_catalog_record(&self, r: &CatalogRecord) -> Result<Id> {
        let sealed = BlobEncoder::new(3)?.seal_file(self.key(), MAGIC_CATALOG, &cbor(r)?)?;
        let id = Id::of_file(&sealed);
        self.backend()
            .put(FileKind::Catalog, &id.to_hex(), sealed.into())?;
        Ok(id)
    }

    /// Every catalog record here, oldest data first.
    pub fn catalog_records(&self) -> Result<Vec<(Id, CatalogRecord)>> {
        let mut out = Vec::new();
        for f in self.backend().list(FileKind::Catalog)? {
            let what = format!("catalog record {}", f.name);
            let id: Id = f
                .name
                .parse()
                .map_err(|_| Error::corrupt(&what, "file name is not an id"))?;
            let bytes = self.backend().get(FileKind::Catalog, &f.name)?;
            if Id::of_file(&bytes) != id {
                return Err(Error::corrupt(&what, "content does not match its name"));
            }
            let body = open_file(self.key(), MAGIC_CATALOG, &bytes, &what)?;
            let r: CatalogRecord = from_cbor(&body, &what)?;
            if r.v != 1 {
                return Err(Error::Unsupported(format!("{what}: version {}", r.v)));
            }
            out.push((id, r));
        }
        out.sort_by_key(|(_, r)| (r.data_time, r.started));
        Ok(out)
    }
}
