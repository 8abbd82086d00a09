//! The health sweep: probe targets and record each result as the target's health.
//!
//! What `kura resource probe` runs, and what a daemon runs on a timer, so both judge a
//! target the same way. Targets are probed in parallel, each on a thread of its own: a dead
//! target costs its own deadline, not everyone's. A success resets the target's error
//! count; a failure counts toward *not usable* (the catalog's rule, see
//! [`kura_catalog::Catalog::record_error`]), and a later success puts it back.
//!
//! The sweep opens no repository and needs no password: a probe writes, reads back and
//! deletes one object of its own beside the repository.

use kura_backend::{Backend, ProbeReport, probe};
use kura_catalog::{Catalog, Kind, Resource, State};

use crate::{Error, Result};

/// Opens a target's backend by URL (the caller knows credentials and options).
pub type Opener<'a> =
    dyn Fn(&str) -> std::result::Result<std::sync::Arc<dyn Backend>, String> + Sync + 'a;

/// One target's result.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    pub target: String,
    /// The probe's findings; `None` when the target could not even be opened, or is a tape
    /// library (then `library`).
    pub report: Option<ProbeReport>,
    /// A tape library's findings (a sequential target with a library URL): the probe tells
    /// tape-type targets from disk-type ones.
    pub library: Option<kura_tape::probe::LibraryProbe>,
    /// Why it is unhealthy (`None`: healthy).
    pub error: Option<String>,
    /// Its state after the result was recorded.
    pub state: State,
}

/// The targets `names` stand for: targets themselves, or the target a medium belongs to
/// (each once, in the order named); every target when `names` is empty. Workers and paths
/// are refused: they show their health through the targets they reach.
pub fn targets_named(cat: &Catalog, names: &[String]) -> Result<Vec<Resource>> {
    let all = cat.resources()?;
    if names.is_empty() {
        return Ok(all.into_iter().filter(|r| r.kind == Kind::Target).collect());
    }
    let mut out: Vec<Resource> = Vec::new();
    for n in names {
        let r = all
            .iter()
            .find(|r| &r.name == n)
            .ok_or_else(|| kura_catalog::Error::UnknownResource(n.clone()))?;
        let t = match r.kind {
            Kind::Target => r,
            Kind::Medium => all
                .iter()
                .find(|t| Some(t.id) == r.parent)
                .ok_or_else(|| Error::Invalid(format!("medium {n} belongs to no target")))?,
            k => {
                return Err(Error::Invalid(format!(
                    "{n} is a {}: only targets and media are probed (workers and paths show \
                     their health through the targets they reach)",
                    k.as_str()
                )));
            }
        };
        if !out.iter().any(|x| x.id == t.id) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// What probing one target found: a disk-type target's object round trip, or a library.
enum Probed {
    Disk(ProbeReport),
    Library(kura_tape::probe::LibraryProbe),
}

/// Probe `targets` in parallel with objects of `size` bytes and record each result.
pub fn sweep(
    cat: &Catalog,
    targets: &[Resource],
    open: &Opener<'_>,
    size: usize,
) -> Result<Vec<TargetHealth>> {
    let probed: Vec<std::result::Result<Probed, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                s.spawn(move || {
                    let url = t.target_url().map_err(|e| e.to_string())?;
                    if kura_tape::library::LibrarySpec::is_library_url(url) {
                        let lib = kura_tape::library::LibrarySpec::parse(url)
                            .and_then(|s| s.open())
                            .map_err(|e| e.to_string())?;
                        return Ok(Probed::Library(kura_tape::probe::probe(&lib)));
                    }
                    let b = open(url)?;
                    Ok(Probed::Disk(probe(b.as_ref(), size)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the probe thread panicked".to_string()))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(targets.len());
    for (t, r) in targets.iter().zip(probed) {
        let error = match &r {
            Ok(Probed::Disk(rep)) if rep.ok() => None,
            Ok(Probed::Disk(rep)) => Some(match &rep.error {
                Some((class, msg)) => format!("probe: {}: {msg}", class.as_str()),
                None => "probe: failed".to_string(),
            }),
            Ok(Probed::Library(l)) => l.error.as_ref().map(|e| format!("probe: library: {e}")),
            Err(e) => Some(format!("probe: {e}")),
        };
        let state = match &error {
            None => {
                cat.record_ok(&t.name)?;
                cat.resource(&t.name)?.state()
            }
            Some(e) => cat.record_error(&t.name, e)?,
        };
        let (report, library) = match r {
            Ok(Probed::Disk(rep)) => (Some(rep), None),
            Ok(Probed::Library(l)) => (None, Some(l)),
            Err(_) => (None, None),
        };
        out.push(TargetHealth {
            target: t.name.clone(),
            report,
            library,
            error,
            state,
        });
    }
    Ok(out)
}
