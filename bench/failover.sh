#!/usr/bin/env bash
# bench/failover.sh: a fail-over backup whose active target dies halfway, next to the same backup
# undisturbed, and next to what a tool without fail-over must do (start again from scratch on the
# other target), in one run on the same data.
#
# Dataset ($BENCH_DIR/data): share/ (a copy of SRC_DIR, default /usr/share/doc) and big.bin
# (TAR_MB MiB of a tar of /usr/lib, compressible, then RANDOM_MB MiB of random data).
# Targets: two independent SeaweedFS servers on loopback (scripts/seaweedfs.sh), A and B, both
# fresh (new data directory, bucket created anew) before every run. The catalog ($KURA_CATALOG)
# is fresh every run: t0 = S3 on A, t1 = S3 on B, initialised as one group with
#   kura -r S3_A --mirror S3_B init
# The fail-over backup is
#   kura --timeout $TIMEOUT -q --json backup data --redundancy 2 --mode failover \
#        --extent-size $EXTENT_SIZE --extent-timeout $EXTENT_TIMEOUT   (--unreachable-timeout: its default, 1s)
# (t0 comes first alphabetically, so it is the active target while both are healthy.)
# Configurations, RUNS times each:
#   fo-calm          the fail-over backup, undisturbed (expects exit 0, "failovers": 0)
#   fo-killed        the same command; server A gets SIGKILL once it has received KILL_AT (0.5) × the
#                    data fo-calm stores (median "bytes_added"), watched as the growth of A's data
#                    directory (expects exit 9 = degraded, "failovers": 1)
#   restart-scratch  no fail-over: kura --timeout $TIMEOUT -r S3_A backup data, A killed the same
#                    way (the backup fails), then at once kura --timeout $TIMEOUT -r S3_B backup data
#                    into a fresh repository on B; its time is the sum of both
#   plain-calm       (reference) kura --timeout $TIMEOUT -r S3_A backup data, undisturbed: a plain
#                    single-target backup, to see what the fail-over mode itself costs
# Order: all fo-calm runs first (their median sets the kill point, so there is no separate
# calibration run), then the other three in rotated order. Every timed command starts from a
# dropped page cache (ignored when not allowed); repository init is not timed. A run whose
# outcome is not the expected one (exit code, failovers, A not killed before the end) is kept
# but flagged with "!" and a warning. The stderr of every fo-killed run is kept in
# $BENCH_DIR/logs, with the kill time; the table gives how long kura took to notice the dead
# target (kill → first warning in its log) and how long the killed command ran after the kill
# (for restart-scratch: the first, failing backup).
#
# Usage: bash bench/failover.sh  (knobs: BENCH_DIR, SRC_DIR, TAR_MB, RANDOM_MB, RUNS, KURA_BIN,
#        TIMEOUT, EXTENT_SIZE, EXTENT_TIMEOUT, KILL_AT, HANG_LIMIT)
# Output: a table of median wall times and the ratios fo-killed/fo-calm (goal ≤ 1.15×) and
# restart-scratch/fo-calm, also in $BENCH_DIR/results.md; every run in $BENCH_DIR/raw.tsv.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-failover}
SRC_DIR=${SRC_DIR:-/usr/share/doc}
TAR_MB=${TAR_MB:-1024}
RANDOM_MB=${RANDOM_MB:-1024}
RUNS=${RUNS:-3}
TIMEOUT=${TIMEOUT:-5s}
EXTENT_SIZE=${EXTENT_SIZE:-64MiB}
EXTENT_TIMEOUT=${EXTENT_TIMEOUT:-30s}
KILL_AT=${KILL_AT:-0.5}
HANG_LIMIT=${HANG_LIMIT:-600}   # seconds; a kura command running longer is killed (flagged "hang")
CONFIGS=(fo-calm fo-killed restart-scratch plain-calm)
ROTATED=(fo-killed restart-scratch plain-calm)
export KURA_PASSWORD=kura-bench LC_ALL=C

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

for tool in jq bc curl openssl; do
    command -v "$tool" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool" >/dev/null
done
if [ -z "${KURA_BIN:-}" ]; then
    (cd "$REPO_ROOT" && cargo build --release -q -p kura-cli)
    KURA_BIN="$REPO_ROOT/target/release/kura"
fi

mkdir -p "$BENCH_DIR"
DATA="$BENCH_DIR/data"
if [ ! -f "$DATA/.done-$TAR_MB-$RANDOM_MB" ]; then
    log "building the dataset in $DATA"
    rm -rf "$DATA" && mkdir -p "$DATA"
    cp -a "$SRC_DIR" "$DATA/share"
    # (the producers end on SIGPIPE when head has enough: not an error here)
    { tar -cf - /usr/lib 2>/dev/null | head -c $((TAR_MB << 20)) || true;
      openssl enc -aes-256-ctr -pass pass:kura -nosalt </dev/zero 2>/dev/null |
          head -c $((RANDOM_MB << 20)) || true; } >"$DATA/big.bin"
    touch "$DATA/.done-$TAR_MB-$RANDOM_MB"
fi
DATA_BYTES=$(du -sb "$DATA" | cut -f1)

# Two SeaweedFS servers. seaweed_start describes one server in SEAWEED_ENDPOINT/SEAWEED_PID and
# picks free ports each time, so it is called twice and the variables saved in between.
# shellcheck source=../scripts/seaweedfs.sh
source "$REPO_ROOT/scripts/seaweedfs.sh"
seaweed_install
export AWS_ACCESS_KEY_ID=$SEAWEED_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SEAWEED_SECRET_KEY
A_PID= B_PID= A_EP= B_EP= KILLER=
# The servers are disowned (no "Killed" job notices when A is killed); bash still reaps them.
kill_server() { # $1 pid: SIGKILL (the data is thrown away anyway), then wait until it is gone
    local i
    if [ -n "${1:-}" ]; then
        kill -9 "$1" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    fi
}
stop_servers() { kill_server "$A_PID"; kill_server "$B_PID"; A_PID= B_PID=; }
start_servers() { # fresh A and B (new data directories, the bucket created anew)
    stop_servers
    rm -rf "$BENCH_DIR/weed-a" "$BENCH_DIR/weed-b"
    seaweed_start "$BENCH_DIR/weed-a" >/dev/null
    A_EP=$SEAWEED_ENDPOINT A_PID=$SEAWEED_PID
    disown "$A_PID"
    seaweed_start "$BENCH_DIR/weed-b" >/dev/null
    B_EP=$SEAWEED_ENDPOINT B_PID=$SEAWEED_PID
    disown "$B_PID"
    SEAWEED_PID=
}
cleanup() {
    if [ -n "$KILLER" ]; then kill "$KILLER" 2>/dev/null || true; fi
    stop_servers
}
trap cleanup EXIT
trap 'exit 130' INT TERM
s3_a() { echo "s3://$SEAWEED_BUCKET/$1?endpoint=$A_EP"; }
s3_b() { echo "s3://$SEAWEED_BUCKET/$1?endpoint=$B_EP"; }

a_bytes() { du -sb "$BENCH_DIR/weed-a/data" | cut -f1; }

# timed KILL_BYTES NAME CMD...: runs CMD (stdout → $R/NAME.out, stderr → $R/NAME.err) from a
# dropped page cache; with KILL_BYTES, server A gets SIGKILL once its data directory has grown
# by that many bytes (the kill time, in epoch seconds, goes to $R/killed; seconds after the
# start to $R/kill_after). Sets T (wall seconds) and RC (exit code).
timed() {
    local kill_bytes=$1 name=$2 s e pid base
    shift 2
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    rm -f "$R/killed" "$R/kill_after"
    base=$(a_bytes)
    s=$(date +%s.%N)
    timeout -k 10 "$HANG_LIMIT" "$@" >"$R/$name.out" 2>"$R/$name.err" &
    pid=$!
    if [ -n "$kill_bytes" ]; then
        (while kill -0 "$pid" 2>/dev/null && [ $(( $(a_bytes) - base )) -lt "$kill_bytes" ]; do
             sleep 0.05
         done
         kill -0 "$pid" 2>/dev/null || exit 0
         k=$(date +%s.%N); kill -9 "$A_PID" 2>/dev/null || true
         echo "$k" >"$R/killed"; echo "$k - $s" | bc >"$R/kill_after") &
        KILLER=$!
    fi
    RC=0; wait "$pid" || RC=$?
    e=$(date +%s.%N)
    if [ -n "$KILLER" ]; then
        kill "$KILLER" 2>/dev/null || true; wait "$KILLER" 2>/dev/null || true; KILLER=
    fi
    T=$(echo "$e - $s" | bc)
    if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then log "WARNING: $name ran into HANG_LIMIT=$HANG_LIMIT s"; fi
}

fo_setup() { # the group on A and B, and a catalog with t0 (A) and t1 (B)
    local a b
    a=$(s3_a "$1-a"); b=$(s3_b "$1-b")
    "$KURA_BIN" -r "$a" --mirror "$b" init >/dev/null
    "$KURA_BIN" resource add target t0 "$a" >/dev/null
    "$KURA_BIN" resource add target t1 "$b" >/dev/null
}
FO_BACKUP=("$KURA_BIN" --timeout "$TIMEOUT" -q --json backup "$DATA" --redundancy 2 --mode failover
    --extent-size "$EXTENT_SIZE" --extent-timeout "$EXTENT_TIMEOUT")
# The fail-over summary: failovers, and extents per target ("t0:n t1:m").
fo_failovers() { jq -r '.failovers // "?"' "$1" 2>/dev/null || echo '?'; }
fo_extents() {
    jq -r '[.extents[].target] | group_by(.) | map("\(.[0]):\(length)") | join(" ")' "$1" 2>/dev/null || echo '?'
}
# Seconds from the kill to kura's first warning that the target failed (its log is in UTC).
detect_delay() { # $1 stderr file
    local line ts
    [ -f "$R/killed" ] || { echo '-'; return; }
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -m1 -E 'WARN.*(failed|error)' || true)
    ts=$(echo "$line" | awk '{print $1}')
    if [ -z "$ts" ] || ! ts=$(date -d "$ts" +%s.%N 2>/dev/null); then echo '-'; return; fi
    printf '%.2f' "$(echo "$ts - $(cat "$R/killed")" | bc)"
}
after_kill() { # seconds from the kill to the end of the command ($T since the start)
    if [ -f "$R/kill_after" ]; then printf '%.2f' "$(echo "$T - $(cat "$R/kill_after")" | bc)"; else echo '-'; fi
}

mkdir -p "$BENCH_DIR/logs"
rm -f "$BENCH_DIR/logs/"*
RAW="$BENCH_DIR/raw.tsv"
printf 'run\tconfig\twall_s\texit\tfailovers\textents\tdetect_s\tafter_kill_s\tflag\n' >"$RAW"
declare -A times flags detects afters
KILL_BYTES=
declare -a calm_added

run_config() { # $1 config $2 run number → sets RESULT (wall seconds) and records the run
    local c=$1 n=$2 flag='' fo='-' ext='-' det='-' aft='-' t1 rc1
    R="$BENCH_DIR/r"
    rm -rf "$R" && mkdir -p "$R"
    export KURA_CATALOG="$R/catalog.db"
    start_servers
    case $c in
    fo-calm)
        fo_setup "$c-$n"
        timed '' backup "${FO_BACKUP[@]}"
        fo=$(fo_failovers "$R/backup.out"); ext=$(fo_extents "$R/backup.out")
        calm_added+=("$(jq -r '.summary.bytes_added' "$R/backup.out" 2>/dev/null || echo 0)")
        [ "$RC" = 0 ] && [ "$fo" = 0 ] || flag='!' ;;
    fo-killed)
        fo_setup "$c-$n"
        timed "$KILL_BYTES" backup "${FO_BACKUP[@]}"
        fo=$(fo_failovers "$R/backup.out"); ext=$(fo_extents "$R/backup.out")
        det=$(detect_delay "$R/backup.err"); aft=$(after_kill)
        { echo "# server A killed at $(date -u -d "@$(cat "$R/killed" 2>/dev/null || echo 0)" +%H:%M:%S.%N)Z" \
               "($(cat "$R/kill_after" 2>/dev/null || echo '?') s after the start, $KILL_BYTES bytes on A); exit $RC; wall $T s"; cat "$R/backup.err"; } \
            >"$BENCH_DIR/logs/fo-killed-$n.err"
        cp "$R/backup.out" "$BENCH_DIR/logs/fo-killed-$n.json" 2>/dev/null || true
        [ "$RC" = 9 ] && [ "$fo" = 1 ] && [ -f "$R/killed" ] || flag='!' ;;
    restart-scratch)
        "$KURA_BIN" -r "$(s3_a "$c-$n-a")" init >/dev/null
        "$KURA_BIN" -r "$(s3_b "$c-$n-b")" init >/dev/null
        timed "$KILL_BYTES" first "$KURA_BIN" --timeout "$TIMEOUT" -q -r "$(s3_a "$c-$n-a")" backup "$DATA"
        t1=$T rc1=$RC
        det=$(detect_delay "$R/first.err"); aft=$(after_kill)
        [ "$rc1" != 0 ] && [ -f "$R/killed" ] || flag='!'
        # at once, no cache drop: the second attempt follows the first immediately
        local s e
        s=$(date +%s.%N)
        RC=0; timeout -k 10 "$HANG_LIMIT" "$KURA_BIN" --timeout "$TIMEOUT" -q -r "$(s3_b "$c-$n-b")" \
            backup "$DATA" >"$R/second.out" 2>"$R/second.err" || RC=$?
        e=$(date +%s.%N)
        T=$(echo "$t1 + $e - $s" | bc)
        [ "$RC" = 0 ] || flag='!'
        cp "$R/first.err" "$BENCH_DIR/logs/restart-scratch-$n-first.err"
        RC="$rc1,$RC" ;;
    plain-calm)
        "$KURA_BIN" -r "$(s3_a "$c-$n")" init >/dev/null
        timed '' backup "$KURA_BIN" --timeout "$TIMEOUT" -q -r "$(s3_a "$c-$n")" backup "$DATA"
        [ "$RC" = 0 ] || flag='!' ;;
    esac
    if [ -n "$flag" ]; then
        log "WARNING: $c run $n did not go as expected (exit $RC, failovers $fo, A killed: $([ -f "$R/killed" ] && echo yes || echo no))"
        sed 's/\x1b\[[0-9;]*m//g' "$R"/*.err | tail -20 >&2 || true
    fi
    printf '%s\t%s\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$c" "$T" "$RC" "$fo" "$ext" "$det" "$aft" "$flag" >>"$RAW"
    log "$c run $n: $T s (exit $RC, failovers $fo, extents $ext, detect $det s, after kill $aft s)${flag:+ FLAGGED}"
    times[$c]="${times[$c]:-} $T"
    flags[$c]="${flags[$c]:-}$flag"
    [ "$det" = '-' ] || detects[$c]="${detects[$c]:-} $det"
    [ "$aft" = '-' ] || afters[$c]="${afters[$c]:-} $aft"
    RESULT=$T
}

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }

for n in $(seq 1 "$RUNS"); do run_config fo-calm "$n"; done
CALM=$(echo "${times[fo-calm]}" | median)
ADDED=$(echo "${calm_added[*]}" | median)
KILL_BYTES=$(printf '%.0f' "$(echo "$ADDED * $KILL_AT" | bc -l)")
log "fo-calm median $CALM s, $ADDED bytes stored: server A is killed once it holds $KILL_BYTES bytes"
for n in $(seq 1 "$RUNS"); do
    for i in "${!ROTATED[@]}"; do
        run_config "${ROTATED[$(( (i + n) % ${#ROTATED[@]} ))]}" "$n"
    done
done
stop_servers

{
    echo "Command: bash bench/failover.sh (RUNS=$RUNS, data $((DATA_BYTES >> 20)) MiB: $SRC_DIR + ${TAR_MB} MiB tar + ${RANDOM_MB} MiB random;" \
         "--timeout $TIMEOUT --extent-size $EXTENT_SIZE --extent-timeout $EXTENT_TIMEOUT; A killed once it holds ${KILL_AT} × the data fo-calm stores = $KILL_BYTES bytes)"
    echo
    echo "| configuration | median wall | MiB/s | ×fo-calm | kill → first warning | kill → end | runs |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for c in "${CONFIGS[@]}"; do
        m=$(echo "${times[$c]}" | median)
        d=$(echo "${detects[$c]:-}" | median); a=$(echo "${afters[$c]:-}" | median)
        printf '| %s | %.2f s | %.0f | %.2f× | %s | %s | %s%s |\n' "$c" "$m" \
            "$(echo "$DATA_BYTES / 1048576 / $m" | bc -l)" "$(echo "$m / $CALM" | bc -l)" \
            "${d:+$d s}" "${a:+$a s}" "$(echo "${times[$c]}" | xargs)" "${flags[$c]:+ (FLAGGED ${flags[$c]})}"
    done
    killed=$(echo "${times[fo-killed]}" | median); scratch=$(echo "${times[restart-scratch]}" | median)
    echo
    printf 'fail-over, active target killed halfway / undisturbed: %.2f× (goal ≤ 1.15×)\n' "$(echo "$killed / $CALM" | bc -l)"
    printf 'restart from scratch on the other target / undisturbed fail-over: %.2f×\n' "$(echo "$scratch / $CALM" | bc -l)"
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
    if [ -n "$(printf '%s' "${flags[@]}")" ]; then echo; echo "Some runs did not go as expected: see $RAW (flag column)."; fi
} | tee "$BENCH_DIR/results.md"
