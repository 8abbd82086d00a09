//! Labelling tapes and checking tape copies read back whole.

use kura_catalog::{Catalog, TapeBackup};
use kura_repo::backup::CancelToken;
use kura_repo::id::Id;
use kura_tape::label::{self, MediumLabel};
use kura_tape::read::TapeReader;

use super::restore::{Mounts, fetcher, read_info};
use super::{TapeEvents, now_ms, open_library, random_hex};
use crate::{Error, Result};

/// How `kura media label` labels.
#[derive(Debug, Clone)]
pub struct LabelOptions {
    /// The pool the tapes join.
    pub pool: String,
    /// Label over a kura label the catalog does not know (erasing that tape).
    pub force: bool,
    pub block_size: usize,
}

/// What labelling one tape did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Labelled {
    pub label: String,
    pub ok: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// Label `barcodes` in library `library` for `pool` (each loaded, its old label read, the new
/// one written, then recorded). A tape the catalog knows in a media set is refused; one that
/// carries a kura label the catalog does not know is refused unless `force` (labelling
/// erases it). Returns one outcome per tape; stops at a device error.
pub fn label_tapes(
    catalog: &Catalog,
    library: &str,
    opts: &LabelOptions,
    barcodes: &[String],
    events: &dyn TapeEvents,
    cancel: &CancelToken,
) -> Result<Vec<Labelled>> {
    let (pool, force, block_size) = (opts.pool.as_str(), opts.force, opts.block_size);
    catalog.pool(pool)?;
    let lib = open_library(catalog, library)?;
    let mut reader = TapeReader::open(&lib)?;
    reader.mount_timeout = std::time::Duration::ZERO;
    let mut mounts = Mounts::new(catalog, library, events, cancel);
    let mut out = Vec::new();
    for b in barcodes {
        let refuse = |why: String| Labelled {
            label: b.clone(),
            ok: false,
            reason: Some(why),
        };
        if let Ok(t) = catalog.tape(b)
            && let Some(set) = &t.media_set
        {
            out.push(refuse(format!(
                "tape {b} is tape {} of media set {}; it is labelled again only after its set \
                 expired",
                t.set_seq.unwrap_or(0),
                &set[..8.min(set.len())]
            )));
            continue;
        }
        let drive = match reader.load_unchecked(b, &mut mounts) {
            Ok(d) => d,
            Err(kura_tape::Error::MountTimeout(_)) => {
                out.push(refuse(format!("tape {b} is not in the library")));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match label::read_label(drive) {
            Ok(Some(old)) if !force && catalog.tape(b).is_err() => {
                out.push(refuse(format!(
                    "tape {b} carries the label {} of pool {} the catalog does not know; \
                     `kura catalog rebuild --from-media` enters what it holds, --force erases it",
                    old.label, old.pool
                )));
                continue;
            }
            Ok(_) => {}
            // Unreadable: not kura's, or damaged; labelling will overwrite it.
            Err(kura_tape::Error::Format(_)) if force => {}
            Err(kura_tape::Error::Format(why)) => {
                out.push(refuse(format!(
                    "tape {b} holds something that is not a kura label ({why}); --force \
                     erases it"
                )));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // A tape in a media set holds backups, whatever this catalog says of it.
        match label::read_set_label(drive) {
            Ok(Some(set)) if !force => {
                out.push(refuse(format!(
                    "tape {b} is tape {} of media set {} (its own label says so, the catalog \
                     does not know it); `kura catalog rebuild --from-media` enters what it \
                     holds, --force erases it",
                    set.seq,
                    &set.set[..8.min(set.set.len())]
                )));
                continue;
            }
            Ok(_) | Err(kura_tape::Error::Format(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let l = MediumLabel {
            v: label::VERSION,
            label: b.clone(),
            pool: pool.to_string(),
            uuid: random_hex(),
            labelled: now_ms(),
        };
        label::write_label(drive, block_size, &l)?;
        catalog.label_tape(b, library, pool, &l.uuid)?;
        // The inventory lists the tape as a medium of its library.
        match catalog.add_medium(library, b) {
            Ok(_) | Err(kura_catalog::Error::Duplicate(_)) => {}
            Err(e) => return Err(e.into()),
        }
        events.note(&format!("{library}: tape {b} labelled for pool {pool}"));
        out.push(Labelled {
            label: b.clone(),
            ok: true,
            reason: None,
        });
    }
    reader.put_away()?;
    Ok(out)
}

/// What reading a tape copy back found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verified {
    pub snapshot: String,
    pub packs: u64,
    /// Packs that did not read back whole and equal to their ids.
    pub bad: Vec<String>,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.bad.is_empty()
    }
}

/// Read every pack of a tape backup back from its tapes and check each against its id
/// (BLAKE3 of the pack file), and that its management information reads.
pub fn verify_tape_backup(
    catalog: &Catalog,
    b: &TapeBackup,
    events: &dyn TapeEvents,
    cancel: &CancelToken,
) -> Result<Verified> {
    let mut f = fetcher(
        catalog,
        &b.media_set,
        std::time::Duration::from_secs(3600),
        events,
        cancel,
    )?;
    let info = read_info(&mut f, &b.snapshot)?;
    let names: Vec<String> = info.packs.iter().map(|p| p.id.clone()).collect();
    let mut v = Verified {
        snapshot: b.snapshot.clone(),
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    f.fetch(&names, |name, data, damaged| {
        seen.insert(name.to_string());
        v.packs += 1;
        if damaged || Id::of_file(&data).to_hex() != name {
            v.bad.push(name.to_string());
        }
        Ok(())
    })?;
    for n in names {
        if !seen.contains(&n) {
            v.bad.push(n);
        }
    }
    let _ = f.reader.put_away();
    if v.packs == 0 && !info.packs.is_empty() {
        return Err(Error::Invalid(format!(
            "no pack of backup {} could be read",
            &b.snapshot[..8]
        )));
    }
    Ok(v)
}

/// Of the backups a tape backup completed on every library, those whose every copy reads
/// back whole (`verify_tape_backup` on each library's set): what `--move` may remove from
/// the source. A copy that does not read back is noted and keeps its snapshot.
pub fn verified_for_move(
    catalog: &Catalog,
    report: &super::copy::TapeBackupReport,
    events: &dyn TapeEvents,
    cancel: &CancelToken,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let all = catalog.tape_backups()?;
    for snap in report.complete_everywhere() {
        let mut ok = true;
        for l in &report.libraries {
            let b = all.iter().find(|b| {
                b.snapshot == snap && b.media_set == l.media_set && b.state == "complete"
            });
            let Some(b) = b else {
                ok = false;
                continue;
            };
            let v = verify_tape_backup(catalog, b, events, cancel)?;
            if !v.ok() {
                events.note(&format!(
                    "{}: the copy of {} did not read back whole ({} bad packs); it stays in \
                     the repository",
                    l.library,
                    &snap[..8],
                    v.bad.len()
                ));
                ok = false;
            }
        }
        if ok {
            out.push(snap);
        }
    }
    Ok(out)
}
