//! Bounded fuzzing of every parser that reads repository bytes or user input: arbitrary and
//! mutated inputs must give a value or a typed error, never a panic, hang or huge allocation.
//! `cargo test` runs each for `KURA_FUZZ_CASES` cases (default 256); `scripts/fuzz.sh` runs
//! them (and the cargo-fuzz targets in `fuzz/`) much longer.
//!
//! Parsers covered here: key files (JSON), sealed files (magic + AEAD: config, index,
//! snapshot, lock, catalog record), blobs, the CBOR bodies of config, snapshot, lock and
//! catalog record, index bodies, and `forget` durations. Pack headers, trees and fixed image
//! indexes have their own property tests beside their code.

use proptest::prelude::*;

use crate::catalog_record::CatalogRecord;
use crate::crypto::{KdfParams, KeyFile, MasterKey};
use crate::format::{
    BlobType, MAGIC_CATALOG, MAGIC_CONFIG, MAGIC_INDEX, MAGIC_LOCK, MAGIC_SNAPSHOT, decode_blob,
    open_file,
};
use crate::id::Id;
use crate::index::IndexFile;
use crate::lock::LockInfo;
use crate::repo::{RepoConfig, from_cbor};
use crate::snapshot::Snapshot;

fn cases() -> u32 {
    std::env::var("KURA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn key() -> MasterKey {
    MasterKey::from_secret([7u8; 32])
}

/// Bytes that are often CBOR-shaped: a map or array header, then anything.
fn cbor_ish() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(vec![]),
            (0xa0u8..=0xbf).prop_map(|b| vec![b]),
            (0x80u8..=0x9f).prop_map(|b| vec![b])
        ],
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(mut h, t)| {
            h.extend(t);
            h
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn key_file_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = KeyFile::from_bytes(&bytes);
    }

    #[test]
    fn mutated_key_file_never_panics(pos in 0usize..600, val in any::<u8>(), cut in 0usize..600) {
        let params = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        let kf = KeyFile::create(&key(), b"pw", params).unwrap();
        let mut b = kf.to_bytes().unwrap();
        if pos < b.len() {
            b[pos] = val;
        }
        b.truncate(cut.max(1));
        // Parsing only: opening runs the KDF with whatever parameters the file states, which
        // the key file's own checks bound.
        let _ = KeyFile::from_bytes(&b);
    }

    #[test]
    fn sealed_files_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        which in 0usize..5,
        with_magic in any::<bool>(),
    ) {
        let magic = [MAGIC_CONFIG, MAGIC_INDEX, MAGIC_SNAPSHOT, MAGIC_LOCK, MAGIC_CATALOG][which];
        let input = if with_magic {
            let mut v = magic.to_vec();
            v.extend_from_slice(&bytes);
            v
        } else {
            bytes
        };
        let _ = open_file(&key(), magic, &input, "fuzz");
    }

    #[test]
    fn blobs_never_panic(
        stored in proptest::collection::vec(any::<u8>(), 0..300),
        raw_len in any::<u32>(),
        tree in any::<bool>(),
    ) {
        let ty = if tree { BlobType::Tree } else { BlobType::Data };
        let _ = decode_blob(&key(), ty, &Id::ZERO, stored, raw_len);
    }

    #[test]
    fn cbor_bodies_never_panic(bytes in cbor_ish()) {
        let _ = from_cbor::<RepoConfig>(&bytes, "config");
        let _ = from_cbor::<Snapshot>(&bytes, "snapshot");
        let _ = from_cbor::<LockInfo>(&bytes, "lock");
        let _ = from_cbor::<CatalogRecord>(&bytes, "catalog record");
    }

    #[test]
    fn index_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = IndexFile::decode(&bytes, "index");
    }
}

/// Declared lengths far beyond the input are refused without allocating them.
#[test]
fn huge_declared_lengths_are_refused() {
    // An index claiming 2^32-1 packs in 4 bytes.
    assert!(IndexFile::decode(&[0xff, 0xff, 0xff, 0xff], "index").is_err());
    // CBOR: a byte string and an array of 2^64-1 elements.
    let huge_bytes = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let huge_array = [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    for b in [&huge_bytes[..], &huge_array[..]] {
        assert!(from_cbor::<Snapshot>(b, "snapshot").is_err());
        assert!(from_cbor::<LockInfo>(b, "lock").is_err());
    }
}
