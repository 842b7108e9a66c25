#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (installed from
# PyPI with the test extras; its own browser download does not work offline).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium for the browser tests"
    if ! apt-get install -y -q chromium >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
    fi
else
    echo "Chromium is missing: install it (Debian: apt-get install chromium) for the browser tests." >&2
    exit 1
fi
