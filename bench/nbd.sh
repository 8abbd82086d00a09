#!/usr/bin/env bash
# bench/nbd.sh: kura's NBD server next to qemu-nbd serving the same raw file, in one run.
#
# A kura volume of SIZE_MB MiB (a sparse raw file in $BENCH_DIR/volumes) is served by
#   kura volume serve --listen 127.0.0.1:PORT_K          (export name: the volume's)
#   qemu-nbd -f raw --persistent -x vol -b 127.0.0.1 -p PORT_Q  RAWFILE   (cache=writeback,
#                                                           qemu-nbd's default)
# one at a time, and driven by nbdcopy (libnbd-bin), RUNS times each in alternating order:
#   write   nbdcopy --flush SRC nbd://…   (SRC: SIZE_MB MiB of random data in /dev/shm)
#   read    nbdcopy nbd://… null:         (page cache dropped first; ignored when not allowed)
# nbdcopy keeps several requests in flight on several connections (its defaults), the way
# qemu and the kernel client use a server.
#
# Usage: bash bench/nbd.sh   (knobs: BENCH_DIR, SIZE_MB, RUNS, KURA_BIN)
# Output: median throughput per server and operation and the ratio kura / qemu-nbd (goal ≥ 1.0×),
# also in $BENCH_DIR/results.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-nbd}
SIZE_MB=${SIZE_MB:-2048}
RUNS=${RUNS:-5}
export LC_ALL=C

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v qemu-nbd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >/dev/null
command -v nbdcopy >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnbd-bin >/dev/null
if [ -z "${KURA_BIN:-}" ]; then
    (cd "$REPO_ROOT" && cargo build --release -q -p kura-cli)
    KURA_BIN="$REPO_ROOT/target/release/kura"
fi

rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR"
export KURA_VOLUMES="$BENCH_DIR/volumes"
"$KURA_BIN" volume create vol --size "${SIZE_MB}M" >/dev/null
RAW="$KURA_VOLUMES/vol.raw"
SRC=/dev/shm/kura-bench-nbd-src
head -c $((SIZE_MB << 20)) /dev/urandom >"$SRC"
SERVER_PID=
cleanup() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; rm -f "$SRC"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # $1 server → sets URL, SERVER_PID
    local port
    port=$(free_port)
    case $1 in
    kura)
        "$KURA_BIN" -q volume serve --listen "127.0.0.1:$port" >/dev/null 2>&1 &
        SERVER_PID=$! ;;
    qemu-nbd)
        qemu-nbd -f raw --persistent -x vol -b 127.0.0.1 -p "$port" "$RAW" &
        SERVER_PID=$! ;;
    esac
    URL="nbd://127.0.0.1:$port/vol"
    for _ in $(seq 1 100); do nbdinfo --size "$URL" >/dev/null 2>&1 && return; sleep 0.05; done
    log "$1 did not come up"; exit 1
}
stop() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }

timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

declare -A times
SERVERS=(kura qemu-nbd)
for n in $(seq 1 "$RUNS"); do
    for i in 0 1; do
        s=${SERVERS[$(( (i + n) % 2 ))]}
        start "$s"
        drop; w=$(timed nbdcopy --flush "$SRC" "$URL")
        drop; r=$(timed nbdcopy "$URL" null:)
        stop
        cmp -s "$SRC" "$RAW" || { log "$s: the volume does not hold what was written"; exit 1; }
        log "$s run $n: write $w s, read $r s"
        times[$s-write]="${times[$s-write]:-} $w"
        times[$s-read]="${times[$s-read]:-} $r"
    done
done

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
    echo "Command: bash bench/nbd.sh (RUNS=$RUNS, SIZE_MB=$SIZE_MB; nbdcopy defaults; raw file on $(df --output=fstype "$BENCH_DIR" | tail -1))"
    echo
    echo "| server | write MiB/s | read MiB/s |"
    echo "|---|---:|---:|"
    for s in "${SERVERS[@]}"; do
        w=$(echo "${times[$s-write]}" | median); r=$(echo "${times[$s-read]}" | median)
        printf '| %s | %.0f | %.0f |\n' "$s" "$(echo "$SIZE_MB / $w" | bc -l)" "$(echo "$SIZE_MB / $r" | bc -l)"
    done
    kw=$(echo "${times[kura-write]}" | median); qw=$(echo "${times[qemu-nbd-write]}" | median)
    kr=$(echo "${times[kura-read]}" | median); qr=$(echo "${times[qemu-nbd-read]}" | median)
    echo
    printf 'kura / qemu-nbd throughput: write %.2f×, read %.2f× (goal ≥ 1.0×)\n' \
        "$(echo "$qw / $kw" | bc -l)" "$(echo "$qr / $kr" | bc -l)"
} | tee "$BENCH_DIR/results.md"
