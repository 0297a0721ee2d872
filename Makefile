# Two entry points for a fresh machine (see README.md):
#   make serve   build the host and the plugins, serve the echo plugin on 127.0.0.1:8080
#   make test    build the plugins and run every test
WASM_TARGET := wasm32-wasip2
PLUGIN_DIR := plugins/target/$(WASM_TARGET)/release

.PHONY: serve test plugins wasm-target

wasm-target:
	rustup target add $(WASM_TARGET)

plugins: wasm-target
	cargo build --release --target $(WASM_TARGET) --manifest-path plugins/Cargo.toml

serve: plugins
	cargo run --release -- run --plugin $(PLUGIN_DIR)/echo.wasm

test: plugins
	cargo test
