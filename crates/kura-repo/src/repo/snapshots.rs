//! Snapshot manifests of a [`Repository`]: listing (strict for operations that must know every
//! snapshot, tolerant for readers), finding by id prefix or `latest`, and writing.

use super::*;

impl Repository {
    /// Every snapshot, oldest first, for operations that must know *every* snapshot (prune:
    /// deleting data a snapshot might reference is never safe). A damaged snapshot file is an
    /// error naming it and the way out; a file deleted while listing (a concurrent forget) is
    /// skipped. Everything else uses [`Repository::readable_snapshots`].
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let (out, damaged) = self.list_snapshots_reporting()?;
        if let Some(d) = damaged.into_iter().next() {
            return Err(damaged_snapshot_refusal(&d.name, &d.error));
        }
        Ok(out)
    }

    /// Every readable snapshot, oldest first, with the snapshot files that could not be read
    /// (damaged, or written by a newer kura). Listings, parent choice and forget policies
    /// work from the readable ones, so one damaged manifest costs only itself.
    pub fn list_snapshots_reporting(&self) -> Result<(Vec<SnapshotEntry>, Vec<DamagedFile>)> {
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for f in self.backend.list(FileKind::Snapshot)? {
            match self.load_snapshot_file(&f.name) {
                Ok(s) => out.push(s),
                Err(Error::Backend(e)) if e.kind() == ErrorKind::NotFound => {}
                Err(e) if e.is_data_damage() || matches!(e, Error::Unsupported(_)) => {
                    damaged.push(DamagedFile {
                        name: f.name,
                        error: e.to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok((out, damaged))
    }

    /// Every readable snapshot, oldest first; each unreadable snapshot file is logged as a
    /// warning naming it.
    pub fn readable_snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let (out, damaged) = self.list_snapshots_reporting()?;
        for d in &damaged {
            tracing::warn!("skipping damaged snapshot file {}: {}", d.name, d.error);
        }
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

    /// Find a snapshot by `latest` (the newest readable one) or by a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<SnapshotEntry> {
        if spec == "latest" {
            return self
                .readable_snapshots()?
                .pop()
                .ok_or_else(|| Error::SnapshotNotFound(spec.into()));
        }
        let name = self.resolve_snapshot_name(spec)?;
        self.load_snapshot_file(&name)
    }

    /// The id a snapshot spec names, without reading the snapshot (so a damaged snapshot can
    /// still be removed by naming it).
    pub fn resolve_snapshot_id(&self, spec: &str) -> Result<Id> {
        if spec == "latest" {
            return Ok(self.find_snapshot(spec)?.id);
        }
        let name = self.resolve_snapshot_name(spec)?;
        name.parse()
            .map_err(|_| Error::corrupt(format!("snapshot {name}"), "file name is not an id"))
    }

    fn resolve_snapshot_name(&self, spec: &str) -> Result<String> {
        let names = self.backend.list(FileKind::Snapshot)?;
        unique_prefix(names.iter().map(|f| f.name.as_str()), spec, "snapshot").map_err(
            |e| match e {
                Error::InvalidInput(m) if m.contains("no ") => Error::SnapshotNotFound(spec.into()),
                other => other,
            },
        )
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
}

/// Why an operation that must know every snapshot (prune) refuses a damaged one, and the way
/// out.
pub(crate) fn damaged_snapshot_refusal(name: &str, error: &str) -> Error {
    Error::InvalidInput(format!(
        "{error}; this operation must know what every snapshot references and refuses to go \
         on: remove the damaged snapshot explicitly with `kura forget {name}`"
    ))
}
