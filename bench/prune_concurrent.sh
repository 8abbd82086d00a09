#!/usr/bin/env bash
# bench/prune_concurrent.sh: backup throughput while prunes run on the same repository,
# against the same backup with nothing beside it.
#
# One repository (a directory). Before each measured backup an old generation of GARBAGE_MB
# MiB is backed up and forgotten, so a prune has real work (condemning, then deleting what
# the previous prune condemned). Then a backup of DATA_MB MiB of fresh random data runs
#   alone      — nothing else touches the repository;
#   concurrent — `kura prune --keep-condemned 0` runs in a loop for as long as it lasts.
# RUNS times each, alternating. Prints the median wall times and the ratio
# (concurrent throughput / alone throughput).
#
# Usage: bash bench/prune_concurrent.sh   (knobs: BENCH_DIR, DATA_MB, GARBAGE_MB, RUNS, KURA_BIN)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-prune}
DATA_MB=${DATA_MB:-256}
GARBAGE_MB=${GARBAGE_MB:-128}
RUNS=${RUNS:-3}
KURA_BIN=${KURA_BIN:-$REPO_ROOT/target/release/kura}
export KURA_PASSWORD=kura-bench LC_ALL=C
export XDG_CONFIG_HOME=$BENCH_DIR/cfg XDG_DATA_HOME=$BENCH_DIR/xdg

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
[ -x "$KURA_BIN" ] || { echo "no kura binary at $KURA_BIN (cargo build --release -p kura-cli)" >&2; exit 2; }

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
REPO=$BENCH_DIR/repo
export KURA_REPOSITORY=$REPO
"$KURA_BIN" -q init --kdf-memory-kib 1024 --pack-size-mib 4 >/dev/null

gen() { # gen DIR MB: fresh random files of 8 MiB
    rm -rf "$1"; mkdir -p "$1"
    local n=$(( $2 / 8 )) i
    for ((i = 0; i < n; i++)); do
        head -c $((8 << 20)) /dev/urandom >"$1/f$i"
    done
}

garbage() { # back up GARBAGE_MB of fresh data and forget it: work for prune
    gen "$BENCH_DIR/garbage" "$GARBAGE_MB"
    local id
    id=$("$KURA_BIN" -q --json backup --host garbage "$BENCH_DIR/garbage" |
        grep -o '"snapshot_id": *"[0-9a-f]*"' | grep -o '[0-9a-f]\{64\}')
    "$KURA_BIN" -q forget "$id" >/dev/null
}

now() { date +%s.%N; }
declare -a ALONE CONC PRUNES
for ((r = 1; r <= RUNS; r++)); do
    for mode in alone concurrent; do
        garbage
        gen "$BENCH_DIR/data" "$DATA_MB"
        sync
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
        prunes=0
        if [ "$mode" = concurrent ]; then
            (
                n=0
                while [ ! -e "$BENCH_DIR/stop" ]; do
                    "$KURA_BIN" -q prune --keep-condemned 0 >/dev/null
                    n=$((n + 1))
                done
                echo "$n" >"$BENCH_DIR/prunes"
            ) &
            loop=$!
        fi
        t0=$(now)
        "$KURA_BIN" -q backup --host data "$BENCH_DIR/data" >/dev/null
        t1=$(now)
        if [ "$mode" = concurrent ]; then
            touch "$BENCH_DIR/stop"; wait "$loop"; rm -f "$BENCH_DIR/stop"
            prunes=$(cat "$BENCH_DIR/prunes")
        fi
        secs=$(echo "$t1 - $t0" | bc -l)
        log "run $r $mode: ${secs}s ($prunes prunes beside it)"
        if [ "$mode" = alone ]; then ALONE+=("$secs"); else CONC+=("$secs"); PRUNES+=("$prunes"); fi
    done
done
"$KURA_BIN" -q check --read-data >/dev/null && log "check --read-data: clean"

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
a=$(median "${ALONE[@]}"); c=$(median "${CONC[@]}"); p=$(median "${PRUNES[@]}")
printf '| backup of %s MiB | median wall | throughput |\n|---|---:|---:|\n' "$DATA_MB"
printf '| alone | %.2f s | %.0f MiB/s |\n' "$a" "$(echo "$DATA_MB / $a" | bc -l)"
printf '| beside prunes (median %s prunes) | %.2f s | %.0f MiB/s |\n' "$p" "$c" "$(echo "$DATA_MB / $c" | bc -l)"
printf 'ratio (beside prunes / alone throughput): %.2f\n' "$(echo "$a / $c" | bc -l)"
