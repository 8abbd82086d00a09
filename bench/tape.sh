#!/usr/bin/env bash
# Tape, measured with the virtual library (its tapes are files on this machine's disk):
#
# 1. write throughput: `kura tape backup` of one snapshot of MB MiB of random data, next to
#    writing the same pack bytes into a local directory (`cp` of the repository's data/ and a
#    `sync`) — the ratio is the tape path's cost (reading packs, checking their ids, framing
#    and checksumming blocks, fdatasync per archive) over a plain durable copy;
# 2. time per tape change, without the changer's simulated load delay: the session's
#    change time / changes − LOAD_DELAY (unload, load, label read, set label written);
# 3. restore of one file from the middle of a 3+-tape set by file number, next to the
#    restore of the whole backup: time and bytes read from tape.
# Each measurement ROUNDS times; medians printed.
#
#   KURA_BIN=target/release/kura MB=512 ROUNDS=3 bash bench/tape.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KURA_BIN=${KURA_BIN:-target/release/kura}
MB=${MB:-512}
ROUNDS=${ROUNDS:-3}
LOAD_DELAY=${LOAD_DELAY:-0}
ARCHIVE=${ARCHIVE:-512MiB}
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-tape}
[ -x "$KURA_BIN" ] || { echo "no kura binary at $KURA_BIN (cargo build --release -p kura-cli)" >&2; exit 2; }
KURA_BIN=$(realpath "$KURA_BIN")
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR/src"
trap 'rm -rf "$BENCH_DIR"' EXIT
export KURA_PASSWORD=bench XDG_DATA_HOME="$BENCH_DIR/data" XDG_CONFIG_HOME="$BENCH_DIR/cfg"
export KURA_REPOSITORY="$BENCH_DIR/repo"
unset KURA_PASSWORD_FILE KURA_CONFIG KURA_CATALOG
k() { "$KURA_BIN" -q "$@"; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

files=$((MB / 16))
for i in $(seq 1 "$files"); do head -c 16M /dev/urandom >"$BENCH_DIR/src/f$i"; done
k init --kdf-memory-kib 64 >/dev/null
k backup "$BENCH_DIR/src" >/dev/null
# Tapes of a third of the data each: the backup spans 3+ tapes.
cap=$((MB / 3 + 8))
k library create "$BENCH_DIR/lib" --drives 2 --slots 16 --capacity "${cap}MiB" \
    --early-warning 8MiB --load-delay "${LOAD_DELAY}s" --tapes T001..T012 >/dev/null
k resource add target lib "vlib://$BENCH_DIR/lib" --sequential >/dev/null
k media pool add p --append new-set >/dev/null
k media label lib --pool p >/dev/null 2>&1

tape_t=(); cp_t=(); change=(); one_t=(); all_t=(); one_b=(); all_b=()
for r in $(seq 1 "$ROUNDS"); do
    # Each round a new set on tapes written over: relabel every tape.
    rm -f "$BENCH_DIR/data/kura/catalog.db"
    k resource add target lib "vlib://$BENCH_DIR/lib" --sequential >/dev/null
    k media pool add p --append new-set >/dev/null
    k media label lib --pool p --force >/dev/null 2>&1
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(now)
    out=$("$KURA_BIN" --json tape backup --library lib --pool p --archive-size "$ARCHIVE")
    t1=$(now)
    tape_t+=("$(echo "$t1 - $t0" | bc)")
    change+=("$(echo "$out" | python3 -c "
import json,sys
l=json.load(sys.stdin)['libraries'][0]['stats']
ct=l['change_time']['secs']+l['change_time']['nanos']/1e9
print((ct-l['changes']*$LOAD_DELAY)/l['changes'])")")
    ntapes=$(echo "$out" | python3 -c "import json,sys; print(len(json.load(sys.stdin)['libraries'][0]['stats']['tapes']))")
    rm -rf "$BENCH_DIR/copy"; sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(now); cp -r "$BENCH_DIR/repo/data" "$BENCH_DIR/copy"; sync; t1=$(now)
    cp_t+=("$(echo "$t1 - $t0" | bc)")
    mid=$((files / 2))
    rm -rf "$BENCH_DIR/r1" "$BENCH_DIR/r2"
    t0=$(now)
    o1=$(k tape restore latest --target "$BENCH_DIR/r1" --include "$BENCH_DIR/src/f$mid" 2>&1 || true)
    t1=$(now)
    "$KURA_BIN" tape restore latest --target "$BENCH_DIR/r2" >"$BENCH_DIR/all.txt" 2>&1
    t2=$(now)
    cmp "$BENCH_DIR/r1$BENCH_DIR/src/f$mid" "$BENCH_DIR/src/f$mid"
    one_t+=("$(echo "$t1 - $t0" | bc)"); all_t+=("$(echo "$t2 - $t1" | bc)")
    one_b+=("$("$KURA_BIN" tape restore latest --target "$BENCH_DIR/r3" --include "$BENCH_DIR/src/f$mid" 2>&1 | sed -n 's/^read \([0-9.]*\) \(MiB\|GiB\).*/\1 \2/p' | awk '{print ($2=="GiB") ? $1*1024 : $1}')")
    all_b+=("$(sed -n 's/^read \([0-9.]*\) \(MiB\|GiB\).*/\1 \2/p' "$BENCH_DIR/all.txt" | awk '{print ($2=="GiB") ? $1*1024 : $1}')")
    rm -rf "$BENCH_DIR/r1" "$BENCH_DIR/r2" "$BENCH_DIR/r3"
    echo "round $r: $ntapes tapes; tape backup ${tape_t[-1]} s, cp+sync ${cp_t[-1]} s; change ${change[-1]} s; one file ${one_t[-1]} s (${one_b[-1]} MiB), all ${all_t[-1]} s (${all_b[-1]} MiB)"
done
tb=$(printf '%s\n' "${tape_t[@]}" | median); cb=$(printf '%s\n' "${cp_t[@]}" | median)
echo "data: $MB MiB in $files files; tapes of ${cap} MiB; $ROUNDS rounds, medians:"
echo "  tape backup   $tb s = $(echo "$MB / $tb" | bc) MiB/s"
echo "  cp + sync     $cb s = $(echo "$MB / $cb" | bc) MiB/s"
echo "  throughput ratio tape / directory: $(echo "scale=2; $cb / $tb" | bc)"
echo "  per tape change, without the ${LOAD_DELAY} s load delay: $(printf '%s\n' "${change[@]}" | median) s"
echo "  one file from the middle: $(printf '%s\n' "${one_t[@]}" | median) s, $(printf '%s\n' "${one_b[@]}" | median) MiB read"
echo "  whole backup:             $(printf '%s\n' "${all_t[@]}" | median) s, $(printf '%s\n' "${all_b[@]}" | median) MiB read"
