#!/usr/bin/env bash
# Sets everything up, then opens JupyterLab on the teaching notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/jupyter lab --notebook-dir=notebooks "$@"
