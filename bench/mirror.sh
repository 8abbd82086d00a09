#!/usr/bin/env bash
# bench/mirror.sh: a mirrored backup onto two targets next to a backup onto one, for kura, and
# what restic users do instead (two backups one after the other), in one run on the same data.
#
# Dataset ($BENCH_DIR/data): share/ (a copy of SRC_DIR, default /usr/share/doc) and big.bin
# (TAR_MB MiB of a tar of /usr/lib, compressible, then RANDOM_MB MiB of random data).
# Configurations, RUNS times each in rotated order, every run into fresh repositories:
#   kura-1         kura backup to one directory
#   kura-mirror2   kura backup --mirror: the same backup written to two directories at once
#   kura-mirror2s3 kura backup to a directory and --mirror to S3 (SeaweedFS on loopback)
#   kura-s3        kura backup to S3 alone (the slower member of kura-mirror2s3)
#   restic-2x      restic backup to one directory, then the same to a second one
# All targets are directories on the same disk (or SeaweedFS over a directory on it).
#
# Usage: bash bench/mirror.sh     (knobs: BENCH_DIR, SRC_DIR, TAR_MB, RANDOM_MB, RUNS, KURA_BIN)
# Output: a table of median wall times and throughput ratios against the goal
# (mirror to 2 ≥ 0.9× the single-target throughput), also in $BENCH_DIR/results.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-mirror}
SRC_DIR=${SRC_DIR:-/usr/share/doc}
TAR_MB=${TAR_MB:-512}
RANDOM_MB=${RANDOM_MB:-256}
RUNS=${RUNS:-3}
CONFIGS=(kura-1 kura-mirror2 kura-mirror2s3 kura-s3 restic-2x)
export KURA_PASSWORD=kura-bench RESTIC_PASSWORD=kura-bench LC_ALL=C

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v restic >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q restic >/dev/null
if [ -z "${KURA_BIN:-}" ]; then
    (cd "$REPO_ROOT" && cargo build --release -q -p kura-cli)
    KURA_BIN="$REPO_ROOT/target/release/kura"
fi

mkdir -p "$BENCH_DIR"
DATA="$BENCH_DIR/data"
if [ ! -f "$DATA/.done" ]; then
    log "building the dataset in $DATA"
    rm -rf "$DATA" && mkdir -p "$DATA"
    cp -a "$SRC_DIR" "$DATA/share"
    # (the producers end on SIGPIPE when head has enough: not an error here)
    { tar -cf - /usr/lib 2>/dev/null | head -c $((TAR_MB << 20)) || true;
      openssl enc -aes-256-ctr -pass pass:kura -nosalt </dev/zero 2>/dev/null |
          head -c $((RANDOM_MB << 20)) || true; } >"$DATA/big.bin"
    touch "$DATA/.done"
fi
DATA_BYTES=$(du -sb "$DATA" | cut -f1)

# shellcheck source=../scripts/seaweedfs.sh
source "$REPO_ROOT/scripts/seaweedfs.sh"
seaweed_install
rm -rf "$BENCH_DIR/weed"   # a fresh server each run (the bucket is created anew)
seaweed_start "$BENCH_DIR/weed" >/dev/null
trap 'seaweed_stop' EXIT
export AWS_ACCESS_KEY_ID=$SEAWEED_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SEAWEED_SECRET_KEY
s3_url() { echo "s3://$SEAWEED_BUCKET/$1?endpoint=$SEAWEED_ENDPOINT"; }

timed() { # prints wall seconds of "$@"
    local t0 t1
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

run_config() { # $1 config $2 run number → wall seconds
    local c=$1 n=$2 a="$BENCH_DIR/r/$1-$2-a" b="$BENCH_DIR/r/$1-$2-b" s3
    s3=$(s3_url "$c-$n-$RANDOM")
    rm -rf "$BENCH_DIR/r" && mkdir -p "$BENCH_DIR/r"
    case $c in
    kura-1)
        "$KURA_BIN" -r "$a" init >/dev/null
        timed "$KURA_BIN" -q -r "$a" backup "$DATA" ;;
    kura-mirror2)
        "$KURA_BIN" -r "$a" --mirror "$b" init >/dev/null
        timed "$KURA_BIN" -q -r "$a" --mirror "$b" backup "$DATA" ;;
    kura-mirror2s3)
        "$KURA_BIN" -r "$a" --mirror "$s3" init >/dev/null
        timed "$KURA_BIN" -q -r "$a" --mirror "$s3" backup "$DATA" ;;
    kura-s3)
        "$KURA_BIN" -r "$s3" init >/dev/null
        timed "$KURA_BIN" -q -r "$s3" backup "$DATA" ;;
    restic-2x)
        restic init -q -r "$a" >/dev/null; restic init -q -r "$b" >/dev/null
        timed bash -c "restic -q -r '$a' backup '$DATA' && restic -q -r '$b' backup '$DATA'" ;;
    esac
}

declare -A times
for n in $(seq 1 "$RUNS"); do
    for i in "${!CONFIGS[@]}"; do
        c=${CONFIGS[$(( (i + n) % ${#CONFIGS[@]} ))]}
        t=$(run_config "$c" "$n")
        log "$c run $n: $t s"
        times[$c]="${times[$c]:-} $t"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
    echo "Command: bash bench/mirror.sh (RUNS=$RUNS, data $((DATA_BYTES >> 20)) MiB: $SRC_DIR + ${TAR_MB} MiB tar + ${RANDOM_MB} MiB random)"
    echo
    echo "| configuration | median wall | MiB/s |"
    echo "|---|---:|---:|"
    for c in "${CONFIGS[@]}"; do
        m=$(echo "${times[$c]}" | median)
        printf '| %s | %.2f s | %.0f |\n' "$c" "$m" "$(echo "$DATA_BYTES / 1048576 / $m" | bc -l)"
    done
    k1=$(echo "${times[kura-1]}" | median); m2=$(echo "${times[kura-mirror2]}" | median)
    ks3=$(echo "${times[kura-s3]}" | median); m2s3=$(echo "${times[kura-mirror2s3]}" | median)
    r2=$(echo "${times[restic-2x]}" | median)
    echo
    printf 'mirror to 2 directories / 1 directory throughput: %.2f× (goal ≥ 0.9×)\n' "$(echo "$k1 / $m2" | bc -l)"
    printf 'mirror to directory + S3 / S3 alone throughput: %.2f× (goal ≥ 0.9×)\n' "$(echo "$ks3 / $m2s3" | bc -l)"
    printf 'restic, two backups one after the other / kura mirror to 2: %.2f× the time\n' "$(echo "$r2 / $m2" | bc -l)"
} | tee "$BENCH_DIR/results.md"
