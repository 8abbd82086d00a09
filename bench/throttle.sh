#!/usr/bin/env bash
# The cost of traffic control when it does not limit: a backup and a restore of MB MiB of
# random data into a local repository, with no rule, with a [[traffic]] rule whose time frame
# is not now (the Throttled wrapper in place, its limiter unlimited), and with a rule in force
# at a rate far above the disk's (every pack charged to the bucket, none waits). Medians of
# RUNS runs, the variants rotated. Works in tmpfs (BENCH_DIR) so the disk is not measured.
#
#   KURA_BIN=target/debug/kura MB=256 RUNS=3 bash bench/throttle.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KURA_BIN=${KURA_BIN:-target/debug/kura}
MB=${MB:-256}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/dev/shm/kura-bench-throttle}
[ -x "$KURA_BIN" ] || { echo "no kura binary at $KURA_BIN (cargo build -p kura-cli)" >&2; exit 2; }

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR/src"
trap 'rm -rf "$BENCH_DIR"' EXIT
for i in $(seq 1 $((MB / 16))); do
    head -c $((16 << 20)) /dev/urandom >"$BENCH_DIR/src/f$i"
done
export KURA_PASSWORD=bench XDG_CONFIG_HOME="$BENCH_DIR/noconf"
later=$(date -u -d '+2 hours' +%H:00)-$(date -u -d '+3 hours' +%H:00)
printf '' >"$BENCH_DIR/none.toml"
printf '[[traffic]]\nupload = "1MiB/s"\ndownload = "1MiB/s"\ntimeframe = "%s UTC"\n' \
    "$later" >"$BENCH_DIR/inactive.toml"
printf '[[traffic]]\nupload = "64GiB/s"\ndownload = "64GiB/s"\n' >"$BENCH_DIR/fast.toml"

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

variants=(none inactive fast)
for run in $(seq 1 "$RUNS"); do
    for k in 0 1 2; do
        v=${variants[$(((k + run) % 3))]}
        repo="$BENCH_DIR/repo-$v"
        rm -rf "$repo" "$BENCH_DIR/restore"
        "$KURA_BIN" -q -r "$repo" init --kdf-memory-kib 64 >/dev/null
        b=$(secs "$KURA_BIN" -q -r "$repo" --config "$BENCH_DIR/$v.toml" backup "$BENCH_DIR/src")
        r=$(secs "$KURA_BIN" -q -r "$repo" --config "$BENCH_DIR/$v.toml" restore latest \
            --target "$BENCH_DIR/restore")
        echo "$v backup $b" >>"$BENCH_DIR/raw"
        echo "$v restore $r" >>"$BENCH_DIR/raw"
        echo "run $run $v: backup $b s, restore $r s" >&2
    done
done
printf '| variant | backup %s MiB (s) | restore (s) |\n| --- | --- | --- |\n' "$MB"
for v in "${variants[@]}"; do
    b=$(awk -v v="$v" '$1==v && $2=="backup" {print $3}' "$BENCH_DIR/raw" | median)
    r=$(awk -v v="$v" '$1==v && $2=="restore" {print $3}' "$BENCH_DIR/raw" | median)
    printf '| %s | %.2f | %.2f |\n' "$v" "$b" "$r"
done
