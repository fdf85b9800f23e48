#!/usr/bin/env bash
# Install pipecat-workers with everything its tests need into .venv, then run the whole suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k registry -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
exec .venv/bin/python -m pytest "$@"
