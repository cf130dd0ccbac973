#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the project with dev extras.
# The pip install is skipped while .venv/.installed is newer than pyproject.toml.
#
# Env: PYTHON=/path/to/python3.x to pick the interpreter used to create .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.installed"

log() { printf '[bootstrap] %s\n' "$*"; }
die() {
    printf '[bootstrap] ERROR: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

py_ok() { # py_ok <python>: exists and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
    local cand
    for cand in ${PYTHON:+"$PYTHON"} python3 python3.13 python3.12 python3.11; do
        if have "$cand" && py_ok "$cand"; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

make_venv() {
    local py
    py="$(find_python)" || {
        local found="none"
        have python3 && found="$(python3 -V 2>&1)"
        die "Python >= 3.11 is required (python3 found: $found). Install it or set PYTHON=/path/to/python3.11+"
    }
    log "creating .venv with $py ($("$py" -V 2>&1))"
    local errf
    errf="$(mktemp)"
    if ! "$py" -m venv --clear "$VENV" 2>"$errf"; then
        # Debian/Ubuntu ship venv/ensurepip separately (python3.X-venv).
        local ver pkg
        ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        pkg="python$ver-venv"
        if have apt-get && [[ $EUID -eq 0 ]] &&
            ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
            log "venv failed; installing $pkg"
            export DEBIAN_FRONTEND=noninteractive
            apt-get -o DPkg::Lock::Timeout=300 update -qq </dev/null &&
                apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$pkg" </dev/null >/dev/null ||
                die "apt-get install $pkg failed"
            "$py" -m venv --clear "$VENV" || die "python -m venv failed even after installing $pkg"
        else
            cat "$errf" >&2 || true
            die "'$py -m venv' failed (on Debian/Ubuntu: apt-get install $pkg)"
        fi
    fi
    rm -f "$errf"
}

# (Re)create the venv if missing, broken, or built on a too-old Python.
if [[ ! -x "$VENV/bin/python" ]] || ! py_ok "$VENV/bin/python"; then
    [[ -e "$VENV" ]] && log ".venv is missing a working Python >= 3.11; recreating"
    make_venv
    rm -f "$STAMP"
fi

if [[ -f "$STAMP" && ! "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
    log ".venv up to date (pyproject.toml unchanged since last install)"
    exit 0
fi

[[ -f "$ROOT/pyproject.toml" ]] || die "pyproject.toml not found in $ROOT"
log "installing project: pip install -e '.[dev]'"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$VENV/bin/python" -m pip install -q -e '.[dev]' || die "pip install -e '.[dev]' failed"
touch "$STAMP"
log "done"
