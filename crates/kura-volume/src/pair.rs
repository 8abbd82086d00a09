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
use std::sync::Mutex;

use kura_nbd::{Export, FileExport};
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

/// A duplex pair whose server died (its difference bitmap was not closed) may differ
/// anywhere: it becomes split with a note, and the caller sets every bit. Returns whether
/// that happened.
pub(crate) fn recover_unclean(config: &mut PairConfig, unclean: bool) -> bool {
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
        // Bits that could not be read (a damaged or missing difference bitmap) say nothing
        // about what differs: everything may.
        if recover_unclean(&mut config, diff.was_unclean()) || diff.lost() {
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

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
