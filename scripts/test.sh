#!/usr/bin/env bash
# Run kura's whole test suite on a fresh machine: install what the tests need, then test.
#
# The end-to-end tests use real parts: loop devices (losetup) for block-device backups,
# setpriv to drop privileges for unreadable-file tests, mkfifo; they run as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need losetup || missing+=(mount)
need setpriv || missing+=(util-linux)
need mkfifo || missing+=(coreutils)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
    echo "warning: not root: the loop-device and privilege-dropping tests will fail" >&2
fi

export INSTA_UPDATE=no CARGO_TERM_COLOR=never
cargo test --workspace --locked "$@"
