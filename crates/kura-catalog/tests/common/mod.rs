//! Shared by the catalog tests: a fresh catalog on SQLite or PostgreSQL (`KURA_TEST_PG`,
//! started by scripts/test.sh) and the macro that runs a test on both.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use kura_catalog::Catalog;

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh catalog and what keeps it alive (the SQLite file's directory).
pub struct Fresh {
    pub url: String,
    pub _dir: tempfile::TempDir,
}

pub fn fresh(db: Db) -> Fresh {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = tempfile::tempdir().unwrap();
    let url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.path().join("catalog.db").display()),
        Db::Postgres => {
            let base = std::env::var("KURA_TEST_PG").expect(
                "KURA_TEST_PG is not set: the PostgreSQL variants need scripts/test.sh \
                 (or a postgres://… URL of a database the tests may create databases from)",
            );
            let name = format!(
                "kt_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let out = std::process::Command::new("psql")
                .arg(&base)
                .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (prefix, _) = base.rsplit_once('/').unwrap();
            format!("{prefix}/{name}")
        }
    };
    Fresh { url, _dir: dir }
}

#[macro_export]
macro_rules! on_both_dbs {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Db::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Db::Postgres)
            }
        }
    )*};
}

/// The single-machine default plus `n` targets.
pub fn with_targets(db: Db, n: usize) -> (Fresh, Catalog) {
    let f = fresh(db);
    let c = Catalog::open(&f.url).unwrap();
    for i in 0..n {
        c.add_local_target(&format!("t{i}"), &format!("/srv/t{i}"))
            .unwrap();
    }
    (f, c)
}
