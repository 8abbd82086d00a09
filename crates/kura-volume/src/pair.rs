//! Mirror pairs (seed 003, embodiments 1–3): a primary volume served to hosts and a
//! secondary volume of the same size kept identical to it.
//!
//! # States
//! - **duplex**: every host change reaches both volumes before it is acknowledged.
//! - **split**: the secondary is frozen — wholly, or only the *split areas* given to
//!   `pair split --area` (the split map); outside them the pair stays duplex. A host change
//!   inside a split area goes to the primary only, after its 4 MiB granule's bit is set in
//!   the pair's *difference bitmap* and that bitmap is durable on disk. So a crash cannot
//!   lose the knowledge of what differs. A split secondary is a stable image: backing it up
//!   needs no host pause beyond the split itself.
//! - **resync** copies only the granules whose bits are set from primary to secondary
//!   (holes stay holes), clears their bits, and returns to duplex. Host writes go on during
//!   it: each granule is copied under the export's exclusive change lock (a host write waits
//!   at most one 4 MiB copy), and the switch to duplex happens under it once no bit is set.
//!
//! `pair create` is a resync from a state where every bit is set: the initial copy.
//!
//! # On disk
//! - `PRIMARY.pair`: the pair's configuration, JSON (`"magic": "KURAPAIR1"`): secondary,
//!   state, split areas. Written atomically.
//! - `PRIMARY.pairdiff`: the difference bitmap, a `KURADBM1` bitmap (see [`crate::dirty`]).
//! - The secondary's metadata names its primary (`secondary_of`): it refuses host I/O and
//!   cannot be resized or deleted while paired.
//!
//! # Unclean shutdown
//! In split state nothing is lost: bits are durable before acknowledgement. In duplex state a
//! killed server may have written a block to one volume and not the other (the host never got
//! the acknowledgement). The pair then comes back split with every bit set: a full resync
//! makes them identical again — what md does for a mirror without a write-intent bitmap.

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use kura_nbd::{Export, FileExport};
use serde::{Deserialize, Serialize};

use crate::dirty::{DirtyMap, GRANULE};
use crate::export::VolumeExport;
use crate::store::{Error, Result, VolumeStore};

pub const MAGIC: &str = "KURAPAIR1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairState {
    Duplex,
    Split,
}

/// `PRIMARY.pair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairConfig {
    pub magic: String,
    pub v: u32,
    pub primary: String,
    pub secondary: String,
    pub state: PairState,
    /// Split areas as (offset, length); empty: the whole volume. Only meaningful when split.
    #[serde(default)]
    pub areas: Vec<(u64, u64)>,
    /// RFC 3339: when the pair entered its state.
    pub since: String,
    /// Why the pair is split when no one split it (an unclean shutdown in duplex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A pair as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    #[serde(flatten)]
    pub config: PairConfig,
    /// Bytes in granules that differ (to be copied by a resync).
    pub dirty_bytes: u64,
    /// Whether the primary is being served by a running server (the state shown is live).
    pub served: bool,
}

/// A loaded pair, attached to its primary's export.
#[derive(Debug)]
pub struct Pair {
    pub(crate) config: Mutex<PairConfig>,
    pub(crate) secondary: FileExport,
    pub(crate) diff: DirtyMap,
    /// Hold on the secondary's raw file (exclusive flock): no one else serves, resizes or
    /// deletes it while the pair is loaded.
    _hold: File,
}

/// Parse `OFFSET:LEN` (sizes with units).
pub fn parse_area(s: &str) -> Result<(u64, u64)> {
    let (o, l) = s
        .split_once(':')
        .ok_or_else(|| Error::Invalid(format!("area {s:?}: use OFFSET:LENGTH, e.g. 0:64M")))?;
    let num = |v: &str| -> Result<u64> {
        if v.trim() == "0" {
            return Ok(0);
        }
        crate::store::parse_size(v)
    };
    let (o, l) = (num(o)?, num(l)?);
    if l == 0 {
        return Err(Error::Invalid(format!("area {s:?} is empty")));
    }
    Ok((o, l))
}

/// A duplex pair whose server died (its difference bitmap was not closed) may differ
/// anywhere: it becomes split with a note, and the caller sets every bit. Returns whether
/// that happened.
fn recover_unclean(config: &mut PairConfig, unclean: bool) -> bool {
    if config.state != PairState::Duplex || !unclean {
        return false;
    }
    config.state = PairState::Split;
    config.areas.clear();
    config.note = Some(
        "the server stopped uncleanly while the pair was duplex: a full resync is needed".into(),
    );
    true
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> Option<(u64, u64)> {
    let s = a.0.max(b.0);
    let e = (a.0 + a.1).min(b.0 + b.1);
    (s < e).then(|| (s, e - s))
}

impl Pair {
    pub(crate) fn new(
        config: PairConfig,
        secondary: FileExport,
        diff: DirtyMap,
        hold: File,
    ) -> Pair {
        let mut config = config;
        if recover_unclean(&mut config, diff.was_unclean()) {
            diff.set_all();
        }
        Pair {
            config: Mutex::new(config),
            secondary,
            diff,
            _hold: hold,
        }
    }

    pub fn config(&self) -> PairConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The parts of `[offset, offset+len)` that are split (`true`) or duplex (`false`).
    fn parts(&self, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
        let c = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if c.state == PairState::Duplex {
            return vec![(offset, len, false)];
        }
        if c.areas.is_empty() {
            return vec![(offset, len, true)];
        }
        // Walk the range against the sorted areas.
        let mut areas = c.areas.clone();
        areas.sort_unstable();
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset + len;
        for a in areas {
            let Some((s, l)) = overlap((at, end - at), a) else {
                continue;
            };
            if s > at {
                out.push((at, s - at, false));
            }
            out.push((s, l, true));
            at = s + l;
        }
        if at < end {
            out.push((at, end - at, false));
        }
        out
    }

    /// Before a host change reaches the primary: make the split parts' bits durable.
    pub(crate) fn before_change(&self, offset: u64, len: u64) -> io::Result<()> {
        for (o, l, split) in self.parts(offset, len) {
            if split {
                self.diff
                    .mark_durable(o, l)
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// After the primary took a host change: apply it to the secondary where duplex.
    pub(crate) fn after_change(
        &self,
        offset: u64,
        len: u64,
        apply: impl Fn(&FileExport, u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        for (o, l, split) in self.parts(offset, len) {
            if !split {
                apply(&self.secondary, o, l)?;
            }
        }
        Ok(())
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        self.secondary.flush()?;
        self.diff
            .persist()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Copy one granule from the primary to the secondary (holes stay holes).
    pub(crate) fn copy_granule(
        &self,
        primary: &dyn Export,
        g: u64,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let size = primary.size();
        let off = g * GRANULE;
        let n = GRANULE.min(size - off);
        let runs = primary.allocation(off, n as u32)?;
        let mut at = off;
        for (l, flags) in runs {
            let l = u64::from(l);
            if flags & kura_nbd::proto::STATE_HOLE != 0 {
                self.secondary.write_zeroes(at, l, true, false)?;
            } else {
                buf.resize(l as usize, 0);
                primary.read_at(at, buf)?;
                self.secondary.write_at(at, buf, false)?;
            }
            at += l;
        }
        if at < off + n {
            // allocation() may describe less than asked: copy the rest plainly.
            buf.resize((off + n - at) as usize, 0);
            primary.read_at(at, buf)?;
            self.secondary.write_at(at, buf, false)?;
        }
        Ok(())
    }

    pub(crate) fn set_state(&self, state: PairState, areas: Vec<(u64, u64)>) -> PairConfig {
        let mut c = self.config.lock().unwrap_or_else(|p| p.into_inner());
        c.state = state;
        c.areas = areas;
        c.note = None;
        c.since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        c.clone()
    }

    /// Whether the secondary is wholly frozen (a stable image to back up).
    pub fn wholly_split(&self) -> bool {
        let c = self.config.lock().unwrap_or_else(|p| p.into_inner());
        c.state == PairState::Split && c.areas.is_empty()
    }

    pub fn info(&self, served: bool) -> PairInfo {
        PairInfo {
            config: self.config(),
            dirty_bytes: self.diff.dirty_bytes(),
            served,
        }
    }
}

/// `(offset, len)` areas checked against a volume size.
pub(crate) fn check_areas(areas: &[(u64, u64)], size: u64) -> Result<()> {
    for &(o, l) in areas {
        if o.checked_add(l).is_none_or(|e| e > size) {
            return Err(Error::Invalid(format!(
                "split area {o}:{l} reaches past the end of the {size}-byte volume"
            )));
        }
    }
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn not_paired(name: &str) -> Error {
    Error::Invalid(format!(
        "{name} is not the primary of a mirror pair (kura pair create {name} SECONDARY)"
    ))
}

/// What a resync copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncOutcome {
    pub granules: u64,
    pub bytes: u64,
}

impl VolumeStore {
    fn save_pair(&self, c: &PairConfig) -> Result<()> {
        let body = serde_json::to_vec_pretty(c).map_err(|e| Error::Invalid(e.to_string()))?;
        self.write_atomic(&format!("{}.pair", c.primary), &body)
    }

    fn read_pair(&self, name: &str) -> Result<Option<PairConfig>> {
        let path = self.path(name, "pair");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("read {}", path.display()),
                    source,
                });
            }
        };
        let c: PairConfig = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if c.magic != MAGIC || c.v != 1 || c.primary != name {
            return Err(Error::Corrupt {
                path,
                why: format!(
                    "magic {:?} version {} primary {:?}",
                    c.magic, c.v, c.primary
                ),
            });
        }
        Ok(Some(c))
    }

    /// The pair of primary `name` (a volume of `size` bytes), loaded for serving.
    pub(crate) fn load_pair(&self, name: &str, size: u64) -> Result<Option<Pair>> {
        let Some(config) = self.read_pair(name)? else {
            return Ok(None);
        };
        let sm = self.meta(&config.secondary)?;
        if sm.size != size || sm.secondary_of.as_deref() != Some(name) {
            return Err(Error::Corrupt {
                path: self.path(name, "pair"),
                why: format!(
                    "secondary {} is {} bytes and paired with {:?}",
                    sm.name, sm.size, sm.secondary_of
                ),
            });
        }
        let hold = self.exclusive(&config.secondary)?.0;
        let file = hold.try_clone().map_err(|source| Error::Io {
            what: format!("open secondary {}", config.secondary),
            source,
        })?;
        let secondary = FileExport::new(file, false).map_err(|source| Error::Io {
            what: format!("open secondary {}", config.secondary),
            source,
        })?;
        let diff = DirtyMap::open(&self.path(name, "pairdiff"), size)?;
        let before = config.state;
        let pair = Pair::new(config, secondary, diff, hold);
        let after = pair.config();
        if after.state != before {
            tracing::warn!("pair {name}: {}", after.note.clone().unwrap_or_default());
            self.save_pair(&after)?;
            pair.diff.persist()?;
        }
        Ok(Some(pair))
    }

    /// Pair `primary` with `secondary` (same size, not served, not paired): copy the primary
    /// over, then duplex. The primary may be served meanwhile.
    pub fn pair_create(&self, primary: &str, secondary: &str) -> Result<PairInfo> {
        let pm = self.meta(primary)?;
        let mut sm = self.meta(secondary)?;
        if primary == secondary {
            return Err(Error::Invalid("a volume cannot mirror itself".into()));
        }
        if pm.size != sm.size {
            return Err(Error::Invalid(format!(
                "{primary} is {} bytes and {secondary} {} bytes: a pair needs equal sizes",
                pm.size, sm.size
            )));
        }
        for m in [&pm, &sm] {
            if m.work {
                return Err(Error::Invalid(format!("{} is a working volume", m.name)));
            }
            if let Some(p) = &m.secondary_of {
                return Err(Error::Invalid(format!(
                    "{} is already the secondary of {p}",
                    m.name
                )));
            }
            if self.read_pair(&m.name)?.is_some() {
                return Err(Error::Invalid(format!("{} is already a primary", m.name)));
            }
        }
        // The secondary must not be in use; it is held from here on by the pair.
        drop(self.exclusive(secondary)?);
        sm.secondary_of = Some(primary.to_string());
        self.write_meta(&sm)?;
        let _ = std::fs::remove_file(self.path(primary, "pairdiff"));
        {
            // Every granule differs until the initial copy: a resync from "split, all set".
            let diff = DirtyMap::open(&self.path(primary, "pairdiff"), pm.size)?;
            diff.set_all();
            diff.close()?;
        }
        self.save_pair(&PairConfig {
            magic: MAGIC.into(),
            v: 1,
            primary: primary.into(),
            secondary: secondary.into(),
            state: PairState::Split,
            areas: Vec::new(),
            since: now(),
            note: Some("initial copy".into()),
        })?;
        let export = self.open_export(primary)?;
        if export.pair().is_none() {
            // Served already: attach the pair between two changes.
            let pair = self
                .load_pair(primary, pm.size)?
                .ok_or_else(|| not_paired(primary))?;
            let _g = export.exclusive()?;
            *export.pair.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(pair));
        }
        self.resync(&export)?;
        Ok(self.pair_info(&export))
    }

    fn pair_info(&self, export: &VolumeExport) -> PairInfo {
        match export.pair() {
            Some(p) => p.info(true),
            None => PairInfo {
                config: PairConfig {
                    magic: MAGIC.into(),
                    v: 1,
                    primary: export.name.clone(),
                    secondary: String::new(),
                    state: PairState::Duplex,
                    areas: Vec::new(),
                    since: String::new(),
                    note: None,
                },
                dirty_bytes: 0,
                served: true,
            },
        }
    }

    /// Split the pair of `primary`: freeze the secondary (wholly, or only `areas`).
    pub fn pair_split(&self, primary: &str, areas: Vec<(u64, u64)>) -> Result<PairInfo> {
        let export = self.open_export(primary)?;
        let pair = export.pair().ok_or_else(|| not_paired(primary))?;
        check_areas(&areas, export.size())?;
        let g = export.exclusive()?;
        self.split_locked(&export, &pair, areas, &g)?;
        drop(g);
        Ok(pair.info(true))
    }

    /// Split under the export's exclusive change lock (nothing in flight): both volumes
    /// durable, then the new state durable.
    pub(crate) fn split_locked(
        &self,
        export: &VolumeExport,
        pair: &Pair,
        areas: Vec<(u64, u64)>,
        _held: &std::sync::RwLockWriteGuard<'_, bool>,
    ) -> Result<()> {
        let c = pair.config();
        if c.state == PairState::Split {
            return Err(Error::Invalid(format!(
                "the pair of {} is already split (since {}); resync it first",
                c.primary, c.since
            )));
        }
        let flush = |r: io::Result<()>, what: &str| {
            r.map_err(|source| Error::Io {
                what: format!("flush {what} of {}", c.primary),
                source,
            })
        };
        flush(export.file.flush(), "the primary")?;
        flush(pair.secondary.flush(), "the secondary")?;
        pair.diff.persist()?;
        let new = pair.set_state(PairState::Split, areas);
        self.save_pair(&new)
    }

    /// Copy the granules that differ and return the pair of `primary` to duplex.
    pub fn pair_resync(&self, primary: &str) -> Result<(PairInfo, ResyncOutcome)> {
        let export = self.open_export(primary)?;
        let out = self.resync(&export)?;
        Ok((self.pair_info(&export), out))
    }

    pub(crate) fn resync(&self, export: &VolumeExport) -> Result<ResyncOutcome> {
        let pair = export.pair().ok_or_else(|| not_paired(&export.name))?;
        let mut out = ResyncOutcome::default();
        let mut buf = Vec::new();
        let ioerr = |what: &str| {
            let what = format!("resync {}: {what}", export.name);
            move |source| Error::Io { what, source }
        };
        loop {
            let granules = pair.diff.dirty_granules();
            if granules.is_empty() {
                let _g = export.exclusive()?;
                if !pair.diff.dirty_granules().is_empty() {
                    continue; // a host write landed in a split area meanwhile
                }
                if pair.config().state == PairState::Split {
                    let c = pair.set_state(PairState::Duplex, Vec::new());
                    self.save_pair(&c)?;
                }
                pair.diff.persist()?;
                return Ok(out);
            }
            for g in granules {
                // One granule at a time under the change lock: no host write splits a copy,
                // and the bit is cleared only once the copy is durable.
                let _g = export.exclusive()?;
                pair.copy_granule(&export.file, g, &mut buf)
                    .map_err(ioerr("copy"))?;
                pair.secondary
                    .flush()
                    .map_err(ioerr("flush the secondary"))?;
                pair.diff.clear_granules(&[g]);
                out.granules += 1;
                out.bytes += GRANULE.min(export.size() - g * GRANULE);
            }
            pair.diff.persist()?;
        }
    }

    /// Every pair in the store; live state for pairs this process serves.
    pub fn pair_list(&self) -> Result<Vec<PairInfo>> {
        let mut out = Vec::new();
        for v in self.list()? {
            let name = &v.meta.name;
            if let Some(p) = self.served(name).and_then(|e| e.pair()) {
                out.push(p.info(true));
                continue;
            }
            let Some(mut config) = self.read_pair(name)? else {
                continue;
            };
            let d = crate::dirty::peek(&self.path(name, "pairdiff"), v.meta.size)?;
            // As the next load will find it.
            let all = recover_unclean(&mut config, d.unclean);
            out.push(PairInfo {
                config,
                dirty_bytes: if all { v.meta.size } else { d.dirty_bytes },
                served: d.served,
            });
        }
        Ok(out)
    }

    /// Dissolve the pair of `primary`: the secondary becomes an ordinary volume holding
    /// whatever it held.
    pub fn pair_delete(&self, primary: &str) -> Result<()> {
        let config = self.read_pair(primary)?;
        if let Some(e) = self.served(primary) {
            let _g = e.exclusive()?;
            if let Some(p) = e.pair.lock().unwrap_or_else(|p| p.into_inner()).take() {
                p.diff.close()?;
            }
        } else if config.is_some() {
            // Not served here: it must not be served anywhere (its writes go to the pair).
            drop(self.exclusive(primary)?);
        }
        let remove = |p: std::path::PathBuf| match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io {
                what: format!("remove {}", p.display()),
                source: e,
            }),
            _ => Ok(()),
        };
        remove(self.path(primary, "pair"))?;
        remove(self.path(primary, "pairdiff"))?;
        // The secondary (also after a crash between writing its metadata and the pair's).
        for v in self.list()? {
            if v.meta.secondary_of.as_deref() == Some(primary) {
                let mut m = v.meta;
                m.secondary_of = None;
                self.write_meta(&m)?;
            }
        }
        if config.is_none() {
            return Err(not_paired(primary));
        }
        Ok(())
    }
}
