#!/usr/bin/env bash
# Builds {{name}}.wasm, a component iicp-host serves:
#   ./build.sh && iicp-host check {{name}}.wasm
# The first build needs crates.io (or crates already downloaded by another
# build); without network, cargo resolves from what is already downloaded.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
offline=""
if ! cargo fetch --target wasm32-wasip2 --quiet 2>/dev/null; then
    echo "crates.io unreachable: building with the crates already downloaded" >&2
    offline="--offline"
fi
cargo build --release --target wasm32-wasip2 $offline
target_dir="${CARGO_TARGET_DIR:-target}"
cp "$target_dir/wasm32-wasip2/release/{{crate_name}}.wasm" {{name}}.wasm
echo "built {{name}}.wasm"
