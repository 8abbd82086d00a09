//! Catalog tests, each run on SQLite and on PostgreSQL (`KURA_TEST_PG`, started by
//! scripts/test.sh): every test gets a fresh database.

use std::collections::HashSet;
use std::time::Duration;

use kura_catalog::{BackupState, Catalog, Constraints, Error, Extent, Kind, Mode, State};
use kura_types::{JobSettings, ResourceConfig, TargetConfig};

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
        c.add_resource(Kind::Target, "bad name/", target("/x"), 1),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.add_resource(Kind::Target, "nourl", ResourceConfig::None, 1),
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

fn events_older_than_the_retention_are_pruned_and_newer_ones_kept(db: Db) {
    let (_f, c) = with_targets(db, 2);
    let days = |d: u64| Duration::from_secs(d * 24 * 3600);
    let total = |c: &Catalog| c.events("t0").unwrap().len() + c.events("t1").unwrap().len();
    c.set_enabled("t0", false, "disk swap").unwrap();
    c.advance_clock(days(10));
    c.set_enabled("t0", true, "done").unwrap();
    assert_eq!(total(&c), 4);
    // Nothing is old enough yet.
    assert_eq!(c.prune_events(days(30)).unwrap(), 0);
    c.advance_clock(days(25));
    // 35 days after the setup and "disabled", 25 after "enabled": a 30-day retention drops
    // all but "enabled" (at least t0's and t1's "added" and "disabled").
    assert!(c.prune_events(days(30)).unwrap() >= 3);
    let ev: Vec<String> = c.events("t0").unwrap().into_iter().map(|e| e.1).collect();
    assert_eq!(ev, ["enabled"]);
    assert!(c.events("t1").unwrap().is_empty());
    assert_eq!(c.prune_events(days(30)).unwrap(), 0);
    c.advance_clock(days(6));
    assert_eq!(c.prune_events(days(30)).unwrap(), 1);
    assert!(c.events("t0").unwrap().is_empty());
    // The state itself is not an event: t0 is still usable, t1 still there.
    assert_eq!(c.resource("t0").unwrap().state(), State::Usable);
    assert_eq!(c.resource("t1").unwrap().state(), State::Usable);
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

fn invalid_target_urls_are_refused(db: Db) {
    let (_f, c) = with_targets(db, 0);
    for (url, why) in [
        ("s3://", "no bucket"),
        ("ftp://host/x", "unsupported scheme"),
        ("relative/dir", "relative path"),
        ("s3://b/p?colour=blue", "unknown option"),
        ("", "empty"),
    ] {
        match c.add_resource(Kind::Target, "t", target(url), 1) {
            Err(Error::Invalid(m)) => assert!(m.contains(why), "{url:?}: {m}"),
            other => panic!("{url:?} accepted: {other:?}"),
        }
    }
    assert!(matches!(c.resource("t"), Err(Error::UnknownResource(_))));
    c.add_resource(
        Kind::Target,
        "s3",
        target("s3://b/p?endpoint=http://127.0.0.1:1"),
        1,
    )
    .unwrap();
}

fn runs_record_their_outcome_and_expired_leases_are_lost(db: Db) {
    let (_f, c) = with_targets(db, 2);
    let job = c
        .add_job(
            "db",
            "/srv/db",
            Some("daily 02:00"),
            2,
            Mode::Mirror,
            &JobSettings::default(),
        )
        .unwrap();
    assert!(matches!(
        c.add_job("db", "/x", None, 1, Mode::Failover, &JobSettings::default()),
        Err(Error::Duplicate(_))
    ));
    assert!(matches!(
        c.add_job("j0", "/x", None, 0, Mode::Mirror, &JobSettings::default()),
        Err(Error::Invalid(m)) if m.contains("redundancy")
    ));
    assert!(matches!(
        c.secure(job + 100, 1, &Constraints::default()),
        Err(Error::UnknownJob(_))
    ));
    assert_eq!(c.job("db").unwrap().id, job);
    assert_eq!(c.job(&job.to_string()).unwrap().name, "db");
    // Succeeded, failed, aborted (dropped unfinished), expired (crashed manager).
    c.secure(job, 2, &Constraints::default())
        .unwrap()
        .finish(Ok(()))
        .unwrap();
    c.secure(job, 1, &Constraints::default())
        .unwrap()
        .finish(Err("t0 full".into()))
        .unwrap();
    drop(c.secure(job, 1, &Constraints::default()).unwrap());
    let crashed = c.secure(job, 2, &Constraints::default()).unwrap();
    let process = crashed.secured.process;
    std::mem::forget(crashed);
    assert!(matches!(
        c.secure(job, 1, &Constraints::default()),
        Err(Error::Unavailable { .. })
    ));
    c.advance_clock(Duration::from_secs(301));
    let g = c.secure(job, 2, &Constraints::default()).unwrap();
    assert!(matches!(
        c.renew(process, Duration::from_secs(60)),
        Err(Error::LeaseLost(p)) if p == process
    ));
    g.renew(Duration::from_secs(60)).unwrap();
    assert!(matches!(c.remove_job("db"), Err(Error::InUse(_))));
    g.finish(Ok(())).unwrap();
    let runs = c.runs(Some(job), 10).unwrap();
    let states: Vec<&str> = runs.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(
        states,
        ["succeeded", "expired", "aborted", "failed", "succeeded"]
    );
    assert_eq!(runs[3].error.as_deref(), Some("t0 full"));
    assert!(runs.iter().all(|r| r.ended.is_some()));
    let lost: Vec<&str> = runs[1].streams.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(lost, ["lost", "lost"]);
    assert_eq!(runs[0].streams.len(), 2);
    assert!(runs[0].streams.iter().all(|s| s.state == "ended"));
    let ev: Vec<String> = c.events("t0").unwrap().into_iter().map(|e| e.1).collect();
    assert!(ev.contains(&"reclaimed".to_string()), "{ev:?}");
    c.remove_job("db").unwrap();
    assert!(matches!(c.job("db"), Err(Error::UnknownJob(_))));
    assert_eq!(c.runs(None, 10).unwrap().len(), 5, "runs outlive their job");
}

fn backups_record_only_acknowledged_extents(db: Db) {
    let (_f, c) = with_targets(db, 2);
    let g = c.secure(0, 2, &Constraints::default()).unwrap();
    let run = g.secured.process;
    let b = c
        .begin_backup(run, "/srv/db", 1_699_999_990_000, 1_700_000_000_000)
        .unwrap();
    assert_eq!(c.backup(b).unwrap().state, BackupState::Running);
    let subs = g.secured.subsystems.clone();
    let ext = |seq: i64, stream: i64| {
        let s = &subs[stream as usize];
        Extent {
            stream,
            seq,
            source_offset: seq << 20,
            source_length: 1 << 20,
            target: s.target.clone(),
            medium: s.medium.clone(),
            position: format!("pack-{seq}"),
            size: 1000 + seq,
        }
    };
    for seq in 0..3 {
        for stream in 0..2 {
            c.record_extent(b, &ext(seq, stream)).unwrap();
        }
    }
    // A medium of another target, negative ranges: refused.
    let mut wrong = ext(3, 0);
    wrong.medium = g.secured.subsystems[1].medium.clone();
    assert!(
        matches!(c.record_extent(b, &wrong), Err(Error::Invalid(m)) if m.contains("does not belong"))
    );
    let mut neg = ext(3, 0);
    neg.source_length = -1;
    assert!(matches!(c.record_extent(b, &neg), Err(Error::Invalid(_))));
    let got = c.extents(b).unwrap();
    assert_eq!(got.len(), 6);
    assert_eq!(got[0].seq, 0);
    assert_eq!(got[5], {
        let mut e = ext(2, 0);
        if got[5].target != e.target {
            e = ext(2, 1);
        }
        e
    });
    // Holding extents, a target cannot be removed (its data would be lost track of).
    let t = g.secured.subsystems[0].target.clone();
    g.finish(Ok(())).unwrap();
    assert!(matches!(c.remove_resource(&t), Err(Error::Invalid(m)) if m.contains("extent")));
    assert!(matches!(
        c.begin_backup(run, "/srv/db", 0, 0),
        Err(Error::Invalid(m)) if m.contains("already ended")
    ));
    c.finish_backup(b, BackupState::Complete).unwrap();
    // Finished is final: no more extents, no second outcome.
    assert!(matches!(
        c.record_extent(b, &ext(9, 0)),
        Err(Error::Invalid(_))
    ));
    c.finish_backup(b, BackupState::Failed).unwrap();
    let back = c.backups(Some("/srv/db")).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].state, BackupState::Complete);
    assert_eq!(back[0].data_time, 1_700_000_000_000);
    assert_eq!(
        back[0].started, 1_699_999_990_000,
        "the backup's start, not the row's"
    );
    assert!(back[0].ended.is_some());
    assert!(c.backups(Some("/other")).unwrap().is_empty());
}

fn selection_prefers_healthy_and_least_loaded(db: Db) {
    let f = common::fresh(db);
    let c = Catalog::open(&f.url).unwrap();
    for w in ["w1", "w2"] {
        c.add_resource(Kind::Worker, w, ResourceConfig::None, 4)
            .unwrap();
    }
    c.add_resource(Kind::Path, "p", ResourceConfig::None, 8)
        .unwrap();
    for t in ["a", "b", "c"] {
        c.add_resource(Kind::Target, t, target(&format!("/srv/{t}")), 1)
            .unwrap();
        for w in ["w1", "w2"] {
            c.add_route(w, "p", t).unwrap();
        }
    }
    // "a" sorts first by name but has failed twice (still usable): "b" is preferred.
    c.record_error("a", "timeout").unwrap();
    c.record_error("a", "timeout").unwrap();
    let g1 = c.secure(0, 1, &Constraints::default()).unwrap();
    assert_eq!(g1.secured.subsystems[0].target, "b");
    // The next stream goes to the other, idle worker.
    let g2 = c.secure(0, 1, &Constraints::default()).unwrap();
    assert_eq!(g2.secured.subsystems[0].target, "c");
    assert_ne!(
        g1.secured.subsystems[0].worker,
        g2.secured.subsystems[0].worker
    );
    // Only the erring one is left, and it is still taken rather than failing.
    let g3 = c.secure(0, 1, &Constraints::default()).unwrap();
    assert_eq!(g3.secured.subsystems[0].target, "a");
}

fn reclaim_frees_a_dead_managers_holdings_without_a_secure(db: Db) {
    let (_f, c) = with_targets(db, 2);
    let job = c
        .add_job("j", "/x", None, 2, Mode::Mirror, &JobSettings::default())
        .unwrap();
    let g = c.secure(job, 2, &Constraints::default()).unwrap();
    let process = g.secured.process;
    std::mem::forget(g);
    assert_eq!(c.reclaim().unwrap(), 0, "the lease is still live");
    assert!(matches!(c.remove_job("j"), Err(Error::InUse(_))));
    assert!(matches!(c.remove_resource("t0"), Err(Error::InUse(_))));
    c.advance_clock(Duration::from_secs(301));
    // Removing the job reclaims first: the dead run no longer holds it.
    c.remove_job("j").unwrap();
    let run = c.runs(None, 1).unwrap().remove(0);
    assert_eq!((run.id, run.state.as_str()), (process, "expired"));
    assert!(
        c.resources()
            .unwrap()
            .iter()
            .all(|r| r.allocations.is_empty())
    );
    assert_eq!(c.reclaim().unwrap(), 0);
    c.remove_resource("t0").unwrap();
}

fn target(url: &str) -> ResourceConfig {
    ResourceConfig::Target(TargetConfig::new(url))
}

/// A stored configuration that does not fit its type (changed behind the catalog's back) is
/// an error naming the job or resource and the field, not a silent default; a broken job can
/// still be removed.
#[test]
fn bad_stored_configurations_are_typed_errors() {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let (f, c) = with_targets(Db::Sqlite, 1);
    c.add_job("db", "/x", None, 1, Mode::Mirror, &JobSettings::default())
        .unwrap();
    let sql = |q: &'static str| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&f.url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            sqlx::query(q).execute(&mut conn).await.unwrap();
        });
    };
    sql(r#"UPDATE jobs SET config = '{"hook_timeout": "ten minutes"}' WHERE name = 'db'"#);
    match c.job("db") {
        Err(Error::Config(e)) => {
            assert_eq!(
                (e.owner.as_str(), e.field.as_deref()),
                ("job db", Some("hook_timeout"))
            );
            assert!(
                e.to_string().contains("invalid duration \"ten minutes\""),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    c.remove_job("db").unwrap();
    assert!(c.jobs().unwrap().is_empty());
    sql(
        r#"UPDATE resources SET config = '{"url": "/srv/t0", "colour": "blue"}' WHERE name = 't0'"#,
    );
    match c.resources() {
        Err(Error::Config(e)) => {
            assert_eq!(
                (e.owner.as_str(), e.field.as_deref()),
                ("target t0", Some("colour"))
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A catalog written by a newer kura (a migration this binary does not know) is refused,
/// not used with a schema the code does not understand.
#[test]
fn a_newer_catalog_is_refused() {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let f = common::fresh(Db::Sqlite);
    drop(Catalog::open(&f.url).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&f.url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99, 'future', 1, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    });
    match Catalog::open(&f.url) {
        Err(Error::Migrate(e)) => assert!(e.to_string().contains("99"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a catalog from a newer kura was opened"),
    }
}

/// Copies a target no longer holds are dropped; the last one gone, the backup is
/// `forgotten`; a backup being deleted (`forgetting`) gets nothing back from a record; then
/// its rows go.
/// A fail-over backup in sections on two targets: one target forgetting its sections makes
/// the backup unrestorable (forgotten), although the other target still holds its part.
fn a_sectioned_backup_missing_a_section_is_forgotten(db: Db) {
    let (_f, c) = with_targets(db, 2);
    let g = c.secure(0, 2, &Constraints::default()).unwrap();
    let b = c.begin_backup(g.secured.process, "/x", 5, 10).unwrap();
    let snap = "ef".repeat(32);
    let subs = g.secured.subsystems.clone();
    let section = |i: usize, seq: i64, off: i64, len: i64, index: &str| Extent {
        stream: i as i64,
        seq,
        source_offset: off,
        source_length: len,
        target: subs[i].target.clone(),
        medium: subs[i].medium.clone(),
        position: format!("{snap}:{index}"),
        size: len,
    };
    c.record_extent(b, &section(0, 0, 0, 4, "i0")).unwrap();
    c.record_extent(b, &section(1, 1, 4, 6, "i1")).unwrap();
    g.finish(Ok(())).unwrap();
    c.finish_backup(b, BackupState::Complete).unwrap();
    assert_eq!(c.drop_copies(&subs[0].target, &snap, None).unwrap(), [b]);
    assert_eq!(c.extents(b).unwrap().len(), 1, "t1 still holds its section");
    assert_eq!(c.backup(b).unwrap().state, BackupState::Forgotten);
}

fn dropped_copies_leave_forgotten_backups(db: Db) {
    let (_f, c) = with_targets(db, 2);
    let g = c.secure(0, 2, &Constraints::default()).unwrap();
    let run = g.secured.process;
    let b = c.begin_backup(run, "/x", 5, 10).unwrap();
    let snap = "ab".repeat(32);
    let subs = g.secured.subsystems.clone();
    for (i, s) in subs.iter().enumerate() {
        let e = Extent {
            stream: i as i64,
            seq: 0,
            source_offset: 0,
            source_length: 1,
            target: s.target.clone(),
            medium: s.medium.clone(),
            position: snap.clone(),
            size: 1,
        };
        c.record_extent(b, &e).unwrap();
    }
    g.finish(Ok(())).unwrap();
    c.finish_backup(b, BackupState::Complete).unwrap();
    let all = c.extents(b).unwrap();
    // Another snapshot's name, or a prefix of this one, drops nothing.
    assert!(
        c.drop_copies(&subs[0].target, &"cd".repeat(32), None)
            .unwrap()
            .is_empty()
    );
    assert!(
        c.drop_copies(&subs[0].target, &snap[..10], None)
            .unwrap()
            .is_empty()
    );
    assert_eq!(c.drop_copies(&subs[0].target, &snap, None).unwrap(), [b]);
    assert_eq!(c.backup(b).unwrap().state, BackupState::Complete);
    assert_eq!(c.extents(b).unwrap().len(), 1);
    assert_eq!(c.drop_copies(&subs[1].target, &snap, None).unwrap(), [b]);
    assert_eq!(c.backup(b).unwrap().state, BackupState::Forgotten);
    assert!(c.extents(b).unwrap().is_empty());
    // A copy that turned up again (a verified record) makes it complete again.
    let (id, new, _) = c.import_backup("/x", 5, 6, 10, &all[..1]).unwrap();
    assert_eq!((id, new), (b, false));
    assert_eq!(c.backup(b).unwrap().state, BackupState::Complete);
    c.mark_forgetting(b).unwrap();
    assert_eq!(c.backup(b).unwrap().state, BackupState::Forgetting);
    let (id, new, _) = c.import_backup("/x", 5, 6, 10, &all).unwrap();
    assert_eq!((id, new), (b, false));
    assert_eq!(
        c.extents(b).unwrap().len(),
        1,
        "nothing comes back while forgetting"
    );
    c.delete_backup(b).unwrap();
    assert!(matches!(c.backup(b), Err(Error::UnknownBackup(_))));
    // The repository recorded with a target.
    assert_eq!(c.target_repository(&subs[0].target).unwrap(), None);
    c.set_target_repository(&subs[0].target, "r1").unwrap();
    assert_eq!(
        c.target_repository(&subs[0].target).unwrap().as_deref(),
        Some("r1")
    );
}

fn run_stats_and_edited_windows_are_kept(db: Db) {
    let (_f, c) = with_targets(db, 1);
    let job = c
        .add_job(
            "db",
            "/srv/db",
            None,
            1,
            Mode::Mirror,
            &JobSettings::default(),
        )
        .unwrap();
    // Editing: the window is checked (nothing applied on a bad one), then stored.
    let bad = JobSettings {
        start_within: Some("2h".parse().unwrap()),
        finish_within: Some("1h".parse().unwrap()),
        ..JobSettings::default()
    };
    assert!(matches!(
        c.edit_job("db", Some(Some("daily")), &bad),
        Err(Error::Invalid(m)) if m.contains("start_within")
    ));
    assert_eq!(c.job("db").unwrap().schedule, None);
    let good = JobSettings {
        finish_within: Some("4h".parse().unwrap()),
        at_window_end: kura_types::WindowEnd::Finish,
        ..JobSettings::default()
    };
    c.edit_job("db", Some(Some("daily")), &good).unwrap();
    let j = c.job("db").unwrap();
    assert_eq!((j.schedule.as_deref(), &j.settings), (Some("daily"), &good));
    c.edit_job("db", None, &JobSettings::default()).unwrap();
    assert_eq!(c.job("db").unwrap().schedule.as_deref(), Some("daily"));
    // Stats of two runs, newest first; recording again replaces.
    let mut runs = Vec::new();
    for i in 0..2u64 {
        let g = c.secure(job, 1, &Constraints::default()).unwrap();
        let run = g.secured.process;
        g.finish(Ok(())).unwrap();
        let s = kura_types::RunStats {
            bytes_scanned: 1 << 40,
            bytes_read: 1000 + i,
            bytes_stored: 900,
            files: 3,
            duration_ms: 2500,
            targets: vec![kura_types::TargetStats {
                target: "t0".into(),
                bytes: 900,
                bytes_per_second: 360,
            }],
        };
        c.record_run_stats(run, Some(job), &s).unwrap();
        c.record_run_stats(run, Some(job), &s).unwrap();
        runs.push((run, s));
        c.advance_clock(Duration::from_secs(1));
    }
    let got = c.run_stats(job, 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].run, &got[0].stats), (runs[1].0, &runs[1].1));
    assert_eq!((got[1].run, &got[1].stats), (runs[0].0, &runs[0].1));
    assert!(c.run_stats(job + 1, 10).unwrap().is_empty());
}

on_both_dbs!(
    run_stats_and_edited_windows_are_kept,
    dropped_copies_leave_forgotten_backups,
    a_sectioned_backup_missing_a_section_is_forgotten,
    registers_resources_with_implicit_media_and_rejects_bad_input,
    secures_disjoint_subsystems_all_or_nothing_and_releases_on_drop,
    repeated_errors_make_a_target_not_usable_with_the_reason,
    expired_leases_are_reclaimed_and_waiting_secures_when_freed,
    events_older_than_the_retention_are_pruned_and_newer_ones_kept,
    concurrent_securing_never_shares_a_target,
    invalid_target_urls_are_refused,
    runs_record_their_outcome_and_expired_leases_are_lost,
    backups_record_only_acknowledged_extents,
    selection_prefers_healthy_and_least_loaded,
    reclaim_frees_a_dead_managers_holdings_without_a_secure,
);
