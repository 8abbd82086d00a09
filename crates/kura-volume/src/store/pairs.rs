//! The store's mirror-pair operations: create, split, resync, list, delete (the pair itself,
//! its states and its write hooks are [`crate::pair`]).

use std::io;
use std::sync::Arc;

use kura_nbd::{Export, FileExport};
use kura_types::Extent;

use crate::dirty::{DirtyMap, GRANULE};
use crate::error::{Error, Result};
use crate::export::VolumeExport;
use crate::pair::{
    MAGIC, Pair, PairConfig, PairInfo, PairState, ResyncOutcome, SplitArea, Unclean, Use, VERSION,
    area_dirty_bytes, check_new_areas, granules_outside, list, not_paired, now, recover_unclean,
};
use crate::store::VolumeStore;

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
        let mut c: PairConfig = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if c.magic != MAGIC || !(1..=VERSION).contains(&c.v) || c.primary != name {
            return Err(Error::Corrupt {
                path,
                why: format!(
                    "magic {:?} version {} primary {:?}",
                    c.magic, c.v, c.primary
                ),
            });
        }
        // Version 1: the areas were split together, when the pair was.
        for a in &mut c.areas {
            if a.split.is_empty() {
                a.split = c.since.clone();
            }
        }
        c.areas.sort_unstable_by_key(|a| a.offset);
        c.v = VERSION;
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
        let before = config.clone();
        let pair = Pair::new(config, secondary, diff, hold);
        let after = pair.config();
        if after != before {
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
        // The secondary must not be in use; it is held from here on by the pair. A server
        // holding it with no client connected lets go of it.
        self.release(secondary)?;
        let hold = self.exclusive(secondary)?;
        sm.secondary_of = Some(primary.to_string());
        self.write_meta(&sm)?;
        // A secondary from here on: no server holds it again (nor serves it to hosts).
        drop(hold);
        let _ = std::fs::remove_file(self.path(primary, "pairdiff"));
        {
            // Every granule differs until the initial copy: a resync from "split, all set".
            let diff = DirtyMap::open(&self.path(primary, "pairdiff"), pm.size)?;
            diff.set_all();
            diff.close()?;
        }
        self.save_pair(&PairConfig {
            magic: MAGIC.into(),
            v: VERSION,
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
            export.attach_pair(Arc::new(pair))?;
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
                    v: VERSION,
                    primary: export.name().to_string(),
                    secondary: String::new(),
                    state: PairState::Duplex,
                    areas: Vec::new(),
                    since: String::new(),
                    note: None,
                },
                dirty_bytes: 0,
                area_dirty_bytes: Vec::new(),
                served: true,
            },
        }
    }

    /// Split the pair of `primary`: freeze the secondary wholly, or `areas` of it beside
    /// those already split (each area frozen from now, with its own split time).
    pub fn pair_split(&self, primary: &str, areas: Vec<Extent>) -> Result<PairInfo> {
        let export = self.open_export(primary)?;
        let pair = export.pair().ok_or_else(|| not_paired(primary))?;
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
        areas: Vec<Extent>,
        _held: &std::sync::RwLockWriteGuard<'_, bool>,
    ) -> Result<()> {
        let c = pair.config();
        check_new_areas(&c, &areas, export.size())?;
        let whole = [Extent::new(0, export.size())];
        let parts = if areas.is_empty() { &whole[..] } else { &areas };
        if let Some(e) = parts
            .iter()
            .find(|e| pair.claimed(e.offset, e.length, Use::Resync))
        {
            return Err(Error::InUse(format!(
                "{}: a resync is copying bytes {e} of its secondary; split when it ends",
                c.primary
            )));
        }
        let flush = |r: io::Result<()>, what: &str| {
            r.map_err(|source| Error::Io {
                what: format!("flush {what} of {}", c.primary),
                source,
            })
        };
        flush(export.file().flush(), "the primary")?;
        flush(pair.secondary.flush(), "the secondary")?;
        pair.diff.persist()?;
        let new = pair.split(&areas);
        self.save_pair(&new)
    }

    /// Copy the granules that differ and return the pair of `primary` to duplex — or, with
    /// `areas`, only those split areas' granules, rejoining them while the others stay
    /// split.
    pub fn pair_resync(
        &self,
        primary: &str,
        areas: &[Extent],
    ) -> Result<(PairInfo, ResyncOutcome)> {
        let export = self.open_export(primary)?;
        let out = self.resync_areas(&export, areas)?;
        Ok((self.pair_info(&export), out))
    }

    /// Resync all of the pair of `export`.
    pub(crate) fn resync(&self, export: &VolumeExport) -> Result<ResyncOutcome> {
        self.resync_areas(export, &[])
    }

    /// The split areas `want` names exactly (none: all of them, and the whole volume).
    fn chosen(c: &PairConfig, want: &[Extent]) -> Result<Option<Vec<SplitArea>>> {
        if want.is_empty() {
            return Ok(None);
        }
        let p = &c.primary;
        if c.state == PairState::Split && c.areas.is_empty() {
            return Err(Error::Invalid(format!(
                "the pair of {p} is split wholly: resync it without --area"
            )));
        }
        let mut out: Vec<SplitArea> = Vec::new();
        for e in want {
            let a = c.areas.iter().find(|a| a.extent() == *e).ok_or_else(|| {
                Error::Invalid(match c.areas.is_empty() {
                    true => format!("{e}: no area of the pair of {p} is split"),
                    false => format!(
                        "{e} is not a split area of the pair of {p} (split: {})",
                        list(&c.areas)
                    ),
                })
            })?;
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        // The last areas: resyncing them is resyncing the pair (after an unclean stop, the
        // granules outside the areas are copied too).
        Ok((out.len() < c.areas.len()).then_some(out))
    }

    pub(crate) fn resync_areas(
        &self,
        export: &VolumeExport,
        want: &[Extent],
    ) -> Result<ResyncOutcome> {
        let pair = export.pair().ok_or_else(|| not_paired(export.name()))?;
        let chosen = Self::chosen(&pair.config(), want)?;
        // What a backup reads is not resynced under it.
        let _claims = match &chosen {
            None => vec![pair.claim(0, export.size(), Use::Resync)?],
            Some(areas) => areas
                .iter()
                .map(|a| pair.claim(a.offset, a.length, Use::Resync))
                .collect::<Result<Vec<_>>>()?,
        };
        let in_scope = |g: &u64| {
            chosen
                .as_ref()
                .is_none_or(|areas| areas.iter().any(|a| a.granules().contains(g)))
        };
        let mut out = ResyncOutcome::default();
        let mut buf = Vec::new();
        let ioerr = |what: &str| {
            let what = format!("resync {}: {what}", export.name());
            move |source| Error::Io { what, source }
        };
        loop {
            let granules: Vec<u64> = pair
                .diff
                .dirty_granules()
                .into_iter()
                .filter(in_scope)
                .collect();
            if granules.is_empty() {
                let _g = export.exclusive()?;
                if pair.diff.dirty_granules().iter().any(in_scope) {
                    continue; // a host write landed in a split area meanwhile
                }
                let before = pair.config();
                let after = pair.rejoin(chosen.as_deref());
                if after != before {
                    self.save_pair(&after)?;
                }
                pair.diff.persist()?;
                return Ok(out);
            }
            for g in granules {
                // One granule at a time under the change lock: no host write splits a copy,
                // and the bit is cleared only once the copy is durable.
                let _g = export.exclusive()?;
                pair.copy_granule(export.file(), g, &mut buf)
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
            let size = v.meta.size;
            let d = crate::dirty::peek(&self.path(name, "pairdiff"), size)?;
            // As the next load will find it.
            let mut granules = d.granules;
            match recover_unclean(&mut config, d.unclean) {
                _ if d.lost && !d.served => granules = (0..size.div_ceil(GRANULE)).collect(),
                Unclean::All => granules = (0..size.div_ceil(GRANULE)).collect(),
                Unclean::OutsideAreas => {
                    granules.extend(granules_outside(&config.areas, size));
                    granules.sort_unstable();
                    granules.dedup();
                }
                Unclean::No => {}
            }
            out.push(PairInfo {
                area_dirty_bytes: area_dirty_bytes(&config.areas, &granules),
                dirty_bytes: granules
                    .iter()
                    .map(|g| GRANULE.min(size - g * GRANULE))
                    .sum(),
                config,
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
            let g = e.exclusive()?;
            if let Some(p) = e.detach_pair(&g) {
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
