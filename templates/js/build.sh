#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from app.js and wit/plugin.wit
# with componentize-js (SpiderMonkey).
#
# The first run needs Node 20+ and npm with access to the npm registry: it
# installs the pinned tools (package-lock.json) into node_modules here.
# Rebuilds only when a file here changed since the last build (FORCE=1: always).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="{{name}}.wasm"

if [ "${FORCE:-0}" != 1 ] && [ -f "$out" ] && [ -z "$(find . -name node_modules -prune \
    -o -type f -newer "$out" -print -quit)" ]; then
    echo "up to date: $out"
    exit 0
fi

if ! [ -x node_modules/.bin/componentize-js ] || ! npm ls --silent >/dev/null 2>&1; then
    npm ci --no-audit --no-fund --loglevel=error
fi

# --disable http: no fetch(), so the component imports no wasi:http (drop it
# to call out over HTTP, to hosts the operator allows). fetch-event: iicp-host
# calls the handler interface, never wasi:http/incoming-handler.
node_modules/.bin/componentize-js app.js --wit wit --world-name plugin \
    --disable http fetch-event -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c <"$out") bytes)"
