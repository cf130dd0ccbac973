#!/usr/bin/env bash
# Make sure headless Chromium (Debian package `chromium`) is installed at /usr/bin/chromium.
# Used by tests/integration/test_flower.py to screenshot Flower. Idempotent and quiet when present.
#
#   scripts/ensure_chromium.sh          install if missing (needs root / apt-get)
#   scripts/ensure_chromium.sh --check  exit 0 if present, 1 if not; install nothing
set -euo pipefail

BIN=/usr/bin/chromium

if [[ -x "$BIN" ]]; then
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    echo "[chromium] $BIN is missing" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[chromium] $BIN is missing and apt-get is not available: install Chromium by hand" >&2
    exit 1
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "[chromium] need root to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine: update once, then install.
if ! apt-cache show chromium >/dev/null 2>&1; then
    echo "[chromium] apt-get update" >&2
    $SUDO apt-get update -qq
fi
echo "[chromium] apt-get install -y chromium" >&2
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
    # A stale list can point at package versions the mirror no longer has: refresh and retry.
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
[[ -x "$BIN" ]] || { echo "[chromium] installed, but $BIN is not there" >&2; exit 1; }
"$BIN" --version >&2 || true
