#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from app.js and wit/plugin.wit
# with componentize-js (SpiderMonkey).
#
# Needs Node 20+ and npm. The pinned tools (package-lock.json) are installed
# into node_modules here with `npm ci`, from npm's cache when it has them
# (--prefer-offline): the first build on a machine needs the npm registry,
# later builds of any plugin with the same pins work offline.
# Rebuilds only when a file here changed since the last build (FORCE=1: always).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out="{{name}}.wasm"

if [ "${FORCE:-0}" != 1 ] && [ -f "$out" ] && [ -z "$(find . -name node_modules -prune \
    -o -type f -newer "$out" -print -quit)" ]; then
    echo "up to date: $out"
    exit 0
fi

node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null || {
    echo "error: building a JavaScript plugin needs Node 20 or later, with npm" >&2
    exit 1
}
if ! [ -x node_modules/.bin/componentize-js ] || ! npm ls --silent >/dev/null 2>&1; then
    npm ci --prefer-offline --no-audit --no-fund --loglevel=error || {
        echo "error: npm ci could not install the pinned tools; the first JavaScript plugin build needs the npm registry (later builds use npm's cache)" >&2
        exit 1
    }
fi

# --disable http: no fetch(), so the component imports no wasi:http (drop it
# to call out over HTTP, to hosts the operator allows). fetch-event: iicp-host
# calls the handler interface, never wasi:http/incoming-handler.
node_modules/.bin/componentize-js app.js --wit wit --world-name plugin \
    --disable http fetch-event -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(wc -c <"$out") bytes)"
