#!/usr/bin/env bash
# Install pipecat-workers with everything its tests need into .venv, and Chromium from the OS
# packages (scripts/browser.sh), start throwaway Redis and PostgreSQL (+ PGMQ) servers
# (scripts/services.sh), run the whole suite, stop the servers.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k registry -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[all]'

scripts/browser.sh  # Chromium for the dashboard's browser tests (a failure in CI)

export SERVICES_DIR="${SERVICES_DIR:-$PWD/.services}"
trap 'scripts/services.sh stop' EXIT  # set first: also stops what a failed start left running
scripts/services.sh start
source "$SERVICES_DIR/env"

# Not `exec`: the trap must run. pytest's exit code is the script's, and 5 (no test collected)
# fails like any non-zero code.
.venv/bin/python -m pytest "$@"
