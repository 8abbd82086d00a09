#!/usr/bin/env bash
# bench/volume_incremental.sh: an incremental volume backup (changed-block tracking) against
# reading the whole volume again, and against restic backing up the same image again.
#
# A kura volume of SIZE_MB MiB is filled with random data through kura's NBD server (nbdcopy),
# then backed up once in full (the baseline for every tool). Then, RUNS times: DIRTY_PCT % of
# its 4 MiB granules get a 4 KiB write each through the server (qemu-io), the server stops,
# and four backups of the same state are timed (page cache dropped before each):
#   kura-incremental  kura volume backup NAME       (reads only the dirty granules)
#   kura-incr. (B)    the same to a second repository: the volume keeps one change-tracking
#                     chain per repository, so backing up to both in turn stays incremental
#                     to both
#   kura-full-read    kura backup --image RAW       (reads and hashes everything; dedup keeps
#                                                    the upload small)
#   restic            restic backup RAW             (what restic does: read everything again)
# Every repository is a local directory on the same disk.
#
# Usage: bash bench/volume_incremental.sh   (knobs: BENCH_DIR, SIZE_MB, DIRTY_PCT, RUNS, KURA_BIN)
# Output: median wall times and the ratios full-read / incremental (goal ≥ 20×) and
# restic / incremental, also in $BENCH_DIR/results.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-volinc}
SIZE_MB=${SIZE_MB:-2048}
DIRTY_PCT=${DIRTY_PCT:-1}
RUNS=${RUNS:-3}
export LC_ALL=C KURA_PASSWORD=kura-bench RESTIC_PASSWORD=kura-bench

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null
command -v restic >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q restic >/dev/null
command -v qemu-io >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >/dev/null
command -v nbdcopy >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnbd-bin >/dev/null
if [ -z "${KURA_BIN:-}" ]; then
    (cd "$REPO_ROOT" && cargo build --release -q -p kura-cli)
    KURA_BIN="$REPO_ROOT/target/release/kura"
fi

rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR"
export KURA_VOLUMES="$BENCH_DIR/volumes"
KREPO="$BENCH_DIR/kura-repo" KREPO2="$BENCH_DIR/kura-repo-b" RREPO="$BENCH_DIR/restic-repo"
RAW="$KURA_VOLUMES/vol.raw"
"$KURA_BIN" volume create vol --size "${SIZE_MB}M" >/dev/null
"$KURA_BIN" -r "$KREPO" init >/dev/null
"$KURA_BIN" -r "$KREPO2" init >/dev/null
restic init -q -r "$RREPO" >/dev/null

SERVER_PID= URL=
serve() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$KURA_BIN" -q volume serve --listen "127.0.0.1:$port" >/dev/null 2>&1 &
    SERVER_PID=$!
    URL="nbd://127.0.0.1:$port/vol"
    for _ in $(seq 1 100); do nbdinfo --size "$URL" >/dev/null 2>&1 && return; sleep 0.05; done
    log "the server did not come up"; exit 1
}
stop() { kill -INT "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=; }
trap '[ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true' EXIT

timed() { local t0 t1; sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
          t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

log "filling the volume ($SIZE_MB MiB of random data) through the NBD server"
head -c $((SIZE_MB << 20)) /dev/urandom >/dev/shm/kura-bench-volinc
serve
nbdcopy --flush /dev/shm/kura-bench-volinc "$URL"
stop
rm -f /dev/shm/kura-bench-volinc
log "baselines"
base_k=$(timed "$KURA_BIN" -q -r "$KREPO" volume backup vol)
timed "$KURA_BIN" -q -r "$KREPO2" volume backup vol >/dev/null
base_r=$(timed restic -q -r "$RREPO" backup "$RAW")
log "kura first (full) backup $base_k s, restic first backup $base_r s"

GRANULES=$((SIZE_MB / 4))
DIRTY=$(( GRANULES * DIRTY_PCT / 100 )); [ "$DIRTY" -ge 1 ] || DIRTY=1
declare -A times
for n in $(seq 1 "$RUNS"); do
    serve
    args=()
    for g in $(shuf -i 0-$((GRANULES - 1)) -n "$DIRTY"); do
        args+=(-c "write -P $((n + 16)) $((g * 4))M 4k")
    done
    qemu-io -f raw "$URL" "${args[@]}" >/dev/null
    stop
    out="$BENCH_DIR/inc-$n.json"
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(date +%s.%N)
    "$KURA_BIN" --json -r "$KREPO" volume backup vol >"$out"
    ti=$(echo "$(date +%s.%N) - $t0" | bc)
    [ "$(jq -r .incremental "$out")" = true ] || log "WARNING: run $n was not incremental: $(jq -r .full_reason "$out")"
    read_b=$(jq -r .summary.bytes_read "$out")
    out2="$BENCH_DIR/inc-b-$n.json"
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(date +%s.%N)
    "$KURA_BIN" --json -r "$KREPO2" volume backup vol >"$out2"
    ti2=$(echo "$(date +%s.%N) - $t0" | bc)
    [ "$(jq -r .incremental "$out2")" = true ] || log "WARNING: run $n to B was not incremental: $(jq -r .full_reason "$out2")"
    read_b2=$(jq -r .summary.bytes_read "$out2")
    tf=$(timed "$KURA_BIN" -q -r "$KREPO" backup --image "$RAW")
    tr=$(timed restic -q -r "$RREPO" backup "$RAW")
    log "run $n: $DIRTY dirty granules; kura incremental $ti s (read $read_b bytes), to B $ti2 s (read $read_b2 bytes), kura full read $tf s, restic $tr s"
    times[inc]="${times[inc]:-} $ti"; times[inc2]="${times[inc2]:-} $ti2"; times[full]="${times[full]:-} $tf"; times[restic]="${times[restic]:-} $tr"
done

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
inc=$(echo "${times[inc]}" | median); inc2=$(echo "${times[inc2]}" | median); full=$(echo "${times[full]}" | median); rs=$(echo "${times[restic]}" | median)
{
    echo "Command: bash bench/volume_incremental.sh (RUNS=$RUNS, SIZE_MB=$SIZE_MB, DIRTY_PCT=$DIRTY_PCT: $DIRTY of $GRANULES granules)"
    echo
    echo "| backup of the changed volume | median wall |"
    echo "|---|---:|"
    printf '| kura volume backup (incremental) | %.2f s |\n' "$inc"
    printf '| kura volume backup to a second repository (incremental: its own chain) | %.2f s |\n' "$inc2"
    printf '| kura backup --image (reads everything) | %.2f s |\n' "$full"
    printf '| restic backup (reads everything) | %.2f s |\n' "$rs"
    printf '| (first full backups: kura %.2f s, restic %.2f s) | |\n' "$base_k" "$base_r"
    echo
    printf 'full read / incremental: %.1f× (A), %.1f× (B) (goal ≥ 5× with two chains); restic / incremental: %.1f×\n' \
        "$(echo "$full / $inc" | bc -l)" "$(echo "$full / $inc2" | bc -l)" "$(echo "$rs / $inc" | bc -l)"
} | tee "$BENCH_DIR/results.md"
