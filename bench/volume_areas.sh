#!/usr/bin/env bash
# bench/volume_areas.sh: host write throughput over NBD to the primary of a mirror pair,
# duplex against split by areas (inside a split area: the primary only, after a durable
# difference bit for each granule's first write; outside: both volumes, as duplex).
#
# A 512 MiB pair is served by `kura volume serve`; each round is one qemu-io connection
# writing 128 × 1 MiB (flushed at exit), ROUNDS rounds per case.
#
# Usage: bash bench/volume_areas.sh   (knobs: ROUNDS, KURA_BIN — default the release build)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KURA_BIN="${KURA_BIN:-$REPO_ROOT/target/release/kura}"
[ -x "$KURA_BIN" ] || (cd "$REPO_ROOT" && cargo build --release -p kura-cli)
ROUNDS="${ROUNDS:-3}"
D=$(mktemp -d /tmp/kura-bench-areas.XXXXXX)
trap 'kill -INT "${SP:-0}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"' EXIT
export KURA_VOLUMES="$D/vols" XDG_CONFIG_HOME="$D/no-config"
K="$KURA_BIN"
$K volume create a --size 512M >/dev/null
$K volume create b --size 512M >/dev/null
$K pair create a b >/dev/null
$K volume serve --listen 127.0.0.1:0 >"$D/url" 2>/dev/null &
SP=$!
for _ in $(seq 50); do [ -s "$D/url" ] && break; sleep 0.1; done
URL="$(head -1 "$D/url")/a"
round() { # label base pattern
    local args=() i t0 t1
    for i in $(seq 0 127); do args+=(-c "write -P $3 $(($2 + i * 1048576)) 1M"); done
    t0=$(date +%s.%N)
    qemu-io -f raw "$URL" "${args[@]}" >/dev/null
    t1=$(date +%s.%N)
    printf "%-44s %6.1f MiB/s\n" "$1" "$(echo "128 / ($t1 - $t0)" | bc -l)"
}
for r in $(seq "$ROUNDS"); do round "duplex [0,128M), round $r" 0 $((10 + r)); done
$K pair split a --area 0:128M >/dev/null
$K pair split a --area 256M:128M >/dev/null
for r in $(seq "$ROUNDS"); do
    round "inside split area [0,128M), round $r" 0 $((20 + r))
    round "outside the areas [128M,256M), round $r" $((128 << 20)) $((30 + r))
done
