#!/usr/bin/env bash
# Builds the python-echo plugin component:
#   plugins/python-echo/app.py + wit/plugin.wit -> plugins/target/python-echo.wasm
#
# Needs python3 with the venv module and PyPI access on the first run. The build
# tool (componentize-py, pinned in requirements.txt) goes into a venv:
# $PYTHON_ECHO_VENV if set, else plugins/python-echo/.venv (git-ignored).
#
# Does nothing when the output is newer than every input (the files of this
# directory and wit/); set FORCE=1 to rebuild anyway.
# Usage: plugins/python-echo/build.sh [output.wasm]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugins="$(dirname "$here")"
wit="$(dirname "$plugins")/wit"
out="${1:-$plugins/target/python-echo.wasm}"
venv="${PYTHON_ECHO_VENV:-$here/.venv}"

if [ "${FORCE:-0}" != 1 ] && [ -f "$out" ] && [ -z "$(find "$here" "$wit" \
    \( -name .venv -o -name __pycache__ \) -prune -o -type f -newer "$out" -print -quit)" ]; then
    echo "up to date: $out"
    exit 0
fi

pin="$(grep -E '^componentize-py==' "$here/requirements.txt")"
want="${pin#componentize-py==}"
tool="$venv/bin/componentize-py"
if [ ! -x "$tool" ] || [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements.txt"
fi

mkdir -p "$(dirname "$out")"
# -p: the directory holding app.py (the app imports only the stdlib). Write to
# a temporary file first so a failed build never leaves an output that looks
# up to date.
"$tool" -q -d "$wit" -w plugin componentize -p "$here" app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c <"$out") bytes)"
