//! `secure` against random histories, on SQLite and on PostgreSQL.
//!
//! A case builds a random topology (1–3 workers and 1–3 paths of 1–3 slots, 2–6 targets each
//! with its implicit medium, a random subset of the worker × path × target routes) and applies
//! ~30 random operations across many jobs: secure (short or long lease, sometimes restricted to
//! some targets), finish, drop unfinished, crash (the guard is forgotten: a manager that died),
//! renew, three errors / a success on a resource, disable / enable, and clock steps past the
//! short or the long lease. After every operation the database is checked:
//! - no resource holds more allocations than its slots; no target or medium is in two streams;
//! - every stream of a holding process is one declared route plus that target's medium, as
//!   `secure` returned it, and exactly the processes the model says hold something do;
//! - every run's state and streams match the model (running, succeeded, failed, aborted,
//!   expired), and the resources' switches, health and error counts match the operations.
//!
//! Every `secure` is also checked for completeness: an exhaustive search of the test's own over
//! what is free at that moment decides whether n disjoint routes exist; `secure` must succeed
//! exactly when they do, with resources that were usable and free. At the end every guard is
//! finished, the clock passes every lease and one more `secure` must reclaim everything.
//!
//! Leases are 600 s and 36 000 s and the clock moves in steps of 660 s and 36 060 s, so each
//! lease end is at least 60 s away from the clock whenever the two are compared: the seconds
//! the test itself takes never decide an expiry, and the model knows exactly which ran out.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kura_catalog::{Catalog, Constraints, Error, Kind, Resource, SecuredGuard, State, Subsystem};
use kura_types::{ResourceConfig, TargetConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

mod common;

use common::{Db, fresh};

const LEASE: [Duration; 2] = [Duration::from_secs(600), Duration::from_secs(36_000)];
/// Clock steps: past the short lease only, and past the long one.
const STEP: [Duration; 2] = [Duration::from_secs(660), Duration::from_secs(36_060)];

#[derive(Debug, Clone)]
enum Op {
    /// Secure n subsystems (long lease?), only on the targets of a bit mask if given.
    Secure(usize, bool, Option<u8>),
    /// Guard i ends: 0 finish(Ok), 1 finish(Err), 2 dropped unfinished, 3 forgotten (crash).
    End(usize, u8),
    /// Guard i renews (long lease?).
    Renew(usize, bool),
    /// Resource r: 0 three errors, 1 a success, 2 disabled, 3 enabled.
    Health(usize, u8),
    /// The clock passes the short lease (or the long one).
    Advance(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let mask = prop::option::weighted(0.2, any::<u8>());
    prop_oneof![
        3 => (1..=3usize, any::<bool>(), mask).prop_map(|(n, l, m)| Op::Secure(n, l, m)),
        2 => (0..64usize, 0..4u8).prop_map(|(i, how)| Op::End(i, how)),
        1 => (0..64usize, any::<bool>()).prop_map(|(i, long)| Op::Renew(i, long)),
        1 => (0..64usize, 0..4u8).prop_map(|(r, what)| Op::Health(r, what)),
        1 => any::<bool>().prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    /// Slots of each worker and path.
    workers: Vec<i64>,
    paths: Vec<i64>,
    targets: usize,
    /// (worker, path, target) indices.
    routes: Vec<(usize, usize, usize)>,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (1..=3usize, 1..=3usize, 2..=6usize).prop_flat_map(|(w, p, t)| {
        let slots = |k| prop::collection::vec(1..=3i64, k);
        let bits = prop::collection::vec(prop::bool::weighted(0.6), w * p * t);
        let ops = prop::collection::vec(op(), 20..=36);
        (slots(w), slots(p), bits, ops).prop_map(move |(workers, paths, bits, ops)| {
            let routes = (0..w * p * t).filter(|&i| bits[i]);
            let routes = routes.map(|i| (i / (p * t), i / t % p, i % t)).collect();
            let targets = t;
            Case {
                workers,
                paths,
                targets,
                routes,
                ops,
            }
        })
    })
}

/// The index in a name like `w2` or `t3.medium`.
fn ix(name: &str) -> usize {
    name[1..].split('.').next().unwrap().parse().unwrap()
}

fn by<'a>(all: &'a [Resource], name: &str) -> &'a Resource {
    all.iter().find(|r| r.name == name).unwrap()
}

/// Free slots as the test reckons them (0 when disabled or unhealthy).
fn free(all: &[Resource], name: &str) -> i64 {
    let r = by(all, name);
    (r.slots - r.allocations.len() as i64) * i64::from(r.enabled && r.healthy)
}

/// Whether `n` disjoint routes exist among what is free in `snap`: n distinct wanted targets
/// with a free medium, each over a declared route whose worker and path still have a slot —
/// tried exhaustively, target by target (not as the library searches).
fn exists(snap: &[Resource], case: &Case, wanted: &[bool], n: usize) -> bool {
    fn choose(o: &[Vec<(usize, usize)>], left: usize, w: &mut [i64], p: &mut [i64]) -> bool {
        left == 0
            || o.iter().enumerate().any(|(k, routes)| {
                routes.iter().any(|&(a, b)| {
                    if w[a] <= 0 || p[b] <= 0 {
                        return false;
                    }
                    (w[a], p[b]) = (w[a] - 1, p[b] - 1);
                    let found = choose(&o[k + 1..], left - 1, w, p);
                    (w[a], p[b]) = (w[a] + 1, p[b] + 1);
                    found
                })
            })
    }
    let slots = |k: &str, m| {
        (0..m)
            .map(|i| free(snap, &format!("{k}{i}")))
            .collect::<Vec<_>>()
    };
    let (mut w, mut p) = (slots("w", case.workers.len()), slots("p", case.paths.len()));
    let mut options = vec![Vec::new(); case.targets];
    for &(a, b, t) in &case.routes {
        options[t].push((a, b));
    }
    for (t, o) in options.iter_mut().enumerate() {
        let usable = free(snap, &format!("t{t}")) > 0 && free(snap, &format!("t{t}.medium")) > 0;
        if !wanted[t] || !usable {
            o.clear();
        }
    }
    choose(&options, n, &mut w, &mut p)
}

/// The names of a subsystem or a stream row.
macro_rules! row {
    ($s:expr) => {
        [&$s.worker, &$s.path, &$s.target, &$s.medium]
    };
}

/// What the model knows of one process (job run).
struct Proc {
    lease_end: Duration,
    holds: bool,
    state: &'static str,
    subs: Vec<Subsystem>,
    crashed: bool,
}

struct Sim<'c> {
    c: &'c Catalog,
    case: &'c Case,
    names: Vec<String>,
    /// How many times each outcome happened, over all cases.
    seen: &'c RefCell<BTreeMap<&'static str, usize>>,
    /// How far the catalog's clock was advanced.
    clock: Duration,
    procs: BTreeMap<i64, Proc>,
    /// (enabled, healthy, errors) by resource name.
    health: HashMap<String, (bool, bool, i64)>,
    guards: Vec<SecuredGuard<'c>>,
}

impl Sim<'_> {
    fn saw(&self, what: &'static str) {
        *self.seen.borrow_mut().entry(what).or_default() += 1;
    }

    fn apply(&mut self, op: &Op) {
        let g = self.guards.len().max(1);
        match *op {
            Op::Secure(n, long, only) => self.secure(n, long, only),
            Op::End(i, how) if !self.guards.is_empty() => {
                let guard = self.guards.remove(i % g);
                let p = guard.secured.process;
                match how {
                    0 => self.ended(p, "succeeded", || guard.finish(Ok(())).unwrap()),
                    1 => self.ended(p, "failed", || guard.finish(Err("full".into())).unwrap()),
                    2 => self.ended(p, "aborted", || drop(guard)),
                    _ => {
                        self.procs.get_mut(&p).unwrap().crashed = true;
                        std::mem::forget(guard);
                    }
                }
            }
            Op::Renew(i, long) if !self.guards.is_empty() => {
                let guard = &self.guards[i % g];
                let p = self.procs.get_mut(&guard.secured.process).unwrap();
                let live = p.holds && self.clock <= p.lease_end;
                match guard.renew(LEASE[long as usize]) {
                    Ok(()) if live => p.lease_end = self.clock + LEASE[long as usize],
                    Err(Error::LeaseLost(q)) if !live && q == guard.secured.process => {
                        self.saw("lease lost")
                    }
                    r => panic!("renew (live lease: {live}): {r:?}"),
                }
            }
            Op::Health(r, what) => {
                let name = &self.names[r % self.names.len()];
                let h = self.health.get_mut(name).unwrap();
                match what {
                    0 => {
                        let fail = || self.c.record_error(name, "probe").unwrap();
                        let s: [State; 3] = [fail(), fail(), fail()];
                        assert_eq!(s[2], State::NotUsable, "{name} after three errors");
                        (h.1, h.2) = (false, h.2 + 3);
                    }
                    1 => {
                        self.c.record_ok(name).unwrap();
                        (h.1, h.2) = (true, 0);
                    }
                    _ => {
                        self.c.set_enabled(name, what == 3, "test").unwrap();
                        h.0 = what == 3;
                    }
                }
            }
            Op::Advance(long) => {
                self.c.advance_clock(STEP[long as usize]);
                self.clock += STEP[long as usize];
            }
            _ => {}
        }
    }

    /// A run ended by its manager (`end`): it frees what it still holds and records `state`,
    /// unless its lease was already reclaimed (the run then stays expired).
    fn ended(&mut self, process: i64, state: &'static str, end: impl FnOnce()) {
        end();
        let p = self.procs.get_mut(&process).unwrap();
        if p.holds {
            (p.holds, p.state) = (false, state);
        }
    }

    fn secure(&mut self, n: usize, long: bool, only: Option<u8>) {
        let case = self.case;
        let wanted: Vec<bool> = (0..case.targets)
            .map(|t| only.is_none_or(|m| m >> t & 1 == 1))
            .collect();
        let names = (0..case.targets)
            .filter(|&t| wanted[t])
            .map(|t| format!("t{t}"));
        let lease = LEASE[long as usize];
        let c = Constraints {
            targets: only.map(|_| names.collect()),
            lease,
            wait: Duration::ZERO,
        };
        // What the catalog sees once it has reclaimed the expired leases.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + self.clock;
        let mut snap = self.c.resources().unwrap();
        for r in &mut snap {
            r.allocations.retain(|a| a.2 >= now.as_millis() as i64);
        }
        let seen = self.seen;
        for p in self.procs.values_mut() {
            if p.holds && self.clock > p.lease_end {
                (p.holds, p.state) = (false, "expired");
                *seen.borrow_mut().entry("reclaimed").or_default() += 1;
            }
        }
        let enough = n <= wanted.iter().filter(|&&w| w).count();
        let possible = enough && exists(&snap, case, &wanted, n);
        let guard = match self.c.secure(0, n, &c) {
            Ok(g) => g,
            Err(Error::Unavailable { need, why }) => {
                let right = enough && !possible && need == n;
                assert!(right, "wrongly unavailable: {why}");
                return self.saw("unavailable");
            }
            Err(Error::Invalid(m)) => {
                assert!(!enough, "invalid ({m}), yet enough targets are wanted");
                return self.saw("invalid");
            }
            Err(e) => panic!("secure {n}: {e}"),
        };
        self.saw("secured");
        let subs = guard.secured.subsystems.clone();
        let right = possible && subs.len() == n;
        assert!(right, "wrongly secured: {subs:?}");
        let mut used: HashMap<&str, i64> = HashMap::new();
        for (k, s) in subs.iter().enumerate() {
            let route = (ix(&s.worker), ix(&s.path), ix(&s.target));
            let right = s.stream == k as i64 && wanted[route.2];
            assert!(right, "{s:?}, stream {k}, {only:?}");
            assert!(case.routes.contains(&route), "{s:?} is no declared route");
            let (m, t) = (by(&snap, &s.medium), by(&snap, &s.target));
            assert_eq!(m.parent, Some(t.id), "{s:?}: not the target's medium");
            for name in [&s.worker, &s.path, &s.target, &s.medium] {
                *used.entry(name).or_default() += 1;
            }
        }
        for (name, u) in used {
            // Usable and free when secured: not disabled, not unhealthy, within its slots.
            let r = by(&snap, name);
            assert!(free(&snap, name) >= u, "secured ×{u}: {r:?}");
        }
        let (lease_end, state) = (self.clock + lease, "running");
        let p = Proc {
            lease_end,
            holds: true,
            state,
            subs,
            crashed: false,
        };
        self.procs.insert(guard.secured.process, p);
        self.guards.push(guard);
    }

    /// Everything the database says, against the invariants and the model.
    fn check(&self) {
        let all = self.c.resources().unwrap();
        let mut held: BTreeMap<(i64, i64), Vec<&str>> = BTreeMap::new();
        for r in &all {
            let h = (r.enabled, r.healthy, r.errors);
            assert_eq!(h, self.health[&r.name], "{r:?}: enabled, healthy, errors");
            // A target or medium is never in two streams; nothing holds more than its slots.
            let one = matches!(r.kind, Kind::Target | Kind::Medium);
            let max = if one { 1 } else { r.slots };
            assert!(r.allocations.len() as i64 <= max, "over its slots: {r:?}");
            for &(p, s, _) in &r.allocations {
                held.entry((p, s)).or_default().push(&r.name);
            }
        }
        // Exactly the processes the model says hold something do, each exactly the worker,
        // path, target and medium per stream it secured (and were checked then).
        let mut want = BTreeMap::new();
        for (p, m) in self.procs.iter().filter(|p| p.1.holds) {
            for s in &m.subs {
                let mut names = row!(s).map(String::as_str).to_vec();
                names.sort();
                want.insert((*p, s.stream), names);
            }
        }
        held.values_mut().for_each(|v| v.sort());
        assert_eq!(held, want, "(process, stream): allocations");
        let runs = self.c.runs(None, 10_000).unwrap();
        assert_eq!(runs.len(), self.procs.len(), "runs");
        for run in &runs {
            let m = &self.procs[&run.id];
            let got = (run.state.as_str(), run.ended.is_none());
            assert_eq!(got, (m.state, m.state == "running"), "run {}", run.id);
            let state = match m.state {
                "running" => "secured",
                "expired" => "lost",
                _ => "ended",
            };
            let got = run.streams.iter();
            let got = got.map(|s| (s.stream, row!(s), s.state.as_str()));
            let want = m.subs.iter().map(|s| (s.stream, row!(s), state));
            assert!(got.eq(want), "run {}: {:?}", run.id, run.streams);
        }
    }
}

fn run_case(url: &str, pg: bool, case: &Case, seen: &RefCell<BTreeMap<&'static str, usize>>) {
    let c = Catalog::open(url).unwrap();
    if pg {
        // One database for the whole run: each case starts from empty tables.
        let sql = "DELETE FROM extents; DELETE FROM backups; DELETE FROM streams; \
                   DELETE FROM allocations; DELETE FROM job_runs; DELETE FROM jobs; \
                   DELETE FROM events; DELETE FROM routes; DELETE FROM resources;";
        let mut psql = std::process::Command::new("psql");
        let out = psql.args([url, "-q", "-c", sql]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut names = Vec::new();
    for (kind, slots) in [(Kind::Worker, &case.workers), (Kind::Path, &case.paths)] {
        for (i, &s) in slots.iter().enumerate() {
            names.push(format!("{}{i}", &kind.as_str()[..1]));
            let name = names.last().unwrap();
            c.add_resource(kind, name, ResourceConfig::None, s).unwrap();
        }
    }
    for t in 0..case.targets {
        let url = ResourceConfig::Target(TargetConfig::new(format!("/srv/t{t}")));
        c.add_resource(Kind::Target, &format!("t{t}"), url, 1)
            .unwrap();
        names.extend([format!("t{t}"), format!("t{t}.medium")]);
    }
    for &(w, p, t) in &case.routes {
        let route = [format!("w{w}"), format!("p{p}"), format!("t{t}")];
        c.add_route(&route[0], &route[1], &route[2]).unwrap();
    }
    let health = names.iter().map(|n| (n.clone(), (true, true, 0))).collect();
    let (procs, guards, clock) = (BTreeMap::new(), Vec::new(), Duration::ZERO);
    let mut sim = Sim {
        c: &c,
        case,
        names,
        seen,
        clock,
        procs,
        health,
        guards,
    };
    sim.check();
    for op in &case.ops {
        sim.apply(op);
        sim.check();
    }
    // The end: every live guard finishes, the clock passes every lease, and the next secure
    // (whatever its outcome) must reclaim what the crashed ones held.
    while !sim.guards.is_empty() {
        sim.apply(&Op::End(0, 0));
    }
    for op in [Op::Advance(true), Op::Secure(1, true, None), Op::End(0, 0)] {
        sim.apply(&op);
        sim.check();
    }
    let all = c.resources().unwrap();
    let left: Vec<&Resource> = all.iter().filter(|r| !r.allocations.is_empty()).collect();
    assert!(left.is_empty(), "still allocated at the end: {left:?}");
    for run in c.runs(None, 10_000).unwrap() {
        assert!(run.ended.is_some(), "run {} never ended", run.id);
        if sim.procs[&run.id].crashed {
            assert_eq!(run.state, "expired", "crashed run {}", run.id);
        }
    }
}

fn random_histories_keep_every_invariant(db: Db) {
    let pg = matches!(db, Db::Postgres).then(|| fresh(db));
    let seen = RefCell::new(BTreeMap::new());
    let mut config = Config::with_cases(32);
    (config.max_shrink_iters, config.failure_persistence) = (256, None);
    let result = TestRunner::new(config).run(&case(), |case| {
        match &pg {
            Some(f) => run_case(&f.url, true, &case, &seen),
            None => run_case(&fresh(db).url, false, &case, &seen),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Every outcome happened (else some properties above were checked on nothing).
    let seen = seen.into_inner();
    let kinds = seen.keys().copied().collect::<Vec<_>>().join(", ");
    let all = "invalid, lease lost, reclaimed, secured, unavailable";
    assert_eq!(kinds, all, "outcomes seen: {seen:?}");
}

on_both_dbs!(random_histories_keep_every_invariant);
