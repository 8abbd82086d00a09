//! Checking targets before a run secures them: a target is *fit* when it answers within a
//! few seconds and holds the run's repository.
//!
//! Why before: securing commits the run — the pre hook quiesces the source, and a target
//! that turns out unreachable then costs the whole deadline, one holding no repository (or
//! another group's) fails the run after the hook. So each candidate's config file is read
//! under a short deadline (a reachability probe that also says which repository is there):
//!
//! - no answer in time, or an error: *unreachable* (counted against the target's health);
//! - no config: *holds no repository*;
//! - a repository other than the one recorded for the target in the catalog (when a job or
//!   `init` first used it): *holds another repository*;
//! - of the rest, the run takes the group most candidates hold (a group whose id the catalog
//!   recorded wins); targets of other groups are *another group's repository*.
//!
//! The repository's identity is the id of its sealed config file (BLAKE3 of the bytes): every
//! member of a group holds the same bytes (`init --mirror` writes them once), a re-created
//! repository has other ones, and reading it needs no password. Each unfit target gets an
//! event row with the reason, and the run's report lists it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kura_backend::{Backend, ErrorKind, FileKind};
use kura_catalog::{Catalog, Kind, State};
use kura_repo::id::Id;

use crate::Result;

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fitness {
    /// Fit targets, in the catalog's order.
    pub fit: Vec<String>,
    /// (target, why it is unfit).
    pub unfit: Vec<(String, String)>,
    /// (target, why) for targets not usable now (disabled, unhealthy, in use): not checked.
    pub unusable: Vec<(String, String)>,
    /// The repository (group) id the fit targets hold.
    pub repository: Option<String>,
}

/// The repository id of a config file's bytes.
pub fn repository_id(config: &[u8]) -> String {
    Id::of_file(config).to_hex()
}

enum Answer {
    Holds(String),
    Empty,
    Failed(String),
}

/// Read each backend's config file, each in its own thread, all within `within`.
fn ask(backends: Vec<(String, Arc<dyn Backend>)>, within: Duration) -> BTreeMap<String, Answer> {
    let (tx, rx) = mpsc::channel();
    let n = backends.len();
    for (name, b) in backends {
        let (tx, fallback) = (tx.clone(), tx.clone());
        // Detached: a target that never answers must not hold the run; its thread ends
        // when the backend's own deadline gives up.
        let spawned = std::thread::Builder::new()
            .name(format!("fit-{name}"))
            .spawn({
                let name = name.clone();
                move || {
                    let a = match b.get(FileKind::Config, "config") {
                        Ok(bytes) => Answer::Holds(repository_id(&bytes)),
                        Err(e) if e.kind() == ErrorKind::NotFound => Answer::Empty,
                        Err(e) => Answer::Failed(e.to_string()),
                    };
                    let _ = tx.send((name, a));
                }
            });
        if let Err(e) = spawned {
            let _ = fallback.send((name, Answer::Failed(format!("start a check: {e}"))));
        }
    }
    drop(tx);
    let deadline = Instant::now() + within;
    let mut out = BTreeMap::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((name, a)) => {
                out.insert(name, a);
            }
            Err(_) => break,
        }
    }
    out
}

/// Check the targets a run may secure (`only`, or every target) that are usable now; see
/// the module docs. `open` builds a backend from a URL.
pub fn check(
    catalog: &Catalog,
    only: Option<&[String]>,
    open: &dyn Fn(&str) -> Result<Arc<dyn Backend>>,
    within: Duration,
) -> Result<Fitness> {
    let mut out = Fitness::default();
    let mut backends = Vec::new();
    let mut recorded: BTreeMap<String, Option<String>> = BTreeMap::new();
    // Leases of dead managers first: their targets are usable again. (A command opening the
    // catalog reclaims too, but a long-lived daemon opens it once.)
    catalog.reclaim()?;
    for r in catalog.resources()? {
        if r.kind != Kind::Target || only.is_some_and(|o| !o.contains(&r.name)) {
            continue;
        }
        if r.state() != State::Usable {
            out.unusable.push((r.name.clone(), r.why_not()));
            continue;
        }
        let target = r.target()?;
        let opened = open(&target.url).map_err(|e| e.to_string());
        recorded.insert(r.name.clone(), target.repository.clone());
        match opened {
            Ok(b) => backends.push((r.name.clone(), b)),
            Err(e) => out
                .unfit
                .push((r.name.clone(), format!("cannot be opened: {e}"))),
        }
    }
    let names: Vec<String> = backends.iter().map(|(n, _)| n.clone()).collect();
    let mut answers = ask(backends, within);
    let mut holds: Vec<(String, String)> = Vec::new();
    for name in names {
        let rec = recorded.get(&name).cloned().flatten();
        match answers.remove(&name) {
            None => {
                let why = format!("unreachable: no answer within {} s", within.as_secs_f32());
                catalog.record_error(&name, &why)?;
                out.unfit.push((name, why));
            }
            Some(Answer::Failed(e)) => {
                let why = format!("unreachable: {e}");
                catalog.record_error(&name, &why)?;
                out.unfit.push((name, why));
            }
            Some(Answer::Empty) => out.unfit.push((name, "holds no repository".into())),
            Some(Answer::Holds(id)) => match rec {
                Some(r) if r != id => out.unfit.push((
                    name,
                    format!(
                        "holds repository {}, not {} recorded for it (re-created or replaced?)",
                        &id[..16],
                        &r[..r.len().min(16)]
                    ),
                )),
                _ => holds.push((name, id)),
            },
        }
    }
    // The group: one recorded for a candidate, else the one most candidates hold.
    let mut votes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (name, id) in &holds {
        let v = votes.entry(id).or_default();
        v.1 += 1;
        if recorded.get(name).cloned().flatten().as_deref() == Some(id.as_str()) {
            v.0 += 1;
        }
    }
    let first: BTreeMap<&str, usize> = holds
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (_, id))| (id.as_str(), i))
        .collect();
    let group = votes
        .iter()
        .max_by_key(|(id, (rec, n))| (*rec, *n, std::cmp::Reverse(first[*id])))
        .map(|(id, _)| id.to_string());
    for (name, id) in holds {
        if Some(&id) == group.as_ref() {
            out.fit.push(name);
        } else {
            out.unfit.push((
                name,
                format!("holds another group's repository ({})", &id[..16]),
            ));
        }
    }
    for (name, why) in &out.unfit {
        catalog.note(name, "skipped", why)?;
    }
    out.repository = group;
    Ok(out)
}
