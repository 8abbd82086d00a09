#!/usr/bin/env bash
# bench/s3.sh: backup and restore to S3 on loopback (SeaweedFS) next to a local directory, for
# kura and restic, in one run on the same data.
#
# Dataset ($BENCH_DIR/data):
#   share/    a copy of SRC_DIR (default /usr/share: tens of thousands of small files)
#   big.bin   BIG_MB MiB: a tar of /usr/bin and /usr/lib/x86_64-linux-gnu (capped) followed by
#             RANDOM_MB MiB of deterministic random data (one large file, compressible part first)
# Configurations: kura-local, kura-s3, restic-local, restic-s3. The S3 server is one SeaweedFS
# `weed server` (master + volume + filer + S3 gateway) started by scripts/seaweedfs.sh on
# loopback ports over a directory on the same disk; both tools talk to the same bucket, each run
# under a fresh prefix. RUNS times, in rotated order, each configuration: fresh repository,
# init (untimed), backup data/ (timed), restore the snapshot into an empty directory (timed),
# verify the restored copy (diff -r / cmp, untimed), delete it.
#
# Usage (as root, for apt-get and dropping the page cache):
#   bash bench/s3.sh
#   SRC_DIR=/usr/share/doc BIG_MB=128 RANDOM_MB=32 RUNS=1 bash bench/s3.sh   # smoke test
#
# Knobs: BENCH_DIR (default /tmp/kura-bench-s3), SRC_DIR, BIG_MB (default 1024), RANDOM_MB
# (default 256), RUNS (default 3), CACHE (cold|warm|auto, as in compare.sh), KURA_BIN.
#
# Output: a table on stdout (medians, kura-s3/kura-local and restic-s3/kura-s3 ratios against
# the goals ≤ 1.3× and ≥ 2×), $BENCH_DIR/results.md and $BENCH_DIR/raw.tsv.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
COMMAND_LINE="bash bench/s3.sh${*:+ $*}"

BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-s3}
SRC_DIR=${SRC_DIR:-/usr/share}
BIG_MB=${BIG_MB:-1024}
RANDOM_MB=${RANDOM_MB:-256}
RUNS=${RUNS:-3}
CACHE=${CACHE:-auto}
CONFIGS=(kura-local kura-s3 restic-local restic-s3)

export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C
export KURA_PASSWORD=kura-bench RESTIC_PASSWORD=kura-bench

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 's3.sh: error: %s\n' "$*" >&2; exit 1; }

install_deps() {
    local -A pkg_of=([restic]=restic [jq]=jq [openssl]=openssl [/usr/bin/time]=time
        [cmp]=diffutils [curl]=curl)
    local cmd missing=()
    for cmd in "${!pkg_of[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

build_kura() {
    if [ -z "${KURA_BIN:-}" ]; then
        log "building kura (cargo build --release -p kura-cli)"
        (cd "$REPO_ROOT" && cargo build --release -q -p kura-cli)
        KURA_BIN=$REPO_ROOT/target/release/kura
    fi
    KURA_BIN=$(readlink -f "$KURA_BIN")
}

drop_caches() { (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; }

make_dataset() {
    local data=$BENCH_DIR/data
    mkdir -p "$data"
    log "copying $SRC_DIR to data/share"
    cp -a "$SRC_DIR/." "$data/share/"
    log "making data/big.bin ($BIG_MB MiB, $RANDOM_MB MiB of it random)"
    local bin_mb=$((BIG_MB - RANDOM_MB))
    {
        # tar dies of SIGPIPE when head has enough; that is expected, not a failure.
        { tar -C / -cf - usr/bin usr/lib/x86_64-linux-gnu 2>/dev/null || true; } | head -c $((bin_mb << 20))
        head -c $((RANDOM_MB << 20)) /dev/zero |
            openssl enc -aes-128-ctr -nosalt -K 6b7572612d62656e63682d7333000000 -iv 0
    } >"$data/big.bin"
    DATA_BYTES=$(du -sb "$data" | cut -f1)
    DATA_FILES=$(find "$data" -type f | wc -l)
}

# repo_of CONFIG RUN: the repository location for that configuration and run.
repo_of() {
    case $1 in
        kura-local) echo "$BENCH_DIR/repos/kura-$2" ;;
        restic-local) echo "$BENCH_DIR/repos/restic-$2" ;;
        kura-s3) echo "s3://$SEAWEED_BUCKET/kura-$2?endpoint=$SEAWEED_ENDPOINT" ;;
        restic-s3) echo "s3:$SEAWEED_ENDPOINT/$SEAWEED_BUCKET/restic-$2" ;;
    esac
}

# timed RUN CONFIG PHASE -- CMD...: runs CMD from a cold (or warm) cache, records wall seconds
# and peak RSS in raw.tsv.
timed() {
    local run=$1 config=$2 phase=$3
    shift 4
    if [ "$CACHE" = cold ]; then drop_caches; else cat "$BENCH_DIR"/data/big.bin >/dev/null; fi
    local out=$BENCH_DIR/logs/$run-$config-$phase
    /usr/bin/time -f '%e %M' -o "$out.time" "$@" >"$out.log" 2>&1 ||
        { tail -20 "$out.log" >&2; die "$config $phase failed (log: $out.log)"; }
    local wall rss
    read -r wall rss <"$out.time"
    printf '%s\t%s\t%s\t%s\t%s\n' "$run" "$config" "$phase" "$wall" "$rss" >>"$BENCH_DIR/raw.tsv"
    log "  $config $phase: ${wall} s, $((rss / 1024)) MiB"
}

one() {
    local run=$1 config=$2 repo dst=$BENCH_DIR/restore
    repo=$(repo_of "$config" "$run")
    rm -rf "$dst"
    case $config in
        kura-*)
            "$KURA_BIN" -r "$repo" init -q >/dev/null
            timed "$run" "$config" backup -- "$KURA_BIN" -r "$repo" backup -q "$BENCH_DIR/data"
            local id
            id=$("$KURA_BIN" -r "$repo" snapshots --json | jq -r '.[0].id')
            timed "$run" "$config" restore -- "$KURA_BIN" -r "$repo" restore -q "$id" --target "$dst"
            ;;
        restic-*)
            restic -r "$repo" init -q >/dev/null
            timed "$run" "$config" backup -- restic -r "$repo" -q backup "$BENCH_DIR/data"
            timed "$run" "$config" restore -- restic -r "$repo" -q restore latest --target "$dst"
            ;;
    esac
    diff -r --no-dereference "$BENCH_DIR/data/share" "$dst$BENCH_DIR/data/share" >/dev/null ||
        die "$config: restored share/ differs"
    cmp "$BENCH_DIR/data/big.bin" "$dst$BENCH_DIR/data/big.bin" || die "$config: restored big.bin differs"
    rm -rf "$dst"
    case $config in *-local) du -sb "$repo" | cut -f1 >"$BENCH_DIR/logs/$run-$config.size" ;; esac
    case $config in *-local) rm -rf "$repo" ;; esac
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
stat_of() { awk -F'\t' -v c="$1" -v p="$2" -v k="$3" '$2==c && $3==p {print $k}' "$BENCH_DIR/raw.tsv" | median; }

report() {
    local cfg phase
    {
        echo "# kura vs restic, local directory vs S3 (SeaweedFS on loopback)"
        echo
        echo "- command: \`$COMMAND_LINE\` (RUNS=$RUNS, SRC_DIR=$SRC_DIR, BIG_MB=$BIG_MB, RANDOM_MB=$RANDOM_MB)"
        echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
        echo "- kura $("$KURA_BIN" --version | awk '{print $2}') ($(git -C "$REPO_ROOT" rev-parse --short HEAD)), $(restic version | cut -d' ' -f1-2), SeaweedFS $SEAWEEDFS_VERSION"
        echo "- data: $DATA_FILES files, $((DATA_BYTES >> 20)) MiB; cache: $CACHE"
        echo
        echo "| configuration | backup s | restore s | backup RSS MiB | restore RSS MiB |"
        echo "|---|---|---|---|---|"
        for cfg in "${CONFIGS[@]}"; do
            printf '| %s | %s | %s | %.0f | %.0f |\n' "$cfg" "$(stat_of "$cfg" backup 4)" \
                "$(stat_of "$cfg" restore 4)" "$(echo "$(stat_of "$cfg" backup 5)/1024" | bc -l)" \
                "$(echo "$(stat_of "$cfg" restore 5)/1024" | bc -l)"
        done
        echo
        echo "| ratio (medians) | backup | restore | goal |"
        echo "|---|---|---|---|"
        for phase in backup restore; do
            declare "ks_$phase=$(stat_of kura-s3 "$phase" 4)" "kl_$phase=$(stat_of kura-local "$phase" 4)"
            declare "rs_$phase=$(stat_of restic-s3 "$phase" 4)"
        done
        printf '| kura-s3 / kura-local | %.2f× | %.2f× | ≤ 1.3× |\n' \
            "$(echo "$ks_backup/$kl_backup" | bc -l)" "$(echo "$ks_restore/$kl_restore" | bc -l)"
        printf '| restic-s3 / kura-s3 | %.2f× | %.2f× | ≥ 2× |\n' \
            "$(echo "$rs_backup/$ks_backup" | bc -l)" "$(echo "$rs_restore/$ks_restore" | bc -l)"
        echo
        echo "Per run (wall s): $(awk -F'\t' '{printf "%s/%s/%s=%s ", $1, $2, $3, $4}' "$BENCH_DIR/raw.tsv")"
    } >"$BENCH_DIR/results.md"
    cat "$BENCH_DIR/results.md"
}

main() {
    [ "$(id -u)" -eq 0 ] || log "warning: not root: cannot drop the page cache (CACHE=warm)"
    install_deps
    command -v bc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q bc >/dev/null
    build_kura
    case $CACHE in auto) if drop_caches; then CACHE=cold; else CACHE=warm; fi ;; esac
    rm -rf "$BENCH_DIR"
    mkdir -p "$BENCH_DIR/logs" "$BENCH_DIR/repos" "$BENCH_DIR/s3"
    # shellcheck source=scripts/seaweedfs.sh
    source "$REPO_ROOT/scripts/seaweedfs.sh"
    seaweed_install
    trap seaweed_stop EXIT
    seaweed_start "$BENCH_DIR/s3"
    export AWS_ACCESS_KEY_ID=$SEAWEED_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SEAWEED_SECRET_KEY
    log "SeaweedFS S3 at $SEAWEED_ENDPOINT"
    make_dataset
    : >"$BENCH_DIR/raw.tsv"
    local run i n=${#CONFIGS[@]}
    for run in $(seq 1 "$RUNS"); do
        log "run $run"
        for i in $(seq 0 $((n - 1))); do
            one "$run" "${CONFIGS[$(((i + run - 1) % n))]}"
        done
    done
    report
}

main "$@"
