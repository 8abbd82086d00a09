//! `kura tape backup`: copy chosen backups of a repository onto tape (seed 002; PBS's tape
//! backup), to one library or to several at once.
//!
//! # Order on tape, and why
//! For each backup: its management information ([`BackupInfo`]: the catalog record, the
//! snapshot manifest, an index of exactly its packs, the repository's config and key files)
//! as an archive of its own, *then* the packs its media set does not hold yet. A reader that
//! finds the information can tell what the data that follows is, and a rebuild that reads
//! only the tapes knows every backup from it. At the end of the session the set's catalog
//! (every tape of the set, every backup and piece on them) is written as the last archive.
//!
//! # Reading the source once
//! Packs are read from the repository by a few threads ahead of the drives (at most
//! `prefetch` bytes in memory), checked against their ids (BLAKE3 of the pack file: a
//! damaged pack is never copied), and handed to each library's writer. A writer that fails
//! stops taking them; the others go on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kura_backend::FileKind;
use kura_catalog::{AppendPolicy, Catalog, TapeBackup, TapePiece, TapeState};
use kura_repo::backup::CancelToken;
use kura_repo::id::Id;
use kura_repo::needs::{self, NeededPack};
use kura_repo::repo::IndexedRepo;
use kura_repo::snapshot::SnapshotEntry;
use kura_tape::format::EntryKind;
use kura_tape::label::{
    self, BackupInfo, BackupPlace, PackRef, PiecePlace, RepoFile, SetCatalog, SetLabel,
};
use kura_tape::session::{Ack, Candidate, MediaHost, Session, SessionOptions, SessionStats};
use serde_bytes::ByteBuf;

use super::feed::Feed;
use super::{TapeEvents, now_ms, open_library, random_hex};
use crate::{Error, Result};

/// How `kura tape backup` runs.
#[derive(Debug, Clone)]
pub struct TapeBackupOptions {
    pub pool: String,
    /// Library targets; two or more write a mirror (each its own media set).
    pub libraries: Vec<String>,
    pub session: SessionOptions,
    /// How many bytes of packs may be read ahead of the drives.
    pub prefetch: u64,
    /// Parallel pack reads from the repository.
    pub readers: usize,
    /// Volume backup records to carry with the backups they describe.
    pub volume_records: VolumeRecords,
}

/// Volume backup records by snapshot id (hex): (volume name, the record's JSON line).
pub type VolumeRecords = HashMap<String, Vec<(String, Vec<u8>)>>;

/// One backup as it is to be copied.
struct Plan {
    id: Id,
    info: Arc<Vec<u8>>,
    snapshot: String,
    time: i64,
    packs: Vec<NeededPack>,
}

/// What one library got.
#[derive(Debug, serde::Serialize)]
pub struct LibraryReport {
    pub library: String,
    pub media_set: String,
    /// Backups now complete on this library's set (snapshot ids), and those already there.
    pub copied: Vec<String>,
    pub already: Vec<String>,
    pub packs_written: u64,
    pub packs_skipped: u64,
    pub stats: SessionStats,
    pub error: Option<String>,
    /// The error itself (for exit codes).
    #[serde(skip)]
    pub failure: Option<Error>,
}

#[derive(Debug, serde::Serialize)]
pub struct TapeBackupReport {
    pub libraries: Vec<LibraryReport>,
}

impl TapeBackupReport {
    /// The libraries' errors.
    pub fn into_failures(self) -> Vec<Error> {
        self.libraries
            .into_iter()
            .filter_map(|l| l.failure)
            .collect()
    }

    /// Snapshots complete on every library.
    pub fn complete_everywhere(&self) -> Vec<String> {
        let mut out: Option<HashSet<String>> = None;
        for l in &self.libraries {
            let here: HashSet<String> = l.copied.iter().chain(&l.already).cloned().collect();
            out = Some(match out {
                None => here,
                Some(o) => o.intersection(&here).cloned().collect(),
            });
        }
        let mut v: Vec<String> = out.unwrap_or_default().into_iter().collect();
        v.sort();
        v
    }
}

fn repo_file(repo: &IndexedRepo, kind: FileKind, name: &str) -> Result<RepoFile> {
    Ok(RepoFile {
        name: name.to_string(),
        bytes: ByteBuf::from(repo.backend().get(kind, name)?),
    })
}

/// Build each backup's management information (and what it needs) before any tape moves.
fn plan(
    repo: &IndexedRepo,
    snapshots: &[SnapshotEntry],
    volumes: &VolumeRecords,
) -> Result<Vec<Plan>> {
    let config = repo_file(repo, FileKind::Config, "config")?;
    let mut keys = Vec::new();
    for k in repo.backend().list(FileKind::Key)? {
        keys.push(repo_file(repo, FileKind::Key, &k.name)?);
    }
    let records = repo.catalog_records()?;
    let mut out = Vec::new();
    for s in snapshots {
        let hex = s.id.to_hex();
        let blobs = needs::blobs_needed(repo, &s.snapshot, &[])?;
        let packs = needs::packs_for(repo, &blobs)?;
        let (index_id, index) = repo.seal_index_file(&needs::index_for(repo, &packs))?;
        let record = records
            .iter()
            .find(|(_, r)| {
                r.extents
                    .iter()
                    .any(|e| kura_catalog::position_names(&e.position, &hex))
            })
            .map(|(id, _)| repo_file(repo, FileKind::Catalog, &id.to_hex()))
            .transpose()?;
        let time = s.snapshot.time.0 * 1000 + (s.snapshot.time.1 / 1_000_000) as i64;
        let info = BackupInfo {
            v: label::VERSION,
            repository: repo.config().id.to_hex(),
            snapshot: hex.clone(),
            time,
            config: config.clone(),
            keys: keys.clone(),
            snapshot_file: repo_file(repo, FileKind::Snapshot, &hex)?,
            index_file: RepoFile {
                name: index_id.to_hex(),
                bytes: ByteBuf::from(index),
            },
            catalog_record: record,
            packs: packs
                .iter()
                .map(|p| PackRef {
                    id: p.id.to_hex(),
                    size: p.size,
                })
                .collect(),
            volume_records: volumes
                .get(&hex)
                .into_iter()
                .flatten()
                .map(|(name, line)| RepoFile {
                    name: name.clone(),
                    bytes: ByteBuf::from(line.clone()),
                })
                .collect(),
        };
        out.push(Plan {
            id: s.id,
            info: Arc::new(label::to_cbor(&info)?),
            snapshot: hex,
            time,
            packs,
        });
    }
    Ok(out)
}

/// The media set a library writes this session: the pool's newest (append policy) or a
/// new one.
fn choose_set(catalog: &Catalog, pool: &str, library: &str) -> Result<SetLabel> {
    let p = catalog.pool(pool)?;
    for expired in catalog.expire_sets(pool)? {
        tracing::info!(pool, set = %expired, "media set expired: its tapes may be written again");
    }
    if p.append == AppendPolicy::Append
        && let Some(s) = catalog
            .media_sets()?
            .into_iter()
            .filter(|s| s.pool == pool && s.library == library)
            .max_by_key(|s| (s.created, s.id.clone()))
    {
        return Ok(SetLabel {
            v: label::VERSION,
            set: s.id,
            pool: pool.to_string(),
            seq: 0,
            created: s.created,
        });
    }
    Ok(SetLabel {
        v: label::VERSION,
        set: random_hex(),
        pool: pool.to_string(),
        seq: 0,
        created: now_ms(),
    })
}

/// The catalog side of a session on one library.
struct Host<'a> {
    catalog: &'a Catalog,
    library: String,
    set: SetLabel,
    events: &'a dyn TapeEvents,
    cancel: &'a CancelToken,
    mount: Option<i64>,
    shared: &'a Shared,
    repository: String,
}

impl MediaHost for Host<'_> {
    fn candidates(&mut self) -> kura_tape::Result<Vec<Candidate>> {
        let tapes = self.catalog.tapes(Some(&self.library)).map_err(cat)?;
        let mut in_set: Vec<_> = tapes
            .iter()
            .filter(|t| t.media_set.as_deref() == Some(&self.set.set))
            .collect();
        in_set.sort_by_key(|t| t.set_seq);
        let next = in_set.iter().filter_map(|t| t.set_seq).max().unwrap_or(0) as u32 + 1;
        let mut out = Vec::new();
        if let Some(last) = in_set.last()
            && last.state == TapeState::Writable
        {
            out.push(Candidate {
                label: last.label.clone(),
                append: true,
                seq: last.set_seq.unwrap_or(0) as u32,
                overwrite_set: None,
            });
        }
        for t in &tapes {
            if t.state == TapeState::Blank && t.pool == self.set.pool {
                out.push(Candidate {
                    label: t.label.clone(),
                    append: false,
                    seq: next,
                    overwrite_set: t.expired_set.clone(),
                });
            }
        }
        Ok(out)
    }

    fn refused(&mut self, label: &str, reason: &str) -> kura_tape::Result<()> {
        self.events
            .note(&format!("{}: tape {label} refused: {reason}", self.library));
        self.catalog
            .set_tape_state(label, TapeState::Error, Some(reason))
            .map_err(cat)
    }

    fn mount_request(&mut self, message: &str) -> kura_tape::Result<()> {
        self.mount = Some(
            self.catalog
                .add_mount_request(&self.library, message)
                .map_err(cat)?,
        );
        self.events.mount_request(&self.library, message);
        Ok(())
    }

    fn mount_satisfied(&mut self) -> kura_tape::Result<()> {
        if let Some(id) = self.mount.take() {
            self.catalog
                .end_mount_request(id, "satisfied")
                .map_err(cat)?;
        }
        self.events.mount_satisfied(&self.library);
        Ok(())
    }

    fn joined(&mut self, label: &str, seq: u32) -> kura_tape::Result<()> {
        self.catalog
            .create_media_set(
                &self.set.set,
                &self.set.pool,
                &self.library,
                self.set.created,
            )
            .map_err(cat)?;
        self.catalog
            .join_set(label, &self.set.set, seq as i64)
            .map_err(cat)?;
        self.events.note(&format!(
            "{}: tape {label} is tape {seq} of media set {}",
            self.library,
            &self.set.set[..8]
        ));
        Ok(())
    }

    fn full(&mut self, label: &str) -> kura_tape::Result<()> {
        self.events
            .note(&format!("{}: tape {label} is full", self.library));
        self.catalog
            .set_tape_state(label, TapeState::Full, None)
            .map_err(cat)
    }

    fn drive_failed(&mut self, drive: &str, label: &str, reason: &str) -> kura_tape::Result<()> {
        self.events.note(&format!(
            "{}: drive {drive} failed writing tape {label}: {reason}; going on in another drive",
            self.library
        ));
        self.catalog
            .set_tape_state(
                label,
                TapeState::Error,
                Some(&format!("drive {drive} failed while writing it: {reason}")),
            )
            .map_err(cat)
    }

    fn acknowledged(&mut self, ack: &Ack) -> kura_tape::Result<()> {
        let mut pieces = Vec::new();
        let mut bytes = 0i64;
        for p in ack.pieces {
            bytes += p.len as i64;
            match p.kind {
                EntryKind::Pack => pieces.push(TapePiece {
                    pack: hex::encode(p.id),
                    start: p.offset as i64,
                    len: p.len as i64,
                    total: p.total as i64,
                    label: ack.label.to_string(),
                    file: ack.file as i64,
                }),
                EntryKind::BackupInfo => {
                    // Its pieces are found like a pack's, under the name `info-SNAPSHOT`.
                    pieces.push(TapePiece {
                        pack: info_name(&hex::encode(p.id)),
                        start: p.offset as i64,
                        len: p.len as i64,
                        total: p.total as i64,
                        label: ack.label.to_string(),
                        file: ack.file as i64,
                    });
                    if p.offset != 0 {
                        continue;
                    }
                    if let Some(InfoFor {
                        snapshot,
                        time,
                        packs,
                    }) = self.shared.info_for.take()
                    {
                        let row = TapeBackup {
                            id: 0,
                            media_set: self.set.set.clone(),
                            repository: self.repository.clone(),
                            snapshot,
                            taken: time,
                            label: ack.label.to_string(),
                            file: ack.file as i64,
                            bytes: packs.iter().map(|(_, s)| s).sum(),
                            state: "writing".into(),
                            added: 0,
                        };
                        self.shared
                            .current
                            .set(self.catalog.add_tape_backup(&row, &packs).map_err(cat)?);
                    }
                }
                _ => {}
            }
        }
        self.catalog
            .acknowledge_archive(&self.set.set, Some((ack.label, bytes)), &pieces)
            .map_err(cat)
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The name a backup's management information is recorded under among the set's pieces.
pub fn info_name(snapshot: &str) -> String {
    format!("info-{snapshot}")
}

fn cat(e: kura_catalog::Error) -> kura_tape::Error {
    kura_tape::Error::Invalid(format!("catalog: {e}"))
}

/// Copy `snapshots` of `repo` to tape. Each library's outcome is in the report; the call
/// fails only when nothing could start (bad pool, no library).
pub fn tape_backup(
    catalog: &Catalog,
    repo: &IndexedRepo,
    snapshots: &[SnapshotEntry],
    opts: &TapeBackupOptions,
    events: &dyn TapeEvents,
    cancel: &CancelToken,
) -> Result<TapeBackupReport> {
    catalog.pool(&opts.pool)?;
    if opts.libraries.is_empty() {
        return Err(Error::Invalid("no library given".into()));
    }
    let libs = opts
        .libraries
        .iter()
        .map(|n| open_library(catalog, n).map(|l| (n.clone(), l)))
        .collect::<Result<Vec<_>>>()?;
    let plans = plan(repo, snapshots, &opts.volume_records)?;
    // What each library's set already holds, and so which packs must be read at all.
    let mut sets = Vec::new();
    for (name, _) in &libs {
        let set = choose_set(catalog, &opts.pool, name)?;
        let pieces = catalog.set_pieces(&set.set)?;
        // Bytes of each pack the set holds from its start: whole packs are skipped, packs
        // cut by an earlier session that ended are finished from where they stop.
        let have: HashMap<String, u64> = pieces
            .iter()
            .map(|(k, p)| (k.clone(), kura_catalog::covered(p).max(0) as u64))
            .collect();
        sets.push((set, have));
    }
    // The packs any library lacks, in plan order, and how many lack each.
    let mut wanted: Vec<(Id, usize)> = Vec::new();
    let mut seen = HashSet::new();
    for plan in &plans {
        for p in &plan.packs {
            let hex = p.id.to_hex();
            let n = sets
                .iter()
                .filter(|(_, have)| have.get(&hex).is_none_or(|c| *c < p.size))
                .count();
            if n > 0 && seen.insert(p.id) {
                wanted.push((p.id, n));
            }
        }
    }
    let window = (opts.prefetch / repo.config().pack_size.max(1) as u64).max(2) as usize;
    let feed = Arc::new(Feed::new(wanted, libs.len(), window));
    let reports = std::thread::scope(|s| {
        for _ in 0..opts.readers.max(1) {
            let feed = feed.clone();
            s.spawn(move || feed.read(repo, cancel));
        }
        let handles: Vec<_> = libs
            .iter()
            .zip(sets)
            .enumerate()
            .map(|(i, ((name, lib), (set, have)))| {
                let feed = feed.clone();
                let plans = &plans;
                s.spawn(move || {
                    let w = Writer {
                        lib_index: i,
                        repository: repo.config().id.to_hex(),
                        feed: &feed,
                        plans,
                        opts,
                        events,
                        cancel,
                    };
                    let r = w.run(catalog, lib, name, set, have);
                    feed.stop(i);
                    r
                })
            })
            .collect();
        let reports: Vec<LibraryReport> = handles
            .into_iter()
            .zip(&opts.libraries)
            .map(|(h, name)| {
                h.join().unwrap_or_else(|_| LibraryReport {
                    library: name.clone(),
                    media_set: String::new(),
                    copied: vec![],
                    already: vec![],
                    packs_written: 0,
                    packs_skipped: 0,
                    stats: SessionStats::default(),
                    error: Some("the writer thread panicked".into()),
                    failure: Some(Error::Invalid("the writer thread panicked".into())),
                })
            })
            .collect();
        feed.release();
        reports
    });
    Ok(TapeBackupReport { libraries: reports })
}

/// A backup whose management information is on its way to tape.
struct InfoFor {
    snapshot: String,
    time: i64,
    packs: Vec<(String, i64)>,
}

/// The state both a writer and its session's host see: which backup's information is being
/// written, and the row it got.
#[derive(Default)]
struct Shared {
    info_for: std::cell::RefCell<Option<InfoFor>>,
    current: std::cell::Cell<Option<i64>>,
}

struct Writer<'a> {
    lib_index: usize,
    repository: String,
    feed: &'a Feed,
    plans: &'a [Plan],
    opts: &'a TapeBackupOptions,
    events: &'a dyn TapeEvents,
    cancel: &'a CancelToken,
}

impl Writer<'_> {
    fn run(
        &self,
        catalog: &Catalog,
        lib: &kura_tape::library::Library,
        name: &str,
        set: SetLabel,
        mut have: HashMap<String, u64>,
    ) -> LibraryReport {
        let (plans, opts, events, cancel) = (self.plans, self.opts, self.events, self.cancel);
        let shared = Shared::default();
        let mut report = LibraryReport {
            library: name.to_string(),
            media_set: set.set.clone(),
            copied: vec![],
            already: vec![],
            packs_written: 0,
            packs_skipped: 0,
            stats: SessionStats::default(),
            error: None,
            failure: None,
        };
        let mut host = Host {
            catalog,
            library: name.to_string(),
            set: set.clone(),
            events,
            cancel,
            mount: None,
            shared: &shared,
            repository: self.repository.clone(),
        };
        let r = (|| -> Result<SessionStats> {
            let existing: HashMap<String, kura_catalog::TapeBackup> = catalog
                .tape_backups()?
                .into_iter()
                .filter(|b| b.media_set == set.set)
                .map(|b| (b.snapshot.clone(), b))
                .collect();
            let mut session = Session::new(lib, &mut host, opts.session.clone(), set.clone())?;
            let mut rows = Vec::new();
            for plan in plans {
                let row = match existing.get(&plan.snapshot) {
                    Some(b) if b.state == "complete" => {
                        report.already.push(plan.snapshot.clone());
                        continue;
                    }
                    Some(b) => Some(b.id),
                    None => None,
                };
                let row = match row {
                    Some(id) => id,
                    None => {
                        shared.info_for.replace(Some(InfoFor {
                            snapshot: plan.snapshot.clone(),
                            time: plan.time,
                            packs: plan
                                .packs
                                .iter()
                                .map(|p| (p.id.to_hex(), p.size as i64))
                                .collect(),
                        }));
                        session.write_alone(EntryKind::BackupInfo, plan.id.0, plan.info.clone())?;
                        shared.current.take().ok_or_else(|| {
                            Error::Invalid(format!(
                                "backup {} is already on media set {} (recorded by another run)",
                                &plan.snapshot[..8],
                                &set.set[..8]
                            ))
                        })?
                    }
                };
                for p in &plan.packs {
                    let hex = p.id.to_hex();
                    let from = have.get(&hex).copied().unwrap_or(0);
                    if from >= p.size {
                        report.packs_skipped += 1;
                        continue;
                    }
                    let data = self.feed.take(self.lib_index, &p.id, cancel)?;
                    session.write_object_from(EntryKind::Pack, p.id.0, data, from)?;
                    have.insert(hex, p.size);
                    report.packs_written += 1;
                }
                session.close_archive()?;
                rows.push((row, plan.snapshot.clone()));
            }
            // The set's catalog closes a session that wrote anything (one with nothing to
            // write asks for no tape).
            session.close_archive()?;
            if session.stats().archives > 0 {
                let catalog_bytes = set_catalog(catalog, &set)?;
                session.write_alone(EntryKind::SetCatalog, [0; 32], Arc::new(catalog_bytes))?;
            }
            let stats = session.end()?;
            for (row, snap) in rows {
                if catalog.complete_if_whole(row)? {
                    report.copied.push(snap);
                }
            }
            Ok(stats)
        })();
        if let Some(id) = host.mount.take() {
            let _ = catalog.end_mount_request(id, "abandoned");
        }
        match r {
            Ok(stats) => report.stats = stats,
            Err(e) => {
                report.error = Some(e.to_string());
                report.failure = Some(e);
            }
        }
        report
    }
}

/// The set's catalog as the catalog knows it now.
fn set_catalog(catalog: &Catalog, set: &SetLabel) -> Result<Vec<u8>> {
    let tapes = catalog
        .set_tapes(&set.set)?
        .into_iter()
        .map(|t| (t.set_seq.unwrap_or(0) as u32, t.label))
        .collect();
    let backups = catalog
        .tape_backups()?
        .into_iter()
        .filter(|b| b.media_set == set.set)
        .map(|b| BackupPlace {
            repository: b.repository,
            snapshot: b.snapshot,
            time: b.taken,
            label: b.label,
            file: b.file as u32,
        })
        .collect();
    let pieces = catalog
        .set_pieces(&set.set)?
        .into_values()
        .flatten()
        .map(|p| PiecePlace {
            pack: p.pack,
            offset: p.start as u64,
            len: p.len as u64,
            label: p.label,
            file: p.file as u32,
        })
        .collect();
    Ok(label::to_cbor(&SetCatalog {
        v: label::VERSION,
        set: set.set.clone(),
        pool: set.pool.clone(),
        tapes,
        backups,
        pieces,
    })?)
}
