#!/usr/bin/env bash
# The daemon under load, three numbers:
#  - API latency: `GET /api/v1/jobs` with JOBS jobs defined, RATE requests/s for SECS seconds
#    from a second process (hey: 10 workers at RATE/10 each); p50/p99 and errors;
#  - RSS: idle (nothing defined), and with JOBS jobs and BACKUPS backups in the catalog,
#    after the load;
#  - schedule-to-start delay: a job due every 5 s runs SAMPLES times; the delay is each
#    occurrence's claim time minus its due time (what the catalog records).
# The catalog is the embedded SQLite one; the jobs and backups are written straight into it
# with sqlite3 (adding them one by one through the CLI would measure process start-up).
#
#   KURA_BIN=target/release/kura JOBS=1000 BACKUPS=10000 RATE=500 SECS=20 bash bench/daemon.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KURA_BIN=${KURA_BIN:-target/release/kura}
JOBS=${JOBS:-1000}
BACKUPS=${BACKUPS:-10000}
RATE=${RATE:-500}
SECS=${SECS:-20}
SAMPLES=${SAMPLES:-10}
[ -x "$KURA_BIN" ] || { echo "no kura binary at $KURA_BIN (cargo build --release -p kura-cli)" >&2; exit 2; }
for t in hey sqlite3 jq curl; do
    command -v $t >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y "$t" >/dev/null
done

dir=$(mktemp -d /tmp/kura-bench-daemon.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
export XDG_DATA_HOME=$dir/data XDG_CONFIG_HOME=$dir/conf XDG_STATE_HOME=$dir/state
export KURA_PASSWORD=bench
db=$dir/data/kura/catalog.db
k() { "$KURA_BIN" -q "$@"; }

k -r "$dir/repo" init --kdf-memory-kib 64 >/dev/null
k resource add target t1 "$dir/repo" >/dev/null
token=$(k token create bench | grep -o 'kura_[0-9a-f]*' | head -1)

rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
serve() {
    "$KURA_BIN" -q serve --listen 127.0.0.1:0 --state-dir "$dir/state" >"$dir/url" 2>"$dir/serve.log" &
    pid=$!
    for _ in $(seq 100); do [ -s "$dir/url" ] && break; sleep 0.1; done
    url=$(head -1 "$dir/url")
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

# Idle: a daemon with an empty catalog, after it settled.
serve
sleep 3
idle=$(rss "$pid")
stop

# The catalog filled: JOBS jobs (scheduled yearly, so none runs) and BACKUPS backups.
mkdir -p "$dir/src"
k job add j0 --object "$dir/src" --redundancy 1 --schedule "*-01-01 00:00" >/dev/null
sqlite3 "$db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $JOBS - 1)
  INSERT INTO jobs (name, object, schedule, redundancy, mode, config)
  SELECT 'j' || i, object, schedule, redundancy, mode, config FROM jobs, n WHERE name = 'j0';
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $BACKUPS)
  INSERT INTO backups (object, started, ended, data_time, state)
  SELECT '$dir/src', i * 1000, i * 1000 + 500, i * 1000, 'complete' FROM n;"
echo "catalog: $(sqlite3 "$db" 'SELECT count(*) FROM jobs') jobs, $(sqlite3 "$db" 'SELECT count(*) FROM backups') backups"

serve
sleep 2
n=$(curl -sf -H "Authorization: Bearer $token" "$url/api/v1/jobs" | jq length)
[ "$n" -eq "$JOBS" ] || { echo "the API lists $n jobs, not $JOBS" >&2; exit 1; }
loaded_before=$(rss "$pid")
hey -z "${SECS}s" -c 10 -q $((RATE / 10)) -H "Authorization: Bearer $token" \
    "$url/api/v1/jobs" >"$dir/hey.txt"
loaded=$(rss "$pid")
p50=$(awk '/50% in/ {print $3 * 1000}' "$dir/hey.txt")
p99=$(awk '/99% in/ {print $3 * 1000}' "$dir/hey.txt")
rps=$(awk '/Requests\/sec/ {print $2}' "$dir/hey.txt")
codes=$(awk '/Status code distribution/ {f=1; next} f && /\[/ {printf "%s%s", sep, $0; sep=","}' "$dir/hey.txt" | tr -s ' ')
stop

# Schedule-to-start: a job due every 5 seconds.
k job add tick --object "$dir/src" --redundancy 1 --schedule "*:*:0/5" >/dev/null
serve
for _ in $(seq 600); do
    done_runs=$(curl -sf -H "Authorization: Bearer $token" "$url/api/v1/jobs/tick/occurrences" |
        jq '[.[] | select(.state == "succeeded")] | length')
    [ "$done_runs" -ge "$SAMPLES" ] && break
    sleep 1
done
delays=$(curl -sf -H "Authorization: Bearer $token" "$url/api/v1/jobs/tick/occurrences" |
    python3 -c '
import json, sys, datetime
p = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
for o in json.load(sys.stdin):
    if o["state"] == "succeeded":
        print(round((p(o["claimed"]) - p(o["due"])).total_seconds() * 1000))')
stop
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }
worst() { sort -n | tail -1; }

echo
echo "kura daemon: $JOBS jobs, $BACKUPS backups, GET /api/v1/jobs at $RATE req/s for ${SECS}s"
printf '  latency p50 %s ms, p99 %s ms (goal p99 <= 10 ms); achieved %s req/s; status %s\n' \
    "$p50" "$p99" "$rps" "$codes"
printf '  RSS idle %s MiB (goal <= 40), loaded %s MiB before / %s MiB after the load (goal <= 100)\n' \
    "$idle" "$loaded_before" "$loaded"
printf '  schedule-to-start delay over %s runs: median %s ms, worst %s ms (goal <= 1000)\n' \
    "$(echo "$delays" | grep -c . || true)" "$(echo "$delays" | median)" "$(echo "$delays" | worst)"
