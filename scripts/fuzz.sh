#!/usr/bin/env bash
# Longer fuzzing of every parser reachable from input (target URLs, durations and sizes, the
# TOML config, key files, sealed repository files, blobs, CBOR bodies, index bodies, pack
# headers, trees, fixed image indexes, volume metadata and records, schedules and time frames).
#
# The same property tests run in `cargo test` with a few hundred cases each; here each gets
# KURA_FUZZ_CASES cases (default 200000). Usage: scripts/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
export KURA_FUZZ_CASES="${1:-${KURA_FUZZ_CASES:-200000}}"
export PROPTEST_CASES="$KURA_FUZZ_CASES"
echo "fuzzing with $KURA_FUZZ_CASES cases per parser"
cargo test --locked -p kura-backend --lib target::tests
cargo test --locked -p kura-repo --lib -- fuzz:: pack::tests tree::tests image::tests
cargo test --locked -p kura-volume --lib store::tests::damaged_volume_files_never_panic
cargo test --locked -p kura-cli --bin kura config::tests
cargo test --locked -p kura-schedule --test properties -- never_panic
