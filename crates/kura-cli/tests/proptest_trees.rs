//! Random trees (random shapes, names and contents around chunk-size edges) survive
//! backup → restore exactly, including across an incremental backup with random edits.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Item {
    File {
        name: Vec<u8>,
        len: usize,
        seed: u64,
        zeros: bool,
    },
    Dir {
        name: Vec<u8>,
        children: Vec<Item>,
    },
    Link {
        name: Vec<u8>,
        target: Vec<u8>,
    },
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b'Z'),
            Just(b'.'),
            Just(b' '),
            Just(0xe9u8),
            Just(b'-'),
            1u8..=255
        ],
        1..12,
    )
    .prop_filter("valid name", |n| {
        n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
    })
}

fn item() -> impl Strategy<Value = Item> {
    // Sizes around the small test chunker's min/avg/max (1 KiB / 4 KiB / 16 KiB).
    let len = prop_oneof![
        Just(0usize),
        1usize..100,
        1000usize..1100,
        4000usize..4200,
        16_000usize..17_000,
        30_000usize..70_000
    ];
    let leaf = prop_oneof![
        (name(), len, any::<u64>(), any::<bool>()).prop_map(|(name, len, seed, zeros)| {
            Item::File {
                name,
                len,
                seed,
                zeros,
            }
        }),
        (name(), proptest::collection::vec(1u8..=255, 1..30))
            .prop_map(|(name, target)| Item::Link { name, target }),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        (name(), proptest::collection::vec(inner, 0..6))
            .prop_map(|(name, children)| Item::Dir { name, children })
    })
}

fn materialise(dir: &Path, items: &[Item]) {
    use std::os::unix::ffi::OsStrExt;
    fs::create_dir_all(dir).unwrap();
    for it in items {
        let (n, path) = match it {
            Item::File { name, .. } | Item::Dir { name, .. } | Item::Link { name, .. } => {
                (name, dir.join(std::ffi::OsStr::from_bytes(name)))
            }
        };
        let _ = n;
        if fs::symlink_metadata(&path).is_ok() {
            continue; // duplicate name generated; keep the first
        }
        match it {
            Item::File {
                len, seed, zeros, ..
            } => {
                let mut data = pseudo_random(*len, *seed);
                if *zeros {
                    // A zero run in the middle (sparse-ish content).
                    let (a, b) = (len / 4, len / 2);
                    data[a..b].fill(0);
                }
                fs::write(&path, data).unwrap();
            }
            Item::Dir { children, .. } => materialise(&path, children),
            Item::Link { target, .. } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).unwrap()
            }
        }
    }
}

/// One case: materialise, back up, restore and compare; edit, back up again, compare.
fn random_tree_case(store: Store, items: &[Item], edit_seed: u64) {
    let repo = TestRepo::on(
        store,
        &[
            "--chunk-min",
            "1024",
            "--chunk-avg",
            "4096",
            "--chunk-max",
            "16384",
        ],
    );
    let src = repo.dir.path().join("src");
    materialise(&src, items);
    repo.backup(&[src.to_str().unwrap()]);
    let t1 = repo.dir.path().join("t1");
    repo.ok(&["restore", "latest", "--target", t1.to_str().unwrap()]);
    assert_same_tree(&src, &t1.join(src.strip_prefix("/").unwrap()));

    // Random edits: rewrite some files, then an incremental backup must match again.
    let files: Vec<_> = walkdir(&src)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .collect();
    for (i, f) in files.iter().enumerate() {
        if (edit_seed >> (i % 64)) & 1 == 1 {
            let mut d = fs::read(f).unwrap();
            d.extend_from_slice(&pseudo_random(100 + i, edit_seed ^ i as u64));
            fs::write(f, d).unwrap();
        }
    }
    repo.backup(&[src.to_str().unwrap()]);
    let t2 = repo.dir.path().join("t2");
    repo.ok(&["restore", "latest", "--target", t2.to_str().unwrap()]);
    assert_same_tree(&src, &t2.join(src.strip_prefix("/").unwrap()));
    repo.ok(&["check", "--read-data"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_local(items in proptest::collection::vec(item(), 1..8), edit_seed in any::<u64>()) {
        random_tree_case(Store::Local, &items, edit_seed);
    }

    #[test]
    fn random_trees_round_trip_s3(items in proptest::collection::vec(item(), 1..8), edit_seed in any::<u64>()) {
        random_tree_case(Store::S3, &items, edit_seed);
    }
}
