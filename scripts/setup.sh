#!/usr/bin/env bash
# Sets everything up on this machine: a virtualenv with FiddleDock and its
# test/lab dependencies, a reachable Docker engine (gVisor registered where
# possible) and the default sandbox image. Safe to run again: each step only
# does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing FiddleDock into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,lab]" 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import fiddledock_magic" # fails loudly if the install did not work

echo "==> making sure a Docker engine is reachable"
bash scripts/ensure-engine.sh --with-runsc

echo "==> making sure the default sandbox image exists"
.venv/bin/python -m fiddledock_magic build-image
