#!/usr/bin/env bash
# Builds the js-echo plugin component:
#   plugins/js-echo/echo.js + wit/plugin.wit -> plugins/target/js-echo.wasm
#
# Usage: plugins/js-echo/build.sh [output.wasm]
#   JS_ECHO_ENGINE=starlingmonkey (default): componentize-js, SpiderMonkey.
#   JS_ECHO_ENGINE=quickjs: componentize-qjs, QuickJS; about 7x smaller, and
#     about 2.7x (1 connection) to 6x (16) more tasks per second on iicp-host,
#     whose fresh instance per task favours the smaller engine.
#
# Needs Node 20+ and npm. The tools (pinned in package.json /
# package-lock.json) install into plugins/js-echo/node_modules (git-ignored)
# with `npm ci`, from npm's cache when it has them: the npm registry is needed
# only the first time.
#
# Does nothing when the output is newer than every input (the files of this
# directory and wit/) and was built with the same engine (recorded in
# <output>.engine); set FORCE=1 to rebuild anyway.
#
# componentize-js is called directly: `jco componentize` (jco 1.35.0) cannot
# read the WIT directory (its bundled wasm-tools runs with no preopened
# directory: "failed to get path metadata: No such file or directory (os
# error 44)"). jco is used only to list the component's imports.
#
# The echo makes no outbound HTTP, so SpiderMonkey's fetch() is left out
# (`--disable http`, which also keeps the component loadable on a host without
# wasi:http), as is its incoming-handler export (`fetch-event`: iicp-host
# calls the handler interface, never wasi:http/incoming-handler). iicp-host
# does not support the component-model async ABI, so QuickJS is built with
# its synchronous runtime (--sync). The imports are checked afterwards.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugins="$(dirname "$here")"
wit="$(dirname "$plugins")/wit"
out="${1:-$plugins/target/js-echo.wasm}"
engine="${JS_ECHO_ENGINE:-starlingmonkey}"
bin="$here/node_modules/.bin"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
case "$engine" in
    starlingmonkey | quickjs) ;;
    *)
        echo "error: JS_ECHO_ENGINE must be starlingmonkey or quickjs, not $engine" >&2
        exit 2
        ;;
esac

stamp="$out.engine"
if [ "${FORCE:-0}" != 1 ] && [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$engine" ] \
    && [ -z "$(find "$here" "$wit" -name node_modules -prune -o -type f -newer "$out" -print -quit)" ]; then
    echo "up to date: $out ($engine)"
    exit 0
fi

cd "$here"
if ! [ -x "$bin/componentize-js" ] || ! [ -x "$bin/componentize-qjs" ] \
    || ! [ -x "$bin/jco" ] || ! npm ls --silent >/dev/null 2>&1; then
    node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null || {
        echo "error: building js-echo needs Node 20 or later, with npm" >&2
        exit 1
    }
    npm ci --prefer-offline --no-audit --no-fund --loglevel=error || {
        echo "error: npm ci could not install the pinned tools; the first build needs the npm registry (later builds use npm's cache)" >&2
        exit 1
    }
fi

mkdir -p "$(dirname "$out")"
# Write to a temporary file first so a failed build never leaves an output
# that looks up to date.
tmp="$out.tmp.wasm"
case "$engine" in
    starlingmonkey)
        "$bin/componentize-js" echo.js --wit "$wit" --world-name plugin \
            --disable http fetch-event -o "$tmp"
        ;;
    quickjs)
        "$bin/componentize-qjs" --wit "$wit" --world plugin --js echo.js --sync \
            -o "$tmp" >/dev/null
        ;;
esac

imports="$("$bin/jco" wit "$tmp" | grep -E '^ *import ')"
if grep -q 'wasi:http' <<<"$imports"; then
    echo "error: $tmp imports wasi:http, which this plugin must not need:" >&2
    grep 'wasi:http' <<<"$imports" >&2
    exit 1
fi
rm -f "$stamp"
mv "$tmp" "$out"
echo "$engine" >"$stamp"
echo "built $out with $engine ($(wc -c <"$out") bytes)"
