#!/usr/bin/env bash
# How well the daemon predicts a run's finish: RUNS backups of MB MiB of fresh random data
# (rewritten before each run, so every run uploads all of it) by one job, each run under
# a different upload limit (`kura --limit-upload RATE serve`, RATES taken in turn). While a
# run goes on, its task's `predicted_finish` is sampled every half second through the API;
# once it ends, every sample taken after 10 % of the run's actual duration is scored:
#
#     error = |predicted duration - actual duration| / actual duration
#
# (durations from the task's start). The job's history grows run by run, with rates that
# differ from the run at hand, so the prediction must follow the run's own progress. Prints
# per run its rate, duration, and median and worst error, then the same over all samples.
#
#   KURA_BIN=target/debug/kura MB=48 RUNS=10 bash bench/predict.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KURA_BIN=${KURA_BIN:-target/debug/kura}
MB=${MB:-48}
RUNS=${RUNS:-10}
RATES=${RATES:-"1MiB 512KiB 2MiB 768KiB 1536KiB 640KiB 3MiB 896KiB 1280KiB 2560KiB"}
BENCH_DIR=${BENCH_DIR:-/tmp/kura-bench-predict}
[ -x "$KURA_BIN" ] || { echo "no kura binary at $KURA_BIN (cargo build -p kura-cli)" >&2; exit 2; }
KURA_BIN=$(realpath "$KURA_BIN")

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR/src"
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT
export KURA_PASSWORD=bench KURA_CATALOG="sqlite://$BENCH_DIR/catalog.db"
export KURA_CONFIG="$BENCH_DIR/kura.toml"
unset KURA_REPOSITORY KURA_PASSWORD_FILE
# Small read-ahead buffers and 1 MiB packs: at these rates a 16 MiB pack would be
# acknowledged once a minute.
printf '[backup]\nmemory_mib = 8\n' >"$KURA_CONFIG"
k() { "$KURA_BIN" -q "$@"; }
k -r "$BENCH_DIR/repo" init --kdf-memory-kib 64 --pack-size-mib 1 >/dev/null
k resource add target t0 "$BENCH_DIR/repo" >/dev/null
k job add bench --object "$BENCH_DIR/src" --redundancy 1 >/dev/null
token=$(k token create bench)

rates=($RATES)
: >"$BENCH_DIR/scores"
for run in $(seq 1 "$RUNS"); do
    rate=${rates[$(((run - 1) % ${#rates[@]}))]}
    for i in $(seq 1 $((MB / 4))); do
        head -c $((4 << 20)) /dev/urandom >"$BENCH_DIR/src/f$i"
    done
    "$KURA_BIN" -q --limit-upload "$rate" serve --listen 127.0.0.1:0 --no-scheduler \
        --state-dir "$BENCH_DIR/state" >"$BENCH_DIR/url" 2>>"$BENCH_DIR/daemon.log" &
    pid=$!
    for _ in $(seq 1 100); do [ -s "$BENCH_DIR/url" ] && break; sleep 0.1; done
    url=$(head -1 "$BENCH_DIR/url")
    python3 - "$url" "$token" "$rate" "$run" >>"$BENCH_DIR/scores" <<'EOF'
import json, sys, time, urllib.request
from datetime import datetime
url, token, rate, run = sys.argv[1:]
def call(method, path):
    r = urllib.request.Request(url + path, method=method,
                               headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(r, timeout=30) as f:
        return json.load(f)
def t(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
task = call("POST", "/api/v1/jobs/bench/run")
samples = []
while True:
    i = call("GET", "/api/v1/tasks/" + task["id"])
    if i["state"] != "running":
        break
    if i.get("predicted_finish"):
        samples.append((time.time(), t(i["predicted_finish"])))
    time.sleep(0.5)
if i["state"] != "succeeded":
    sys.exit("run %s: %s: %s" % (run, i["state"], i.get("error")))
start, end = t(i["started"]), t(i["finished"])
actual = end - start
errs = sorted(abs((p - start) - actual) / actual
              for (now, p) in samples if now - start >= 0.1 * actual)
for e in errs:
    print("sample", run, rate, "%.4f" % e)
med = errs[len(errs) // 2] if errs else float("nan")
print("run", run, rate, "%.1f" % actual, len(errs), "%.4f" % med,
      "%.4f" % (errs[-1] if errs else float("nan")))
print("run %s at %s: %.1f s, %d samples, median error %.1f %%, worst %.1f %%"
      % (run, rate, actual, len(errs), 100 * med, 100 * (errs[-1] if errs else 0)),
      file=sys.stderr)
EOF
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    : >"$BENCH_DIR/url"
done
printf '| run | upload limit | duration (s) | samples | median error | worst error |\n'
printf '| --- | --- | --- | --- | --- | --- |\n'
awk '$1=="run" {printf "| %s | %s/s | %s | %s | %.1f %% | %.1f %% |\n", $2, $3, $4, $5, 100*$6, 100*$7}' \
    "$BENCH_DIR/scores"
awk '$1=="sample" {print $4}' "$BENCH_DIR/scores" | sort -n | awk '
    {a[NR]=$1} END {printf "\nall %d samples after 10 %% of their run: median error %.1f %%, worst %.1f %%\n", NR, 100*a[int((NR+1)/2)], 100*a[NR]}'
