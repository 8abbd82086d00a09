//! `kura catalog rebuild --from-media`: what a library's tapes hold, read from the tapes
//! alone (Bareos's `bscan`), entered into the catalog — pools, media sets, tapes, backups and
//! where every piece is. Entering is idempotent: a backup or piece already known is left as
//! it is, so scanning twice (or a catalog that lost nothing) enters nothing twice.
//!
//! Only pieces of archives that were finished (their flagged last block read back) are
//! entered: an archive cut by a crash or a drive error was never acknowledged, and its
//! pieces were written again elsewhere.

use std::collections::{BTreeMap, HashMap};

use kura_catalog::{AppendPolicy, Catalog, TapeBackup, TapePiece, TapeState};
use kura_repo::backup::CancelToken;
use kura_tape::format::EntryKind;
use kura_tape::label::{self, BackupInfo};
use kura_tape::read::TapeReader;

use super::copy::info_name;
use super::restore::Mounts;
use super::{TapeEvents, open_library};
use crate::Result;

/// An entry seen on a tape: its file, what it is, which bytes of which object.
struct Seen {
    file: u32,
    kind: EntryKind,
    id: String,
    offset: u64,
    len: u64,
    total: u64,
    /// Its bytes, kept for management information only.
    data: Vec<u8>,
}

/// What one tape held.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScannedTape {
    pub label: String,
    pub pool: Option<String>,
    pub media_set: Option<String>,
    pub seq: Option<u32>,
    pub archives: u32,
    /// Archives that were never finished (not entered).
    pub unfinished: u32,
    pub damaged_blocks: u32,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScanReport {
    pub tapes: Vec<ScannedTape>,
    /// Backups entered now (snapshot ids), and those the catalog had already.
    pub added: Vec<String>,
    pub known: Vec<String>,
    /// Backups whose data is not all on the tapes scanned (entered, not complete).
    pub incomplete: Vec<String>,
    pub pieces: usize,
    /// Volume backup records found with the backups (`SNAPSHOT volume NAME`).
    pub volume_records: Vec<String>,
}

/// Scan every tape in library `name` (target name) and enter what they hold.
pub fn rebuild_from_media(
    catalog: &Catalog,
    name: &str,
    events: &dyn TapeEvents,
    cancel: &CancelToken,
) -> Result<ScanReport> {
    let lib = open_library(catalog, name)?;
    let status = lib.changer()?.status()?;
    let mut labels: Vec<String> = status
        .slots
        .iter()
        .filter_map(|s| s.barcode.clone())
        .chain(status.drives.iter().filter_map(|d| d.barcode.clone()))
        .filter(|b| !b.is_empty())
        .collect();
    labels.sort();
    let mut reader = TapeReader::open(&lib)?;
    // Only tapes the library holds are read: none is waited for.
    reader.mount_timeout = std::time::Duration::ZERO;
    let mut mounts = Mounts::new(catalog, name, events, cancel);
    let mut report = ScanReport::default();
    // Per set: pieces by name, information bytes by snapshot (pieces).
    let mut pieces: HashMap<String, Vec<TapePiece>> = HashMap::new();
    let mut infos: HashMap<(String, String), BTreeMap<u64, Vec<u8>>> = HashMap::new();
    let mut highest: HashMap<String, (u32, String)> = HashMap::new();
    for label in &labels {
        if cancel.is_cancelled() {
            return Err(kura_tape::Error::Cancelled.into());
        }
        let mut t = ScannedTape {
            label: label.clone(),
            ..Default::default()
        };
        let loaded = match reader.load(label, None, &mut mounts) {
            Ok((m, s)) => (m.clone(), s.clone()),
            Err(e) => {
                t.error = Some(e.to_string());
                report.tapes.push(t);
                continue;
            }
        };
        let (medium, set) = loaded;
        t.pool = Some(medium.pool.clone());
        if catalog.pool(&medium.pool).is_err() {
            catalog.add_pool(&medium.pool, None, AppendPolicy::Append)?;
            events.note(&format!(
                "pool {} entered (append; no retention)",
                medium.pool
            ));
        }
        if catalog.tape(label).is_err() {
            catalog.label_tape(label, name, &medium.pool, &medium.uuid)?;
        }
        let Some(set) = set else {
            report.tapes.push(t);
            continue;
        };
        t.media_set = Some(set.set.clone());
        t.seq = Some(set.seq);
        catalog.create_media_set(&set.set, &set.pool, name, set.created)?;
        if catalog.tape(label)?.media_set.is_none() {
            catalog.join_set(label, &set.set, set.seq as i64)?;
        }
        let h = highest.entry(set.set.clone()).or_insert((0, String::new()));
        if set.seq > h.0 {
            *h = (set.seq, label.clone());
        }
        let mut found: Vec<Seen> = Vec::new();
        let ends = reader.scan(|file, e| {
            let id = hex::encode(e.header.id);
            let data = if e.header.kind == EntryKind::BackupInfo && e.holes.is_empty() {
                e.data.clone()
            } else {
                Vec::new()
            };
            found.push(Seen {
                file,
                kind: e.header.kind,
                id,
                offset: e.header.offset,
                len: e.data.len() as u64,
                total: e.header.total,
                data,
            });
            Ok(())
        });
        let ends = match ends {
            Ok(ends) => ends,
            Err(e) => {
                t.error = Some(e.to_string());
                Vec::new()
            }
        };
        let clean: HashMap<u32, bool> = ends.iter().map(|(f, e)| (*f, e.clean)).collect();
        t.archives = ends.len() as u32;
        t.unfinished = ends.iter().filter(|(_, e)| !e.clean).count() as u32;
        t.damaged_blocks = ends.iter().map(|(_, e)| e.damaged_blocks).sum();
        for Seen {
            file,
            kind,
            id,
            offset,
            len,
            total,
            data,
        } in found
        {
            if !clean.get(&file).copied().unwrap_or(false) || len == 0 {
                continue;
            }
            let name = match kind {
                EntryKind::Pack => id,
                EntryKind::BackupInfo => {
                    if !data.is_empty() {
                        infos
                            .entry((set.set.clone(), id.clone()))
                            .or_default()
                            .insert(offset, data);
                    }
                    info_name(&id)
                }
                _ => continue,
            };
            pieces.entry(set.set.clone()).or_default().push(TapePiece {
                pack: name,
                start: offset as i64,
                len: len as i64,
                total: total as i64,
                label: label.clone(),
                file: file as i64,
            });
        }
        report.tapes.push(t);
    }
    let _ = reader.put_away();
    // Tapes of a set before its highest are full; the highest may be appended to.
    for (set, (_, last)) in &highest {
        for t in catalog.set_tapes(set)? {
            if t.state == TapeState::Writable && &t.label != last {
                catalog.set_tape_state(&t.label, TapeState::Full, None)?;
            }
        }
    }
    for (set, ps) in &pieces {
        report.pieces += ps.len();
        catalog.add_pieces(set, ps)?;
    }
    let known: HashMap<(String, String), i64> = catalog
        .tape_backups()?
        .into_iter()
        .map(|b| ((b.media_set, b.snapshot), b.id))
        .collect();
    for ((set, snapshot), parts) in infos {
        let mut bytes = Vec::new();
        for (off, d) in parts {
            if off as usize != bytes.len() {
                break;
            }
            bytes.extend_from_slice(&d);
        }
        let Ok(info) = label::from_cbor::<BackupInfo>(&bytes, "backup management information")
        else {
            report.incomplete.push(snapshot);
            continue;
        };
        for v in &info.volume_records {
            report.volume_records.push(format!(
                "{} volume {}",
                &snapshot[..8.min(snapshot.len())],
                v.name
            ));
        }
        let first = pieces
            .get(&set)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.pack == info_name(&snapshot) && p.start == 0)
            })
            .cloned();
        let Some(first) = first else {
            continue;
        };
        let id = match known.get(&(set.clone(), snapshot.clone())) {
            Some(id) => {
                report.known.push(snapshot.clone());
                *id
            }
            None => {
                let packs: Vec<(String, i64)> = info
                    .packs
                    .iter()
                    .map(|p| (p.id.clone(), p.size as i64))
                    .collect();
                let row = TapeBackup {
                    id: 0,
                    media_set: set.clone(),
                    repository: info.repository.clone(),
                    snapshot: snapshot.clone(),
                    taken: info.time,
                    label: first.label.clone(),
                    file: first.file,
                    bytes: packs.iter().map(|(_, s)| s).sum(),
                    state: "writing".into(),
                    added: 0,
                };
                match catalog.add_tape_backup(&row, &packs)? {
                    Some(id) => {
                        report.added.push(snapshot.clone());
                        id
                    }
                    None => continue,
                }
            }
        };
        if !catalog.complete_if_whole(id)? {
            report.incomplete.push(snapshot);
        }
    }
    report.added.sort();
    report.known.sort();
    Ok(report)
}
