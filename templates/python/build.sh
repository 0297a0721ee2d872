#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from app.py and wit/plugin.wit.
#
# The build tool, componentize-py (pinned in requirements.txt), is installed
# once per version into a shared tools directory,
#   ${IICP_TOOLS_DIR:-${XDG_CACHE_HOME:-~/.cache}/iicp-host/tools}/componentize-py-<version>,
# and every later build of any Python plugin uses it, offline. That first
# install needs python3 with the venv module and access to PyPI.
# Rebuilds only when a file here changed since the last build (FORCE=1: always).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="{{name}}.wasm"

if [ "${FORCE:-0}" != 1 ] && [ -f "$out" ] && [ -z "$(find . -name __pycache__ \
    -prune -o -type f -newer "$out" -print -quit)" ]; then
    echo "up to date: $out"
    exit 0
fi

want="$(sed -n 's/^componentize-py==//p' requirements.txt)"
tools="${IICP_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/iicp-host/tools}"
venv="$tools/componentize-py-$want"
tool="$venv/bin/componentize-py"
if [ ! -x "$tool" ] || [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || {
        echo "error: building a Python plugin needs python3 with the venv module (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    mkdir -p "$tools"
    # One install at a time; a build that waited finds the tool installed.
    exec 9>"$tools/.componentize-py.lock"
    flock 9
    if [ ! -x "$tool" ] || [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt; then
            rm -rf "$venv"
            echo "error: cannot install componentize-py $want from PyPI; the first Python plugin build needs network access (later builds reuse $venv)" >&2
            exit 1
        fi
    fi
    exec 9>&-
fi

"$tool" -q -d wit -w plugin componentize -p . app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c <"$out") bytes)"
