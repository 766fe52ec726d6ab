#!/usr/bin/env bash
# Installs what building and testing Flint needs beyond the Rust toolchain: the wasm32-wasip2
# target (guest components are built for it).
set -euo pipefail
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "==> rustup target add wasm32-wasip2"
    rustup target add wasm32-wasip2
fi
