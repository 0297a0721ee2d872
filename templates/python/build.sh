#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from app.py and wit/plugin.wit.
#
# The first run needs python3 with the venv module and access to PyPI: it
# installs the pinned componentize-py (requirements.txt) into .venv here.
# Rebuilds only when a file here changed since the last build (FORCE=1: always).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="{{name}}.wasm"

if [ "${FORCE:-0}" != 1 ] && [ -f "$out" ] && [ -z "$(find . \( -name .venv -o -name __pycache__ \) \
    -prune -o -type f -newer "$out" -print -quit)" ]; then
    echo "up to date: $out"
    exit 0
fi

want="$(sed -n 's/^componentize-py==//p' requirements.txt)"
tool=.venv/bin/componentize-py
if [ ! -x "$tool" ] || [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
fi

"$tool" -q -d wit -w plugin componentize -p . app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c <"$out") bytes)"
