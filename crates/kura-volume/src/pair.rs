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
//! - **areas split at different times** (embodiment 3): `pair split --area` may be called
//!   again for other areas while earlier ones stay split; each area keeps its own split
//!   time, and its frozen bytes are the primary's at that time. Areas lie on granule
//!   boundaries and never overlap, so every granule belongs to at most one area: an area
//!   can be backed up ([`crate::engine`], `volume backup --area`) and resynced on its own.
//! - **resync** copies only the granules whose bits are set from primary to secondary
//!   (holes stay holes), clears their bits, and returns to duplex — all of it, or one area
//!   (`--area`), which then rejoins while the others stay split. Host writes go on during
//!   it: each granule is copied under the export's exclusive change lock (a host write waits
//!   at most one 4 MiB copy), and the switch happens under it once no bit is left. A backup
//!   reading an area and a resync of it exclude each other ([`Pair::claim`]).
//!
//! `pair create` is a resync from a state where every bit is set: the initial copy.
//!
//! # On disk
//! - `PRIMARY.pair`: the pair's configuration, JSON (`"magic": "KURAPAIR1"`, version 2):
//!   secondary, state, split areas with their split times. Written atomically. Version 1
//!   (areas as `[offset, length]`, no times of their own) is read, its areas taking the
//!   pair's `since`, and written back as version 2 at the next change.
//! - `PRIMARY.pairdiff`: the difference bitmap, a `KURADBM1` bitmap (see [`crate::dirty`]).
//! - The secondary's metadata names its primary (`secondary_of`): it refuses host I/O and
//!   cannot be resized or deleted while paired.
//!
//! # Unclean shutdown
//! In split state nothing is lost: bits are durable before acknowledgement. In duplex state a
//! killed server may have written a block to one volume and not the other (the host never got
//! the acknowledgement). The pair then comes back split with every bit set: a full resync
//! makes them identical again — what md does for a mirror without a write-intent bitmap.
//! Split by areas, the same holds outside the areas (duplex there): those granules are
//! marked, the areas keep their frozen bytes and their bits, and resyncing the last area
//! (or all) copies the rest too.

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use kura_nbd::{Export, FileExport};
use kura_types::Extent;
use serde::{Deserialize, Serialize};

use crate::dirty::{DirtyMap, GRANULE};
use crate::error::{Error, Result};

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
    /// 2 (1: areas without their own split times; read, and written back as 2).
    pub v: u32,
    pub primary: String,
    pub secondary: String,
    pub state: PairState,
    /// Split areas, by offset, each with its own split time; empty: the whole volume. Only
    /// meaningful when split.
    #[serde(default)]
    pub areas: Vec<SplitArea>,
    /// RFC 3339: when the pair entered its state.
    pub since: String,
    /// Why the pair is split when no one split it (an unclean shutdown in duplex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The version of `PRIMARY.pair` written.
pub const VERSION: u32 = 2;

/// One split area of the secondary: frozen since `split`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "AreaRepr")]
pub struct SplitArea {
    pub offset: u64,
    pub length: u64,
    /// RFC 3339 (milliseconds): when the area was split — the time its frozen bytes are of.
    /// Empty only while a version-1 file is read (then the pair's `since`).
    pub split: String,
}

/// An area as either version writes it: `[offset, length]` (1) or an object (2).
#[derive(Deserialize)]
#[serde(untagged)]
enum AreaRepr {
    V1(u64, u64),
    V2 {
        offset: u64,
        length: u64,
        split: String,
    },
}

impl From<AreaRepr> for SplitArea {
    fn from(r: AreaRepr) -> SplitArea {
        match r {
            AreaRepr::V1(offset, length) => SplitArea {
                offset,
                length,
                split: String::new(),
            },
            AreaRepr::V2 {
                offset,
                length,
                split,
            } => SplitArea {
                offset,
                length,
                split,
            },
        }
    }
}

impl SplitArea {
    pub fn extent(&self) -> Extent {
        Extent::new(self.offset, self.length)
    }

    pub fn end(&self) -> u64 {
        self.extent().end().unwrap_or(u64::MAX)
    }

    /// The granules it covers (a version-1 area may share its first and last with
    /// neighbours).
    pub fn granules(&self) -> std::ops::Range<u64> {
        self.offset / GRANULE..self.end().div_ceil(GRANULE)
    }

    pub fn contains(&self, e: &Extent) -> bool {
        self.extent().contains(e)
    }
}

impl std::fmt::Display for SplitArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.offset, self.length)
    }
}

/// A pair as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    #[serde(flatten)]
    pub config: PairConfig,
    /// Bytes in granules that differ (to be copied by a resync).
    pub dirty_bytes: u64,
    /// Of those, the bytes in each split area (in the order of `areas`).
    #[serde(default)]
    pub area_dirty_bytes: Vec<u64>,
    /// Whether the primary is being served by a running server (the state shown is live).
    pub served: bool,
}

/// What a part of the secondary is claimed for: a backup reads it, or a resync writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Backup,
    Resync,
}

/// A loaded pair, attached to its primary's export.
#[derive(Debug)]
pub struct Pair {
    pub(crate) config: Mutex<PairConfig>,
    pub(crate) secondary: FileExport,
    pub(crate) diff: DirtyMap,
    /// Parts of the secondary a backup is reading or a resync is writing (byte ranges): a
    /// resync must not change what a backup reads, nor two resyncs race.
    claims: Mutex<Vec<(u64, u64, Use)>>,
    /// Hold on the secondary's raw file (exclusive flock): no one else serves, resizes or
    /// deletes it while the pair is loaded.
    _hold: File,
}

/// A claim on a part of the secondary ([`Pair::claim`]); released when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    pair: Arc<Pair>,
    range: (u64, u64, Use),
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut c = self.pair.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = c.iter().position(|r| *r == self.range) {
            c.remove(i);
        }
    }
}

/// What an unclean stop (the server died holding the difference bitmap) leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unclean {
    /// Nothing to recover: a clean stop, or wholly split (every change was marked durably).
    No,
    /// Duplex: a write may have reached one side only, anywhere. Split wholly, every bit set.
    All,
    /// Split by areas: the areas lost nothing (their changes were marked durably), but
    /// outside them, where the pair was duplex, a write may have reached one side only. The
    /// granules outside the areas are marked.
    OutsideAreas,
}

/// Make `config` what a pair found after an unclean stop must be (see [`Unclean`]); the
/// caller marks the bits.
pub(crate) fn recover_unclean(config: &mut PairConfig, unclean: bool) -> Unclean {
    if !unclean {
        return Unclean::No;
    }
    match (config.state, config.areas.is_empty()) {
        (PairState::Duplex, _) => {
            config.state = PairState::Split;
            config.areas.clear();
            config.note = Some(
                "the server stopped uncleanly while the pair was duplex: a full resync is needed"
                    .into(),
            );
            Unclean::All
        }
        (PairState::Split, true) => Unclean::No,
        (PairState::Split, false) => {
            config.note = Some(
                "the server stopped uncleanly: outside the split areas the secondary may \
                 differ; resyncing the last area (or all) copies it"
                    .into(),
            );
            Unclean::OutsideAreas
        }
    }
}

/// The granules of a `size`-byte volume that no split area covers.
pub(crate) fn granules_outside(areas: &[SplitArea], size: u64) -> Vec<u64> {
    (0..size.div_ceil(GRANULE))
        .filter(|g| !areas.iter().any(|a| a.granules().contains(g)))
        .collect()
}

impl Pair {
    pub(crate) fn new(
        config: PairConfig,
        secondary: FileExport,
        diff: DirtyMap,
        hold: File,
    ) -> Pair {
        let mut config = config;
        let size = kura_nbd::Export::size(&secondary);
        // Bits that could not be read (a damaged or missing difference bitmap) say nothing
        // about what differs: everything may.
        match recover_unclean(&mut config, diff.was_unclean()) {
            Unclean::All => diff.set_all(),
            Unclean::OutsideAreas => {
                for g in granules_outside(&config.areas, size) {
                    diff.mark(g * GRANULE, GRANULE.min(size - g * GRANULE));
                }
            }
            Unclean::No => {}
        }
        if diff.lost() {
            diff.set_all();
        }
        Pair {
            config: Mutex::new(config),
            secondary,
            diff,
            claims: Mutex::default(),
            _hold: hold,
        }
    }

    pub fn config(&self) -> PairConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Claim `[offset, offset + len)` of the secondary for `what`; refused (in use) while
    /// another claim overlaps it.
    pub(crate) fn claim(self: &Arc<Self>, offset: u64, len: u64, what: Use) -> Result<Claim> {
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(o, l, u)) = c.iter().find(|r| {
            Extent::new(r.0, r.1)
                .overlap(&Extent::new(offset, len))
                .is_some()
        }) {
            let primary = self.config().primary;
            let doing = match u {
                Use::Backup => "a backup is reading",
                Use::Resync => "a resync is copying",
            };
            return Err(Error::InUse(format!(
                "{primary}: {doing} bytes {o}:{l} of its secondary; try again when it ends"
            )));
        }
        let range = (offset, len, what);
        c.push(range);
        Ok(Claim {
            pair: Arc::clone(self),
            range,
        })
    }

    /// Whether a claim for `what` overlaps `[offset, offset + len)`.
    pub(crate) fn claimed(&self, offset: u64, len: u64, what: Use) -> bool {
        let c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().any(|r| {
            r.2 == what
                && Extent::new(r.0, r.1)
                    .overlap(&Extent::new(offset, len))
                    .is_some()
        })
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
        // Walk the range against the areas (kept sorted by offset).
        let mut out = Vec::new();
        let mut at = offset;
        let end = Extent::new(offset, len).end().unwrap_or(u64::MAX);
        for a in &c.areas {
            let Some(Extent {
                offset: s,
                length: l,
            }) = Extent::new(at, end - at).overlap(&a.extent())
            else {
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

    /// Split: wholly (`new` empty) from duplex, or more areas beside those already split,
    /// each frozen from now. Checked by [`check_new_areas`] first.
    pub(crate) fn split(&self, new: &[Extent]) -> PairConfig {
        let mut c = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if c.state == PairState::Duplex {
            c.since = now();
            c.areas.clear();
        }
        c.state = PairState::Split;
        c.note = None;
        let at = now_ms();
        c.areas.extend(new.iter().map(|e| SplitArea {
            offset: e.offset,
            length: e.length,
            split: at.clone(),
        }));
        c.areas.sort_unstable_by_key(|a| a.offset);
        c.clone()
    }

    /// Rejoin split areas (their granules copied; none: all of them): duplex once no area
    /// is left.
    pub(crate) fn rejoin(&self, areas: Option<&[SplitArea]>) -> PairConfig {
        let mut c = self.config.lock().unwrap_or_else(|p| p.into_inner());
        match areas {
            Some(done) => c.areas.retain(|a| !done.contains(a)),
            None => c.areas.clear(),
        }
        if c.areas.is_empty() {
            c.state = PairState::Duplex;
            c.note = None;
            c.since = now();
        }
        c.clone()
    }

    pub fn info(&self, served: bool) -> PairInfo {
        let config = self.config();
        let area_dirty_bytes = area_dirty_bytes(&config.areas, &self.diff.dirty_granules());
        PairInfo {
            config,
            dirty_bytes: self.diff.dirty_bytes(),
            area_dirty_bytes,
            served,
        }
    }
}

/// Bytes in each area's granules that are marked (granules of 4 MiB; an area's last may be
/// shorter, counted whole).
pub(crate) fn area_dirty_bytes(areas: &[SplitArea], dirty: &[u64]) -> Vec<u64> {
    areas
        .iter()
        .map(|a| {
            let r = a.granules();
            dirty.iter().filter(|g| r.contains(g)).count() as u64 * GRANULE
        })
        .collect()
}

/// Areas checked against a volume size.
pub(crate) fn check_areas(areas: &[Extent], size: u64) -> Result<()> {
    for e in areas {
        if !e.fits(size) {
            return Err(Error::Invalid(format!(
                "split area {e} reaches past the end of the {size}-byte volume"
            )));
        }
    }
    Ok(())
}

/// Areas to split beside those of `config`: inside the volume, on granule boundaries (each
/// area's granules are its own, so it can be resynced alone), overlapping neither each
/// other nor an area already split; and not while the pair is wholly split, nor a whole
/// split while areas are.
pub(crate) fn check_new_areas(config: &PairConfig, new: &[Extent], size: u64) -> Result<()> {
    let p = &config.primary;
    if config.state == PairState::Split && config.areas.is_empty() {
        return Err(Error::Invalid(format!(
            "the pair of {p} is already split wholly (since {}); resync it first \
             (kura pair resync {p})",
            config.since
        )));
    }
    if new.is_empty() && config.state == PairState::Split {
        return Err(Error::Invalid(format!(
            "areas of the pair of {p} are split ({}); a whole split would freeze the rest at \
             another time: split more areas with --area, or resync first",
            list(&config.areas)
        )));
    }
    check_areas(new, size)?;
    let mib = |b: u64| format!("{}M", b >> 20);
    for (i, e) in new.iter().enumerate() {
        let (o, l) = (e.offset, e.length);
        let ends_volume = e.end() == Some(size);
        if !o.is_multiple_of(GRANULE) || !(l.is_multiple_of(GRANULE) || ends_volume) {
            return Err(Error::Invalid(format!(
                "split area {o}:{l} is not on the pair's {} granules: its offset and length \
                 must be multiples of {} (the length may instead reach the volume's end), so \
                 that areas split at different times never share a granule",
                mib(GRANULE),
                mib(GRANULE)
            )));
        }
        if let Some(a) = config
            .areas
            .iter()
            .find(|a| a.extent().overlap(e).is_some())
        {
            return Err(Error::Invalid(format!(
                "split area {o}:{l} overlaps area {a} of the pair of {p}, split since {}: \
                 resync that area first (kura pair resync {p} --area {a})",
                a.split
            )));
        }
        if let Some(b) = new[..i].iter().find(|b| b.overlap(e).is_some()) {
            return Err(Error::Invalid(format!("split areas {b} and {e} overlap")));
        }
    }
    Ok(())
}

/// `O:L (since T), …` for messages.
pub(crate) fn list(areas: &[SplitArea]) -> String {
    areas
        .iter()
        .map(|a| format!("{a} since {}", a.split))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An area's split time: milliseconds, so areas split in one second tell apart.
pub(crate) fn now_ms() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn not_paired(name: &str) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn config(state: PairState, areas: &[(u64, u64)]) -> PairConfig {
        PairConfig {
            magic: MAGIC.into(),
            v: VERSION,
            primary: "p".into(),
            secondary: "s".into(),
            state,
            areas: areas
                .iter()
                .map(|&(offset, length)| SplitArea {
                    offset,
                    length,
                    split: "t".into(),
                })
                .collect(),
            since: "t0".into(),
            note: None,
        }
    }

    #[test]
    fn version_1_areas_are_read_and_version_2_round_trips() {
        let v1 = r#"{"magic":"KURAPAIR1","v":1,"primary":"p","secondary":"s","state":"split",
            "areas":[[0,16777216],[33554432,8388608]],"since":"2024-01-01T00:00:00Z"}"#;
        let c: PairConfig = serde_json::from_str(v1).unwrap();
        assert_eq!(c.areas.len(), 2);
        assert_eq!((c.areas[1].offset, c.areas[1].length), (32 * M, 8 * M));
        assert!(
            c.areas[1].split.is_empty(),
            "filled in from `since` by the reader"
        );
        let two = config(PairState::Split, &[(0, 4 * M)]);
        let back: PairConfig = serde_json::from_slice(&serde_json::to_vec(&two).unwrap()).unwrap();
        assert_eq!(back, two);
    }

    fn ext(v: &[(u64, u64)]) -> Vec<Extent> {
        v.iter().map(|&(o, l)| Extent::new(o, l)).collect()
    }

    #[test]
    fn new_areas_are_aligned_disjoint_and_beside_the_split_ones() {
        let size = 64 * M + 512;
        let duplex = config(PairState::Duplex, &[]);
        assert!(check_new_areas(&duplex, &ext(&[(0, 4 * M), (8 * M, 8 * M)]), size).is_ok());
        // The last area may end with the volume, off the granule grid.
        assert!(check_new_areas(&duplex, &ext(&[(60 * M, 4 * M + 512)]), size).is_ok());
        for bad in [(M, 4 * M), (0, 5 * M), (60 * M, 8 * M)] {
            assert!(
                check_new_areas(&duplex, &ext(&[bad]), size).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_new_areas(&duplex, &ext(&[(0, 8 * M), (4 * M, 4 * M)]), size).is_err());
        let split = config(PairState::Split, &[(8 * M, 8 * M)]);
        assert!(check_new_areas(&split, &ext(&[(0, 8 * M)]), size).is_ok());
        assert!(check_new_areas(&split, &ext(&[(12 * M, 8 * M)]), size).is_err());
        // No whole split beside areas, nor areas beside a whole split.
        assert!(check_new_areas(&split, &ext(&[]), size).is_err());
        let whole = config(PairState::Split, &[]);
        assert!(check_new_areas(&whole, &ext(&[(0, 4 * M)]), size).is_err());
    }

    #[test]
    fn an_unclean_stop_marks_what_was_duplex() {
        let mut c = config(PairState::Split, &[(4 * M, 4 * M), (12 * M, 8 * M)]);
        assert_eq!(recover_unclean(&mut c, true), Unclean::OutsideAreas);
        assert_eq!(c.areas.len(), 2, "the areas stay split");
        assert_eq!(granules_outside(&c.areas, 24 * M), vec![0, 2, 5]);
        let mut d = config(PairState::Duplex, &[]);
        assert_eq!(recover_unclean(&mut d, true), Unclean::All);
        let mut w = config(PairState::Split, &[]);
        assert_eq!(recover_unclean(&mut w, true), Unclean::No);
        assert_eq!(recover_unclean(&mut c, false), Unclean::No);
        assert_eq!(
            area_dirty_bytes(&c.areas, &[0, 1, 3, 4]),
            vec![4 * M, 8 * M]
        );
    }
}
