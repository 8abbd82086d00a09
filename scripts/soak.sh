#!/usr/bin/env bash
# Long runs of the model-based tests: the same random sequences the test command runs a few
# dozen to a couple of hundred of, thousands of times. Starts what the tests need through scripts/test.sh.
#
# Usage: scripts/soak.sh [VOLUME_CASES [REPO_CASES]]
#   VOLUME_CASES  cases of tests/volume_model.rs (default 2000)
#   REPO_CASES    cases of tests/model.rs and tests/catalog_model.rs (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
export KURA_VOLUME_MODEL_CASES="${1:-2000}"
export KURA_MODEL_CASES="${2:-300}"
exec scripts/test.sh -p kura-cli --test volume_model --test model --test catalog_model \
    -- --nocapture
