//! Backup chains under random histories: host writes, backups to repository A or B (some
//! failing, some with writes while they run), forgotten snapshots, clean and unclean closes,
//! and changes to the raw file while no engine holds it. An oracle keeps, for each chain, the
//! granules written since that chain's last successful backup and whether its base snapshot
//! still exists. Every backup must then read a superset of what the oracle says changed —
//! exactly that set when it is incremental — and be incremental exactly when the chain has
//! seen every change since a backup whose snapshot is still there.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use kura_repo::Id;
use kura_volume::chains::{ChainSet, Identity, incremental_reads};
use proptest::prelude::*;

const GRANULE: u64 = 4 << 20;
const GRANULES: u64 = 16;
const SIZE: u64 = GRANULES * GRANULE;

#[derive(Debug, Clone)]
enum Op {
    /// A host write covering granules `first..first + n`.
    Write {
        first: u64,
        n: u64,
    },
    /// A backup to chain `chain` (0: A, 1: B); `during`: a host write while it runs.
    Backup {
        chain: usize,
        fail: bool,
        during: Option<u64>,
    },
    /// Forget (and prune) snapshot `which` (counted from the newest) of chain `chain`'s
    /// repository.
    Forget {
        chain: usize,
        which: usize,
    },
    CleanReopen,
    /// The server dies: no clean close.
    UncleanReopen,
    /// Closed cleanly, then the raw file is written by someone else, then reopened.
    OutsideChange {
        granule: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..GRANULES, 1..4u64).prop_map(|(first, n)| Op::Write { first, n }),
        4 => (0..2usize, prop::bool::weighted(0.2), prop::option::of(0..GRANULES))
            .prop_map(|(chain, fail, during)| Op::Backup { chain, fail, during }),
        1 => (0..2usize, 0..3usize).prop_map(|(chain, which)| Op::Forget { chain, which }),
        1 => Just(Op::CleanReopen),
        1 => Just(Op::UncleanReopen),
        1 => (0..GRANULES).prop_map(|granule| Op::OutsideChange { granule }),
    ]
}

/// What the oracle knows of one chain.
#[derive(Debug, Default, Clone)]
struct Model {
    /// Snapshots in the chain's repository.
    snaps: Vec<Id>,
    /// The snapshot of the last successful backup.
    base: Option<Id>,
    /// Granules written since then.
    written: BTreeSet<u64>,
    /// Every change since then was seen by a live, cleanly handed-over chain.
    complete: bool,
}

fn granules(runs: &[(u64, u64)]) -> BTreeSet<u64> {
    runs.iter()
        .flat_map(|&(o, l)| o / GRANULE..(o + l).div_ceil(GRANULE))
        .collect()
}

fn write(models: &mut [Model], first: u64, n: u64) {
    for m in models {
        m.written.extend(first..(first + n).min(GRANULES));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("KURA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn every_backup_reads_at_least_what_changed_since_its_chains_last_backup(
        ops in prop::collection::vec(op(), 1..32),
    ) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v.chains");
        let raw_path = d.path().join("v.raw");
        let raw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw_path)
            .unwrap();
        raw.set_len(SIZE).unwrap();
        let ident = || Identity::of(&raw.metadata().unwrap());
        let repos = [Id([0xa; 32]), Id([0xb; 32])];
        let mut models = vec![Model::default(), Model::default()];
        let mut set = ChainSet::open(&path, SIZE, &ident()).unwrap();
        let mut next_snap = 1u8;
        for op in ops {
            match op {
                Op::Write { first, n } => {
                    // The engine's own write, marked first.
                    set.mark(first * GRANULE, n * GRANULE - 1);
                    raw.write_all_at(b"w", first * GRANULE).unwrap();
                    write(&mut models, first, n);
                }
                Op::Backup { chain, fail, during } => {
                    let m = &models[chain];
                    let frozen = set.freeze(repos[chain]);
                    prop_assert_eq!(frozen.base, m.base);
                    let exists = frozen
                        .base
                        .filter(|b| m.snaps.contains(b))
                        .map(|_| ())
                        .ok_or_else(|| "not found".to_string());
                    let reads = incremental_reads(&frozen, exists);
                    let should = m.complete && m.base.is_some_and(|b| m.snaps.contains(&b));
                    prop_assert_eq!(
                        reads.is_ok(), should,
                        "chain {}: {:?}; model {:?}", chain, reads, m
                    );
                    if let Ok(runs) = &reads {
                        // Incremental: exactly the granules written since its last backup.
                        prop_assert_eq!(&granules(runs), &m.written, "chain {}", chain);
                    }
                    // A full read covers everything: nothing to check.
                    let mut now_written = BTreeSet::new();
                    if let Some(g) = during {
                        set.mark(g * GRANULE, 1);
                        raw.write_all_at(b"d", g * GRANULE).unwrap();
                        now_written.insert(g);
                    }
                    for (i, other) in models.iter_mut().enumerate() {
                        if i != chain {
                            other.written.extend(&now_written);
                        }
                    }
                    let m = &mut models[chain];
                    if fail {
                        set.thaw_failed(frozen).unwrap();
                        m.written.extend(&now_written);
                    } else {
                        let snap = Id([next_snap; 32]);
                        next_snap += 1;
                        set.thaw_done(&frozen, snap).unwrap();
                        m.snaps.push(snap);
                        m.base = Some(snap);
                        m.written = now_written;
                        m.complete = true;
                    }
                }
                Op::Forget { chain, which } => {
                    let m = &mut models[chain];
                    if !m.snaps.is_empty() {
                        let i = m.snaps.len() - 1 - which.min(m.snaps.len() - 1);
                        m.snaps.remove(i);
                    }
                }
                Op::CleanReopen => {
                    set.close(&ident()).unwrap();
                    drop(set);
                    set = ChainSet::open(&path, SIZE, &ident()).unwrap();
                    prop_assert!(set.untrusted_at_open().is_none());
                }
                Op::UncleanReopen => {
                    set.persist().unwrap();
                    drop(set);
                    set = ChainSet::open(&path, SIZE, &ident()).unwrap();
                    prop_assert!(set.untrusted_at_open().is_some());
                    models.iter_mut().for_each(|m| m.complete = false);
                }
                Op::OutsideChange { granule } => {
                    set.close(&ident()).unwrap();
                    drop(set);
                    raw.write_all_at(b"o", granule * GRANULE).unwrap();
                    write(&mut models, granule, 1);
                    set = ChainSet::open(&path, SIZE, &ident()).unwrap();
                    let why = set.untrusted_at_open().unwrap_or_default().to_string();
                    prop_assert!(why.contains("no volume server held it"), "{}", why);
                    models.iter_mut().for_each(|m| m.complete = false);
                }
            }
        }
    }
}
