# Two entry points for a fresh machine (see README.md):
#   make serve   build the host and the Rust plugins, serve the echo plugin on 127.0.0.1:8080
#   make test    build the plugins and run every test
# `make plugins` builds the Rust plugins (plugins/, needs the wasm32-wasip2
# target) and the Python and JS echo plugins into plugins/target/ (first run:
# python3 with venv and PyPI access, Node 20+ and npm registry access; later
# runs skip whatever is up to date and need no network: CI runs
# `.ci/offline make test`).
WASM_TARGET := wasm32-wasip2
PLUGIN_DIR := plugins/target/$(WASM_TARGET)/release

.PHONY: serve test plugins rust-plugins python-echo js-echo wasm-target reference-consumer

wasm-target:
	rustup target add $(WASM_TARGET)

plugins: rust-plugins python-echo js-echo

rust-plugins: wasm-target
	cargo build --release --target $(WASM_TARGET) --manifest-path plugins/Cargo.toml

# -> plugins/target/python-echo.wasm (componentize-py)
python-echo:
	plugins/python-echo/build.sh

# -> plugins/target/js-echo.wasm (componentize-js; JS_ECHO_ENGINE=quickjs for QuickJS)
js-echo:
	plugins/js-echo/build.sh

# The reference consumer (PyPI iicp-client) the interop tests drive, into
# the same tools directory (first run: python3 with venv and PyPI access).
reference-consumer:
	tests/reference-consumer/setup.sh >/dev/null

serve: rust-plugins
	cargo run --release -- run --plugin $(PLUGIN_DIR)/echo.wasm

# The plugin SDK's own unit tests run on the host (the plugins' workspace
# builds for wasm32-wasip2 only when asked).
test: plugins reference-consumer
	cargo build --manifest-path bench/Cargo.toml -p native-node -p bench-harness
	cargo test --manifest-path plugins/Cargo.toml -p iicp-plugin-sdk
	cargo test --workspace
