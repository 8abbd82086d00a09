//! The fail-over backend under random histories: 1–3 members over real directories, each of
//! which may die after a random number of writes — by erroring, or by hanging past the
//! extent timeout — while two uploader threads write packs and close extents the way the
//! repository's saver does (an index file once an extent's worth of packs is written).
//!
//! Dying on a given write count cannot be arranged with a real fault at random points
//! across thousands of cases, so members are wrapped in a fault-injecting backend; the
//! integration tests (`kura-cli/tests/failover.rs`) kill real servers.
//!
//! Checked after every history:
//! - the run fails only if every member died, and then with every member's reason;
//! - every extent is acknowledged exactly once, by the member that was active, in order
//!   (members never go back), and that member durably holds its index and every pack it lists;
//! - bytes sent ≤ data + per fail-over one extent, one pack and one index file;
//! - the snapshot is on the last active member and on every member holding a section that
//!   has not failed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kura_backend::{
    Backend, BackendError, Bytes, ErrorKind, FailoverBackend, FailoverOptions, FileInfo, FileKind,
    LocalBackend, Result,
};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Death {
    Never,
    /// Writes fail after this many succeeded.
    ErrorAfter(usize),
    /// Writes hang (past the extent timeout) after this many succeeded.
    HangAfter(usize),
}

#[derive(Debug)]
struct Flaky {
    inner: LocalBackend,
    death: Death,
    writes: AtomicUsize,
}

impl Flaky {
    fn dead(&self) -> Option<bool> {
        let n = self.writes.load(Ordering::SeqCst);
        match self.death {
            Death::ErrorAfter(k) if n >= k => Some(false),
            Death::HangAfter(k) if n >= k => Some(true),
            _ => None,
        }
    }
}

impl Backend for Flaky {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        match self.dead() {
            Some(hang) => {
                if hang {
                    std::thread::sleep(Duration::from_millis(600));
                }
                Err(BackendError::new(
                    ErrorKind::Unreachable,
                    "put",
                    name,
                    self.location(),
                    "injected: target died",
                ))
            }
            None => {
                self.inner.put(kind, name, data)?;
                self.writes.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.inner.get(kind, name)
    }
    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.get_range_into(kind, name, offset, len, buf)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        self.inner.list(kind)
    }
    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        self.inner.stat(kind, name)
    }
    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.inner.delete(kind, name)
    }
}

fn death() -> impl Strategy<Value = Death> {
    prop_oneof![
        2 => Just(Death::Never),
        4 => (0usize..30).prop_map(Death::ErrorAfter),
        1 => (0usize..30).prop_map(Death::HangAfter),
    ]
}

/// Packs as the saver's uploaders write them: `put`, then list the pack in the shared
/// pending index, and write that index (closing the extent) once its packs reach the
/// extent size. Returns (index name → its packs).
fn upload(
    fo: &FailoverBackend,
    packs: &[(String, Bytes)],
    extent: u64,
) -> Result<HashMap<String, Vec<String>>> {
    let queue = Mutex::new(packs.iter());
    let pending: Mutex<(Vec<String>, u64)> = Mutex::new((Vec::new(), 0));
    let indexes = Mutex::new(HashMap::new());
    let counter = AtomicUsize::new(0);
    let write_index = |names: Vec<String>| -> Result<()> {
        let i = counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("{:064x}", 1_000_000 + i);
        let body = Bytes::from(names.join("\n").into_bytes());
        fo.put_index(&name, body, &names)?;
        indexes.lock().unwrap().insert(name, names);
        Ok(())
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let Some((name, data)) = queue.lock().unwrap().next() else {
                            return Ok(());
                        };
                        fo.put(FileKind::Pack, name, data.clone())?;
                        let due = {
                            let mut p = pending.lock().unwrap();
                            p.0.push(name.clone());
                            p.1 += data.len() as u64;
                            if p.1 >= extent {
                                p.1 = 0;
                                Some(std::mem::take(&mut p.0))
                            } else {
                                None
                            }
                        };
                        if let Some(names) = due {
                            write_index(names)?;
                        }
                    }
                })
            })
            .collect();
        let mut first_err = None;
        for w in workers {
            if let Err(e) = w.join().unwrap() {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let rest = std::mem::take(&mut pending.lock().unwrap().0);
        if !rest.is_empty() {
            write_index(rest)?;
        }
        Ok(())
    })?;
    Ok(indexes.into_inner().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_extents_are_durable_where_recorded_and_never_resent(
        deaths in prop::collection::vec(death(), 1..=3),
        sizes in prop::collection::vec(1usize..48, 1..40),
        extent_kib in 16u64..160,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Arc<Flaky>> = deaths
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let inner = LocalBackend::new(dir.path().join(format!("m{i}")));
                inner.create().unwrap();
                Arc::new(Flaky { inner, death: *d, writes: AtomicUsize::new(0) })
            })
            .collect();
        let extent = extent_kib << 10;
        let fo = FailoverBackend::new(
            members.iter().map(|m| Arc::clone(m) as Arc<dyn Backend>).collect(),
            FailoverOptions {
                extent_bytes: extent,
                extent_timeout: Duration::from_millis(250),
                writers: 2,
            },
        )
        .unwrap();
        let packs: Vec<(String, Bytes)> = sizes
            .iter()
            .enumerate()
            .map(|(i, kib)| (format!("{i:064x}"), Bytes::from(vec![i as u8; kib << 10])))
            .collect();
        let data: u64 = packs.iter().map(|p| p.1.len() as u64).sum();
        let max_pack = packs.iter().map(|p| p.1.len() as u64).max().unwrap();
        let result = upload(&fo, &packs, extent).and_then(|idx| {
            fo.put(FileKind::Snapshot, "snap", Bytes::from_static(b"snapshot"))?;
            Ok(idx)
        });
        let st = fo.status();
        match result {
            Err(e) => {
                // Only when every member has failed, and then it says why for each.
                prop_assert!(st.active.is_none(), "failed with a member left: {e}");
                prop_assert!(st.members.iter().all(|m| m.failed.is_some()));
                let msg = e.to_string();
                prop_assert!(msg.contains("every target failed"), "{msg}");
                for m in &members {
                    prop_assert!(msg.contains(&m.location()), "{msg}");
                }
            }
            Ok(indexes) => {
                let active = st.active.unwrap();
                // Every extent acknowledged exactly once; members only move forward.
                let acked: Vec<&str> = st.sections.iter().map(|s| s.index.as_str()).collect();
                let unique: HashSet<&str> = acked.iter().copied().collect();
                prop_assert_eq!(unique.len(), acked.len(), "an extent acknowledged twice");
                prop_assert_eq!(unique.len(), indexes.len());
                prop_assert!(st.sections.windows(2).all(|w| w[0].member <= w[1].member));
                let mut in_sections = 0;
                for s in &st.sections {
                    let m = &members[s.member].inner;
                    prop_assert!(m.exists(FileKind::Index, &s.index).unwrap());
                    let listed = &indexes[&s.index];
                    prop_assert_eq!(s.packs, listed.len());
                    for p in listed {
                        prop_assert!(
                            m.exists(FileKind::Pack, p).unwrap(),
                            "section {} on member {} lacks pack {}", s.index, s.member, p
                        );
                    }
                    in_sections += s.bytes;
                }
                prop_assert_eq!(in_sections, data, "every pack in exactly one section");
                // Bytes sent: data, index files and the snapshot, plus what a fail-over
                // sends again (at most one extent, one pack and one index file).
                let index_bytes: u64 = indexes
                    .values()
                    .map(|v| v.iter().map(|p| p.len() as u64 + 1).sum::<u64>())
                    .sum();
                let max_index = indexes
                    .values()
                    .map(|v| v.iter().map(|p| p.len() as u64 + 1).sum::<u64>())
                    .max()
                    .unwrap_or(0);
                let sent: u64 = st.members.iter().map(|m| m.sent).sum();
                let bound = data
                    + index_bytes
                    + 8 * st.members.len() as u64
                    + st.failovers as u64 * (extent + max_pack + max_index + 8);
                prop_assert!(sent <= bound, "sent {} > bound {} ({} fail-overs)", sent, bound, st.failovers);
                // The snapshot: on the active member; on each live holder of a section.
                prop_assert!(members[active].inner.exists(FileKind::Snapshot, "snap").unwrap());
                prop_assert!(st.members[active].snapshot);
                for s in &st.sections {
                    if st.members[s.member].failed.is_none() {
                        prop_assert!(st.members[s.member].snapshot);
                    }
                }
                // Failed members are exactly those before the active one that died.
                for (i, m) in st.members.iter().enumerate() {
                    prop_assert_eq!(m.failed.is_some(), i < active, "member {}: {:?}", i, m.failed);
                }
            }
        }
    }
}
