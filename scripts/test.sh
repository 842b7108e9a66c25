#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite against the real engine.
# Extra arguments go to pytest (e.g. scripts/test.sh -k streams).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure-browser.sh
export CI=${CI:-}
.venv/bin/python -m pytest tests "$@"
