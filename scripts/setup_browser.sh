#!/usr/bin/env bash
# Browser for the report viewer's tests: Debian's chromium driven by Playwright's Python
# package. Idempotent and quiet: installs only what is missing. Never runs
# `playwright install` (that downloads a browser build, which cannot be fetched here).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq chromium >/dev/null
fi

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    PY=${PYTHON:-python3}
fi
"$PY" -c "import playwright.sync_api" 2>/dev/null \
    || "$PY" -m pip install -q --disable-pip-version-check playwright
