//! Catalog tests, each run on SQLite and on PostgreSQL (`KURA_TEST_PG`, started by
//! scripts/test.sh): every test gets a fresh database.

use std::collections::HashSet;
use std::time::Duration;

use kura_catalog::{Catalog, Constraints, Error, Kind, State};
use serde_json::json;

mod common;

use common::{Db, with_targets};

fn registers_resources_with_implicit_media_and_rejects_bad_input(db: Db) {
    let (f, c) = with_targets(db, 2);
    let all = c.resources().unwrap();
    let names: Vec<_> = all.iter().map(|r| r.name.as_str()).collect();
    for n in [
        "local-worker",
        "local-path",
        "t0",
        "t0.medium",
        "t1",
        "t1.medium",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(all.iter().all(|r| r.state() == State::Usable));
    assert!(matches!(
        c.add_local_target("t0", "/x"),
        Err(Error::Duplicate(n)) if n == "t0"
    ));
    assert!(matches!(c.resource("nope"), Err(Error::UnknownResource(_))));
    assert!(matches!(
        c.add_resource(Kind::Target, "bad name/", json!({"url": "/x"}), 1),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.add_resource(Kind::Target, "nourl", json!({}), 1),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(Kind::parse("tape-robot"), Err(Error::Invalid(_))));
    assert!(matches!(
        c.add_route("t0", "local-path", "t1"),
        Err(Error::Invalid(m)) if m.contains("not a worker")
    ));
    // Reopening (migrations already applied) sees the same rows.
    drop(c);
    let c = Catalog::open(&f.url).unwrap();
    assert_eq!(c.resources().unwrap().len(), 6);
}

fn secures_disjoint_subsystems_all_or_nothing_and_releases_on_drop(db: Db) {
    let (_f, c) = with_targets(db, 3);
    let g = c.secure(0, 2, &Constraints::default()).unwrap();
    let s = &g.secured.subsystems;
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].stream, s[1].stream), (0, 1));
    assert_ne!(s[0].target, s[1].target);
    assert_ne!(s[0].medium, s[1].medium);
    let t = c.resource(&s[0].target).unwrap();
    assert_eq!(t.state(), State::InUse);
    assert_eq!(t.allocations[0].0, g.secured.process);
    // Only one target left: asking for two fails, and takes nothing.
    let e = c.secure(0, 2, &Constraints::default()).err().unwrap();
    let msg = e.to_string();
    assert!(msg.contains("need 2 targets, 1 usable"), "{msg}");
    assert!(msg.contains("in use by process"), "{msg}");
    let in_use = |c: &Catalog| {
        c.resources()
            .unwrap()
            .iter()
            .filter(|r| r.kind == Kind::Target && r.state() == State::InUse)
            .count()
    };
    assert_eq!(in_use(&c), 2, "the failed attempt secured nothing");
    drop(g);
    assert_eq!(in_use(&c), 0);
    // Released even when the job panics.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = c.secure(0, 3, &Constraints::default()).unwrap();
        panic!("job failed");
    }));
    assert!(r.is_err());
    assert_eq!(in_use(&c), 0);
    assert!(matches!(
        c.secure(0, 0, &Constraints::default()),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.secure(0, 4, &Constraints::default()),
        Err(Error::Invalid(m)) if m.contains("only 3 target")
    ));
}

fn repeated_errors_make_a_target_not_usable_with_the_reason(db: Db) {
    let (_f, c) = with_targets(db, 2);
    for _ in 0..2 {
        assert_eq!(
            c.record_error("t1", "probe: connection refused").unwrap(),
            State::Usable
        );
    }
    assert_eq!(
        c.record_error("t1", "probe: connection refused").unwrap(),
        State::NotUsable
    );
    let msg = c
        .secure(0, 2, &Constraints::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("need 2 targets, 1 usable: t1 not usable since")
            && msg.contains("probe: connection refused ×3"),
        "{msg}"
    );
    c.record_ok("t1").unwrap();
    assert_eq!(c.resource("t1").unwrap().state(), State::Usable);
    c.set_enabled("t0", false, "disk swap").unwrap();
    let msg = c
        .secure(0, 2, &Constraints::default())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("t0 disabled since"), "{msg}");
    c.set_enabled("t0", true, "done").unwrap();
    c.secure(0, 2, &Constraints::default()).unwrap();
    let ev: Vec<String> = c.events("t1").unwrap().into_iter().map(|e| e.1).collect();
    assert_eq!(ev, ["added", "not usable", "usable", "in use", "released"]);
    let ev: Vec<String> = c.events("t0").unwrap().into_iter().map(|e| e.1).collect();
    assert_eq!(ev, ["added", "disabled", "enabled", "in use", "released"]);
}

fn expired_leases_are_reclaimed_and_waiting_secures_when_freed(db: Db) {
    let (_f, c) = with_targets(db, 1);
    let short = Constraints {
        lease: Duration::from_millis(300),
        ..Constraints::default()
    };
    // A "dead manager": secures and never releases.
    let g = c.secure(0, 1, &short).unwrap();
    std::mem::forget(g);
    assert!(c.secure(0, 1, &Constraints::default()).is_err());
    let waiting = Constraints {
        wait: Duration::from_secs(5),
        ..Constraints::default()
    };
    let t = std::time::Instant::now();
    let g = c.secure(0, 1, &waiting).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(g.secured.subsystems[0].target, "t0");
    // Renewal keeps it.
    c.renew(g.secured.process, Duration::from_secs(60)).unwrap();
    assert!(c.secure(0, 1, &Constraints::default()).is_err());
}

fn concurrent_securing_never_shares_a_target(db: Db) {
    let (f, c) = with_targets(db, 4);
    drop(c);
    let url = f.url.clone();
    let held = std::sync::Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let c = Catalog::open(&url).unwrap();
                for _ in 0..10 {
                    if let Ok(g) = c.secure(0, 2, &Constraints::default()) {
                        let mut h = held.lock().unwrap();
                        for sub in &g.secured.subsystems {
                            assert!(h.insert(sub.target.clone()), "{} twice", sub.target);
                        }
                        drop(h);
                        std::thread::sleep(Duration::from_millis(5));
                        let mut h = held.lock().unwrap();
                        for sub in &g.secured.subsystems {
                            h.remove(&sub.target);
                        }
                    }
                }
            });
        }
    });
    let c = Catalog::open(&f.url).unwrap();
    assert!(
        c.resources()
            .unwrap()
            .iter()
            .all(|r| r.allocations.is_empty()),
        "nothing left in use"
    );
}

on_both!(
    registers_resources_with_implicit_media_and_rejects_bad_input,
    secures_disjoint_subsystems_all_or_nothing_and_releases_on_drop,
    repeated_errors_make_a_target_not_usable_with_the_reason,
    expired_leases_are_reclaimed_and_waiting_secures_when_freed,
    concurrent_securing_never_shares_a_target,
);
