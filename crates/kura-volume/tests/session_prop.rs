//! Copy-before-write sessions under concurrency: writer threads change a served volume
//! (writes, trims, zeroing) while a reader reads the session's frozen image in random order.
//! Whatever the interleaving, every byte the reader gets is the byte at the freeze; blocks
//! the backup does not need are never copied; the working volume goes back to the pool
//! empty.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use kura_nbd::Export;
use kura_repo::backup::ImageSource;
use kura_volume::{SessionSource, VolumeStore};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const GRANULE: u64 = 4 * MIB;
const SIZE: u64 = 16 * MIB;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let v = self.next().to_le_bytes();
        (0..n).map(|i| v[i % 8] ^ (i / 8) as u8).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_session_reads_the_image_at_the_freeze_whatever_the_writers_do(
        seed in any::<u64>(),
        writers in 1usize..4,
        ops in 1usize..150,
        needed_mask in 1u8..16,
        all_needed in any::<bool>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let st = VolumeStore::open(d.path()).unwrap();
        st.create("v", SIZE).unwrap();
        st.create_with("pool", SIZE, true).unwrap();
        let export = st.open_export("v").unwrap();
        // Content at the freeze: random pieces, holes elsewhere.
        let mut r = Rng(seed | 1);
        for _ in 0..12 {
            let len = (1 + r.below(64)) * 4096;
            let off = r.below((SIZE - len) / 4096) * 4096;
            export.write_at(off, &r.bytes(len as usize), false).unwrap();
        }
        let mut frozen_image = vec![0u8; SIZE as usize];
        export.read_at(0, &mut frozen_image).unwrap();

        let needed: Option<Vec<(u64, u64)>> = (!all_needed).then(|| {
            (0..4u64)
                .filter(|g| needed_mask & (1 << g) != 0)
                .map(|g| (g * GRANULE, GRANULE))
                .collect()
        });
        let work = st.claim_work(SIZE).unwrap();
        let repo = kura_repo::Id([1; 32]);
        let (session, _frozen) = export.begin_session(work, repo, |_| Ok(needed.clone())).unwrap();
        let volume: Arc<dyn Export> = export.clone();
        let src = SessionSource::new(volume, Arc::clone(&session));
        let granules: Vec<u64> = match &needed {
            None => (0..4).collect(),
            Some(n) => n.iter().map(|(o, _)| o / GRANULE).collect(),
        };

        let mismatches = std::thread::scope(|s| {
            for w in 0..writers {
                let export = &export;
                s.spawn(move || {
                    let mut r = Rng((seed ^ ((w as u64 + 1) * 0x9E37)) | 1);
                    for _ in 0..ops {
                        let len = (1 + r.below(96)) * 4096;
                        let off = r.below((SIZE - len) / 4096 + 1) * 4096;
                        match r.below(8) {
                            0 => export.trim(off, len).unwrap(),
                            1 => export.write_zeroes(off, len, true, false).unwrap(),
                            _ => export.write_at(off, &r.bytes(len as usize), false).unwrap(),
                        }
                    }
                });
            }
            let reader = s.spawn(|| {
                let mut r = Rng(seed.rotate_left(7) | 1);
                let mut order = granules.clone();
                for i in (1..order.len()).rev() {
                    order.swap(i, r.below(i as u64 + 1) as usize);
                }
                let mut bad = Vec::new();
                for g in order {
                    // Read a granule in pieces of random size, as readers of any size do.
                    let mut at = g * GRANULE;
                    while at < (g + 1) * GRANULE {
                        let n = ((1 + r.below(16)) * 64 * 1024).min((g + 1) * GRANULE - at);
                        let mut buf = vec![0u8; n as usize];
                        src.read_at(at, &mut buf).unwrap();
                        if buf[..] != frozen_image[at as usize..(at + n) as usize] {
                            bad.push(at);
                        }
                        at += n;
                    }
                }
                bad
            });
            reader.join().unwrap()
        });
        prop_assert!(mismatches.is_empty(), "frozen image differs at {:?}", mismatches);

        // Blocks outside the needed granules were never copied, and reading them is refused.
        let stats = session.stats();
        prop_assert_eq!(stats.saved + stats.copied, granules.len() as u64 * 64);
        prop_assert_eq!(stats.not_needed, (4 - granules.len() as u64) * 64);
        if let Some(g) = (0..4u64).find(|g| !granules.contains(g)) {
            let mut b = vec![0u8; 4096];
            prop_assert!(src.read_at(g * GRANULE, &mut b).is_err());
        }
        // The session ends; its working volume returns to the pool, empty.
        export.end_session().unwrap();
        drop(src);
        drop(session);
        let again = st.claim_work(SIZE).unwrap();
        prop_assert_eq!(again.name.as_str(), "pool");
        let md = std::fs::metadata(d.path().join("pool.raw")).unwrap();
        prop_assert_eq!(md.blocks(), 0, "the working volume came back with data in it");
    }
}
