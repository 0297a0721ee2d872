#!/usr/bin/env bash
# Builds the python-echo plugin component:
#   plugins/python-echo/app.py + wit/plugin.wit -> plugins/target/python-echo.wasm
#
# The build tool (componentize-py, pinned in requirements.txt) lives in a venv:
# $PYTHON_ECHO_VENV if set, else the tools directory that Python plugin
# skeletons share, ${IICP_TOOLS_DIR:-${XDG_CACHE_HOME:-~/.cache}/iicp-host/tools}/componentize-py-<version>.
# Installing it needs python3 with the venv module and PyPI access, once;
# later builds work offline.
#
# Does nothing when the output is newer than every input (the files of this
# directory and wit/); set FORCE=1 to rebuild anyway.
# Usage: plugins/python-echo/build.sh [output.wasm]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugins="$(dirname "$here")"
wit="$(dirname "$plugins")/wit"
out="${1:-$plugins/target/python-echo.wasm}"

if [ "${FORCE:-0}" != 1 ] && [ -f "$out" ] && [ -z "$(find "$here" "$wit" \
    \( -name .venv -o -name __pycache__ \) -prune -o -type f -newer "$out" -print -quit)" ]; then
    echo "up to date: $out"
    exit 0
fi

pin="$(grep -E '^componentize-py==' "$here/requirements.txt")"
want="${pin#componentize-py==}"
tools="${IICP_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/iicp-host/tools}"
venv="${PYTHON_ECHO_VENV:-$tools/componentize-py-$want}"
tool="$venv/bin/componentize-py"
if [ ! -x "$tool" ] || [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || {
        echo "error: building python-echo needs python3 with the venv module (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    mkdir -p "$(dirname "$venv")"
    # One install at a time (the Python skeleton's build.sh takes the same lock).
    exec 9>"$(dirname "$venv")/.componentize-py.lock"
    flock 9
    if [ ! -x "$tool" ] || [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$here/requirements.txt" || {
            rm -rf "$venv"
            echo "error: cannot install componentize-py $want from PyPI; the first build needs network access (later builds reuse $venv)" >&2
            exit 1
        }
    fi
    exec 9>&-
fi

mkdir -p "$(dirname "$out")"
# -p: the directory holding app.py (the app imports only the stdlib). Write to
# a temporary file first so a failed build never leaves an output that looks
# up to date.
"$tool" -q -d "$wit" -w plugin componentize -p "$here" app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c <"$out") bytes)"
