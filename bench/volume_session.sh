#!/usr/bin/env bash
# bench/volume_session.sh: host write throughput to a served kura volume while a background
# backup of it runs (a copy-before-write session) against the same writes with no backup.
#
# A kura volume of SIZE_MB MiB holding random data is served by `kura volume serve`; a
# working volume of the same size is in the pool; the repository is local. Each run:
#   idle     nbdcopy --flush NEW nbd://…/vol                    (no backup running)
#   session  kura volume backup vol --freeze session  (accepted at once; copies in the
#            background), then the same nbdcopy while the backup runs
# in alternating order, RUNS times. Before each run the volume gets back its old content, so
# in the session case every host write lands on a block the backup still needs (the worst
# case: each first write to a 64 KiB block copies it to the working volume first). The
# backup is a full read each time (every granule is dirty).
#
# WRITE_MB (default SIZE_MB) sets how much the host writes (from offset 0): less than the
# volume is the common case where the backup also reads blocks nobody overwrites.
#
# Usage: bash bench/volume_session.sh   (knobs: BENCH_DIR, SIZE_MB, WRITE_MB, RUNS, KURA_BIN)
# Output: median seconds and MiB/s per case and the ratio session / idle (goal ≥ 0.75×),
# also in $BENCH_DIR/results.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-session}
SIZE_MB=${SIZE_MB:-2048}
RUNS=${RUNS:-3}
WRITE_MB=${WRITE_MB:-$SIZE_MB}
export LC_ALL=C

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v nbdcopy >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnbd-bin >/dev/null
if [ -z "${KURA_BIN:-}" ]; then
    (cd "$REPO_ROOT" && cargo build --release -q -p kura-cli)
    KURA_BIN="$REPO_ROOT/target/release/kura"
fi

rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR"
export KURA_VOLUMES="$BENCH_DIR/volumes" KURA_PASSWORD=bench
REPO="$BENCH_DIR/repo"
"$KURA_BIN" -q -r "$REPO" init --kdf-memory-kib 64 >/dev/null
"$KURA_BIN" volume create vol --size "${SIZE_MB}M" >/dev/null
"$KURA_BIN" volume create pool0 --size "${SIZE_MB}M" --work >/dev/null
OLD=/dev/shm/kura-bench-session-old
NEW=/dev/shm/kura-bench-session-new
head -c $((SIZE_MB << 20)) /dev/urandom >"$OLD"
head -c $((WRITE_MB << 20)) /dev/urandom >"$NEW"
SERVER_PID=
cleanup() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; rm -f "$OLD" "$NEW"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KURA_BIN" -q volume serve --listen "127.0.0.1:$port" >/dev/null 2>"$BENCH_DIR/serve.log" &
SERVER_PID=$!
URL="nbd://127.0.0.1:$port/vol"
for _ in $(seq 1 100); do nbdinfo --size "$URL" >/dev/null 2>&1 && break; sleep 0.05; done

timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

wait_job() { # $1 job id → prints the final job JSON
    while :; do
        j=$("$KURA_BIN" --json volume jobs "$1")
        if ! grep -q '"state": "running"' <<<"$j"; then echo "$j"; return; fi
        sleep 0.2
    done
}

declare -A times
copied=()
backup_secs=()
CASES=(idle session)
for n in $(seq 1 "$RUNS"); do
    for i in 0 1; do
        c=${CASES[$(( (i + n) % 2 ))]}
        nbdcopy --flush "$OLD" "$URL"
        sync
        case $c in
        idle)
            t=$(timed nbdcopy --flush "$NEW" "$URL") ;;
        session)
            acc=$("$KURA_BIN" --json -r "$REPO" volume backup vol --freeze session)
            id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["id"])' <<<"$acc")
            t=$(timed nbdcopy --flush "$NEW" "$URL")
            j=$(wait_job "$id")
            read -r state cb secs < <(python3 -c '
import json, sys, datetime
j = json.load(sys.stdin)[0]
p = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
print(j["state"], j["session"]["copied_bytes"], (p(j["finished"]) - p(j["started"])).total_seconds())' <<<"$j")
            [ "$state" = succeeded ] || { log "backup job $id: $j"; exit 1; }
            copied+=("$cb"); backup_secs+=("$secs") ;;
        esac
        cmp -s -n $((WRITE_MB << 20)) "$NEW" "$KURA_VOLUMES/vol.raw" || { log "$c: the volume does not hold what was written"; exit 1; }
        log "$c run $n: host write $t s"
        times[$c]="${times[$c]:-} $t"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mi=$(median <<<"${times[idle]}")
ms=$(median <<<"${times[session]}")
mc=$(printf '%s ' "${copied[@]}" | median)
mb=$(printf '%s ' "${backup_secs[@]}" | median)
{
    echo "| case | median host write (s) | MiB/s |"
    echo "|---|---|---|"
    echo "| no backup running | $mi | $(echo "$WRITE_MB / $mi" | bc) |"
    echo "| backup session running | $ms | $(echo "$WRITE_MB / $ms" | bc) |"
    echo
    echo "session / idle throughput: $(echo "scale=2; $mi / $ms" | bc)× (goal ≥ 0.75×)"
    echo "copied before write per session (median): $(echo "$mc / 1048576" | bc) MiB; backup took (median) ${mb} s"
    echo "(SIZE_MB=$SIZE_MB, WRITE_MB=$WRITE_MB, RUNS=$RUNS, $(nproc) cores)"
} | tee "$BENCH_DIR/results.md"
