//! Volumes a process has open: one shared export per volume, and the holds of a server.
//!
//! An export lives while someone holds it. A connection holds it while it lasts; a server
//! ([`VolumeStore::hold_all`]) holds every volume it serves for as long as it runs, whether or
//! not a client is connected — otherwise the export, and with it the shared `flock` on the raw
//! file that makes `resize`, `delete` and other servers refuse the volume, would go away with
//! the last connection, and the volume could be changed or removed under a running server.

use std::fs::OpenOptions;
use std::sync::{Arc, Weak};

use kura_nbd::{Export, Exports, FileExport};

use super::{VolumeStore, refuse_paired};
use crate::chains::Identity;
use crate::error::{Error, Result, io};
use crate::export::VolumeExport;

impl VolumeStore {
    /// Open a volume for serving: the raw file under a shared hold (resize and delete
    /// refuse it meanwhile) and its change tracking (held by this process alone). Every
    /// caller in this process gets the same export while any holds it.
    pub fn open_export(&self, name: &str) -> Result<Arc<VolumeExport>> {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = reg.open.get(name).and_then(Weak::upgrade) {
            return Ok(e);
        }
        let m = self.meta(name)?;
        if m.work {
            return Err(Error::Invalid(format!(
                "{name} is a working volume of a backup session: no host I/O"
            )));
        }
        refuse_paired(&m)?;
        let raw = self.raw(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&raw)
            .map_err(io(format!("open {}", raw.display())))?;
        if !crate::hold::try_lock(&f, false) {
            return Err(Error::served(name));
        }
        let identity = Identity::of(
            &f.metadata()
                .map_err(io(format!("stat {}", raw.display())))?,
        );
        let file = FileExport::new(f, false).map_err(io(format!("open {}", raw.display())))?;
        if file.size() != m.size {
            return Err(Error::Corrupt {
                path: raw,
                why: format!(
                    "raw file is {} bytes, metadata says {}",
                    file.size(),
                    m.size
                ),
            });
        }
        // The previous export of this volume in this process may still be closing its chains
        // (its last connection just ended): give it a moment before calling it in use.
        let mut tries = 0;
        let chains = loop {
            match self.open_chains(name, m.size, &identity) {
                Err(Error::InUse(_)) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let e = Arc::new(VolumeExport::new(name, file, chains));
        // A mirror pair's primary: every change from here on goes through the pair.
        if let Some(p) = self.load_pair(name, m.size)? {
            e.attach_pair(Arc::new(p))?;
        }
        reg.open.insert(name.to_string(), Arc::downgrade(&e));
        Ok(e)
    }

    /// The export of `name` if this process has it open.
    pub(crate) fn served(&self, name: &str) -> Option<Arc<VolumeExport>> {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .get(name)
            .and_then(Weak::upgrade)
    }

    /// How many clients use `e`, the export of `name` (besides the caller's reference and
    /// a server's hold).
    pub(crate) fn clients(&self, name: &str, e: &Arc<VolumeExport>) -> usize {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let held = usize::from(reg.held.get(name).is_some_and(|h| Arc::ptr_eq(h, e)));
        Arc::strong_count(e).saturating_sub(1 + held)
    }

    /// Hold every volume that `only` allows (all when `None`) and that hosts may use (not a
    /// working volume, not a pair's secondary) until [`shutdown`](Self::shutdown): what a
    /// server does at start, and again now and then for volumes created since. Returns the
    /// volumes it could not open, with why.
    pub fn hold_all(&self, only: Option<&[String]>) -> Result<Vec<(String, Error)>> {
        let mut failed = Vec::new();
        for v in self.list()? {
            let name = &v.meta.name;
            if v.meta.work
                || v.meta.secondary_of.is_some()
                || only.is_some_and(|o| !o.iter().any(|n| n == name))
            {
                continue;
            }
            if self
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .held
                .contains_key(name)
            {
                continue;
            }
            match self.open_export(name) {
                Ok(e) => {
                    self.registry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .held
                        .insert(name.clone(), e);
                }
                Err(e) => failed.push((name.clone(), e)),
            }
        }
        Ok(failed)
    }

    /// Let go of this process's hold on `name` when no client uses it (a volume about to
    /// become a pair's secondary); refused while one does.
    pub(crate) fn release(&self, name: &str) -> Result<()> {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = reg.held.get(name) else {
            return Ok(());
        };
        if Arc::strong_count(e) > 1 {
            return Err(Error::InUse(format!(
                "volume {name:?} is in use: a client is connected"
            )));
        }
        if let Some(e) = reg.held.remove(name) {
            reg.open.remove(name);
            drop(reg);
            e.shutdown()?;
        }
        Ok(())
    }

    /// Close every volume this process serves cleanly (data and change tracking written);
    /// changes after this are refused. For a server that is stopping.
    pub fn shutdown(&self) -> Result<()> {
        let open: Vec<Arc<VolumeExport>> = {
            let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            reg.held.clear();
            reg.open.values().filter_map(Weak::upgrade).collect()
        };
        for e in open {
            e.shutdown()?;
        }
        Ok(())
    }

    /// The volumes as NBD exports (all of them, or only `only`).
    pub fn exports(&self, only: Option<Vec<String>>) -> Arc<dyn Exports> {
        Arc::new(StoreExports {
            store: self.clone(),
            only,
        })
    }
}

struct StoreExports {
    store: VolumeStore,
    only: Option<Vec<String>>,
}

impl StoreExports {
    fn allowed(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    }
}

impl Exports for StoreExports {
    fn list(&self) -> Vec<(String, String)> {
        self.store
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !v.meta.work && v.meta.secondary_of.is_none() && self.allowed(&v.meta.name))
            .map(|v| {
                let d = format!("kura volume, {} bytes", v.meta.size);
                (v.meta.name, d)
            })
            .collect()
    }

    fn open(&self, name: &str) -> std::result::Result<Arc<dyn Export>, String> {
        if !self.allowed(name) {
            return Err(format!("no export {name:?}"));
        }
        let e = self.store.open_export(name).map_err(|e| e.to_string())?;
        if e.restoring() == Some(false) {
            return Err(format!(
                "volume {name} is being restored (kura volume restore): connect when it is done"
            ));
        }
        Ok(e as Arc<dyn Export>)
    }
}
